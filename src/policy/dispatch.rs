//! The dispatch decision (SPEC §2): given the ready issues with their gate facts, the config and
//! the existing runs, which AfkRuns to create and why every other ready issue waits. Pure and
//! total: the answer does not depend on the order of the inputs, at most one run is created per
//! repo, and the number of non-terminal runs never passes `maxInFlight`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
};

use jiff::Timestamp;

use super::{
    naming,
    parse::{IssueRef, parse_priority},
};
use crate::crd::{AfkConfigSpec, Permission, Phase, TaskSnapshot};

/// Who applied the ready label most recently, as far as the tracker could tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Labeler {
    /// No attributable `labeled` event (or the events could not be read): untrusted.
    Unknown,
    /// The actor of the most recent `labeled` event for the ready label.
    Known {
        /// Login of the actor.
        login: String,
        /// `User`, `Bot`, `Organization`, … as GitHub reports it.
        actor_type: String,
        /// Repository permission of the actor; `None` when it could not be determined.
        permission: Option<Permission>,
        /// When the label was applied.
        labeled_at: Timestamp,
    },
}

/// State of a blocking issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockerState {
    /// Still open: blocks.
    Open,
    /// Closed: does not block.
    Closed,
    /// Could not be looked up: blocks (fail closed).
    Unknown,
}

/// One blocker of an issue with its looked-up state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Blocker {
    /// The blocking issue (qualified or same-repo).
    pub issue: IssueRef,
    /// Its state.
    pub state: BlockerState,
}

/// A ready issue (carries the ready label, is open, is not a pull request) with its gate facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyIssue {
    /// `owner/name`.
    pub repo: String,
    /// Issue number.
    pub number: u64,
    /// Title now.
    pub title: String,
    /// Body now.
    pub body: String,
    /// Labels now.
    pub labels: Vec<String>,
    /// Who applied the ready label.
    pub labeler: Labeler,
    /// Blockers from the body and GitHub's native dependencies, with their states.
    pub blockers: Vec<Blocker>,
    /// A gate fact could not be gathered (e.g. the dependency lookup failed): fail closed.
    pub facts_error: Option<String>,
}

/// What the decision needs to know about an existing AfkRun.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingRun {
    /// Object name.
    pub name: String,
    /// `owner/name`.
    pub repo: String,
    /// Issue number.
    pub issue: u64,
    /// Attempt number.
    pub attempt: u32,
    /// Current phase.
    pub phase: Phase,
    /// When it reached its terminal phase (terminal runs only).
    pub finished_at: Option<Timestamp>,
}

/// Everything the decision reads.
#[derive(Clone, Debug)]
pub struct DispatchInput<'a> {
    /// The AfkConfig's spec.
    pub spec: &'a AfkConfigSpec,
    /// The emergency-stop annotation's value, when present.
    pub emergency_stop: Option<&'a str>,
    /// Ready issues with their facts.
    pub issues: &'a [ReadyIssue],
    /// Every AfkRun belonging to this AfkConfig.
    pub runs: &'a [ExistingRun],
    /// T3 refuses the operator's token: a run created now would fail at its first call and hand
    /// its issue back, so every issue that passes its gates waits instead.
    pub executor_refused: bool,
}

/// Why the loop is not armed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disarmed {
    /// The emergency-stop annotation is set (with its reason).
    EmergencyStop(String),
    /// `spec.suspend` is true.
    Suspended,
    /// `spec.allowlist` is empty.
    EmptyAllowlist,
}

/// Why a ready issue was not dispatched. `Display` gives the human-readable queue reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The repo is not in the allowlist.
    NotAllowlisted,
    /// No attributable label event.
    NoLabelEvent,
    /// The labeler's permission is below the minimum (or unknown).
    UntrustedLabeler {
        /// Login.
        login: String,
        /// What they have, if known.
        permission: Option<Permission>,
    },
    /// The labeler is not a User and not an allowed bot.
    UntrustedActorType {
        /// Login.
        login: String,
        /// Their actor type.
        actor_type: String,
    },
    /// Open (or unknown) blockers; `cycle` names a dependency cycle through this issue.
    Blocked {
        /// The blockers that still block, as displayed (`#3 (open)`).
        blockers: Vec<String>,
        /// A dependency cycle among ready issues, if found (`#5 → #3 → #5`).
        cycle: Option<String>,
    },
    /// A non-terminal run exists for the issue.
    InProgress {
        /// That run.
        run: String,
    },
    /// The issue was attempted and the label was not re-applied after the attempt finished.
    AlreadyAttempted {
        /// The latest run.
        run: String,
        /// Its phase.
        phase: Phase,
    },
    /// Another run holds the repo.
    RepoBusy {
        /// The holder (existing or being created now).
        run: String,
    },
    /// The in-flight cap is reached.
    MaxInFlight(u32),
    /// A gate fact could not be gathered this poll.
    FactsUnavailable(String),
    /// T3 refuses the operator's token.
    ExecutorRefused,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NotAllowlisted => write!(f, "repo not in allowlist"),
            SkipReason::NoLabelEvent => write!(f, "no attributable label event (untrusted)"),
            SkipReason::UntrustedLabeler {
                login,
                permission: Some(p),
            } => {
                write!(f, "labeled by @{login} ({} permission)", permission_name(*p))
            }
            SkipReason::UntrustedLabeler {
                login,
                permission: None,
            } => {
                write!(f, "labeled by @{login} (permission unknown)")
            }
            SkipReason::UntrustedActorType { login, actor_type } => {
                write!(f, "labeled by @{login} ({actor_type}, not an allowed bot)")
            }
            SkipReason::Blocked { blockers, cycle } => {
                write!(f, "Blocked by {}", blockers.join(", "))?;
                if let Some(c) = cycle {
                    write!(f, "; dependency cycle {c}")?;
                }
                Ok(())
            }
            SkipReason::InProgress { run } => write!(f, "in progress: afkrun {run}"),
            SkipReason::AlreadyAttempted { run, phase } => {
                write!(
                    f,
                    "already attempted: afkrun {run} ({}); re-apply the label to retry",
                    phase.as_str()
                )
            }
            SkipReason::RepoBusy { run } => write!(f, "repo busy: afkrun {run}"),
            SkipReason::MaxInFlight(n) => write!(f, "max in flight ({n})"),
            SkipReason::FactsUnavailable(why) => write!(f, "github unavailable: {why}"),
            SkipReason::ExecutorRefused => write!(f, "T3 refuses the operator's token (see Ready)"),
        }
    }
}

fn permission_name(p: Permission) -> &'static str {
    match p {
        Permission::None => "no",
        Permission::Read => "read",
        Permission::Triage => "triage",
        Permission::Write => "write",
        Permission::Maintain => "maintain",
        Permission::Admin => "admin",
    }
}

/// An AfkRun to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRun {
    /// Deterministic object name.
    pub name: String,
    /// `owner/name`.
    pub repo: String,
    /// Issue number.
    pub issue: u64,
    /// Attempt number (1 + the highest existing attempt).
    pub attempt: u32,
    /// Priority from labels.
    pub priority: Option<u32>,
    /// Issue title.
    pub title: String,
    /// The trusted snapshot.
    pub snapshot: TaskSnapshot,
}

/// A ready issue that waits, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// `owner/name`.
    pub repo: String,
    /// Issue number.
    pub issue: u64,
    /// Title.
    pub title: String,
    /// Priority from labels.
    pub priority: Option<u32>,
    /// Why.
    pub reason: SkipReason,
}

/// The per-repo lock view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoLock {
    /// `owner/name`.
    pub repo: String,
    /// The run holding the repo (existing or created now).
    pub holder: Option<String>,
    /// Ready issues of the repo that wait.
    pub waiting: Vec<u64>,
}

/// The outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchDecision {
    /// `Some` when the loop is disarmed (nothing else is computed then).
    pub disarmed: Option<Disarmed>,
    /// Runs to create, in priority order.
    pub create: Vec<NewRun>,
    /// Every other ready issue, in priority order.
    pub queue: Vec<Queued>,
    /// Lock view per allowlisted repo, in allowlist order.
    pub repos: Vec<RepoLock>,
    /// Non-terminal runs after the creates.
    pub in_flight: u32,
}

/// Whether the loop is armed; the first closed gate wins (emergency stop, then suspend, then
/// the allowlist).
pub fn armed(spec: &AfkConfigSpec, emergency_stop: Option<&str>) -> Result<(), Disarmed> {
    if let Some(reason) = emergency_stop {
        return Err(Disarmed::EmergencyStop(reason.to_string()));
    }
    if spec.suspend {
        return Err(Disarmed::Suspended);
    }
    if spec.allowlist.is_empty() {
        return Err(Disarmed::EmptyAllowlist);
    }
    Ok(())
}

/// Decide what to dispatch.
pub fn decide(input: &DispatchInput<'_>) -> DispatchDecision {
    let spec = input.spec;
    if let Err(disarmed) = armed(spec, input.emergency_stop) {
        return DispatchDecision {
            disarmed: Some(disarmed),
            create: vec![],
            queue: vec![],
            repos: vec![],
            in_flight: non_terminal(input.runs).count() as u32,
        };
    }

    let repo_key = |r: &str| r.to_ascii_lowercase();
    let allowlisted: BTreeSet<String> = spec.allowlist.iter().map(|e| repo_key(&e.repo)).collect();

    // Canonical order of the inputs, so the result cannot depend on it.
    let mut issues: Vec<&ReadyIssue> = input.issues.iter().collect();
    issues.sort_by(|a, b| {
        (repo_key(&a.repo), a.number, &a.title, &a.body, &a.labels).cmp(&(
            repo_key(&b.repo),
            b.number,
            &b.title,
            &b.body,
            &b.labels,
        ))
    });
    issues.dedup_by(|a, b| repo_key(&a.repo) == repo_key(&b.repo) && a.number == b.number);
    let mut runs: Vec<&ExistingRun> = input.runs.iter().collect();
    runs.sort_by(|a, b| {
        (&a.name, repo_key(&a.repo), a.issue, a.attempt).cmp(&(
            &b.name,
            repo_key(&b.repo),
            b.issue,
            b.attempt,
        ))
    });

    // Holder of each repo: the lexically first non-terminal run (there should be only one).
    let mut holders: BTreeMap<String, String> = BTreeMap::new();
    for run in runs.iter().filter(|r| !r.phase.is_terminal()) {
        holders
            .entry(repo_key(&run.repo))
            .or_insert_with(|| run.name.clone());
    }
    let existing_in_flight = non_terminal(input.runs).count() as u32;

    let open_blockers = blocker_graph(&issues);
    let mut survivors: Vec<(&ReadyIssue, Option<u32>, u32)> = vec![];
    let mut queue: Vec<Queued> = vec![];
    for issue in &issues {
        let priority = parse_priority(&issue.labels);
        let key = repo_key(&issue.repo);
        let gate = if !allowlisted.contains(&key) {
            Err(SkipReason::NotAllowlisted)
        } else if let Some(why) = &issue.facts_error {
            Err(SkipReason::FactsUnavailable(why.clone()))
        } else {
            trust_gate(spec, &issue.labeler)
                .and_then(|()| blocked_gate(issue, &open_blockers))
                .and_then(|()| handled_gate(issue, &runs))
                .and_then(|attempt| match holders.get(&key) {
                    Some(holder) => Err(SkipReason::RepoBusy { run: holder.clone() }),
                    None => Ok(attempt),
                })
        };
        match gate {
            Ok(attempt) => survivors.push((issue, priority, attempt)),
            Err(reason) => queue.push(queued(issue, priority, reason)),
        }
    }

    // Priority (labelled before unlabelled, lower first), then issue number, then repo.
    survivors.sort_by(|(a, pa, _), (b, pb, _)| {
        (pa.unwrap_or(u32::MAX), pa.is_none(), a.number, repo_key(&a.repo)).cmp(&(
            pb.unwrap_or(u32::MAX),
            pb.is_none(),
            b.number,
            repo_key(&b.repo),
        ))
    });
    let max = spec.concurrency.max_in_flight;
    let mut create: Vec<NewRun> = vec![];
    for (issue, priority, attempt) in survivors {
        if input.executor_refused {
            queue.push(queued(issue, priority, SkipReason::ExecutorRefused));
            continue;
        }
        let key = repo_key(&issue.repo);
        if let Some(taken) = create.iter().find(|r| repo_key(&r.repo) == key) {
            queue.push(queued(
                issue,
                priority,
                SkipReason::RepoBusy {
                    run: taken.name.clone(),
                },
            ));
            continue;
        }
        if existing_in_flight + create.len() as u32 >= max {
            queue.push(queued(issue, priority, SkipReason::MaxInFlight(max)));
            continue;
        }
        create.push(NewRun {
            name: naming::run_name(&issue.repo, issue.number, attempt),
            repo: issue.repo.clone(),
            issue: issue.number,
            attempt,
            priority,
            title: issue.title.clone(),
            snapshot: TaskSnapshot {
                title: issue.title.clone(),
                body: issue.body.clone(),
                sha256: naming::snapshot_sha256(&issue.title, &issue.body),
            },
        });
    }
    queue.sort_by(|a, b| {
        (
            a.priority.unwrap_or(u32::MAX),
            a.priority.is_none(),
            a.issue,
            repo_key(&a.repo),
        )
            .cmp(&(
                b.priority.unwrap_or(u32::MAX),
                b.priority.is_none(),
                b.issue,
                repo_key(&b.repo),
            ))
    });

    let repos = spec
        .allowlist
        .iter()
        .map(|entry| {
            let key = repo_key(&entry.repo);
            let holder = holders.get(&key).cloned().or_else(|| {
                create
                    .iter()
                    .find(|r| repo_key(&r.repo) == key)
                    .map(|r| r.name.clone())
            });
            let mut waiting: Vec<u64> = queue
                .iter()
                .filter(|q| repo_key(&q.repo) == key)
                .map(|q| q.issue)
                .collect();
            waiting.sort_unstable();
            RepoLock {
                repo: entry.repo.clone(),
                holder,
                waiting,
            }
        })
        .collect();

    DispatchDecision {
        disarmed: None,
        in_flight: existing_in_flight + create.len() as u32,
        create,
        queue,
        repos,
    }
}

fn non_terminal(runs: &[ExistingRun]) -> impl Iterator<Item = &ExistingRun> {
    runs.iter().filter(|r| !r.phase.is_terminal())
}

fn queued(issue: &ReadyIssue, priority: Option<u32>, reason: SkipReason) -> Queued {
    Queued {
        repo: issue.repo.clone(),
        issue: issue.number,
        title: issue.title.clone(),
        priority,
        reason,
    }
}

/// Trust: the most recent labeler is a User (or an allowed bot) with at least the minimum
/// permission. Fail closed on anything unknown.
fn trust_gate(spec: &AfkConfigSpec, labeler: &Labeler) -> Result<(), SkipReason> {
    let Labeler::Known {
        login,
        actor_type,
        permission,
        ..
    } = labeler
    else {
        return Err(SkipReason::NoLabelEvent);
    };
    let allowed_bot = spec
        .trust
        .allowed_bots
        .iter()
        .any(|b| b.eq_ignore_ascii_case(login));
    if actor_type != "User" && !allowed_bot {
        return Err(SkipReason::UntrustedActorType {
            login: login.clone(),
            actor_type: actor_type.clone(),
        });
    }
    match permission {
        Some(p) if *p >= spec.trust.min_permission.as_permission() => Ok(()),
        _ => Err(SkipReason::UntrustedLabeler {
            login: login.clone(),
            permission: *permission,
        }),
    }
}

type IssueKey = (String, u64);

/// Open-blocker edges among the ready issues, for cycle detection.
fn blocker_graph(issues: &[&ReadyIssue]) -> HashMap<IssueKey, Vec<IssueKey>> {
    issues
        .iter()
        .map(|i| {
            let key = (i.repo.to_ascii_lowercase(), i.number);
            let edges = i
                .blockers
                .iter()
                .filter(|b| b.state != BlockerState::Closed)
                .map(|b| (b.issue.repo_or(&i.repo).to_ascii_lowercase(), b.issue.number))
                .collect();
            (key, edges)
        })
        .collect()
}

fn blocked_gate(issue: &ReadyIssue, graph: &HashMap<IssueKey, Vec<IssueKey>>) -> Result<(), SkipReason> {
    let mut blocking: Vec<&Blocker> = issue
        .blockers
        .iter()
        .filter(|b| b.state != BlockerState::Closed)
        .collect();
    if blocking.is_empty() {
        return Ok(());
    }
    blocking.sort();
    blocking.dedup();
    let blockers = blocking
        .iter()
        .map(|b| {
            let state = match b.state {
                BlockerState::Open => "open",
                BlockerState::Unknown => "state unknown",
                BlockerState::Closed => "closed",
            };
            format!("{} ({state})", b.issue.display(&issue.repo))
        })
        .collect();
    let start = (issue.repo.to_ascii_lowercase(), issue.number);
    let cycle = find_cycle(&start, graph).map(|path| {
        path.iter()
            .map(|(repo, n)| {
                if repo.eq_ignore_ascii_case(&issue.repo) {
                    format!("#{n}")
                } else {
                    format!("{repo}#{n}")
                }
            })
            .collect::<Vec<_>>()
            .join(" → ")
    });
    Err(SkipReason::Blocked { blockers, cycle })
}

/// A path from `start` back to itself along open-blocker edges, if one exists (shortest first
/// by breadth-first search, so the reported cycle is stable).
fn find_cycle(start: &IssueKey, graph: &HashMap<IssueKey, Vec<IssueKey>>) -> Option<Vec<IssueKey>> {
    let mut parents: HashMap<&IssueKey, &IssueKey> = HashMap::new();
    let mut frontier: Vec<&IssueKey> = vec![start];
    while !frontier.is_empty() {
        let mut next = vec![];
        for node in frontier {
            let mut edges: Vec<&IssueKey> = graph.get(node).map(|e| e.iter().collect()).unwrap_or_default();
            edges.sort();
            for target in edges {
                if target == start {
                    // Walk back from `node` to `start`, then read it forwards and close the loop.
                    let mut path = vec![node.clone()];
                    let mut cur = node;
                    while cur != start {
                        cur = parents[cur];
                        path.push(cur.clone());
                    }
                    path.reverse();
                    path.push(start.clone());
                    return Some(path);
                }
                if !parents.contains_key(target) && graph.contains_key(target) {
                    parents.insert(target, node);
                    next.push(target);
                }
            }
        }
        frontier = next;
    }
    None
}

/// Not already handled: no non-terminal run for the issue; after a terminal run the label must
/// have been re-applied after it finished. Returns the attempt number for a new run.
fn handled_gate(issue: &ReadyIssue, runs: &[&ExistingRun]) -> Result<u32, SkipReason> {
    let mine: Vec<&&ExistingRun> = runs
        .iter()
        .filter(|r| r.repo.eq_ignore_ascii_case(&issue.repo) && r.issue == issue.number)
        .collect();
    if let Some(active) = mine.iter().find(|r| !r.phase.is_terminal()) {
        return Err(SkipReason::InProgress {
            run: active.name.clone(),
        });
    }
    let Some(latest) = mine
        .iter()
        .max_by_key(|r| (r.attempt, r.finished_at, r.name.as_str()))
    else {
        return Ok(1);
    };
    let labeled_at = match &issue.labeler {
        Labeler::Known { labeled_at, .. } => Some(*labeled_at),
        Labeler::Unknown => None,
    };
    // Kubernetes stores times to the second; a label in the same second as the finish is not
    // provably later, so it does not count (fail closed).
    match (labeled_at, latest.finished_at) {
        (Some(labeled), Some(finished)) if labeled.as_second() > finished.as_second() => {
            Ok(latest.attempt.saturating_add(1))
        }
        _ => Err(SkipReason::AlreadyAttempted {
            run: latest.name.clone(),
            phase: latest.phase,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AfkConfigSpec, RepoEntry};
    use proptest::prelude::*;

    fn spec(repos: &[&str], max_in_flight: u32) -> AfkConfigSpec {
        let mut spec: AfkConfigSpec = serde_json::from_value(serde_json::json!({
            "suspend": false,
            "tracker": {"github": {"tokenSecretRef": {"name": "gh", "key": "t"}}},
            "executor": {"t3": {"url": "http://t3", "tokenSecretRef": {"name": "t3", "key": "t"}, "model": "m"}},
        }))
        .unwrap();
        spec.allowlist = repos
            .iter()
            .map(|r| RepoEntry {
                repo: r.to_string(),
                default_branch: None,
                workspace_root: None,
                rollout: None,
                woodpecker_repo_id: None,
            })
            .collect();
        spec.concurrency.max_in_flight = max_in_flight;
        spec
    }

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn trusted(at: i64) -> Labeler {
        Labeler::Known {
            login: "alice".into(),
            actor_type: "User".into(),
            permission: Some(Permission::Write),
            labeled_at: ts(at),
        }
    }

    fn issue(repo: &str, number: u64) -> ReadyIssue {
        ReadyIssue {
            repo: repo.into(),
            number,
            title: format!("Issue {number}"),
            body: String::new(),
            labels: vec!["ready-for-agent".into()],
            labeler: trusted(100),
            blockers: vec![],
            facts_error: None,
        }
    }

    fn run(
        name: &str,
        repo: &str,
        issue: u64,
        attempt: u32,
        phase: Phase,
        finished: Option<i64>,
    ) -> ExistingRun {
        ExistingRun {
            name: name.into(),
            repo: repo.into(),
            issue,
            attempt,
            phase,
            finished_at: finished.map(ts),
        }
    }

    fn decide_with(spec: &AfkConfigSpec, issues: &[ReadyIssue], runs: &[ExistingRun]) -> DispatchDecision {
        decide(&DispatchInput {
            spec,
            emergency_stop: None,
            issues,
            runs,
            executor_refused: false,
        })
    }

    fn reason_of(d: &DispatchDecision, number: u64) -> String {
        d.queue
            .iter()
            .find(|q| q.issue == number)
            .map(|q| q.reason.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn kill_switches_short_circuit_in_order() {
        let mut s = spec(&["acme/app"], 4);
        let issues = [issue("acme/app", 1)];
        let d = decide(&DispatchInput {
            spec: &s,
            emergency_stop: Some("db down"),
            issues: &issues,
            runs: &[],
            executor_refused: false,
        });
        assert_eq!(d.disarmed, Some(Disarmed::EmergencyStop("db down".into())));
        assert!(d.create.is_empty() && d.queue.is_empty());
        s.suspend = true;
        let d = decide_with(&s, &issues, &[]);
        assert_eq!(d.disarmed, Some(Disarmed::Suspended));
        assert!(d.create.is_empty());
        s.suspend = false;
        s.allowlist.clear();
        assert_eq!(
            decide_with(&s, &issues, &[]).disarmed,
            Some(Disarmed::EmptyAllowlist)
        );
    }

    #[test]
    fn a_trusted_free_issue_is_dispatched_with_a_snapshot() {
        let s = spec(&["acme/app"], 4);
        let mut i = issue("acme/app", 42);
        i.body = "Do the thing".into();
        let d = decide_with(&s, &[i], &[]);
        assert_eq!(d.create.len(), 1);
        let r = &d.create[0];
        assert_eq!((r.name.as_str(), r.attempt), ("acme-app-42-1", 1));
        assert_eq!(
            r.snapshot.sha256,
            naming::snapshot_sha256("Issue 42", "Do the thing")
        );
        assert_eq!(d.in_flight, 1);
        assert_eq!(d.repos[0].holder.as_deref(), Some("acme-app-42-1"));
    }

    #[test]
    fn trust_gate_rows() {
        let s = spec(&["acme/app"], 4);
        let cases: Vec<(Labeler, &str)> = vec![
            (Labeler::Unknown, "no attributable label event (untrusted)"),
            (
                Labeler::Known {
                    login: "tri".into(),
                    actor_type: "User".into(),
                    permission: Some(Permission::Triage),
                    labeled_at: ts(1),
                },
                "labeled by @tri (triage permission)",
            ),
            (
                Labeler::Known {
                    login: "who".into(),
                    actor_type: "User".into(),
                    permission: None,
                    labeled_at: ts(1),
                },
                "labeled by @who (permission unknown)",
            ),
            (
                Labeler::Known {
                    login: "x[bot]".into(),
                    actor_type: "Bot".into(),
                    permission: Some(Permission::Admin),
                    labeled_at: ts(1),
                },
                "labeled by @x[bot] (Bot, not an allowed bot)",
            ),
        ];
        for (labeler, reason) in cases {
            let mut i = issue("acme/app", 1);
            i.labeler = labeler;
            let d = decide_with(&s, &[i], &[]);
            assert!(d.create.is_empty());
            assert_eq!(reason_of(&d, 1), reason);
        }
    }

    #[test]
    fn min_permission_and_allowed_bots() {
        let mut s = spec(&["acme/app"], 4);
        s.trust.min_permission = crate::crd::MinPermission::Maintain;
        let mut i = issue("acme/app", 1);
        assert_eq!(
            reason_of(&decide_with(&s, &[i.clone()], &[]), 1),
            "labeled by @alice (write permission)"
        );
        i.labeler = Labeler::Known {
            login: "Renovate[bot]".into(),
            actor_type: "Bot".into(),
            permission: Some(Permission::Admin),
            labeled_at: ts(1),
        };
        s.trust.allowed_bots = vec!["renovate[bot]".into()];
        assert_eq!(
            decide_with(&s, &[i], &[]).create.len(),
            1,
            "allowed bots compare case-insensitively"
        );
    }

    #[test]
    fn blocked_gate_rows() {
        let s = spec(&["acme/app"], 4);
        let mut i = issue("acme/app", 5);
        i.blockers = vec![
            Blocker {
                issue: IssueRef::local(3),
                state: BlockerState::Open,
            },
            Blocker {
                issue: IssueRef::qualified("acme/lib", 9),
                state: BlockerState::Unknown,
            },
            Blocker {
                issue: IssueRef::local(2),
                state: BlockerState::Closed,
            },
        ];
        let d = decide_with(&s, &[i.clone()], &[]);
        assert_eq!(
            reason_of(&d, 5),
            "Blocked by #3 (open), acme/lib#9 (state unknown)"
        );
        i.blockers.retain(|b| b.state == BlockerState::Closed);
        assert_eq!(
            decide_with(&s, &[i], &[]).create.len(),
            1,
            "closed blockers do not block"
        );
    }

    #[test]
    fn dependency_cycles_are_named() {
        let s = spec(&["acme/app"], 4);
        let mut a = issue("acme/app", 5);
        a.blockers = vec![Blocker {
            issue: IssueRef::local(3),
            state: BlockerState::Open,
        }];
        let mut b = issue("acme/app", 3);
        b.blockers = vec![Blocker {
            issue: IssueRef::qualified("acme/app", 5),
            state: BlockerState::Open,
        }];
        let d = decide_with(&s, &[a, b], &[]);
        assert!(d.create.is_empty());
        assert_eq!(
            reason_of(&d, 5),
            "Blocked by #3 (open); dependency cycle #5 → #3 → #5"
        );
        assert_eq!(
            reason_of(&d, 3),
            "Blocked by #5 (open); dependency cycle #3 → #5 → #3"
        );
    }

    #[test]
    fn handled_gate_rows() {
        let s = spec(&["acme/app"], 4);
        let i = issue("acme/app", 7); // labelled at t=100
        let active = [run("acme-app-7-1", "acme/app", 7, 1, Phase::Working, None)];
        assert_eq!(
            reason_of(&decide_with(&s, std::slice::from_ref(&i), &active), 7),
            "in progress: afkrun acme-app-7-1"
        );
        let done_after_label = [run("acme-app-7-1", "acme/app", 7, 1, Phase::Frozen, Some(200))];
        assert_eq!(
            reason_of(&decide_with(&s, std::slice::from_ref(&i), &done_after_label), 7),
            "already attempted: afkrun acme-app-7-1 (Frozen); re-apply the label to retry"
        );
        let done_before_label = [
            run("acme-app-7-1", "acme/app", 7, 1, Phase::Frozen, Some(20)),
            run("acme-app-7-2", "acme/app", 7, 2, Phase::NeedsHuman, Some(50)),
        ];
        let d = decide_with(&s, std::slice::from_ref(&i), &done_before_label);
        assert_eq!(d.create[0].attempt, 3);
        // A label within the same second as the finish is not provably later.
        let mut same_second = i.clone();
        same_second.labeler = Labeler::Known {
            login: "alice".into(),
            actor_type: "User".into(),
            permission: Some(Permission::Write),
            labeled_at: Timestamp::from_millisecond(50_500).unwrap(),
        };
        let finished_same_second = [run("acme-app-7-1", "acme/app", 7, 1, Phase::Frozen, Some(50))];
        assert!(
            decide_with(&s, &[same_second], &finished_same_second)
                .create
                .is_empty()
        );
        assert_eq!(d.create[0].name, "acme-app-7-3");
    }

    #[test]
    fn one_run_per_repo_by_priority_then_number() {
        let s = spec(&["acme/app"], 4);
        let mut low = issue("acme/app", 1);
        low.labels.push("P2".into());
        let mut high = issue("acme/app", 9);
        high.labels.push("priority:0".into());
        let plain = issue("acme/app", 2);
        let d = decide_with(&s, &[low, plain, high], &[]);
        assert_eq!(d.create.iter().map(|r| r.issue).collect::<Vec<_>>(), vec![9]);
        assert_eq!(reason_of(&d, 1), "repo busy: afkrun acme-app-9-1");
        assert_eq!(reason_of(&d, 2), "repo busy: afkrun acme-app-9-1");
        assert_eq!(
            d.queue.iter().map(|q| q.issue).collect::<Vec<_>>(),
            vec![1, 2],
            "labelled before unlabelled"
        );
        assert_eq!(d.repos[0].waiting, vec![1, 2]);
    }

    #[test]
    fn busy_repo_and_capacity() {
        let s = spec(&["a/x", "b/y", "c/z"], 2);
        let runs = [run("a-x-1-1", "a/x", 1, 1, Phase::Verifying, None)];
        let d = decide_with(&s, &[issue("a/x", 2), issue("b/y", 3), issue("c/z", 4)], &runs);
        assert_eq!(reason_of(&d, 2), "repo busy: afkrun a-x-1-1");
        assert_eq!(d.create.iter().map(|r| r.issue).collect::<Vec<_>>(), vec![3]);
        assert_eq!(reason_of(&d, 4), "max in flight (2)");
        assert_eq!(d.in_flight, 2);
        assert_eq!(
            d.repos.iter().map(|r| r.holder.clone()).collect::<Vec<_>>(),
            vec![Some("a-x-1-1".into()), Some("b-y-3-1".into()), None]
        );
    }

    #[test]
    fn missing_facts_fail_closed() {
        let s = spec(&["acme/app"], 4);
        let mut i = issue("acme/app", 3);
        i.facts_error = Some("dependency lookup failed".into());
        let d = decide_with(&s, &[i], &[]);
        assert!(d.create.is_empty());
        assert_eq!(reason_of(&d, 3), "github unavailable: dependency lookup failed");
    }

    #[test]
    fn repos_outside_the_allowlist_are_queued() {
        let s = spec(&["acme/app"], 4);
        let d = decide_with(&s, &[issue("evil/repo", 1)], &[]);
        assert!(d.create.is_empty());
        assert_eq!(reason_of(&d, 1), "repo not in allowlist");
    }

    fn arb_issue() -> impl Strategy<Value = ReadyIssue> {
        (
            0usize..4,
            1u64..8,
            proptest::option::of(0u32..3),
            0u8..4,
            proptest::collection::vec((1u64..8, any::<bool>()), 0..2),
        )
            .prop_map(|(repo, number, prio, trust, blockers)| {
                let mut i = issue(["a/x", "b/y", "c/z", "d/w"][repo], number);
                if let Some(p) = prio {
                    i.labels.push(format!("P{p}"));
                }
                i.labeler = match trust {
                    0 => Labeler::Unknown,
                    1 => Labeler::Known {
                        login: "t".into(),
                        actor_type: "User".into(),
                        permission: Some(Permission::Triage),
                        labeled_at: ts(5),
                    },
                    _ => trusted(100),
                };
                i.blockers = blockers
                    .into_iter()
                    .map(|(n, open)| Blocker {
                        issue: IssueRef::local(n),
                        state: if open {
                            BlockerState::Open
                        } else {
                            BlockerState::Closed
                        },
                    })
                    .collect();
                i
            })
    }

    fn arb_run() -> impl Strategy<Value = ExistingRun> {
        (
            0usize..4,
            1u64..8,
            1u32..3,
            0usize..10,
            proptest::option::of(0i64..200),
        )
            .prop_map(|(repo, issue, attempt, phase, fin)| {
                let repo = ["a/x", "b/y", "c/z", "d/w"][repo];
                let phases = [
                    Phase::Pending,
                    Phase::Dispatching,
                    Phase::Working,
                    Phase::Verifying,
                    Phase::FixingForward,
                    Phase::Succeeded,
                    Phase::NeedsHuman,
                    Phase::Frozen,
                    Phase::Cancelled,
                    Phase::Failed,
                ];
                run(
                    &naming::run_name(repo, issue, attempt),
                    repo,
                    issue,
                    attempt,
                    phases[phase],
                    fin,
                )
            })
    }

    proptest! {
        #[test]
        fn invariants_hold(
            issues in proptest::collection::vec(arb_issue(), 0..12),
            runs in proptest::collection::vec(arb_run(), 0..6),
            max in 1u32..5,
            seed in any::<u64>(),
            refused in any::<bool>(),
        ) {
            // Object names are unique in Kubernetes: two runs never share one.
            let mut names = BTreeSet::new();
            let runs: Vec<ExistingRun> = runs.into_iter().filter(|r| names.insert(r.name.clone())).collect();
            let s = spec(&["a/x", "b/y", "c/z"], max);
            let d = decide(&DispatchInput {
                spec: &s,
                emergency_stop: None,
                issues: &issues,
                runs: &runs,
                executor_refused: refused,
            });
            // Nothing is created while T3 refuses the token.
            prop_assert!(!refused || d.create.is_empty());

            // At most one per repo, and never a repo that already has a non-terminal run.
            let mut repos = BTreeSet::new();
            for r in &d.create {
                prop_assert!(repos.insert(r.repo.clone()), "two runs for {}", r.repo);
                prop_assert!(!runs.iter().any(|e| e.repo == r.repo && !e.phase.is_terminal()));
            }
            // Never past maxInFlight.
            let existing = runs.iter().filter(|r| !r.phase.is_terminal()).count() as u32;
            prop_assert!(d.create.is_empty() || existing + d.create.len() as u32 <= max);
            // Every distinct ready issue is either created or queued, exactly once.
            let distinct: BTreeSet<(String, u64)> = issues.iter().map(|i| (i.repo.clone(), i.number)).collect();
            let mut seen: Vec<(String, u64)> = d.create.iter().map(|r| (r.repo.clone(), r.issue)).collect();
            seen.extend(d.queue.iter().map(|q| (q.repo.clone(), q.issue)));
            seen.sort();
            prop_assert_eq!(seen, distinct.into_iter().collect::<Vec<_>>());

            // Independent of input order.
            let mut shuffled_issues = issues.clone();
            let mut shuffled_runs = runs.clone();
            let n = shuffled_issues.len().max(1) as u64;
            shuffled_issues.rotate_left((seed % n) as usize);
            shuffled_issues.reverse();
            shuffled_runs.reverse();
            // Duplicated (repo, number) entries differ only in labels/labeler; order-independence
            // holds for distinct keys, which is what a tracker returns.
            let unique = issues.iter().map(|i| (i.repo.clone(), i.number)).collect::<BTreeSet<_>>().len() == issues.len();
            if unique {
                let again = decide(&DispatchInput {
                    spec: &s,
                    emergency_stop: None,
                    issues: &shuffled_issues,
                    runs: &shuffled_runs,
                    executor_refused: refused,
                });
                prop_assert_eq!(again, d);
            }
        }
    }
}
