//! `afk-playground`: the real afk-operator (`afk-operator run`'s code path: controllers,
//! sidecar, console) against the project's fake Kubernetes API server and contract fakes of
//! GitHub, T3 Code, Woodpecker, Slack and ntfy, seeded with a demo story. This process plays
//! everyone but the operator: the agent (commits with the `AFK-Run:` trailer, finished turns,
//! a question), CI (check runs, a Woodpecker deploy) and the Deployment controller (rollout).
//!
//! `cargo run --release -p afk-playground`, then follow what it prints. Dev-only: it lives in
//! its own crate so the fakes are never linked into the `afk-operator` binary.

mod story;

use std::{path::PathBuf, time::Duration};

use clap::Parser;

/// Watch afk-operator take a demo repo's issues through the whole loop, on your machine, with
/// nothing installed: a fake API server (kubectl works against it), a simulated GitHub, T3 Code
/// agent, CI and rollout, and the real operator.
#[derive(Parser, Debug)]
#[command(name = "afk-playground", version)]
struct Args {
    /// Where to write the kubeconfig, the console token and the CRDs (default: a temporary
    /// directory removed at exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Port of the fake API server on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    api_port: u16,
    /// Port of the operator's sidecar (console, /metrics) on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 8080)]
    console_port: u16,
    /// Arm the AfkConfig at start instead of waiting for you to `kubectl patch` it.
    #[arg(long)]
    arm: bool,
    /// Play the story ten times faster (for tests; too fast to follow by eye).
    #[arg(long)]
    fast: bool,
    /// The operator's log filter (its logs go to stderr).
    #[arg(long, default_value = "warn")]
    operator_log: String,
    /// Exit once the story has reached its end (default: keep serving until Ctrl-C).
    #[arg(long)]
    exit_when_done: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let pace = if args.fast {
        story::Pace::fast()
    } else {
        story::Pace::normal()
    };
    let options = story::Options {
        dir: args.dir,
        api_port: args.api_port,
        console_port: args.console_port,
        arm: args.arm,
        pace,
        operator_log: args.operator_log,
        exit_when_done: args.exit_when_done,
        tick: Duration::from_millis(if args.fast { 50 } else { 250 }),
    };
    match runtime.block_on(story::play(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("afk-playground: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
