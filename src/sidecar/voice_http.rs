//! The `/v1` edge of the voice gateway: the [`VoiceRequest`] extractor (gateway present, body
//! parsed, arrival time) and how the gateway's own failures become the sidecar's one
//! [`ApiError`]: a request the planner rejects (400 naming the parameter), a refused admission
//! (429/503 with `Retry-After`, so a voice client backs off instead of hammering), a failed
//! turn (an honest 5xx, see `From<&TurnFailure>`).

use std::sync::Arc;

use axum::{body::Bytes, extract::rejection::BytesRejection, http::StatusCode};
use tokio::time::Instant;

use super::{SidecarState, error::ApiError, openai::Invalid, turns::Refusal, voice::Gateway};

/// The voice gateway, or 503 when this sidecar has none.
pub(super) fn gateway(state: &SidecarState) -> Result<&Arc<Gateway>, ApiError> {
    state
        .voice
        .as_ref()
        .ok_or_else(|| ApiError::not_configured("the voice gateway is not configured"))
}

/// A request the planner rejected: 400 about the parameter at fault.
impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        Self::invalid(invalid.message, invalid.param)
    }
}

/// No turn slot: 429 when the wait queue is full, 503 when the wait timed out.
impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
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
        Self::new(status, message, code)
            .kind("rate_limit_error")
            .retry_after(2)
    }
}

/// The body as `T`: 413 or 400 (still `invalid_request`, as OpenAI's own clients expect) when
/// it cannot be read, 400 when it is not the endpoint's JSON.
fn parse_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than {} bytes", super::MAX_V1_BODY)
        } else {
            "the request body could not be read".to_string()
        };
        ApiError::new(status, message, "invalid_request").kind("invalid_request_error")
    })?;
    serde_json::from_slice(&body).map_err(|err| {
        ApiError::bad_request(format!(
            "the request body is not valid JSON for this endpoint: {err}"
        ))
    })
}

/// What every `/v1` POST needs first, as an extractor: the gateway (503 when absent), the parsed
/// body (400/413 in OpenAI's shape) and when the request arrived (time to first token).
pub struct VoiceRequest<T> {
    /// The voice gateway.
    pub gw: Arc<Gateway>,
    /// The request body.
    pub body: T,
    /// When the request was received.
    pub received: Instant,
}

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<SidecarState> for VoiceRequest<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &SidecarState) -> Result<Self, ApiError> {
        let received = Instant::now();
        let gw = gateway(state)?.clone();
        let body = parse_body(Bytes::from_request(request, state).await)?;
        Ok(Self { gw, body, received })
    }
}
