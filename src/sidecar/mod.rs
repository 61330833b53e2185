//! The sidecar: one axum server in the same process as the controllers. It serves the
//! unauthenticated operational endpoints — `/healthz`, `/readyz` (true once the controllers'
//! watches have synced) and `/metrics` (Prometheus text); the voice gateway, breakglass and AFK
//! operations routes join this router as they are built.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use crate::{config::SidecarArgs, metrics::Metrics};

/// What the sidecar's handlers share.
#[derive(Clone, Debug)]
pub struct SidecarState {
    /// Readiness (the controllers flip it once their watches synced).
    pub ready: Arc<AtomicBool>,
    /// The metrics registry.
    pub metrics: Metrics,
}

impl SidecarState {
    /// State for a sidecar without controllers: ready at once.
    pub fn standalone() -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(true)),
            metrics: Metrics::new(),
        }
    }
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

/// The router with every route the sidecar serves.
pub fn router(state: SidecarState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
