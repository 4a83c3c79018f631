//! The SQLite backend: one host.
//!
//! All blocking database work runs off the async executor. One writer
//! thread owns the only writing connection and commits every write waiting
//! for it in one transaction (group commit): with `synchronous=FULL` each
//! commit costs an fsync, so sharing one among many concurrent writes is
//! what makes durable writes fast. A write that fails does not undo the
//! others in its batch (see `Writer::commit_batch`). Reads use a
//! small pool of other connections; WAL mode lets them run beside the
//! writer.
//!
//! One row of `write_log` is kept in the same transaction as each change,
//! holding two records (the answer is the event's data, stored once):
//! * its event, which [`crate::outbox`] publishes and then marks done: an
//!   event is never lost between the commit and the publish, even if the
//!   process dies there;
//! * for an RPC request, its correlation id and answer: a request
//!   redelivered after a crash (committed but not acked) gets the first
//!   answer back instead of writing again. These records expire after a
//!   bounded time (24 h by default).
//!
//! Durability: `journal_mode=WAL` with `synchronous=FULL` syncs the WAL on
//! every commit, so a write that has been answered survives a crash of the
//! process and of the machine.

use super::read_pool::ReadPool;
use super::{
    answer_text, context_columns, expiry_cutoff, outbox_event, recorded_answer, unix_now,
    ClaimInner, OutboxClaim, OutboxEvent, StoreError, StoreOptions, Unhealthy, WriteMeta, WriteOp,
    Written,
};
use crate::domain::{DomainError, Page, Person};
use rusqlite::{
    params, CachedStatement, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior,
};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// Reader threads, each with its connection: as many as reads can run at
/// once on the machines this targets; each holds its own page cache.
const READERS: usize = 2;
/// Page cache of each reader, in KiB (SQLite's default is 2,000): the OS
/// caches the file too, so a small cache costs little and saves memory.
const READER_CACHE_KIB: i64 = 512;
/// Page cache of the writer, in KiB (SQLite's default is 2,000): its
/// writes touch the tails of the tables plus one random page of the
/// correlation-id index each; the OS caches the file too.
const WRITER_CACHE_KIB: i64 = 1024;
/// Longest an outbox delete waits for a write transaction to ride along.
const CLEAR_DELAY: Duration = Duration::from_secs(1);
/// Statements the writer keeps prepared: its writes, its outbox and
/// request-record statements, and its transaction control.
const WRITER_STATEMENTS: usize = 32;
/// Most committed events kept in memory for the relay (a broker outage
/// piles them up; past this the relay reads them from the table).
const RECENT_EVENTS: usize = 4096;
/// How often the writer removes expired request records.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long an open that SQLite finds busy is tried again.
const OPEN_BUSY_RETRY: Duration = Duration::from_secs(10);

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run.
const MIGRATIONS: &[&str] = &[
    // 1: people. AUTOINCREMENT so that an id is never reused after a delete
    // (until 5).
    "CREATE TABLE person (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        first_name TEXT    NOT NULL,
        last_name  TEXT    NOT NULL,
        age        INTEGER NOT NULL CHECK (age BETWEEN 0 AND 150),
        member     INTEGER NOT NULL DEFAULT 0 CHECK (member IN (0, 1))
    );",
    // 2: events waiting to be published, in commit order.
    "CREATE TABLE event_outbox (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        event_type    TEXT    NOT NULL,
        payload       TEXT    NOT NULL,
        call_id_stack TEXT    NOT NULL,
        context       TEXT    NOT NULL,
        created_at    INTEGER NOT NULL
    );",
    // 3: answers of write requests, by correlation id, for redeliveries.
    "CREATE TABLE processed_request (
        request_id TEXT    PRIMARY KEY,
        method     TEXT    NOT NULL,
        response   TEXT    NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX processed_request_age ON processed_request (created_at);",
    // 4: the same records in insertion order. Keyed by the (random)
    // correlation id with an index on age, every record landed on a random
    // page of two B-trees: two page writes per create in each commit. In
    // insertion order only the correlation-id index is random, and records
    // expire from the front of the table.
    "CREATE TABLE processed_request_by_age (
        seq        INTEGER PRIMARY KEY,
        request_id TEXT    NOT NULL UNIQUE,
        method     TEXT    NOT NULL,
        response   TEXT    NOT NULL,
        created_at INTEGER NOT NULL
    );
    INSERT INTO processed_request_by_age (request_id, method, response, created_at)
        SELECT request_id, method, response, created_at FROM processed_request ORDER BY created_at;
    DROP TABLE processed_request;
    ALTER TABLE processed_request_by_age RENAME TO processed_request;",
    // 5: ids from the writer instead of AUTOINCREMENT, which reads and
    // rewrites `sqlite_sequence` in every insert (3.3 k instructions
    // each, two per create). The writer takes the next ids once per
    // transaction (`Statements::next_id`). A person id is never reused:
    // one past the larger of the highest id and a high-water mark that a
    // delete raises to the id it removed. An event id only has to be past
    // every event this process's relay has published (see
    // `Inner::relayed`); nothing outside the outbox sees it.
    "CREATE TABLE high_water (
        name    TEXT    PRIMARY KEY,
        last_id INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO high_water (name, last_id)
        SELECT name, seq FROM sqlite_sequence WHERE name = 'person';
    CREATE TABLE person_v5 (
        id         INTEGER PRIMARY KEY,
        first_name TEXT    NOT NULL,
        last_name  TEXT    NOT NULL,
        age        INTEGER NOT NULL CHECK (age BETWEEN 0 AND 150),
        member     INTEGER NOT NULL DEFAULT 0 CHECK (member IN (0, 1))
    );
    INSERT INTO person_v5 (id, first_name, last_name, age, member)
        SELECT id, first_name, last_name, age, member FROM person;
    DROP TABLE person;
    ALTER TABLE person_v5 RENAME TO person;
    CREATE TABLE event_outbox_v5 (
        id            INTEGER PRIMARY KEY,
        event_type    TEXT    NOT NULL,
        payload       TEXT    NOT NULL,
        call_id_stack TEXT    NOT NULL,
        context       TEXT    NOT NULL,
        created_at    INTEGER NOT NULL
    );
    INSERT INTO event_outbox_v5 (id, event_type, payload, call_id_stack, context, created_at)
        SELECT id, event_type, payload, call_id_stack, context, created_at FROM event_outbox;
    DROP TABLE event_outbox;
    ALTER TABLE event_outbox_v5 RENAME TO event_outbox;",
    // 6: request records and outbox events in one table. A create wrote a
    // request record and an outbox event with the same bytes (the answer
    // is the event's data) into two B-trees; one row per write is 2.4 k
    // instructions less per create (BENCHMARKS.md, issue 12). A row
    // is a request record when `request_id` is set and holds a pending
    // event while `event_type` is set; publishing clears the event's
    // columns, or removes the row when no request record is kept in it.
    // `seq` is the event's id and commit order; the writer never lets it
    // go down (the newest row is never removed), so every relay that
    // reads after a position it saw misses nothing.
    "CREATE TABLE write_log (
        seq           INTEGER PRIMARY KEY,
        request_id    TEXT    UNIQUE,
        method        TEXT,
        answer        TEXT    NOT NULL,
        event_type    TEXT,
        call_id_stack TEXT,
        context       TEXT,
        created_at    INTEGER NOT NULL
    );
    INSERT INTO write_log (request_id, method, answer, created_at)
        SELECT request_id, method, response, created_at FROM processed_request ORDER BY seq;
    INSERT INTO write_log (answer, event_type, call_id_stack, context, created_at)
        SELECT payload, event_type, call_id_stack, context, created_at FROM event_outbox ORDER BY id;
    DROP TABLE processed_request;
    DROP TABLE event_outbox;",
];

/// A job for the writer thread, with the channel its outcome goes back on.
struct WriteJob {
    task: Task,
    reply: oneshot::Sender<Result<Written, DomainError>>,
}

enum Task {
    /// A change and what it leaves behind.
    Write(WriteOp, WriteMeta),
    /// Published events to remove (deferred, see [`SqliteStore::finish_claim`]).
    ClearOutbox(Vec<i64>),
    /// Commit the deferred removals now.
    Flush,
}

/// The SQLite store; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: mpsc::Sender<WriteJob>,
    readers: ReadPool,
    path: PathBuf,
    outbox: Arc<Notify>,
    /// The last event this store's relay published. Removing published
    /// events is deferred, so the relay reads after this rather than from
    /// the start. No event can commit below it later: the writer places
    /// each new event after the outbox's highest id and after this (once
    /// the published events are removed, the table alone would give their
    /// ids out again).
    relayed: Arc<AtomicI64>,
    /// The events this store's writer committed lately, for the relay.
    recent: Arc<Mutex<RecentEvents>>,
}

/// The newest events this store's writer committed, kept in memory so the
/// relay can take them without reading them back: a read on a reader
/// thread and a JSON decode of every event, per batch (BENCHMARKS.md).
/// The table stays the truth: whenever the memory cannot vouch for having
/// every event the relay is missing (at start, after a failed publish,
/// after it overflowed), the relay reads the table.
///
/// Events another process commits to the same file are not here; that
/// process's own relay publishes them.
#[derive(Debug, Default)]
struct RecentEvents {
    /// Oldest first; ids ascend (one writer).
    events: VecDeque<OutboxEvent>,
    /// Every event with a higher id that this writer committed is in
    /// `events`; `None`: not known, read the table.
    complete_after: Option<i64>,
    /// Bumped whenever events are dropped unpublished for lack of room, so
    /// a table read that ran meanwhile does not vouch for the memory.
    epoch: u64,
}

impl RecentEvents {
    /// The lock guards plain data; a panic elsewhere leaves it usable.
    fn lock(recent: &Mutex<RecentEvents>) -> std::sync::MutexGuard<'_, RecentEvents> {
        recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Events committed by the writer, in id order.
    fn push(&mut self, committed: Vec<OutboxEvent>) {
        if self.events.len() + committed.len() > RECENT_EVENTS {
            self.events.clear();
            self.complete_after = None;
            self.epoch += 1;
            return;
        }
        self.events.extend(committed);
    }

    /// Drops what the relay has already read or published.
    fn forget_through(&mut self, id: i64) {
        while self.events.front().is_some_and(|e| e.id <= id) {
            self.events.pop_front();
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database, and starts the
    /// writer thread. Blocking.
    pub(crate) fn open(path: &Path, options: StoreOptions) -> Result<SqliteStore, StoreError> {
        // SQLite answers SQLITE_BUSY at once, without its busy handler, in a
        // few cases a concurrent start on a fresh file can hit (switching
        // the journal to WAL while another connection holds a lock, a
        // reader meeting a WAL being set up): seen in 1 of a few hundred
        // concurrent opens. Every step of an open can be repeated, so a
        // busy open is tried again for a bounded time.
        let started = Instant::now();
        loop {
            match Self::open_once(path, options.clone()) {
                Err(StoreError::Open {
                    source: rusqlite::Error::SqliteFailure(e, _),
                    ..
                }) if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && started.elapsed() < OPEN_BUSY_RETRY =>
                {
                    tracing::debug!("the database is busy while opening; trying again");
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path, options: StoreOptions) -> Result<SqliteStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut writer = Connection::open(path).map_err(open_err)?;
        configure_writer(&writer).map_err(open_err)?;
        // Room for all of the writer's statements (rusqlite keeps 16).
        writer.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
        migrate(&mut writer, path)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(open_err)?;
            conn.execute_batch(&format!(
                "PRAGMA query_only = ON; PRAGMA busy_timeout = 5000; PRAGMA cache_size = -{READER_CACHE_KIB};"
            ))
                .map_err(open_err)?;
            readers.push(conn);
        }
        let readers = ReadPool::start(readers)
            .map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        let outbox = Arc::new(Notify::new());
        let recent = Arc::new(Mutex::new(RecentEvents::default()));
        let relayed = Arc::new(AtomicI64::new(0));
        let (tx, rx) = mpsc::channel();
        let writer_state = Writer {
            conn: writer,
            outbox: Arc::clone(&outbox),
            recent: Arc::clone(&recent),
            relayed: Arc::clone(&relayed),
            request_ttl: options.request_ttl,
            last_prune: None,
        };
        std::thread::Builder::new()
            .name("person-store-writer".into())
            .spawn(move || writer_state.run(rx))
            .map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: tx,
                readers,
                path: path.to_owned(),
                outbox,
                relayed,
                recent,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(crate) async fn write(&self, op: WriteOp, meta: WriteMeta) -> Result<Written, DomainError> {
        self.send(Task::Write(op, meta)).await
    }

    pub(crate) async fn get(&self, id: i64) -> Result<Option<Person>, DomainError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, first_name, last_name, age, member FROM person WHERE id = ?1",
            )?
            .query_row(params![id], person_from_row)
            .optional()
        })
        .await
    }

    pub(crate) async fn list(&self, page: Page) -> Result<Vec<Person>, DomainError> {
        self.read(move |conn| {
            let limit = page.limit.map_or(-1, i64::from);
            let mut stmt = conn.prepare_cached(
                "SELECT id, first_name, last_name, age, member FROM person WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![page.after_id, limit], person_from_row)?;
            rows.collect()
        })
        .await
    }

    pub(crate) async fn count(&self) -> Result<i64, DomainError> {
        self.read(|conn| conn.query_row("SELECT count(*) FROM person", [], |r| r.get(0)))
            .await
    }

    pub(crate) async fn check(&self) -> Result<(), Unhealthy> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
            .map_err(|_| Unhealthy(format!("cannot read {}", self.inner.path.display())))
    }

    /// The oldest events after position `after_id`.
    pub(crate) async fn outbox_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, DomainError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| read_pending(conn, after_id, limit))
            .await
    }

    /// The oldest events after `after` that wait to be published, and the
    /// log's newest position before the read: when none waits, none does
    /// up to that position either (positions only rise, see migration 6).
    async fn pending_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<OutboxEvent>, i64), DomainError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            // First: an event committed after this has a higher position
            // and is in the read below or in the writer's memory.
            let newest: i64 = conn
                .prepare_cached("SELECT ifnull(max(seq), 0) FROM write_log")?
                .query_row([], |r| r.get(0))?;
            read_pending(conn, after, limit).map(|events| (events, newest))
        })
        .await
    }

    pub(crate) async fn claim_outbox(&self, limit: usize) -> Result<OutboxClaim, DomainError> {
        let after = self.inner.relayed.load(Ordering::Acquire);
        let epoch = {
            let mut recent = self.recent();
            recent.forget_through(after);
            if recent.complete_after.is_some_and(|c| c <= after) {
                let take = recent.events.len().min(limit);
                let events: Vec<OutboxEvent> = recent.events.drain(..take).collect();
                // Taken out of memory: should they not all be published,
                // the relay reads the rest from the table.
                if let Some(last) = events.last() {
                    recent.complete_after = Some(last.id);
                }
                return Ok(OutboxClaim {
                    events,
                    inner: ClaimInner::Sqlite(self.clone()),
                });
            }
            recent.epoch
        };
        let (events, newest) = self.pending_after(after, limit).await?;
        // Nothing waits before the first event found (or, with none, up to
        // the newest row): later reads start there, not at the front of a
        // log that keeps a day of request records, also while a broker
        // outage makes the relay read again every few seconds.
        let clear_through = events.first().map_or(newest, |e| e.id - 1);
        if clear_through > after {
            self.inner
                .relayed
                .fetch_max(clear_through, Ordering::AcqRel);
        }
        if events.len() < limit {
            // The read saw every event committed before it; the writer puts
            // each one committed after it in memory, unless it dropped some
            // meanwhile.
            let mut recent = self.recent();
            if recent.epoch == epoch {
                let last = events.last().map_or(after.max(newest), |e| e.id);
                recent.forget_through(last);
                recent.complete_after = Some(last);
            }
        }
        Ok(OutboxClaim {
            events,
            inner: ClaimInner::Sqlite(self.clone()),
        })
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEvents> {
        RecentEvents::lock(&self.inner.recent)
    }

    /// Removes published events lazily: the deletes are committed with the
    /// next write transaction (or within a second when none comes), so
    /// publishing an event does not cost a sync of its own. Until then the
    /// rows are still there, and the relay reads past them; if the process
    /// dies first they are published again at the next start (events are at
    /// least once).
    pub(crate) async fn finish_claim(&self, ids: Vec<i64>) -> Result<(), DomainError> {
        let Some(&last) = ids.last() else {
            return Ok(());
        };
        self.inner.relayed.fetch_max(last, Ordering::AcqRel);
        self.send(Task::ClearOutbox(ids)).await.map(|_| ())
    }

    pub(crate) async fn flush(&self) -> Result<(), DomainError> {
        self.send(Task::Flush).await.map(|_| ())
    }

    pub(crate) fn outbox_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.inner.outbox)
    }

    async fn send(&self, task: Task) -> Result<Written, DomainError> {
        let (reply, rx) = oneshot::channel();
        if self.inner.writer.send(WriteJob { task, reply }).is_err() {
            tracing::error!("the store's writer thread is gone");
            return Err(DomainError::Storage);
        }
        rx.await.map_err(|_| DomainError::Storage)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, DomainError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        match self.inner.readers.run(f).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "database read failed");
                Err(DomainError::Storage)
            }
            Err(e) => {
                tracing::error!(error = %e, "database read could not run");
                Err(DomainError::Storage)
            }
        }
    }
}

/// How long a connection waits for another's lock: long enough for
/// another instance's migrations at start-up.
const BUSY_TIMEOUT_MS: u32 = 5000;

fn configure_writer(conn: &Connection) -> rusqlite::Result<()> {
    // The busy timeout first: switching to WAL takes a lock that another
    // instance opening the same fresh file may hold.
    conn.execute_batch(&format!(
        "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS};
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA wal_autocheckpoint = 10000;
         PRAGMA cache_size = -{WRITER_CACHE_KIB};
         PRAGMA foreign_keys = ON;"
    ))
}

/// Applies the missing migrations in one `BEGIN IMMEDIATE` transaction:
/// it takes the write lock first and reads the schema version under it, so
/// instances starting together on a fresh file migrate one after the other
/// (the later ones find the work done) instead of each creating the tables.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_err)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(open_err)?;
    if version < 0 || version as usize > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            db: path.display().to_string(),
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    if version as usize == MIGRATIONS.len() {
        return Ok(());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql).map_err(open_err)?;
        tracing::info!(version = i + 1, "database migrated");
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
        .map_err(open_err)?;
    tx.commit().map_err(open_err)
}

/// The oldest events after position `after` that wait to be published.
fn read_pending(conn: &Connection, after: i64, limit: i64) -> rusqlite::Result<Vec<OutboxEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, event_type, answer, call_id_stack, context FROM write_log
         WHERE seq > ?1 AND event_type IS NOT NULL ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit], |r| {
        let payload: String = r.get(2)?;
        let stack: Option<String> = r.get(3)?;
        let context: Option<String> = r.get(4)?;
        outbox_event(
            r.get(0)?,
            r.get(1)?,
            &payload,
            stack.as_deref().unwrap_or("[]"),
            context.as_deref().unwrap_or("{}"),
        )
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })
    })?;
    rows.collect()
}

fn person_from_row(row: &Row<'_>) -> rusqlite::Result<Person> {
    Ok(Person {
        id: row.get(0)?,
        first_name: row.get(1)?,
        last_name: row.get(2)?,
        age: row.get(3)?,
        member: row.get(4)?,
    })
}

fn db_error(e: rusqlite::Error) -> DomainError {
    tracing::error!(error = %e, "database write failed");
    DomainError::Storage
}

/// A write waiting in the writer's batch, with its reply channel.
type Batched = (
    WriteOp,
    WriteMeta,
    oneshot::Sender<Result<Written, DomainError>>,
);

/// Each job's outcome, the events that went into the outbox, and
/// whether the held-back outbox deletes were committed.
type BatchOutcome = (Vec<Result<Written, DomainError>>, Vec<OutboxEvent>, bool);

/// How the writes of one batch are kept apart.
#[derive(Clone, Copy, Debug)]
enum Isolation {
    /// One transaction, nothing between the writes.
    Shared,
    /// A savepoint per write.
    Savepoints,
}

/// Why one write did not apply.
enum JobError {
    /// Refused without changing anything (the row is not there).
    Refused(DomainError),
    /// The database failed; part of the write may have been made.
    Database(rusqlite::Error),
}

impl From<rusqlite::Error> for JobError {
    fn from(e: rusqlite::Error) -> Self {
        JobError::Database(e)
    }
}

/// Runs a statement without parameters from the connection's statement
/// cache: the writer's `BEGIN`, `COMMIT` and savepoints are parsed once,
/// not once per transaction.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    outbox: Arc<Notify>,
    recent: Arc<Mutex<RecentEvents>>,
    /// The relay's position ([`Inner::relayed`]).
    relayed: Arc<AtomicI64>,
    request_ttl: Duration,
    last_prune: Option<Instant>,
}

impl Writer {
    /// Takes every job waiting, commits them together, then answers each.
    /// Outbox deletes are held back and committed with the next batch of
    /// writes (or after [`CLEAR_DELAY`] without one). Ends when every
    /// `Store` handle is gone.
    fn run(mut self, jobs: mpsc::Receiver<WriteJob>) {
        let mut pending_clear: Vec<i64> = Vec::new();
        loop {
            let first = if pending_clear.is_empty() {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            } else {
                match jobs.recv_timeout(CLEAR_DELAY) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.commit_clears(&mut pending_clear);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut batch = Vec::with_capacity(16);
            let mut flushes = Vec::new();
            for job in std::iter::once(first).chain(std::iter::from_fn(|| jobs.try_recv().ok())) {
                match job.task {
                    Task::ClearOutbox(ids) => {
                        pending_clear.extend(ids);
                        let _ = job.reply.send(Ok(Written::Cleared));
                    }
                    Task::Flush => flushes.push(job.reply),
                    Task::Write(op, meta) => batch.push((op, meta, job.reply)),
                }
                if batch.len() >= MAX_BATCH {
                    break;
                }
            }
            if batch.is_empty() {
                if !flushes.is_empty() {
                    self.commit_clears(&mut pending_clear);
                }
            } else {
                let (outcomes, events, cleared) = self.commit_batch(&batch, &pending_clear);
                if cleared {
                    pending_clear.clear();
                }
                if !events.is_empty() {
                    RecentEvents::lock(&self.recent).push(events);
                    self.outbox.notify_one();
                }
                for ((_, _, reply), outcome) in batch.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            for reply in flushes {
                let _ = reply.send(Ok(Written::Cleared));
            }
            self.prune_if_due();
        }
        self.commit_clears(&mut pending_clear);
        tracing::debug!("store writer stopped");
    }

    /// Commits the held-back outbox deletes on their own.
    fn commit_clears(&mut self, pending: &mut Vec<i64>) {
        if pending.is_empty() {
            return;
        }
        let result = run(&self.conn, "BEGIN IMMEDIATE")
            .and_then(|()| clear_published(&self.conn, pending))
            .and_then(|()| run(&self.conn, "COMMIT"));
        match result {
            Ok(()) => pending.clear(),
            Err(e) => {
                self.end_failed_transaction();
                tracing::warn!(error = %e, "removing published events failed; they may be published again")
            }
        }
    }

    /// Commits the batch, with the held-back outbox deletes; returns each
    /// job's outcome, whether any event went into the outbox, and whether
    /// the deletes were committed.
    ///
    /// First all in one transaction with nothing between the writes: a
    /// savepoint per write costs about a tenth of a create (its statements
    /// and the sub-journal it keeps), and writes almost never fail. A
    /// write that does fail with a database error may have left part of
    /// its change, so then the whole batch is rolled back and run again
    /// with a savepoint per write, which undoes the failing one alone. A
    /// redelivered request takes that path too (see [`Replays`]): the
    /// first attempt does not look requests up.
    fn commit_batch(&mut self, batch: &[Batched], clears: &[i64]) -> BatchOutcome {
        match self.try_batch(batch, clears, Isolation::Shared) {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::debug!(error = %e, writes = batch.len(), "a write in the batch failed; running it again with a savepoint per write");
                self.end_failed_transaction();
                match self.try_batch(batch, clears, Isolation::Savepoints) {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        self.end_failed_transaction();
                        tracing::error!(error = %e, writes = batch.len(), "database write transaction failed");
                        (
                            batch.iter().map(|_| Err(DomainError::Storage)).collect(),
                            Vec::new(),
                            false,
                        )
                    }
                }
            }
        }
    }

    /// One attempt at the batch. `Err` means nothing was committed and
    /// the transaction may still be open (see
    /// [`Writer::end_failed_transaction`]).
    fn try_batch(
        &mut self,
        batch: &[Batched],
        clears: &[i64],
        isolation: Isolation,
    ) -> rusqlite::Result<BatchOutcome> {
        let conn = &self.conn;
        run(conn, "BEGIN IMMEDIATE")?;
        let mut statements = Statements::new(conn, self.relayed.load(Ordering::Acquire));
        let now = unix_now();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        for (op, meta, _) in batch {
            let outcome = match isolation {
                Isolation::Shared => {
                    match apply_job(&mut statements, op, meta, now, Replays::OnConflict) {
                        Ok(applied) => Ok(applied),
                        // Nothing was changed: the row is not there.
                        Err(JobError::Refused(e)) => Err(e),
                        Err(JobError::Database(e)) => return Err(e),
                    }
                }
                Isolation::Savepoints => {
                    run(conn, "SAVEPOINT write")?;
                    match apply_job(&mut statements, op, meta, now, Replays::LookedUp) {
                        Ok(applied) => {
                            run(conn, "RELEASE write")?;
                            Ok(applied)
                        }
                        Err(e) => {
                            run(conn, "ROLLBACK TO write")?;
                            run(conn, "RELEASE write")?;
                            Err(match e {
                                JobError::Refused(e) => e,
                                JobError::Database(e) => db_error(e),
                            })
                        }
                    }
                }
            };
            outcomes.push(outcome.map(|(written, emitted)| {
                events.extend(emitted);
                written
            }));
        }
        // Back to the cache: nothing may hold a statement across the commit.
        drop(statements);
        // Housekeeping rides along. In the second attempt it gets a
        // savepoint too: if it fails the deletes wait for the next
        // transaction and the writes still commit.
        let cleared = if clears.is_empty() {
            false
        } else {
            match isolation {
                Isolation::Shared => {
                    clear_published(conn, clears)?;
                    true
                }
                Isolation::Savepoints => {
                    run(conn, "SAVEPOINT clear")?;
                    let deleted = clear_published(conn, clears).is_ok();
                    if !deleted {
                        run(conn, "ROLLBACK TO clear")?;
                    }
                    run(conn, "RELEASE clear")?;
                    deleted
                }
            }
        };
        run(conn, "COMMIT")?;
        Ok((outcomes, events, cleared))
    }

    /// Rolls back the transaction a failed attempt left open, if SQLite
    /// has not already done so.
    fn end_failed_transaction(&self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = run(&self.conn, "ROLLBACK") {
                tracing::error!(error = %e, "rolling back a failed write transaction failed");
            }
        }
    }

    fn prune_if_due(&mut self) {
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        let cutoff = expiry_cutoff(self.request_ttl);
        match prune(&mut self.conn, cutoff) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired request records removed"),
            Err(e) => tracing::warn!(error = %e, "removing expired request records failed"),
        }
    }
}

/// Removes the request records created at or before `cutoff`, in one
/// transaction; returns how many rows went.
fn prune(conn: &mut Connection, cutoff: i64) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Records are in time order: the expired ones are the rows before the
    // first one that is not (a clock that stepped back keeps a few a
    // little longer), found by walking from the front.
    let first_live: Option<i64> = tx.query_row(
        "SELECT coalesce(
            (SELECT seq FROM write_log WHERE created_at > ?1 ORDER BY seq LIMIT 1),
            (SELECT max(seq) FROM write_log) + 1)",
        params![cutoff],
        |r| r.get(0),
    )?;
    let Some(first_live) = first_live else {
        return Ok(0);
    };
    // Not a row whose event waits to be published, nor the newest row (see
    // migration 6): those stay, and stop answering for their requests.
    let removed = tx.execute(
        "DELETE FROM write_log WHERE seq < ?1 AND event_type IS NULL
            AND seq < (SELECT max(seq) FROM write_log)",
        params![first_live],
    )?;
    tx.execute(
        "UPDATE write_log SET request_id = NULL, method = NULL
         WHERE seq < ?1 AND request_id IS NOT NULL",
        params![first_live],
    )?;
    tx.commit()?;
    Ok(removed)
}

/// The writer's statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sql {
    InsertPerson,
    UpdatePerson,
    DeletePerson,
    LookUpRequest,
    InsertLog,
    DetachRequest,
    NextIds,
    RaisePersonHighWater,
}

impl Sql {
    /// One more than the last variant's index, checked below.
    const COUNT: usize = 8;

    fn text(self) -> &'static str {
        match self {
            // Without RETURNING: the row is exactly what was inserted, and
            // RETURNING costs SQLite a temporary table per insert.
            Sql::InsertPerson => {
                "INSERT INTO person (id, first_name, last_name, age, member) VALUES (?1, ?2, ?3, ?4, ?5)"
            }
            Sql::UpdatePerson => {
                "UPDATE person SET
                    first_name = coalesce(?2, first_name),
                    last_name  = coalesce(?3, last_name),
                    age        = coalesce(?4, age),
                    member     = coalesce(?5, member)
                 WHERE id = ?1
                 RETURNING id, first_name, last_name, age, member"
            }
            Sql::DeletePerson => "DELETE FROM person WHERE id = ?1",
            Sql::LookUpRequest => {
                "SELECT method, answer FROM write_log WHERE request_id = ?1"
            }
            // A request id already recorded fails this insert (UNIQUE):
            // see `Replays`.
            Sql::InsertLog => {
                "INSERT INTO write_log (seq, request_id, method, answer, event_type, call_id_stack, context, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            }
            // A correlation id reused by another request: the earlier
            // row stays (its event may not be published yet) without
            // answering for the id any more.
            Sql::DetachRequest => {
                "UPDATE write_log SET request_id = NULL, method = NULL WHERE request_id = ?1"
            }
            // `max(id)` of a rowid table is one step to its last row.
            Sql::NextIds => {
                "SELECT 1 + max(ifnull((SELECT max(id) FROM person), 0),
                                ifnull((SELECT last_id FROM high_water WHERE name = 'person'), 0)),
                        1 + ifnull((SELECT max(seq) FROM write_log), 0)"
            }
            Sql::RaisePersonHighWater => {
                "INSERT INTO high_water (name, last_id) VALUES ('person', ?1)
                 ON CONFLICT (name) DO UPDATE SET last_id = max(last_id, excluded.last_id)"
            }
        }
    }
}

const _: () = assert!(Sql::RaisePersonHighWater as usize + 1 == Sql::COUNT);

/// The statements one attempt at a batch uses, each taken from the
/// connection's cache the first time it is needed and kept to the end of
/// the attempt. `prepare_cached` hashes the SQL text and reorders the
/// cache both when a statement is taken and when it goes back: three
/// times per create when taken per write (BENCHMARKS.md, issue 12).
///
/// It also hands out the ids of the attempt's inserts, read once at the
/// first insert: the transaction holds the write lock, so no other
/// writer (thread or process) can take them meanwhile.
struct Statements<'c> {
    conn: &'c Connection,
    held: [Option<CachedStatement<'c>>; Sql::COUNT],
    next_ids: Option<NextIds>,
    /// The last event this process's relay published: the next event
    /// must come after it (the relay reads past it). The log's newest row
    /// is never removed, so its `max(seq)` is past it already; this is the
    /// second guard.
    relayed: i64,
}

/// The ids the attempt's next inserts take.
#[derive(Clone, Copy, Debug)]
struct NextIds {
    person: i64,
    log: i64,
}

/// A table whose ids the writer hands out.
#[derive(Clone, Copy, Debug)]
enum IdTable {
    Person,
    /// `write_log`: request records and events.
    Log,
}

impl<'c> Statements<'c> {
    fn new(conn: &'c Connection, relayed: i64) -> Self {
        Statements {
            conn,
            held: std::array::from_fn(|_| None),
            next_ids: None,
            relayed,
        }
    }

    /// The id for the next row of `table`.
    fn next_id(&mut self, table: IdTable) -> rusqlite::Result<i64> {
        let mut ids = match self.next_ids {
            Some(ids) => ids,
            None => {
                let relayed = self.relayed;
                self.get(Sql::NextIds)?.query_row([], |r| {
                    Ok(NextIds {
                        person: r.get(0)?,
                        log: r.get::<_, i64>(1)?.max(relayed + 1),
                    })
                })?
            }
        };
        let next = match table {
            IdTable::Person => &mut ids.person,
            IdTable::Log => &mut ids.log,
        };
        let id = *next;
        *next += 1;
        self.next_ids = Some(ids);
        Ok(id)
    }

    fn get(&mut self, sql: Sql) -> rusqlite::Result<&mut CachedStatement<'c>> {
        match &mut self.held[sql as usize] {
            Some(statement) => Ok(statement),
            slot @ None => Ok(slot.insert(self.conn.prepare_cached(sql.text())?)),
        }
    }
}

/// How a write finds out that its request was answered before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replays {
    /// Look the request up first; record the answer whatever was there.
    LookedUp,
    /// For a create: skip the lookup, and record the answer with a plain
    /// insert, which fails when a record exists: a redelivered request then
    /// fails the batch's first attempt, and the second attempt (a savepoint
    /// per write) looks it up. Redeliveries are rare; a lookup per create
    /// is an index probe each time.
    OnConflict,
}

/// Applies one write: replays a recorded answer, or makes the change,
/// records its event and its answer. Returns the event recorded.
fn apply_job(
    statements: &mut Statements<'_>,
    op: &WriteOp,
    meta: &WriteMeta,
    now: i64,
    replays: Replays,
) -> Result<(Written, Option<OutboxEvent>), JobError> {
    let method = op.method();
    // Only a create is sure to reach the insert that notices a replay: an
    // update or delete replayed after the row went is refused before it.
    let replays = match op {
        WriteOp::Create(_) => replays,
        WriteOp::Update(..) | WriteOp::Delete(_) => Replays::LookedUp,
    };
    let mut detach = false;
    if let (Some(request_id), Replays::LookedUp) = (&meta.request_id, replays) {
        let recorded: Option<(String, String)> = statements
            .get(Sql::LookUpRequest)?
            .query_row(params![request_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((recorded_method, response)) = recorded {
            if recorded_method == method {
                if let Some(written) = recorded_answer(method, &response) {
                    tracing::warn!(
                        request_id,
                        method,
                        "redelivered request: answering with the recorded result"
                    );
                    return Ok((written, None));
                }
            }
            tracing::warn!(
                request_id,
                method,
                recorded_method,
                "correlation id reused by a different request; applying it"
            );
            detach = true;
        }
    }
    let written = apply(statements, op)?;
    // The event's data is also the answer the request record keeps: one
    // row holds both.
    let event = op.event(&written);
    let pending = meta.event.as_ref().filter(|_| event.is_some());
    if meta.request_id.is_none() && pending.is_none() {
        return Ok((written, None));
    }
    if detach {
        statements
            .get(Sql::DetachRequest)?
            .execute(params![meta.request_id])?;
    }
    let seq = statements.next_id(IdTable::Log)?;
    let (stack, data) = match pending {
        Some(ctx) => {
            let (stack, data) = context_columns(ctx);
            (Some(stack), Some(data))
        }
        None => (None, None),
    };
    statements.get(Sql::InsertLog)?.execute(params![
        seq,
        meta.request_id,
        meta.request_id.as_ref().map(|_| method),
        answer_text(event.as_ref()),
        pending
            .and(event.as_ref())
            .map(|(event_type, _)| *event_type),
        stack,
        data,
        now
    ])?;
    let emitted = match (pending, event) {
        (Some(ctx), Some((event_type, body))) => Some(OutboxEvent {
            id: seq,
            event_type: Cow::Borrowed(event_type),
            body,
            context: Arc::clone(ctx),
        }),
        _ => None,
    };
    Ok((written, emitted))
}

/// Marks published events done: one range per run of consecutive ids (on
/// SQLite the relay publishes in id order, so usually one in all). A row
/// that is also a request record keeps its answer and loses the event's
/// columns; one that is not goes, unless it is the newest row, which keeps
/// `max(seq)` from going down (see migration 6).
fn clear_published(conn: &Connection, ids: &[i64]) -> rusqlite::Result<()> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut remove = conn.prepare_cached(
        "DELETE FROM write_log WHERE seq BETWEEN ?1 AND ?2 AND request_id IS NULL
            AND seq < (SELECT max(seq) FROM write_log)",
    )?;
    let mut clear = conn.prepare_cached(
        "UPDATE write_log SET event_type = NULL, call_id_stack = NULL, context = NULL
         WHERE seq BETWEEN ?1 AND ?2 AND event_type IS NOT NULL",
    )?;
    let mut rest = sorted.as_slice();
    while let Some(&first) = rest.first() {
        let run_len = rest
            .iter()
            .zip(first..)
            .take_while(|(id, expected)| **id == *expected)
            .count();
        let last = rest[run_len - 1];
        remove.execute(params![first, last])?;
        clear.execute(params![first, last])?;
        rest = &rest[run_len..];
    }
    Ok(())
}

fn apply(statements: &mut Statements<'_>, op: &WriteOp) -> Result<Written, JobError> {
    match op {
        WriteOp::Create(p) => {
            // Without RETURNING: the row is exactly what was inserted, and
            // RETURNING costs SQLite a temporary table per insert.
            let id = statements.next_id(IdTable::Person)?;
            statements.get(Sql::InsertPerson)?.execute(params![
                id,
                p.first_name,
                p.last_name,
                p.age,
                p.member
            ])?;
            Ok(Written::Person(Person {
                id,
                first_name: p.first_name.clone(),
                last_name: p.last_name.clone(),
                age: p.age,
                member: p.member,
            }))
        }
        WriteOp::Update(id, c) => {
            let person = statements
                .get(Sql::UpdatePerson)?
                .query_row(
                    params![id, c.first_name, c.last_name, c.age, c.member],
                    person_from_row,
                )
                .optional()?;
            person
                .map(Written::Person)
                .ok_or(JobError::Refused(DomainError::NotFound(*id)))
        }
        WriteOp::Delete(id) => {
            let n = statements.get(Sql::DeletePerson)?.execute(params![id])?;
            if n == 0 {
                Err(JobError::Refused(DomainError::NotFound(*id)))
            } else {
                statements
                    .get(Sql::RaisePersonHighWater)?
                    .execute(params![id])?;
                Ok(Written::Deleted(*id))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NewPerson;
    use crate::store::tests::{new, rpc};

    /// The first column of every row `sql` returns.
    fn column<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> Vec<T> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn reopening_does_not_migrate_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        drop(SqliteStore::open(&path, StoreOptions::default()).unwrap());
        drop(SqliteStore::open(&path, StoreOptions::default()).unwrap());
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn an_unusable_path_is_an_open_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = SqliteStore::open(dir.path(), StoreOptions::default())
            .err()
            .expect("a directory is not a database");
        assert!(
            matches!(&err, StoreError::Open { path, .. } if path == dir.path()),
            "{err}"
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            SqliteStore::open(&path, StoreOptions::default()),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    /// A database of schema 3 keeps its request records through migration
    /// 4: a redelivery of a request answered before the upgrade still gets
    /// its first answer, and expired records still go.
    #[tokio::test]
    async fn request_records_survive_the_move_to_insertion_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            conn.execute_batch(&format!(
                "INSERT INTO person (first_name, last_name, age, member) VALUES ('Ada', 'L', 36, 1);
                 INSERT INTO processed_request VALUES
                   ('old', 'create', '{{\"Person\":{{\"id\":1,\"first_name\":\"Ada\",\"last_name\":\"L\",\"age\":36,\"member\":true}}}}', 1),
                   ('kept', 'create', '{{\"Person\":{{\"id\":1,\"first_name\":\"Ada\",\"last_name\":\"L\",\"age\":36,\"member\":true}}}}', {now});",
                now = unix_now()
            ))
            .unwrap();
        }
        let store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        let replay = NewPerson {
            first_name: "Other".into(),
            last_name: "X".into(),
            age: 1,
            member: false,
        };
        let meta = WriteMeta {
            request_id: Some("kept".into()),
            event: None,
        };
        match store.write(WriteOp::Create(replay), meta).await.unwrap() {
            Written::Person(p) => assert_eq!((p.id, p.first_name.as_str()), (1, "Ada")),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(store.count().await.unwrap(), 1, "the replay wrote nothing");
        // The writer prunes after its first batch ('old', from 1970,
        // expires); a flush is answered after that.
        store.flush().await.unwrap();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let ids: Vec<String> = column(
            &conn,
            "SELECT request_id FROM write_log WHERE request_id IS NOT NULL ORDER BY seq",
        );
        assert_eq!(ids, vec!["kept".to_owned()]);
    }

    /// A batch runs without savepoints; a write that fails with a database
    /// error (here SQLite's CHECK, past the validation a real caller goes
    /// through) sends the batch round again with one savepoint per write,
    /// so that write fails alone and leaves nothing behind.
    #[test]
    fn a_write_failing_in_the_database_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        drop(SqliteStore::open(&path, StoreOptions::default()).unwrap());
        let conn = Connection::open(&path).unwrap();
        configure_writer(&conn).unwrap();
        let mut writer = Writer {
            conn,
            outbox: Arc::new(Notify::new()),
            recent: Arc::default(),
            relayed: Arc::default(),
            request_ttl: Duration::from_secs(60),
            last_prune: None,
        };
        let job = |age: i64| {
            let (reply, _) = oneshot::channel();
            let person = NewPerson {
                first_name: format!("Age{age}"),
                last_name: "L".into(),
                age,
                member: false,
            };
            let meta = WriteMeta {
                request_id: Some(format!("request-{age}")),
                event: Some(Default::default()),
            };
            (WriteOp::Create(person), meta, reply)
        };
        let batch = vec![
            job(1),
            job(200),
            job(3),
            (
                WriteOp::Delete(999),
                WriteMeta::default(),
                oneshot::channel().0,
            ),
        ];
        let (outcomes, events, _) = writer.commit_batch(&batch, &[]);
        let created: Vec<_> = events.iter().map(|e| e.data()["age"].clone()).collect();
        assert_eq!(created, vec![serde_json::json!(1), serde_json::json!(3)]);
        let ages: Vec<_> = outcomes
            .iter()
            .map(|o| match o {
                Ok(Written::Person(p)) => Ok(p.age),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => Err(e.to_string()),
            })
            .collect();
        assert_eq!(
            ages,
            vec![
                Ok(1),
                Err(DomainError::Storage.to_string()),
                Ok(3),
                Err(DomainError::NotFound(999).to_string())
            ]
        );
        let count = |sql: &str| -> i64 { writer.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT count(*) FROM person"), 2);
        assert_eq!(
            count("SELECT count(*) FROM write_log WHERE event_type IS NOT NULL"),
            2
        );
        assert_eq!(
            count("SELECT count(*) FROM write_log WHERE request_id IN ('request-1', 'request-3')"),
            2
        );
        assert_eq!(count("SELECT count(*) FROM write_log"), 2);
        assert!(writer.conn.is_autocommit(), "no transaction left open");
    }

    /// The relay takes events from memory only while memory holds every
    /// one it has not published; otherwise from the table. Either way it
    /// gets what the table holds.
    #[tokio::test]
    async fn the_relay_takes_committed_events_from_memory_or_else_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("p.db"), StoreOptions::default()).unwrap();
        let meta = || WriteMeta {
            request_id: None,
            event: Some(Arc::new(rpc_core::Propagated {
                call_id_stack: vec!["caller.call-1".into()],
                data: Default::default(),
            })),
        };
        let create = |n: i64| {
            let person = NewPerson {
                first_name: format!("P{n}"),
                last_name: "L".into(),
                age: n,
                member: false,
            };
            store.write(WriteOp::Create(person), meta())
        };
        let ages = |claim: &OutboxClaim| -> Vec<i64> {
            claim
                .events()
                .iter()
                .map(|e| e.data()["age"].as_i64().unwrap())
                .collect()
        };
        for n in 1..=3 {
            create(n).await.unwrap();
        }
        // At start memory vouches for nothing: the table is read.
        assert_eq!(store.recent().complete_after, None);
        let first = store.claim_outbox(10).await.unwrap();
        assert_eq!(ages(&first), vec![1, 2, 3]);
        let table = store.outbox_after(0, 10).await.unwrap();
        assert_eq!(first.events(), table.as_slice());
        first.finish(1).await.unwrap();
        // Two were not published: they come again, from the table.
        let again = store.claim_outbox(10).await.unwrap();
        assert_eq!(ages(&again), vec![2, 3]);
        again.finish(2).await.unwrap();
        // Caught up: new events come from memory, exactly as stored.
        create(4).await.unwrap();
        create(5).await.unwrap();
        assert!(store.recent().complete_after.is_some());
        let from_memory = store.claim_outbox(10).await.unwrap();
        assert!(store.recent().events.is_empty(), "taken from memory");
        let after = table.last().unwrap().id;
        assert_eq!(
            from_memory.events(),
            store.outbox_after(after, 10).await.unwrap().as_slice()
        );
        assert_eq!(ages(&from_memory), vec![4, 5]);
        // A failed publish: memory no longer has them, the table does.
        from_memory.finish(0).await.unwrap();
        let retried = store.claim_outbox(10).await.unwrap();
        assert_eq!(ages(&retried), vec![4, 5]);
        retried.finish(2).await.unwrap();
        assert!(store.claim_outbox(10).await.unwrap().is_empty());
    }

    /// Once every event has been published and removed, the next one
    /// still gets a higher id than any before it: the relay reads after
    /// the last id it published, and would pass over a reused one.
    #[tokio::test]
    async fn outbox_ids_keep_rising_after_the_outbox_empties() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        let meta = || WriteMeta {
            request_id: None,
            event: Some(Default::default()),
        };
        let create = |n: i64| {
            store.write(
                WriteOp::Create(NewPerson {
                    first_name: format!("P{n}"),
                    last_name: "L".into(),
                    age: n,
                    member: false,
                }),
                meta(),
            )
        };
        create(1).await.unwrap();
        create(2).await.unwrap();
        let published = store.claim_outbox(10).await.unwrap();
        let last = published.events().last().unwrap().id;
        published.finish(2).await.unwrap();
        store.flush().await.unwrap();
        let conn = Connection::open(&path).unwrap();
        assert!(column::<i64>(
            &conn,
            "SELECT seq FROM write_log WHERE event_type IS NOT NULL"
        )
        .is_empty());
        // Without request records the rows go, all but the newest.
        assert_eq!(
            column::<i64>(&conn, "SELECT seq FROM write_log"),
            vec![last]
        );
        create(3).await.unwrap();
        let next = store.claim_outbox(10).await.unwrap();
        let ids: Vec<i64> = next.events().iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), 1, "the new event is claimed: {ids:?}");
        assert!(ids[0] > last, "{} after {last}", ids[0]);
        assert_eq!(
            column::<i64>(
                &conn,
                "SELECT seq FROM write_log WHERE event_type IS NOT NULL"
            ),
            ids
        );
    }

    /// A database of schema 4 (AUTOINCREMENT) keeps its rows and ids
    /// through migration 5, and the id of a person deleted at the top,
    /// which only `sqlite_sequence` remembered, is not reused. Events
    /// waiting in the outbox stay, and a new one goes after them.
    #[tokio::test]
    async fn ids_deleted_before_the_move_off_autoincrement_stay_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..4] {
                tx.execute_batch(sql).unwrap();
            }
            tx.execute_batch(
                "INSERT INTO person (first_name, last_name, age, member) VALUES
                    ('Ada', 'L', 36, 1), ('Bo', 'M', 40, 0), ('Cy', 'N', 50, 0);
                 DELETE FROM person WHERE id = 3;
                 INSERT INTO event_outbox (event_type, payload, call_id_stack, context, created_at)
                    VALUES ('person_created', '{}', '[]', '{}', 0), ('person_created', '{}', '[]', '{}', 0);
                 DELETE FROM event_outbox WHERE id = 2;
                 PRAGMA user_version = 4;",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        let conn = Connection::open(&path).unwrap();
        assert_eq!(
            column::<String>(&conn, "SELECT first_name FROM person ORDER BY id"),
            vec!["Ada", "Bo"]
        );
        assert_eq!(
            column::<i64>(
                &conn,
                "SELECT seq FROM write_log WHERE event_type IS NOT NULL"
            ),
            vec![1]
        );
        let written = store
            .write(
                WriteOp::Create(NewPerson {
                    first_name: "Di".into(),
                    last_name: "O".into(),
                    age: 20,
                    member: false,
                }),
                WriteMeta {
                    request_id: None,
                    event: Some(Default::default()),
                },
            )
            .await
            .unwrap();
        assert!(
            matches!(written, Written::Person(ref p) if p.id == 4),
            "{written:?}"
        );
        let events = store.claim_outbox(10).await.unwrap();
        let people: Vec<Option<i64>> = events
            .events()
            .iter()
            .map(|e| e.data().get("id").and_then(|id| id.as_i64()))
            .collect();
        assert_eq!(
            people,
            vec![None, Some(4)],
            "the old event first, then the new"
        );
        // AUTOINCREMENT is gone: nothing writes sqlite_sequence any more.
        assert_eq!(
            column::<i64>(
                &conn,
                "SELECT count(*) FROM sqlite_master WHERE sql LIKE '%AUTOINCREMENT%'"
            ),
            vec![0]
        );
    }

    /// Overflowing memory makes the relay read the table again, even a
    /// read that started before the overflow.
    #[test]
    fn overflowing_memory_vouches_for_nothing() {
        let event = |id| OutboxEvent {
            id,
            event_type: "e".into(),
            body: b"null".to_vec(),
            context: Default::default(),
        };
        let mut recent = RecentEvents {
            complete_after: Some(0),
            ..RecentEvents::default()
        };
        recent.push((1..=10).map(event).collect());
        assert_eq!(recent.events.len(), 10);
        let epoch = recent.epoch;
        recent.push((11..=11 + RECENT_EVENTS as i64).map(event).collect());
        assert!(recent.events.is_empty());
        assert_eq!(recent.complete_after, None);
        assert_ne!(recent.epoch, epoch);
        recent.push(vec![event(5000)]);
        recent.forget_through(4999);
        assert_eq!(recent.events.len(), 1);
    }

    /// Published events are marked done in runs of consecutive ids. A row
    /// that is also a request record stays, without its event; the newest
    /// row stays too, so positions never go down.
    #[test]
    fn published_events_are_cleared_in_runs_of_ids() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        for seq in 1..=10 {
            let request = [3, 7].contains(&seq).then(|| format!("request-{seq}"));
            conn.execute(
                "INSERT INTO write_log (seq, request_id, method, answer, event_type, call_id_stack, context, created_at)
                 VALUES (?1, ?2, CASE WHEN ?2 IS NULL THEN NULL ELSE 'create' END, '{}', 'e', '[]', '{}', 0)",
                params![seq, request],
            )
            .unwrap();
        }
        clear_published(&conn, &[7, 2, 3, 9, 3, 4, 10]).unwrap();
        let left: Vec<i64> = column(&conn, "SELECT seq FROM write_log ORDER BY seq");
        assert_eq!(left, vec![1, 3, 5, 6, 7, 8, 10]);
        let pending: Vec<i64> = column(
            &conn,
            "SELECT seq FROM write_log WHERE event_type IS NOT NULL ORDER BY seq",
        );
        assert_eq!(pending, vec![1, 5, 6, 8]);
        let cleared: Vec<i64> = column(
            &conn,
            "SELECT count(*) FROM write_log
             WHERE seq IN (3, 7, 10) AND call_id_stack IS NULL AND context IS NULL AND answer = '{}'",
        );
        assert_eq!(cleared, vec![3], "the records keep their answers");
    }

    /// Creates a person whose age (and name, `P{age}`) tells it apart.
    async fn create_aged(
        store: &SqliteStore,
        age: i64,
        meta: WriteMeta,
    ) -> Result<Written, DomainError> {
        store
            .write(WriteOp::Create(new(&format!("P{age}"), age)), meta)
            .await
    }

    /// An RPC write's metadata without an event: a request record alone.
    fn record_only(n: i64) -> WriteMeta {
        WriteMeta {
            event: None,
            ..rpc(&format!("request-{n}"))
        }
    }

    /// A request record whose event is published still answers its
    /// redelivery. Expired records go, but a row whose event still waits
    /// (or the newest row) stays, no longer answering for its request.
    #[tokio::test]
    async fn a_request_record_outlives_its_event_and_expires_after_it_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        async fn create(store: &SqliteStore, request: &str, age: i64) -> Written {
            create_aged(store, age, rpc(request)).await.unwrap()
        }
        let store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        for (n, request) in ["a", "b", "c"].iter().enumerate() {
            create(&store, request, n as i64 + 1).await;
        }
        let claim = store.claim_outbox(10).await.unwrap();
        assert_eq!(claim.events().len(), 3);
        claim.finish(1).await.unwrap();
        store.flush().await.unwrap();
        // "a"'s event is published; its record still answers.
        match create(&store, "a", 99).await {
            Written::Person(p) => assert_eq!(p.age, 1, "the first answer"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(store.count().await.unwrap(), 3, "the replay wrote nothing");
        drop(store);
        // Everything is a day old: only the published record may go.
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE write_log SET created_at = 0", [])
            .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        store.flush().await.unwrap();
        create(&store, "d", 4).await;
        store.flush().await.unwrap();
        let conn = Connection::open(&path).unwrap();
        let left: Vec<(i64, Option<String>)> = conn
            .prepare("SELECT seq, request_id FROM write_log ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            left,
            vec![(2, None), (3, None), (4, Some("d".into()))],
            "all three expired: a went, b and c wait to be published and answer no more"
        );
        let pending = store.claim_outbox(10).await.unwrap();
        let ages: Vec<i64> = pending
            .events()
            .iter()
            .map(|e| e.data()["age"].as_i64().unwrap())
            .collect();
        assert_eq!(ages, vec![2, 3, 4]);
    }

    /// A correlation id reused by a different request is applied; the
    /// earlier row keeps its event for the relay, and the id answers for
    /// the later request.
    #[tokio::test]
    async fn a_reused_correlation_id_keeps_the_earlier_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("p.db"), StoreOptions::default()).unwrap();
        let meta = || rpc("same");
        let Written::Person(created) = create_aged(&store, 36, meta()).await.unwrap() else {
            panic!("a create answers with the person")
        };
        let deleted = store
            .write(WriteOp::Delete(created.id), meta())
            .await
            .unwrap();
        assert!(matches!(deleted, Written::Deleted(id) if id == created.id));
        let again = store
            .write(WriteOp::Delete(created.id), meta())
            .await
            .unwrap();
        assert!(
            matches!(again, Written::Deleted(id) if id == created.id),
            "the delete's redelivery gets its answer: {again:?}"
        );
        let claim = store.claim_outbox(10).await.unwrap();
        let types: Vec<&str> = claim.events().iter().map(|e| &*e.event_type).collect();
        assert_eq!(types, vec!["person_created", "person_deleted"]);
    }

    /// The relay's first read finds nothing waiting among a log of request
    /// records, and later reads start after them.
    #[tokio::test]
    async fn a_read_that_finds_nothing_moves_the_relay_past_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("p.db"), StoreOptions::default()).unwrap();
        for n in 0..5 {
            create_aged(&store, n, record_only(n)).await.unwrap();
        }
        assert_eq!(store.inner.relayed.load(Ordering::Acquire), 0);
        assert!(store.claim_outbox(10).await.unwrap().is_empty());
        assert_eq!(store.inner.relayed.load(Ordering::Acquire), 5);
        assert_eq!(store.recent().complete_after, Some(5));
    }

    /// A read that finds events moves the relay to just before the first:
    /// when publishing them fails (a broker outage), the next read starts
    /// there instead of at the front of the log.
    #[tokio::test]
    async fn a_failed_publish_reads_again_from_the_first_waiting_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        for n in 1..=4 {
            create_aged(&store, n, record_only(n)).await.unwrap();
        }
        for n in 5..=6 {
            create_aged(&store, n, rpc(&format!("request-{n}")))
                .await
                .unwrap();
        }
        drop(store);
        // A new process: memory vouches for nothing, the table is read.
        let store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        let claim = store.claim_outbox(10).await.unwrap();
        let ids: Vec<i64> = claim.events().iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![5, 6]);
        assert_eq!(store.inner.relayed.load(Ordering::Acquire), 4);
        claim.finish(0).await.unwrap();
        let again = store.claim_outbox(10).await.unwrap();
        let ids: Vec<i64> = again.events().iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![5, 6], "nothing skipped");
        again.finish(2).await.unwrap();
        assert!(store.claim_outbox(10).await.unwrap().is_empty());
    }

    /// Before migrations ran under `BEGIN IMMEDIATE`, two instances opening
    /// a fresh file together failed with `table person already exists`.
    #[test]
    fn stores_opened_together_on_a_fresh_file_all_open() {
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.db");
            let barrier = Arc::new(std::sync::Barrier::new(6));
            let threads: Vec<_> = (0..6)
                .map(|_| {
                    let (path, barrier) = (path.clone(), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        SqliteStore::open(&path, StoreOptions::default()).map(drop)
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap().expect("every store opens");
            }
            let conn = Connection::open(&path).unwrap();
            let v: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(v as usize, MIGRATIONS.len());
            let tables: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'
                     AND name IN ('person', 'write_log', 'high_water')",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(tables, 3);
        }
    }
}
