//! Command line, environment and config file.
//!
//! Each setting is taken from the first of: its flag, its environment
//! variable, the `--config` file, its default. The file is a nameko config
//! file ([`rpc_core::config_file`]): an existing nameko deployment's file
//! works as is, and may also carry this service's own keys, named like the
//! environment variables ([`FILE_KEYS`]).

use crate::store::{Database, StoreOptions, DEFAULT_POOL_SIZE};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use rpc_core::config_file::{ConfigFileError, FileConfig};
use std::ffi::OsString;
use std::path::PathBuf;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Default prefetch: 64. A request stays unacknowledged for its whole round
/// trip (handler, reply, the broker's confirm, ack), so with nameko's rule
/// (prefetch = max_workers = 10) the workers sit idle while replies are
/// confirmed; 64 keeps them busy (BENCHMARKS.md has the figures). Invisible
/// to nameko peers; 0 restores nameko's rule.
pub const DEFAULT_PREFETCH: u16 = 64;

/// Default worker count, as nameko's.
const DEFAULT_MAX_WORKERS: u16 = 10;
/// Default service name.
const DEFAULT_SERVICE_NAME: &str = "person";
/// Default largest HTTP request body, in bytes.
const DEFAULT_HTTP_MAX_BODY: usize = 64 * 1024;

/// person-service's own keys in a `--config` file, beside nameko's
/// (`AMQP_URI` and `max_workers` are nameko's keys for `--amqp-uri` and
/// `--max-workers`).
pub const FILE_KEYS: &[&str] = &[
    "PERSON_DB",
    "PERSON_DB_POOL_SIZE",
    "PERSON_DB_STATEMENT_TIMEOUT",
    "SERVICE_NAME",
    "HTTP_ADDR",
    "HTTP_MAX_BODY",
    "LOG_FORMAT",
    "PREFETCH",
    "SHUTDOWN_TIMEOUT",
];

/// person-service's settings. Every flag can also be given in the
/// environment or in the `--config` file; a flag wins over the environment,
/// which wins over the file.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "person-service",
    version,
    about = "A database of people served over nameko-compatible RPC on RabbitMQ, stored in SQLite or PostgreSQL.",
    after_help = "Settings come from the first of: flag, environment, --config file, default.\n\
\n\
Examples:\n  person-service\n  person-service --http 127.0.0.1:8000\n  person-service --config config.yaml\n  person-service --amqp-uri amqp://app:$RABBIT_PASSWORD@rabbit:5672/%2f --db /data/person.db\n  PERSON_DB=postgres://person:$PG_PASSWORD@db:5432/person person-service\n  AMQP_URI=pyamqp://rabbit person-service --service-name person-staging"
)]
pub struct Settings {
    /// A nameko config file (YAML, with ${VAR:default} substitution):
    /// AMQP_URI, max_workers, rpc_exchange, parent_calls_tracked, HEARTBEAT,
    /// AMQP_SSL's ca_certs, QUEUE_TYPE, and this service's own PERSON_DB,
    /// PERSON_DB_POOL_SIZE, PERSON_DB_STATEMENT_TIMEOUT, SERVICE_NAME,
    /// HTTP_ADDR, HTTP_MAX_BODY, LOG_FORMAT, PREFETCH, SHUTDOWN_TIMEOUT. Flags
    /// and environment win over it. A file that cannot be used stops
    /// start-up (exit status 2).
    #[arg(long = "config", env = "CONFIG_FILE", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Broker URI: amqp://, amqps:// or nameko's pyamqp://, with kombu's vhost
    /// rules; or a `;`-separated list of them to fail over between, tried in
    /// order and round-robin after a loss [default: amqp://localhost:5672/%2f
    /// as user guest]
    #[arg(
        long,
        env = "AMQP_URI",
        default_value = rpc_core::config::DEFAULT_AMQP_URI,
        hide_default_value = true,
        hide_env_values = true
    )]
    pub amqp_uri: String,

    /// Where people are kept: a SQLite file (one host), or a PostgreSQL
    /// URL, postgres://user:password@host:5432/dbname (several instances on
    /// one database). Created (SQLite) and migrated at start-up.
    #[arg(
        long,
        env = "PERSON_DB",
        default_value = "person.db",
        hide_env_values = true
    )]
    pub db: Database,

    /// PostgreSQL: connections in the pool. Calls beyond it wait (up to the
    /// statement timeout) for one to be free.
    #[arg(long, env = "PERSON_DB_POOL_SIZE", default_value_t = DEFAULT_POOL_SIZE, value_parser = parse_pool_size)]
    pub db_pool_size: usize,

    /// PostgreSQL: seconds one statement may run, and a call may wait for a
    /// connection; beyond it the call fails with StorageError rather than
    /// hang while the database is away.
    #[arg(long, env = "PERSON_DB_STATEMENT_TIMEOUT", default_value = "5", value_parser = rpc_core::config::positive_seconds)]
    pub db_statement_timeout: std::time::Duration,

    /// Calls served at once (and the prefetch of the request queue). In a
    /// config file: nameko's max_workers (0 there means 10, as in nameko).
    #[arg(long, env = "MAX_WORKERS", default_value_t = DEFAULT_MAX_WORKERS, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_workers: u16,

    /// Requests held unacknowledged at once (the request queue's prefetch):
    /// more than max_workers keeps the workers busy while replies are
    /// confirmed (see BENCHMARKS.md); 0 means max_workers, nameko's rule.
    #[arg(long, env = "PREFETCH", default_value_t = DEFAULT_PREFETCH)]
    pub prefetch: u16,

    /// Service name: requests come from queue rpc-{name}. Give tests and
    /// staging copies their own.
    #[arg(long, env = "SERVICE_NAME", default_value = DEFAULT_SERVICE_NAME)]
    pub service_name: String,

    /// Serve the HTTP (REST) face on this address, e.g. 127.0.0.1:8000 or
    /// 0.0.0.0:8000; off when not given.
    #[arg(long, env = "HTTP_ADDR")]
    pub http: Option<std::net::SocketAddr>,

    /// Largest HTTP request body accepted, in bytes.
    #[arg(long, env = "HTTP_MAX_BODY", default_value_t = DEFAULT_HTTP_MAX_BODY)]
    pub http_max_body: usize,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Seconds a stop (SIGTERM) waits for calls and HTTP requests in
    /// flight; then they are dropped, their requests return to the queue,
    /// and the process exits. Keep it below the orchestrator's grace period
    /// (docker-compose.yml: 35 s).
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30", value_parser = rpc_core::config::seconds)]
    pub shutdown_timeout: std::time::Duration,

    /// Type of the queues the service's instances share (rpc-{name} and its
    /// event handlers' queues): classic, as nameko declares them, or quorum,
    /// replicated over a RabbitMQ cluster. Reply and broadcast queues stay
    /// classic. An existing queue keeps its type: see README "Quorum
    /// queues" to migrate.
    #[arg(long, env = "QUEUE_TYPE", default_value = "classic", value_parser = parse_queue_type)]
    pub queue_type: rpc_core::QueueType,

    /// The `--config` file as loaded: its nameko settings that have no flag
    /// (rpc_exchange, HEARTBEAT, …) and its warnings. `None` without one.
    #[arg(skip)]
    pub file: Option<FileConfig>,
}

/// A pool of at least one connection.
fn parse_pool_size(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "`{text}` is not a number of connections (1 or more)"
        )),
    }
}

fn parse_queue_type(text: &str) -> Result<rpc_core::QueueType, String> {
    text.parse()
}

/// Why the settings cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A flag or an environment variable is wrong, or `--help` /
    /// `--version` was asked for: [`clap::Error::exit`] prints it.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The config file is unusable; the message names the file and key.
    #[error(transparent)]
    File(#[from] ConfigFileError),
}

impl Settings {
    /// Reads the command line, the environment and the `--config` file.
    pub fn load() -> Result<Self, SettingsError> {
        Self::load_from(std::env::args_os())
    }

    /// [`load`](Self::load) with the given arguments (the first is the
    /// program name); the environment is still the process's.
    pub fn load_from<I, T>(args: I) -> Result<Self, SettingsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut settings = Self::from_arg_matches(&matches)?;
        if let Some(path) = settings.config_file.clone() {
            let file = FileConfig::load(&path, FILE_KEYS)?;
            settings.layer_file(&matches, &file)?;
            settings.file = Some(file);
        }
        Ok(settings)
    }

    /// Takes each setting that neither a flag nor the environment gave from
    /// the file, when the file has it.
    fn layer_file(
        &mut self,
        matches: &ArgMatches,
        file: &FileConfig,
    ) -> Result<(), ConfigFileError> {
        let from_file = |id: &str| {
            matches!(
                matches.value_source(id),
                None | Some(ValueSource::DefaultValue)
            )
        };
        if from_file("amqp_uri") {
            if let Some(uri) = file.amqp_uri_text()? {
                self.amqp_uri = uri;
            }
        }
        if from_file("queue_type") {
            if let Some(t) = file.queue_type {
                self.queue_type = t;
            }
        }
        if from_file("max_workers") {
            if let Some(n) = file.max_workers {
                // nameko: a falsy max_workers means the default, 10.
                let n = if n == 0 { 10 } else { n };
                self.max_workers = u16::try_from(n)
                    .map_err(|_| file.invalid("max_workers", "must be at most 65535"))?;
            }
        }
        if from_file("db") {
            if let Some(db) = file.get_text("PERSON_DB")? {
                self.db = Database::parse(&db);
            }
        }
        if from_file("db_pool_size") {
            if let Some(n) = file.get_text("PERSON_DB_POOL_SIZE")? {
                self.db_pool_size =
                    parse_pool_size(&n).map_err(|e| file.invalid("PERSON_DB_POOL_SIZE", e))?;
            }
        }
        if from_file("db_statement_timeout") {
            if let Some(text) = file.get_text("PERSON_DB_STATEMENT_TIMEOUT")? {
                self.db_statement_timeout = rpc_core::config::positive_seconds(&text)
                    .map_err(|e| file.invalid("PERSON_DB_STATEMENT_TIMEOUT", e))?;
            }
        }
        if from_file("service_name") {
            if let Some(name) = file.get_text("SERVICE_NAME")? {
                self.service_name = name;
            }
        }
        if from_file("http") {
            if let Some(addr) = file.get_text("HTTP_ADDR")? {
                self.http = Some(addr.parse().map_err(|_| {
                    file.invalid(
                        "HTTP_ADDR",
                        format!("`{addr}` is not an address like 127.0.0.1:8000"),
                    )
                })?);
            }
        }
        if from_file("prefetch") {
            if let Some(n) = file.get_text("PREFETCH")? {
                self.prefetch = n.parse().map_err(|_| {
                    file.invalid("PREFETCH", format!("`{n}` is not a number from 0 to 65535"))
                })?;
            }
        }
        if from_file("http_max_body") {
            if let Some(n) = file.get_text("HTTP_MAX_BODY")? {
                self.http_max_body = n.parse().map_err(|_| {
                    file.invalid("HTTP_MAX_BODY", format!("`{n}` is not a number of bytes"))
                })?;
            }
        }
        if from_file("shutdown_timeout") {
            if let Some(text) = file.get_text("SHUTDOWN_TIMEOUT")? {
                self.shutdown_timeout = rpc_core::config::seconds(&text)
                    .map_err(|e| file.invalid("SHUTDOWN_TIMEOUT", e))?;
            }
        }
        if from_file("log_format") {
            if let Some(format) = file.get_text("LOG_FORMAT")? {
                self.log_format = LogFormat::from_str(&format, true).map_err(|_| {
                    file.invalid("LOG_FORMAT", format!("`{format}` is not one of text, json"))
                })?;
            }
        }
        Ok(())
    }

    /// The rpc-core configuration these settings describe: defaults, then
    /// the config file's nameko settings, then the broker and worker count
    /// as layered above.
    pub fn rpc_config(&self) -> Result<rpc_core::Config, String> {
        let mut config = rpc_core::Config::default();
        if let Some(file) = &self.file {
            file.apply_to(&mut config);
        }
        config.amqp_uri = self
            .amqp_uri
            .parse()
            .map_err(|e: rpc_core::ConnectError| e.to_string())?;
        config.max_workers = usize::from(self.max_workers);
        config.prefetch = (self.prefetch > 0).then_some(self.prefetch);
        config.shutdown_timeout = self.shutdown_timeout;
        config.queue_type = self.queue_type;
        Ok(config)
    }

    /// The store's options these settings describe.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            pool_size: self.db_pool_size,
            statement_timeout: self.db_statement_timeout,
            ..StoreOptions::default()
        }
    }

    /// Settings for a given broker and database (a SQLite path, or a
    /// [`Database`]), the rest by default (for tests and embedding).
    pub fn new(amqp_uri: &str, db: impl Into<Database>) -> Self {
        Settings {
            config_file: None,
            amqp_uri: amqp_uri.to_owned(),
            db: db.into(),
            db_pool_size: DEFAULT_POOL_SIZE,
            db_statement_timeout: crate::store::DEFAULT_STATEMENT_TIMEOUT,
            max_workers: DEFAULT_MAX_WORKERS,
            prefetch: DEFAULT_PREFETCH,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            http: None,
            http_max_body: DEFAULT_HTTP_MAX_BODY,
            log_format: LogFormat::Text,
            shutdown_timeout: std::time::Duration::from_secs(30),
            queue_type: rpc_core::QueueType::Classic,
            file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn load(args: &[&str]) -> Result<Settings, SettingsError> {
        Settings::load_from(std::iter::once("person-service").chain(args.iter().copied()))
    }

    // The environment is the test process's, so these use flags and keys
    // that no test environment sets; tests/config.rs runs the binary with
    // a controlled environment.
    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let (_dir, path) =
            write("HTTP_MAX_BODY: 1000\nLOG_FORMAT: json\nrpc_exchange: other-rpc\nHEARTBEAT: 5\n");
        let path = path.to_str().unwrap();
        let s = load(&["--config", path]).unwrap();
        assert_eq!(s.http_max_body, 1000);
        assert_eq!(s.log_format, LogFormat::Json);
        let config = s.rpc_config().unwrap();
        assert_eq!(config.rpc_exchange, "other-rpc");
        assert_eq!(config.heartbeat, 5);

        let s = load(&[
            "--config",
            path,
            "--http-max-body",
            "7",
            "--log-format",
            "text",
        ])
        .unwrap();
        assert_eq!(s.http_max_body, 7);
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn queue_type_comes_from_flag_then_file_then_default() {
        assert_eq!(
            Settings::new("amqp://h/", PathBuf::from("x.db"))
                .rpc_config()
                .unwrap()
                .queue_type,
            rpc_core::QueueType::Classic
        );
        let (_dir, path) = write("QUEUE_TYPE: quorum\n");
        let path = path.to_str().unwrap();
        if std::env::var_os("QUEUE_TYPE").is_none() {
            let s = load(&["--config", path]).unwrap();
            assert_eq!(
                s.rpc_config().unwrap().queue_type,
                rpc_core::QueueType::Quorum
            );
        }
        let s = load(&["--config", path, "--queue-type", "classic"]).unwrap();
        assert_eq!(
            s.rpc_config().unwrap().queue_type,
            rpc_core::QueueType::Classic
        );
        assert!(load(&["--queue-type", "stream"]).is_err());
        let (_dir, bad) = write("QUEUE_TYPE: lazy\n");
        let msg = load(&["--config", bad.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("QUEUE_TYPE") && msg.contains("classic or quorum"),
            "{msg}"
        );
    }

    #[test]
    fn a_yaml_list_of_brokers_is_layered_as_a_list() {
        let (_dir, path) =
            write("AMQP_URI:\n  - amqp://u:pa;ss@127.0.0.1:1/\n  - amqp://u:pw@b:5673/v\n");
        if std::env::var_os("AMQP_URI").is_none() {
            let s = load(&["--config", path.to_str().unwrap()]).unwrap();
            let config = s.rpc_config().unwrap();
            assert_eq!(config.amqp_uri.endpoint(), "127.0.0.1:1, b:5673");
            assert!(!format!("{s:?} {config:?}").contains("pa;ss"));
        }
    }

    #[test]
    fn file_values_are_checked_like_flags() {
        let (_dir, path) = write("HTTP_MAX_BODY: lots\n");
        let err = load(&["--config", path.to_str().unwrap()]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("HTTP_MAX_BODY") && msg.contains("config.yaml"),
            "{msg}"
        );
        let (_dir, path) = write("LOG_FORMAT: xml\n");
        assert!(load(&["--config", path.to_str().unwrap()]).is_err());
    }

    #[test]
    fn settings_new_still_gives_a_config() {
        let s = Settings::new("amqp://u:p@h:1/v", PathBuf::from("x.db"));
        let config = s.rpc_config().unwrap();
        assert_eq!(config.amqp_uri.endpoint(), "h:1");
        assert_eq!(config.rpc_exchange, "nameko-rpc");
    }

    #[test]
    fn the_database_settings_layer_like_the_others() {
        let (_dir, path) = write(
            "PERSON_DB: postgres://app:s3cret@db/person\nPERSON_DB_POOL_SIZE: 4\nPERSON_DB_STATEMENT_TIMEOUT: 2.5\n",
        );
        let path = path.to_str().unwrap();
        let s = load(&["--config", path]).unwrap();
        assert!(matches!(s.db, Database::Postgres(_)));
        assert_eq!(s.db.to_string(), "postgres://app:***@db/person");
        assert!(!format!("{s:?}").contains("s3cret"));
        assert_eq!(s.store_options().pool_size, 4);
        assert_eq!(
            s.store_options().statement_timeout,
            std::time::Duration::from_millis(2500)
        );
        let s = load(&[
            "--config",
            path,
            "--db",
            "/data/p.db",
            "--db-pool-size",
            "9",
            "--db-statement-timeout",
            "1",
        ])
        .unwrap();
        assert_eq!(s.db, Database::Sqlite(PathBuf::from("/data/p.db")));
        assert_eq!(s.db_pool_size, 9);
        assert_eq!(s.db_statement_timeout, std::time::Duration::from_secs(1));
        assert!(load(&["--db-pool-size", "0"]).is_err());
        assert!(load(&["--db-statement-timeout", "0"]).is_err());
        let (_dir, bad) = write("PERSON_DB_STATEMENT_TIMEOUT: 0\n");
        let msg = load(&["--config", bad.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("PERSON_DB_STATEMENT_TIMEOUT"), "{msg}");
    }

    #[test]
    fn a_broker_uri_that_does_not_parse_is_refused() {
        let s = Settings::new("http://h:1/", PathBuf::from("x.db"));
        let err = s.rpc_config().unwrap_err();
        assert!(err.contains("http"), "{err}");
    }
}
