//! Logging set-up: `tracing` with an EnvFilter, plain or JSON lines on stderr. Plain lines carry
//! ANSI colours only when stderr is a terminal, so files and log collectors get clean text.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::args::{LogArgs, LogFormat};

/// Install the global subscriber. An invalid filter is reported and replaced by `info`.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_filter).unwrap_or_else(|err| {
        eprintln!(
            "afk-operator: invalid log filter {:?} ({err}); using \"info\"",
            args.log_filter
        );
        EnvFilter::new("info")
    });
    let registry = tracing_subscriber::registry().with(filter);
    // try_init: tests may call this more than once in one process.
    let _ = match args.log_format {
        LogFormat::Plain => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
}
