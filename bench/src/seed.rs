//! Databases for the services: created and migrated by person-service's own
//! store (so the schema is exactly its migrations), then filled with rows
//! written straight into SQLite in one transaction, before any service
//! starts. A million rows take a second or two this way, against minutes
//! through RPC creates.
//!
//! On PostgreSQL (`--pg-url`) each target gets a database of its own,
//! created and migrated the same way, seeded with one `INSERT … SELECT`,
//! and dropped when the target is done.

use person_service::store::Store;
use rusqlite::{params, Connection};
use std::path::Path;
use std::time::Duration;

const FIRST: &[&str] = &["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald"];
const LAST: &[&str] = &[
    "Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth",
];

/// A connection to the database at `path` that waits for locks.
fn open(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Creates (and migrates) the database at `path` and adds `rows` people
/// with ids 1..=rows. Blocking.
pub fn create_db(path: &Path, rows: u64) -> Result<(), String> {
    // Opening migrates; dropping the store ends its writer thread.
    drop(Store::open(path).map_err(|e| e.to_string())?);
    let mut conn = open(path)?;
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO person (first_name, last_name, age, member) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(|e| e.to_string())?;
        for i in 0..rows {
            let n = i as usize;
            insert
                .execute(params![
                    FIRST[n % FIRST.len()],
                    LAST[(n / FIRST.len()) % LAST.len()],
                    (i % 100) as i64,
                    i % 3 == 0
                ])
                .map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(())
}

/// People in the table now.
pub fn count(path: &Path) -> Result<u64, String> {
    let n: i64 = open(path)?
        .query_row("SELECT count(*) FROM person", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// A PostgreSQL database for one target, dropped (`WITH (FORCE)`) when
/// this is dropped.
pub struct PgDb {
    server: String,
    name: String,
}

impl PgDb {
    /// The URL person-service is given.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server.trim_end_matches('/'), self.name)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop cannot await and runs inside the bench's runtime.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(pg_admin(
                &server,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the bench database {}", self.name);
        }
    }
}

/// Runs `sql` on the `postgres` database of `server`.
async fn pg_admin(server: &str, sql: &str) -> Result<(), String> {
    let url = format!("{}/postgres", server.trim_end_matches('/'));
    let shown = person_service::store::Database::parse(&url).redacted();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("{shown}: {e}"))?;
    let task = tokio::spawn(conn);
    let result = client
        .batch_execute(sql)
        .await
        .map_err(|e| format!("{shown}: {e}"));
    drop(client);
    let _ = task.await;
    result
}

/// Creates database `bench_{target}` on `server`, migrates it with
/// person-service's store and adds `rows` people with ids 1..=rows.
pub async fn pg_create_db(server: &str, target: &str, rows: u64) -> Result<PgDb, String> {
    let name: String = format!("bench_{target}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    pg_admin(
        server,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await?;
    pg_admin(server, &format!("CREATE DATABASE {name}")).await?;
    let db = PgDb {
        server: server.to_owned(),
        name,
    };
    let url = db.url();
    let store = person_service::store::Store::connect(
        &person_service::store::Database::parse(&url),
        person_service::store::StoreOptions::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    drop(store);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(conn);
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    let seeded = client
        .execute(
            "INSERT INTO person (first_name, last_name, age, member)
             SELECT (ARRAY['Ada','Alan','Grace','Edsger','Barbara','Donald'])[i % 6 + 1],
                    (ARRAY['Lovelace','Turing','Hopper','Dijkstra','Liskov','Knuth'])[(i / 6) % 6 + 1],
                    i % 100, i % 3 = 0
             FROM generate_series(0, $1::bigint - 1) AS i",
            &[&rows],
        )
        .await
        .map_err(|e| e.to_string());
    drop(client);
    let _ = task.await;
    seeded.map(|_| db)
}

/// People in the PostgreSQL table now.
pub async fn pg_count(url: &str) -> Result<u64, String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(conn);
    let n: Result<i64, String> = client
        .query_one("SELECT count(*) FROM person", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| e.to_string());
    drop(client);
    let _ = task.await;
    Ok(u64::try_from(n?).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_the_person_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        create_db(&path, 1000).unwrap();
        assert_eq!(count(&path).unwrap(), 1000);
    }
}
