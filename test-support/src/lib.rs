//! Helpers for the workspace's integration tests.
//!
//! Tests talk to the real RabbitMQ given by `AMQP_URI` (default: the local
//! broker with guest/guest). When it is not there they fail at once with a
//! message saying so; they never skip. No test can wait forever: see
//! [`within`].

pub mod cluster;
pub mod faulty;
pub mod nameko;
pub mod output;
pub mod postgres;
pub mod python;
pub mod raw;
mod within;

pub use within::{open_waits, within, WithinExt, START_BOUND, STOP_BOUND};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The broker tests use.
pub fn broker_uri() -> String {
    std::env::var("AMQP_URI").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The broker URI, after checking that something answers on its port.
///
/// # Panics
/// With instructions when the broker is not reachable.
pub fn require_broker() -> String {
    init_logging();
    let uri = broker_uri();
    let hostport = broker_hostport(&uri);
    let reachable = hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok());
    assert!(
        reachable,
        "RabbitMQ is not reachable at {hostport}. These tests need a real broker: \
         start one (`rabbitmq-server -detached && rabbitmqctl await_startup`) or point AMQP_URI at one."
    );
    uri
}

/// The `host:port` of an AMQP URI (port 5672 when it names none).
pub fn broker_hostport(uri: &str) -> String {
    let after_scheme = uri.split_once("://").map_or(uri, |(_, r)| r);
    let authority = after_scheme.split('/').next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5672")
    }
}

/// `prefix-` and ten random hex digits: a name no other test (or earlier
/// run) uses.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Deletes the queues and exchanges a test declared when it is dropped,
/// whether the test passed or panicked.
#[derive(Debug, Default)]
pub struct Cleanup {
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Cleanup {
    /// Nothing to delete yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deletes `rpc-{service}` at the end.
    pub fn service(mut self, service: &str) -> Self {
        self.queues.push(format!("rpc-{service}"));
        self
    }

    /// Deletes this queue at the end.
    pub fn queue(mut self, queue: &str) -> Self {
        self.queues.push(queue.to_owned());
        self
    }

    /// Deletes this exchange at the end.
    pub fn exchange(mut self, exchange: &str) -> Self {
        self.exchanges.push(exchange.to_owned());
        self
    }

    /// Adds a queue after creation.
    pub fn add_queue(&mut self, queue: &str) {
        self.queues.push(queue.to_owned());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        // Drop may run inside a test's runtime, so use a thread of our own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(conn) =
                    Connection::connect(&broker_uri(), ConnectionProperties::default()).await
                else {
                    return;
                };
                for q in queues {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                }
                for x in exchanges {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                            .await;
                    }
                }
                let _ = conn.close(200, "OK".into()).await;
            });
        })
        .join();
    }
}
