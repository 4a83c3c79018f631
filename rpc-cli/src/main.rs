//! The `rpc` binary; see the library docs.

use clap::error::ErrorKind;
use clap::Parser;
use rpc_cli::call::EXIT_USAGE;
use rpc_cli::cli::Cli;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are not errors; every real usage error exits
            // 64 so that 2 keeps meaning "the call got no result".
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => EXIT_USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // Quiet by default: stdout is the result and stderr the error. lapin
    // logs a normal close of the proxy at ERROR, and its connect failures
    // are in our own message already. RUST_LOG shows everything (rpc-core
    // never logs the password).
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,lapin=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    ExitCode::from(rpc_cli::run(cli).await)
}
