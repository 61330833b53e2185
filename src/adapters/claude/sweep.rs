//! Nothing a turn started may outlive it, not even a process that left the turn's process group
//! with `setsid`. The process that spawns turns is a child subreaper (`PR_SET_CHILD_SUBREAPER`),
//! so such an escapee is re-parented to us instead of to init when the CLI dies. Every turn's
//! CLI carries a marker in its environment ([`TURN_ENV`], inherited by its descendants); when the
//! turn ends, [`strays`] finds what is left of it in `/proc` — by marker, by process group, or by
//! parent chain up to the CLI — and [`kill_and_reap`] kills it and reaps what became our child.
//! Only these pids are waited for, never `-1`: tokio reaps its own children. Turns that end
//! together share one pass over `/proc` (a burst ends in a burst).

use std::{
    collections::{HashMap, HashSet},
    sync::{Condvar, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use tokio::sync::oneshot;

/// The environment variable marking a turn's processes.
pub const TURN_ENV: &str = "AFK_TURN_ID";

/// How long [`kill_and_reap`] waits for the killed processes to be gone.
const REAP_WITHIN: Duration = Duration::from_secs(2);

/// Make this process a child subreaper (once; later calls do nothing). Orphaned descendants of
/// our children are then re-parented to us, where the sweep can find and reap them.
pub fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| match nix::sys::prctl::set_child_subreaper(true) {
        Ok(()) => SUBREAPER.store(true, std::sync::atomic::Ordering::SeqCst),
        Err(err) => {
            tracing::warn!(error = %err, "cannot become a child subreaper; setsid escapees of CLI turns may outlive them");
        }
    });
}

/// Whether orphaned descendants come to us (then only our own children can be escapees).
static SUBREAPER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One process as `/proc/<pid>/stat` tells it.
struct Stat {
    zombie: bool,
    ppid: i32,
    pgid: i32,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some(Stat {
        zombie: state == "Z",
        ppid,
        pgid,
    })
}

/// The value of [`TURN_ENV`] in `pid`'s environment, if it carries one.
fn marker_of(pid: i32) -> Option<Vec<u8>> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{TURN_ENV}=");
    env.split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(<[u8]>::to_vec)
}

/// One pass over `/proc`: every process's parent and group, and the turn marker of those that
/// may be a turn's escapee (all of them when we are not a subreaper; else only our own
/// descendants, since an escapee is either still below its CLI or re-parented to us).
struct ProcessTable {
    stats: Vec<(i32, Stat)>,
    parents: HashMap<i32, i32>,
    markers: HashMap<i32, Vec<u8>>,
}

impl ProcessTable {
    fn read() -> Self {
        let me = std::process::id() as i32;
        let every_process = !SUBREAPER.load(std::sync::atomic::Ordering::SeqCst);
        let stats: Vec<(i32, Stat)> = std::fs::read_dir("/proc")
            .map(|dir| {
                dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
                    .filter_map(|pid| Some((pid, stat(pid)?)))
                    .collect()
            })
            .unwrap_or_default();
        let parents: HashMap<i32, i32> = stats.iter().map(|(pid, s)| (*pid, s.ppid)).collect();
        let markers = stats
            .iter()
            .filter(|(pid, _)| every_process || descends_from(&parents, *pid, me))
            .filter_map(|(pid, _)| Some((*pid, marker_of(*pid)?)))
            .collect();
        Self {
            stats,
            parents,
            markers,
        }
    }

    /// What is left of the turn whose CLI is `cli` (its pid and process group) and whose marker
    /// value is `turn_id`: anything carrying the marker, in the CLI's group, or descending from
    /// the CLI — and never what carries another turn's marker. The CLI itself is not included
    /// (its `Child` reaps it).
    fn strays(&self, cli: i32, turn_id: &str) -> Vec<i32> {
        self.stats
            .iter()
            .filter(|(pid, s)| {
                let marker = self.markers.get(pid);
                // A process marked for another turn belongs to that turn, even when the CLI's pid
                // (and so its group id) has been reused by that turn's CLI since.
                let other_turn = marker.is_some_and(|m| m != turn_id.as_bytes());
                *pid != cli
                    && !other_turn
                    && (s.pgid == cli || descends_from(&self.parents, *pid, cli) || marker.is_some())
            })
            .map(|(pid, _)| *pid)
            .collect()
    }
}

/// Whether `ancestor` is above `pid` (bounded: a pid table read while processes come and go
/// may hold a cycle).
fn descends_from(parents: &HashMap<i32, i32>, mut pid: i32, ancestor: i32) -> bool {
    for _ in 0..64 {
        match parents.get(&pid) {
            Some(&ppid) if ppid == ancestor => return true,
            Some(&ppid) if ppid > 1 => pid = ppid,
            _ => return false,
        }
    }
    false
}

/// A turn waiting for a look at `/proc`: its CLI, its marker value, where to answer.
type Waiter = (i32, String, oneshot::Sender<Vec<i32>>);

/// Turns waiting for the scanner, and the bell that wakes it.
static WAITING: Mutex<Vec<Waiter>> = Mutex::new(Vec::new());
static WAKE: Condvar = Condvar::new();

/// The processes left of the turn whose CLI is `cli` and whose marker value is `turn_id` (see
/// [`ProcessTable::strays`]), from a pass over `/proc` that began after this call.
///
/// Turns that end together share one pass: a burst of 50 turns ending at once cost 100 full
/// passes (two per turn) on the blocking pool and doubled the burst's p95 time to first
/// content of the turns still starting. The passes run on one thread of their own, which no
/// async runtime owns: a runtime that shuts down (each `#[tokio::test]` has its own) cannot
/// take the scanner with it and leave every later turn waiting.
pub async fn strays(cli: i32, turn_id: &str) -> Vec<i32> {
    static SCANNER: OnceLock<bool> = OnceLock::new();
    let running = *SCANNER.get_or_init(|| {
        std::thread::Builder::new()
            .name("turn-sweep".into())
            .spawn(scan_while_asked)
            .inspect_err(
                |err| tracing::warn!(error = %err, "cannot start the sweep thread; sweeping per turn"),
            )
            .is_ok()
    });
    if !running {
        let turn_id = turn_id.to_string();
        return tokio::task::spawn_blocking(move || ProcessTable::read().strays(cli, &turn_id))
            .await
            .unwrap_or_default();
    }
    let (reply, answer) = oneshot::channel();
    WAITING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((cli, turn_id.to_string(), reply));
    WAKE.notify_one();
    answer.await.unwrap_or_default()
}

/// Serve every waiting turn from one pass, forever. A turn that asks during a pass is served by
/// the next one, so every answer reflects `/proc` after its question. A pass that panics (it
/// reads whatever `/proc` holds) answers its turns with nothing rather than ending the thread.
fn scan_while_asked() {
    loop {
        let waiting = {
            let mut waiting = WAITING.lock().unwrap_or_else(PoisonError::into_inner);
            while waiting.is_empty() {
                waiting = WAKE.wait(waiting).unwrap_or_else(PoisonError::into_inner);
            }
            std::mem::take(&mut *waiting)
        };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let table = ProcessTable::read();
            for (cli, turn_id, reply) in waiting {
                let _ = reply.send(table.strays(cli, &turn_id));
            }
        }));
    }
}

/// SIGKILL `pids`, then wait (bounded) until each is gone, reaping those re-parented to us.
pub async fn kill_and_reap(pids: Vec<i32>) {
    if pids.is_empty() {
        return;
    }
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let me = std::process::id() as i32;
    let mut left: HashSet<i32> = pids.into_iter().collect();
    let deadline = tokio::time::Instant::now() + REAP_WITHIN;
    let mut pause = Duration::from_millis(1);
    loop {
        left.retain(|pid| match stat(*pid) {
            None => false,
            // Ours now: reap it (WNOHANG: the kill may not have landed yet; ECHILD: not ours).
            Some(s) if s.ppid == me => matches!(
                waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            ),
            // Someone else's zombie is theirs to reap; a live one waits for the kill.
            Some(s) => !s.zombie,
        });
        if left.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    if !left.is_empty() {
        tracing::warn!(pids = ?left, "processes of a finished CLI turn still alive after SIGKILL");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: &[(i32, i32, i32, Option<&str>)]) -> ProcessTable {
        ProcessTable {
            stats: rows
                .iter()
                .map(|&(pid, ppid, pgid, _)| {
                    (
                        pid,
                        Stat {
                            zombie: false,
                            ppid,
                            pgid,
                        },
                    )
                })
                .collect(),
            parents: rows.iter().map(|&(pid, ppid, _, _)| (pid, ppid)).collect(),
            markers: rows
                .iter()
                .filter_map(|&(pid, _, _, m)| Some((pid, m?.as_bytes().to_vec())))
                .collect(),
        }
    }

    #[test]
    fn a_turns_strays_are_its_group_its_descendants_and_its_marked_orphans_only() {
        let me = 10;
        let t = table(&[
            (100, me, 100, Some("t1")),  // the CLI itself
            (101, 100, 100, Some("t1")), // a child in its group
            (102, 101, 102, Some("t1")), // a setsid grandchild, still below the CLI
            (103, me, 103, Some("t1")),  // a setsid escapee re-parented to us
            (104, 1, 104, None),         // an unrelated process
            (200, me, 200, Some("t2")),  // another turn's CLI
            (201, 200, 201, Some("t2")), // and its escapee
        ]);
        let mut found = t.strays(100, "t1");
        found.sort_unstable();
        assert_eq!(found, vec![101, 102, 103]);
        assert_eq!(t.strays(200, "t2"), vec![201]);
    }

    #[test]
    fn a_reused_cli_pid_does_not_make_the_next_turns_processes_strays() {
        let me = 10;
        // Turn t1's CLI was 100 and is gone; turn t2's CLI got pid 100 again.
        let t = table(&[
            (100, me, 100, Some("t2")),
            (101, 100, 100, Some("t2")),
            (102, me, 102, Some("t1")), // t1's escapee, re-parented to us
        ]);
        assert_eq!(t.strays(100, "t1"), vec![102]);
    }

    #[test]
    fn a_parent_cycle_in_a_racy_read_ends() {
        let t = table(&[(5, 6, 5, None), (6, 5, 6, None)]);
        assert!(t.strays(100, "t1").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn turns_ending_together_are_all_answered() {
        let asks = (0..64).map(|i| strays(i32::MAX - i, "no-such-turn"));
        let answers = futures::future::join_all(asks).await;
        assert_eq!(answers.len(), 64);
        assert!(answers.iter().all(Vec::is_empty));
        // And the next turn to end is answered too, whether the scanner was still running or not.
        assert!(strays(i32::MAX - 100, "no-such-turn").await.is_empty());
    }
}
