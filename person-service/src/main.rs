//! `person-service`: configuration, telemetry, then run until a signal.

use person_service::settings::SettingsError;
use person_service::{telemetry, Application, Settings};
use std::process::ExitCode;

/// Exit status when the config file cannot be used (as clap's for a bad
/// command line).
const EXIT_CONFIG: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(SettingsError::Cli(e)) => e.exit(),
        Err(e @ SettingsError::File(_)) => {
            // Logging is not set up yet: its format may come from the file.
            eprintln!("person-service: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(settings.log_format);
    if let Some(file) = &settings.file {
        tracing::info!(file = %file.path().display(), "read the config file");
        file.log_warnings();
    }
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
