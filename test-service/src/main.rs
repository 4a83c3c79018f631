//! `test-service`: see the library docs for what a round checks.

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use test_service::cli::Cli;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // lapin logs a normal close of a proxy at ERROR; rpc-core reports the
    // connection problems that matter itself. RUST_LOG=lapin=debug shows it.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    test_service::run(cli).await
}
