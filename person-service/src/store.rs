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
//! Durability: `journal_mode=WAL` with `synchronous=FULL` syncs the WAL on
//! every commit, so a write that has been answered survives a crash of the
//! process and of the machine.

use crate::domain::{DomainError, NewPerson, Page, Person, PersonChanges};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::{oneshot, Semaphore};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// Read connections in the pool.
const READERS: usize = 4;

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

/// A write, with the channel its outcome goes back on.
struct WriteJob {
    op: WriteOp,
    reply: oneshot::Sender<Result<Written, DomainError>>,
}

enum WriteOp {
    Create(NewPerson),
    Update(i64, PersonChanges),
    Delete(i64),
}

enum Written {
    Person(Person),
    Deleted,
}

/// The person store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<mpsc::Sender<WriteJob>>,
    readers: Mutex<Vec<Connection>>,
    read_slots: Semaphore,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database, and starts the
    /// writer thread. Blocking: call it from `spawn_blocking` or at start-up.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
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
            conn.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")
                .map_err(open_err)?;
            readers.push(conn);
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("person-store-writer".into())
            .spawn(move || write_loop(writer, rx))
            .map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        Ok(Store {
            inner: Arc::new(Inner {
                writer: Mutex::new(tx),
                readers: Mutex::new(readers),
                read_slots: Semaphore::new(READERS),
                path: path.to_owned(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stores a new person and returns it with its id.
    pub async fn create(&self, person: NewPerson) -> Result<Person, DomainError> {
        match self.write(WriteOp::Create(person)).await? {
            Written::Person(p) => Ok(p),
            Written::Deleted => Err(DomainError::Storage),
        }
    }

    /// Changes the given fields and returns the updated person.
    pub async fn update(&self, id: i64, changes: PersonChanges) -> Result<Person, DomainError> {
        if changes.is_empty() {
            return self.get(id).await;
        }
        match self.write(WriteOp::Update(id, changes)).await? {
            Written::Person(p) => Ok(p),
            Written::Deleted => Err(DomainError::Storage),
        }
    }

    /// Deletes a person.
    pub async fn delete(&self, id: i64) -> Result<(), DomainError> {
        self.write(WriteOp::Delete(id)).await.map(|_| ())
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

    async fn write(&self, op: WriteOp) -> Result<Written, DomainError> {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .inner
            .writer
            .lock()
            .map_err(|_| DomainError::Storage)?
            .send(WriteJob { op, reply });
        if sent.is_err() {
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

/// The writer thread: takes every job waiting, commits them together, then
/// answers each. Ends when every `Store` handle is gone.
fn write_loop(mut conn: Connection, jobs: mpsc::Receiver<WriteJob>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcomes = commit_batch(&mut conn, &batch);
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            let _ = job.reply.send(outcome);
        }
    }
    tracing::debug!("store writer stopped");
}

fn commit_batch(conn: &mut Connection, batch: &[WriteJob]) -> Vec<Result<Written, DomainError>> {
    let all_failed = |e: rusqlite::Error| {
        tracing::error!(error = %e, writes = batch.len(), "database write transaction failed");
        batch.iter().map(|_| Err(DomainError::Storage)).collect()
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return all_failed(e),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let outcome = match tx.savepoint() {
            Ok(mut sp) => match apply(&sp, &job.op) {
                Ok(written) => match sp.commit() {
                    Ok(()) => Ok(written),
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
    match tx.commit() {
        Ok(()) => outcomes,
        Err(e) => all_failed(e),
    }
}

fn db_error(e: rusqlite::Error) -> DomainError {
    tracing::error!(error = %e, "database write failed");
    DomainError::Storage
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
                Ok(Written::Deleted)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(first: &str, age: i64) -> NewPerson {
        NewPerson::new(first.into(), "Test".into(), age, false).unwrap()
    }

    #[tokio::test]
    async fn crud_and_paging_on_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db")).unwrap();
        let a = store.create(new("Ada", 36)).await.unwrap();
        let b = store.create(new("Bob", 40)).await.unwrap();
        assert!(b.id > a.id);
        assert_eq!(store.get(a.id).await.unwrap(), a);
        let changed = store
            .update(
                a.id,
                PersonChanges::new(None, None, Some(37), Some(true)).unwrap(),
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
        store.delete(a.id).await.unwrap();
        assert_eq!(store.get(a.id).await, Err(DomainError::NotFound(a.id)));
        assert_eq!(store.delete(a.id).await, Err(DomainError::NotFound(a.id)));
        assert_eq!(
            store
                .update(a.id, PersonChanges::new(None, None, Some(1), None).unwrap())
                .await,
            Err(DomainError::NotFound(a.id))
        );
        // Ids are never reused.
        let c = store.create(new("Cy", 1)).await.unwrap();
        assert!(c.id > b.id);
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
                store.create(new(&format!("P{i}"), i % 150)).await
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
