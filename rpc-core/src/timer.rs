//! Timer entrypoints with nameko's semantics (§9): fixed rate anchored at
//! start, runs never overlap, missed slots fire back to back until the
//! schedule catches up, an error is logged and the schedule goes on, and stop
//! interrupts the sleep but waits for a running tick.

use crate::context::{Context, Origin, ServiceRuntime};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// When a timer fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timer {
    interval: Duration,
    eager: bool,
}

impl Timer {
    /// Fires every `interval`, first one interval after start.
    ///
    /// # Panics
    /// If `interval` is zero.
    pub fn every(interval: Duration) -> Self {
        assert!(!interval.is_zero(), "a timer interval must be positive");
        Timer { interval, eager: false }
    }

    /// Also fires at start (nameko's `eager=True`).
    #[must_use]
    pub fn eager(mut self) -> Self {
        self.eager = true;
        self
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The `k`-th slot after `start`, counting from 1 (0 fires at start
    /// when eager).
    fn slot(&self, start: Instant, k: u32) -> Instant {
        start + self.interval * k
    }
}

pub(crate) type TimerHandler = Arc<dyn Fn(Context) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct TimerEntry {
    pub(crate) name: String,
    pub(crate) timer: Timer,
    pub(crate) handler: TimerHandler,
}

/// Runs one timer until `stop`.
pub(crate) async fn run(entry: TimerEntry, runtime: Arc<ServiceRuntime>, stop: CancellationToken) {
    let start = Instant::now();
    let mut k: u32 = if entry.timer.eager { 0 } else { 1 };
    loop {
        let slot = entry.timer.slot(start, k);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(slot) => {}
        }
        let ctx = Context::new(Arc::clone(&runtime), &entry.name, Vec::new(), BTreeMap::new(), Origin::default());
        let span = tracing::info_span!("timer", service = %runtime.name, timer = %entry.name, call_id = %ctx.call_id());
        let outcome = AssertUnwindSafe((entry.handler)(ctx)).catch_unwind().instrument(span.clone()).await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => span.in_scope(|| tracing::error!(error = %e, "timer tick failed")),
            Err(_) => span.in_scope(|| tracing::error!("timer tick panicked")),
        }
        k = k.saturating_add(1);
        if stop.is_cancelled() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_anchored_at_start() {
        let start = Instant::now();
        let t = Timer::every(Duration::from_millis(250));
        assert_eq!(t.slot(start, 0), start);
        assert_eq!(t.slot(start, 4), start + Duration::from_secs(1));
    }
}
