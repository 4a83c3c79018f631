//! `bench serve-person`: person-service's own library code (its `Settings`
//! parsing the same flags → `Application::build` → `run_until_stopped`, as
//! its `main` does) in a child process of the bench, with one setting its
//! command line lacks: `--transient` sets `Config::persistent = false`
//! (delivery mode 1 for the events it dispatches; replies follow the
//! requests' mode anyway). Used when no release binary is at hand
//! (`--person-host bench`).

use clap::Args;
use person_service::settings::SettingsError;
use person_service::{telemetry, Application, Settings};
use std::ffi::OsString;
use std::process::ExitCode;

/// Options of `bench serve-person`: `--transient`, then person-service's
/// own flags.
#[derive(Clone, Debug, Args)]
pub struct ServePerson {
    /// Publish events with delivery mode 1.
    #[arg(long)]
    transient: bool,
    /// person-service's flags (`--amqp-uri`, `--db`, `--service-name`, …),
    /// read by its own `Settings`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    settings: Vec<OsString>,
}

/// Runs until SIGINT / SIGTERM.
pub fn serve_person(opts: ServePerson) -> ExitCode {
    let args = std::iter::once(OsString::from("person-service")).chain(opts.settings);
    let settings = match Settings::load_from(args) {
        Ok(settings) => settings,
        Err(SettingsError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("serve-person: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("serve-person: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        telemetry::init(settings.log_format);
        // From here on as person-service's `main`, which has no way to set
        // `Config::persistent`.
        let mut app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        app.config_mut().persistent = !opts.transient;
        match app.run_until_stopped(rpc_core::shutdown::on_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}
