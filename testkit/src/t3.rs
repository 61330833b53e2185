//! A stateful fake of T3 Code's HTTP orchestration API (v0.0.33 shapes, `shared/contracts/t3.md`).
//!
//! It is as strict as the real server: auth runs before decoding (401/403 tagged bodies); a
//! body that fails schema decoding — a missing `branch`/`worktreePath`/`attachments`/
//! `runtimeMode`, a bad enum, an empty id — is an **empty 400**; a non-JSON content type is a
//! plain-text 415; domain invariants (unknown project or thread, reused ids, a second active
//! project on one workspace root, a `commandId` reused on another aggregate) are a 500
//! `orchestration_dispatch_failed`. Receipts make a repeated `commandId` return its recorded
//! sequence with no new effect. Threads can be scripted through turn states, pending approval
//! or input, or a turn that never starts.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

use crate::{Recorded, Served, record, serve};

/// What happens when a turn start is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TurnScript {
    /// The provider starts the turn: `latestTurn.state = running`, session `running`.
    Run,
    /// The provider never starts: session `error` with `lastError`, `latestTurn` unchanged.
    NeverStart,
    /// The turn start is pending: session `starting`, `latestTurn` unchanged, until
    /// [`FakeT3::start_turn`] moves it to `running`.
    Hold,
}

/// A fault to inject into the next dispatch responses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// HTTP status to answer with.
    pub status: u16,
    /// How many dispatches get it.
    pub remaining: u32,
    /// Whether the command is applied before the fault is returned (a lost reply).
    pub apply_first: bool,
}

#[derive(Clone, Debug)]
struct Project {
    title: String,
    workspace_root: String,
    deleted: bool,
}

#[derive(Clone, Debug)]
struct Thread {
    project_id: String,
    title: String,
    runtime_mode: String,
    deleted: bool,
    latest_turn: Option<Value>,
    session: Option<Value>,
    pending_approval: bool,
    pending_user_input: bool,
    messages: Vec<Value>,
    /// Approval and user-input activities (contract §7.3), oldest first.
    activities: Vec<Value>,
}

#[derive(Clone, Debug)]
enum Receipt {
    Accepted { aggregate: String, sequence: u64 },
    Rejected,
}

/// The fake's state, inspectable by tests.
#[derive(Debug)]
pub struct T3State {
    tokens: BTreeMap<String, bool>,
    /// `expiresAt` per token (RFC 3339); tokens without one expire 30 days after the start.
    token_expiry: BTreeMap<String, String>,
    existing_dirs: BTreeSet<String>,
    projects: BTreeMap<String, Project>,
    threads: BTreeMap<String, Thread>,
    receipts: HashMap<String, Receipt>,
    sequence: u64,
    turn_counter: u64,
    script: TurnScript,
    fault: Option<Fault>,
    /// Every request, in order.
    pub requests: Vec<Recorded>,
    /// Commands that changed state (first acceptance only), as received.
    pub applied: Vec<Value>,
}

/// A running T3 fake.
#[derive(Debug)]
pub struct FakeT3 {
    /// The server.
    pub served: Served,
    state: Arc<Mutex<T3State>>,
}

const RUNTIME_MODES: [&str; 4] = ["approval-required", "auto-accept-edits", "auto", "full-access"];
const INTERACTION_MODES: [&str; 2] = ["default", "plan"];

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn tagged(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn empty_400() -> Response {
    StatusCode::BAD_REQUEST.into_response()
}

fn business_500() -> Response {
    tagged(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"_tag": "EnvironmentInternalError", "code": "internal_error", "reason": "orchestration_dispatch_failed", "traceId": "fake"}),
    )
}

impl FakeT3 {
    /// Start a fake accepting `token` with full orchestration scopes. `/srv` and `/data/*`
    /// style roots must be declared with [`FakeT3::add_dir`] before `project.create` uses them.
    pub async fn start(token: &str) -> Self {
        let state = Arc::new(Mutex::new(T3State {
            tokens: BTreeMap::from([(token.to_string(), true)]),
            token_expiry: BTreeMap::new(),
            existing_dirs: BTreeSet::new(),
            projects: BTreeMap::new(),
            threads: BTreeMap::new(),
            receipts: HashMap::new(),
            sequence: 0,
            turn_counter: 0,
            script: TurnScript::Run,
            fault: None,
            requests: vec![],
            applied: vec![],
        }));
        let router = Router::new()
            .route("/.well-known/t3/environment", get(environment))
            .route("/api/auth/session", get(auth_session))
            .route("/api/orchestration/shell", get(shell))
            .route("/api/orchestration/threads/{id}", get(thread_detail))
            .route("/api/orchestration/dispatch", post(dispatch))
            .with_state(state.clone());
        Self {
            served: serve(router).await,
            state,
        }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        self.served.url()
    }

    /// Inspect or change the state.
    pub fn with<R>(&self, f: impl FnOnce(&mut T3State) -> R) -> R {
        f(&mut self.state.lock().expect("t3 state"))
    }

    /// Accept another token; `operate = false` gives a read-only token (dispatch → 403).
    pub fn allow_token(&self, token: &str, operate: bool) {
        self.with(|s| s.tokens.insert(token.to_string(), operate));
    }

    /// Revoke a token.
    pub fn revoke_token(&self, token: &str) {
        self.with(|s| s.tokens.remove(token));
    }

    /// Set when a token expires (RFC 3339), as `/api/auth/session` reports it.
    pub fn set_token_expiry(&self, token: &str, expires_at: &str) {
        self.with(|s| s.token_expiry.insert(token.to_string(), expires_at.to_string()));
    }

    /// Declare a directory that exists on the T3 host.
    pub fn add_dir(&self, dir: &str) {
        self.with(|s| s.existing_dirs.insert(dir.trim_end_matches('/').to_string()));
    }

    /// What the next turn starts do.
    pub fn set_script(&self, script: TurnScript) {
        self.with(|s| s.script = script);
    }

    /// Inject a fault into the next dispatches.
    pub fn inject(&self, fault: Fault) {
        self.with(|s| s.fault = Some(fault));
    }

    /// End the thread's running turn in `state` (`completed`, `error`, `interrupted`) and put
    /// the session at `session_status` (`ready`, `error`, …).
    pub fn finish_turn(&self, thread_id: &str, state: &str, session_status: &str) {
        self.with(|s| {
            s.sequence += 1;
            if let Some(t) = s.threads.get_mut(thread_id) {
                let ts = now();
                if let Some(turn) = t.latest_turn.as_mut() {
                    turn["state"] = json!(state);
                    turn["completedAt"] = json!(ts);
                }
                if let Some(session) = t.session.as_mut() {
                    session["status"] = json!(session_status);
                    session["activeTurnId"] = Value::Null;
                    session["updatedAt"] = json!(ts);
                }
            }
        });
    }

    /// Move a held turn start (`TurnScript::Hold`) to a running turn.
    pub fn start_turn(&self, thread_id: &str) {
        self.with(|s| {
            s.sequence += 1;
            s.turn_counter += 1;
            let turn_id = format!("turn-{}", s.turn_counter);
            if let Some(t) = s.threads.get_mut(thread_id) {
                let ts = now();
                t.latest_turn = Some(
                    json!({"turnId": turn_id, "state": "running", "requestedAt": ts, "startedAt": ts,
                                             "completedAt": null, "assistantMessageId": null}),
                );
                if let Some(session) = t.session.as_mut() {
                    session["status"] = json!("running");
                    session["activeTurnId"] = json!(turn_id);
                    session["updatedAt"] = json!(ts);
                }
            }
        });
    }

    /// Raise a pending approval (`true`) or user-input request (`false`) on a thread.
    pub fn raise_request(&self, thread_id: &str, approval: bool) -> String {
        if approval {
            self.raise_approval(thread_id, "command", "cargo publish")
        } else {
            self.raise_question(
                thread_id,
                json!([{"id": "db", "header": "Database", "question": "Which database should the cache use?",
                        "options": [{"label": "Postgres", "description": "the existing cluster"},
                                    {"label": "SQLite", "description": "a file next to the service"}],
                        "multiSelect": false}]),
            )
        }
    }

    /// The agent asks for an approval (`approval.requested`, contract §7.3); returns the
    /// `requestId`.
    pub fn raise_approval(&self, thread_id: &str, request_kind: &str, detail: &str) -> String {
        self.open_request(thread_id, |request_id| {
            json!({"kind": "approval.requested", "tone": "approval", "summary": "Approval requested",
                   "payload": {"requestId": request_id, "requestKind": request_kind,
                               "requestType": format!("{request_kind}_approval"), "detail": detail}})
        })
    }

    /// The agent asks questions (`user-input.requested`, contract §7.3); returns the `requestId`.
    pub fn raise_question(&self, thread_id: &str, questions: Value) -> String {
        self.open_request(thread_id, |request_id| {
            json!({"kind": "user-input.requested", "tone": "info", "summary": "User input requested",
                   "payload": {"requestId": request_id, "questions": questions}})
        })
    }

    fn open_request(&self, thread_id: &str, activity: impl FnOnce(&str) -> Value) -> String {
        self.with(|s| {
            s.sequence += 1;
            let request_id = format!("req-{}", s.sequence);
            if let Some(t) = s.threads.get_mut(thread_id) {
                let mut a = activity(&request_id);
                let approval = a["kind"] == "approval.requested";
                a["id"] = json!(format!("act-{request_id}"));
                a["createdAt"] = json!(now());
                a["turnId"] = t
                    .latest_turn
                    .as_ref()
                    .map(|turn| turn["turnId"].clone())
                    .unwrap_or(Value::Null);
                t.activities.push(a);
                if approval {
                    t.pending_approval = true;
                } else {
                    t.pending_user_input = true;
                }
            }
            request_id
        })
    }

    /// The respond commands this thread received, in order (what the agent was told).
    pub fn responses(&self, thread_id: &str) -> Vec<Value> {
        self.applied_of("thread.approval.respond")
            .into_iter()
            .chain(self.applied_of("thread.user-input.respond"))
            .filter(|c| c["threadId"] == thread_id)
            .collect()
    }

    /// Force raw state values (e.g. an unknown `session.status`) for tolerance tests.
    pub fn set_raw_status(&self, thread_id: &str, turn_state: Option<&str>, session_status: Option<&str>) {
        self.with(|s| {
            if let Some(t) = s.threads.get_mut(thread_id) {
                if let (Some(v), Some(turn)) = (turn_state, t.latest_turn.as_mut()) {
                    turn["state"] = json!(v);
                }
                if let (Some(v), Some(session)) = (session_status, t.session.as_mut()) {
                    session["status"] = json!(v);
                }
            }
        });
    }

    /// Soft-delete a project (its id and root stay reserved as upstream does for ids).
    pub fn delete_project(&self, project_id: &str) {
        self.with(|s| {
            if let Some(p) = s.projects.get_mut(project_id) {
                p.deleted = true;
            }
        });
    }

    /// Dispatch requests seen (accepted or not), as JSON bodies.
    pub fn dispatch_bodies(&self) -> Vec<Value> {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.path.ends_with("/dispatch"))
                .map(Recorded::json)
                .collect()
        })
    }

    /// Commands applied, of one type.
    pub fn applied_of(&self, type_: &str) -> Vec<Value> {
        self.with(|s| s.applied.iter().filter(|c| c["type"] == type_).cloned().collect())
    }

    /// The user messages recorded on a thread.
    pub fn messages(&self, thread_id: &str) -> Vec<Value> {
        self.with(|s| {
            s.threads
                .get(thread_id)
                .map(|t| t.messages.clone())
                .unwrap_or_default()
        })
    }
}

/// Auth as T3 does it: before anything else. `Err` carries the response.
fn authorize(s: &T3State, headers: &HeaderMap, operate: bool) -> Result<(), Response> {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err(tagged(
            StatusCode::UNAUTHORIZED,
            json!({"_tag": "EnvironmentAuthInvalidError", "code": "auth_invalid", "reason": "missing_credential", "traceId": "fake"}),
        ));
    };
    let token = value.strip_prefix("Bearer ").unwrap_or("");
    match s.tokens.get(token) {
        None => Err(tagged(
            StatusCode::UNAUTHORIZED,
            json!({"_tag": "EnvironmentAuthInvalidError", "code": "auth_invalid", "reason": "invalid_credential", "traceId": "fake"}),
        )),
        Some(false) if operate => Err(tagged(
            StatusCode::FORBIDDEN,
            json!({"_tag": "EnvironmentScopeRequiredError", "code": "insufficient_scope", "requiredScope": "orchestration:operate", "traceId": "fake"}),
        )),
        Some(_) => Ok(()),
    }
}

/// `GET /api/auth/session`: always 200 (contract §2); `authenticated: false` for a missing,
/// bad, expired or revoked token, else the granted scopes and `expiresAt`.
async fn auth_session(
    State(state): State<Arc<Mutex<T3State>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().expect("t3 state");
    s.requests.push(record(&method, &uri, &headers, ""));
    let auth = json!({"policy": "remote-reachable", "bootstrapMethods": ["one-time-token"],
                      "sessionMethods": ["browser-session-cookie", "bearer-session-token"],
                      "sessionCookieName": "t3_session"});
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let Some(operate) = s.tokens.get(token).copied() else {
        return tagged(StatusCode::OK, json!({"authenticated": false, "auth": auth}));
    };
    let expires_at = s.token_expiry.get(token).cloned().unwrap_or_else(|| {
        jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_hours(24 * 30))
            .map(|t| t.to_string())
            .unwrap_or_default()
    });
    let expired = expires_at
        .parse::<jiff::Timestamp>()
        .is_ok_and(|t| t <= jiff::Timestamp::now());
    if expired {
        return tagged(StatusCode::OK, json!({"authenticated": false, "auth": auth}));
    }
    let mut scopes = vec!["orchestration:read"];
    if operate {
        scopes.push("orchestration:operate");
    }
    tagged(
        StatusCode::OK,
        json!({"authenticated": true, "auth": auth, "scopes": scopes,
               "sessionMethod": "bearer-access-token", "expiresAt": expires_at}),
    )
}

async fn environment(
    State(state): State<Arc<Mutex<T3State>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().expect("t3 state");
    s.requests.push(record(&method, &uri, &headers, ""));
    tagged(
        StatusCode::OK,
        json!({"environmentId": "env-fake", "label": "fake", "platform": {"os": "linux", "arch": "x64"},
               "serverVersion": "0.0.33", "capabilities": {"threadSettle": true}}),
    )
}

fn thread_shell(id: &str, t: &Thread) -> Value {
    json!({
        "id": id, "projectId": t.project_id, "title": t.title,
        "modelSelection": {"instanceId": "claudeAgent", "model": "m"},
        "runtimeMode": t.runtime_mode, "interactionMode": "default",
        "branch": null, "worktreePath": null,
        "latestTurn": t.latest_turn, "session": t.session,
        "createdAt": "2026-11-21T00:00:00.000Z", "updatedAt": now(),
        "archivedAt": null, "settledOverride": null, "settledAt": null,
        "latestUserMessageAt": null,
        "hasPendingApprovals": t.pending_approval, "hasPendingUserInput": t.pending_user_input,
        "hasActionableProposedPlan": false, "backgroundLiveness": null, "planProgress": null,
    })
}

async fn shell(
    State(state): State<Arc<Mutex<T3State>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().expect("t3 state");
    s.requests.push(record(&method, &uri, &headers, ""));
    if let Err(r) = authorize(&s, &headers, false) {
        return r;
    }
    let projects: Vec<Value> = s
        .projects
        .iter()
        .filter(|(_, p)| !p.deleted)
        .map(|(id, p)| json!({"id": id, "title": p.title, "workspaceRoot": p.workspace_root, "defaultModelSelection": null,
                              "scripts": [], "createdAt": "2026-11-21T00:00:00.000Z", "updatedAt": now(), "repositoryIdentity": null}))
        .collect();
    let threads: Vec<Value> = s
        .threads
        .iter()
        .filter(|(_, t)| !t.deleted)
        .map(|(id, t)| thread_shell(id, t))
        .collect();
    tagged(
        StatusCode::OK,
        json!({"snapshotSequence": s.sequence, "projects": projects, "threads": threads, "updatedAt": now()}),
    )
}

async fn thread_detail(
    State(state): State<Arc<Mutex<T3State>>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().expect("t3 state");
    s.requests.push(record(&method, &uri, &headers, ""));
    if let Err(r) = authorize(&s, &headers, false) {
        return r;
    }
    match s.threads.get(&id).filter(|t| !t.deleted) {
        Some(t) => {
            let mut thread = thread_shell(&id, t);
            thread["messages"] = json!(t.messages);
            thread["activities"] = json!(t.activities);
            thread["checkpoints"] = json!([]);
            thread["proposedPlans"] = json!([]);
            thread["deletedAt"] = Value::Null;
            tagged(
                StatusCode::OK,
                json!({"snapshotSequence": s.sequence, "thread": thread}),
            )
        }
        None => tagged(
            StatusCode::NOT_FOUND,
            json!({"_tag": "EnvironmentResourceNotFoundError", "code": "not_found", "reason": "thread_not_found", "traceId": "fake"}),
        ),
    }
}

fn non_empty_str(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn nullable_str_present(v: &Value, key: &str) -> bool {
    matches!(v.get(key), Some(Value::Null) | Some(Value::String(_)))
}

fn enum_ok(v: &Value, key: &str, allowed: &[&str], required: bool) -> bool {
    match v.get(key) {
        None => !required,
        Some(Value::String(s)) => allowed.contains(&s.as_str()),
        _ => false,
    }
}

fn model_selection_ok(v: Option<&Value>) -> bool {
    let Some(m) = v.and_then(Value::as_object) else {
        return false;
    };
    let slug = m
        .get("instanceId")
        .or_else(|| m.get("provider"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let slug_ok = !slug.is_empty()
        && slug.len() <= 64
        && slug.starts_with(|c: char| c.is_ascii_alphabetic())
        && slug
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    slug_ok
        && m.get("model")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty())
}

/// Schema decode of a client command: `Ok(aggregate id)` or `Err(())` for the empty 400.
fn decode(cmd: &Value) -> Result<String, ()> {
    let ty = cmd.get("type").and_then(Value::as_str).ok_or(())?;
    non_empty_str(cmd, "commandId").ok_or(())?;
    match ty {
        "project.create" => {
            let id = non_empty_str(cmd, "projectId").ok_or(())?;
            non_empty_str(cmd, "title").ok_or(())?;
            non_empty_str(cmd, "workspaceRoot").ok_or(())?;
            non_empty_str(cmd, "createdAt").ok_or(())?;
            match cmd.get("createWorkspaceRootIfMissing") {
                None | Some(Value::Bool(_)) => {}
                _ => return Err(()),
            }
            match cmd.get("defaultModelSelection") {
                None | Some(Value::Null) => {}
                m => {
                    if !model_selection_ok(m) {
                        return Err(());
                    }
                }
            }
            Ok(id)
        }
        "thread.create" => {
            let id = non_empty_str(cmd, "threadId").ok_or(())?;
            non_empty_str(cmd, "projectId").ok_or(())?;
            non_empty_str(cmd, "title").ok_or(())?;
            non_empty_str(cmd, "createdAt").ok_or(())?;
            let ok = model_selection_ok(cmd.get("modelSelection"))
                && enum_ok(cmd, "runtimeMode", &RUNTIME_MODES, true)
                && enum_ok(cmd, "interactionMode", &INTERACTION_MODES, false)
                && nullable_str_present(cmd, "branch")
                && nullable_str_present(cmd, "worktreePath");
            if ok { Ok(id) } else { Err(()) }
        }
        "thread.turn.start" => {
            let id = non_empty_str(cmd, "threadId").ok_or(())?;
            non_empty_str(cmd, "createdAt").ok_or(())?;
            let msg = cmd.get("message").and_then(Value::as_object).ok_or(())?;
            let msg_ok = msg
                .get("messageId")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.trim().is_empty())
                && msg.get("role").and_then(Value::as_str) == Some("user")
                && msg.get("text").is_some_and(Value::is_string)
                && msg
                    .get("attachments")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.len() <= 8);
            let ok = msg_ok
                && enum_ok(cmd, "runtimeMode", &RUNTIME_MODES, true)
                && enum_ok(cmd, "interactionMode", &INTERACTION_MODES, true);
            if ok { Ok(id) } else { Err(()) }
        }
        "thread.turn.interrupt" => {
            let id = non_empty_str(cmd, "threadId").ok_or(())?;
            non_empty_str(cmd, "createdAt").ok_or(())?;
            match cmd.get("turnId") {
                None | Some(Value::String(_)) => Ok(id),
                _ => Err(()),
            }
        }
        "thread.session.stop" => {
            let id = non_empty_str(cmd, "threadId").ok_or(())?;
            non_empty_str(cmd, "createdAt").ok_or(())?;
            Ok(id)
        }
        "thread.approval.respond" => {
            let id = non_empty_str(cmd, "threadId").ok_or(())?;
            non_empty_str(cmd, "requestId").ok_or(())?;
            non_empty_str(cmd, "createdAt").ok_or(())?;
            if !enum_ok(
                cmd,
                "decision",
                &["accept", "acceptForSession", "decline", "cancel"],
                true,
            ) {
                return Err(());
            }
            Ok(id)
        }
        "thread.user-input.respond" => {
            let id = non_empty_str(cmd, "threadId").ok_or(())?;
            non_empty_str(cmd, "requestId").ok_or(())?;
            non_empty_str(cmd, "createdAt").ok_or(())?;
            // Each answer is a label, a list of labels, or free text (contract §5.8).
            let answers = cmd.get("answers").and_then(Value::as_object).ok_or(())?;
            let ok = answers
                .values()
                .all(|v| v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string)));
            if ok { Ok(id) } else { Err(()) }
        }
        _ => Err(()),
    }
}

async fn dispatch(
    State(state): State<Arc<Mutex<T3State>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body).to_string();
    let mut s = state.lock().expect("t3 state");
    s.requests.push(record(&method, &uri, &headers, &text));
    if let Err(r) = authorize(&s, &headers, true) {
        return r;
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
        && !ct.starts_with("application/json")
    {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Unsupported content-type: {ct}"),
        )
            .into_response();
    }
    let Ok(cmd) = serde_json::from_str::<Value>(&text) else {
        return empty_400();
    };
    let Ok(aggregate) = decode(&cmd) else {
        return empty_400();
    };
    let command_id = non_empty_str(&cmd, "commandId").unwrap_or_default();

    let fault = s.fault.clone().filter(|f| f.remaining > 0);
    if let Some(f) = &fault {
        if let Some(slot) = s.fault.as_mut() {
            slot.remaining -= 1;
        }
        if !f.apply_first {
            return StatusCode::from_u16(f.status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                .into_response();
        }
    }

    // Receipts: a repeated commandId answers from its record, or is rejected on another aggregate.
    let response = match s.receipts.get(&command_id).cloned() {
        Some(Receipt::Accepted {
            aggregate: a,
            sequence,
        }) if a == aggregate => tagged(StatusCode::OK, json!({"sequence": sequence})),
        Some(Receipt::Accepted { .. }) | Some(Receipt::Rejected) => business_500(),
        None => match apply(&mut s, &cmd) {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                s.sequence += 1;
                let sequence = s.sequence;
                s.receipts
                    .insert(command_id, Receipt::Accepted { aggregate, sequence });
                s.applied.push(cmd);
                tagged(StatusCode::OK, json!({"sequence": sequence}))
            }
            Err(()) => {
                s.receipts.insert(command_id, Receipt::Rejected);
                business_500()
            }
        },
    };
    match fault {
        Some(f) if f.apply_first => StatusCode::from_u16(f.status)
            .unwrap_or(StatusCode::BAD_GATEWAY)
            .into_response(),
        _ => response,
    }
}

/// Apply a decoded command. `Ok(None)` = accepted; `Ok(Some(resp))` = a normalizer 400;
/// `Err(())` = a domain invariant failed (500).
fn apply(s: &mut T3State, cmd: &Value) -> Result<Option<Response>, ()> {
    let str_of = |k: &str| cmd.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let norm = |p: &str| p.trim_end_matches('/').to_string();
    match cmd["type"].as_str().unwrap_or("") {
        "project.create" => {
            let id = str_of("projectId");
            let root = norm(&str_of("workspaceRoot"));
            let create = cmd
                .get("createWorkspaceRootIfMissing")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if !create && !s.existing_dirs.contains(&root) {
                return Ok(Some(tagged(
                    StatusCode::BAD_REQUEST,
                    json!({"_tag": "EnvironmentRequestInvalidError", "code": "invalid_request", "reason": "invalid_command", "traceId": "fake"}),
                )));
            }
            if s.projects.contains_key(&id)
                || s.projects
                    .values()
                    .any(|p| !p.deleted && norm(&p.workspace_root) == root)
            {
                return Err(());
            }
            s.existing_dirs.insert(root.clone());
            s.projects.insert(
                id,
                Project {
                    title: str_of("title"),
                    workspace_root: root,
                    deleted: false,
                },
            );
            Ok(None)
        }
        "thread.create" => {
            let id = str_of("threadId");
            let project = str_of("projectId");
            if s.threads.contains_key(&id) || !s.projects.contains_key(&project) {
                return Err(());
            }
            s.threads.insert(
                id,
                Thread {
                    project_id: project,
                    title: str_of("title"),
                    runtime_mode: str_of("runtimeMode"),
                    deleted: false,
                    latest_turn: None,
                    session: None,
                    pending_approval: false,
                    pending_user_input: false,
                    messages: vec![],
                    activities: vec![],
                },
            );
            Ok(None)
        }
        "thread.turn.start" => {
            let id = str_of("threadId");
            let script = s.script.clone();
            s.turn_counter += 1;
            let turn_id = format!("turn-{}", s.turn_counter);
            let Some(t) = s.threads.get_mut(&id).filter(|t| !t.deleted) else {
                return Err(());
            };
            t.messages.push(cmd["message"].clone());
            let ts = now();
            match script {
                TurnScript::Run => {
                    t.latest_turn = Some(
                        json!({"turnId": turn_id, "state": "running", "requestedAt": ts, "startedAt": ts,
                                                 "completedAt": null, "assistantMessageId": null}),
                    );
                    t.session = Some(
                        json!({"threadId": id, "status": "running", "providerName": "claudeAgent",
                                            "runtimeMode": t.runtime_mode, "activeTurnId": turn_id, "lastError": null, "updatedAt": ts}),
                    );
                }
                TurnScript::Hold => {
                    t.session = Some(
                        json!({"threadId": id, "status": "starting", "providerName": "claudeAgent",
                                            "runtimeMode": t.runtime_mode, "activeTurnId": null, "lastError": null, "updatedAt": ts}),
                    );
                }
                TurnScript::NeverStart => {
                    t.session = Some(json!({"threadId": id, "status": "error", "providerName": null,
                                            "runtimeMode": t.runtime_mode, "activeTurnId": null,
                                            "lastError": "Provider instance 'claudeAgent' is not configured in this build", "updatedAt": ts}));
                }
            }
            Ok(None)
        }
        "thread.turn.interrupt" | "thread.session.stop" => {
            let id = str_of("threadId");
            let stop = cmd["type"] == "thread.session.stop";
            let Some(t) = s.threads.get_mut(&id).filter(|t| !t.deleted) else {
                return Err(());
            };
            let ts = now();
            if let Some(turn) = t.latest_turn.as_mut().filter(|turn| turn["state"] == "running") {
                turn["state"] = json!("interrupted");
                turn["completedAt"] = json!(ts);
            }
            if let Some(session) = t.session.as_mut() {
                session["status"] = json!(if stop { "stopped" } else { "interrupted" });
                session["activeTurnId"] = Value::Null;
                session["updatedAt"] = json!(ts);
            }
            t.pending_approval = false;
            t.pending_user_input = false;
            Ok(None)
        }
        // The contract (§5.7/§5.8, §7.3) says a respond to a request that is no longer pending
        // is accepted by the decider and then closed by a `provider.*.respond.failed` activity
        // ("stale"); it does not say it is rejected, so the fake accepts it the same way.
        "thread.approval.respond" | "thread.user-input.respond" => {
            let id = str_of("threadId");
            let request_id = str_of("requestId");
            let approval = cmd["type"] == "thread.approval.respond";
            let Some(t) = s.threads.get_mut(&id).filter(|t| !t.deleted) else {
                return Err(());
            };
            let opened = if approval {
                "approval.requested"
            } else {
                "user-input.requested"
            };
            let pending = t
                .activities
                .iter()
                .any(|a| a["kind"] == opened && a["payload"]["requestId"] == request_id.as_str())
                && !t.activities.iter().any(|a| {
                    a["payload"]["requestId"] == request_id.as_str()
                        && a["kind"]
                            .as_str()
                            .is_some_and(|k| k.ends_with(".resolved") || k.ends_with(".failed"))
                });
            let activity = match (pending, approval) {
                (true, true) => json!({"kind": "approval.resolved", "tone": "approval",
                    "payload": {"requestId": request_id, "decision": cmd["decision"]}}),
                (true, false) => json!({"kind": "user-input.resolved", "tone": "info",
                    "payload": {"requestId": request_id, "answers": cmd["answers"]}}),
                (false, true) => json!({"kind": "provider.approval.respond.failed", "tone": "error",
                    "payload": {"requestId": request_id, "detail": "stale approval request"}}),
                (false, false) => json!({"kind": "provider.user-input.respond.failed", "tone": "error",
                    "payload": {"requestId": request_id, "detail": "stale user input request"}}),
            };
            let mut activity = activity;
            activity["createdAt"] = json!(now());
            t.activities.push(activity);
            let still_open = |kind: &str| {
                t.activities.iter().any(|a| {
                    a["kind"] == kind
                        && !t.activities.iter().any(|c| {
                            c["payload"]["requestId"] == a["payload"]["requestId"]
                                && c["kind"]
                                    .as_str()
                                    .is_some_and(|k| k.ends_with(".resolved") || k.ends_with(".failed"))
                        })
                })
            };
            t.pending_approval = still_open("approval.requested");
            t.pending_user_input = still_open("user-input.requested");
            Ok(None)
        }
        _ => Err(()),
    }
}
