//! Service mode: rounds on a timer, one log line each, running totals.
//!
//! Rounds run from a timer entrypoint and call out through the tick's
//! [`Context`], so every request the person service receives carries this
//! service's call id (`{name}.run_round.{uuid}`) as its parent, exactly as a
//! nameko worker's calls would: the person service's logs can tell checker
//! traffic from real traffic.
//!
//! The service also answers `stats()`, so `rpc call test_service.stats`
//! shows the totals and the last report without reading logs.
//!
//! # Events
//! Unless [`Settings::event_timeout`] is `None`, the service also
//! subscribes to the target's `person_created`, `person_updated` and
//! `person_deleted` events (handlers `on_person_created`, …, service-pool:
//! queues `evt-{target}-{event}--{name}.on_{event}`), and each round checks
//! that every change it made produced its event, carrying the tick's call
//! id ([`scenario::EventChecks`]). Rounds wait for the subscription to be
//! consuming before their first change, so the first round's events are not
//! lost to queues that do not exist yet.
//!
//! The queues are *reliable* (durable, kept while the service is down, as
//! nameko's default): the checker is long-running, and events published
//! while it restarts or reconnects are delivered afterwards (and ignored:
//! no round waits for them) rather than lost mid-round. The cost is that a
//! checker that is retired for good leaves three queues behind that keep
//! collecting the target's events: delete
//! `evt-{target}-person_*--{name}.on_person_*` when removing it. Because
//! service-pool queues are shared by service name, run one instance per
//! `--service-name`: a second instance under the same name would receive
//! (and ignore) half of the first one's events, failing its rounds.

use crate::events::{self, EventBoard};
use crate::scenario::{self, EventChecks, Report};
use rpc_core::{
    json, Config, Context, EventHandlerOptions, RpcError, Service, ServiceError, ServiceHandle,
    ServiceStatus, Value,
};
use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// What service mode needs besides the broker.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The service's own name (its queue is `rpc-{name}`).
    pub name: String,
    /// The person service to check.
    pub target: String,
    /// Time between the starts of two rounds.
    pub interval: Duration,
    /// Longest a single call may take.
    pub timeout: Duration,
    /// How long after a change's reply its event may take to arrive;
    /// `None` neither subscribes to events nor checks them (for a target
    /// that does not dispatch them).
    pub event_timeout: Option<Duration>,
}

/// Running totals, shared by the timer and the `stats()` method.
///
/// Counters are atomics rather than a locked struct so that `stats()` never
/// waits on a round in progress.
#[derive(Debug)]
pub struct Stats {
    rounds: AtomicU64,
    passed: AtomicU64,
    failed: AtomicU64,
    last: Mutex<Option<Report>>,
    completed: watch::Sender<u64>,
}

/// The counters after a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    /// Rounds finished so far (the last one's number).
    pub rounds: u64,
    /// Rounds in which every check passed.
    pub passed: u64,
    /// Rounds with at least one failed check.
    pub failed: u64,
}

impl Stats {
    /// No rounds yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Stats {
            rounds: AtomicU64::new(0),
            passed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last: Mutex::new(None),
            completed: watch::Sender::new(0),
        })
    }

    /// Counts a finished round and returns the totals including it.
    pub fn record(&self, report: &Report) -> Totals {
        let (passed, failed) = if report.passed() {
            (
                self.passed.fetch_add(1, Ordering::Relaxed) + 1,
                self.failed.load(Ordering::Relaxed),
            )
        } else {
            (
                self.passed.load(Ordering::Relaxed),
                self.failed.fetch_add(1, Ordering::Relaxed) + 1,
            )
        };
        let rounds = self.rounds.fetch_add(1, Ordering::Relaxed) + 1;
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(report.clone());
        self.completed.send_replace(rounds);
        Totals {
            rounds,
            passed,
            failed,
        }
    }

    /// The totals now.
    pub fn totals(&self) -> Totals {
        Totals {
            rounds: self.rounds.load(Ordering::Relaxed),
            passed: self.passed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// The last round's report.
    pub fn last(&self) -> Option<Report> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Follows the number of finished rounds, so a test (or anything else)
    /// can wait for the next round instead of sleeping.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.completed.subscribe()
    }

    /// What `stats()` returns.
    pub fn to_json(&self) -> Value {
        let t = self.totals();
        json!({
            "rounds": t.rounds,
            "passed": t.passed,
            "failed": t.failed,
            "last": self.last().map(|r| r.to_json()),
        })
    }
}

/// The checker: a `run_round` timer (eager, so the first round runs at
/// start rather than one interval later), a `stats()` method, and (added
/// to its builder by [`build`], as their names depend on the target) the
/// event handlers.
struct Checker {
    target: String,
    timeout: Duration,
    event_timeout: Option<Duration>,
    /// Clamped to 1 ms ..= one year: [`Timer::every`](rpc_core::Timer::every)
    /// panics on zero and the timer's deadlines overflow on huge ones (the
    /// command line refuses both already).
    interval: Duration,
    stats: Arc<Stats>,
    board: EventBoard,
    subscribed: watch::Receiver<bool>,
}

#[rpc_core::service(name = "test_service", no_client)]
impl Checker {
    /// One round against the target, through the tick's context.
    #[timer(interval = self.interval, eager = true)]
    async fn run_round(&self, ctx: &Context) -> Result<(), Infallible> {
        let caller = ctx.rpc().with_timeout(self.timeout);
        let checks = match self.event_timeout {
            None => EventChecks::Off,
            Some(event_timeout) => {
                // Immediate after the first round; bounded so a round still
                // runs (and logs) without a broker.
                let mut subscribed = self.subscribed.clone();
                let ready =
                    tokio::time::timeout(self.timeout, subscribed.wait_for(|ready| *ready)).await;
                match ready {
                    Ok(Ok(_)) => EventChecks::On {
                        board: &self.board,
                        round_call_id: ctx.call_id(),
                        timeout: event_timeout,
                    },
                    _ => EventChecks::Unavailable(format!(
                        "the event handlers were not consuming within {:.1} s",
                        self.timeout.as_secs_f64()
                    )),
                }
            }
        };
        let report = scenario::run_round_with(&caller, &self.target, checks).await;
        let totals = self.stats.record(&report);
        log_round(&self.target, totals, &report);
        // Failures are in the log line above; an Err here would add a second
        // line per round.
        Ok(())
    }

    /// The totals and the last report.
    #[rpc]
    async fn stats(&self) -> Result<Value, RpcError> {
        Ok(self.stats.to_json())
    }
}

/// The service; see [`Checker`].
fn build(settings: &Settings, stats: Arc<Stats>, subscribed: watch::Receiver<bool>) -> Service {
    let board = EventBoard::new();
    let checker = Checker {
        target: settings.target.clone(),
        timeout: settings.timeout,
        event_timeout: settings.event_timeout,
        interval: settings
            .interval
            .clamp(Duration::from_millis(1), crate::cli::MAX_DURATION),
        stats,
        board: board.clone(),
        subscribed,
    };
    let builder = checker.into_service_builder(&settings.name);
    let builder = match settings.event_timeout {
        // Reliable (the default): see the module docs.
        Some(_) => events::subscribe(
            builder,
            &settings.target,
            &board,
            EventHandlerOptions::service_pool(),
        ),
        None => builder,
    };
    builder.build()
}

/// Starts the service on a task of its own. Its rounds wait until it is
/// consuming (its event queues exist and are bound) before they change
/// anything.
pub fn spawn(settings: &Settings, stats: Arc<Stats>, config: Config) -> ServiceHandle {
    let (subscribed, ready) = watch::channel(false);
    let handle = build(settings, stats, ready).spawn(config);
    let mut status = handle.status_receiver();
    tokio::spawn(async move {
        // Ends with the service (the status sender is dropped).
        if status
            .wait_for(|s| matches!(s, ServiceStatus::Consuming))
            .await
            .is_ok()
        {
            subscribed.send_replace(true);
        }
    });
    handle
}

/// The one line a round leaves in the log.
fn log_round(target: &str, totals: Totals, report: &Report) {
    let latencies = report.latencies_ms();
    let events = report.events_summary();
    if report.passed() {
        tracing::info!(
            round = totals.rounds,
            target,
            result = "pass",
            latencies_ms = %latencies,
            events = %events,
            total_passed = totals.passed,
            total_failed = totals.failed,
            "round passed"
        );
    } else {
        tracing::warn!(
            round = totals.rounds,
            target,
            result = "fail",
            latencies_ms = %latencies,
            events = %events,
            failures = %report.failure_summary(),
            total_passed = totals.passed,
            total_failed = totals.failed,
            "round failed"
        );
    }
}

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(settings: Settings, config: Config) -> ExitCode {
    tracing::info!(
        service = %settings.name,
        target = %settings.target,
        interval_s = settings.interval.as_secs_f64(),
        timeout_s = settings.timeout.as_secs_f64(),
        broker = %config.amqp_uri.endpoint(),
        event_timeout_s = settings.event_timeout.map(|d| d.as_secs_f64()),
        "starting"
    );
    let signal = rpc_core::shutdown::on_signal();
    let mut handle = spawn(&settings, Stats::new(), config);
    let stop = tokio::select! {
        _ = signal.cancelled() => true,
        // The service ends by itself only when it cannot go on.
        _ = handle.wait_stopped() => false,
    };
    if stop {
        handle.stop();
    }
    match handle.stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ ServiceError::Connect(_)) => {
            tracing::error!(error = %e, "cannot run");
            ExitCode::from(crate::once::EXIT_BROKER)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot run");
            ExitCode::FAILURE
        }
    }
}
