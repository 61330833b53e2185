//! The AfkConfig reconcile (SPEC §2): no tracker I/O while disarmed; otherwise gather the gate
//! facts (cheaply: every GET is conditional, permissions and blocker states are cached for the
//! poll), let `policy::dispatch` decide, create the AfkRuns it chose (deterministic names, so a
//! repeated create is a no-op), prune old terminal runs, and write status.

use std::{collections::HashMap, sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
    runtime::controller::Action,
};

use kube::runtime::events::{Event, EventType};

use super::{Context, Error, status::apply_status};
use crate::{
    adapters::{github::Tracker, t3::Executor},
    crd::{
        AfkConfig, AfkRun, AfkRunSpec, CONFIG_LABEL, ISSUE_LABEL, Phase, QueueEntry, REPO_LABEL,
        RateLimitStatus, RepoLockStatus,
        condition::{Status, reasons, set_condition, types},
    },
    metrics,
    policy::{
        dispatch::{self, Blocker, BlockerState, Disarmed, ExistingRun, Labeler, ReadyIssue},
        health::{self, ConditionValue, ConfigFacts, Probe},
        naming,
        parse::{IssueRef, parse_blockers},
    },
};

fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(0.9 + f64::from(nanos % 200) / 1000.0)
}

/// The runs of a config: those labelled by the controller and any created by hand naming it.
async fn runs_of(api: &Api<AfkRun>, config: &str) -> Result<Vec<AfkRun>, Error> {
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| r.spec.config_ref == config)
        .collect())
}

fn existing(runs: &[AfkRun]) -> Vec<ExistingRun> {
    runs.iter()
        .map(|r| ExistingRun {
            name: r.name_any(),
            repo: r.spec.repo.clone(),
            issue: r.spec.issue,
            attempt: r.spec.attempt,
            phase: r.phase(),
            finished_at: r
                .status
                .as_ref()
                .and_then(|s| s.finished_at.as_ref())
                .map(|t| t.0),
        })
        .collect()
}

/// Terminal runs past the per-repo history limits, oldest first.
fn retention_victims(config: &AfkConfig, runs: &[AfkRun]) -> Vec<String> {
    let mut by_repo: HashMap<String, (Vec<&AfkRun>, Vec<&AfkRun>)> = HashMap::new();
    for r in runs.iter().filter(|r| r.is_terminal()) {
        let entry = by_repo.entry(r.spec.repo.to_ascii_lowercase()).or_default();
        if r.phase() == Phase::Succeeded {
            entry.0.push(r)
        } else {
            entry.1.push(r)
        }
    }
    let finished = |r: &&AfkRun| {
        r.status
            .as_ref()
            .and_then(|s| s.finished_at.as_ref())
            .map(|t| t.0)
    };
    let mut victims = vec![];
    for (_, (mut ok, mut other)) in by_repo {
        for (list, keep) in [
            (&mut ok, config.spec.history.succeeded_to_keep),
            (&mut other, config.spec.history.failed_to_keep),
        ] {
            // Newest first; everything past `keep` goes.
            list.sort_by(|a, b| {
                finished(b)
                    .cmp(&finished(a))
                    .then_with(|| b.name_any().cmp(&a.name_any()))
            });
            victims.extend(list.iter().skip(keep as usize).map(|r| r.name_any()));
        }
    }
    victims.sort();
    victims
}

/// Per-poll caches so one poll asks GitHub each question once.
#[derive(Default)]
struct PollCache {
    permissions: HashMap<(String, String), Option<crate::crd::Permission>>,
    states: HashMap<(String, u64), BlockerState>,
}

async fn gather(
    tracker: &dyn Tracker,
    repo: &str,
    ready_label: &str,
    cache: &mut PollCache,
) -> Result<Vec<ReadyIssue>, crate::adapters::AdapterError> {
    let listing = tracker.list_labeled_issues(repo, ready_label).await?;
    let mut out = vec![];
    for issue in listing.items {
        // A transient failure (5xx, timeout, rate limit) while gathering a gate fact is not "no
        // facts": the issue waits with the reason `github unavailable` (SPEC §3.2). A permanent
        // answer (404, 403) fails closed through the gate itself (untrusted, state unknown).
        let mut facts_error: Option<String> = None;
        let mut unavailable = |what: &str, e: &crate::adapters::AdapterError| {
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

fn new_run_object(config: &AfkConfig, run: &dispatch::NewRun) -> AfkRun {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(CONFIG_LABEL.to_string(), config.name_any());
    labels.insert(REPO_LABEL.to_string(), naming::repo_label_value(&run.repo));
    labels.insert(ISSUE_LABEL.to_string(), run.issue.to_string());
    AfkRun {
        metadata: ObjectMeta {
            name: Some(run.name.clone()),
            namespace: config.namespace(),
            labels: Some(labels),
            owner_references: config.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: AfkRunSpec {
            config_ref: config.name_any(),
            repo: run.repo.clone(),
            issue: run.issue,
            attempt: run.attempt,
            priority: run.priority,
            title: run.title.chars().take(1024).collect(),
            task_snapshot: crate::crd::TaskSnapshot {
                title: run.snapshot.title.chars().take(1024).collect(),
                body: run.snapshot.body.chars().take(65536).collect(),
                sha256: run.snapshot.sha256.clone(),
            },
            cancel: false,
        },
        status: None,
    }
}

/// What the authenticated probes of GitHub and T3 found this poll.
struct Probes {
    tracker: Probe,
    executor: Probe,
    token_expires_at: Option<Timestamp>,
}

/// T3: reachability from the unauthenticated environment descriptor, then the token from
/// `/api/auth/session` (always 200; `authenticated: false` for a bad, expired or revoked token).
async fn probe_executor(
    executor: &dyn Executor,
    status: &mut crate::crd::AfkConfigStatus,
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
fn tracker_probe(error: Option<(&str, crate::adapters::AdapterError)>) -> Probe {
    match error {
        None => Probe::Ok,
        Some((repo, e)) if matches!(e.kind, "auth" | "forbidden" | "not_found") => Probe::Unauthorized(
            format!("{repo}: {e} — check the token and its access to the repository"),
        ),
        Some((repo, e)) => Probe::Unreachable(format!("{repo}: {e}")),
    }
}

/// Publish one Event per condition that changed (status or reason), Warning for abnormal
/// values; the recorder folds repeats into a series, as kube's recorder does.
async fn condition_events(
    ctx: &Context,
    config: &AfkConfig,
    before: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
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
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &config.object_ref(&())).await {
            tracing::debug!(error = %e, "could not publish event");
        }
    }
}

/// The reconcile, as named steps: validate the spec → runs and retention → dereference the
/// Secrets → (armed) probe T3 and gather the gate facts from GitHub → decide and create runs →
/// derive every condition from what was found, publish the transitions, write status.
pub(super) async fn reconcile(config: Arc<AfkConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.time_reconcile("afkconfig");
    let ns = config.namespace().unwrap_or_default();
    let name = config.name_any();
    let configs: Api<AfkConfig> = Api::namespaced(ctx.client.clone(), &ns);
    let runs_api: Api<AfkRun> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Time(Timestamp::now());
    let generation = config.metadata.generation;
    let current = config.status.clone();
    let mut status = current.clone().unwrap_or_default();
    let previous_conditions = status.conditions.clone();
    let spec_changed = status.observed_generation != generation;

    // Validate.
    let poll_interval = config.spec.poll_interval.to_std();
    let invalid = poll_interval
        .as_ref()
        .err()
        .map(|e| (reasons::INVALID_SPEC, format!("spec.pollInterval: {e}")));
    let estop = config.emergency_stop();
    let disarmed = dispatch::armed(&config.spec, estop).err().map(|d| match d {
        Disarmed::EmergencyStop(why) => (reasons::EMERGENCY_STOP, format!("emergency stop: {why}")),
        Disarmed::Suspended => (reasons::SUSPENDED, "spec.suspend is true".to_string()),
        Disarmed::EmptyAllowlist => (reasons::EMPTY_ALLOWLIST, "spec.allowlist is empty".to_string()),
    });

    // Say at once that the first poll after a change is running (it may take a while).
    if spec_changed && invalid.is_none() && disarmed.is_none() {
        let mut early = status.clone();
        set_condition(
            &mut early.conditions,
            types::RECONCILING,
            Status::True,
            "Polling",
            "polling after a spec change",
            generation,
            &now,
        );
        apply_status(&configs, &config, current.as_ref(), &early).await?;
    }
    status.observed_generation = generation;

    // Runs and retention.
    let mut runs = runs_of(&runs_api, &name).await?;
    for victim in retention_victims(&config, &runs) {
        match runs_api.delete(&victim, &DeleteParams::background()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e.into()),
        }
        runs.retain(|r| r.name_any() != victim);
    }
    let mut by_phase: HashMap<&'static str, i64> = HashMap::new();
    for r in &runs {
        *by_phase.entry(r.phase().as_str()).or_default() += 1;
    }
    for phase in Phase::ALL {
        ctx.metrics
            .runs
            .get_or_create(&metrics::Phase {
                phase: phase.as_str().into(),
            })
            .set(by_phase.get(phase.as_str()).copied().unwrap_or(0));
    }
    let existing = existing(&runs);

    // Dereference the Secrets (Kubernetes reads only: done even while disarmed, so a missing
    // Secret shows before anyone arms the loop).
    let mut secrets = None;
    let adapters = if invalid.is_some() {
        None
    } else {
        match ctx.adapters.for_config(&config).await {
            Ok(a) => Some(a),
            Err(Error::Secrets { message, unreadable }) => {
                let reason = if unreadable {
                    "SecretUnreadable"
                } else {
                    "SecretMissing"
                };
                secrets = Some((reason, message));
                None
            }
            Err(Error::Reference(why)) => {
                secrets = Some(("ConfigError", why));
                None
            }
            Err(e) => return Err(e),
        }
    };

    // Armed and dereferenced: probe T3 and gather the gate facts (no tracker or executor I/O
    // otherwise).
    let mut probes = Probes {
        tracker: Probe::NotProbed,
        executor: Probe::NotProbed,
        token_expires_at: None,
    };
    let mut ready_issues = vec![];
    if let (Some(adapters), None) = (&adapters, &disarmed) {
        let (executor, expires_at) = probe_executor(adapters.executor.as_ref(), &mut status).await;
        probes.executor = executor;
        probes.token_expires_at = expires_at;
        let label = metrics::ConfigLabel {
            config: format!("{ns}/{name}"),
        };
        match expires_at {
            Some(at) => ctx
                .metrics
                .executor_token_expiry
                .get_or_create(&label)
                .set(at.as_second()),
            None => ctx.metrics.executor_token_expiry.get_or_create(&label).set(0),
        };
        let mut cache = PollCache::default();
        let mut tracker_error = None;
        for entry in &config.spec.allowlist {
            match gather(
                adapters.tracker.as_ref(),
                &entry.repo,
                &config.spec.labels.ready,
                &mut cache,
            )
            .await
            {
                Ok(mut found) => ready_issues.append(&mut found),
                Err(e) => {
                    tracker_error.get_or_insert((entry.repo.as_str(), e));
                }
            }
        }
        probes.tracker = tracker_probe(tracker_error);
        if let Some(rl) = adapters.tracker.rate_limit() {
            ctx.metrics.github_rate_limit_remaining.set(rl.remaining as i64);
            ctx.metrics.github_rate_limit_limit.set(rl.limit as i64);
            status.rate_limit = Some(RateLimitStatus {
                remaining: rl.remaining,
                reset_at: Some(Time(rl.reset)),
            });
        }
        status.last_poll_time = Some(now.clone());
    }

    // Decide and create runs (nothing is created while stalled: the facts are empty).
    let decision = dispatch::decide(&dispatch::DispatchInput {
        spec: &config.spec,
        emergency_stop: estop,
        issues: &ready_issues,
        runs: &existing,
    });
    for new in &decision.create {
        let obj = new_run_object(&config, new);
        match runs_api.create(&PostParams::default(), &obj).await {
            Ok(_) => tracing::info!(repo = %new.repo, issue = new.issue, run = %new.name, "created AfkRun"),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Idempotent create: the run exists already (a retried poll).
                tracing::debug!(run = %new.name, "AfkRun already exists");
            }
            Err(e) => return Err(e.into()),
        }
    }
    write_queue(&mut status, &config, &runs, &decision);

    // Conditions from what was found; Events for the transitions; status.
    let t3 = &config.spec.executor.t3;
    // GitHub App credentials that GitHub still refuses after a fresh installation token are a
    // configuration fault (wrong App, key or installation), not a blip: Stalled, not retried.
    let secrets = match (&probes.tracker, &config.spec.tracker.github.app, secrets) {
        (Probe::Unauthorized(why), Some(app), None) => Some((
            "GitHubAppUnauthorized",
            format!(
                "GitHub refused the App's installation token even after a refresh ({why}); check appId {}, installationId {} and the private key",
                app.app_id, app.installation_id
            ),
        )),
        (_, _, secrets) => secrets,
    };
    let facts = ConfigFacts {
        invalid,
        secrets,
        disarmed,
        tracker: probes.tracker,
        executor: probes.executor,
        token_expires_at: probes.token_expires_at,
        token_hint: format!(
            "`t3 auth session issue --base-dir <T3 base dir> --token-only --ttl 30d` on the T3 host, then update key {:?} of Secret {ns}/{}",
            t3.token_secret_ref.key, t3.token_secret_ref.name
        ),
        reconciling: false,
        now: now.0,
    };
    let values = health::conditions(&facts);
    for c in &values {
        let s = match c.status {
            "True" => Status::True,
            "False" => Status::False,
            _ => Status::Unknown,
        };
        set_condition(
            &mut status.conditions,
            c.type_,
            s,
            c.reason,
            c.message.clone(),
            generation,
            &now,
        );
    }
    status.message = health::summary(&values);
    let ready = values
        .iter()
        .any(|c| c.type_ == types::READY && c.status == "True");
    ctx.metrics
        .config_ready
        .get_or_create(&metrics::ConfigLabel {
            config: format!("{ns}/{name}"),
        })
        .set(i64::from(ready));
    apply_status(&configs, &config, current.as_ref(), &status).await?;
    condition_events(&ctx, &config, &previous_conditions, &values).await;
    ctx.reset_backoff(&format!("afkconfig:{ns}/{name}"));
    Ok(match (poll_interval, &facts.secrets) {
        (Err(_), _) => Action::await_change(),
        // Secrets are re-checked soon: creating one does not change the AfkConfig.
        (Ok(d), Some(_)) => Action::requeue(jittered(d.min(Duration::from_secs(30)))),
        (Ok(d), None) => Action::requeue(jittered(d)),
    })
}

/// `status.inFlight`, `queue`, `queueLength` and `repos` from the dispatch decision.
fn write_queue(
    status: &mut crate::crd::AfkConfigStatus,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AfkRunStatus;

    fn run(name: &str, repo: &str, phase: Phase, finished: i64) -> AfkRun {
        let mut r = AfkRun::new(
            name,
            serde_json::from_value(serde_json::json!({
                "configRef": "c", "repo": repo, "issue": 1, "attempt": 1, "title": "t",
                "taskSnapshot": {"title": "t", "body": "", "sha256": "a".repeat(64)}
            }))
            .unwrap(),
        );
        r.status = Some(AfkRunStatus {
            phase: Some(phase),
            finished_at: Some(Time(Timestamp::from_second(finished).unwrap())),
            ..Default::default()
        });
        r
    }

    #[test]
    fn retention_keeps_the_newest_per_repo_and_kind() {
        let mut config: AfkConfig = AfkConfig::new("c", serde_json::from_value(serde_json::json!({
            "tracker": {"github": {"tokenSecretRef": {"name": "g", "key": "t"}}},
            "executor": {"t3": {"url": "http://t3", "tokenSecretRef": {"name": "t", "key": "t"}, "model": "m"}}
        })).unwrap());
        config.spec.history.succeeded_to_keep = 1;
        config.spec.history.failed_to_keep = 2;
        let runs = vec![
            run("a-1", "o/a", Phase::Succeeded, 10),
            run("a-2", "o/a", Phase::Succeeded, 20),
            run("a-3", "o/a", Phase::Frozen, 5),
            run("a-4", "o/a", Phase::Failed, 6),
            run("a-5", "o/a", Phase::NeedsHuman, 7),
            run("b-1", "o/b", Phase::Succeeded, 1),
            run("live", "o/a", Phase::Working, 0),
        ];
        assert_eq!(retention_victims(&config, &runs), vec!["a-1", "a-3"]);
    }
}
