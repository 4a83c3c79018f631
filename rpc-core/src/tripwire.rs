//! A one-way signal that every call of a service races against: the
//! session's connection is lost, the stop's deadline has passed.
//!
//! A `CancellationToken` does the same, but each `cancelled()` future
//! takes the token's lock when it is made, when it is first polled and when
//! it is dropped, and re-checks its registration on every poll; three of
//! them per call cost about 2 k instructions of a `get`'s 80 k
//! (BENCHMARKS.md, issue 12). Here a guarded future registers its task's
//! waker once (one lock), checks one atomic flag per poll, and takes the
//! lock again only to leave.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Cheap to clone; every clone trips together.
#[derive(Clone, Default)]
pub(crate) struct Tripwire {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    tripped: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// Wakers of the futures waiting, in slots reused as they leave.
#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Shared {
    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // Every change is a single assignment: a panic elsewhere cannot
        // leave the list half-changed.
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Tripwire {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Trips the wire and wakes every future waiting on it.
    pub(crate) fn trip(&self) {
        self.shared.tripped.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = {
            let mut waiters = self.shared.waiters();
            waiters.slots.iter_mut().filter_map(Option::take).collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// `work`'s output, or `None` if the wire trips first. `work` is polled
    /// first, so work that is ready wins over a trip.
    pub(crate) fn guard<F: Future>(&self, work: F) -> Guarded<'_, F> {
        Guarded {
            wire: self,
            work,
            registered: None,
        }
    }
}

/// See [`Tripwire::guard`].
pub(crate) struct Guarded<'a, F> {
    wire: &'a Tripwire,
    work: F,
    /// The slot this future's waker sits in, and a copy of that waker to
    /// tell whether a later poll comes from another task.
    registered: Option<(usize, Waker)>,
}

impl<F: Future> Future for Guarded<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `work` is never moved out of the pinned `Guarded` (it is
        // only polled in place and dropped with it); the other fields are
        // not structurally pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let work = unsafe { Pin::new_unchecked(&mut this.work) };
        if let Poll::Ready(output) = work.poll(cx) {
            return Poll::Ready(Some(output));
        }
        let shared = &this.wire.shared;
        if shared.tripped.load(Ordering::SeqCst) {
            return Poll::Ready(None);
        }
        if let Some((_, waker)) = &this.registered {
            if waker.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let mut waiters = shared.waiters();
        // Checked again under the lock: a trip that took the wakers before
        // this one went in has set the flag already.
        if shared.tripped.load(Ordering::SeqCst) {
            return Poll::Ready(None);
        }
        let slot = match &this.registered {
            Some((slot, _)) => *slot,
            None => waiters.free.pop().unwrap_or_else(|| {
                waiters.slots.push(None);
                waiters.slots.len() - 1
            }),
        };
        let waker = cx.waker().clone();
        waiters.slots[slot] = Some(waker.clone());
        this.registered = Some((slot, waker));
        Poll::Pending
    }
}

impl<F> Drop for Guarded<'_, F> {
    fn drop(&mut self) {
        if let Some((slot, _)) = self.registered.take() {
            let mut waiters = self.wire.shared.waiters();
            waiters.slots[slot] = None;
            waiters.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn ready_work_wins_over_a_trip() {
        let wire = Tripwire::new();
        wire.trip();
        assert_eq!(wire.guard(async { 7 }).await, Some(7));
        assert_eq!(wire.guard(std::future::pending::<()>()).await, None);
    }

    #[tokio::test]
    async fn a_trip_wakes_every_waiting_future() {
        let wire = Tripwire::new();
        let waiting: Vec<_> = (0..50)
            .map(|_| {
                let wire = wire.clone();
                tokio::spawn(async move { wire.guard(std::future::pending::<()>()).await })
            })
            .collect();
        // Each registers on its first poll; yielding lets them all get there.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        wire.trip();
        for task in waiting {
            let outcome = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("a waiting future was not woken by the trip")
                .expect("task");
            assert_eq!(outcome, None);
        }
        assert!(wire.shared.tripped.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn finished_futures_give_their_slot_back() {
        let wire = Tripwire::new();
        for _ in 0..100 {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let guarded = tokio::spawn({
                let wire = wire.clone();
                async move { wire.guard(rx).await }
            });
            tokio::task::yield_now().await;
            tx.send(()).expect("receiver alive");
            assert!(matches!(guarded.await, Ok(Some(Ok(())))));
        }
        let waiters = wire.shared.waiters();
        assert!(waiters.slots.len() <= 1, "slots: {}", waiters.slots.len());
        assert!(waiters.slots.iter().all(Option::is_none));
    }

    #[tokio::test]
    async fn a_future_polled_from_another_task_is_woken_there() {
        let wire = Tripwire::new();
        let own = wire.clone();
        let mut guarded = Box::pin(async move { own.guard(std::future::pending::<()>()).await });
        // First polled here, by the test's own task...
        assert!(futures::poll!(guarded.as_mut()).is_pending());
        // ...then moved to another task, which must be the one woken.
        let moved = tokio::spawn(guarded);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        wire.trip();
        let outcome = tokio::time::timeout(Duration::from_secs(10), moved)
            .await
            .expect("the task the future moved to was not woken")
            .expect("task");
        assert_eq!(outcome, None);
    }
}
