//! A call's worker slot: one of the service's `max_workers`.
//!
//! nameko's `max_workers` bounds the greenlets that run handlers at once;
//! a greenlet blocked on a database commit still holds its slot. Here a
//! handler may say that it is *waiting*, not working
//! ([`crate::Context::off_worker`]): the slot is handed back for the wait,
//! so that ten writes waiting ~2 ms each for a durable group commit do not
//! stop other requests from running (and from joining the same commit).
//! The request itself stays unacknowledged, bounded by the prefetch.

use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The permit a call runs under, which it may give back while it waits.
pub(crate) struct WorkerSlot {
    workers: Arc<Semaphore>,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl std::fmt::Debug for WorkerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSlot")
            .field("held", &self.lock().is_some())
            .finish()
    }
}

impl WorkerSlot {
    /// A call running under `permit`, one of `workers`.
    pub(crate) fn new(workers: Arc<Semaphore>, permit: OwnedSemaphorePermit) -> Arc<Self> {
        Arc::new(WorkerSlot {
            workers,
            permit: Mutex::new(Some(permit)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<OwnedSemaphorePermit>> {
        // The guarded value is an Option that is only taken or set: a
        // panic elsewhere cannot leave it half-changed.
        self.permit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives the slot back for good: the handler is done.
    pub(crate) fn release(&self) {
        drop(self.lock().take());
    }

    /// Runs `wait` without holding the slot, then takes a slot again so
    /// that the handler's remaining work is bounded as before. A call
    /// that does not hold one (it is already waiting) just waits.
    pub(crate) async fn off<F: std::future::Future>(&self, wait: F) -> F::Output {
        let Some(permit) = self.lock().take() else {
            return wait.await;
        };
        drop(permit);
        let out = wait.await;
        // The semaphore is never closed; an error would only mean running
        // on without a slot, which is what a closed pool would ask for.
        if let Ok(permit) = Arc::clone(&self.workers).acquire_owned().await {
            *self.lock() = Some(permit);
        }
        out
    }
}
