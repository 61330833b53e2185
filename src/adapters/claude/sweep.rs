//! Nothing a turn started may outlive it, not even a process that left the turn's process group
//! with `setsid`. The process that spawns turns is a child subreaper (`PR_SET_CHILD_SUBREAPER`),
//! so such an escapee is re-parented to us instead of to init when the CLI dies. Every turn's
//! CLI carries a marker in its environment ([`TURN_ENV`], inherited by its descendants); when the
//! turn ends, [`strays`] finds what is left of it in `/proc` — by marker, by process group, or by
//! parent chain up to the CLI — and [`kill_and_reap`] kills it and reaps what became our child.
//! Only these pids are waited for, never `-1`: tokio reaps its own children.

use std::{collections::HashSet, time::Duration};

use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

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

fn has_marker(pid: i32, marker: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|entry| entry == marker))
}

/// The processes left of the turn whose CLI is `cli` (its pid and process group) and whose
/// marker value is `turn_id`: anything carrying the marker, in the CLI's group, or descending
/// from the CLI. The CLI itself is not included (its `Child` reaps it).
///
/// Blocking (it reads `/proc`): call it off the async workers. As a subreaper, an escapee is
/// either still below the CLI or re-parented to us, so only our own children's environments are
/// read — a burst of turns ending together must not read every process's environment each.
pub fn strays(cli: i32, turn_id: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let every_process = !SUBREAPER.load(std::sync::atomic::Ordering::SeqCst);
    let marker = format!("{TURN_ENV}={turn_id}").into_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let procs: Vec<(i32, Stat)> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect();
    let parents: std::collections::HashMap<i32, i32> = procs.iter().map(|(pid, s)| (*pid, s.ppid)).collect();
    let descends = |mut pid: i32| {
        for _ in 0..64 {
            match parents.get(&pid) {
                Some(&ppid) if ppid == cli => return true,
                Some(&ppid) if ppid > 1 => pid = ppid,
                _ => return false,
            }
        }
        false
    };
    procs
        .iter()
        .filter(|(pid, s)| {
            *pid != cli
                && (s.pgid == cli
                    || descends(*pid)
                    || ((every_process || s.ppid == me) && has_marker(*pid, &marker)))
        })
        .map(|(pid, _)| *pid)
        .collect()
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
