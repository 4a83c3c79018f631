//! `--once`: a single round as a smoke test, e.g. a compose job that runs
//! after `docker compose up` and whose exit status is the verdict.
//!
//! In compose the broker and the person service start at the same time as
//! this, so before the round it waits (up to `--wait`) for the broker to
//! accept a connection and then for the target to have a queue: a call
//! answered with `UnknownService` means "not started yet", not "broken".
//! Any other answer, even a remote error, means the service is up.
//!
//! Then, unless [`OnceOptions::event_timeout`] is `None`, it starts a
//! temporary event subscriber ([`TempSubscriber`]: a service of its own
//! named `{prefix}-once-{random}`, so parallel runs never share its queues,
//! whose queues auto-delete when it stops or the process dies), waits until
//! it consumes, runs the round checking the events against the standalone
//! proxy's call id, and stops the subscriber.
//!
//! Exit statuses: [`EXIT_PASSED`], [`EXIT_FAILED`] (a check failed, or the
//! target never came up), [`EXIT_BROKER`] (the broker cannot be reached).

use crate::events::{self, TempSubscriber};
use crate::scenario::{self, EventChecks, Report};
use rpc_core::{Args, CallError, Config, ConnectError, RetryPolicy, RpcProxy};
use std::time::Duration;
use tokio::time::Instant;

/// Every check passed.
pub const EXIT_PASSED: u8 = 0;
/// A check failed, or the target did not come up in time.
pub const EXIT_FAILED: u8 = 1;
/// The broker could not be reached (or its URI is unusable).
pub const EXIT_BROKER: u8 = 2;

/// Longest pause between two attempts while waiting: short enough that a
/// compose run does not idle long after the service is up.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Why `--once` did not get to run a round.
#[derive(Debug, thiserror::Error)]
pub enum OnceError {
    /// No connection to the broker within the wait.
    #[error(transparent)]
    Broker(#[from] ConnectError),
    /// The target still had no queue when the wait ran out.
    #[error("`{target}` did not come up within {waited:?} (is the service running under that name?): {last}")]
    NotUp {
        /// The service waited for.
        target: String,
        /// How long we waited.
        waited: Duration,
        /// The last call's error.
        last: CallError,
    },
    /// The target has a queue but the first call failed in another way
    /// (no reply within the timeout, connection lost).
    #[error("`{target}` did not answer: {source}")]
    NoAnswer {
        /// The service called.
        target: String,
        /// What went wrong.
        source: CallError,
    },
}

/// The exit status for a `--once` outcome.
pub fn exit_code(outcome: &Result<Report, OnceError>) -> u8 {
    match outcome {
        Ok(report) if report.passed() => EXIT_PASSED,
        Ok(_) => EXIT_FAILED,
        Err(OnceError::Broker(_)) => EXIT_BROKER,
        Err(_) => EXIT_FAILED,
    }
}

/// What `--once` does besides the calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnceOptions {
    /// The temporary event subscriber's name starts with this (the
    /// service mode's `--service-name`).
    pub subscriber_prefix: String,
    /// How long after a change's reply its event may take; `None` checks
    /// no events (for a target that does not dispatch them).
    pub event_timeout: Option<Duration>,
}

impl Default for OnceOptions {
    fn default() -> Self {
        OnceOptions {
            subscriber_prefix: "test_service".to_owned(),
            event_timeout: Some(events::DEFAULT_TIMEOUT),
        }
    }
}

/// [`run_once_with`] with the default options: events checked within
/// [`events::DEFAULT_TIMEOUT`].
pub async fn run_once(config: Config, target: &str, wait: Duration) -> Result<Report, OnceError> {
    run_once_with(config, target, wait, &OnceOptions::default()).await
}

/// Connects, waits for `target`, and runs one round through a standalone
/// proxy, checking the events through a temporary subscriber. The proxy
/// (and its reply queue) and the subscriber (and its queues) are gone
/// before this returns.
pub async fn run_once_with(
    mut config: Config,
    target: &str,
    wait: Duration,
    options: &OnceOptions,
) -> Result<Report, OnceError> {
    let started = Instant::now();
    let deadline = started + wait.min(crate::cli::MAX_DURATION);
    // Retries are ours, bounded by the deadline rather than by a count.
    config.connect_retry = RetryPolicy::once();
    let proxy = connect(config.clone(), deadline).await?;
    let outcome = match wait_for_target(&proxy, target, started, deadline).await {
        Ok(()) => Ok(round(&proxy, config, target, options).await),
        Err(e) => Err(e),
    };
    proxy.close().await;
    outcome
}

/// One round, with a subscriber for its events when asked to check them.
async fn round(proxy: &RpcProxy, config: Config, target: &str, options: &OnceOptions) -> Report {
    let Some(event_timeout) = options.event_timeout else {
        return scenario::run_round(proxy, target).await;
    };
    // The broker answered just now, so this is quick unless it is unwell.
    let within = config.rpc_timeout;
    let subscriber = match TempSubscriber::start(config, target, &options.subscriber_prefix, within)
        .await
    {
        Ok(subscriber) => subscriber,
        Err(why) => {
            tracing::warn!(target, error = %why, "cannot check events");
            return scenario::run_round_with(proxy, target, EventChecks::Unavailable(why)).await;
        }
    };
    tracing::debug!(
        subscriber = subscriber.name(),
        "subscribed to the target's events"
    );
    // A standalone proxy's calls carry its own call id as their caller's.
    let round_call_id = proxy.call_id_stack().last().cloned().unwrap_or_default();
    let report = scenario::run_round_with(
        proxy,
        target,
        EventChecks::On {
            board: subscriber.board(),
            round_call_id: &round_call_id,
            timeout: event_timeout,
        },
    )
    .await;
    subscriber.stop().await;
    report
}

async fn connect(config: Config, deadline: Instant) -> Result<RpcProxy, ConnectError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match RpcProxy::connect(config.clone()).await {
            Ok(proxy) => return Ok(proxy),
            Err(e) => {
                let now = Instant::now();
                if now >= deadline || matches!(e, ConnectError::InvalidUri(_)) {
                    return Err(e);
                }
                tracing::info!(broker = %config.amqp_uri.endpoint(), error = %e, "waiting for the broker");
                tokio::time::sleep(delay.min(deadline - now)).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}

/// Calls `list(limit=1)` (cheap however large the table) until the target
/// answers at all.
async fn wait_for_target(
    proxy: &RpcProxy,
    target: &str,
    started: Instant,
    deadline: Instant,
) -> Result<(), OnceError> {
    let mut delay = Duration::from_millis(100);
    let mut logged = false;
    loop {
        match proxy
            .call(target, "list", Args::new().kwarg("limit", 1))
            .await
        {
            Ok(_) | Err(CallError::Remote(_)) => return Ok(()),
            Err(e @ CallError::UnknownService(_)) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(OnceError::NotUp {
                        target: target.to_owned(),
                        waited: now - started,
                        last: e,
                    });
                }
                if !logged {
                    tracing::info!(target, "waiting for the service to start");
                    logged = true;
                }
                tokio::time::sleep(delay.min(deadline - now)).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
            Err(source) => {
                return Err(OnceError::NoAnswer {
                    target: target.to_owned(),
                    source,
                })
            }
        }
    }
}

/// Prints the report (one line per check and a verdict) on stdout, or why
/// there is none on stderr.
pub fn print_outcome(target: &str, outcome: &Result<Report, OnceError>) {
    match outcome {
        Ok(report) => {
            for check in &report.checks {
                println!("{check}");
            }
            let failed = report.failures().count();
            let total = report.checks.len();
            let verdict = if report.passed() {
                format!("passed: {total}/{total} checks")
            } else {
                format!("FAILED: {failed} of {total} checks did not pass")
            };
            println!(
                "round against `{target}` {verdict} ({:.1} ms in calls)",
                report.total_latency().as_secs_f64() * 1000.0
            );
            if report.checks.iter().any(|c| c.step.is_event()) {
                println!("(an event's time is from its change's request to its arrival)");
            }
        }
        Err(e) => eprintln!("test-service: {e}"),
    }
}
