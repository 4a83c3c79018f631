//! The SQLite store.
//!
//! All blocking database work runs off the async executor. One writer
//! thread owns the only writing connection and commits every write waiting
//! for it in one transaction (group commit): with `synchronous=FULL` each
//! commit costs an fsync, so sharing one among many concurrent writes is
//! what makes durable writes fast. Each write runs in its own savepoint, so
//! one failing write does not undo the others in its batch. Reads use a
//! small pool of other connections; WAL mode lets them run beside the
//! writer.
//!
//! Two records are kept in the same transaction as each change:
//! * its event, in `event_outbox`, which [`crate::outbox`] publishes and
//!   then deletes: an event is never lost between the commit and the
//!   publish, even if the process dies there;
//! * for an RPC request, its correlation id and answer, in
//!   `processed_request`: a request redelivered after a crash (committed but
//!   not acked) gets the first answer back instead of writing again. These
//!   records expire after a bounded time (24 h by default).
//!
//! Durability: `journal_mode=WAL` with `synchronous=FULL` syncs the WAL on
//! every commit, so a write that has been answered survives a crash of the
//! process and of the machine.

use crate::domain::{DomainError, NewPerson, Page, Person, PersonChanges};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, Notify, Semaphore};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// Read connections in the pool: as many as reads can run at once on the
/// machines this targets; each holds its own page cache.
const READERS: usize = 2;
/// Page cache of each reader, in KiB (SQLite's default is 2,000): the OS
/// caches the file too, so a small cache costs little and saves memory.
const READER_CACHE_KIB: i64 = 512;
/// Longest an outbox delete waits for a write transaction to ride along.
const CLEAR_DELAY: Duration = Duration::from_secs(1);
/// How often the writer removes expired request records.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run.
const MIGRATIONS: &[&str] = &[
    // 1: people. AUTOINCREMENT so that an id is never reused after a delete.
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
];

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused to open or migrate the file.
    #[error("cannot open the database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file has a newer schema than this build knows.
    #[error("the database {path} has schema version {found}; this build knows up to {known}")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        known: usize,
    },
}

/// Store settings.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How long the answer of a write request is kept for redeliveries.
    pub request_ttl: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            request_ttl: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// What a write leaves besides the change itself.
#[derive(Clone, Debug, Default)]
pub struct WriteMeta {
    /// The request's correlation id, when it came over RPC: a redelivered
    /// request with the same id gets the first answer back.
    pub request_id: Option<String>,
    /// The context the change's event carries; `None` emits no event.
    pub event: Option<EventContext>,
}

/// The call context an event is sent with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventContext {
    /// Call-id stack of the call that made the change.
    pub call_id_stack: Vec<String>,
    /// Its context data.
    pub data: BTreeMap<String, Value>,
}

/// An event waiting in the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEvent {
    /// Position in the outbox (commit order).
    pub id: i64,
    /// `person_created`, `person_updated` or `person_deleted`.
    pub event_type: String,
    /// The event's data.
    pub payload: Value,
    /// The context it is sent with.
    pub context: EventContext,
}

/// The outcome of a write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Written {
    /// The person as stored after a create or update.
    Person(Person),
    /// The id deleted.
    Deleted(i64),
    /// Outbox rows removed.
    Cleared,
}

/// A write, with the channel its outcome goes back on.
struct WriteJob {
    op: WriteOp,
    meta: WriteMeta,
    reply: oneshot::Sender<Result<Written, DomainError>>,
}

enum WriteOp {
    Create(NewPerson),
    Update(i64, PersonChanges),
    Delete(i64),
    ClearOutbox(Vec<i64>),
    Flush,
}

impl WriteOp {
    fn method(&self) -> &'static str {
        match self {
            WriteOp::Create(_) => "create",
            WriteOp::Update(..) => "update",
            WriteOp::Delete(_) => "delete",
            WriteOp::ClearOutbox(_) => "clear_outbox",
            WriteOp::Flush => "flush",
        }
    }
}

/// The person store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    writer: mpsc::Sender<WriteJob>,
    readers: Mutex<Vec<Connection>>,
    read_slots: Semaphore,
    path: PathBuf,
    outbox: Arc<Notify>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens with default options; see [`Store::open_with`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens (creating if needed) and migrates the database, and starts the
    /// writer thread. Blocking: call it from `spawn_blocking` or at start-up.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut writer = Connection::open(path).map_err(open_err)?;
        configure_writer(&writer).map_err(open_err)?;
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
        let outbox = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel();
        let writer_state = Writer {
            conn: writer,
            outbox: Arc::clone(&outbox),
            request_ttl: options.request_ttl,
            last_prune: None,
        };
        std::thread::Builder::new()
            .name("person-store-writer".into())
            .spawn(move || writer_state.run(rx))
            .map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        Ok(Store {
            inner: Arc::new(Inner {
                writer: tx,
                readers: Mutex::new(readers),
                read_slots: Semaphore::new(READERS),
                path: path.to_owned(),
                outbox,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stores a new person and returns it with its id.
    pub async fn create(&self, person: NewPerson, meta: WriteMeta) -> Result<Person, DomainError> {
        match self.write(WriteOp::Create(person), meta).await? {
            Written::Person(p) => Ok(p),
            _ => Err(DomainError::Storage),
        }
    }

    /// Changes the given fields and returns the updated person. No changes
    /// at all is a read, and emits no event.
    pub async fn update(
        &self,
        id: i64,
        changes: PersonChanges,
        meta: WriteMeta,
    ) -> Result<Person, DomainError> {
        if changes.is_empty() {
            return self.get(id).await;
        }
        match self.write(WriteOp::Update(id, changes), meta).await? {
            Written::Person(p) => Ok(p),
            _ => Err(DomainError::Storage),
        }
    }

    /// Deletes a person.
    pub async fn delete(&self, id: i64, meta: WriteMeta) -> Result<(), DomainError> {
        self.write(WriteOp::Delete(id), meta).await.map(|_| ())
    }

    /// One person.
    pub async fn get(&self, id: i64) -> Result<Person, DomainError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, first_name, last_name, age, member FROM person WHERE id = ?1",
            )?
            .query_row(params![id], person_from_row)
            .optional()
        })
        .await?
        .ok_or(DomainError::NotFound(id))
    }

    /// People in id order, one page of them.
    pub async fn list(&self, page: Page) -> Result<Vec<Person>, DomainError> {
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

    /// Number of people stored.
    pub async fn count(&self) -> Result<i64, DomainError> {
        self.read(|conn| conn.query_row("SELECT count(*) FROM person", [], |r| r.get(0)))
            .await
    }

    /// Whether a read goes through (for health checks).
    pub async fn check(&self) -> Result<(), DomainError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }

    /// The oldest events in the outbox, at most `limit`.
    pub async fn outbox(&self, limit: usize) -> Result<Vec<OutboxEvent>, DomainError> {
        self.outbox_after(0, limit).await
    }

    /// The oldest events in the outbox after position `after_id` (a relay
    /// passes the last one it published: deleting published events is
    /// deferred, see [`Store::clear_outbox`]).
    pub async fn outbox_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, DomainError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, event_type, payload, call_id_stack, context FROM event_outbox
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after_id, limit], |r| {
                let text = |i: usize| -> rusqlite::Result<Value> {
                    let s: String = r.get(i)?;
                    serde_json::from_str(&s).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            i,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })
                };
                Ok(OutboxEvent {
                    id: r.get(0)?,
                    event_type: r.get(1)?,
                    payload: text(2)?,
                    context: EventContext {
                        call_id_stack: serde_json::from_value(text(3)?).unwrap_or_default(),
                        data: serde_json::from_value(text(4)?).unwrap_or_default(),
                    },
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Removes published events from the outbox, lazily: the deletes are
    /// committed with the next write transaction (or within a second when
    /// none comes), so publishing an event does not cost a sync of its own.
    /// Until then the rows are still there; if the process dies first they
    /// are published again at the next start (events are at least once).
    pub async fn clear_outbox(&self, ids: Vec<i64>) -> Result<(), DomainError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(WriteOp::ClearOutbox(ids), WriteMeta::default())
            .await
            .map(|_| ())
    }

    /// Commits any deferred outbox deletes now (at shutdown).
    pub async fn flush(&self) -> Result<(), DomainError> {
        self.write(WriteOp::Flush, WriteMeta::default())
            .await
            .map(|_| ())
    }

    /// Notified after each commit that put events in the outbox.
    pub fn outbox_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.inner.outbox)
    }

    async fn write(&self, op: WriteOp, meta: WriteMeta) -> Result<Written, DomainError> {
        let (reply, rx) = oneshot::channel();
        if self
            .inner
            .writer
            .send(WriteJob { op, meta, reply })
            .is_err()
        {
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
        let _slot = self
            .inner
            .read_slots
            .acquire()
            .await
            .map_err(|_| DomainError::Storage)?;
        let inner = Arc::clone(&self.inner);
        let result = tokio::task::spawn_blocking(move || {
            // The semaphore guarantees a free connection.
            let conn = inner.readers.lock().ok()?.pop()?;
            let result = f(&conn);
            if let Ok(mut pool) = inner.readers.lock() {
                pool.push(conn);
            }
            Some(result)
        })
        .await;
        match result {
            Ok(Some(Ok(value))) => Ok(value),
            Ok(Some(Err(e))) => {
                tracing::error!(error = %e, "database read failed");
                Err(DomainError::Storage)
            }
            Ok(None) | Err(_) => {
                tracing::error!("database read could not run");
                Err(DomainError::Storage)
            }
        }
    }
}

fn configure_writer(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA wal_autocheckpoint = 10000;
         PRAGMA busy_timeout = 5000;
         PRAGMA foreign_keys = ON;",
    )
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(open_err)?;
    if version as usize > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction().map_err(open_err)?;
        tx.execute_batch(sql).map_err(open_err)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(open_err)?;
        tx.commit().map_err(open_err)?;
        tracing::info!(version = i + 1, "database migrated");
    }
    Ok(())
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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn db_error(e: rusqlite::Error) -> DomainError {
    tracing::error!(error = %e, "database write failed");
    DomainError::Storage
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    outbox: Arc<Notify>,
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
                match job.op {
                    WriteOp::ClearOutbox(ids) => {
                        pending_clear.extend(ids);
                        let _ = job.reply.send(Ok(Written::Cleared));
                    }
                    WriteOp::Flush => flushes.push(job.reply),
                    _ => batch.push(job),
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
                if events {
                    self.outbox.notify_one();
                }
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = job.reply.send(outcome);
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
        let result = self.conn.transaction().and_then(|tx| {
            delete_outbox(&tx, pending)?;
            tx.commit()
        });
        match result {
            Ok(()) => pending.clear(),
            Err(e) => {
                tracing::warn!(error = %e, "removing published events failed; they may be published again")
            }
        }
    }

    /// Commits the batch, with the held-back outbox deletes; returns each
    /// job's outcome, whether any event went into the outbox, and whether
    /// the deletes were committed.
    fn commit_batch(
        &mut self,
        batch: &[WriteJob],
        clears: &[i64],
    ) -> (Vec<Result<Written, DomainError>>, bool, bool) {
        let all_failed = |e: rusqlite::Error| {
            tracing::error!(error = %e, writes = batch.len(), "database write transaction failed");
            (
                batch.iter().map(|_| Err(DomainError::Storage)).collect(),
                false,
                false,
            )
        };
        let mut tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => return all_failed(e),
        };
        let now = unix_now();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut events = false;
        for job in batch {
            let outcome = match tx.savepoint() {
                Ok(mut sp) => match apply_job(&sp, job, now) {
                    Ok((written, emitted)) => match sp.commit() {
                        Ok(()) => {
                            events |= emitted;
                            Ok(written)
                        }
                        Err(e) => Err(db_error(e)),
                    },
                    Err(e) => {
                        let _ = sp.rollback();
                        Err(e)
                    }
                },
                Err(e) => Err(db_error(e)),
            };
            outcomes.push(outcome);
        }
        // Housekeeping rides along; if it fails the deletes wait for the
        // next transaction and the writes still commit.
        let cleared = !clears.is_empty()
            && match tx.savepoint() {
                Ok(sp) => delete_outbox(&sp, clears).is_ok() && sp.commit().is_ok(),
                Err(_) => false,
            };
        match tx.commit() {
            Ok(()) => (outcomes, events, cleared),
            Err(e) => all_failed(e),
        }
    }

    fn prune_if_due(&mut self) {
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        let cutoff = unix_now() - i64::try_from(self.request_ttl.as_secs()).unwrap_or(i64::MAX);
        match self.conn.execute(
            "DELETE FROM processed_request WHERE created_at <= ?1",
            params![cutoff],
        ) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired request records removed"),
            Err(e) => tracing::warn!(error = %e, "removing expired request records failed"),
        }
    }
}

/// Applies one job inside its savepoint: replays a recorded answer, or
/// makes the change, records its event and its answer. Returns whether an
/// event was recorded.
fn apply_job(conn: &Connection, job: &WriteJob, now: i64) -> Result<(Written, bool), DomainError> {
    let method = job.op.method();
    if let Some(request_id) = &job.meta.request_id {
        let recorded: Option<(String, String)> = conn
            .prepare_cached("SELECT method, response FROM processed_request WHERE request_id = ?1")
            .and_then(|mut s| {
                s.query_row(params![request_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(db_error)?;
        if let Some((recorded_method, response)) = recorded {
            if recorded_method == method {
                if let Ok(written) = serde_json::from_str::<Written>(&response) {
                    tracing::warn!(
                        request_id,
                        method,
                        "redelivered request: answering with the recorded result"
                    );
                    return Ok((written, false));
                }
            }
            tracing::warn!(
                request_id,
                method,
                recorded_method,
                "correlation id reused by a different request; applying it"
            );
        }
    }
    let written = apply(conn, &job.op)?;
    let mut emitted = false;
    if let Some(ctx) = &job.meta.event {
        let event = match (&job.op, &written) {
            (WriteOp::Create(_), Written::Person(p)) => Some((
                "person_created",
                serde_json::to_value(p).unwrap_or(Value::Null),
            )),
            (WriteOp::Update(..), Written::Person(p)) => Some((
                "person_updated",
                serde_json::to_value(p).unwrap_or(Value::Null),
            )),
            (_, Written::Deleted(id)) => Some(("person_deleted", serde_json::json!({ "id": id }))),
            _ => None,
        };
        if let Some((event_type, payload)) = event {
            conn.prepare_cached(
                "INSERT INTO event_outbox (event_type, payload, call_id_stack, context, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    event_type,
                    payload.to_string(),
                    serde_json::to_string(&ctx.call_id_stack).unwrap_or_else(|_| "[]".into()),
                    serde_json::to_string(&ctx.data).unwrap_or_else(|_| "{}".into()),
                    now
                ])
            })
            .map_err(db_error)?;
            emitted = true;
        }
    }
    if let Some(request_id) = &job.meta.request_id {
        let response = serde_json::to_string(&written).map_err(|_| DomainError::Storage)?;
        conn.prepare_cached(
            "INSERT OR REPLACE INTO processed_request (request_id, method, response, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| s.execute(params![request_id, method, response, now]))
        .map_err(db_error)?;
    }
    Ok((written, emitted))
}

fn delete_outbox(conn: &Connection, ids: &[i64]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("DELETE FROM event_outbox WHERE id = ?1")?;
    for id in ids {
        stmt.execute(params![id])?;
    }
    Ok(())
}

fn apply(conn: &Connection, op: &WriteOp) -> Result<Written, DomainError> {
    match op {
        WriteOp::Create(p) => {
            let person = conn
                .prepare_cached(
                    "INSERT INTO person (first_name, last_name, age, member) VALUES (?1, ?2, ?3, ?4)
                     RETURNING id, first_name, last_name, age, member",
                )
                .and_then(|mut s| s.query_row(params![p.first_name, p.last_name, p.age, p.member], person_from_row))
                .map_err(db_error)?;
            Ok(Written::Person(person))
        }
        WriteOp::Update(id, c) => {
            let person = conn
                .prepare_cached(
                    "UPDATE person SET
                        first_name = coalesce(?2, first_name),
                        last_name  = coalesce(?3, last_name),
                        age        = coalesce(?4, age),
                        member     = coalesce(?5, member)
                     WHERE id = ?1
                     RETURNING id, first_name, last_name, age, member",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![id, c.first_name, c.last_name, c.age, c.member],
                        person_from_row,
                    )
                    .optional()
                })
                .map_err(db_error)?;
            person
                .map(Written::Person)
                .ok_or(DomainError::NotFound(*id))
        }
        WriteOp::Delete(id) => {
            let n = conn
                .prepare_cached("DELETE FROM person WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id]))
                .map_err(db_error)?;
            if n == 0 {
                Err(DomainError::NotFound(*id))
            } else {
                Ok(Written::Deleted(*id))
            }
        }
        WriteOp::ClearOutbox(_) | WriteOp::Flush => Ok(Written::Cleared),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(first: &str, age: i64) -> NewPerson {
        NewPerson::new(first.into(), "Test".into(), age, false).unwrap()
    }

    fn none() -> WriteMeta {
        WriteMeta::default()
    }

    #[tokio::test]
    async fn crud_and_paging_on_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db")).unwrap();
        let a = store.create(new("Ada", 36), none()).await.unwrap();
        let b = store.create(new("Bob", 40), none()).await.unwrap();
        assert!(b.id > a.id);
        assert_eq!(store.get(a.id).await.unwrap(), a);
        let changed = store
            .update(
                a.id,
                PersonChanges::new(None, None, Some(37), Some(true)).unwrap(),
                none(),
            )
            .await
            .unwrap();
        assert_eq!(
            (changed.age, changed.member, changed.first_name.as_str()),
            (37, true, "Ada")
        );
        assert_eq!(
            store.list(Page::default()).await.unwrap(),
            vec![changed.clone(), b.clone()]
        );
        assert_eq!(
            store
                .list(Page::new(Some(1), Some(a.id)).unwrap())
                .await
                .unwrap(),
            vec![b.clone()]
        );
        store.delete(a.id, none()).await.unwrap();
        assert_eq!(store.get(a.id).await, Err(DomainError::NotFound(a.id)));
        assert_eq!(
            store.delete(a.id, none()).await,
            Err(DomainError::NotFound(a.id))
        );
        assert_eq!(
            store
                .update(
                    a.id,
                    PersonChanges::new(None, None, Some(1), None).unwrap(),
                    none()
                )
                .await,
            Err(DomainError::NotFound(a.id))
        );
        // Ids are never reused.
        let c = store.create(new("Cy", 1), none()).await.unwrap();
        assert!(c.id > b.id);
        // No event context, no events.
        assert!(store.outbox(10).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let store = Store::open(&path).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.create(new(&format!("P{i}"), i % 150), none()).await
            }));
        }
        let mut ids = std::collections::HashSet::new();
        for t in tasks {
            ids.insert(t.await.unwrap().unwrap().id);
        }
        assert_eq!(ids.len(), 200);
        drop(store);
        // Reopening sees every row: they were committed, not just answered.
        let again = Store::open(&path).unwrap();
        assert_eq!(again.count().await.unwrap(), 200);
    }

    #[tokio::test]
    async fn a_replayed_request_gets_its_first_answer_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db")).unwrap();
        let meta = |id: &str| WriteMeta {
            request_id: Some(id.to_owned()),
            event: Some(EventContext::default()),
        };
        let first = store.create(new("Once", 1), meta("c-1")).await.unwrap();
        let again = store.create(new("Once", 1), meta("c-1")).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(store.count().await.unwrap(), 1);
        let other = store.create(new("Twice", 2), meta("c-2")).await.unwrap();
        assert_ne!(other.id, first.id);

        let up = PersonChanges::new(None, None, Some(5), None).unwrap();
        let u1 = store
            .update(first.id, up.clone(), meta("u-1"))
            .await
            .unwrap();
        store
            .update(
                first.id,
                PersonChanges::new(None, None, Some(9), None).unwrap(),
                none(),
            )
            .await
            .unwrap();
        // The replay answers as the first time, without applying age 5 again.
        assert_eq!(store.update(first.id, up, meta("u-1")).await.unwrap(), u1);
        assert_eq!(store.get(first.id).await.unwrap().age, 9);

        store.delete(other.id, meta("d-1")).await.unwrap();
        assert_eq!(store.delete(other.id, meta("d-1")).await, Ok(()));
        // One event per change actually made, in commit order.
        let kinds: Vec<String> = store
            .outbox(100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_type)
            .collect();
        assert_eq!(
            kinds,
            vec![
                "person_created",
                "person_created",
                "person_updated",
                "person_deleted"
            ]
        );
    }

    #[tokio::test]
    async fn outbox_keeps_commit_order_and_context_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db")).unwrap();
        let ctx = EventContext {
            call_id_stack: vec!["a.b.1".into()],
            data: [("user_id".to_owned(), serde_json::json!("u1"))]
                .into_iter()
                .collect(),
        };
        let meta = WriteMeta {
            request_id: None,
            event: Some(ctx.clone()),
        };
        let p = store.create(new("E", 3), meta.clone()).await.unwrap();
        store.delete(p.id, meta).await.unwrap();
        let events = store.outbox(10).await.unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].payload, serde_json::to_value(&p).unwrap());
        assert_eq!(events[0].context, ctx);
        assert_eq!(events[1].payload, serde_json::json!({"id": p.id}));
        assert_eq!(
            store.outbox_after(events[0].id, 10).await.unwrap(),
            vec![events[1].clone()]
        );
        // Deleting a published event is deferred to the next write (or a
        // flush), so that it costs no sync of its own.
        store.clear_outbox(vec![events[0].id]).await.unwrap();
        assert_eq!(store.outbox(10).await.unwrap().len(), 2);
        store.flush().await.unwrap();
        assert_eq!(store.outbox(10).await.unwrap(), vec![events[1].clone()]);
        // Or it rides along with the next write transaction.
        store.clear_outbox(vec![events[1].id]).await.unwrap();
        store
            .create(new("F", 4), WriteMeta::default())
            .await
            .unwrap();
        assert!(store.outbox(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn request_records_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(
            &dir.path().join("p.db"),
            StoreOptions {
                request_ttl: Duration::ZERO,
            },
        )
        .unwrap();
        let meta = WriteMeta {
            request_id: Some("c-1".into()),
            event: None,
        };
        // The first batch prunes everything at least 0 s old, its own record
        // included: a later replay is then a new request.
        let a = store.create(new("A", 1), meta.clone()).await.unwrap();
        let b = store.create(new("A", 1), meta).await.unwrap();
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn reopening_does_not_migrate_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        drop(Store::open(&path).unwrap());
        drop(Store::open(&path).unwrap());
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
        let err = Store::open(dir.path()).unwrap_err();
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
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
