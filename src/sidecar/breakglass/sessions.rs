//! The session registry and what runs in a session: the detached turn that writes into its log,
//! and the subscribers that read the log out as SSE (replay, `caught-up`, live, `resync`).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{body::Bytes, response::Response};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::log::{BreakglassEvent, EventLog, Notice};
use crate::{
    adapters::claude::{AgentCli, AgentSpec, SessionMode, TurnRequest},
    args::BreakglassArgs,
    metrics::Metrics,
    sidecar::turns::{Driver, Step, TurnFailure, keepalive_frame, keepalive_timer, sse_response},
};

/// Frames buffered per subscriber before it is considered slow (it then waits; the ring moves on).
const SUBSCRIBER_QUEUE: usize = 32;
/// How often idle sessions are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

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
    /// The session's id (also the CLI's session id).
    pub fn id(&self) -> uuid::Uuid {
        self.id
    }

    /// What the session list shows of it.
    pub fn summary(&self) -> SessionSummary {
        SessionSummary {
            created: self.created.to_string(),
            last_event_id: self.log.lock().expect("log lock").last_id(),
            running: self.running(),
            session_id: self.id,
            subscribers: self.subscribers.load(Ordering::SeqCst),
        }
    }

    /// Cancel the running turn; whether there was one.
    pub fn cancel_turn(&self) -> bool {
        match self.turn.lock().expect("turn lock").as_ref() {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    fn push(&self, event: BreakglassEvent) {
        let id = self.log.lock().expect("log lock").push(event);
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

/// One entry of `GET /api/breakglass/sessions`. Fields in alphabetical order, the order the
/// former `json!` literal serialized them in.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SessionSummary {
    /// RFC 3339 creation time.
    pub created: String,
    /// The newest event's id (0 before the first).
    pub last_event_id: u64,
    /// Whether a turn is running.
    pub running: bool,
    /// The session's id.
    pub session_id: uuid::Uuid,
    /// Open SSE subscribers.
    pub subscribers: usize,
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

    /// Every session, newest first.
    pub fn list(&self) -> Vec<SessionSummary> {
        let sessions = self.sessions.lock().expect("sessions lock");
        let mut list: Vec<SessionSummary> = sessions.values().map(|s| s.summary()).collect();
        list.sort_by(|a, b| b.created.cmp(&a.created));
        list
    }

    /// The full model ids served besides the aliases.
    pub fn models(&self) -> &[String] {
        &self.models
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
        session.push(BreakglassEvent::User { text: prompt.clone() });
        let this = self.clone();
        let session = session.clone();
        let model = model.unwrap_or_else(|| self.default_model.clone());
        tokio::spawn(async move {
            this.run_turn(&session, prompt, model, cancel).await;
            *session.turn.lock().expect("turn lock") = None;
            session.push(BreakglassEvent::TurnEnd);
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
                        session.push(BreakglassEvent::Cancelled);
                        return;
                    }
                    step = driver.next() => step,
                };
                match step {
                    Step::Started { session_id, model } => {
                        session.cli_session_exists.store(true, Ordering::SeqCst);
                        session.push(BreakglassEvent::Session { session_id, model });
                    }
                    Step::Text(text) => {
                        produced = true;
                        session.push(BreakglassEvent::Text { text });
                    }
                    Step::Tool { name, input } => {
                        produced = true;
                        session.push(BreakglassEvent::Tool { name, input });
                    }
                    Step::Finished(finished) => {
                        session.push(BreakglassEvent::Result {
                            is_error: false,
                            result: finished.result,
                            duration_ms: finished.duration_ms,
                        });
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
        session.push(BreakglassEvent::Error {
            message: failure.message(),
            code: failure.code(),
        });
        if matches!(
            failure,
            TurnFailure::Api(_) | TurnFailure::Budget | TurnFailure::Execution(_)
        ) {
            session.push(BreakglassEvent::Result {
                is_error: true,
                result: Some(failure.message()),
                duration_ms: 0,
            });
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
                            if tx.send(Notice::RESYNC.frame(cursor)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                if !caught_up {
                    caught_up = true;
                    if tx.send(Notice::CaughtUp.frame(cursor)).await.is_err() {
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
