//! The command line: one clap tree, every option a `--long` flag with an `AFK_*` environment
//! fallback, values parsed at the edge so the rest of the program never sees a malformed one.
//! Secrets are never flags: only paths of files that hold them.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// afk-operator: lets coding agents implement triaged issues while you are away from the keyboard.
#[derive(Debug, Parser)]
#[command(name = "afk-operator", version, about, long_about = None)]
pub struct Cli {
    /// Logging options.
    #[command(flatten)]
    pub log: LogArgs,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers and the sidecar (needs a cluster).
    Run(RunArgs),
    /// Run only the sidecar HTTP server (no cluster needed).
    Sidecar(SidecarArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

/// Log output.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log filter in `tracing` EnvFilter syntax, e.g. `info,afk_operator=debug`.
    #[arg(long, env = "AFK_LOG", default_value = "info", global = true)]
    pub log_filter: String,
    /// Log line format.
    #[arg(long, env = "AFK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain, global = true)]
    pub log_format: LogFormat,
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Options of `afk-operator run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kubeconfig file; defaults to `$KUBECONFIG`, `~/.kube/config`, then the in-cluster config.
    #[arg(long, env = "AFK_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace to watch; all namespaces when unset.
    #[arg(long, env = "AFK_NAMESPACE")]
    pub namespace: Option<String>,
    /// Seconds to wait for the API server before giving up on start-up.
    #[arg(long, env = "AFK_CONNECT_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub connect_timeout_secs: u64,
    /// Seconds between looks at a non-terminal run while it waits on something external.
    #[arg(long, env = "AFK_RUN_REQUEUE_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub run_requeue_secs: u64,
    /// Minimum milliseconds between two GitHub mutations (GitHub asks integrations for ≥ 1 s).
    #[arg(long, env = "AFK_GITHUB_MUTATION_INTERVAL_MS", default_value_t = 1000)]
    pub github_mutation_interval_ms: u64,
    /// Elect a leader on a Lease so only one replica reconciles (needed for `replicas > 1`).
    #[arg(long, env = "AFK_LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, env = "AFK_LEASE_NAME", default_value = "afk-operator")]
    pub lease_name: String,
    /// Namespace of the Lease; defaults to `--namespace`, then `default`.
    #[arg(long, env = "AFK_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the election (the pod name); defaults to the host name.
    #[arg(long, env = "AFK_IDENTITY")]
    pub identity: Option<String>,
    /// The sidecar served beside the controllers.
    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

/// Options of the sidecar HTTP server.
#[derive(Debug, Args, Clone)]
pub struct SidecarArgs {
    /// Address the sidecar listens on.
    #[arg(long, env = "AFK_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// File holding the bearer token for `/v1/*` and `/api/*` (re-read when it changes). Without
    /// it every authenticated route answers 401.
    #[arg(long, env = "AFK_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Honour the SSO username header set by a trusted reverse proxy.
    #[arg(long, env = "AFK_TRUST_PROXY_HEADER", default_value_t = false)]
    pub trust_proxy_header: bool,
    /// Directory holding the agent definitions (`*.md`).
    #[arg(long, env = "AFK_AGENTS_DIR", default_value = "agents")]
    pub agents_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_listen_address_is_a_usage_error() {
        let err = Cli::try_parse_from(["afk-operator", "sidecar", "--listen", "nope"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn run_parses_with_defaults() {
        let cli = Cli::try_parse_from(["afk-operator", "run"]).unwrap();
        match cli.command {
            Command::Run(args) => {
                assert_eq!(args.connect_timeout_secs, 10);
                assert_eq!(args.sidecar.listen.port(), 8080);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
