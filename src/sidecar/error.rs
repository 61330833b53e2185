//! The sidecar's one error type. Every error response — from a handler, an extractor's
//! rejection, an unknown route (404) or method (405), an oversize body (413) — leaves as the same
//! JSON object, OpenAI's `{"error": {"message", "type", "param", "code"}}`, which the voice
//! clients already parse and which serves the console and scripts just as well. Handlers return
//! [`ApiError`]; [`uniform_errors`] rewrites the few responses axum itself produces (plain-text
//! rejections, empty 404/405) into it, so no route can answer in another shape.

use axum::{
    Json,
    body::Body,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

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
        }
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

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
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
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
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
}
