//! Settings shared by services and proxies, with nameko's defaults.

use crate::connection::{BrokerList, ConnectOptions};
use crate::error::ConnectError;
use crate::wire;
use std::path::PathBuf;
use std::time::Duration;

/// How often and how long to retry a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failure; doubles after each one.
    pub initial: Duration,
    /// Longest wait between attempts.
    pub max: Duration,
    /// Give up after this many attempts; `None` retries until shutdown.
    pub attempts: Option<u32>,
}

impl RetryPolicy {
    /// Retry until shutdown, waiting 0.5 s, 1 s, 2 s, 4 s, then 5 s
    /// (kombu's `interval_max`), so a broker back from a restart is found
    /// within five seconds.
    pub fn forever() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(5),
            attempts: None,
        }
    }

    /// One attempt, no retry: for command-line tools.
    pub fn once() -> Self {
        RetryPolicy {
            attempts: Some(1),
            ..Self::forever()
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::forever()
    }
}

/// The type of the queues a service shares with its other instances
/// (`rpc-{service}` and the queues of service_pool and singleton event
/// handlers). Reply queues and broadcast queues are always classic: they
/// are exclusive or auto-delete, which quorum queues cannot be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum QueueType {
    /// RabbitMQ's default, as nameko declares them: no `x-queue-type`
    /// argument is sent at all, so declarations agree with nameko peers'.
    #[default]
    Classic,
    /// `x-queue-type=quorum`: replicated over a cluster's nodes (Raft), so
    /// the queue and its messages survive the loss of a node.
    Quorum,
}

impl QueueType {
    /// The name RabbitMQ and the settings use: `classic` or `quorum`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QueueType {
    type Err = String;

    /// `classic` or `quorum`, in any case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            _ => Err(format!(
                "`{text}` is not a queue type; use classic or quorum"
            )),
        }
    }
}

/// Settings of a service or a proxy. Defaults are nameko's.
#[derive(Clone, Debug)]
pub struct Config {
    /// The brokers (`AMQP_URI`): one URI, or several (kombu's `;` list)
    /// to fail over between, round-robin. See [`BrokerList`].
    pub amqp_uri: BrokerList,
    /// RPC exchange (`rpc_exchange`, default `nameko-rpc`); callers and
    /// services must agree.
    pub rpc_exchange: String,
    /// Calls a service runs at once and its per-consumer prefetch
    /// (`max_workers`, default 10).
    pub max_workers: usize,
    /// Parents kept in a call-id stack (`parent_calls_tracked`, default 10).
    pub parent_calls_tracked: usize,
    /// Heartbeat asked of the broker, in seconds (`HEARTBEAT`, default 60).
    pub heartbeat: u16,
    /// Requests a service holds unacknowledged at once, per queue it
    /// consumes (`basic.qos` prefetch). `None` (the default) is nameko's
    /// rule, `max_workers`. A request stays unacknowledged for its whole
    /// round trip (handler, reply, the broker's confirm, ack), so a prefetch
    /// above `max_workers` keeps the workers busy while replies are
    /// confirmed: see BENCHMARKS.md. Invisible to nameko peers.
    pub prefetch: Option<u16>,
    /// Largest AMQP frame asked for, in bytes (default 16 KiB; a URI's
    /// `?frame_max=` wins). Larger messages are split into frames; the
    /// client keeps 2 × 32 frames of buffer per connection, so RabbitMQ's
    /// 128 KiB default would cost 8 MiB per connection, 16 KiB costs 1 MiB.
    pub frame_max: u32,
    /// Default timeout of a call made through a proxy (default 30 s).
    pub rpc_timeout: Duration,
    /// Largest request body a service accepts (default 1 MiB); larger ones
    /// get a MalformedRequest reply.
    pub max_request_bytes: usize,
    /// Publish requests, replies and events persistent (delivery mode 2, as
    /// nameko does). Transient messages are cheaper for the broker; nameko
    /// peers do not look at the mode.
    pub persistent: bool,
    /// Retries of the first connection, and the back-off of reconnections
    /// (which, once a connection has worked, retry until stopped whatever
    /// `attempts` says).
    pub connect_retry: RetryPolicy,
    /// CA certificate (PEM) for `amqps` brokers outside the system's trust.
    pub tls_ca_file: Option<PathBuf>,
    /// How long a stopping service waits for running calls before it gives
    /// up on them (their requests then go back to the queue).
    pub shutdown_timeout: Duration,
    /// The type of the service's shared queues (`QUEUE_TYPE`, default
    /// classic, as nameko). See [`QueueType`].
    pub queue_type: QueueType,
}

/// Longest duration a setting accepts: deadlines are computed as
/// `now + duration`, which cannot hold much more, and anything longer than
/// a year is a typo anyway.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a number of seconds (fractions allowed, zero allowed, at most
/// [`MAX_DURATION`]), as command lines, environment variables and config
/// files give timeouts and intervals.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(rpc_core::config::seconds("2.5"), Ok(Duration::from_millis(2500)));
/// assert!(rpc_core::config::seconds("soon").is_err());
/// ```
pub fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!("`{text}` is more than a year"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{text}` is not a usable duration"))
}

/// [`seconds`], more than zero (a zero interval would make a timer spin, a
/// zero timeout fail every call).
pub fn positive_seconds(text: &str) -> Result<Duration, String> {
    let d = seconds(text)?;
    if d.is_zero() {
        Err(format!(
            "`{text}` is not a positive number of seconds (it must be more than zero)"
        ))
    } else {
        Ok(d)
    }
}

/// The broker nameko's command line uses when given none.
pub const DEFAULT_AMQP_URI: &str = "amqp://guest:guest@localhost:5672/%2f";

impl Default for Config {
    fn default() -> Self {
        Config {
            amqp_uri: DEFAULT_AMQP_URI
                .parse()
                .unwrap_or_else(|_| unreachable!("the default URI parses")),
            rpc_exchange: wire::DEFAULT_RPC_EXCHANGE.to_owned(),
            max_workers: 10,
            parent_calls_tracked: 10,
            heartbeat: 60,
            prefetch: None,
            frame_max: 16 * 1024,
            rpc_timeout: Duration::from_secs(30),
            max_request_bytes: 1 << 20,
            persistent: true,
            connect_retry: RetryPolicy::forever(),
            tls_ca_file: None,
            shutdown_timeout: Duration::from_secs(30),
            queue_type: QueueType::Classic,
        }
    }
}

impl Config {
    /// Defaults with the given broker URI, or `;`-separated list of URIs.
    pub fn new(amqp_uri: &str) -> Result<Self, ConnectError> {
        Ok(Config {
            amqp_uri: amqp_uri.parse()?,
            ..Config::default()
        })
    }

    /// The arguments a shared queue is declared with: none for classic
    /// (exactly what nameko sends), `x-queue-type` for quorum.
    pub(crate) fn shared_queue_args(&self) -> lapin::types::FieldTable {
        let mut args = lapin::types::FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                lapin::types::AMQPValue::LongString("quorum".into()),
            );
        }
        args
    }

    /// The AMQP delivery mode messages are published with.
    pub fn delivery_mode(&self) -> u8 {
        if self.persistent {
            wire::PERSISTENT
        } else {
            wire::TRANSIENT
        }
    }

    pub(crate) fn connect_options(&self, connection_name: String) -> ConnectOptions {
        ConnectOptions {
            heartbeat: self.heartbeat,
            frame_max: self.frame_max,
            retry: self.connect_retry.clone(),
            connection_name,
            tls_ca_file: self.tls_ca_file.clone(),
        }
    }

    /// The prefetch a service consumes with.
    pub(crate) fn prefetch(&self) -> u16 {
        self.prefetch
            .filter(|p| *p > 0)
            .unwrap_or_else(|| u16::try_from(self.workers()).unwrap_or(u16::MAX))
    }

    /// max_workers as nameko reads it: 0 means the default, 10.
    pub(crate) fn workers(&self) -> usize {
        if self.max_workers == 0 {
            10
        } else {
            self.max_workers
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_types_parse_and_classic_sends_no_argument() {
        assert_eq!("quorum".parse(), Ok(QueueType::Quorum));
        assert_eq!(" Classic ".parse(), Ok(QueueType::Classic));
        assert!("stream"
            .parse::<QueueType>()
            .unwrap_err()
            .contains("classic or quorum"));
        let config = Config::default();
        assert_eq!(config.queue_type, QueueType::Classic);
        assert!(config.shared_queue_args().inner().is_empty());
        let quorum = Config {
            queue_type: QueueType::Quorum,
            ..Config::default()
        };
        assert!(quorum
            .shared_queue_args()
            .inner()
            .contains_key("x-queue-type"));
    }
}
