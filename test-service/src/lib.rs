//! test-service: keeps checking that a person service works, end to end,
//! through the broker, the way a client would see it.
//!
//! One *round* creates a uniquely named person, finds it again with a paged
//! `list`, updates it, reads it back, deletes it, checks that it is gone,
//! and checks that an invalid create is refused. Then it checks that each
//! of its changes produced its event (`person_created`, `person_updated`,
//! `person_deleted`, with the record or id as data) carrying the round's
//! call id. Every call is timed, as is each event's arrival, and every
//! check that fails says why, so a round's report tells an operator both
//! *whether* the person service works and *how fast*.
//!
//! Two ways to run it:
//! * **service mode** (default): an rpc-core service whose timer runs a
//!   round every `--interval` seconds through its context's proxy, so the
//!   person service sees this service's call-id stack as nameko would, and
//!   logs one line per round. It also answers `stats()` over RPC with the
//!   running totals and the last round's report.
//! * **`--once`**: a single round through a standalone proxy, a summary on
//!   stdout and an exit status a script or a compose health check can act
//!   on (see [`once`]), with a temporary event subscriber.
//!
//! # Modules
//! * [`cli`]: command line and environment.
//! * [`scenario`]: one round of checks and its [`Report`](scenario::Report).
//! * [`events`]: receiving the target's events and matching them to rounds.
//! * [`service`]: the timer service and its counters.
//! * [`once`]: the one-shot smoke test, with waiting for a service that is
//!   still starting.

pub mod cli;
pub mod events;
pub mod once;
pub mod scenario;
pub mod service;

use cli::{Cli, Mode};
use std::process::ExitCode;

/// Runs what the command line asks for and returns the process's exit
/// status (see [`once::exit_code`] for `--once`).
pub async fn run(cli: Cli) -> ExitCode {
    let config = match cli.config() {
        Ok(config) => config,
        Err(e) => {
            // The URI's own error text never contains the password.
            tracing::error!(error = %e, "cannot use the broker URI");
            eprintln!("test-service: {e}");
            return ExitCode::from(once::EXIT_BROKER);
        }
    };
    match cli.mode() {
        Mode::Once { wait } => {
            let options = once::OnceOptions {
                subscriber_prefix: cli.service_name.clone(),
                event_timeout: cli.event_checks(),
            };
            let outcome = once::run_once_with(config, &cli.target, wait, &options).await;
            once::print_outcome(&cli.target, &outcome);
            ExitCode::from(once::exit_code(&outcome))
        }
        Mode::Service => {
            let settings = service::Settings {
                name: cli.service_name.clone(),
                target: cli.target.clone(),
                interval: cli.interval,
                timeout: cli.timeout,
                event_timeout: cli.event_checks(),
            };
            service::run(settings, config).await
        }
    }
}
