//! The PostgreSQL backend: many hosts on one database.
//!
//! Pooled connections (deadpool), one short transaction per write: the
//! server already shares WAL flushes among concurrent commits, so there is
//! no batching here, and with `synchronous_commit` at its default (on) a
//! commit is durable before the write is answered.
//!
//! What makes several instances safe together:
//! * A write with a correlation id first claims it:
//!   `INSERT INTO processed_request … ON CONFLICT DO NOTHING`. A concurrent
//!   duplicate blocks on the unique index until the first transaction ends;
//!   if the first committed, the duplicate inserts nothing, rolls back and
//!   answers with the recorded response, so a request redelivered to
//!   another instance writes nothing.
//! * The outbox is claimed in `FOR UPDATE SKIP LOCKED` batches and deleted
//!   in the same transaction once published: two relays never take the same
//!   rows, and an event committed late (ids are drawn before commit, so id
//!   order is not commit order) is not skipped, as a watermark would.
//! * Migrations run under `pg_advisory_xact_lock`, with the version in
//!   `schema_version`, so instances starting together migrate once.
//!
//! While the server is away calls fail with a storage error within the
//! statement timeout (the pool's waits are bounded by it too); connections
//! it broke are dropped rather than handed out again, and new ones are made
//! when it is back.

use super::{
    answer_text, body_text, context_columns, expiry_cutoff, outbox_event, recorded_answer,
    unix_now, ClaimInner, OutboxClaim, OutboxEvent, PostgresUrl, StoreError, StoreOptions,
    Unhealthy, WriteMeta, WriteOp, Written,
};
use crate::domain::{DomainError, Page, Person};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_postgres::{NoTls, Row};

/// The advisory lock migrations hold ("person" in ASCII): any constant
/// works as long as every instance uses the same one.
const MIGRATION_LOCK: i64 = 0x0000_7065_7273_6f6e;
/// How often expired request records are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Schema migrations, applied in order; `schema_version` records how many
/// have run. Identity columns never reuse an id after a delete.
const MIGRATIONS: &[&str] = &[
    // 1: people.
    "CREATE TABLE person (
        id         BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        first_name TEXT    NOT NULL,
        last_name  TEXT    NOT NULL,
        age        BIGINT  NOT NULL CHECK (age BETWEEN 0 AND 150),
        member     BOOLEAN NOT NULL DEFAULT FALSE
    );",
    // 2: events waiting to be published.
    "CREATE TABLE event_outbox (
        id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_type    TEXT   NOT NULL,
        payload       TEXT   NOT NULL,
        call_id_stack TEXT   NOT NULL,
        context       TEXT   NOT NULL,
        created_at    BIGINT NOT NULL
    );",
    // 3: answers of write requests, by correlation id, for redeliveries.
    "CREATE TABLE processed_request (
        request_id TEXT   PRIMARY KEY,
        method     TEXT   NOT NULL,
        response   TEXT   NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX processed_request_age ON processed_request (created_at);",
];

const PERSON_COLUMNS: &str = "id, first_name, last_name, age, member";

/// The PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    url: PostgresUrl,
    outbox: Arc<Notify>,
    request_ttl: Duration,
    timeout: Duration,
    last_prune: Mutex<Option<Instant>>,
}

/// Why a write did not happen: the database failed, or the domain said no
/// (the transaction is rolled back either way).
enum WriteError {
    Db(tokio_postgres::Error),
    Domain(DomainError),
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        WriteError::Db(e)
    }
}

impl PgStore {
    /// Builds the pool and migrates the database.
    pub(crate) async fn connect(
        url: &PostgresUrl,
        options: StoreOptions,
    ) -> Result<PgStore, StoreError> {
        let fail = |reason: String| StoreError::Postgres {
            url: url.redacted().to_owned(),
            reason,
        };
        let mut config: tokio_postgres::Config = url
            .secret()
            .parse()
            .map_err(|e| fail(format!("not a usable PostgreSQL URL: {e}")))?;
        let timeout = options.statement_timeout;
        // Appended to any options the URL gives, so those still apply.
        let session = format!(
            "{} -c statement_timeout={}",
            config.get_options().unwrap_or_default(),
            timeout.as_millis()
        );
        config.options(session.trim_start());
        config.connect_timeout(timeout);
        if config.get_application_name().is_none() {
            config.application_name("person-service");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            // A closed connection is never handed out again; one broken
            // without the client noticing is dropped on its first error
            // (see `discard_if_broken`).
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| fail(format!("cannot build the connection pool: {e}")))?;
        let store = PgStore {
            inner: Arc::new(Inner {
                pool,
                url: url.clone(),
                outbox: Arc::new(Notify::new()),
                request_ttl: options.request_ttl,
                timeout,
                last_prune: Mutex::new(None),
            }),
        };
        let mut client = store
            .inner
            .pool
            .get()
            .await
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        migrate(&mut client, url).await?;
        Ok(store)
    }

    /// The database URL (print only its masked form).
    pub fn url(&self) -> &PostgresUrl {
        &self.inner.url
    }

    async fn client(&self) -> Result<Object, DomainError> {
        self.inner.pool.get().await.map_err(|e| {
            tracing::error!(error = %e, db = %self.inner.url.redacted(), "no database connection");
            DomainError::Storage
        })
    }

    /// Logs a database error, drops the connection if it is broken, and
    /// turns the error into the one callers see.
    fn failed(&self, client: Object, e: &tokio_postgres::Error, what: &str) -> DomainError {
        tracing::error!(error = %e, db = %self.inner.url.redacted(), "database {what} failed");
        discard_if_broken(client, e);
        DomainError::Storage
    }

    pub(crate) async fn write(&self, op: WriteOp, meta: WriteMeta) -> Result<Written, DomainError> {
        let mut client = self.client().await?;
        match write_on(&mut client, &op, &meta, self.inner.request_ttl).await {
            Ok((written, emitted)) => {
                if emitted {
                    self.inner.outbox.notify_one();
                }
                self.prune_if_due(&client).await;
                Ok(written)
            }
            Err(WriteError::Domain(e)) => Err(e),
            Err(WriteError::Db(e)) => Err(self.failed(client, &e, "write")),
        }
    }

    /// Removes expired request records, at most once a minute per
    /// instance; a failure only delays it.
    async fn prune_if_due(&self, client: &Object) {
        {
            let Ok(mut last) = self.inner.last_prune.lock() else {
                return;
            };
            if last.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let cutoff = expiry_cutoff(self.inner.request_ttl);
        match client
            .execute(
                "DELETE FROM processed_request WHERE created_at <= $1",
                &[&cutoff],
            )
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired request records removed"),
            Err(e) => tracing::warn!(error = %e, "removing expired request records failed"),
        }
    }

    pub(crate) async fn get(&self, id: i64) -> Result<Option<Person>, DomainError> {
        let client = self.client().await?;
        let sql = format!("SELECT {PERSON_COLUMNS} FROM person WHERE id = $1");
        let result = async {
            let stmt = client.prepare_cached(&sql).await?;
            client.query_opt(&stmt, &[&id]).await
        }
        .await;
        match result {
            Ok(row) => row
                .map(|r| person_from_row(&r))
                .transpose()
                .map_err(|e| self.failed(client, &e, "read")),
            Err(e) => Err(self.failed(client, &e, "read")),
        }
    }

    pub(crate) async fn list(&self, page: Page) -> Result<Vec<Person>, DomainError> {
        let client = self.client().await?;
        let sql = format!("SELECT {PERSON_COLUMNS} FROM person WHERE id > $1 ORDER BY id LIMIT $2");
        let limit: Option<i64> = page.limit.map(i64::from);
        let result = async {
            let stmt = client.prepare_cached(&sql).await?;
            let rows = client.query(&stmt, &[&page.after_id, &limit]).await?;
            rows.iter()
                .map(person_from_row)
                .collect::<Result<Vec<_>, _>>()
        }
        .await;
        result.map_err(|e| self.failed(client, &e, "read"))
    }

    pub(crate) async fn count(&self) -> Result<i64, DomainError> {
        let client = self.client().await?;
        let result = client
            .query_one("SELECT count(*) FROM person", &[])
            .await
            .and_then(|r| r.try_get(0));
        result.map_err(|e| self.failed(client, &e, "read"))
    }

    pub(crate) async fn check(&self) -> Result<(), Unhealthy> {
        let db = self.inner.url.redacted();
        let probe = async {
            let client = self
                .inner
                .pool
                .get()
                .await
                .map_err(|e| format!("cannot reach PostgreSQL at {db}: {e}"))?;
            match client.simple_query("SELECT 1").await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let why = format!("PostgreSQL at {db} fails: {e}");
                    discard_if_broken(client, &e);
                    Err(why)
                }
            }
        };
        // The pool's waits are bounded already; this bounds the query too.
        match tokio::time::timeout(self.inner.timeout * 2, probe).await {
            Ok(result) => result.map_err(Unhealthy),
            Err(_) => Err(Unhealthy(format!(
                "PostgreSQL at {db} did not answer within {:?}",
                self.inner.timeout * 2
            ))),
        }
    }

    /// The oldest events, without locking them.
    pub(crate) async fn outbox(&self, limit: usize) -> Result<Vec<OutboxEvent>, DomainError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let result = client
            .query(
                "SELECT id, event_type, payload, call_id_stack, context FROM event_outbox
                 ORDER BY id LIMIT $1",
                &[&limit],
            )
            .await;
        match result {
            Ok(rows) => rows.iter().map(event_from_row).collect(),
            Err(e) => Err(self.failed(client, &e, "outbox read")),
        }
    }

    /// Opens a transaction and locks the next events no other relay holds.
    /// The connection stays in the claim until it is finished.
    pub(crate) async fn claim_outbox(&self, limit: usize) -> Result<OutboxClaim, DomainError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let result = async {
            client.batch_execute("BEGIN").await?;
            let stmt = client
                .prepare_cached(
                    "SELECT id, event_type, payload, call_id_stack, context FROM event_outbox
                     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                )
                .await?;
            client.query(&stmt, &[&limit]).await
        }
        .await;
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                // Possibly inside a failed transaction: never reuse it.
                tracing::error!(error = %e, db = %self.inner.url.redacted(), "claiming outbox events failed");
                drop(Object::take(client));
                return Err(DomainError::Storage);
            }
        };
        let events = match rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(events) => events,
            Err(e) => {
                drop(Object::take(client));
                return Err(e);
            }
        };
        if events.is_empty() {
            if let Err(e) = client.batch_execute("ROLLBACK").await {
                return Err(self.failed(client, &e, "outbox release"));
            }
            return Ok(OutboxClaim {
                events,
                inner: ClaimInner::Empty,
            });
        }
        Ok(OutboxClaim {
            events,
            inner: ClaimInner::Postgres(Box::new(PgClaim {
                client: Some(client),
                store: self.clone(),
            })),
        })
    }

    pub(crate) fn outbox_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.inner.outbox)
    }
}

/// Outbox rows locked by one relay, on the connection holding the lock.
pub(crate) struct PgClaim {
    client: Option<Object>,
    store: PgStore,
}

impl PgClaim {
    /// Deletes the published rows and commits, which releases the others.
    pub(crate) async fn finish(mut self, ids: Vec<i64>) -> Result<(), DomainError> {
        let Some(client) = self.client.take() else {
            return Err(DomainError::Storage);
        };
        let result = async {
            if !ids.is_empty() {
                client
                    .execute("DELETE FROM event_outbox WHERE id = ANY($1)", &[&ids])
                    .await?;
            }
            client.batch_execute("COMMIT").await
        }
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, db = %self.store.inner.url.redacted(), "removing published events failed; they are published again");
                drop(Object::take(client));
                Err(DomainError::Storage)
            }
        }
    }
}

impl Drop for PgClaim {
    /// An unfinished claim's connection is inside a transaction holding row
    /// locks: closing it (instead of returning it to the pool) makes the
    /// server roll back and release them.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

/// Makes the change in its own transaction; see the module notes for how a
/// correlation id seen before is handled.
async fn write_on(
    client: &mut Object,
    op: &WriteOp,
    meta: &WriteMeta,
    ttl: Duration,
) -> Result<(Written, bool), WriteError> {
    let method = op.method();
    let now = unix_now();
    let tx = client.transaction().await?;
    if let Some(request_id) = &meta.request_id {
        let claim = tx
            .prepare_cached(
                "INSERT INTO processed_request (request_id, method, response, created_at)
                 VALUES ($1, $2, '', $3) ON CONFLICT (request_id) DO NOTHING",
            )
            .await?;
        if tx.execute(&claim, &[request_id, &method, &now]).await? == 0 {
            let recorded = tx
                .query_opt(
                    "SELECT method, response, created_at FROM processed_request WHERE request_id = $1",
                    &[request_id],
                )
                .await?;
            if let Some(row) = recorded {
                let recorded_method: String = row.try_get(0)?;
                let response: String = row.try_get(1)?;
                let created_at: i64 = row.try_get(2)?;
                let live = created_at > expiry_cutoff(ttl);
                if recorded_method == method && live {
                    if let Some(written) = recorded_answer(method, &response) {
                        tx.rollback().await?;
                        tracing::warn!(
                            request_id,
                            method,
                            "redelivered request: answering with the recorded result"
                        );
                        return Ok((written, false));
                    }
                }
                if live {
                    tracing::warn!(
                        request_id,
                        method,
                        recorded_method,
                        "correlation id reused by a different request; applying it"
                    );
                }
            }
        }
    }
    let written = match apply(&tx, op).await? {
        Ok(written) => written,
        Err(e) => {
            tx.rollback().await?;
            return Err(WriteError::Domain(e));
        }
    };
    let event = op.event(&written);
    let mut emitted = false;
    if let (Some(ctx), Some((event_type, body))) = (&meta.event, &event) {
        let (stack, data) = context_columns(ctx);
        let insert = tx
            .prepare_cached(
                "INSERT INTO event_outbox (event_type, payload, call_id_stack, context, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .await?;
        tx.execute(
            &insert,
            &[event_type, &body_text(body), &stack, &data, &now],
        )
        .await?;
        emitted = true;
    }
    if let Some(request_id) = &meta.request_id {
        let response = answer_text(event.as_ref());
        let record = tx
            .prepare_cached(
                "INSERT INTO processed_request (request_id, method, response, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO UPDATE
                 SET method = EXCLUDED.method, response = EXCLUDED.response,
                     created_at = EXCLUDED.created_at",
            )
            .await?;
        tx.execute(&record, &[request_id, &method, &response, &now])
            .await?;
    }
    tx.commit().await?;
    Ok((written, emitted))
}

/// The change itself: `Ok(Err(_))` is a domain refusal (no such person).
async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    op: &WriteOp,
) -> Result<Result<Written, DomainError>, tokio_postgres::Error> {
    match op {
        WriteOp::Create(p) => {
            let stmt = tx
                .prepare_cached(&format!(
                    "INSERT INTO person (first_name, last_name, age, member) VALUES ($1, $2, $3, $4)
                     RETURNING {PERSON_COLUMNS}"
                ))
                .await?;
            let row = tx
                .query_one(&stmt, &[&p.first_name, &p.last_name, &p.age, &p.member])
                .await?;
            Ok(Ok(Written::Person(person_from_row(&row)?)))
        }
        WriteOp::Update(id, c) => {
            let stmt = tx
                .prepare_cached(&format!(
                    "UPDATE person SET
                        first_name = coalesce($2, first_name),
                        last_name  = coalesce($3, last_name),
                        age        = coalesce($4, age),
                        member     = coalesce($5, member)
                     WHERE id = $1
                     RETURNING {PERSON_COLUMNS}"
                ))
                .await?;
            let row = tx
                .query_opt(&stmt, &[id, &c.first_name, &c.last_name, &c.age, &c.member])
                .await?;
            Ok(match row {
                Some(row) => Ok(Written::Person(person_from_row(&row)?)),
                None => Err(DomainError::NotFound(*id)),
            })
        }
        WriteOp::Delete(id) => {
            let stmt = tx
                .prepare_cached("DELETE FROM person WHERE id = $1")
                .await?;
            Ok(if tx.execute(&stmt, &[id]).await? == 0 {
                Err(DomainError::NotFound(*id))
            } else {
                Ok(Written::Deleted(*id))
            })
        }
    }
}

/// Applies the missing migrations in one transaction holding the advisory
/// lock: instances starting together on a fresh database wait for each
/// other, and the later ones find the version already current.
async fn migrate(client: &mut Object, url: &PostgresUrl) -> Result<(), StoreError> {
    let fail = |e: tokio_postgres::Error| StoreError::Postgres {
        url: url.redacted().to_owned(),
        reason: format!("migrating failed: {e}"),
    };
    let tx = client.transaction().await.map_err(fail)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
            version   INTEGER NOT NULL
        )",
    )
    .await
    .map_err(fail)?;
    let version: i32 = tx
        .query_opt("SELECT version FROM schema_version", &[])
        .await
        .map_err(fail)?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(fail)?
        .unwrap_or(0);
    let known = MIGRATIONS.len();
    if version < 0 || version as usize > known {
        return Err(StoreError::TooNew {
            db: url.redacted().to_owned(),
            found: i64::from(version),
            known,
        });
    }
    if version as usize == known {
        return Ok(());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql).await.map_err(fail)?;
        tracing::info!(version = i + 1, "database migrated");
    }
    let now = i32::try_from(known).unwrap_or(i32::MAX);
    tx.execute(
        "INSERT INTO schema_version (singleton, version) VALUES (TRUE, $1)
         ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
        &[&now],
    )
    .await
    .map_err(fail)?;
    tx.commit().await.map_err(fail)
}

/// Drops a connection the error shows to be unusable (closed, or the
/// server ended the session) instead of returning it to the pool. Plain
/// statement errors (a constraint, a timeout) leave it usable.
fn discard_if_broken(client: Object, e: &tokio_postgres::Error) {
    let fatal = e
        .as_db_error()
        .is_none_or(|d| matches!(d.severity(), "FATAL" | "PANIC"));
    if fatal || e.is_closed() || client.is_closed() {
        drop(Object::take(client));
    }
}

fn person_from_row(row: &Row) -> Result<Person, tokio_postgres::Error> {
    Ok(Person {
        id: row.try_get(0)?,
        first_name: row.try_get(1)?,
        last_name: row.try_get(2)?,
        age: row.try_get(3)?,
        member: row.try_get(4)?,
    })
}

fn event_from_row(row: &Row) -> Result<OutboxEvent, DomainError> {
    let decode = || -> Result<OutboxEvent, String> {
        let text = |i: usize| row.try_get::<_, String>(i).map_err(|e| e.to_string());
        let id: i64 = row.try_get(0).map_err(|e| e.to_string())?;
        outbox_event(id, text(1)?, &text(2)?, &text(3)?, &text(4)?).map_err(|e| e.to_string())
    };
    decode().map_err(|e| {
        tracing::error!(error = %e, "an outbox row does not decode");
        DomainError::Storage
    })
}
