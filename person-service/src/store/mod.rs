//! The person store: one interface, two backends.
//!
//! * [`sqlite`]: one host. A writer thread with group commit, a couple of
//!   reader threads (`read_pool`), WAL with `synchronous=FULL`.
//! * [`postgres`]: many hosts. Pooled connections, one short transaction
//!   per write (the server shares WAL flushes among concurrent commits).
//!
//! Both keep the same promises, which is why callers never see which one
//! they have:
//! * a write is committed durably before it is answered;
//! * with each change, its event goes into the outbox in the same
//!   transaction, so an event is never lost between the commit and the
//!   publish ([`crate::outbox`] relays it);
//! * with each RPC write, its correlation id and answer are recorded: a
//!   redelivered request, to this instance or to another one on the same
//!   database, gets the first answer back and writes nothing. The records
//!   expire after [`StoreOptions::request_ttl`];
//! * PostgreSQL keeps the two in `event_outbox` and `processed_request`;
//!   SQLite in one row of `write_log` (its migration 6 says why);
//! * several instances may start at once on a fresh database: migrations
//!   are serialised (SQLite `BEGIN IMMEDIATE`, PostgreSQL an advisory lock).

mod location;
pub mod postgres;
mod read_pool;
pub mod sqlite;

pub use location::{Database, PostgresUrl};

use crate::domain::{DomainError, NewPerson, Page, Person, PersonChanges};
use person_api::PersonDeleted;
use rpc_core::Propagated;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused to open or migrate the file.
    #[error("cannot open the database {path}: {source}")]
    Open {
        /// The database file.
        path: std::path::PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// PostgreSQL could not be reached, or refused to migrate.
    #[error("cannot open the database {url}: {reason}")]
    Postgres {
        /// The URL, password masked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// Opening the database panicked (a bug).
    #[error("opening the database {db} failed: {reason}")]
    Panicked {
        /// The database file.
        db: String,
        /// The panic.
        reason: String,
    },
    /// The database has a newer schema than this build knows.
    #[error("the database {db} has schema version {found}; this build knows up to {known}")]
    TooNew {
        /// The database (a path, or a masked URL).
        db: String,
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
    /// PostgreSQL: connections in the pool (SQLite has one writer and a
    /// fixed pair of readers).
    pub pool_size: usize,
    /// PostgreSQL: the longest one statement may run, and the longest a call
    /// waits for a connection; beyond it the call fails with a storage
    /// error instead of hanging while the server is away.
    pub statement_timeout: Duration,
}

/// Default PostgreSQL pool size: enough for max_workers (10) calls, the
/// relay and a health check at once.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Default statement timeout.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            request_ttl: Duration::from_secs(24 * 60 * 60),
            pool_size: DEFAULT_POOL_SIZE,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
        }
    }
}

/// What a write leaves besides the change itself.
#[derive(Clone, Debug, Default)]
pub struct WriteMeta {
    /// The request's correlation id, when it came over RPC: a redelivered
    /// request with the same id gets the first answer back.
    pub request_id: Option<String>,
    /// The context the change's event carries (the call's call-id stack
    /// and data); `None` emits no event. Shared with the call and with the
    /// event the writer hands to the relay, not copied.
    pub event: Option<Arc<Propagated>>,
}

/// An event waiting in the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEvent {
    /// Position in the outbox (commit order on SQLite; on PostgreSQL the
    /// order ids were drawn, which concurrent commits may finish out of).
    pub id: i64,
    /// `person_created`, `person_updated` or `person_deleted` (borrowed
    /// when the writer made it, owned when read back from the table).
    pub event_type: Cow<'static, str>,
    /// The event's data, encoded as it is published
    /// ([`rpc_core::wire::json::to_vec`]): the relay sends these bytes as
    /// they are, the table keeps them as text.
    pub body: Vec<u8>,
    /// The context it is sent with.
    pub context: Arc<Propagated>,
}

#[cfg(test)]
impl OutboxEvent {
    /// The body decoded, for tests to compare.
    pub(crate) fn data(&self) -> Value {
        serde_json::from_slice(&self.body).expect("an outbox body is JSON")
    }
}

/// The outcome of a write, as recorded for replays.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Written {
    /// The person as stored after a create or update.
    Person(Person),
    /// The id deleted.
    Deleted(i64),
    /// Outbox rows removed.
    Cleared,
}

/// A change to make.
pub(crate) enum WriteOp {
    Create(NewPerson),
    Update(i64, PersonChanges),
    Delete(i64),
}

impl WriteOp {
    /// The name its request record is kept under: a reused correlation id
    /// with another method is a new request, not a replay.
    pub(crate) fn method(&self) -> &'static str {
        match self {
            WriteOp::Create(_) => "create",
            WriteOp::Update(..) => "update",
            WriteOp::Delete(_) => "delete",
        }
    }

    /// The event a successful change emits: its type and its data,
    /// encoded once here for both the outbox row and the publish.
    pub(crate) fn event(&self, written: &Written) -> Option<(&'static str, Vec<u8>)> {
        let (event_type, body) = match (self, written) {
            (WriteOp::Create(_), Written::Person(p)) => ("person_created", encode_event(p)),
            (WriteOp::Update(..), Written::Person(p)) => ("person_updated", encode_event(p)),
            (WriteOp::Delete(_), Written::Deleted(id)) => {
                ("person_deleted", encode_event(&PersonDeleted { id: *id }))
            }
            _ => return None,
        };
        Some((event_type, body))
    }
}

/// An event's data as it goes on the wire. Plain data always encodes;
/// should it not, the event still goes out, as `null`, rather than failing
/// the write that caused it.
fn encode_event<T: Serialize>(data: &T) -> Vec<u8> {
    rpc_core::wire::json::to_vec(data).unwrap_or_else(|_| b"null".to_vec())
}

/// Reads a request record's answer back. A record keeps what the write's
/// event carries ([`WriteOp::event`]: the person, or `{"id": …}` after a
/// delete), so a create encodes its person once for both; records written
/// before that kept [`Written`]'s own form, which is read as well.
pub(crate) fn recorded_answer(method: &str, response: &str) -> Option<Written> {
    let answer = match method {
        "delete" => serde_json::from_str::<PersonDeleted>(response)
            .ok()
            .map(|d| Written::Deleted(d.id)),
        _ => serde_json::from_str::<Person>(response)
            .ok()
            .map(Written::Person),
    };
    answer.or_else(|| serde_json::from_str::<Written>(response).ok())
}

/// A request record's answer column, from the write's event
/// ([`WriteOp::event`]); see [`recorded_answer`] for reading it back.
pub(crate) fn answer_text<'a>(event: Option<&'a (&'static str, Vec<u8>)>) -> &'a str {
    event.map_or("null", |(_, body)| body_text(body))
}

/// An outbox row's payload column: the encoded body as text (the encoder
/// writes ASCII-only JSON, so this never fails in practice).
pub(crate) fn body_text(body: &[u8]) -> &str {
    std::str::from_utf8(body).unwrap_or("null")
}

/// Encodes an event's context for its outbox row. Context data is
/// usually empty, and a call-id stack sometimes: then spelled out; a stack
/// of plain call ids is written directly (`plain_string_array`).
pub(crate) fn context_columns(ctx: &Propagated) -> (Cow<'static, str>, Cow<'static, str>) {
    let stack = if ctx.call_id_stack.is_empty() {
        Cow::Borrowed("[]")
    } else if let Some(plain) = plain_string_array(&ctx.call_id_stack) {
        Cow::Owned(plain)
    } else {
        serde_json::to_string(&ctx.call_id_stack).map_or(Cow::Borrowed("[]"), Cow::Owned)
    };
    let data = if ctx.data.is_empty() {
        Cow::Borrowed("{}")
    } else {
        serde_json::to_string(&ctx.data).map_or(Cow::Borrowed("{}"), Cow::Owned)
    };
    (stack, data)
}

/// A JSON array of strings that need no escaping, written directly: call
/// ids (`service.method.uuid`) are plain ASCII, and the encoder's
/// character-by-character escaping was a sixtieth of a create's
/// instructions. `None` when some string needs escaping.
fn plain_string_array(items: &[String]) -> Option<String> {
    // Folded without an early exit, so the compiler can check many bytes
    // at a time.
    let plain = |s: &str| {
        !s.bytes().fold(false, |escape, b| {
            escape | !(0x20..0x7f).contains(&b) | (b == b'"') | (b == b'\\')
        })
    };
    if !items.iter().all(|s| plain(s)) {
        return None;
    }
    let mut out = String::with_capacity(2 + items.iter().map(|s| s.len() + 3).sum::<usize>());
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(item);
        out.push('"');
    }
    out.push(']');
    Some(out)
}

/// Decodes an outbox row. A context that does not decode is sent empty
/// rather than holding the event back for ever. The payload is decoded and
/// encoded again: that checks it is JSON and gives rows written by an
/// earlier version (compact JSON) the wire's own form.
pub(crate) fn outbox_event(
    id: i64,
    event_type: String,
    payload: &str,
    call_id_stack: &str,
    context: &str,
) -> Result<OutboxEvent, serde_json::Error> {
    Ok(OutboxEvent {
        id,
        event_type: Cow::Owned(event_type),
        body: rpc_core::wire::json::to_vec(&serde_json::from_str::<Value>(payload)?)?,
        context: Arc::new(Propagated {
            call_id_stack: serde_json::from_str(call_id_stack).unwrap_or_default(),
            data: serde_json::from_str(context).unwrap_or_default(),
        }),
    })
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Request records created at or before this are expired.
pub(crate) fn expiry_cutoff(ttl: Duration) -> i64 {
    unix_now().saturating_sub(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
}

/// Why the store fails its health check; the text is safe to show.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unhealthy(pub String);

/// The person store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("db", &self.describe())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens a SQLite file with default options; see [`Store::open_with`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens (creating if needed) and migrates a SQLite file, and starts
    /// its writer thread. Blocking: call it from `spawn_blocking` or at
    /// start-up.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Sqlite(sqlite::SqliteStore::open(path, options)?),
        })
    }

    /// Opens either kind of database, migrating it; the SQLite work runs
    /// off the async executor.
    pub async fn connect(db: &Database, options: StoreOptions) -> Result<Store, StoreError> {
        match db {
            Database::Sqlite(path) => {
                let path = path.clone();
                let shown = path.display().to_string();
                tokio::task::spawn_blocking(move || Store::open_with(&path, options))
                    .await
                    .map_err(|e| StoreError::Panicked {
                        db: shown,
                        reason: e.to_string(),
                    })?
            }
            Database::Postgres(url) => Ok(Store {
                backend: Backend::Postgres(postgres::PgStore::connect(url, options).await?),
            }),
        }
    }

    /// The database, as it may be shown (a path, or a masked URL).
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => s.path().display().to_string(),
            Backend::Postgres(p) => p.url().redacted().to_owned(),
        }
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

    // The PostgreSQL futures are boxed: they are several KB (the pool's and
    // tokio-postgres's state), and unboxed they would size every call's
    // future, on SQLite too, which then costs a copy of that much each time
    // the call's future moves (seen in the profile, BENCHMARKS.md).
    async fn write(&self, op: WriteOp, meta: WriteMeta) -> Result<Written, DomainError> {
        match &self.backend {
            Backend::Sqlite(s) => s.write(op, meta).await,
            Backend::Postgres(p) => Box::pin(p.write(op, meta)).await,
        }
    }

    /// One person.
    pub async fn get(&self, id: i64) -> Result<Person, DomainError> {
        match &self.backend {
            Backend::Sqlite(s) => s.get(id).await,
            Backend::Postgres(p) => Box::pin(p.get(id)).await,
        }?
        .ok_or(DomainError::NotFound(id))
    }

    /// People in id order, one page of them (keyset paging: ids above
    /// `after_id`).
    pub async fn list(&self, page: Page) -> Result<Vec<Person>, DomainError> {
        match &self.backend {
            Backend::Sqlite(s) => s.list(page).await,
            Backend::Postgres(p) => Box::pin(p.list(page)).await,
        }
    }

    /// Number of people stored.
    pub async fn count(&self) -> Result<i64, DomainError> {
        match &self.backend {
            Backend::Sqlite(s) => s.count().await,
            Backend::Postgres(p) => p.count().await,
        }
    }

    /// Whether a read goes through, and why not (for `/healthz`).
    pub async fn check(&self) -> Result<(), Unhealthy> {
        match &self.backend {
            Backend::Sqlite(s) => s.check().await,
            Backend::Postgres(p) => p.check().await,
        }
    }

    /// The oldest events in the outbox, at most `limit`, without claiming
    /// them (for tests and tools).
    pub async fn outbox(&self, limit: usize) -> Result<Vec<OutboxEvent>, DomainError> {
        match &self.backend {
            Backend::Sqlite(s) => s.outbox_after(0, limit).await,
            Backend::Postgres(p) => p.outbox(limit).await,
        }
    }

    /// Takes the next events to publish, at most `limit`. On SQLite (one
    /// writer, so ids are in commit order) these are the events after the
    /// last one this store published; on PostgreSQL they are locked rows
    /// (`FOR UPDATE SKIP LOCKED`) that no other relay can take until this
    /// claim ends, so several instances relay at once without sending an
    /// event twice and without skipping one committed late.
    pub async fn claim_outbox(&self, limit: usize) -> Result<OutboxClaim, DomainError> {
        match &self.backend {
            Backend::Sqlite(s) => s.claim_outbox(limit).await,
            Backend::Postgres(p) => Box::pin(p.claim_outbox(limit)).await,
        }
    }

    /// Commits any deferred outbox deletes now (at shutdown).
    pub async fn flush(&self) -> Result<(), DomainError> {
        match &self.backend {
            Backend::Sqlite(s) => s.flush().await,
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Notified after each commit of this store that put events in the
    /// outbox. Events committed by another instance are not signalled: the
    /// relay also looks every few seconds.
    pub fn outbox_signal(&self) -> Arc<Notify> {
        match &self.backend {
            Backend::Sqlite(s) => s.outbox_signal(),
            Backend::Postgres(p) => p.outbox_signal(),
        }
    }
}

/// Events taken from the outbox for publishing; end it with
/// [`OutboxClaim::finish`]. Dropped unfinished, nothing is removed and the
/// events are published again later.
pub struct OutboxClaim {
    events: Vec<OutboxEvent>,
    inner: ClaimInner,
}

enum ClaimInner {
    Sqlite(sqlite::SqliteStore),
    Postgres(Box<postgres::PgClaim>),
    Empty,
}

impl OutboxClaim {
    /// The events, oldest first.
    pub fn events(&self) -> &[OutboxEvent] {
        &self.events
    }

    /// Whether there is nothing to publish.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Removes the first `published` events (those the broker confirmed)
    /// and releases the rest for a later attempt.
    pub async fn finish(self, published: usize) -> Result<(), DomainError> {
        let ids: Vec<i64> = self.events.iter().take(published).map(|e| e.id).collect();
        match self.inner {
            ClaimInner::Sqlite(s) => s.finish_claim(ids).await,
            ClaimInner::Postgres(claim) => claim.finish(ids).await,
            ClaimInner::Empty => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
