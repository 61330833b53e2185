//! The sidecar: one HTTP server in the same process as the controllers. Unauthenticated:
//! `/healthz`, `/readyz` (true once the controllers' watches have synced), `/metrics` and the
//! static web console. Bearer-authenticated (`auth`): the voice gateway (`voice`, over the
//! OpenAI wire format in `openai`), breakglass sessions and VM power verbs (`breakglass`, `pve`),
//! the AFK operations view and the emergency stop (`afk_ops`). HMAC-verified: the GitHub webhook
//! (`webhook`). `turns` drives one CLI turn for any of them. `afk-operator run --routes
//! controller` serves only the routes that spawn nothing (see [`router`]), so the chart can run
//! the CLI-spawning ones in a container of their own (memory isolation). Served by a hyper connection loop
//! (`serve`): HTTP/1.1 only, every wait for a request head bounded by the header-read timeout,
//! and a shutdown that ends open streams. Errors leave in one JSON shape (`error`); extractors
//! (`extract`) answer 503/404/400 for handlers, so handlers hold only the happy path. Requests
//! other than the probes are traced (`tower-http`, at debug level: `--log-filter
//! tower_http=debug`).

pub mod admission;
pub mod afk_ops;
pub mod auth;
pub mod breakglass;
pub mod console;
pub mod conversational;
pub mod error;
pub mod extract;
pub mod openai;
pub mod pve;
pub mod turns;
pub mod voice;
pub mod voice_http;
pub mod warm;
pub mod webhook;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::{StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::net::TcpListener;
use tower_http::{
    LatencyUnit,
    trace::{DefaultMakeSpan, DefaultOnFailure, DefaultOnResponse, TraceLayer},
};
use tracing::Level;

use tokio_util::sync::CancellationToken;

use crate::{
    adapters::{
        FileSecret, SecretSource,
        claude::{AgentCli, AgentSpec, ClaudeCli},
    },
    agents::Agents,
    args::{Routes, SidecarArgs},
    metrics::{Metrics, RouteStatus},
};

/// What the sidecar needs of the cluster (absent for `afk-operator sidecar`).
#[derive(Clone)]
pub struct Cluster {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// The namespace the operator watches (all when `None`).
    pub namespace: Option<String>,
    /// The controllers' trigger channel.
    pub trigger: tokio::sync::broadcast::Sender<crate::controller::Trigger>,
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
    /// The voice gateway (absent when no CLI agent is configured, e.g. in some tests).
    pub voice: Option<Arc<voice::Gateway>>,
    /// Breakglass sessions (absent without the breakglass agent).
    pub breakglass: Option<Arc<breakglass::Breakglass>>,
    /// The VM power verbs.
    pub pve: Arc<pve::PowerVerbs>,
    /// Cached webhook secrets and seen delivery ids (with a cluster only).
    pub webhook: Option<Arc<webhook::WebhookSecrets>>,
    /// Cancelled when the server shuts down; open streams end on it.
    pub shutdown: CancellationToken,
    /// The routes served: all of them, or (`run --routes controller`) none that spawn the CLI.
    pub routes: Routes,
}

impl SidecarState {
    /// State from the sidecar's flags, running the CLI agents from `agents`.
    pub fn new(
        args: &SidecarArgs,
        agents: &Agents,
        ready: Arc<AtomicBool>,
        metrics: Metrics,
        cluster: Option<Cluster>,
    ) -> Self {
        let cli: Arc<dyn AgentCli> = Arc::new(ClaudeCli::new(
            args.voice.claude_bin.clone(),
            args.voice.state_dir.join("home"),
            args.voice
                .claude_api_key_file
                .clone()
                .map(|path| Box::new(FileSecret::new(path)) as Box<dyn SecretSource>),
        ));
        Self::with_cli(args, agents, cli, ready, metrics, cluster)
    }

    /// State with a given CLI (tests point it at a fake or a loopback model API).
    pub fn with_cli(
        args: &SidecarArgs,
        agents: &Agents,
        cli: Arc<dyn AgentCli>,
        ready: Arc<AtomicBool>,
        metrics: Metrics,
        cluster: Option<Cluster>,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let voice = agents.get("conversational").map(|agent| {
            Arc::new(voice::Gateway::new(
                &args.voice,
                AgentSpec::from_agent(agent),
                cli.clone(),
                metrics.clone(),
                shutdown.clone(),
                Duration::from_secs(args.sse_keepalive_secs),
            ))
        });
        let breakglass = agents.get("breakglass").map(|agent| {
            breakglass::Breakglass::new(
                &args.breakglass,
                &args.voice.models,
                &args.voice.state_dir,
                AgentSpec::from_agent(agent),
                cli.clone(),
                metrics.clone(),
                shutdown.clone(),
                Duration::from_secs(args.sse_keepalive_secs),
            )
        });
        let webhook = cluster.as_ref().map(|cluster| {
            let cache = Arc::new(webhook::WebhookSecrets::new());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(webhook::keep_fresh(
                    cache.clone(),
                    cluster.client.clone(),
                    cluster.namespace.clone(),
                    Duration::from_secs(args.webhook_secret_refresh_secs),
                    shutdown.clone(),
                ));
            }
            cache
        });
        Self {
            ready,
            metrics,
            auth: Arc::new(auth::ApiAuth::new(
                args.api_token_file.clone(),
                args.trust_proxy_header,
            )),
            cluster,
            voice,
            breakglass,
            pve: Arc::new(pve::PowerVerbs::new(&args.breakglass)),
            webhook,
            shutdown,
            routes: Routes::All,
        }
    }

    /// Serve only `routes`. Without the CLI routes the voice gateway and breakglass are dropped
    /// too: nothing in this process can start a `claude` turn.
    #[must_use]
    pub fn with_routes(mut self, routes: Routes) -> Self {
        if routes == Routes::Controller {
            self.voice = None;
            self.breakglass = None;
        }
        self.routes = routes;
        self
    }

    /// State for a sidecar without controllers: ready at once.
    pub fn standalone(args: &SidecarArgs, agents: &Agents) -> Self {
        Self::new(
            args,
            agents,
            Arc::new(AtomicBool::new(true)),
            Metrics::new(),
            None,
        )
    }
}

/// An error response in the one shape every sidecar route uses. Handlers return
/// [`error::ApiError`] instead; this stays for code that builds a `Response` by hand.
pub fn error(status: StatusCode, message: &str, code: &'static str) -> Response {
    error::ApiError::new(status, message, code).into_response()
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
pub const MAX_API_BODY: usize = 64 * 1024;
/// Chat requests carry a dialogue; a spoken one stays far below this.
pub const MAX_V1_BODY: usize = 256 * 1024;

/// The router with the routes `state.routes` selects: health, readiness, metrics, the AFK
/// operations API and the GitHub webhook always; the voice gateway, breakglass sessions, power
/// verbs and the console (everything that spawns a process) unless `Routes::Controller`.
pub fn router(state: SidecarState) -> Router {
    let afk = Router::new()
        .route("/api/afk/runs", get(afk_ops::runs))
        .route("/api/afk/runs/{namespace}/{name}", get(afk_ops::run))
        .route("/api/afk/runs/{namespace}/{name}/answer", post(afk_ops::answer))
        .route(
            "/api/afk/emergency-stop",
            get(afk_ops::status).post(afk_ops::stop).delete(afk_ops::release),
        )
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    let webhooks = Router::new()
        .route("/webhooks/github", post(webhook::github))
        .layer(DefaultBodyLimit::max(webhook::MAX_BODY));
    let mut app = Router::new().merge(afk).merge(webhooks);
    if state.routes == Routes::All {
        app = app.merge(cli_routes(&state));
    }
    // A span per request (method, URI, version: no headers, so no bearer token) and one event
    // when the response starts, at debug level: silent at the default filter, one flag away when
    // a request needs explaining. 5xx answers are already logged where they are made. Probes and
    // scrapes are added after this layer, so they are not traced.
    let trace = TraceLayer::new_for_http()
        .make_span_with(DefaultMakeSpan::new().level(Level::DEBUG))
        .on_response(
            DefaultOnResponse::new()
                .level(Level::DEBUG)
                .latency_unit(LatencyUnit::Micros),
        )
        .on_failure(DefaultOnFailure::new().level(Level::DEBUG));
    app.layer(trace)
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { error::ApiError::no_route() })
        .method_not_allowed_fallback(|| async { error::ApiError::method_not_allowed() })
        .layer(middleware::from_fn(error::uniform_errors))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// The routes that run the `claude` CLI or ssh, and the console that drives them.
fn cli_routes(state: &SidecarState) -> Router<SidecarState> {
    let v1 = Router::new()
        .route("/v1/models", get(voice::models))
        .route("/v1/chat/completions", post(voice::chat_completions))
        .route("/v1/conversational", post(conversational::conversational))
        .layer(DefaultBodyLimit::max(MAX_V1_BODY))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    let breakglass = Router::new()
        .route(
            "/api/breakglass/sessions",
            get(breakglass::list).post(breakglass::create),
        )
        .route(
            "/api/breakglass/sessions/{id}",
            axum::routing::delete(breakglass::delete),
        )
        .route("/api/breakglass/sessions/{id}/stream", get(breakglass::stream))
        .route("/api/breakglass/sessions/{id}/prompt", post(breakglass::prompt))
        .route("/api/breakglass/sessions/{id}/cancel", post(breakglass::cancel))
        .route("/api/breakglass/pve/verbs", get(pve::verbs))
        .route("/api/breakglass/pve/{verb}", post(pve::run_verb))
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .route(
            "/",
            get(|| async { axum::response::Redirect::temporary("/console/") }),
        )
        .route(
            "/console",
            get(|| async { axum::response::Redirect::permanent("/console/") }),
        )
        .route("/console/", get(console::index))
        .route("/console/app.js", get(console::script))
        .route("/console/app.css", get(console::style))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .merge(v1)
        .merge(breakglass)
}

/// Count every request by route template and status (bounded labels: unmatched routes are `other`).
async fn count_requests(
    State(state): State<SidecarState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .get_or_create(&RouteStatus {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Bind and serve until `shutdown` resolves. Open streams are told to end (the state's
/// cancellation token) and the server waits up to `DRAIN` for connections to finish.
pub async fn serve(
    args: SidecarArgs,
    state: SidecarState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "sidecar listening");
    serve_on(
        listener,
        state,
        Duration::from_secs(args.header_read_timeout_secs),
        shutdown,
    )
    .await
}

/// How long shutdown waits for open connections after telling streams to end.
const DRAIN: Duration = Duration::from_secs(5);

/// Serve on a bound listener: HTTP/1.1 only (no voice client needs cleartext HTTP/2, and one
/// protocol means one set of limits), graceful shutdown. `header_timeout` bounds every wait for
/// a request head: from accept to the first request (a connection that sends nothing, or an
/// HTTP/2 preface, is closed) and between keep-alive requests (slowloris, idle sockets).
pub async fn serve_on(
    listener: TcpListener,
    state: SidecarState,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::{
        rt::{TokioIo, TokioTimer},
        server::graceful::GracefulShutdown,
        service::TowerToHyperService,
    };
    let cancel = state.shutdown.clone();
    if let Some(voice) = &state.voice {
        // Warm processes only where the voice routes are served.
        voice.start_background();
    }
    let app = router(state);
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper arms this timer whenever it waits for a request head, including the first one.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    cancel.cancel();
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the drain period; closing them");
    }
    Ok(())
}
