//! The sidecar: one axum server in the same process as the controllers. For now it serves the
//! unauthenticated probes (`/healthz`, `/readyz`); the voice gateway, breakglass and AFK
//! operations routes join this router as they are built.

use std::future::Future;

use axum::{Router, http::StatusCode, routing::get};
use tokio::net::TcpListener;

use crate::config::SidecarArgs;

/// The router with every route the sidecar serves.
pub fn router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(|| async { (StatusCode::OK, "ready\n") }))
}

/// Bind and serve until `shutdown` resolves.
pub async fn serve(
    args: SidecarArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "sidecar listening");
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
}
