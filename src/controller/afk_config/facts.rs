//! The facts of one poll: the authenticated probes of T3 and GitHub, and for every ready issue
//! the gate facts (who labelled it and their permission, its blockers), each asked once per poll.

use std::collections::HashMap;

use jiff::Timestamp;

use crate::{
    adapters::{AdapterError, github::Tracker, t3::Executor},
    crd::AfkConfigStatus,
    policy::{
        dispatch::{Blocker, BlockerState, Labeler, ReadyIssue},
        health::Probe,
        parse::{IssueRef, parse_blockers},
    },
};

/// Per-poll caches so one poll asks GitHub each question once.
#[derive(Default)]
pub(super) struct PollCache {
    permissions: HashMap<(String, String), Option<crate::crd::Permission>>,
    states: HashMap<(String, u64), BlockerState>,
}

pub(super) async fn gather(
    tracker: &dyn Tracker,
    repo: &str,
    ready_label: &str,
    cache: &mut PollCache,
) -> Result<Vec<ReadyIssue>, AdapterError> {
    let listing = tracker.list_labeled_issues(repo, ready_label).await?;
    let mut out = vec![];
    for issue in listing.items {
        // A transient failure (5xx, timeout, rate limit) while gathering a gate fact is not "no
        // facts": the issue waits with the reason `github unavailable` (SPEC §3.2). A permanent
        // answer (404, 403) fails closed through the gate itself (untrusted, state unknown).
        let mut facts_error: Option<String> = None;
        let mut unavailable = |what: &str, e: &AdapterError| {
            facts_error.get_or_insert_with(|| format!("{what} ({})", e.kind));
        };
        let labeler = match tracker.label_events(repo, issue.number).await {
            Ok(events) => match events.into_iter().rfind(|e| e.label == ready_label) {
                Some(e) => {
                    let key = (repo.to_ascii_lowercase(), e.actor_login.to_ascii_lowercase());
                    let permission = match cache.permissions.get(&key) {
                        Some(p) => *p,
                        None => match tracker.permission(repo, &e.actor_login).await {
                            Ok(p) => {
                                cache.permissions.insert(key, Some(p));
                                Some(p)
                            }
                            Err(err) if err.is_transient() => {
                                unavailable("permission lookup failed", &err);
                                None
                            }
                            Err(_) => {
                                cache.permissions.insert(key, None);
                                None
                            }
                        },
                    };
                    Labeler::Known {
                        login: e.actor_login,
                        actor_type: e.actor_type,
                        permission,
                        labeled_at: e.created_at,
                    }
                }
                None => Labeler::Unknown,
            },
            Err(err) => {
                if err.is_transient() {
                    unavailable("label events lookup failed", &err);
                }
                // Fail closed: no attributable event means untrusted.
                Labeler::Unknown
            }
        };
        let mut blockers = vec![];
        for r in parse_blockers(&issue.body) {
            let target = r.repo_or(repo).to_string();
            let key = (target.to_ascii_lowercase(), r.number);
            let state = match cache.states.get(&key) {
                Some(s) => *s,
                None => {
                    let s = match tracker.issue_state(&target, r.number).await {
                        Ok(s) if s == "closed" => BlockerState::Closed,
                        Ok(s) if s == "open" => BlockerState::Open,
                        Ok(_) => BlockerState::Unknown,
                        Err(err) => {
                            if err.is_transient() {
                                unavailable("blocker state lookup failed", &err);
                            }
                            BlockerState::Unknown
                        }
                    };
                    cache.states.insert(key, s);
                    s
                }
            };
            blockers.push(Blocker { issue: r, state });
        }
        match tracker.blocked_by(repo, issue.number).await {
            Ok(deps) => {
                for d in deps {
                    let state = if d.state == "closed" {
                        BlockerState::Closed
                    } else {
                        BlockerState::Open
                    };
                    cache
                        .states
                        .insert((d.repo.to_ascii_lowercase(), d.number), state);
                    let issue_ref = if d.repo.eq_ignore_ascii_case(repo) {
                        IssueRef::local(d.number)
                    } else {
                        IssueRef::qualified(d.repo, d.number)
                    };
                    if !blockers
                        .iter()
                        .any(|b| b.issue.points_at(repo, issue_ref.repo_or(repo), issue_ref.number))
                    {
                        blockers.push(Blocker {
                            issue: issue_ref,
                            state,
                        });
                    }
                }
            }
            Err(e) => {
                facts_error.get_or_insert_with(|| format!("dependency lookup failed ({})", e.kind));
            }
        }
        out.push(ReadyIssue {
            repo: repo.to_string(),
            number: issue.number,
            title: issue.title,
            body: issue.body,
            labels: issue.labels,
            labeler,
            blockers,
            facts_error,
        });
    }
    Ok(out)
}

/// What the authenticated probes of GitHub and T3 found this poll.
pub(super) struct Probes {
    pub(super) tracker: Probe,
    pub(super) executor: Probe,
    pub(super) token_expires_at: Option<Timestamp>,
}

impl Default for Probes {
    /// Nothing probed (disarmed or stalled).
    fn default() -> Self {
        Self {
            tracker: Probe::NotProbed,
            executor: Probe::NotProbed,
            token_expires_at: None,
        }
    }
}

/// T3: reachability from the unauthenticated environment descriptor, then the token from
/// `/api/auth/session` (always 200; `authenticated: false` for a bad, expired or revoked token).
pub(super) async fn probe_executor(
    executor: &dyn Executor,
    status: &mut AfkConfigStatus,
) -> (Probe, Option<Timestamp>) {
    match executor.environment().await {
        Ok(env) => status.executor_version = env.server_version,
        Err(e) => return (Probe::Unreachable(e.to_string()), None),
    }
    match executor.auth_session().await {
        Ok(s) if s.authenticated => (Probe::Ok, s.expires_at()),
        Ok(_) => (
            Probe::Unauthorized(
                "T3 does not accept the token (authenticated: false): it is wrong, expired or revoked".into(),
            ),
            None,
        ),
        Err(e) if e.is_unauthorized() => (Probe::Unauthorized(e.to_string()), None),
        Err(e) => (Probe::Unreachable(e.to_string()), None),
    }
}

/// GitHub's answer to the authenticated listing, as a probe.
pub(super) fn tracker_probe(error: Option<(&str, AdapterError)>) -> Probe {
    match error {
        None => Probe::Ok,
        Some((repo, e)) if e.error_kind().is_access_denied() => Probe::Unauthorized(format!(
            "{repo}: {e} — check the token and its access to the repository"
        )),
        Some((repo, e)) => Probe::Unreachable(format!("{repo}: {e}")),
    }
}
