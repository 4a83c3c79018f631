//! Databases for the services: created and migrated by person-service's own
//! store (so the schema is exactly its migrations), then filled with rows
//! written straight into SQLite in one transaction, before any service
//! starts. A million rows take a second or two this way, against minutes
//! through RPC creates.

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
