//! What a poll writes: the queue view from the dispatch decision, and an Event for every
//! condition that changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Resource, ResourceExt,
    runtime::events::{Event, EventType},
};

use crate::{
    controller::Context,
    crd::{AfkConfig, AfkConfigStatus, AfkRun, QueueEntry, RepoLockStatus},
    policy::{dispatch, health::ConditionValue},
};

/// Publish one Event per condition that changed (status or reason), Warning for abnormal
/// values; the recorder folds repeats into a series. It tells Events apart by type, reason and
/// action, not by note, so the action names the condition: Ready and Armed turning `Suspended`
/// in one poll are two Events, not one Event seen twice.
pub(super) async fn condition_events(
    ctx: &Context,
    config: &AfkConfig,
    before: &[Condition],
    after: &[ConditionValue],
) {
    for c in after {
        let changed = before
            .iter()
            .find(|b| b.type_ == c.type_)
            .is_none_or(|b| b.status != c.status || b.reason != c.reason);
        if !changed {
            continue;
        }
        let event = Event {
            type_: if c.abnormal {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: c.reason.into(),
            note: Some(
                format!("{}={}: {}", c.type_, c.status, c.message)
                    .chars()
                    .take(1024)
                    .collect(),
            ),
            action: c.type_.into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &config.object_ref(&())).await {
            tracing::debug!(error = %e, "could not publish event");
        }
    }
}

/// `status.inFlight`, `queue`, `queueLength` and `repos` from the dispatch decision.
pub(super) fn write_queue(
    status: &mut AfkConfigStatus,
    config: &AfkConfig,
    runs: &[AfkRun],
    decision: &dispatch::DispatchDecision,
) {
    status.in_flight = decision.in_flight;
    // Issues already being worked on are not waiting: they stay out of the queue view.
    let waiting = |q: &&dispatch::Queued| !matches!(q.reason, dispatch::SkipReason::InProgress { .. });
    status.queue = decision
        .queue
        .iter()
        .filter(waiting)
        .map(|q| QueueEntry {
            repo: q.repo.clone(),
            issue: q.issue,
            title: q.title.chars().take(200).collect(),
            priority: q.priority,
            reason: q.reason.to_string(),
        })
        .collect();
    status.queue_length = status.queue.len() as u32;
    status.repos = if decision.disarmed.is_some() || decision.repos.is_empty() {
        // Disarmed or stalled: only the holders are known (no tracker I/O).
        config
            .spec
            .allowlist
            .iter()
            .map(|e| RepoLockStatus {
                repo: e.repo.clone(),
                holder: runs
                    .iter()
                    .find(|r| r.spec.repo.eq_ignore_ascii_case(&e.repo) && !r.is_terminal())
                    .map(|r| r.name_any()),
                waiting: vec![],
            })
            .collect()
    } else {
        decision
            .repos
            .iter()
            .map(|r| RepoLockStatus {
                repo: r.repo.clone(),
                holder: r.holder.clone(),
                waiting: r
                    .waiting
                    .iter()
                    .copied()
                    .filter(|n| {
                        status
                            .queue
                            .iter()
                            .any(|q| q.issue == *n && q.repo.eq_ignore_ascii_case(&r.repo))
                    })
                    .collect(),
            })
            .collect()
    };
}
