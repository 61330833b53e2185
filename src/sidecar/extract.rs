//! Extractors that answer for themselves: a handler names what it needs in its signature and
//! never sees the request when that is missing. Each rejects with an [`ApiError`], so the answer
//! has the one JSON shape and the handler body holds only the happy path.
//!
//! - feature gates: [`Enabled<F>`] for a [`Feature`] — the voice gateway, breakglass sessions —
//!   (503 `not_configured` when it is off in this process) and [`InCluster`] (503 `unavailable`
//!   without a cluster connection);
//! - [`SessionById`]: the breakglass session named by the `{id}` path segment (404 otherwise);
//! - bodies: [`ApiJson`] for the `/api/*` routes and [`V1Json`] for the OpenAI-shaped `/v1/*`
//!   routes, each with the 400/413 wording its clients see today.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request, rejection::JsonRejection},
    http::{StatusCode, request::Parts},
};
use serde::de::DeserializeOwned;

use super::{
    Cluster, MAX_API_BODY, MAX_V1_BODY, SidecarState,
    breakglass::{self, Session},
    error::ApiError,
    voice,
};

/// A feature this process may or may not serve (absent without its agent, or with
/// `--routes controller`).
pub trait Feature: Send + Sync + 'static {
    /// The 503 message when it is off.
    const OFF: &'static str;
    /// The feature in `state`, when on.
    fn of(state: &SidecarState) -> Option<&Arc<Self>>;
}

impl Feature for voice::Gateway {
    const OFF: &'static str = "the voice gateway is not configured";
    fn of(state: &SidecarState) -> Option<&Arc<Self>> {
        state.voice.as_ref()
    }
}

impl Feature for breakglass::Breakglass {
    const OFF: &'static str = "breakglass sessions are not configured";
    fn of(state: &SidecarState) -> Option<&Arc<Self>> {
        state.breakglass.as_ref()
    }
}

/// The feature `F`, or 503 `not_configured` when this process does not serve it.
#[derive(Debug)]
pub struct Enabled<F>(pub Arc<F>);

impl<F: Feature> FromRequestParts<SidecarState> for Enabled<F> {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &SidecarState) -> Result<Self, ApiError> {
        F::of(state)
            .cloned()
            .map(Self)
            .ok_or_else(|| ApiError::not_configured(F::OFF))
    }
}

/// The breakglass session of the route's `{id}`: 503 without breakglass, 404 when no session has
/// that id (including ids that are not UUIDs).
#[derive(Clone, Debug)]
pub struct SessionById {
    /// The registry it belongs to.
    pub sessions: Arc<breakglass::Breakglass>,
    /// The session.
    pub session: Arc<Session>,
}

impl FromRequestParts<SidecarState> for SessionById {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SidecarState) -> Result<Self, ApiError> {
        let Enabled(sessions) = Enabled::<breakglass::Breakglass>::from_request_parts(parts, state).await?;
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| unknown_session())?;
        let session = sessions.get(&id).ok_or_else(unknown_session)?;
        Ok(Self { sessions, session })
    }
}

/// 404 for a breakglass session id nobody holds.
pub fn unknown_session() -> ApiError {
    ApiError::not_found("no such breakglass session", "unknown_session")
}

/// The cluster connection, or 503 for a sidecar started without one (`afk-operator sidecar`).
#[derive(Clone, Debug)]
pub struct InCluster(pub Cluster);

impl InCluster {
    /// The answer when there is no cluster.
    pub fn missing() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this sidecar runs without a cluster connection (use `afk-operator run`)",
            "unavailable",
        )
    }
}

impl FromRequestParts<SidecarState> for InCluster {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &SidecarState) -> Result<Self, ApiError> {
        state.cluster.clone().map(Self).ok_or_else(Self::missing)
    }
}

/// A JSON body of an `/api/*` route: 413 over [`MAX_API_BODY`], 400 with axum's explanation for
/// anything else it cannot take (wrong content type, bad JSON, a missing field).
#[derive(Clone, Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(api_rejection(&rejection)),
        }
    }
}

fn api_rejection(rejection: &JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(MAX_API_BODY)
    } else {
        ApiError::bad_request(rejection.body_text())
    }
}

/// A JSON body of a `/v1/*` route, in OpenAI's wording: 413 over [`MAX_V1_BODY`], the body
/// read's own status when it could not be read, 400 when it is not this endpoint's JSON.
#[derive(Clone, Debug)]
pub struct V1Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for V1Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(request, state).await.map_err(|rejection| {
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the request body is larger than {MAX_V1_BODY} bytes")
            } else {
                "the request body could not be read".to_string()
            };
            // `invalid_request` even for 413: the code the voice clients have always seen.
            ApiError::new(status, message, "invalid_request").kind("invalid_request_error")
        })?;
        serde_json::from_slice(&body).map(Self).map_err(|err| {
            ApiError::bad_request(format!(
                "the request body is not valid JSON for this endpoint: {err}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::{
        body::Body,
        extract::DefaultBodyLimit,
        http::Request,
        routing::{MethodRouter, post},
    };
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Ask {
        #[allow(dead_code)]
        model: String,
    }

    /// `route` behind an 8-byte body limit, called with `body`.
    async fn status_and_body(route: MethodRouter, body: &'static str) -> (StatusCode, serde_json::Value) {
        let app = axum::Router::new()
            .route("/", route)
            .layer(DefaultBodyLimit::max(8));
        let request = Request::post("/")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn v1_bodies_answer_in_openais_words() {
        let route = post(|V1Json(_): V1Json<Ask>| async { StatusCode::OK });
        let (status, body) = status_and_body(route.clone(), "{\"model\": \"a long one\"}").await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            body["error"]["message"],
            format!("the request body is larger than {MAX_V1_BODY} bytes")
        );
        assert_eq!(body["error"]["code"], "invalid_request");
        let (status, body) = status_and_body(route, "{}").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("the request body is not valid JSON for this endpoint: missing field `model`")
        );
    }

    #[tokio::test]
    async fn api_bodies_are_400_or_413() {
        let route = post(|ApiJson(_): ApiJson<Ask>| async { StatusCode::OK });
        let (status, body) = status_and_body(route.clone(), "{\"model\": \"a long one\"}").await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["code"], "payload_too_large");
        let (status, body) = status_and_body(route, "[]").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
}
