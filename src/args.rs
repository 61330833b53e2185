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
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Run only the sidecar HTTP server (no cluster needed).
    #[command(after_help = SIDECAR_EXAMPLES)]
    Sidecar(SidecarArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

const RUN_EXAMPLES: &str = "\
Examples:
  afk-operator run                                  # current kubeconfig, every namespace
  afk-operator run --namespace afk-system --leader-election
  afk-operator run --kubeconfig /tmp/fake.kubeconfig --run-requeue-secs 1

Every flag also reads the AFK_* environment variable shown; secrets are only ever file paths.
Full reference: docs/configuration.md. Try it with nothing installed: cargo run -p afk-playground";

const SIDECAR_EXAMPLES: &str = "\
Examples:
  afk-operator sidecar --api-token-file token --claude-bin tests/fixtures/fake-claude
  afk-operator sidecar --listen 127.0.0.1:8080 --api-token-file /run/secrets/afk/token

Full reference: docs/configuration.md.";

/// Log output.
#[derive(Debug, Args)]
#[command(next_help_heading = "Logging")]
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

/// Which routes the HTTP server of `afk-operator run` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Routes {
    /// Every route, the CLI-spawning ones (voice gateway, breakglass, power verbs, console) included.
    #[default]
    All,
    /// Health, readiness, metrics, the GitHub webhook and the AFK operations API only.
    Controller,
}

/// Options of `afk-operator run`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Cluster and controllers")]
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
    /// At most one poll of an AfkConfig per this many milliseconds when its runs end or are
    /// deleted (the periodic poll and webhooks are not affected).
    #[arg(long, env = "AFK_CONFIG_TRIGGER_WINDOW_MS", default_value_t = 5000)]
    pub config_trigger_window_ms: u64,
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
    /// HTTP routes served beside the controllers: `all`, or `controller` (only `/healthz`,
    /// `/readyz`, `/metrics`, `/webhooks/github`, `/api/afk/*`) when the routes that spawn the
    /// `claude` CLI run in their own container (`afk-operator sidecar`), where an out-of-memory
    /// turn cannot kill the controllers.
    #[arg(long, env = "AFK_ROUTES", value_enum, default_value_t = Routes::All)]
    pub routes: Routes,
    /// The sidecar served beside the controllers.
    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

/// Options of the sidecar HTTP server.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Sidecar (HTTP server, console)")]
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
    /// Directory holding the agent definitions (`*.md`); unset: the definitions built into the
    /// binary (the repo's `agents/`), so it runs from any directory.
    #[arg(long, env = "AFK_AGENTS_DIR")]
    pub agents_dir: Option<PathBuf>,
    /// Seconds a client has to send its request headers before the connection is closed.
    #[arg(long, env = "AFK_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub header_read_timeout_secs: u64,
    /// Seconds between keepalive comments on quiet SSE streams (shorter than any proxy idle timeout).
    #[arg(long, env = "AFK_SSE_KEEPALIVE_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub sse_keepalive_secs: u64,
    /// Seconds between re-reads of the webhook secrets (a rotated secret takes effect within it;
    /// a change to an AfkConfig's `webhookSecretRef` or allowlist takes effect at once).
    #[arg(long, env = "AFK_WEBHOOK_SECRET_REFRESH_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub webhook_secret_refresh_secs: u64,
    /// The `claude` CLI and the voice gateway.
    #[command(flatten)]
    pub voice: VoiceArgs,
    /// Breakglass sessions and VM power verbs.
    #[command(flatten)]
    pub breakglass: BreakglassArgs,
}

/// The `claude` CLI and the voice gateway (`/v1/*`).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Voice gateway (claude CLI)")]
pub struct VoiceArgs {
    /// The `claude` program (a path, or a name looked up on PATH).
    #[arg(long, env = "AFK_CLAUDE_BIN", default_value = "claude")]
    pub claude_bin: PathBuf,
    /// Writable directory for the CLI's HOME, its sessions and per-turn working directories.
    #[arg(long, env = "AFK_STATE_DIR", default_value = "/tmp/afk-operator")]
    pub state_dir: PathBuf,
    /// File holding the model API key given to the CLI as `ANTHROPIC_API_KEY` (re-read per turn).
    #[arg(long, env = "AFK_CLAUDE_API_KEY_FILE")]
    pub claude_api_key_file: Option<PathBuf>,
    /// Full model ids served besides the aliases `sonnet`, `opus`, `haiku` (comma-separated).
    #[arg(long, env = "AFK_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Model used when a conversational request names none.
    #[arg(long, env = "AFK_DEFAULT_MODEL", default_value = "sonnet")]
    pub default_model: String,
    /// CLI turns that may run at once (chat and conversational together).
    #[arg(long, env = "AFK_MAX_CONCURRENT_TURNS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_concurrent_turns: u64,
    /// Requests that may wait for a turn slot; beyond it the answer is 429 with `Retry-After`.
    #[arg(long, env = "AFK_MAX_QUEUED_TURNS", default_value_t = 16)]
    pub max_queued_turns: u64,
    /// Seconds a queued request waits for a slot before a 503.
    #[arg(long, env = "AFK_QUEUE_WAIT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub queue_wait_secs: u64,
    /// Seconds one chat or conversational turn may take before its process group is killed.
    #[arg(long, env = "AFK_TURN_TIMEOUT_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub turn_timeout_secs: u64,
    /// Cost cap per chat/conversational turn in USD (`--max-budget-usd`), when set.
    #[arg(long, env = "AFK_CHAT_MAX_BUDGET_USD")]
    pub chat_max_budget_usd: Option<f64>,
    /// Warm `claude` processes kept per model used in the last `--chat-pool-window-secs`, each
    /// ready for one `/v1/chat/completions` request (0 disables). They use free turn slots only
    /// and count against `--max-concurrent-turns`.
    #[arg(long, env = "AFK_CHAT_POOL_SIZE", default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=16))]
    pub chat_pool_size: u64,
    /// How long a model counts as used for the warm pool after a request named it.
    #[arg(long, env = "AFK_CHAT_POOL_WINDOW_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub chat_pool_window_secs: u64,
    /// `/v1/conversational` sessions whose process is kept alive between turns (LRU; 0: every
    /// turn starts a process with `--resume`). Kept processes count against
    /// `--max-concurrent-turns` and give their slot up first when a request needs one.
    #[arg(long, env = "AFK_LIVE_SESSIONS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=256))]
    pub live_sessions: u64,
    /// A kept conversation process is let go after this long without a turn (the session then
    /// continues by `--resume`).
    #[arg(long, env = "AFK_LIVE_SESSION_IDLE_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub live_session_idle_secs: u64,
}

/// Breakglass sessions and the VM power verbs (`/api/breakglass/*`).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Breakglass and VM power verbs")]
pub struct BreakglassArgs {
    /// Sessions held at once; creating one more evicts the longest-idle session without a turn.
    #[arg(long, env = "AFK_BREAKGLASS_MAX_SESSIONS", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub breakglass_max_sessions: u64,
    /// Seconds after which a session without a running turn or subscriber is dropped.
    #[arg(long, env = "AFK_BREAKGLASS_IDLE_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(10..=604800))]
    pub breakglass_idle_secs: u64,
    /// Events kept per session for replay; an older cursor gets `event: resync`.
    #[arg(long, env = "AFK_BREAKGLASS_LOG_EVENTS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(16..=1000000))]
    pub breakglass_log_events: u64,
    /// Seconds one breakglass turn may run before its process group is killed.
    #[arg(long, env = "AFK_BREAKGLASS_TURN_TIMEOUT_SECS", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub breakglass_turn_timeout_secs: u64,
    /// Model for breakglass turns that name none.
    #[arg(long, env = "AFK_BREAKGLASS_MODEL", default_value = "opus")]
    pub breakglass_model: String,
    /// Tools the breakglass agent may use without asking (`--allowedTools`, comma-separated).
    #[arg(long, env = "AFK_BREAKGLASS_ALLOWED_TOOLS", value_delimiter = ',')]
    pub breakglass_allowed_tools: Vec<String>,
    /// ssh destination for the VM power verbs (e.g. `power@pve.example`); unset = verbs answer 503.
    #[arg(long, env = "AFK_PVE_SSH_TARGET")]
    pub pve_ssh_target: Option<String>,
    /// Private key for the power-verb ssh (a mounted Secret file).
    #[arg(long, env = "AFK_PVE_SSH_KEY_FILE")]
    pub pve_ssh_key_file: Option<PathBuf>,
    /// known_hosts file pinning the power-verb host key (strict checking when set).
    #[arg(long, env = "AFK_PVE_KNOWN_HOSTS_FILE")]
    pub pve_known_hosts_file: Option<PathBuf>,
    /// The ssh program.
    #[arg(long, env = "AFK_PVE_SSH_PROGRAM", default_value = "ssh")]
    pub pve_ssh_program: PathBuf,
    /// Power verbs that may run at once; more answer 429 (a burst of resets is refused, not queued).
    #[arg(long, env = "AFK_PVE_MAX_CONCURRENT", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub pve_max_concurrent: u64,
    /// Seconds a power verb may run before it is killed.
    #[arg(long, env = "AFK_PVE_TIMEOUT_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub pve_timeout_secs: u64,
}

impl SidecarArgs {
    /// The sidecar's options from an argv (tests and embedding); defaults for everything not given.
    pub fn from_argv<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: SidecarArgs,
        }
        Only::try_parse_from(std::iter::once("sidecar".into()).chain(argv.into_iter().map(Into::into)))
            .map(|o| o.args)
    }
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
                assert_eq!(args.routes, Routes::All);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A program given as a relative path with a directory part (`tests/fixtures/fake-claude`,
/// `./bin/claude`) resolved against `cwd`, the working directory at start-up: the CLI is later
/// spawned in its own empty working directory, where the relative path would name nothing. A
/// bare name (`claude`) is left alone for the PATH lookup, and so is an absolute path.
pub fn resolve_program(program: &std::path::Path, cwd: &std::path::Path) -> PathBuf {
    if program.is_absolute() || program.components().count() < 2 {
        program.to_path_buf()
    } else {
        cwd.join(program)
    }
}

impl Cli {
    /// Resolve relative program paths against the working directory at start-up.
    pub fn resolve_relative_paths(&mut self) {
        let Ok(cwd) = std::env::current_dir() else {
            return;
        };
        let sidecar = match &mut self.command {
            Command::Run(args) => &mut args.sidecar,
            Command::Sidecar(args) => args,
            Command::Crd => return,
        };
        sidecar.voice.claude_bin = resolve_program(&sidecar.voice.claude_bin, &cwd);
        sidecar.breakglass.pve_ssh_program = resolve_program(&sidecar.breakglass.pve_ssh_program, &cwd);
    }
}

#[cfg(test)]
mod program_paths {
    use std::path::Path;

    use super::resolve_program;

    #[test]
    fn relative_programs_resolve_against_the_start_up_directory() {
        let cwd = Path::new("/work/repo");
        assert_eq!(
            resolve_program(Path::new("tests/fixtures/fake-claude"), cwd),
            Path::new("/work/repo/tests/fixtures/fake-claude")
        );
        assert_eq!(
            resolve_program(Path::new("./claude"), cwd),
            Path::new("/work/repo/./claude")
        );
        assert_eq!(resolve_program(Path::new("claude"), cwd), Path::new("claude"));
        assert_eq!(
            resolve_program(Path::new("/usr/bin/claude"), cwd),
            Path::new("/usr/bin/claude")
        );
    }
}
