//! The `afk-operator` binary: parse the command line, hand over to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = afk_operator::args::Cli::parse();
    afk_operator::cli::run(cli)
}
