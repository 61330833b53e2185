//! The voice gateway: `GET /v1/models`, `POST /v1/chat/completions` (OpenAI-compatible,
//! streaming and not) and `POST /v1/conversational` (CLI sessions opened and resumed by id).
//! A request is validated ([`super::openai`]), admitted ([`Limiter`]), run as one CLI turn with
//! the conversational agent and no tools, and answered. The HTTP status is decided only once the
//! turn produced its first text or failed, so an upstream error before any content is an honest
//! 5xx, not a 200 with an error inside; after the first chunk, errors arrive as an `error` data
//! event and the stream ends. Dropping the response (client gone) kills the CLI's process group.
//! Processes come warm when they can ([`super::warm`]): chat takes a single-use process started
//! ahead of time, a conversation keeps its process between turns.

use std::{collections::HashSet, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Json,
    body::Bytes,
    extract::State,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

pub use super::voice_http::VoiceRequest;
pub(super) use super::voice_http::gateway;
use super::{
    SidecarState,
    error::ApiError,
    openai::{self, ChatRequest, CompletionId},
    turns::{
        Driver, Finished, Limiter, Refusal, Slot, Step, TurnFailure, Workdir, keepalive_timer, next_streamed,
        sse_response,
    },
    warm::{LiveSessions, PoolSettings, Warm, WarmPool},
};
use crate::{
    adapters::claude::{AgentCli, AgentSpec, Turn, TurnRequest},
    args::VoiceArgs,
    metrics::Metrics,
};

/// Known conversational sessions kept in memory (beyond it the oldest are forgotten; a forgotten
/// session is found again through the CLI's "already in use" answer).
const MAX_KNOWN_SESSIONS: usize = 10_000;

/// The voice gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    pub(super) cli: Arc<dyn AgentCli>,
    pub(super) agent: Arc<AgentSpec>,
    pub(super) models: Vec<String>,
    pub(super) default_model: String,
    pub(super) limiter: Arc<Limiter>,
    pub(super) pool: Arc<WarmPool>,
    pub(super) live: Arc<LiveSessions>,
    pub(super) turn_timeout: Duration,
    pub(super) max_budget_usd: Option<f64>,
    pub(super) chat_dir: PathBuf,
    pub(super) conversation_dir: PathBuf,
    pub(super) sessions: std::sync::Mutex<Sessions>,
    pub(super) metrics: Metrics,
    pub(super) shutdown: CancellationToken,
    pub(super) keepalive: Duration,
}

#[derive(Debug, Default)]
pub(super) struct Sessions {
    pub(super) known: HashSet<uuid::Uuid>,
    pub(super) order: std::collections::VecDeque<uuid::Uuid>,
    pub(super) busy: HashSet<uuid::Uuid>,
}

impl Gateway {
    /// A gateway running `agent` through `cli`.
    pub fn new(
        args: &VoiceArgs,
        agent: AgentSpec,
        cli: Arc<dyn AgentCli>,
        metrics: Metrics,
        shutdown: CancellationToken,
        keepalive: Duration,
    ) -> Self {
        let agent = Arc::new(agent);
        let limiter = Arc::new(Limiter::new(
            args.max_concurrent_turns as usize,
            args.max_queued_turns as usize,
            Duration::from_secs(args.queue_wait_secs),
        ));
        let chat_dir = args.state_dir.join("chat");
        let pool = WarmPool::new(
            cli.clone(),
            agent.clone(),
            limiter.clone(),
            PoolSettings {
                per_model: args.chat_pool_size as usize,
                window: Duration::from_secs(args.chat_pool_window_secs),
                chat_dir: chat_dir.clone(),
                max_budget_usd: args.chat_max_budget_usd,
            },
            &args.default_model,
        );
        Self {
            cli,
            agent,
            models: args
                .models
                .iter()
                .filter(|m| !m.trim().is_empty())
                .cloned()
                .collect(),
            default_model: args.default_model.clone(),
            limiter,
            pool: Arc::new(pool),
            live: Arc::new(LiveSessions::new(
                args.live_sessions as usize,
                Duration::from_secs(args.live_session_idle_secs),
            )),
            turn_timeout: Duration::from_secs(args.turn_timeout_secs),
            max_budget_usd: args.chat_max_budget_usd,
            chat_dir,
            // One stable, empty directory: the CLI keys stored sessions by working directory.
            conversation_dir: args.state_dir.join("conversations"),
            sessions: std::sync::Mutex::new(Sessions::default()),
            metrics,
            shutdown,
            keepalive,
        }
    }

    pub(super) fn remember(&self, id: uuid::Uuid) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if sessions.known.insert(id) {
            sessions.order.push_back(id);
            if sessions.order.len() > MAX_KNOWN_SESSIONS
                && let Some(old) = sessions.order.pop_front()
            {
                sessions.known.remove(&old);
            }
        }
    }

    /// Keep warm processes until shutdown (the pool and kept conversations). Called by the
    /// server that serves the voice routes, so a process without them starts nothing.
    pub fn start_background(&self) {
        tokio::spawn(self.pool.clone().run(self.shutdown.clone()));
        tokio::spawn(self.live.clone().run(self.shutdown.clone()));
    }

    /// A concurrency slot. When every slot is taken, an idle warm process gives its slot up
    /// first (the pool's longest-waiting one, else the longest-idle conversation).
    pub(super) async fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        if let Some(permit) = self.limiter.try_admit() {
            return Ok(permit);
        }
        if !self.pool.evict_one() {
            self.live.evict_lru();
        }
        self.limiter.admit().await
    }

    /// Start a process waiting for messages (after admission).
    pub(super) async fn spawn(&self, request: &TurnRequest) -> Result<Turn, TurnFailure> {
        self.cli.start_waiting(request).await.map_err(|err| {
            tracing::error!(error = %err, "cannot start the claude CLI");
            TurnFailure::from_start(&err)
        })
    }

    /// Drive `turn` under the per-turn deadline and the shutdown signal.
    pub(super) fn drive(&self, turn: Turn) -> Driver {
        Driver::new(turn, Instant::now() + self.turn_timeout, self.shutdown.clone())
    }

    /// Processes waiting in the chat pool now.
    pub fn warm_processes(&self) -> usize {
        self.pool.ready()
    }

    /// The CLI pids of the processes waiting in the chat pool now.
    pub fn warm_pids(&self) -> Vec<i32> {
        self.pool.process_groups()
    }

    /// Conversations whose process is kept now.
    pub fn live_sessions(&self) -> usize {
        self.live.count()
    }

    /// Requests waiting for a turn slot now.
    pub fn queued(&self) -> usize {
        self.limiter.queued()
    }

    /// Forget which sessions this process opened, as a restart does (the CLI keeps its store).
    pub fn forget_sessions(&self) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.known.clear();
        sessions.order.clear();
    }

    pub(super) fn record_failure(&self, failure: &TurnFailure) {
        self.metrics.cli_failure(failure.code());
    }
}

/// `GET /v1/models`.
pub async fn models(State(state): State<SidecarState>) -> Result<Response, ApiError> {
    let gw = gateway(&state)?;
    let data: Vec<Value> = openai::model_ids(&gw.models)
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "anthropic"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// What the first step of a turn was.
pub(super) enum Opening {
    /// Text arrived: stream or collect the rest.
    Text(String),
    /// Finished without any text.
    Empty(Finished),
}

/// Read steps until the first text (or the end). Tool steps cannot happen (no tools).
pub(super) async fn open(driver: &mut Driver) -> Result<Opening, TurnFailure> {
    loop {
        match driver.next().await {
            Step::Started { .. } | Step::Tool { .. } => continue,
            Step::Text(text) => return Ok(Opening::Text(text)),
            Step::Finished(finished) => return Ok(Opening::Empty(finished)),
            Step::Failed(failure) => return Err(failure),
        }
    }
}

/// Read the rest of a turn into one string.
pub(super) async fn collect(
    driver: &mut Driver,
    mut text: String,
) -> Result<(String, Finished), TurnFailure> {
    loop {
        match driver.next().await {
            Step::Started { .. } | Step::Tool { .. } => continue,
            Step::Text(more) => text.push_str(&more),
            Step::Finished(finished) => return Ok((text, finished)),
            Step::Failed(failure) => return Err(failure),
        }
    }
}

/// Stream the rest of a turn: each text as the frame `frame` makes of it, keepalive comments
/// while it is quiet. `None` when the client went away (dropping the driver kills the process).
pub(super) async fn stream_rest(
    driver: &mut Driver,
    tx: &mpsc::Sender<Bytes>,
    keepalive: Duration,
    mut frame: impl FnMut(&str) -> Bytes,
) -> Option<Result<Finished, TurnFailure>> {
    let mut keepalive = keepalive_timer(keepalive);
    loop {
        match next_streamed(driver, tx, &mut keepalive).await? {
            Step::Started { .. } | Step::Tool { .. } => {}
            Step::Text(text) => tx.send(frame(&text)).await.ok()?,
            Step::Finished(finished) => return Some(Ok(finished)),
            Step::Failed(failure) => return Some(Err(failure)),
        }
    }
}

/// Guard counting an open stream.
pub(super) struct ActiveStream(Metrics);

impl ActiveStream {
    pub(super) fn new(metrics: &Metrics) -> Self {
        metrics.active_streams.inc();
        Self(metrics.clone())
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.active_streams.dec();
    }
}

/// A chat turn opened (first text, or the end) on a single-use process: a warm one from the
/// pool when one matches, else one spawned now. A warm process found dead before it said
/// anything (it died while waiting) is replaced by a fresh one, once, without the client noticing.
async fn chat_turn(gw: &Gateway, model: &str, prompt: &str) -> Result<(Driver, Opening, Workdir), ApiError> {
    let mut warm = gw.pool.take(model);
    loop {
        let from_pool = warm.is_some();
        let Warm {
            mut turn,
            slot,
            workdir,
        } = match warm.take() {
            Some(warm) => warm,
            None => cold_chat_process(gw, model).await?,
        };
        // A write to a process that is gone fails; its events then say why.
        if let Err(err) = turn.send(prompt).await {
            tracing::debug!(error = %err, "the chat process did not take the message");
        }
        // Single use: the CLI exits after this turn's result; nothing carries over.
        turn.end_input();
        // The slot is handed on once this process is reaped, however the request ends.
        drop(slot);
        let mut driver = gw.drive(turn);
        match open(&mut driver).await {
            Ok(opening) => {
                gw.metrics
                    .voice_turn_start(if from_pool { "warm" } else { "cold" });
                return Ok((driver, opening, workdir));
            }
            Err(TurnFailure::Crashed) if from_pool => {
                tracing::warn!("a warm claude process was gone; starting a fresh one");
            }
            Err(failure) => {
                gw.record_failure(&failure);
                return Err(ApiError::from(&failure));
            }
        }
    }
}

/// A chat process spawned for this request, after admission.
async fn cold_chat_process(gw: &Gateway, model: &str) -> Result<Warm, ApiError> {
    let permit = gw.admit().await?;
    let workdir = Workdir::new(&gw.chat_dir).map_err(|err| {
        tracing::error!(error = %err, "cannot create a working directory");
        ApiError::from(&TurnFailure::Spawn)
    })?;
    let request = gw.pool.request(model, workdir.path().to_path_buf());
    let turn = gw.spawn(&request).await.map_err(|failure| {
        gw.record_failure(&failure);
        ApiError::from(&failure)
    })?;
    Ok(Warm {
        slot: Slot::new(permit, turn.reaped()),
        turn,
        workdir,
    })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    VoiceRequest {
        gw,
        body: request,
        received,
    }: VoiceRequest<ChatRequest>,
) -> Result<Response, ApiError> {
    let plan = openai::plan(&request, &gw.models)?;
    let (mut driver, opening, workdir) = chat_turn(&gw, &plan.model, &plan.prompt).await?;
    gw.metrics
        .time_to_first_token
        .observe(received.elapsed().as_secs_f64());
    let id = CompletionId {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: jiff::Timestamp::now().as_second(),
        model: plan.model.clone(),
    };
    if !plan.stream {
        let result = match opening {
            Opening::Text(first) => collect(&mut driver, first).await,
            Opening::Empty(finished) => Ok((String::new(), finished)),
        };
        return match result {
            Ok((text, finished)) => Ok(Json(id.completion(
                &text,
                openai::finish_reason(finished.stop_reason.as_deref()),
                openai::usage_json(finished.usage.prompt_tokens(), finished.usage.output_tokens),
            ))
            .into_response()),
            Err(failure) => {
                gw.record_failure(&failure);
                Err(ApiError::from(&failure))
            }
        };
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let include_usage = plan.include_usage;
    tokio::spawn(async move {
        let _active = ActiveStream::new(&gw.metrics);
        let _workdir = workdir;
        let send = |value: Value| Bytes::from(openai::sse_data(&value));
        let first = match opening {
            Opening::Text(text) => Ok(Some(text)),
            Opening::Empty(finished) => Err(finished),
        };
        let finished = match first {
            Err(finished) => {
                // No text at all: still one chunk with the role, then the finish.
                if tx.send(send(id.first_chunk(""))).await.is_err() {
                    return;
                }
                finished
            }
            Ok(first) => {
                if tx
                    .send(send(id.first_chunk(&first.unwrap_or_default())))
                    .await
                    .is_err()
                {
                    return;
                }
                let chunk = |text: &str| send(id.text_chunk(text));
                match stream_rest(&mut driver, &tx, gw.keepalive, chunk).await {
                    None => return,
                    Some(Ok(finished)) => finished,
                    Some(Err(failure)) => {
                        gw.record_failure(&failure);
                        let _ = tx.send(send(ApiError::from(&failure).body())).await;
                        return;
                    }
                }
            }
        };
        let finish = id.chunk(
            json!({}),
            Some(openai::finish_reason(finished.stop_reason.as_deref())),
        );
        if tx.send(send(finish)).await.is_err() {
            return;
        }
        if include_usage {
            let usage = openai::usage_json(finished.usage.prompt_tokens(), finished.usage.output_tokens);
            if tx.send(send(id.usage_chunk(usage))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    Ok(sse_response(rx))
}
