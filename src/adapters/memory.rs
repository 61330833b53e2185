//! In-memory adapters: a second implementation of each port, for tests that drive one reconcile
//! step at a time in milliseconds. They keep the contracts of the real systems — T3 answers a
//! repeated `commandId` from its receipt and never applies it twice, refuses a reused id, a
//! second project on one workspace root and commands on threads it does not have; GitHub answers
//! 404 for what does not exist — so a controller that passes against them does not lean on a
//! leniency the real servers lack.
//!
//! Every side effect is written to a shared [`Journal`], together with what the journal's
//! witness saw at that moment (in the tests: the run's stored status), so a test can assert what
//! was on record before each command was sent.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::Value;

use super::{
    AdapterError, AdapterErrorKind,
    github::{
        CheckRun, CommitInfo, CommitStatus, Dependency, Issue, LabelEvent, Listing, RateLimit, Tracker,
    },
    notify::{Notifier, Outgoing},
    rollout::{DeploymentState, RolloutChecker},
    t3::{AuthSession, Command, Environment, Executor, LatestTurn, ProjectShell, Shell, ThreadShell},
};
use crate::crd::Permission;

/// A side effect, as the outside world saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// What happened, e.g. `t3 thread.turn.start <commandId>` or `github add-label ready`.
    pub effect: String,
    /// What the witness saw when it happened (`Value::Null` without one).
    pub witnessed: Value,
}

type Witness = Box<dyn Fn() -> Value + Send + Sync>;

/// The ordered record of side effects of every in-memory adapter sharing it.
#[derive(Default)]
pub struct Journal {
    entries: Mutex<Vec<Entry>>,
    witness: Mutex<Option<Witness>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.effects()).finish()
    }
}

impl Journal {
    /// A shared, empty journal.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Call `witness` at every side effect and keep what it returns with the entry.
    pub fn witness(&self, witness: impl Fn() -> Value + Send + Sync + 'static) {
        *self.witness.lock().expect("journal") = Some(Box::new(witness));
    }

    fn record(&self, effect: String) {
        let witnessed = self
            .witness
            .lock()
            .expect("journal")
            .as_ref()
            .map_or(Value::Null, |w| w());
        self.entries
            .lock()
            .expect("journal")
            .push(Entry { effect, witnessed });
    }

    /// Every entry, in order.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().expect("journal").clone()
    }

    /// The effects, in order.
    pub fn effects(&self) -> Vec<String> {
        self.entries().into_iter().map(|e| e.effect).collect()
    }

    /// How many effects start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.effects().iter().filter(|e| e.starts_with(prefix)).count()
    }
}

/// What the next command sent to [`MemoryT3`] meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum T3Fault {
    /// T3 is down: a 503, nothing applied.
    Down,
    /// T3 applies the command and the reply is lost (a crash or a cut connection after the
    /// send): the caller sees a transport error.
    ReplyLost,
    /// T3 refuses the token (401).
    Unauthorized,
}

#[derive(Default)]
struct T3State {
    projects: Vec<ProjectShell>,
    threads: Vec<ThreadShell>,
    /// `commandId` → the aggregate it was accepted on and its sequence, or `None` when it was
    /// rejected (a rejected id stays rejected).
    receipts: HashMap<String, Option<(String, u64)>>,
    sequence: u64,
    /// Faults for the next command of a type (`thread.turn.start`, …), first in first out.
    faults: VecDeque<(&'static str, T3Fault)>,
    /// Thread id → pending request id (an approval or a question the agent waits on).
    pending: HashMap<String, String>,
}

/// T3, in memory.
pub struct MemoryT3 {
    journal: Arc<Journal>,
    state: Mutex<T3State>,
}

impl MemoryT3 {
    /// An empty T3 writing to `journal`.
    pub fn new(journal: Arc<Journal>) -> Self {
        Self {
            journal,
            state: Mutex::default(),
        }
    }

    /// The next command of `command_type` (e.g. `thread.turn.start`) meets `fault`.
    pub fn fault_on(&self, command_type: &'static str, fault: T3Fault) {
        self.state
            .lock()
            .expect("t3")
            .faults
            .push_back((command_type, fault));
    }

    /// The agent waits on `request_id` in `thread_id` (an approval or a question).
    pub fn pend(&self, thread_id: &str, request_id: &str) {
        self.state
            .lock()
            .expect("t3")
            .pending
            .insert(thread_id.into(), request_id.into());
    }

    /// An active project (as a human or an earlier run made it).
    pub fn add_project(&self, id: &str, workspace_root: &str) {
        self.state.lock().expect("t3").projects.push(ProjectShell {
            id: id.into(),
            title: id.into(),
            workspace_root: workspace_root.into(),
        });
    }

    /// The agent's latest turn on `thread_id` ends in `state` (`completed`, `error`, …).
    pub fn end_turn(&self, thread_id: &str, state: &str, at: Timestamp) {
        let mut s = self.state.lock().expect("t3");
        if let Some(turn) = s
            .threads
            .iter_mut()
            .find(|t| t.id == thread_id)
            .and_then(|t| t.latest_turn.as_mut())
        {
            turn.state = state.into();
            turn.completed_at = Some(at.to_string());
        }
    }

    /// The thread, as the shell shows it.
    pub fn thread_shell(&self, thread_id: &str) -> Option<ThreadShell> {
        let s = self.state.lock().expect("t3");
        s.threads.iter().find(|t| t.id == thread_id).cloned()
    }

    fn apply(state: &mut T3State, command: &Command) -> Result<(), AdapterError> {
        let rejected = |why: &str| {
            Err(AdapterError::permanent(
                AdapterErrorKind::DispatchRejected,
                format!("t3: {why} (orchestration_dispatch_failed)"),
            )
            .with_status(500))
        };
        let has_thread = |state: &T3State, id: &str| state.threads.iter().any(|t| t.id == id);
        match command {
            Command::ProjectCreate {
                project_id,
                workspace_root,
                title,
                ..
            } => {
                let root = workspace_root.trim_end_matches('/');
                if state
                    .projects
                    .iter()
                    .any(|p| p.id == *project_id || p.workspace_root.trim_end_matches('/') == root)
                {
                    return rejected("project id or workspace root taken");
                }
                state.projects.push(ProjectShell {
                    id: project_id.clone(),
                    title: title.clone(),
                    workspace_root: root.into(),
                });
            }
            Command::ThreadCreate {
                thread_id,
                project_id,
                ..
            } => {
                if !state.projects.iter().any(|p| p.id == *project_id) || has_thread(state, thread_id) {
                    return rejected("unknown project or thread exists");
                }
                state.threads.push(ThreadShell {
                    id: thread_id.clone(),
                    project_id: project_id.clone(),
                    ..ThreadShell::default()
                });
            }
            Command::ThreadTurnStart {
                command_id,
                thread_id,
                created_at,
                ..
            } => {
                let Some(thread) = state.threads.iter_mut().find(|t| t.id == *thread_id) else {
                    return rejected("unknown thread");
                };
                thread.latest_turn = Some(LatestTurn {
                    turn_id: format!("turn-{command_id}"),
                    state: "running".into(),
                    requested_at: Some(created_at.clone()),
                    ..LatestTurn::default()
                });
            }
            Command::ThreadTurnInterrupt { thread_id, .. } => {
                let Some(thread) = state.threads.iter_mut().find(|t| t.id == *thread_id) else {
                    return rejected("unknown thread");
                };
                if let Some(turn) = thread.latest_turn.as_mut() {
                    turn.state = "interrupted".into();
                }
            }
            Command::ThreadApprovalRespond {
                thread_id,
                request_id,
                ..
            }
            | Command::ThreadUserInputRespond {
                thread_id,
                request_id,
                ..
            } => {
                if state.pending.get(thread_id) != Some(request_id) {
                    return rejected("unknown request");
                }
                state.pending.remove(thread_id);
            }
            Command::ThreadSessionStop { thread_id, .. } => {
                if !has_thread(state, thread_id) {
                    return rejected("unknown thread");
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Executor for MemoryT3 {
    async fn environment(&self) -> Result<Environment, AdapterError> {
        Ok(Environment {
            server_version: Some("memory".into()),
            ..Environment::default()
        })
    }

    async fn auth_session(&self) -> Result<AuthSession, AdapterError> {
        Ok(AuthSession {
            authenticated: true,
            ..AuthSession::default()
        })
    }

    async fn shell(&self) -> Result<Shell, AdapterError> {
        let s = self.state.lock().expect("t3");
        Ok(Shell {
            snapshot_sequence: s.sequence,
            projects: s.projects.clone(),
            threads: s.threads.clone(),
        })
    }

    async fn thread(&self, thread_id: &str) -> Result<Value, AdapterError> {
        let s = self.state.lock().expect("t3");
        match s.threads.iter().find(|t| t.id == thread_id) {
            Some(t) => Ok(serde_json::json!({"id": t.id, "activities": []})),
            None => Err(
                AdapterError::permanent(AdapterErrorKind::NotFound, "t3: thread not found").with_status(404),
            ),
        }
    }

    /// As T3's `/api/orchestration/dispatch`: schema first (the real client validates before
    /// sending), then the receipt of a known `commandId` (a repeat on the same aggregate is
    /// answered from it and never applied again; the id on another aggregate, or an id once
    /// rejected, is refused), then the business rules.
    async fn dispatch(&self, command: &Command) -> Result<u64, AdapterError> {
        command.validate()?;
        let mut s = self.state.lock().expect("t3");
        let fault = s
            .faults
            .iter()
            .position(|(t, _)| *t == command.type_name())
            .and_then(|i| s.faults.remove(i))
            .map(|(_, f)| f);
        match fault {
            Some(T3Fault::Down) => {
                return Err(
                    AdapterError::transient(AdapterErrorKind::ServerError, "t3: unavailable")
                        .with_status(503),
                );
            }
            Some(T3Fault::Unauthorized) => {
                return Err(
                    AdapterError::permanent(AdapterErrorKind::Auth, "t3: not authorized").with_status(401),
                );
            }
            fault => {
                let id = command.command_id().to_string();
                let aggregate = aggregate(command);
                let sequence = match s.receipts.get(&id) {
                    Some(Some((on, seq))) if *on == aggregate => *seq,
                    Some(_) => {
                        return Err(AdapterError::permanent(
                            AdapterErrorKind::DispatchRejected,
                            "t3: command id used on another aggregate or rejected before (orchestration_dispatch_failed)",
                        )
                        .with_status(500));
                    }
                    None => {
                        if let Err(e) = Self::apply(&mut s, command) {
                            s.receipts.insert(id, None);
                            return Err(e);
                        }
                        s.sequence += 1;
                        let seq = s.sequence;
                        s.receipts.insert(id.clone(), Some((aggregate, seq)));
                        drop(s);
                        self.journal.record(format!("t3 {} {id}", command.type_name()));
                        seq
                    }
                };
                if fault == Some(T3Fault::ReplyLost) {
                    return Err(AdapterError::transient(
                        AdapterErrorKind::Transport,
                        "t3: connection reset after the send",
                    ));
                }
                Ok(sequence)
            }
        }
    }
}

/// The aggregate a command acts on: its project or its thread.
fn aggregate(command: &Command) -> String {
    match command {
        Command::ProjectCreate { project_id, .. } => format!("project:{project_id}"),
        Command::ThreadCreate { thread_id, .. }
        | Command::ThreadTurnStart { thread_id, .. }
        | Command::ThreadTurnInterrupt { thread_id, .. }
        | Command::ThreadApprovalRespond { thread_id, .. }
        | Command::ThreadUserInputRespond { thread_id, .. }
        | Command::ThreadSessionStop { thread_id, .. } => format!("thread:{thread_id}"),
    }
}

#[derive(Default)]
struct IssueState {
    title: String,
    open: bool,
    labels: BTreeSet<String>,
}

#[derive(Default)]
struct GitHubState {
    default_branch: BTreeMap<String, String>,
    issues: BTreeMap<(String, u64), IssueState>,
    comments: BTreeMap<u64, (String, u64, String)>,
    next_comment: u64,
    commits: BTreeMap<String, Vec<CommitInfo>>,
    check_runs: BTreeMap<String, Vec<CheckRun>>,
}

/// GitHub, in memory: repositories, issues with labels and comments, commits and check runs.
pub struct MemoryGitHub {
    journal: Arc<Journal>,
    state: Mutex<GitHubState>,
}

fn not_found(what: &str) -> AdapterError {
    AdapterError::permanent(AdapterErrorKind::NotFound, format!("github: {what} not found")).with_status(404)
}

impl MemoryGitHub {
    /// An empty GitHub writing to `journal`.
    pub fn new(journal: Arc<Journal>) -> Self {
        Self {
            journal,
            state: Mutex::default(),
        }
    }

    /// A repository with its default branch.
    pub fn add_repo(&self, repo: &str, default_branch: &str) {
        let mut s = self.state.lock().expect("github");
        s.default_branch
            .insert(repo.to_ascii_lowercase(), default_branch.into());
    }

    /// An open issue with labels.
    pub fn add_issue(&self, repo: &str, number: u64, title: &str, labels: &[&str]) {
        let mut s = self.state.lock().expect("github");
        s.issues.insert(
            (repo.to_ascii_lowercase(), number),
            IssueState {
                title: title.into(),
                open: true,
                labels: labels.iter().map(|l| l.to_string()).collect(),
            },
        );
    }

    /// A commit pushed to the repository's default branch (newest first, as GitHub lists).
    pub fn push_commit(&self, repo: &str, sha: &str, message: &str) {
        let mut s = self.state.lock().expect("github");
        s.commits.entry(repo.to_ascii_lowercase()).or_default().insert(
            0,
            CommitInfo {
                sha: sha.into(),
                message: message.into(),
                html_url: None,
            },
        );
    }

    /// A completed check run on `sha`.
    pub fn check(&self, sha: &str, name: &str, conclusion: &str) {
        let mut s = self.state.lock().expect("github");
        s.check_runs.entry(sha.into()).or_default().push(CheckRun {
            name: name.into(),
            status: "completed".into(),
            conclusion: Some(conclusion.into()),
            html_url: None,
        });
    }

    /// The issue's labels, sorted.
    pub fn labels(&self, repo: &str, number: u64) -> Vec<String> {
        let s = self.state.lock().expect("github");
        s.issues
            .get(&(repo.to_ascii_lowercase(), number))
            .map(|i| i.labels.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the issue is open.
    pub fn is_open(&self, repo: &str, number: u64) -> bool {
        let s = self.state.lock().expect("github");
        s.issues
            .get(&(repo.to_ascii_lowercase(), number))
            .is_some_and(|i| i.open)
    }

    fn with_issue<T>(
        &self,
        repo: &str,
        number: u64,
        f: impl FnOnce(&mut IssueState) -> T,
    ) -> Result<T, AdapterError> {
        let mut s = self.state.lock().expect("github");
        s.issues
            .get_mut(&(repo.to_ascii_lowercase(), number))
            .map(f)
            .ok_or_else(|| not_found("issue"))
    }
}

#[async_trait]
impl Tracker for MemoryGitHub {
    async fn list_labeled_issues(&self, repo: &str, label: &str) -> Result<Listing<Issue>, AdapterError> {
        let s = self.state.lock().expect("github");
        let repo = repo.to_ascii_lowercase();
        if !s.default_branch.contains_key(&repo) {
            return Err(not_found("repository"));
        }
        let items = s
            .issues
            .iter()
            .filter(|((r, _), i)| *r == repo && i.open && i.labels.contains(label))
            .map(|((_, number), i)| Issue {
                number: *number,
                title: i.title.clone(),
                body: String::new(),
                labels: i.labels.iter().cloned().collect(),
                state: "open".into(),
            })
            .collect();
        Ok(Listing {
            items,
            not_modified: false,
        })
    }

    async fn label_events(&self, repo: &str, number: u64) -> Result<Vec<LabelEvent>, AdapterError> {
        self.with_issue(repo, number, |_| vec![])
    }

    async fn permission(&self, _repo: &str, _user: &str) -> Result<Permission, AdapterError> {
        Err(not_found("collaborator"))
    }

    async fn blocked_by(&self, repo: &str, number: u64) -> Result<Vec<Dependency>, AdapterError> {
        self.with_issue(repo, number, |_| vec![])
    }

    async fn issue_state(&self, repo: &str, number: u64) -> Result<String, AdapterError> {
        self.with_issue(repo, number, |i| {
            if i.open { "open" } else { "closed" }.to_string()
        })
    }

    async fn issue_labels(&self, repo: &str, number: u64) -> Result<Vec<String>, AdapterError> {
        self.with_issue(repo, number, |i| i.labels.iter().cloned().collect())
    }

    async fn add_labels(&self, repo: &str, number: u64, labels: &[String]) -> Result<(), AdapterError> {
        self.with_issue(repo, number, |i| i.labels.extend(labels.iter().cloned()))?;
        for l in labels {
            self.journal.record(format!("github add-label {l}"));
        }
        Ok(())
    }

    /// As the real client: removing a label the issue does not carry is not an error.
    async fn remove_label(&self, repo: &str, number: u64, label: &str) -> Result<(), AdapterError> {
        if self.with_issue(repo, number, |i| i.labels.remove(label))? {
            self.journal.record(format!("github remove-label {label}"));
        }
        Ok(())
    }

    async fn create_comment(&self, repo: &str, number: u64, body: &str) -> Result<u64, AdapterError> {
        self.with_issue(repo, number, |_| ())?;
        let id = {
            let mut s = self.state.lock().expect("github");
            s.next_comment += 1;
            let id = s.next_comment;
            s.comments
                .insert(id, (repo.to_ascii_lowercase(), number, body.into()));
            id
        };
        self.journal.record(format!("github comment {id}"));
        Ok(id)
    }

    async fn update_comment(&self, _repo: &str, comment_id: u64, body: &str) -> Result<(), AdapterError> {
        {
            let mut s = self.state.lock().expect("github");
            let comment = s
                .comments
                .get_mut(&comment_id)
                .ok_or_else(|| not_found("comment"))?;
            comment.2 = body.into();
        }
        self.journal.record(format!("github edit-comment {comment_id}"));
        Ok(())
    }

    async fn find_comment(&self, repo: &str, number: u64, marker: &str) -> Result<Option<u64>, AdapterError> {
        self.with_issue(repo, number, |_| ())?;
        let s = self.state.lock().expect("github");
        let repo = repo.to_ascii_lowercase();
        Ok(s.comments
            .iter()
            .find(|(_, (r, n, body))| *r == repo && *n == number && body.contains(marker))
            .map(|(id, _)| *id))
    }

    async fn close_issue(&self, repo: &str, number: u64) -> Result<(), AdapterError> {
        self.with_issue(repo, number, |i| i.open = false)?;
        self.journal.record(format!("github close {number}"));
        Ok(())
    }

    async fn commits_since(
        &self,
        repo: &str,
        branch: &str,
        _since: Timestamp,
    ) -> Result<Vec<CommitInfo>, AdapterError> {
        let s = self.state.lock().expect("github");
        let repo = repo.to_ascii_lowercase();
        if s.default_branch.get(&repo).map(String::as_str) != Some(branch) {
            return Err(not_found("branch"));
        }
        Ok(s.commits.get(&repo).cloned().unwrap_or_default())
    }

    async fn check_runs(&self, _repo: &str, sha: &str) -> Result<Vec<CheckRun>, AdapterError> {
        Ok(self
            .state
            .lock()
            .expect("github")
            .check_runs
            .get(sha)
            .cloned()
            .unwrap_or_default())
    }

    async fn commit_statuses(&self, _repo: &str, _sha: &str) -> Result<Vec<CommitStatus>, AdapterError> {
        Ok(vec![])
    }

    async fn default_branch(&self, repo: &str) -> Result<String, AdapterError> {
        let s = self.state.lock().expect("github");
        s.default_branch
            .get(&repo.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| not_found("repository"))
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        None
    }
}

/// A notification channel, in memory.
pub struct MemoryNotifier {
    journal: Arc<Journal>,
}

impl MemoryNotifier {
    /// A channel writing to `journal`.
    pub fn new(journal: Arc<Journal>) -> Self {
        Self { journal }
    }
}

#[async_trait]
impl Notifier for MemoryNotifier {
    fn channel(&self) -> &'static str {
        "memory"
    }

    async fn deliver(&self, message: &Outgoing) -> Result<(), AdapterError> {
        self.journal.record(format!("notify {}", message.title));
        Ok(())
    }
}

/// A cluster without the Deployment (a rollout stage that is never configured here).
pub struct NoDeployments;

#[async_trait]
impl RolloutChecker for NoDeployments {
    async fn deployment_state(
        &self,
        _namespace: &str,
        _name: &str,
        _container: Option<&str>,
    ) -> Result<DeploymentState, AdapterError> {
        Ok(DeploymentState::default())
    }
}
