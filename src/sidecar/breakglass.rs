//! Breakglass sessions: server-owned conversations with the breakglass agent that a phone can
//! attach to, lose, and attach to again without losing or repeating anything.
//!
//! Each session keeps a bounded [`EventLog`] (a ring of numbered events). A prompt starts a
//! detached turn that writes into the log whether or not anyone is listening; subscribers read
//! the log from their cursor (`Last-Event-ID`): replay, `caught-up`, then live. A subscriber's
//! queue is a window onto the shared ring plus a small bounded frame channel, so a slow or stalled
//! phone costs a fixed amount of memory; when its cursor falls out of the ring it gets
//! `event: resync` and a fresh replay. Sessions are capped and evicted when idle; a turn has a
//! deadline, and cancel kills the CLI's process group.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    SidecarState,
    auth::Caller,
    turns::{Driver, Step, TurnFailure, keepalive_frame, keepalive_timer, sse_response},
};
use crate::{
    adapters::claude::{AgentCli, AgentSpec, SessionMode, TurnRequest},
    args::BreakglassArgs,
    metrics::Metrics,
};

/// Frames buffered per subscriber before it is considered slow (it then waits; the ring moves on).
const SUBSCRIBER_QUEUE: usize = 32;
/// How often idle sessions are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// One logged event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoggedEvent {
    /// Monotonic id within the session (the SSE `id:`), starting at 1.
    pub id: u64,
    /// Event name: `user`, `session`, `text`, `tool`, `result`, `error`, `cancelled`, `turn_end`.
    pub kind: &'static str,
    /// The payload (includes `"type": kind`).
    pub data: Value,
}

impl LoggedEvent {
    fn frame(&self) -> Bytes {
        Bytes::from(format!(
            "id: {}\nevent: {}\ndata: {}\n\n",
            self.id, self.kind, self.data
        ))
    }
}

/// What a cursor gets from the log.
#[derive(Clone, Debug, PartialEq)]
pub enum Since {
    /// Everything after the cursor, in order (possibly empty).
    Events(Vec<LoggedEvent>),
    /// The cursor is older than the log (or from another life of the session): start over.
    Resync,
}

/// A bounded ring of numbered events. Pure data; no clock, no I/O.
#[derive(Clone, Debug)]
pub struct EventLog {
    events: VecDeque<LoggedEvent>,
    capacity: usize,
    next_id: u64,
}

impl EventLog {
    /// An empty log keeping at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            next_id: 1,
        }
    }

    /// Append an event; the oldest falls out when full. Returns its id.
    pub fn push(&mut self, kind: &'static str, mut data: Value) -> u64 {
        if let Value::Object(map) = &mut data {
            map.insert("type".into(), Value::String(kind.into()));
        }
        let id = self.next_id;
        self.next_id += 1;
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(LoggedEvent { id, kind, data });
        id
    }

    /// The id of the newest event (0 when none was ever logged).
    pub fn last_id(&self) -> u64 {
        self.next_id - 1
    }

    /// Events after `cursor` (the last id the reader has seen; 0 = nothing seen).
    pub fn since(&self, cursor: u64) -> Since {
        if cursor > self.last_id() {
            return Since::Resync;
        }
        let oldest_kept = self.events.front().map_or(self.next_id, |e| e.id);
        if cursor + 1 < oldest_kept {
            return Since::Resync;
        }
        Since::Events(self.events.iter().filter(|e| e.id > cursor).cloned().collect())
    }

    /// The one event after `cursor`: `Ok(None)` when the reader is up to date, `Err(Resync)` when
    /// the cursor is older than the log or from the future. O(1).
    pub fn after(&self, cursor: u64) -> Result<Option<LoggedEvent>, Since> {
        if cursor > self.last_id() {
            return Err(Since::Resync);
        }
        let oldest_kept = self.events.front().map_or(self.next_id, |e| e.id);
        if cursor + 1 < oldest_kept {
            return Err(Since::Resync);
        }
        Ok(self.events.get((cursor + 1 - oldest_kept) as usize).cloned())
    }

    /// The id of the oldest event kept (the next id when empty).
    pub fn oldest_id(&self) -> u64 {
        self.events.front().map_or(self.next_id, |e| e.id)
    }

    /// Every event kept.
    pub fn all(&self) -> Vec<LoggedEvent> {
        self.events.iter().cloned().collect()
    }

    /// Number of events kept.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// One session.
#[derive(Debug)]
pub struct Session {
    id: uuid::Uuid,
    log: Mutex<EventLog>,
    latest: watch::Sender<u64>,
    turn: Mutex<Option<CancellationToken>>,
    cli_session_exists: AtomicBool,
    last_active: Mutex<Instant>,
    subscribers: AtomicUsize,
    created: jiff::Timestamp,
}

impl Session {
    fn push(&self, kind: &'static str, data: Value) {
        let id = self.log.lock().expect("log lock").push(kind, data);
        self.latest.send_replace(id);
        self.touch();
    }

    fn touch(&self) {
        *self.last_active.lock().expect("activity lock") = Instant::now();
    }

    fn running(&self) -> bool {
        self.turn.lock().expect("turn lock").is_some()
    }

    fn idle_since(&self) -> Instant {
        *self.last_active.lock().expect("activity lock")
    }
}

/// The breakglass sessions of this process.
#[derive(Debug)]
pub struct Breakglass {
    cli: Arc<dyn AgentCli>,
    agent: Arc<AgentSpec>,
    sessions: Mutex<HashMap<uuid::Uuid, Arc<Session>>>,
    max_sessions: usize,
    idle: Duration,
    log_capacity: usize,
    turn_timeout: Duration,
    default_model: String,
    /// Full model ids served besides the aliases (`--models`, shared with the voice gateway).
    models: Vec<String>,
    allowed_tools: Vec<String>,
    cwd: PathBuf,
    metrics: Metrics,
    shutdown: CancellationToken,
    keepalive: Duration,
}

/// Why a session could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtCapacity;

/// Why a prompt was refused: a turn is already running in the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnRunning;

impl Breakglass {
    /// Sessions running `agent` through `cli`. Starts the idle sweeper on the current runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: &BreakglassArgs,
        models: &[String],
        state_dir: &std::path::Path,
        agent: AgentSpec,
        cli: Arc<dyn AgentCli>,
        metrics: Metrics,
        shutdown: CancellationToken,
        keepalive: Duration,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            cli,
            agent: Arc::new(agent),
            sessions: Mutex::new(HashMap::new()),
            max_sessions: args.breakglass_max_sessions as usize,
            idle: Duration::from_secs(args.breakglass_idle_secs),
            log_capacity: args.breakglass_log_events as usize,
            turn_timeout: Duration::from_secs(args.breakglass_turn_timeout_secs),
            default_model: args.breakglass_model.clone(),
            models: models.iter().filter(|m| !m.trim().is_empty()).cloned().collect(),
            allowed_tools: args
                .breakglass_allowed_tools
                .iter()
                .filter(|t| !t.is_empty())
                .cloned()
                .collect(),
            cwd: state_dir.join("breakglass"),
            metrics,
            shutdown,
            keepalive,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&this), this.shutdown.clone()));
        }
        this
    }

    /// Create a session, evicting the longest-idle one without a turn or subscriber when full.
    pub fn create(&self) -> Result<Arc<Session>, AtCapacity> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        self.evict_idle(&mut sessions, Instant::now());
        if sessions.len() >= self.max_sessions {
            let victim = sessions
                .values()
                .filter(|s| !s.running() && s.subscribers.load(Ordering::SeqCst) == 0)
                .min_by_key(|s| s.idle_since())
                .map(|s| s.id);
            match victim {
                Some(id) => {
                    tracing::info!(session = %id, "evicting the longest-idle breakglass session");
                    sessions.remove(&id);
                }
                None => return Err(AtCapacity),
            }
        }
        let (latest, _) = watch::channel(0);
        let session = Arc::new(Session {
            id: uuid::Uuid::new_v4(),
            log: Mutex::new(EventLog::new(self.log_capacity)),
            latest,
            turn: Mutex::new(None),
            cli_session_exists: AtomicBool::new(false),
            last_active: Mutex::new(Instant::now()),
            subscribers: AtomicUsize::new(0),
            created: jiff::Timestamp::now(),
        });
        sessions.insert(session.id, session.clone());
        self.metrics.breakglass_sessions.set(sessions.len() as i64);
        Ok(session)
    }

    fn evict_idle(&self, sessions: &mut HashMap<uuid::Uuid, Arc<Session>>, now: Instant) {
        sessions.retain(|_, s| {
            s.running()
                || s.subscribers.load(Ordering::SeqCst) > 0
                || now.duration_since(s.idle_since()) < self.idle
        });
        self.metrics.breakglass_sessions.set(sessions.len() as i64);
    }

    /// A session by id.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let id = uuid::Uuid::parse_str(id).ok()?;
        self.sessions.lock().expect("sessions lock").get(&id).cloned()
    }

    /// Remove a session (its running turn is cancelled).
    pub fn remove(&self, id: &str) -> bool {
        let Ok(id) = uuid::Uuid::parse_str(id) else {
            return false;
        };
        let removed = self.sessions.lock().expect("sessions lock").remove(&id);
        if let Some(session) = &removed
            && let Some(cancel) = session.turn.lock().expect("turn lock").as_ref()
        {
            cancel.cancel();
        }
        self.metrics
            .breakglass_sessions
            .set(self.sessions.lock().expect("sessions lock").len() as i64);
        removed.is_some()
    }

    /// Start a detached turn, unless one is already running.
    pub fn prompt(
        self: &Arc<Self>,
        session: &Arc<Session>,
        prompt: String,
        model: Option<String>,
    ) -> Result<(), TurnRunning> {
        let cancel = {
            let mut turn = session.turn.lock().expect("turn lock");
            if turn.is_some() {
                return Err(TurnRunning);
            }
            let cancel = CancellationToken::new();
            *turn = Some(cancel.clone());
            cancel
        };
        session.push("user", json!({"text": prompt}));
        let this = self.clone();
        let session = session.clone();
        let model = model.unwrap_or_else(|| self.default_model.clone());
        tokio::spawn(async move {
            this.run_turn(&session, prompt, model, cancel).await;
            *session.turn.lock().expect("turn lock") = None;
            session.push("turn_end", json!({}));
        });
        Ok(())
    }

    async fn run_turn(&self, session: &Session, prompt: String, model: String, cancel: CancellationToken) {
        let mut mode = if session.cli_session_exists.load(Ordering::SeqCst) {
            SessionMode::Resume(session.id)
        } else {
            SessionMode::Open(session.id)
        };
        let mut retried = false;
        loop {
            let request = TurnRequest {
                prompt: prompt.clone(),
                model: model.clone(),
                agent: self.agent.clone(),
                session: mode.clone(),
                cwd: self.cwd.clone(),
                max_budget_usd: None,
                allowed_tools: self.allowed_tools.clone(),
            };
            let mut driver = match self.cli.start(&request).await {
                Ok(turn) => Driver::new(turn, Instant::now() + self.turn_timeout, self.shutdown.clone())
                    .whole_messages(),
                Err(err) => {
                    tracing::error!(error = %err, "cannot start the breakglass CLI");
                    return self.fail(session, &TurnFailure::from_start(&err));
                }
            };
            let mut produced = false;
            loop {
                let step = tokio::select! {
                    biased;
                    () = cancel.cancelled() => {
                        driver.kill();
                        session.push("cancelled", json!({}));
                        return;
                    }
                    step = driver.next() => step,
                };
                match step {
                    Step::Started { session_id, model } => {
                        session.cli_session_exists.store(true, Ordering::SeqCst);
                        session.push("session", json!({"session_id": session_id, "model": model}));
                    }
                    Step::Text(text) => {
                        produced = true;
                        session.push("text", json!({"text": text}));
                    }
                    Step::Tool { name, input } => {
                        produced = true;
                        session.push("tool", json!({"name": name, "input": input}));
                    }
                    Step::Finished(finished) => {
                        session.push(
                            "result",
                            json!({"is_error": false, "result": finished.result, "duration_ms": finished.duration_ms}),
                        );
                        return;
                    }
                    Step::Failed(TurnFailure::UnknownSession) if !retried && !produced => {
                        mode = SessionMode::Open(session.id);
                        break;
                    }
                    Step::Failed(TurnFailure::SessionInUse) if !retried && !produced => {
                        mode = SessionMode::Resume(session.id);
                        break;
                    }
                    Step::Failed(failure) => return self.fail(session, &failure),
                }
            }
            retried = true;
        }
    }

    fn fail(&self, session: &Session, failure: &TurnFailure) {
        self.metrics.cli_failure(failure.code());
        session.push(
            "error",
            json!({"message": failure.message(), "code": failure.code()}),
        );
        if matches!(
            failure,
            TurnFailure::Api(_) | TurnFailure::Budget | TurnFailure::Execution(_)
        ) {
            session.push(
                "result",
                json!({"is_error": true, "result": failure.message(), "duration_ms": 0}),
            );
        }
    }

    /// A subscriber's SSE stream from `cursor`.
    pub fn attach(&self, session: Arc<Session>, cursor: Option<u64>) -> Response {
        let (tx, rx) = mpsc::channel::<Bytes>(SUBSCRIBER_QUEUE);
        let shutdown = self.shutdown.clone();
        let keepalive_period = self.keepalive;
        session.subscribers.fetch_add(1, Ordering::SeqCst);
        session.touch();
        tokio::spawn(async move {
            let _subscriber = Subscriber(session.clone());
            let mut latest = session.latest.subscribe();
            let mut cursor = cursor.unwrap_or(0);
            let mut caught_up = false;
            let mut keepalive = keepalive_timer(keepalive_period);
            loop {
                // One event at a time (lock, clone, unlock, send): a stalled subscriber holds at
                // most its queue plus one frame, whatever the log size.
                loop {
                    let next = session.log.lock().expect("log lock").after(cursor);
                    match next {
                        Ok(Some(event)) => {
                            cursor = event.id;
                            if tx.send(event.frame()).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            // Fell out of the log: say so, then replay from the oldest kept event.
                            let oldest = session.log.lock().expect("log lock").oldest_id();
                            cursor = oldest.saturating_sub(1);
                            caught_up = false;
                            let frame = format!(
                                "id: {cursor}\nevent: resync\ndata: {}\n\n",
                                json!({"type": "resync", "reason": "the cursor is older than the session log; replaying what is kept"})
                            );
                            if tx.send(Bytes::from(frame)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                if !caught_up {
                    caught_up = true;
                    let frame = format!(
                        "id: {cursor}\nevent: caught-up\ndata: {}\n\n",
                        json!({"type": "caught-up"})
                    );
                    if tx.send(Bytes::from(frame)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    _ = keepalive.tick() => {
                        if tx.send(keepalive_frame()).await.is_err() { return; }
                    }
                    changed = latest.changed() => if changed.is_err() { return; },
                }
            }
        });
        sse_response(rx)
    }
}

struct Subscriber(Arc<Session>);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

async fn sweep(breakglass: Weak<Breakglass>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let Some(breakglass) = breakglass.upgrade() else {
            return;
        };
        let mut sessions = breakglass.sessions.lock().expect("sessions lock");
        breakglass.evict_idle(&mut sessions, Instant::now());
    }
}

// Handlers return ready-made responses early; boxing them buys nothing.
#[allow(clippy::result_large_err)]
fn breakglass(state: &SidecarState) -> Result<&Arc<Breakglass>, Response> {
    state.breakglass.as_ref().ok_or_else(|| {
        super::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "breakglass sessions are not configured",
            "not_configured",
        )
    })
}

fn not_found() -> Response {
    super::error(
        StatusCode::NOT_FOUND,
        "no such breakglass session",
        "unknown_session",
    )
}

/// `POST /api/breakglass/sessions`.
pub async fn create(State(state): State<SidecarState>, Extension(caller): Extension<Caller>) -> Response {
    let bg = match breakglass(&state) {
        Ok(bg) => bg,
        Err(resp) => return resp,
    };
    match bg.create() {
        Ok(session) => {
            tracing::info!(audit = true, caller = ?caller.0, session = %session.id, "breakglass session created");
            (StatusCode::CREATED, Json(json!({"session_id": session.id}))).into_response()
        }
        Err(AtCapacity) => super::error(
            StatusCode::TOO_MANY_REQUESTS,
            "every breakglass session is busy; cancel or delete one first",
            "too_many_sessions",
        ),
    }
}

/// `GET /api/breakglass/sessions`.
pub async fn list(State(state): State<SidecarState>) -> Response {
    let bg = match breakglass(&state) {
        Ok(bg) => bg,
        Err(resp) => return resp,
    };
    let sessions = bg.sessions.lock().expect("sessions lock");
    let mut list: Vec<_> = sessions
        .values()
        .map(|s| {
            json!({
                "session_id": s.id,
                "created": s.created.to_string(),
                "running": s.running(),
                "last_event_id": s.log.lock().expect("log lock").last_id(),
                "subscribers": s.subscribers.load(Ordering::SeqCst),
            })
        })
        .collect();
    list.sort_by(|a, b| b["created"].as_str().cmp(&a["created"].as_str()));
    Json(json!({"sessions": list})).into_response()
}

/// `DELETE /api/breakglass/sessions/{id}`.
pub async fn delete(State(state): State<SidecarState>, Path(id): Path<String>) -> Response {
    let bg = match breakglass(&state) {
        Ok(bg) => bg,
        Err(resp) => return resp,
    };
    if bg.remove(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found()
    }
}

/// `GET /api/breakglass/sessions/{id}/stream`.
pub async fn stream(
    State(state): State<SidecarState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let bg = match breakglass(&state) {
        Ok(bg) => bg,
        Err(resp) => return resp,
    };
    let Some(session) = bg.get(&id) else {
        return not_found();
    };
    let cursor = match headers
        .get("last-event-id")
        .map(|v| v.to_str().map(|s| s.trim().parse::<u64>()))
    {
        None => None,
        Some(Ok(Ok(cursor))) => Some(cursor),
        Some(_) => {
            return super::error(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID must be an event id (a non-negative integer)",
                "invalid_request",
            );
        }
    };
    bg.attach(session, cursor)
}

/// `POST …/prompt` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptRequest {
    /// What to ask the agent.
    pub prompt: String,
    /// Model id or alias.
    #[serde(default)]
    pub model: Option<String>,
}

/// `POST /api/breakglass/sessions/{id}/prompt`.
pub async fn prompt(
    State(state): State<SidecarState>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<PromptRequest>, JsonRejection>,
) -> Response {
    let bg = match breakglass(&state) {
        Ok(bg) => bg,
        Err(resp) => return resp,
    };
    let Some(session) = bg.get(&id) else {
        return not_found();
    };
    let request = match body {
        Ok(Json(request)) => request,
        // An oversize prompt is a 413 like every other oversize body; a bad one is a 400.
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return super::error::ApiError::too_large(super::MAX_API_BODY).into_response();
        }
        Err(rejection) => {
            return super::error(StatusCode::BAD_REQUEST, &rejection.body_text(), "invalid_request");
        }
    };
    if request.prompt.trim().is_empty() {
        return super::error(
            StatusCode::BAD_REQUEST,
            "prompt must not be empty",
            "invalid_request",
        );
    }
    // The same rule as the voice gateway: an alias or a configured id, nothing else reaches argv.
    if let Some(model) = &request.model
        && !super::openai::model_supported(model, &bg.models)
    {
        return super::error::ApiError::invalid(
            format!(
                "the model `{}` is not served here; supported models: {}",
                model.chars().take(100).collect::<String>(),
                super::openai::model_ids(&bg.models).join(", ")
            ),
            Some("model"),
        )
        .into_response();
    }
    tracing::info!(audit = true, caller = ?caller.0, session = %session.id, "breakglass prompt");
    match bg.prompt(&session, request.prompt, request.model) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({"session_id": session.id, "accepted": true})),
        )
            .into_response(),
        Err(TurnRunning) => super::error(
            StatusCode::CONFLICT,
            "a turn is already running in this session; cancel it or wait for turn_end",
            "turn_running",
        ),
    }
}

/// `POST /api/breakglass/sessions/{id}/cancel`.
pub async fn cancel(
    State(state): State<SidecarState>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let bg = match breakglass(&state) {
        Ok(bg) => bg,
        Err(resp) => return resp,
    };
    let Some(session) = bg.get(&id) else {
        return not_found();
    };
    let cancelled = match session.turn.lock().expect("turn lock").as_ref() {
        Some(token) => {
            token.cancel();
            true
        }
        None => false,
    };
    tracing::info!(audit = true, caller = ?caller.0, session = %session.id, cancelled, "breakglass cancel");
    Json(json!({"session_id": session.id, "cancelled": cancelled})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn replay_from_zero_and_from_a_cursor() {
        let mut log = EventLog::new(4);
        for i in 0..3 {
            log.push("text", json!({"text": i}));
        }
        let Since::Events(all) = log.since(0) else {
            panic!()
        };
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[0].data, json!({"text": 0, "type": "text"}));
        let Since::Events(tail) = log.since(2) else {
            panic!()
        };
        assert_eq!(tail.iter().map(|e| e.id).collect::<Vec<_>>(), [3]);
        assert_eq!(log.since(3), Since::Events(vec![]));
    }

    #[test]
    fn a_cursor_older_than_the_ring_or_from_the_future_resyncs() {
        let mut log = EventLog::new(3);
        for i in 0..5 {
            log.push("text", json!({"text": i}));
        }
        // Kept: 3, 4, 5. Cursor 2 has seen everything before 3: fine. Cursor 1 missed 2: resync.
        assert!(matches!(log.since(2), Since::Events(e) if e.len() == 3));
        assert_eq!(log.since(1), Since::Resync);
        assert_eq!(log.since(0), Since::Resync);
        assert_eq!(log.since(6), Since::Resync);
        assert_eq!(log.len(), 3);
    }

    #[test]
    fn an_empty_log_replays_nothing() {
        let log = EventLog::new(3);
        assert_eq!(log.since(0), Since::Events(vec![]));
        assert_eq!(log.since(1), Since::Resync);
        assert!(log.is_empty());
    }

    proptest! {
        /// Whatever the capacity, pushes and cursor: a reader either gets exactly the events after
        /// its cursor with no gap, or is told to resync; memory never exceeds the capacity.
        #[test]
        fn readers_never_see_gaps_or_duplicates(capacity in 1usize..20, pushes in 0usize..60, cursor in 0u64..70) {
            let mut log = EventLog::new(capacity);
            for i in 0..pushes {
                log.push("text", json!({"i": i}));
            }
            prop_assert!(log.len() <= capacity);
            match log.since(cursor) {
                Since::Events(events) => {
                    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
                    let expected: Vec<u64> = (cursor + 1..=pushes as u64).collect();
                    prop_assert_eq!(ids, expected);
                }
                Since::Resync => {
                    let oldest = (pushes as u64).saturating_sub(capacity as u64) + 1;
                    prop_assert!(cursor > pushes as u64 || cursor + 1 < oldest);
                }
            }
            // Walking with `after` yields exactly what `since` yields.
            let mut walked = Vec::new();
            let mut at = cursor;
            let outcome = loop {
                match log.after(at) {
                    Ok(Some(event)) => { at = event.id; walked.push(event); }
                    Ok(None) => break Since::Events(walked),
                    Err(resync) => break resync,
                }
            };
            prop_assert_eq!(outcome, log.since(cursor));
        }
    }
}
