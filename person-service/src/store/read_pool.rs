//! SQLite reads, off the async executor, on reader threads of their own.
//!
//! Each thread owns one read connection and takes jobs from a queue they
//! share. Under load a thread that finishes a read finds the next one
//! already waiting, so a read costs no thread wake-up; `spawn_blocking` per
//! read woke a pool thread, and was woken back, for every single `get`
//! (most of the CPU a `get` spent above the echo's, BENCHMARKS.md). A
//! panicking read fails alone: its thread catches it and takes the next
//! job.

use rusqlite::Connection;
use std::panic::{catch_unwind, AssertUnwindSafe};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&Connection) + Send>;

/// Why a read did not run.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadFailed {
    /// Every reader thread is gone.
    #[error("the store's reader threads are gone")]
    Gone,
    /// The read panicked.
    #[error("the read panicked")]
    Panicked,
}

/// The reader threads; they stop when the pool is dropped and the jobs
/// queued before that are done.
pub(super) struct ReadPool {
    jobs: crossbeam_channel::Sender<Job>,
}

impl ReadPool {
    /// Starts a thread per connection.
    pub(super) fn start(connections: Vec<Connection>) -> std::io::Result<ReadPool> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        for (n, conn) in connections.into_iter().enumerate() {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("person-store-reader-{n}"))
                .spawn(move || {
                    for job in queue {
                        // The job sends its own result; a panic drops its
                        // sender, which the caller sees as `Panicked`.
                        if catch_unwind(AssertUnwindSafe(|| job(&conn))).is_err() {
                            tracing::error!("a database read panicked");
                        }
                    }
                })?;
        }
        Ok(ReadPool { jobs })
    }

    /// Runs `read` on a reader thread.
    pub(super) async fn run<T, F>(&self, read: F) -> Result<T, ReadFailed>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> T + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = done.send(read(conn));
        });
        self.jobs.send(job).map_err(|_| ReadFailed::Gone)?;
        result.await.map_err(|_| ReadFailed::Panicked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> ReadPool {
        let conns = (0..threads)
            .map(|_| Connection::open_in_memory().unwrap())
            .collect();
        ReadPool::start(conns).unwrap()
    }

    #[tokio::test]
    async fn reads_run_and_a_panicking_one_fails_alone() {
        let pool = pool(1);
        let one: i64 = pool
            .run(|c| c.query_row("SELECT 1", [], |r| r.get(0)).unwrap())
            .await
            .unwrap();
        assert_eq!(one, 1);
        let failed = pool.run(|_| -> i64 { panic!("boom") }).await;
        assert!(matches!(failed, Err(ReadFailed::Panicked)), "{failed:?}");
        // The only thread survived its panic and still answers.
        let two: i64 = pool
            .run(|c| c.query_row("SELECT 2", [], |r| r.get(0)).unwrap())
            .await
            .unwrap();
        assert_eq!(two, 2);
    }

    #[tokio::test]
    async fn many_reads_at_once_all_answer() {
        let pool = std::sync::Arc::new(pool(2));
        let reads = (0..200i64).map(|n| {
            let pool = std::sync::Arc::clone(&pool);
            tokio::spawn(async move {
                pool.run(move |c| {
                    c.query_row("SELECT ?1", [n], |r| r.get::<_, i64>(0))
                        .unwrap()
                })
                .await
                .unwrap()
            })
        });
        let got: Vec<i64> = futures_util::future::join_all(reads)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
    }
}
