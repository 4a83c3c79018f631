//! A person service written with girolle 2.0.0, for the benchmark: `create`
//! and `get` with person-service's contract (the same arguments, results and
//! `person` table, seeded by bench with person-service's migrations).
//!
//! Written as a plain girolle service would be: handlers built with
//! `RpcTask::new`, one SQLite connection behind a mutex used from
//! `spawn_blocking` (rusqlite is blocking), WAL with `synchronous=FULL` and
//! one autocommitted transaction per create, so that an answered create is
//! as durable as person-service's (nameko's fixture does the same).
//!
//! Environment: `AMQP_URI`, `PERSON_SERVICE_NAME`, `PERSON_DB`,
//! `GIROLLE_MAX_WORKERS` (default 10), `GIROLLE_PREFETCH` (default 10,
//! girolle's).
//!
//! girolle's own behaviour is kept as it is: it sets up a `DEBUG` tracing
//! subscriber itself, acks each request right after publishing its reply
//! without waiting for a publisher confirm, and stops on SIGINT only.

use girolle::prelude::*;
use girolle::GirolleError;
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::{Arc, Mutex, OnceLock};

static DB: OnceLock<Arc<Mutex<Connection>>> = OnceLock::new();

fn env(key: &str) -> Result<String, String> {
    std::env::var(key).map_err(|_| format!("{key} is not set"))
}

fn open(path: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn arg_error(what: &str) -> GirolleError {
    GirolleError::ArgumentsError(what.to_owned())
}

/// Positional argument `i`, else keyword `name`.
fn arg<'a>(payload: &'a Payload, i: usize, name: &str) -> Option<&'a Value> {
    payload.args().get(i).or_else(|| payload.kwargs().get(name))
}

fn text(payload: &Payload, i: usize, name: &str) -> GirolleResult<String> {
    arg(payload, i, name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| arg_error(name))
}

async fn with_db<T: Send + 'static>(
    f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
) -> GirolleResult<T> {
    let db = Arc::clone(DB.get().ok_or_else(|| arg_error("no database"))?);
    tokio::task::spawn_blocking(move || {
        let conn = db.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    })
    .await
    .map_err(|e| arg_error(&e.to_string()))?
    .map_err(|e| arg_error(&e.to_string()))
}

fn create() -> RpcTask {
    RpcTask::new(
        "create",
        Arc::new(
            |_ctx: RpcContext, payload: Payload| -> BoxFuture<GirolleResult<Value>> {
                Box::pin(async move {
                    let first = text(&payload, 0, "first_name")?;
                    let last = text(&payload, 1, "last_name")?;
                    let age = arg(&payload, 2, "age")
                        .and_then(Value::as_i64)
                        .filter(|a| (0..=150).contains(a))
                        .ok_or_else(|| arg_error("age"))?;
                    let member = arg(&payload, 3, "member")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    let id = with_db(move |c| {
                    c.execute(
                        "INSERT INTO person (first_name, last_name, age, member) VALUES (?1, ?2, ?3, ?4)",
                        params![first, last, age, member],
                    )?;
                    Ok(c.last_insert_rowid())
                })
                .await?;
                    Ok(Value::from(id))
                })
            },
        ),
    )
}

fn get() -> RpcTask {
    RpcTask::new(
        "get",
        Arc::new(
            |_ctx: RpcContext, payload: Payload| -> BoxFuture<GirolleResult<Value>> {
                Box::pin(async move {
                    let id = arg(&payload, 0, "id")
                        .and_then(Value::as_i64)
                        .ok_or_else(|| arg_error("id"))?;
                    let row = with_db(move |c| {
                        c.query_row(
                        "SELECT id, first_name, last_name, age, member FROM person WHERE id = ?1",
                        [id],
                        |r| {
                            Ok(json!({
                                "id": r.get::<_, i64>(0)?,
                                "first_name": r.get::<_, String>(1)?,
                                "last_name": r.get::<_, String>(2)?,
                                "age": r.get::<_, i64>(3)?,
                                "member": r.get::<_, bool>(4)?,
                            }))
                        },
                    )
                    .optional()
                    })
                    .await?;
                    row.ok_or_else(|| arg_error(&format!("PersonNotFound: {id}")))
                })
            },
        ),
    )
}

fn main() -> Result<(), String> {
    let uri = env("AMQP_URI")?;
    let name = env("PERSON_SERVICE_NAME")?;
    let db = open(&env("PERSON_DB")?).map_err(|e| e.to_string())?;
    let _ = DB.set(Arc::new(Mutex::new(db)));
    let number = |key: &str, default: u32| {
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let conf = Config::default()
        .with_amqp_uri(&uri)
        .with_max_workers(number("GIROLLE_MAX_WORKERS", 10))
        .with_prefetch_count(u16::try_from(number("GIROLLE_PREFETCH", 10)).unwrap_or(10));
    // girolle wants a 'static name; the process lives as long as it.
    let name: &'static str = Box::leak(name.into_boxed_str());
    RpcService::new(conf, name)
        .register(create)
        .register(get)
        .start()
        .map_err(|e| e.to_string())
}
