//! `bench serve-person`: person-service's own library code (settings →
//! `Application::build` → `run_until_stopped`, as its `main` does) in a
//! child process of the bench, with one setting its command line lacks:
//! `--transient` sets `Config::persistent = false` (delivery mode 1 for the
//! events it dispatches; replies follow the requests' mode anyway). Used
//! when no release binary is at hand (`--person-host bench`).

use clap::Args;
use person_service::settings::LogFormat;
use person_service::{telemetry, Application, Settings};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `bench serve-person` (the same names as person-service's).
#[derive(Clone, Debug, Args)]
pub struct ServePerson {
    /// Broker URI.
    #[arg(long)]
    amqp_uri: String,
    /// SQLite database file.
    #[arg(long)]
    db: PathBuf,
    /// Service name.
    #[arg(long)]
    service_name: String,
    /// Calls served at once.
    #[arg(long, default_value_t = 10)]
    max_workers: u16,
    /// Requests held unacknowledged at once (0: max_workers).
    #[arg(long, default_value_t = 0)]
    prefetch: u16,
    /// Publish events with delivery mode 1.
    #[arg(long)]
    transient: bool,
}

/// Runs until SIGINT / SIGTERM.
pub fn serve_person(opts: ServePerson) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("serve-person: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut settings = Settings::new(&opts.amqp_uri, opts.db.clone());
        settings.service_name = opts.service_name.clone();
        settings.max_workers = opts.max_workers;
        settings.prefetch = opts.prefetch;
        telemetry::init(LogFormat::Text);
        let mut config = match settings.rpc_config() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        config.persistent = !opts.transient;
        let mut app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        *app.config_mut() = config;
        match app.run_until_stopped(rpc_core::shutdown::on_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}
