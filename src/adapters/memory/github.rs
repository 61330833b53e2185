//! GitHub, in memory: repositories, issues with labels, who applied each label, collaborator
//! permissions, comments, commits and check runs; faults queued per request type.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use jiff::Timestamp;

use super::Journal;
use crate::{
    adapters::{
        AdapterError, AdapterErrorKind,
        github::{
            CheckRun, CommitInfo, CommitStatus, Dependency, Issue, LabelEvent, Listing, RateLimit, Tracker,
        },
    },
    crd::Permission,
};

/// What the next request of a type sent to [`MemoryGitHub`] meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitHubFault {
    /// GitHub is down: a 503 (transient), nothing applied.
    Down,
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
    /// The issue's `labeled` events, oldest first.
    label_events: BTreeMap<(String, u64), Vec<LabelEvent>>,
    /// (repo, login) → the collaborator's permission; anyone else is a 404, as on GitHub.
    permissions: BTreeMap<(String, String), Permission>,
    /// Faults for the next request of a type (a [`Tracker`] method's name), first in first out.
    faults: VecDeque<(&'static str, GitHubFault)>,
    /// Every request, in order, by [`Tracker`] method name.
    requests: Vec<&'static str>,
}

/// GitHub, in memory: repositories, issues with labels and comments, commits and check runs.
/// An issue carries a label without anyone having applied it (no `labeled` event, so untrusted)
/// until [`MemoryGitHub::label_event`] says who did.
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

    /// `login` (an actor of `actor_type`: `User`, `Bot`, …) applied `label` to the issue at `at`
    /// (its `labeled` event; the label itself is set with the issue).
    pub fn label_event(
        &self,
        repo: &str,
        number: u64,
        label: &str,
        login: &str,
        actor_type: &str,
        at: Timestamp,
    ) {
        let mut s = self.state.lock().expect("github");
        s.label_events
            .entry((repo.to_ascii_lowercase(), number))
            .or_default()
            .push(LabelEvent {
                label: label.into(),
                actor_login: login.into(),
                actor_type: actor_type.into(),
                created_at: at,
            });
    }

    /// `login` is a collaborator of `repo` with `permission`.
    pub fn set_permission(&self, repo: &str, login: &str, permission: Permission) {
        let mut s = self.state.lock().expect("github");
        s.permissions.insert(
            (repo.to_ascii_lowercase(), login.to_ascii_lowercase()),
            permission,
        );
    }

    /// The next request of `request_type` (a [`Tracker`] method's name, e.g.
    /// `list_labeled_issues`) meets `fault`.
    pub fn fault_on(&self, request_type: &'static str, fault: GitHubFault) {
        self.state
            .lock()
            .expect("github")
            .faults
            .push_back((request_type, fault));
    }

    /// Every request so far, reads included, in order, by [`Tracker`] method name.
    pub fn requests(&self) -> Vec<&'static str> {
        self.state.lock().expect("github").requests.clone()
    }

    /// Note a request of `request_type`; the error of the fault queued for it, if any.
    fn ask(&self, request_type: &'static str) -> Result<(), AdapterError> {
        let mut s = self.state.lock().expect("github");
        s.requests.push(request_type);
        let Some(i) = s.faults.iter().position(|(t, _)| *t == request_type) else {
            return Ok(());
        };
        match s.faults.remove(i).map(|(_, f)| f) {
            Some(GitHubFault::Down) => Err(AdapterError::transient(
                AdapterErrorKind::ServerError,
                format!("github {request_type}: server error"),
            )
            .with_status(503)),
            None => Ok(()),
        }
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
        self.ask("list_labeled_issues")?;
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
        self.ask("label_events")?;
        self.with_issue(repo, number, |_| ())?;
        let s = self.state.lock().expect("github");
        Ok(s.label_events
            .get(&(repo.to_ascii_lowercase(), number))
            .cloned()
            .unwrap_or_default())
    }

    async fn permission(&self, repo: &str, user: &str) -> Result<Permission, AdapterError> {
        self.ask("permission")?;
        let s = self.state.lock().expect("github");
        s.permissions
            .get(&(repo.to_ascii_lowercase(), user.to_ascii_lowercase()))
            .copied()
            .ok_or_else(|| not_found("collaborator"))
    }

    async fn blocked_by(&self, repo: &str, number: u64) -> Result<Vec<Dependency>, AdapterError> {
        self.ask("blocked_by")?;
        self.with_issue(repo, number, |_| vec![])
    }

    async fn issue_state(&self, repo: &str, number: u64) -> Result<String, AdapterError> {
        self.ask("issue_state")?;
        self.with_issue(repo, number, |i| {
            if i.open { "open" } else { "closed" }.to_string()
        })
    }

    async fn issue_labels(&self, repo: &str, number: u64) -> Result<Vec<String>, AdapterError> {
        self.ask("issue_labels")?;
        self.with_issue(repo, number, |i| i.labels.iter().cloned().collect())
    }

    async fn add_labels(&self, repo: &str, number: u64, labels: &[String]) -> Result<(), AdapterError> {
        self.ask("add_labels")?;
        self.with_issue(repo, number, |i| i.labels.extend(labels.iter().cloned()))?;
        for l in labels {
            self.journal.record(format!("github add-label {l}"));
        }
        Ok(())
    }

    /// As the real client: removing a label the issue does not carry is not an error.
    async fn remove_label(&self, repo: &str, number: u64, label: &str) -> Result<(), AdapterError> {
        self.ask("remove_label")?;
        if self.with_issue(repo, number, |i| i.labels.remove(label))? {
            self.journal.record(format!("github remove-label {label}"));
        }
        Ok(())
    }

    async fn create_comment(&self, repo: &str, number: u64, body: &str) -> Result<u64, AdapterError> {
        self.ask("create_comment")?;
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
        self.ask("update_comment")?;
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
        self.ask("find_comment")?;
        self.with_issue(repo, number, |_| ())?;
        let s = self.state.lock().expect("github");
        let repo = repo.to_ascii_lowercase();
        Ok(s.comments
            .iter()
            .find(|(_, (r, n, body))| *r == repo && *n == number && body.contains(marker))
            .map(|(id, _)| *id))
    }

    async fn close_issue(&self, repo: &str, number: u64) -> Result<(), AdapterError> {
        self.ask("close_issue")?;
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
        self.ask("commits_since")?;
        let s = self.state.lock().expect("github");
        let repo = repo.to_ascii_lowercase();
        if s.default_branch.get(&repo).map(String::as_str) != Some(branch) {
            return Err(not_found("branch"));
        }
        Ok(s.commits.get(&repo).cloned().unwrap_or_default())
    }

    async fn check_runs(&self, _repo: &str, sha: &str) -> Result<Vec<CheckRun>, AdapterError> {
        self.ask("check_runs")?;
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
        self.ask("commit_statuses")?;
        Ok(vec![])
    }

    async fn default_branch(&self, repo: &str) -> Result<String, AdapterError> {
        self.ask("default_branch")?;
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
