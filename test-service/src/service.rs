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

use crate::scenario::{self, Report};
use rpc_core::{json, Config, Context, RpcError, Service, ServiceError, Signature, Timer, Value};
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

/// The service: a `run_round` timer (eager, so the first round runs at
/// start rather than one interval later) and a `stats()` method.
///
/// The interval is clamped to 1 ms ..= one year: [`Timer::every`] panics on
/// zero and the timer's deadlines overflow on huge ones (the command line
/// refuses both already).
pub fn build(settings: &Settings, stats: Arc<Stats>) -> Service {
    let target: Arc<str> = Arc::from(settings.target.as_str());
    let timeout = settings.timeout;
    let interval = settings.interval.clamp(
        Duration::from_millis(1),
        Duration::from_secs_f64(crate::cli::MAX_SECONDS),
    );
    let round_stats = Arc::clone(&stats);
    Service::builder(&settings.name)
        .timer(
            "run_round",
            Timer::every(interval).eager(),
            move |ctx: Context| {
                let stats = Arc::clone(&round_stats);
                let target = Arc::clone(&target);
                async move {
                    let caller = ctx.rpc().with_timeout(timeout);
                    let report = scenario::run_round(&caller, &target).await;
                    let totals = stats.record(&report);
                    log_round(&target, totals, &report);
                    // Failures are in the log line above; an Err here would add
                    // a second line per round.
                    Ok::<(), Infallible>(())
                }
            },
        )
        .method("stats", Signature::new(), move |_ctx: Context, (): ()| {
            let stats = Arc::clone(&stats);
            async move { Ok::<_, RpcError>(stats.to_json()) }
        })
        .build()
}

/// The one line a round leaves in the log.
fn log_round(target: &str, totals: Totals, report: &Report) {
    let latencies = report.latencies_ms();
    if report.passed() {
        tracing::info!(
            round = totals.rounds,
            target,
            result = "pass",
            latencies_ms = %latencies,
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
        "starting"
    );
    let service = build(&settings, Stats::new());
    match service.run(config, rpc_core::shutdown::on_signal()).await {
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
