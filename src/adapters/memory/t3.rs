//! T3, in memory: projects, threads and their latest turns, command receipts, the token's
//! standing (accepted, refused, when it expires), and faults queued per request type.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::Value;

use super::Journal;
use crate::adapters::{
    AdapterError, AdapterErrorKind,
    t3::{AuthSession, Command, Environment, Executor, LatestTurn, ProjectShell, Shell, ThreadShell},
};

/// What the next request of a type sent to [`MemoryT3`] meets.
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

impl T3Fault {
    /// The error the caller sees.
    fn error(self) -> AdapterError {
        match self {
            T3Fault::Down => {
                AdapterError::transient(AdapterErrorKind::ServerError, "t3: unavailable").with_status(503)
            }
            T3Fault::ReplyLost => {
                AdapterError::transient(AdapterErrorKind::Transport, "t3: connection reset after the send")
            }
            T3Fault::Unauthorized => {
                AdapterError::permanent(AdapterErrorKind::Auth, "t3: not authorized").with_status(401)
            }
        }
    }
}

#[derive(Default)]
struct T3State {
    projects: Vec<ProjectShell>,
    threads: Vec<ThreadShell>,
    /// `commandId` → the aggregate it was accepted on and its sequence, or `None` when it was
    /// rejected (a rejected id stays rejected).
    receipts: HashMap<String, Option<(String, u64)>>,
    sequence: u64,
    /// Faults for the next request of a type (`thread.turn.start`, `auth.session`, …), first in
    /// first out.
    faults: VecDeque<(&'static str, T3Fault)>,
    /// Every request, in order: a command's type, or `environment`, `auth.session`, `shell`,
    /// `thread`.
    requests: Vec<&'static str>,
    /// The token was revoked: `/api/auth/session` says `authenticated: false`, every other
    /// authenticated request is a 401.
    token_refused: bool,
    /// When the token expires, as `/api/auth/session` reports it.
    token_expires_at: Option<Timestamp>,
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

    /// The next request of `request_type` meets `fault`: a command's type (e.g.
    /// `thread.turn.start`) or a read (`environment`, `auth.session`, `shell`, `thread`).
    pub fn fault_on(&self, request_type: &'static str, fault: T3Fault) {
        self.state
            .lock()
            .expect("t3")
            .faults
            .push_back((request_type, fault));
    }

    /// Revoke the token: `/api/auth/session` answers `authenticated: false` (T3 always answers
    /// it 200) and every other authenticated request 401.
    pub fn revoke_token(&self) {
        self.state.lock().expect("t3").token_refused = true;
    }

    /// The token expires at `at` (as `/api/auth/session` reports it).
    pub fn set_token_expiry(&self, at: Timestamp) {
        self.state.lock().expect("t3").token_expires_at = Some(at);
    }

    /// Every request so far, reads included, in order.
    pub fn requests(&self) -> Vec<&'static str> {
        self.state.lock().expect("t3").requests.clone()
    }

    /// Note a request of `request_type`; the fault queued for it, if any.
    fn ask(state: &mut T3State, request_type: &'static str) -> Option<T3Fault> {
        state.requests.push(request_type);
        let i = state.faults.iter().position(|(t, _)| *t == request_type)?;
        state.faults.remove(i).map(|(_, f)| f)
    }

    /// A read: its fault, or a 401 for a refused token when it is authenticated.
    fn read(
        state: &mut T3State,
        request_type: &'static str,
        authenticated: bool,
    ) -> Result<(), AdapterError> {
        match Self::ask(state, request_type) {
            Some(fault) => Err(fault.error()),
            None if authenticated && state.token_refused => Err(T3Fault::Unauthorized.error()),
            None => Ok(()),
        }
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
        Self::read(&mut self.state.lock().expect("t3"), "environment", false)?;
        Ok(Environment {
            server_version: Some("memory".into()),
            ..Environment::default()
        })
    }

    /// As T3: always 200 unless a fault says otherwise; a refused token is `authenticated:
    /// false`, not an error.
    async fn auth_session(&self) -> Result<AuthSession, AdapterError> {
        let mut s = self.state.lock().expect("t3");
        Self::read(&mut s, "auth.session", false)?;
        let authenticated = !s.token_refused;
        Ok(AuthSession {
            authenticated,
            expires_at: s
                .token_expires_at
                .filter(|_| authenticated)
                .map(|at| at.to_string()),
            ..AuthSession::default()
        })
    }

    async fn shell(&self) -> Result<Shell, AdapterError> {
        let mut s = self.state.lock().expect("t3");
        Self::read(&mut s, "shell", true)?;
        Ok(Shell {
            snapshot_sequence: s.sequence,
            projects: s.projects.clone(),
            threads: s.threads.clone(),
        })
    }

    async fn thread(&self, thread_id: &str) -> Result<Value, AdapterError> {
        let mut s = self.state.lock().expect("t3");
        Self::read(&mut s, "thread", true)?;
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
        // A lost reply is met after the command is applied; every other fault before.
        let fault = Self::ask(&mut s, command.type_name());
        if let Some(f @ (T3Fault::Down | T3Fault::Unauthorized)) = fault {
            return Err(f.error());
        }
        if s.token_refused {
            return Err(T3Fault::Unauthorized.error());
        }
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
        match fault {
            Some(f) => Err(f.error()),
            None => Ok(sequence),
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
