//! What each subcommand does, and how failures become exit codes: 2 for bad configuration or
//! usage (as clap does), 1 for a failure at run time. Every failure is one clear line on stderr.

use std::{process::ExitCode, sync::Arc, time::Duration};

use kube::{Api, Client, api::ListParams, config::KubeConfigOptions};
use tokio_util::sync::CancellationToken;

use crate::{
    args::{Cli, Command, RunArgs},
    controller,
    crd::{self, AfkConfig},
    sidecar, telemetry,
};

/// Why the program stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Configuration is missing or invalid (exit code 2).
    #[error("configuration error: {0}")]
    Config(String),
    /// The API server could not be reached or refused us.
    #[error("cannot reach the Kubernetes API server at {url}: {reason}")]
    Unreachable {
        /// Where we tried.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The CRDs are not installed in the cluster.
    #[error(
        "the afk.dev CRDs are not installed in this cluster; install them with \
         `kubectl apply -f crds/` or `helm install afk-operator charts/afk-operator`"
    )]
    CrdsMissing,
    /// Anything else at run time.
    #[error("{0}")]
    Runtime(String),
}

impl StartupError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// Run the parsed command line to completion.
pub fn run(mut cli: Cli) -> ExitCode {
    cli.resolve_relative_paths();
    if let Command::Crd = cli.command {
        return match crd::all_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("afk-operator: cannot render CRDs: {err}");
                ExitCode::from(1)
            }
        };
    }
    telemetry::init(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("afk-operator: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run_operator(args).await,
            Command::Sidecar(args) => match load_agents(&args) {
                Err(err) => Err(err),
                Ok(agents) => sidecar::serve(
                    args.clone(),
                    sidecar::SidecarState::standalone(&args, &agents),
                    shutdown_signal(),
                )
                .await
                .map_err(|err| StartupError::Runtime(format!("sidecar: {err}"))),
            },
            Command::Crd => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("afk-operator: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// Connect to the cluster, make sure our CRDs are there, then run the controllers (while
/// leading, when leader election is on) and the sidecar until told to stop.
async fn run_operator(args: RunArgs) -> Result<(), StartupError> {
    let agents = load_agents(&args.sidecar)?;
    // A busy sidecar port is a configuration problem: say so before touching the cluster,
    // rather than reconciling without /healthz, /metrics and the console.
    check_port_free(args.sidecar.listen)?;
    let client = connect(&args).await?;
    check_crds_installed(&client, args.namespace.as_deref()).await?;
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("*"),
        "connected; CRDs installed"
    );

    // One shutdown token: SIGINT/SIGTERM cancels it; the sidecar and the controllers stop on it.
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.cancel();
        }
    });

    let metrics = crate::metrics::Metrics::new();
    let readiness = controller::Readiness::new();
    let (trigger, _) = tokio::sync::broadcast::channel(64);
    let cluster = sidecar::Cluster {
        client: client.clone(),
        namespace: args.namespace.clone(),
        trigger: trigger.clone(),
    };
    let state = sidecar::SidecarState::new(
        &args.sidecar,
        &agents,
        readiness.shared(),
        metrics.clone(),
        Some(cluster),
    )
    .with_routes(args.routes);
    let sidecar_task = tokio::spawn(sidecar::serve(
        args.sidecar.clone(),
        state,
        shutdown.clone().cancelled_owned(),
    ));

    let settings = controller::Settings {
        run_requeue: Duration::from_secs(args.run_requeue_secs),
        github_min_mutation_interval: Duration::from_millis(args.github_mutation_interval_ms),
        config_trigger_window: Duration::from_millis(args.config_trigger_window_ms),
        ..controller::Settings::default()
    };
    let ctx = Arc::new(controller::Context::new(
        client,
        Arc::new(agents),
        metrics,
        settings,
    ));
    let leadership = if args.leader_election {
        controller::Leadership::Elected(controller::LeaseSettings {
            name: args.lease_name.clone(),
            namespace: args
                .lease_namespace
                .clone()
                .or_else(|| args.namespace.clone())
                .unwrap_or_else(|| "default".into()),
            identity: args.identity.clone().unwrap_or_else(hostname),
            lease_duration: controller::LEASE_DURATION,
            renew_every: controller::LEASE_RENEW_EVERY,
        })
    } else {
        controller::Leadership::Always
    };
    controller::run_until_shutdown(
        ctx,
        args.namespace.clone(),
        readiness,
        trigger,
        leadership,
        shutdown,
    )
    .await;
    sidecar_task
        .await
        .map_err(|e| StartupError::Runtime(format!("sidecar task: {e}")))?
        .map_err(|err| StartupError::Runtime(format!("sidecar: {err}")))
}

/// Fail fast (exit 2) when the sidecar's address cannot be bound. The sidecar binds again
/// right after; a port taken in between still fails there, loudly.
fn check_port_free(addr: std::net::SocketAddr) -> Result<(), StartupError> {
    std::net::TcpListener::bind(addr).map(drop).map_err(|err| {
        StartupError::Config(format!(
            "cannot listen on {addr} for the sidecar: {err} (another process has it; choose another with --listen)"
        ))
    })
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("afk-operator-{}", std::process::id()))
}

/// Load and validate the agent definitions; a broken one is a configuration error.
fn load_agents(args: &crate::args::SidecarArgs) -> Result<crate::agents::Agents, StartupError> {
    match &args.agents_dir {
        Some(dir) => crate::agents::Agents::load_dir(dir),
        None => crate::agents::Agents::embedded(),
    }
    .map_err(|err| StartupError::Config(err.to_string()))
}

/// Build a client from `--kubeconfig`, or kube's usual inference (KUBECONFIG, ~/.kube/config,
/// in-cluster).
pub async fn connect(args: &RunArgs) -> Result<Client, StartupError> {
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|err| {
                StartupError::Config(format!("cannot read kubeconfig {}: {err}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|err| StartupError::Config(format!("invalid kubeconfig {}: {err}", path.display())))?
        }
        None => kube::Config::infer().await.map_err(|err| {
            StartupError::Config(format!(
                "no Kubernetes configuration found (set --kubeconfig or KUBECONFIG, or run in a cluster): {err}"
            ))
        })?,
    };
    let timeout = Duration::from_secs(args.connect_timeout_secs);
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|err| StartupError::Config(format!("cannot build a Kubernetes client: {err}")))?;
    match tokio::time::timeout(timeout, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(err)) => Err(StartupError::Unreachable {
            url,
            reason: one_line(&err),
        }),
        Err(_) => Err(StartupError::Unreachable {
            url,
            reason: format!("no answer within {}s", timeout.as_secs()),
        }),
    }
}

/// Listing AfkConfigs answers 404 when the CRD is missing. Listing (not reading the CRD object)
/// keeps the operator's RBAC free of cluster-wide CRD access.
pub async fn check_crds_installed(client: &Client, namespace: Option<&str>) -> Result<(), StartupError> {
    let api: Api<AfkConfig> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(StartupError::CrdsMissing),
        Err(err) => Err(StartupError::Runtime(format!(
            "cannot list AfkConfigs: {}",
            one_line(&err)
        ))),
    }
}

fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace('\n', " ")
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
