//! The sidecar: one axum server in the same process as the controllers. Unauthenticated:
//! `/healthz`, `/readyz` (true once the controllers' watches have synced) and `/metrics`.
//! Bearer-authenticated (`auth`): the AFK operations view and the emergency stop (`afk_ops`).
//! HMAC-verified: the GitHub webhook (`webhook`), which triggers an immediate poll. The voice
//! gateway and breakglass routes join this router when they are built.

pub mod afk_ops;
pub mod auth;
pub mod webhook;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::{StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use kube::runtime::reflector::ObjectRef;
use tokio::net::TcpListener;

use crate::{config::SidecarArgs, crd::AfkConfig, metrics::Metrics};

/// What the sidecar needs of the cluster (absent for `afk-operator sidecar`).
#[derive(Clone)]
pub struct Cluster {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// The namespace the operator watches (all when `None`).
    pub namespace: Option<String>,
    /// The AfkConfig controller's trigger channel.
    pub trigger: tokio::sync::broadcast::Sender<ObjectRef<AfkConfig>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// What the sidecar's handlers share.
#[derive(Clone, Debug)]
pub struct SidecarState {
    /// Readiness (the controllers flip it once their watches synced).
    pub ready: Arc<AtomicBool>,
    /// The metrics registry.
    pub metrics: Metrics,
    /// Bearer-token auth for `/api/*`.
    pub auth: Arc<auth::ApiAuth>,
    /// The cluster, when running beside the controllers.
    pub cluster: Option<Cluster>,
}

impl SidecarState {
    /// State from the sidecar's flags.
    pub fn new(
        args: &SidecarArgs,
        ready: Arc<AtomicBool>,
        metrics: Metrics,
        cluster: Option<Cluster>,
    ) -> Self {
        Self {
            ready,
            metrics,
            auth: Arc::new(auth::ApiAuth::new(
                args.api_token_file.clone(),
                args.trust_proxy_header,
            )),
            cluster,
        }
    }

    /// State for a sidecar without controllers: ready at once.
    pub fn standalone(args: &SidecarArgs) -> Self {
        Self::new(args, Arc::new(AtomicBool::new(true)), Metrics::new(), None)
    }
}

/// An OpenAI-shaped error body (one error vocabulary for every sidecar route).
pub fn error(status: StatusCode, message: &str, code: &str) -> Response {
    let kind = match status.as_u16() {
        401 | 403 => "authentication_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    (
        status,
        Json(serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})),
    )
        .into_response()
}

async fn readyz(State(s): State<SidecarState>) -> impl IntoResponse {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: watches not synced\n")
    }
}

async fn metrics(State(s): State<SidecarState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Request bodies of authenticated routes are small JSON documents.
const MAX_API_BODY: usize = 64 * 1024;

/// The router with every route the sidecar serves.
pub fn router(state: SidecarState) -> Router {
    let api = Router::new()
        .route("/api/afk/runs", get(afk_ops::runs))
        .route(
            "/api/afk/emergency-stop",
            get(afk_ops::status).post(afk_ops::stop).delete(afk_ops::release),
        )
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    let webhooks = Router::new()
        .route("/webhooks/github", post(webhook::github))
        .layer(DefaultBodyLimit::max(webhook::MAX_BODY));
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .merge(webhooks)
        .with_state(state)
}

/// Bind and serve until `shutdown` resolves.
pub async fn serve(
    args: SidecarArgs,
    state: SidecarState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "sidecar listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
