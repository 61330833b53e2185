//! The voice gateway: `GET /v1/models`, `POST /v1/chat/completions` (OpenAI-compatible,
//! streaming and not) and `POST /v1/conversational` (CLI sessions opened and resumed by id).
//! A request is validated ([`super::openai`]), admitted ([`Limiter`]), run as one CLI turn with
//! the conversational agent and no tools, and answered. The HTTP status is decided only once the
//! turn produced its first text or failed, so an upstream error before any content is an honest
//! 5xx, not a 200 with an error inside; after the first chunk, errors arrive as an `error` data
//! event and the stream ends. Dropping the response (client gone) kills the CLI's process group.

// Early returns of ready-made responses are the point of these helpers; boxing them buys nothing.
#![allow(clippy::result_large_err)]

use std::{collections::HashSet, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    SidecarState,
    openai::{self, ChatRequest, CompletionId},
    turns::{
        Driver, Finished, Limiter, Refusal, Step, TurnFailure, Workdir, keepalive_timer, next_streamed,
        release_when_reaped, sse_response,
    },
};
use crate::{
    adapters::claude::{AgentCli, AgentSpec, SessionMode, TurnRequest},
    args::VoiceArgs,
    metrics::Metrics,
};

/// Known conversational sessions kept in memory (beyond it the oldest are forgotten; a forgotten
/// session is found again through the CLI's "already in use" answer).
const MAX_KNOWN_SESSIONS: usize = 10_000;

/// The voice gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    cli: Arc<dyn AgentCli>,
    agent: Arc<AgentSpec>,
    models: Vec<String>,
    default_model: String,
    limiter: Limiter,
    turn_timeout: Duration,
    max_budget_usd: Option<f64>,
    chat_dir: PathBuf,
    conversation_dir: PathBuf,
    sessions: std::sync::Mutex<Sessions>,
    metrics: Metrics,
    shutdown: CancellationToken,
    keepalive: Duration,
}

#[derive(Debug, Default)]
struct Sessions {
    known: HashSet<uuid::Uuid>,
    order: std::collections::VecDeque<uuid::Uuid>,
    busy: HashSet<uuid::Uuid>,
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
        Self {
            cli,
            agent: Arc::new(agent),
            models: args
                .models
                .iter()
                .filter(|m| !m.trim().is_empty())
                .cloned()
                .collect(),
            default_model: args.default_model.clone(),
            limiter: Limiter::new(
                args.max_concurrent_turns as usize,
                args.max_queued_turns as usize,
                Duration::from_secs(args.queue_wait_secs),
            ),
            turn_timeout: Duration::from_secs(args.turn_timeout_secs),
            max_budget_usd: args.chat_max_budget_usd,
            chat_dir: args.state_dir.join("chat"),
            // One stable, empty directory: the CLI keys stored sessions by working directory.
            conversation_dir: args.state_dir.join("conversations"),
            sessions: std::sync::Mutex::new(Sessions::default()),
            metrics,
            shutdown,
            keepalive,
        }
    }

    fn remember(&self, id: uuid::Uuid) {
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

    async fn start(&self, request: &TurnRequest) -> Result<Driver, TurnFailure> {
        let turn = self.cli.start(request).await.map_err(|err| {
            tracing::error!(error = %err, "cannot start the claude CLI");
            TurnFailure::from_start(&err)
        })?;
        Ok(Driver::new(
            turn,
            Instant::now() + self.turn_timeout,
            self.shutdown.clone(),
        ))
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

    fn record_failure(&self, failure: &TurnFailure) {
        self.metrics.cli_failure(failure.code());
    }
}

fn gateway(state: &SidecarState) -> Result<&Arc<Gateway>, Response> {
    state.voice.as_ref().ok_or_else(|| {
        super::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the voice gateway is not configured",
            "not_configured",
        )
    })
}

fn invalid(message: &str, param: Option<&str>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(openai::error_body(
            message,
            "invalid_request_error",
            param,
            "invalid_request",
        )),
    )
        .into_response()
}

fn failure_response(failure: &TurnFailure) -> Response {
    let mut response = (
        failure.status(),
        Json(openai::error_body(
            &failure.message(),
            failure.kind(),
            None,
            failure.code(),
        )),
    )
        .into_response();
    if failure.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

fn refusal_response(refusal: Refusal) -> Response {
    let (status, message, code) = match refusal {
        Refusal::QueueFull => (
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests are waiting for the agent; retry shortly",
            "rate_limit_exceeded",
        ),
        Refusal::QueueTimeout => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no agent slot became free in time; retry shortly",
            "overloaded",
        ),
    };
    let mut response = (
        status,
        Json(openai::error_body(message, "rate_limit_error", None, code)),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    response
}

/// `GET /v1/models`.
pub async fn models(State(state): State<SidecarState>) -> Response {
    let gw = match gateway(&state) {
        Ok(gw) => gw,
        Err(resp) => return resp,
    };
    let data: Vec<Value> = openai::model_ids(&gw.models)
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "anthropic"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// What the first step of a turn was.
enum Opening {
    /// Text arrived: stream or collect the rest.
    Text(String),
    /// Finished without any text.
    Empty(Finished),
}

/// Read steps until the first text (or the end). Tool steps cannot happen (no tools).
async fn open(driver: &mut Driver) -> Result<Opening, TurnFailure> {
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
async fn collect(driver: &mut Driver, mut text: String) -> Result<(String, Finished), TurnFailure> {
    loop {
        match driver.next().await {
            Step::Started { .. } | Step::Tool { .. } => continue,
            Step::Text(more) => text.push_str(&more),
            Step::Finished(finished) => return Ok((text, finished)),
            Step::Failed(failure) => return Err(failure),
        }
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Result<Bytes, BytesRejection>) -> Result<T, Response> {
    let body = body.as_ref().map_err(|rejection| {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than {} bytes", super::MAX_V1_BODY)
        } else {
            "the request body could not be read".to_string()
        };
        (
            status,
            Json(openai::error_body(
                &message,
                "invalid_request_error",
                None,
                "invalid_request",
            )),
        )
            .into_response()
    })?;
    serde_json::from_slice(body).map_err(|err| {
        let message = format!("the request body is not valid JSON for this endpoint: {err}");
        invalid(&message, None)
    })
}

/// The gateway (503 when absent) and the parsed body (400/413 in OpenAI's shape): what every
/// `/v1` POST needs first.
fn gateway_and_body<T: serde::de::DeserializeOwned>(
    state: &SidecarState,
    body: &Result<Bytes, BytesRejection>,
) -> Result<(Arc<Gateway>, T), Response> {
    let gw = gateway(state)?.clone();
    Ok((gw, parse_body(body)?))
}

/// Guard counting an open stream.
struct ActiveStream(Metrics);

impl ActiveStream {
    fn new(metrics: &Metrics) -> Self {
        metrics.active_streams.inc();
        Self(metrics.clone())
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.active_streams.dec();
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<SidecarState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let received = Instant::now();
    let (gw, request) = match gateway_and_body::<ChatRequest>(&state, &body) {
        Ok(parts) => parts,
        Err(resp) => return resp,
    };
    let plan = match openai::plan(&request, &gw.models) {
        Ok(plan) => plan,
        Err(err) => return invalid(&err.message, err.param),
    };
    let permit = match gw.limiter.admit().await {
        Ok(permit) => permit,
        Err(refusal) => return refusal_response(refusal),
    };
    let workdir = match Workdir::new(&gw.chat_dir) {
        Ok(dir) => dir,
        Err(err) => {
            tracing::error!(error = %err, "cannot create a working directory");
            return failure_response(&TurnFailure::Spawn);
        }
    };
    let turn = TurnRequest {
        prompt: plan.prompt.clone(),
        model: plan.model.clone(),
        agent: gw.agent.clone(),
        session: SessionMode::Stateless,
        cwd: workdir.path().to_path_buf(),
        max_budget_usd: gw.max_budget_usd,
        allowed_tools: vec![],
    };
    let mut driver = match gw.start(&turn).await {
        Ok(driver) => driver,
        Err(failure) => {
            gw.record_failure(&failure);
            return failure_response(&failure);
        }
    };
    // The slot is free again only once this CLI is reaped, however the request ends.
    driver.hold_until_reaped(permit);
    let opening = match open(&mut driver).await {
        Ok(opening) => opening,
        Err(failure) => {
            gw.record_failure(&failure);
            return failure_response(&failure);
        }
    };
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
            Ok((text, finished)) => Json(id.completion(
                &text,
                openai::finish_reason(finished.stop_reason.as_deref()),
                openai::usage_json(finished.usage.prompt_tokens(), finished.usage.output_tokens),
            ))
            .into_response(),
            Err(failure) => {
                gw.record_failure(&failure);
                failure_response(&failure)
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
                let mut keepalive = keepalive_timer(gw.keepalive);
                loop {
                    let Some(step) = next_streamed(&mut driver, &tx, &mut keepalive).await else {
                        return;
                    };
                    match step {
                        Step::Started { .. } | Step::Tool { .. } => continue,
                        Step::Text(text) => {
                            if tx.send(send(id.text_chunk(&text))).await.is_err() {
                                return;
                            }
                        }
                        Step::Finished(finished) => break finished,
                        Step::Failed(failure) => {
                            gw.record_failure(&failure);
                            let error =
                                openai::error_body(&failure.message(), failure.kind(), None, failure.code());
                            let _ = tx.send(send(error)).await;
                            return;
                        }
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
    sse_response(rx)
}

/// `POST /v1/conversational` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationalRequest {
    /// The session (a UUID chosen by the client).
    pub session_id: String,
    /// The user's words.
    pub message: String,
    /// Model id or alias.
    #[serde(default)]
    pub model: Option<String>,
    /// Stream text deltas as SSE.
    #[serde(default)]
    pub stream: bool,
}

/// Marks a session busy while a turn runs in it.
struct Busy {
    gw: Arc<Gateway>,
    id: uuid::Uuid,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.gw
            .sessions
            .lock()
            .expect("sessions lock")
            .busy
            .remove(&self.id);
    }
}

/// `POST /v1/conversational`.
pub async fn conversational(
    State(state): State<SidecarState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let received = Instant::now();
    let (gw, request) = match gateway_and_body::<ConversationalRequest>(&state, &body) {
        Ok(parts) => parts,
        Err(resp) => return resp,
    };
    let Ok(session_id) = uuid::Uuid::parse_str(&request.session_id) else {
        return invalid("session_id must be a UUID", Some("session_id"));
    };
    if request.message.trim().is_empty() {
        return invalid("message must not be empty", Some("message"));
    }
    let model = request.model.clone().unwrap_or_else(|| gw.default_model.clone());
    if !openai::model_supported(&model, &gw.models) {
        let message = format!(
            "the model `{model}` is not served here; supported models: {}",
            openai::model_ids(&gw.models).join(", ")
        );
        return invalid(&message, Some("model"));
    }
    let (busy, known) = {
        let mut sessions = gw.sessions.lock().expect("sessions lock");
        if !sessions.busy.insert(session_id) {
            drop(sessions);
            return super::error(
                StatusCode::CONFLICT,
                "a turn is already running in this session",
                "session_busy",
            );
        }
        (
            Busy {
                gw: gw.clone(),
                id: session_id,
            },
            sessions.known.contains(&session_id),
        )
    };
    let permit = match gw.limiter.admit().await {
        Ok(permit) => permit,
        Err(refusal) => return refusal_response(refusal),
    };
    let mut mode = if known {
        SessionMode::Resume(session_id)
    } else {
        SessionMode::Open(session_id)
    };
    let mut retried = false;
    let (mut driver, opening) = loop {
        let turn = TurnRequest {
            prompt: request.message.clone(),
            model: model.clone(),
            agent: gw.agent.clone(),
            session: mode.clone(),
            cwd: gw.conversation_dir.clone(),
            max_budget_usd: gw.max_budget_usd,
            allowed_tools: vec![],
        };
        let (attempt, reaped) = match gw.start(&turn).await {
            Ok(mut driver) => {
                let reaped = driver.reaped();
                (
                    open(&mut driver).await.map(|opening| (driver, opening)),
                    Some(reaped),
                )
            }
            Err(failure) => (Err(failure), None),
        };
        match attempt {
            Ok(opened) => break opened,
            // The CLI lost the session (or we forgot we had it): once, the other way round —
            // after the failed attempt's process is gone, so one slot never holds two.
            Err(TurnFailure::UnknownSession) if !retried => {
                tracing::info!(session = %session_id, "CLI no longer knows the session; starting it anew");
                mode = SessionMode::Open(session_id);
            }
            Err(TurnFailure::SessionInUse) if !retried => mode = SessionMode::Resume(session_id),
            Err(failure) => {
                gw.record_failure(&failure);
                release_when_reaped(permit, reaped);
                return failure_response(&failure);
            }
        }
        if let Some(reaped) = reaped {
            reaped.wait().await;
        }
        retried = true;
    };
    driver.hold_until_reaped(permit);
    gw.remember(session_id);
    gw.metrics
        .time_to_first_token
        .observe(received.elapsed().as_secs_f64());
    let (first, ended) = match opening {
        Opening::Text(text) => (text, false),
        Opening::Empty(_) => (String::new(), true),
    };
    if !request.stream {
        let result = if ended {
            Ok((first, Finished::default()))
        } else {
            collect(&mut driver, first).await
        };
        drop(busy);
        return match result {
            Ok((reply, _)) => Json(json!({"session_id": session_id, "reply": reply})).into_response(),
            Err(failure) => {
                gw.record_failure(&failure);
                failure_response(&failure)
            }
        };
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let _active = ActiveStream::new(&gw.metrics);
        let _busy = busy;
        let frame = |event: &str, data: Value| Bytes::from(format!("event: {event}\ndata: {data}\n\n"));
        let mut reply = first.clone();
        if ended {
            let _ = tx
                .send(frame("done", json!({"session_id": session_id, "reply": reply})))
                .await;
            return;
        }
        if tx.send(frame("delta", json!({"text": first}))).await.is_err() {
            return;
        }
        let mut keepalive = keepalive_timer(gw.keepalive);
        loop {
            let Some(step) = next_streamed(&mut driver, &tx, &mut keepalive).await else {
                return;
            };
            match step {
                Step::Started { .. } | Step::Tool { .. } => {}
                Step::Text(text) => {
                    reply.push_str(&text);
                    if tx.send(frame("delta", json!({"text": text}))).await.is_err() {
                        return;
                    }
                }
                Step::Finished(_) => {
                    let _ = tx
                        .send(frame("done", json!({"session_id": session_id, "reply": reply})))
                        .await;
                    return;
                }
                Step::Failed(failure) => {
                    gw.record_failure(&failure);
                    let error = openai::error_body(&failure.message(), failure.kind(), None, failure.code());
                    let _ = tx.send(frame("error", error)).await;
                    return;
                }
            }
        }
    });
    sse_response(rx)
}
