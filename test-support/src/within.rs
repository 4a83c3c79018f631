//! Waits with a time bound and a name, so that a test that hangs says what
//! it was waiting for.
//!
//! Two layers keep the suite from hanging:
//! * every test runs under cargo-nextest's `slow-timeout` (see
//!   `.config/nextest.toml`): past its bound the runner terminates it, names
//!   it, and goes on with the rest;
//! * waits that could block for good go through [`within`] (or
//!   [`WithinExt::within`]): past its own, shorter bound the test fails
//!   with a panic naming the wait. While such a wait is in progress it is
//!   also listed by a watchdog that prints every wait still open when the
//!   runner sends SIGTERM, so even a hang outside a named wait's bound
//!   (say, inside a library) leaves the names of what the test was doing.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// How long a test waits for a service to consume its queues.
pub const START_BOUND: Duration = Duration::from_secs(30);
/// How long a test waits for a service to stop: its `shutdown_timeout`
/// (30 s by default) plus the bounded close of its connection.
pub const STOP_BOUND: Duration = Duration::from_secs(45);

static OPEN: Mutex<BTreeMap<u64, (String, Instant)>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);
static WATCHDOG: Once = Once::new();

/// Removes a wait from the open list when it ends, however it ends.
struct Open(u64);

impl Open {
    fn register(what: &str) -> Open {
        install_watchdog();
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        OPEN.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, (what.to_owned(), Instant::now()));
        Open(id)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.0);
    }
}

/// Awaits `future`; panics with `what` if it takes longer than `limit`.
///
/// ```no_run
/// # async fn demo(rx: &mut tokio::sync::mpsc::Receiver<u32>) {
/// use std::time::Duration;
/// let n = test_support::within(Duration::from_secs(10), "the first event", rx.recv()).await;
/// # }
/// ```
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    let _open = Open::register(what);
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// [`within`] as a method of every future.
pub trait WithinExt: Future + Sized {
    /// Awaits this future; panics with `what` if it takes longer than
    /// `limit`.
    fn within(self, limit: Duration, what: &str) -> impl Future<Output = Self::Output> {
        within(limit, what, self)
    }
}

impl<F: Future> WithinExt for F {}

/// The waits in progress, oldest first, with how long each has run.
pub fn open_waits() -> Vec<(String, Duration)> {
    OPEN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .map(|(what, since)| (what.clone(), since.elapsed()))
        .collect()
}

/// On SIGTERM (what nextest sends a test past its time bound), prints the
/// open waits to stderr, which nextest shows with the timed-out test, then
/// exits.
fn install_watchdog() {
    WATCHDOG.call_once(|| {
        let Ok(mut signals) = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM])
        else {
            return;
        };
        let _ = std::thread::Builder::new()
            .name("test-watchdog".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    let waits = open_waits();
                    if waits.is_empty() {
                        eprintln!("terminated past the test's time bound; no named wait was open");
                    } else {
                        eprintln!("terminated past the test's time bound while waiting for:");
                        for (what, elapsed) in waits {
                            eprintln!("  - {what} (for {:.1} s)", elapsed.as_secs_f64());
                        }
                    }
                    std::process::exit(124);
                }
            });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_that_ends_is_forgotten() {
        let value = within(Duration::from_secs(5), "an immediate value", async { 7 }).await;
        assert_eq!(value, 7);
        assert!(open_waits().iter().all(|(w, _)| w != "an immediate value"));
    }

    #[tokio::test]
    async fn a_wait_in_progress_is_listed() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let wait = tokio::spawn(within(Duration::from_secs(5), "the listed wait", rx));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(open_waits().iter().any(|(w, _)| w == "the listed wait"));
        tx.send(()).unwrap();
        wait.await.unwrap().unwrap();
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for a reply that never comes")]
    async fn a_wait_past_its_bound_fails_naming_it() {
        within(
            Duration::from_millis(50),
            "a reply that never comes",
            std::future::pending::<()>(),
        )
        .await;
    }
}
