//! `test-service`: see the library docs for what a round checks.

use std::io::IsTerminal;
use std::process::ExitCode;
use test_service::cli::{Cli, CliError, EXIT_CONFIG};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::load() {
        Ok(cli) => cli,
        Err(CliError::Cli(e)) => e.exit(),
        Err(e @ CliError::File(_)) => {
            // The message names the file and the key, never the password.
            eprintln!("test-service: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // lapin logs a normal close of a proxy at ERROR; rpc-core reports the
    // connection problems that matter itself. RUST_LOG=lapin=debug shows it.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some(file) = &cli.file {
        tracing::info!(file = %file.path().display(), "read the config file");
        file.log_warnings();
    }
    test_service::run(cli).await
}
