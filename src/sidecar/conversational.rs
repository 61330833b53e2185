//! `POST /v1/conversational`: a voice conversation as a CLI session the client names by UUID.
//! A session's process is kept alive between turns ([`super::warm::LiveSessions`]), so turn two
//! is one message on its stdin; a session without a kept process is opened (`--session-id`) or
//! continued (`--resume`) by a fresh process, exactly as before live sessions existed. At most one
//! turn runs in a session at a time (409), and a kept process only ever serves its own session.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    error::ApiError,
    openai,
    turns::{Driver, Finished, Slot, TurnFailure, sse_response},
    voice::{ActiveStream, Gateway, Opening, VoiceRequest, collect, open, stream_rest},
    warm::{Live, let_go},
};
use crate::adapters::claude::{SessionMode, TurnRequest};

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

/// Which process served a turn (the `voice_turn_starts` metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The session's kept process.
    Live,
    /// A process started for this turn.
    Cold,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Cold => "cold",
        }
    }
}

/// A turn in one session, opened: its driver, its first step, its slot and where it ran.
struct Opened {
    driver: Driver,
    opening: Opening,
    slot: Slot,
    source: Source,
}

/// The session's process after a successful turn goes back to the kept set (when it is kept at
/// all); anything else lets the slot go once the process is reaped.
fn keep(gw: &Gateway, id: uuid::Uuid, driver: Driver, slot: Slot, model: &str, generation: u64) {
    if let Some(turn) = driver.into_live() {
        gw.live.put(
            id,
            Live {
                turn,
                slot,
                model: model.to_string(),
                generation,
            },
        );
    }
}

/// `POST /v1/conversational`.
pub async fn conversational(
    VoiceRequest {
        gw,
        body: request,
        received,
    }: VoiceRequest<ConversationalRequest>,
) -> Result<Response, ApiError> {
    let Ok(session_id) = uuid::Uuid::parse_str(&request.session_id) else {
        return Err(ApiError::invalid("session_id must be a UUID", Some("session_id")));
    };
    if request.message.trim().is_empty() {
        return Err(ApiError::invalid("message must not be empty", Some("message")));
    }
    let model = request.model.clone().unwrap_or_else(|| gw.default_model.clone());
    if !openai::model_supported(&model, &gw.models) {
        let message = format!(
            "the model `{model}` is not served here; supported models: {}",
            openai::model_ids(&gw.models).join(", ")
        );
        return Err(ApiError::invalid(message, Some("model")));
    }
    let (busy, known) = {
        let mut sessions = gw.sessions.lock().expect("sessions lock");
        if !sessions.busy.insert(session_id) {
            drop(sessions);
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "a turn is already running in this session",
                "session_busy",
            ));
        }
        (
            Busy {
                gw: gw.clone(),
                id: session_id,
            },
            sessions.known.contains(&session_id),
        )
    };
    let generation = gw.cli.generation();
    let opened = open_turn(&gw, session_id, known, &model, generation, &request.message).await?;
    let Opened {
        mut driver,
        opening,
        slot,
        source,
    } = opened;
    gw.remember(session_id);
    gw.metrics.voice_turn_start(source.label());
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
        // Back to the kept set before the session is free for its next turn.
        keep(&gw, session_id, driver, slot, &model, generation);
        drop(busy);
        return match result {
            Ok((reply, _)) => Ok(Json(json!({"session_id": session_id, "reply": reply})).into_response()),
            Err(failure) => {
                gw.record_failure(&failure);
                Err(ApiError::from(&failure))
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
            keep(&gw, session_id, driver, slot, &model, generation);
            let _ = tx
                .send(frame("done", json!({"session_id": session_id, "reply": reply})))
                .await;
            return;
        }
        if tx.send(frame("delta", json!({"text": first}))).await.is_err() {
            return;
        }
        let delta = |text: &str| {
            reply.push_str(text);
            frame("delta", json!({"text": text}))
        };
        match stream_rest(&mut driver, &tx, gw.keepalive, delta).await {
            // The client went away; dropping the driver killed the process.
            None => {}
            Some(Ok(_)) => {
                keep(&gw, session_id, driver, slot, &model, generation);
                let _ = tx
                    .send(frame("done", json!({"session_id": session_id, "reply": reply})))
                    .await;
            }
            Some(Err(failure)) => {
                gw.record_failure(&failure);
                let _ = tx.send(frame("error", ApiError::from(&failure).body())).await;
            }
        }
    });
    Ok(sse_response(rx))
}

/// Open one turn of the session: on its kept process when it can serve it, else on a fresh one
/// (`--resume` when the session is known, `--session-id` when new). Retried once the other way
/// round when the CLI disagrees about the session, and once by `--resume` when the kept process
/// turns out to be gone — each time after the failed process is reaped, so one slot never holds
/// two processes and two processes never write one session.
async fn open_turn(
    gw: &Gateway,
    session_id: uuid::Uuid,
    known: bool,
    model: &str,
    generation: u64,
    message: &str,
) -> Result<Opened, ApiError> {
    let mut kept = match gw.live.take(&session_id) {
        Some(live) if live.model == model && live.generation == generation && live.turn.is_alive() => {
            Some(live)
        }
        // Another model or API key: let it save the session and exit before `--resume` reads it.
        Some(stale) => {
            let_go(stale).wait().await;
            None
        }
        None => None,
    };
    let mut mode = if known {
        SessionMode::Resume(session_id)
    } else {
        SessionMode::Open(session_id)
    };
    let mut permit = None;
    let mut retried = false;
    loop {
        let (mut turn, slot, source) = match kept.take() {
            Some(live) => (live.turn, live.slot, Source::Live),
            None => {
                let permit = match permit.take() {
                    Some(permit) => permit,
                    None => gw.admit().await?,
                };
                let request = TurnRequest {
                    prompt: String::new(),
                    model: model.to_string(),
                    agent: gw.agent.clone(),
                    session: mode.clone(),
                    cwd: gw.conversation_dir.clone(),
                    max_budget_usd: gw.max_budget_usd,
                    allowed_tools: vec![],
                };
                let turn = gw.spawn(&request).await.map_err(|failure| {
                    gw.record_failure(&failure);
                    ApiError::from(&failure)
                })?;
                let slot = Slot::new(permit, turn.reaped());
                (turn, slot, Source::Cold)
            }
        };
        // A write to a process that is gone fails; its events then say why.
        if let Err(err) = turn.send(message).await {
            tracing::debug!(error = %err, "the conversation's process did not take the message");
        }
        if !gw.live.enabled() {
            // Not kept: the CLI exits after this turn, as a one-shot `-p` would.
            turn.end_input();
        }
        let mut driver = gw.drive(turn);
        if gw.live.enabled() {
            driver = driver.keep_alive();
        }
        let failure = match open(&mut driver).await {
            Ok(opening) => {
                return Ok(Opened {
                    driver,
                    opening,
                    slot,
                    source,
                });
            }
            Err(failure) => failure,
        };
        drop(driver);
        match failure {
            TurnFailure::Crashed if source == Source::Live => {
                tracing::info!(session = %session_id, "the kept process was gone; resuming the session");
                mode = SessionMode::Resume(session_id);
            }
            TurnFailure::UnknownSession if !retried => {
                tracing::info!(session = %session_id, "CLI no longer knows the session; starting it anew");
                mode = SessionMode::Open(session_id);
                retried = true;
            }
            TurnFailure::SessionInUse if !retried => {
                mode = SessionMode::Resume(session_id);
                retried = true;
            }
            failure => {
                gw.record_failure(&failure);
                return Err(ApiError::from(&failure));
            }
        }
        permit = Some(slot.reclaim().await);
    }
}
