//! The sidecar's one error type. Every error response — from a handler, an extractor's
//! rejection, an unknown route (404) or method (405), an oversize body (413) — leaves as the same
//! JSON object, OpenAI's `{"error": {"message", "type", "param", "code"}}`, which the voice
//! clients already parse and which serves the console and scripts just as well. Handlers return
//! [`ApiError`]; [`uniform_errors`] rewrites the few responses axum itself produces (plain-text
//! rejections, empty 404/405) into it, so no route can answer in another shape. The extractors
//! in [`super::extract`] reject with it too, so a handler's error path is `?` or `Err(..)`.

use axum::{
    Json,
    body::Body,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::turns::TurnFailure;

/// An error answer: status, message for the client, OpenAI `type`, stable `code`, optional `param`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person (no secrets, no paths, no stderr).
    pub message: String,
    /// OpenAI's error `type` (`invalid_request_error`, `authentication_error`, …).
    pub kind: &'static str,
    /// A stable machine-readable code (also a metric label, so a fixed vocabulary).
    pub code: &'static str,
    /// The offending request parameter, when one is to blame.
    pub param: Option<&'static str>,
    /// Seconds for a `Retry-After` header (429/503).
    pub retry_after: Option<u32>,
    /// A `WWW-Authenticate` challenge (401).
    pub challenge: Option<&'static str>,
}

/// The wire shape: `{"error": {...}}`.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

/// OpenAI's error object. Fields are declared in alphabetical order: that is the order the
/// `json!` literal this replaced serialized them in, so the bytes on the wire are unchanged.
#[derive(Debug, Serialize)]
struct ErrorObject<'a> {
    code: &'a str,
    message: &'a str,
    param: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'a str,
}

impl ApiError {
    /// An error with the `type` derived from the status.
    pub fn new(status: StatusCode, message: impl Into<String>, code: &'static str) -> Self {
        let kind = match status.as_u16() {
            401 | 403 => "authentication_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        Self {
            status,
            message: message.into(),
            kind,
            code,
            param: None,
            retry_after: None,
            challenge: None,
        }
    }

    /// 401 with `WWW-Authenticate: Bearer`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            challenge: Some("Bearer"),
            ..Self::new(StatusCode::UNAUTHORIZED, message, "unauthorized")
        }
    }

    /// 503 `not_configured`: the route's feature is off in this process.
    pub fn not_configured(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message, "not_configured")
    }

    /// 404 `code` for an object that does not exist.
    pub fn not_found(message: impl Into<String>, code: &'static str) -> Self {
        Self::new(StatusCode::NOT_FOUND, message, code)
    }

    /// 400 `invalid_request` without a parameter to blame.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::invalid(message, None)
    }

    /// 400 `invalid_request` about `param`.
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            param,
            ..Self::new(StatusCode::BAD_REQUEST, message, "invalid_request")
        }
    }

    /// 404 for a path no route serves.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "no such route", "not_found")
    }

    /// 405 for a method the route does not serve.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route",
            "method_not_allowed",
        )
    }

    /// 413 for a body over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
            "payload_too_large",
        )
    }

    /// Override the OpenAI `type`.
    #[must_use]
    pub fn kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    /// Add `Retry-After: seconds`.
    #[must_use]
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The JSON body as a value.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(self.wire()).expect("an error body serializes")
    }

    fn wire(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorObject {
                code: self.code,
                message: &self.message,
                param: self.param,
                kind: self.kind,
            },
        }
    }
}

/// A failed turn, in the voice routes' terms (a 503 says when to retry).
impl From<&TurnFailure> for ApiError {
    fn from(failure: &TurnFailure) -> Self {
        let error = Self::new(failure.status(), failure.message(), failure.code()).kind(failure.kind());
        if failure.status() == StatusCode::SERVICE_UNAVAILABLE {
            error.retry_after(5)
        } else {
            error
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.wire())).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

/// Largest plain-text error body (an axum rejection message) carried over into the JSON.
const MAX_REJECTION_TEXT: usize = 4096;

/// Middleware: an error status whose body is not already JSON (axum's plain-text rejections, the
/// empty 404/405) is answered as an [`ApiError`] with the same status and headers.
pub async fn uniform_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let error = match status {
        StatusCode::NOT_FOUND if text.is_empty() => ApiError::no_route(),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            if text.is_empty() {
                "the request body is too large".to_string()
            } else {
                text
            },
            "payload_too_large",
        ),
        _ => {
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                text
            };
            let code = if status.is_client_error() {
                "invalid_request"
            } else {
                "server_error"
            };
            ApiError::new(status, message, code)
        }
    };
    let fresh = error.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::new(fresh.into_body()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_is_openais() {
        let e = ApiError::invalid("bad model", Some("model"));
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"message": "bad model", "type": "invalid_request_error", "param": "model", "code": "invalid_request"}})
        );
        assert_eq!(
            ApiError::new(StatusCode::UNAUTHORIZED, "x", "unauthorized").kind,
            "authentication_error"
        );
        assert_eq!(
            ApiError::new(StatusCode::BAD_GATEWAY, "x", "cli_crashed").kind,
            "server_error"
        );
        let r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "x", "rate_limit_exceeded")
            .retry_after(2)
            .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }

    /// The bytes clients parse today: keys in the order the former `json!` literal wrote them.
    #[tokio::test]
    async fn the_bytes_are_unchanged() {
        let response = ApiError::invalid("bad \"model\"", Some("model")).into_response();
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        assert_eq!(
            bytes,
            r#"{"error":{"code":"invalid_request","message":"bad \"model\"","param":"model","type":"invalid_request_error"}}"#
        );
        let legacy = serde_json::json!({"error": {"message": "m", "type": "server_error", "param": null, "code": "c"}});
        let now = ApiError::new(StatusCode::BAD_GATEWAY, "m", "c");
        assert_eq!(serde_json::to_string(&now.wire()).unwrap(), legacy.to_string());
    }

    #[test]
    fn unauthorized_carries_the_bearer_challenge() {
        let r = ApiError::unauthorized("missing bearer token").into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn turn_failures_keep_their_voice_shape() {
        let budget: ApiError = (&TurnFailure::Budget).into();
        assert_eq!(
            (budget.status, budget.kind, budget.retry_after),
            (StatusCode::PAYMENT_REQUIRED, "insufficient_quota", None)
        );
        let spawn: ApiError = (&TurnFailure::Spawn).into();
        assert_eq!(
            (spawn.status, spawn.kind, spawn.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, "server_error", Some(5))
        );
    }
}
