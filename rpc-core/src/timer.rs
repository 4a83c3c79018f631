//! Timer entrypoints with nameko's semantics (§9): fixed rate anchored at
//! start, runs never overlap, missed slots fire back to back until the
//! schedule catches up, an error is logged and the schedule goes on, and stop
//! interrupts the sleep but waits for a running tick (until the stop's
//! deadline).

use crate::context::{Context, MessageFacts};
use crate::runtime::ServiceRuntime;
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
        Timer {
            interval,
            eager: false,
        }
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
    /// when eager); `None` when it lies beyond what a clock can hold (an
    /// interval of centuries, say).
    fn slot(&self, start: Instant, k: u32) -> Option<Instant> {
        self.interval
            .checked_mul(k)
            .and_then(|offset| start.checked_add(offset))
    }
}

pub(crate) type TimerHandler =
    Arc<dyn Fn(Context) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

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
        let Some(slot) = entry.timer.slot(start, k) else {
            // The next tick would never come.
            stop.cancelled().await;
            return;
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(slot) => {}
        }
        let ctx = Context::new(
            Arc::clone(&runtime),
            &entry.name,
            Vec::new(),
            BTreeMap::new(),
            MessageFacts::default(),
        );
        let span = tracing::info_span!("timer", service = %runtime.name, timer = %entry.name, call_id = %ctx.call_id());
        let call_id = ctx.call_id().to_owned();
        let tick = async {
            let outcome = AssertUnwindSafe((entry.handler)(ctx))
                .catch_unwind()
                .instrument(span.clone())
                .await;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => span.in_scope(|| tracing::error!(error = %e, "timer tick failed")),
                Err(_) => span.in_scope(|| tracing::error!("timer tick panicked")),
            }
        };
        // A tick still running at a stop's deadline is dropped.
        runtime.until_abandoned(tick, &call_id).await;
        k = k.saturating_add(1);
        if stop.is_cancelled() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// Runs a timer on paused time and returns when each tick started,
    /// in seconds after start.
    async fn tick_times(timer: Timer, ticks: usize, work: fn(usize) -> Duration) -> Vec<f64> {
        let runtime = Arc::new(ServiceRuntime::new(
            "svc".into(),
            Config::default(),
            CancellationToken::new(),
        ));
        let start = Instant::now();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let (seen2, running2, stop2) = (Arc::clone(&seen), Arc::clone(&running), stop.clone());
        let handler: TimerHandler = Arc::new(move |ctx: Context| {
            let (seen, running, stop) = (Arc::clone(&seen2), Arc::clone(&running2), stop2.clone());
            async move {
                assert!(!running.swap(true, Ordering::SeqCst), "ticks overlapped");
                assert!(ctx.call_id().starts_with("svc.tick."));
                assert_eq!(ctx.call_id_stack().len(), 1, "each tick starts a new stack");
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(start.elapsed().as_secs_f64());
                    seen.len()
                };
                tokio::time::sleep(work(n)).await;
                running.store(false, Ordering::SeqCst);
                if n == ticks {
                    stop.cancel();
                }
                Ok(())
            }
            .boxed()
        });
        let entry = TimerEntry {
            name: "tick".into(),
            timer,
            handler,
        };
        run(entry, runtime, stop).await;
        let out = seen.lock().unwrap().clone();
        out
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_rate_with_catch_up_after_an_overrun() {
        // nameko §9: interval 1 s, tick 2 takes 3.5 s: ticks 3, 4 and 5 fire
        // back to back at 5.5 s, then tick 6 at 6 s.
        let times = tick_times(Timer::every(Duration::from_secs(1)), 6, |n| {
            if n == 2 {
                Duration::from_millis(3500)
            } else {
                Duration::ZERO
            }
        })
        .await;
        let rounded: Vec<f64> = times.iter().map(|t| (t * 10.0).round() / 10.0).collect();
        assert_eq!(rounded, vec![1.0, 2.0, 5.5, 5.5, 5.5, 6.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn eager_fires_at_start() {
        let times = tick_times(Timer::every(Duration::from_millis(500)).eager(), 3, |_| {
            Duration::from_millis(100)
        })
        .await;
        let rounded: Vec<f64> = times.iter().map(|t| (t * 10.0).round() / 10.0).collect();
        assert_eq!(rounded, vec![0.0, 0.5, 1.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_interrupts_the_sleep() {
        let runtime = Arc::new(ServiceRuntime::new(
            "svc".into(),
            Config::default(),
            CancellationToken::new(),
        ));
        let stop = CancellationToken::new();
        let entry = TimerEntry {
            name: "t".into(),
            timer: Timer::every(Duration::from_secs(3600)),
            handler: Arc::new(|_| async { Ok(()) }.boxed()),
        };
        let task = tokio::spawn(run(entry, runtime, stop.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t0 = Instant::now();
        stop.cancel();
        task.await.unwrap();
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn slots_are_anchored_at_start() {
        let start = Instant::now();
        let t = Timer::every(Duration::from_millis(250));
        assert_eq!(t.slot(start, 0), Some(start));
        assert_eq!(t.slot(start, 4), Some(start + Duration::from_secs(1)));
        assert_eq!(Timer::every(Duration::MAX).slot(start, 2), None);
    }
}
