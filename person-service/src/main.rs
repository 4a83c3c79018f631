//! `person-service`: configuration, telemetry, then run until a signal.

use clap::Parser;
use person_service::{telemetry, Application, Settings};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = Settings::parse();
    telemetry::init(settings.log_format);
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(rpc_core::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopped with an error");
            ExitCode::FAILURE
        }
    }
}
