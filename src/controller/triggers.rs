//! What wakes a reconcile besides the objects' own watches: webhook triggers (one broadcast
//! channel, split by kind), and AfkRun changes that can alter a dispatch gate — a run turning
//! terminal or being deleted frees its repo and capacity — turned into one poll of the owning
//! AfkConfig, coalesced so a busy loop asks GitHub at most once per config per window. (Every
//! other AfkRun status write, including the operator's own label and comment bookkeeping, no
//! longer costs a poll.)

use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    time::Duration,
};

use futures::{Stream, StreamExt};
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, reflector::ObjectRef, watcher},
};
use tokio::time::Instant;
use tokio_util::time::DelayQueue;

use super::Trigger;
use crate::crd::{AfkConfig, AfkRun};

/// The triggers of one kind as a stream for `reconcile_on`. Missed triggers (a lagging receiver)
/// are harmless: the periodic poll and requeue are the safety net.
pub(super) fn from_channel<K: kube::Resource + 'static>(
    rx: tokio::sync::broadcast::Receiver<Trigger>,
    pick: fn(Trigger) -> Option<ObjectRef<K>>,
) -> impl Stream<Item = ObjectRef<K>> + Send
where
    K::DynamicType: Default,
{
    futures::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(trigger) => {
                    if let Some(r) = pick(trigger) {
                        return Some((r, rx));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// The AfkConfig whose gates a run change may have altered, if any. `known` remembers which runs
/// were terminal, so only the transition (or a deletion) counts; what is listed at start-up
/// only seeds it.
fn gate_change(
    event: watcher::Event<AfkRun>,
    known: &mut HashMap<String, bool>,
) -> Option<ObjectRef<AfkConfig>> {
    let config_of = |run: &AfkRun| {
        ObjectRef::<AfkConfig>::new(&run.spec.config_ref).within(&run.namespace().unwrap_or_default())
    };
    match event {
        watcher::Event::Apply(run) | watcher::Event::InitApply(run) => {
            let terminal = run.is_terminal();
            let was = known.insert(run.uid().unwrap_or_else(|| run.name_any()), terminal);
            (terminal && was == Some(false)).then(|| config_of(&run))
        }
        watcher::Event::Delete(run) => {
            known.remove(&run.uid().unwrap_or_else(|| run.name_any()));
            Some(config_of(&run))
        }
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

/// Polls of AfkConfigs asked for by gate-altering run changes, at most one per config per
/// `window`: the first goes at once, later ones within the window are merged into one at its end.
pub(super) fn gate_changes(
    runs: Api<AfkRun>,
    window: Duration,
) -> impl Stream<Item = ObjectRef<AfkConfig>> + Send {
    let mut known = HashMap::new();
    let changes = watcher(runs, watcher::Config::default().any_semantic())
        .default_backoff()
        .filter_map(move |event| {
            let found = event.ok().and_then(|e| gate_change(e, &mut known));
            async move { found }
        });
    coalesce(changes, window)
}

struct Coalescer<S> {
    input: Pin<Box<S>>,
    window: Duration,
    last_sent: HashMap<ObjectRef<AfkConfig>, Instant>,
    scheduled: HashSet<ObjectRef<AfkConfig>>,
    delayed: DelayQueue<ObjectRef<AfkConfig>>,
}

/// At most one item per key per `window`; nothing is dropped, only merged and delayed.
fn coalesce<S>(input: S, window: Duration) -> impl Stream<Item = ObjectRef<AfkConfig>> + Send
where
    S: Stream<Item = ObjectRef<AfkConfig>> + Send + 'static,
{
    let state = Coalescer {
        input: Box::pin(input),
        window,
        last_sent: HashMap::new(),
        scheduled: HashSet::new(),
        delayed: DelayQueue::new(),
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            tokio::select! {
                item = st.input.next() => {
                    let r = item?;
                    if st.scheduled.contains(&r) {
                        continue;
                    }
                    let now = Instant::now();
                    match st.last_sent.get(&r) {
                        Some(at) if now.duration_since(*at) < st.window => {
                            let wait = st.window - now.duration_since(*at);
                            st.scheduled.insert(r.clone());
                            st.delayed.insert(r, wait);
                        }
                        _ => {
                            st.last_sent.insert(r.clone(), now);
                            return Some((r, st));
                        }
                    }
                }
                Some(due) = st.delayed.next(), if !st.delayed.is_empty() => {
                    let r = due.into_inner();
                    st.scheduled.remove(&r);
                    st.last_sent.insert(r.clone(), Instant::now());
                    return Some((r, st));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str) -> ObjectRef<AfkConfig> {
        ObjectRef::new(name).within("ns")
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_are_merged_into_one_per_window_and_nothing_is_lost() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let input = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let mut out = Box::pin(coalesce(input, Duration::from_secs(5)));
        for _ in 0..10 {
            tx.send(cfg("a")).unwrap();
        }
        tx.send(cfg("b")).unwrap();
        let start = Instant::now();
        assert_eq!(out.next().await, Some(cfg("a")), "the first goes at once");
        assert_eq!(
            out.next().await,
            Some(cfg("b")),
            "other configs are not held back"
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(
            out.next().await,
            Some(cfg("a")),
            "the nine merged into one at the window's end"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        drop(tx);
        assert_eq!(out.next().await, None);
    }

    fn run(name: &str, phase: &str, uid: &str) -> AfkRun {
        let mut r: AfkRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun",
            "metadata": {"name": name, "namespace": "ns", "uid": uid},
            "spec": {"configRef": "team", "repo": "o/r", "issue": 1, "attempt": 1, "title": "t",
                     "taskSnapshot": {"title": "t", "body": "", "sha256": "a".repeat(64)}},
            "status": {"phase": phase}
        }))
        .unwrap();
        r.metadata.uid = Some(uid.into());
        r
    }

    #[test]
    fn only_turning_terminal_or_deletion_alters_a_gate() {
        let mut known = HashMap::new();
        let team = || Some(ObjectRef::<AfkConfig>::new("team").within("ns"));
        assert_eq!(
            gate_change(watcher::Event::InitApply(run("x", "Succeeded", "1")), &mut known),
            None
        );
        assert_eq!(
            gate_change(watcher::Event::Apply(run("y", "Working", "2")), &mut known),
            None
        );
        assert_eq!(
            gate_change(watcher::Event::Apply(run("y", "Verifying", "2")), &mut known),
            None
        );
        assert_eq!(
            gate_change(watcher::Event::Apply(run("y", "Frozen", "2")), &mut known),
            team()
        );
        assert_eq!(
            gate_change(watcher::Event::Apply(run("y", "Frozen", "2")), &mut known),
            None,
            "a terminal run's later writes (effects) are not a change"
        );
        assert_eq!(
            gate_change(watcher::Event::Delete(run("x", "Succeeded", "1")), &mut known),
            team()
        );
    }
}
