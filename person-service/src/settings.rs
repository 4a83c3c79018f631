//! Command-line and environment settings.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// person-service's settings. Every flag can also be given in the
/// environment; a flag wins over the environment.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "person-service",
    version,
    about = "A database of people served over nameko-compatible RPC on RabbitMQ, stored in SQLite.",
    after_help = "Examples:\n  person-service\n  person-service --http 127.0.0.1:8000\n  person-service --amqp-uri amqp://app:$RABBIT_PASSWORD@rabbit:5672/%2f --db /data/person.db\n  AMQP_URI=pyamqp://rabbit person-service --service-name person-staging"
)]
pub struct Settings {
    /// Broker URI: amqp://, amqps:// or nameko's pyamqp://, with kombu's vhost
    /// rules [default: amqp://localhost:5672/%2f as user guest]
    #[arg(
        long,
        env = "AMQP_URI",
        default_value = rpc_core::config::DEFAULT_AMQP_URI,
        hide_default_value = true,
        hide_env_values = true
    )]
    pub amqp_uri: String,

    /// SQLite database file; created and migrated at start-up.
    #[arg(long, env = "PERSON_DB", default_value = "person.db")]
    pub db: PathBuf,

    /// Calls served at once (and the prefetch of the request queue).
    #[arg(long, env = "MAX_WORKERS", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_workers: u16,

    /// Service name: requests come from queue rpc-{name}. Give tests and
    /// staging copies their own.
    #[arg(long, env = "SERVICE_NAME", default_value = "person")]
    pub service_name: String,

    /// Serve the HTTP (REST) face on this address, e.g. 127.0.0.1:8000 or
    /// 0.0.0.0:8000; off when not given.
    #[arg(long, env = "HTTP_ADDR")]
    pub http: Option<std::net::SocketAddr>,

    /// Largest HTTP request body accepted, in bytes.
    #[arg(long, env = "HTTP_MAX_BODY", default_value_t = 64 * 1024)]
    pub http_max_body: usize,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Settings {
    /// The rpc-core configuration these settings describe.
    pub fn rpc_config(&self) -> Result<rpc_core::Config, String> {
        let mut config = rpc_core::Config::new(&self.amqp_uri).map_err(|e| e.to_string())?;
        config.max_workers = usize::from(self.max_workers);
        Ok(config)
    }

    /// Settings for a given broker and database, the rest by default (for
    /// tests and embedding).
    pub fn new(amqp_uri: &str, db: PathBuf) -> Self {
        Settings {
            amqp_uri: amqp_uri.to_owned(),
            db,
            max_workers: 10,
            service_name: "person".to_owned(),
            http: None,
            http_max_body: 64 * 1024,
            log_format: LogFormat::Text,
        }
    }
}
