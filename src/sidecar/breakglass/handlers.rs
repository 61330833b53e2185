//! The HTTP face of breakglass sessions. Feature gate, session lookup, body parsing and the
//! caller's name come from extractors ([`crate::sidecar::extract`]), so each handler is the
//! audited action and its typed answer.

use axum::{
    Json,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use super::sessions::{AtCapacity, Breakglass, SessionSummary, TurnRunning};
use crate::sidecar::{
    auth::Caller,
    error::ApiError,
    extract::{ApiJson, Enabled, SessionById, unknown_session},
    openai,
};

/// `201` body of `POST /api/breakglass/sessions`.
#[derive(Debug, Serialize)]
pub struct Created {
    /// The new session.
    pub session_id: uuid::Uuid,
}

/// Body of `GET /api/breakglass/sessions`.
#[derive(Debug, Serialize)]
pub struct SessionList {
    /// Newest first.
    pub sessions: Vec<SessionSummary>,
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

/// `202` body of `POST …/prompt` (fields alphabetical: the former `json!` order).
#[derive(Debug, Serialize)]
pub struct Accepted {
    /// Always true: a refused prompt is an error.
    pub accepted: bool,
    /// The session.
    pub session_id: uuid::Uuid,
}

/// Body of `POST …/cancel`.
#[derive(Debug, Serialize)]
pub struct Cancelled {
    /// Whether a turn was running (and is now being killed).
    pub cancelled: bool,
    /// The session.
    pub session_id: uuid::Uuid,
}

/// `POST /api/breakglass/sessions`.
pub async fn create(Enabled(sessions): Enabled<Breakglass>, caller: Caller) -> Result<Response, ApiError> {
    let session = sessions.create().map_err(|AtCapacity| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "every breakglass session is busy; cancel or delete one first",
            "too_many_sessions",
        )
    })?;
    tracing::info!(audit = true, caller = ?caller.0, session = %session.id(), "breakglass session created");
    let body = Created {
        session_id: session.id(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /api/breakglass/sessions`.
pub async fn list(Enabled(sessions): Enabled<Breakglass>) -> Json<SessionList> {
    Json(SessionList {
        sessions: sessions.list(),
    })
}

/// `DELETE /api/breakglass/sessions/{id}`.
pub async fn delete(
    Enabled(sessions): Enabled<Breakglass>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    if sessions.remove(&id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(unknown_session())
    }
}

/// `GET /api/breakglass/sessions/{id}/stream`: replay after `Last-Event-ID`, then live.
pub async fn stream(found: SessionById, headers: HeaderMap) -> Result<Response, ApiError> {
    let cursor = match headers
        .get("last-event-id")
        .map(|v| v.to_str().map(|s| s.trim().parse::<u64>()))
    {
        None => None,
        Some(Ok(Ok(cursor))) => Some(cursor),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Last-Event-ID must be an event id (a non-negative integer)",
            ));
        }
    };
    Ok(found.sessions.attach(found.session, cursor))
}

/// `POST /api/breakglass/sessions/{id}/prompt`.
pub async fn prompt(
    SessionById { sessions, session }: SessionById,
    caller: Caller,
    ApiJson(request): ApiJson<PromptRequest>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    if request.prompt.trim().is_empty() {
        return Err(ApiError::bad_request("prompt must not be empty"));
    }
    // The same rule as the voice gateway: an alias or a configured id, nothing else reaches argv.
    if let Some(model) = &request.model
        && !openai::model_supported(model, sessions.models())
    {
        return Err(ApiError::invalid(
            format!(
                "the model `{}` is not served here; supported models: {}",
                model.chars().take(100).collect::<String>(),
                openai::model_ids(sessions.models()).join(", ")
            ),
            Some("model"),
        ));
    }
    tracing::info!(audit = true, caller = ?caller.0, session = %session.id(), "breakglass prompt");
    sessions
        .prompt(&session, request.prompt, request.model)
        .map_err(|TurnRunning| {
            ApiError::new(
                StatusCode::CONFLICT,
                "a turn is already running in this session; cancel it or wait for turn_end",
                "turn_running",
            )
        })?;
    let body = Accepted {
        accepted: true,
        session_id: session.id(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// `POST /api/breakglass/sessions/{id}/cancel`.
pub async fn cancel(SessionById { session, .. }: SessionById, caller: Caller) -> Json<Cancelled> {
    let cancelled = session.cancel_turn();
    tracing::info!(audit = true, caller = ?caller.0, session = %session.id(), cancelled, "breakglass cancel");
    Json(Cancelled {
        cancelled,
        session_id: session.id(),
    })
}
