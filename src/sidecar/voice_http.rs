//! The `/v1` edge of the voice gateway: the [`VoiceRequest`] extractor (gateway present, body
//! parsed, arrival time) and the OpenAI-shaped error responses every `/v1` route answers with
//! (400 with the offending parameter, honest 5xx for a failed turn, 429/503 with `Retry-After`
//! for admission refusals).

// Early returns of ready-made responses are the point of these helpers; boxing them buys nothing.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::rejection::BytesRejection,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::time::Instant;

use super::{
    SidecarState, openai,
    turns::{Refusal, TurnFailure},
    voice::Gateway,
};

/// The voice gateway, or 503 when this sidecar has none.
pub(super) fn gateway(state: &SidecarState) -> Result<&Arc<Gateway>, Response> {
    state.voice.as_ref().ok_or_else(|| {
        super::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the voice gateway is not configured",
            "not_configured",
        )
    })
}

pub(super) fn invalid(message: &str, param: Option<&str>) -> Response {
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

pub(super) fn failure_response(failure: &TurnFailure) -> Response {
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

pub(super) fn refusal_response(refusal: Refusal) -> Response {
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

pub(super) fn parse_body<T: serde::de::DeserializeOwned>(
    body: &Result<Bytes, BytesRejection>,
) -> Result<T, Response> {
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
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, state: &SidecarState) -> Result<Self, Response> {
        let received = Instant::now();
        let gw = gateway(state)?.clone();
        let bytes = Bytes::from_request(request, state).await;
        let body = parse_body(&bytes)?;
        Ok(Self { gw, body, received })
    }
}
