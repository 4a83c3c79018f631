//! Where the people are kept: a SQLite file or a PostgreSQL URL, told apart
//! by the URL's scheme. A PostgreSQL URL may carry a password, so the only
//! way to print one is its masked form: logs, errors, `/healthz` and
//! `Debug` all go through [`Database::redacted`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The database setting (`--db`, `PERSON_DB`).
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file, created when missing.
    Sqlite(PathBuf),
    /// A PostgreSQL server and database.
    Postgres(PostgresUrl),
}

/// A `postgres://` or `postgresql://` URL, kept whole for connecting and
/// masked for everything else.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    url: String,
    redacted: String,
}

impl PostgresUrl {
    /// The URL with its password, for the driver only.
    pub(crate) fn secret(&self) -> &str {
        &self.url
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl Database {
    /// Reads the setting: a URL whose scheme is `postgres` or `postgresql`
    /// names a PostgreSQL database, anything else a SQLite file. Never
    /// fails, so that a command-line parser never echoes a URL (and its
    /// password) back in an error; a malformed URL is reported, masked,
    /// when the store opens.
    pub fn parse(text: &str) -> Database {
        let lower = text.get(..13).unwrap_or(text).to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Database::Postgres(PostgresUrl {
                url: text.to_owned(),
                redacted: redact(text),
            })
        } else {
            Database::Sqlite(PathBuf::from(text))
        }
    }

    /// The setting as it may be shown: a path, or the URL without its
    /// password.
    pub fn redacted(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => url.redacted.clone(),
        }
    }

    /// Which kind of store this is, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }
}

impl FromStr for Database {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Database::parse(text))
    }
}

impl From<PathBuf> for Database {
    fn from(path: PathBuf) -> Self {
        Database::Sqlite(path)
    }
}

impl From<&std::path::Path> for Database {
    fn from(path: &std::path::Path) -> Self {
        Database::Sqlite(path.to_owned())
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Database::Postgres(url) => f.debug_tuple("Postgres").field(&url.redacted).finish(),
        }
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// Masks the password of a PostgreSQL URL: in the user info
/// (`user:secret@host`) and in a `password=` query parameter.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***{host}"),
                None => format!("{userinfo}{host}"),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_decides_the_backend() {
        assert!(matches!(
            Database::parse("person.db"),
            Database::Sqlite(p) if p == std::path::Path::new("person.db")
        ));
        assert!(matches!(
            Database::parse("/x/postgres.db"),
            Database::Sqlite(_)
        ));
        assert!(matches!(
            Database::parse("postgres://h/db"),
            Database::Postgres(_)
        ));
        assert!(matches!(
            Database::parse("PostgreSQL://h/db"),
            Database::Postgres(_)
        ));
    }

    #[test]
    fn passwords_never_show() {
        let cases = [
            (
                "postgres://u:s3cret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            (
                "postgres://u:p%40ss@h/db?sslmode=disable",
                "postgres://u:***@h/db?sslmode=disable",
            ),
            ("postgresql://u@h/db", "postgresql://u@h/db"),
            (
                "postgres://h/db?user=u&password=s3cret",
                "postgres://h/db?user=u&password=***",
            ),
            ("postgres://u:a@b@h/db", "postgres://u:***@h/db"),
        ];
        for (url, want) in cases {
            let db = Database::parse(url);
            assert_eq!(db.redacted(), want);
            assert_eq!(db.to_string(), want);
            let debug = format!("{db:?}");
            assert!(
                !debug.contains("s3cret") && !debug.contains("p%40ss"),
                "{debug}"
            );
        }
    }
}
