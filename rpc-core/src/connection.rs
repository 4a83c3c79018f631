//! Reaching the broker: AMQP URIs with kombu's rules, and connecting with
//! backoff.
//!
//! A URI carries a password, so [`AmqpUri`] never prints it: `Display` and
//! `Debug` show `amqp://user@host:port/vhost`, and every log line and error
//! names the broker by `host:port` only.

use crate::config::RetryPolicy;
use crate::error::ConnectError;
use lapin::options::ExchangeDeclareOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A parsed `amqp://`, `amqps://` or `pyamqp://` URI.
///
/// kombu's rules apply, so a nameko config's `AMQP_URI` means the same here:
/// no user means `guest:guest`, no port means 5672 (5671 for `amqps`), and
/// the path names the vhost: empty, `/`, `//` and `/%2F` all mean `/`, and
/// `/name` means `name`.
///
/// ```
/// use rpc_core::AmqpUri;
/// let uri: AmqpUri = "pyamqp://app:s3cret@rabbit/%2F".parse().unwrap();
/// assert_eq!(uri.vhost(), "/");
/// assert_eq!(uri.endpoint(), "rabbit:5672");
/// assert!(!uri.to_string().contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUri {
    scheme: String,
    tls: bool,
    username: String,
    password: String,
    host: String,
    port: u16,
    vhost: String,
    heartbeat: Option<u16>,
    connection_timeout_ms: Option<u64>,
    frame_max: Option<u32>,
    channel_max: Option<u16>,
}

impl AmqpUri {
    /// `host:port`, the only way logs and errors name the broker.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The virtual host.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the connection uses TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The heartbeat given in the URI's query (`?heartbeat=N`), if any.
    pub fn heartbeat(&self) -> Option<u16> {
        self.heartbeat
    }

    /// The same URI on another vhost (tests use one vhost each).
    #[must_use]
    pub fn with_vhost(mut self, vhost: &str) -> Self {
        self.vhost = vhost.to_owned();
        self
    }

    fn to_lapin(&self, heartbeat: u16, frame_max: u32) -> AMQPUri {
        AMQPUri {
            scheme: if self.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.username.clone(),
                    password: self.password.clone(),
                },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                frame_max: Some(self.frame_max.unwrap_or(frame_max)),
                channel_max: self.channel_max,
                heartbeat: Some(self.heartbeat.unwrap_or(heartbeat)),
                connection_timeout: self.connection_timeout_ms,
                ..AMQPQueryString::default()
            },
        }
    }
}

impl fmt::Display for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}@{}/{}",
            self.scheme,
            percent_encode(&self.username),
            self.endpoint(),
            percent_encode(&self.vhost)
        )
    }
}

impl fmt::Debug for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUri({self})")
    }
}

impl FromStr for AmqpUri {
    type Err = ConnectError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ConnectError::InvalidUri(format!("{why} (in {})", redact(input)));
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://host"))?;
        let scheme = scheme.to_ascii_lowercase();
        let tls = match scheme.as_str() {
            "amqp" | "pyamqp" => false,
            "amqps" => true,
            other => {
                return Err(bad(&format!(
                    "unsupported scheme {other:?}; use amqp, amqps or pyamqp"
                )))
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => ("guest".to_owned(), "guest".to_owned()),
            Some(ui) => {
                let (u, p) = ui.split_once(':').unwrap_or((ui, ""));
                (
                    percent_decode(u).map_err(|e| bad(&e))?,
                    percent_decode(p).map_err(|e| bad(&e))?,
                )
            }
        };
        let default_port = if tls { 5671 } else { 5672 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
                None if after.is_empty() => default_port,
                None => return Err(bad("unexpected text after host")),
            };
            (h.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("invalid port"))?),
                None => (hostport.to_owned(), default_port),
            }
        };
        let host = if host.is_empty() {
            "localhost".to_owned()
        } else {
            host
        };
        // kombu: strip one leading "/", percent-decode, empty means "/".
        let vhost = percent_decode(path.strip_prefix('/').unwrap_or(path)).map_err(|e| bad(&e))?;
        let vhost = if vhost.is_empty() {
            "/".to_owned()
        } else {
            vhost
        };
        let mut uri = AmqpUri {
            scheme,
            tls,
            username,
            password,
            host,
            port,
            vhost,
            heartbeat: None,
            connection_timeout_ms: None,
            frame_max: None,
            channel_max: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| bad(&format!("{k} must be a number")))
            };
            match k {
                "heartbeat" => uri.heartbeat = Some(num(v)?.min(u64::from(u16::MAX)) as u16),
                "connection_timeout" => uri.connection_timeout_ms = Some(num(v)?),
                "frame_max" => uri.frame_max = Some(num(v)?.min(u64::from(u32::MAX)) as u32),
                "channel_max" => uri.channel_max = Some(num(v)?.min(u64::from(u16::MAX)) as u16),
                other => tracing::warn!(option = other, "ignoring unknown AMQP URI option"),
            }
        }
        Ok(uri)
    }
}

/// The URI with any password replaced, for error messages about the text
/// itself (before it parses).
fn redact(input: &str) -> String {
    match (input.find("://"), input.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &input[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &input[..s + 3], user, &input[at..])
        }
        _ => input.to_owned(),
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "invalid percent-escape".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-escapes are not UTF-8".to_owned())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How to open connections: heartbeat, retries and TLS trust.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Heartbeat to ask for, in seconds (0 disables).
    pub heartbeat: u16,
    /// Largest frame to ask for, in bytes (a URI's `?frame_max=` wins).
    pub frame_max: u32,
    /// Retries of the first connection and of reconnections.
    pub retry: RetryPolicy,
    /// Name shown in the broker's connection list.
    pub connection_name: String,
    /// PEM file of the CA that signed the broker's certificate, for `amqps`
    /// brokers whose CA is not in the system's trust store.
    pub tls_ca_file: Option<PathBuf>,
}

/// Connects, retrying with exponential backoff as `options.retry` says.
///
/// Every failed attempt is logged with the broker's `host:port` and the
/// reason; the password never appears. Returns [`ConnectError::Shutdown`] as
/// soon as `shutdown` is cancelled.
pub async fn connect(
    uri: &AmqpUri,
    options: &ConnectOptions,
    shutdown: &CancellationToken,
) -> Result<Connection, ConnectError> {
    let mut backoff = Backoff::new(&options.retry);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Err(ConnectError::Shutdown),
            r = connect_once(uri, options) => r,
        };
        match result {
            Ok(conn) => {
                if attempt > 1 {
                    tracing::info!(broker = %uri.endpoint(), vhost = %uri.vhost(), attempt, "connected to the broker");
                } else {
                    tracing::debug!(broker = %uri.endpoint(), vhost = %uri.vhost(), "connected to the broker");
                }
                return Ok(conn);
            }
            Err(reason) => {
                let last = options.retry.attempts.is_some_and(|max| attempt >= max);
                if last {
                    return Err(ConnectError::Unreachable {
                        endpoint: uri.endpoint(),
                        reason,
                    });
                }
                tracing::warn!(
                    broker = %uri.endpoint(),
                    vhost = %uri.vhost(),
                    attempt,
                    retry_in_ms = backoff.next().as_millis() as u64,
                    error = %reason,
                    "cannot connect to the broker; retrying"
                );
                if !backoff.wait(shutdown).await {
                    return Err(ConnectError::Shutdown);
                }
            }
        }
    }
}

/// The doubling wait between attempts that [`connect`] and every
/// reconnect loop share, so they all follow `connect_retry` the same way.
pub(crate) struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(policy: &RetryPolicy) -> Self {
        Backoff {
            next: policy.initial,
            initial: policy.initial,
            max: policy.max,
        }
    }

    /// The wait [`wait`](Self::wait) will take next.
    pub(crate) fn next(&self) -> Duration {
        self.next
    }

    /// Back to the first wait, after something worked.
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Sleeps, then doubles the next wait (up to the policy's max). `false`
    /// when `stop` was cancelled first.
    pub(crate) async fn wait(&mut self, stop: &CancellationToken) -> bool {
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(self.next) => {}
        }
        self.next = (self.next * 2).min(self.max);
        true
    }
}

/// Longest a connection's setup (channels, declarations, consumers) may
/// take. The broker answers these in milliseconds; one that does not answer
/// at all (a silent partition with heartbeats off) would otherwise hold a
/// connect or reconnect forever.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a close of a channel or connection may wait for the broker's
/// close-ok. A stop waits no longer: the broker drops the connection's
/// unacknowledged messages back into their queues however it ends.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes a connection (code 200), waiting at most [`CLOSE_TIMEOUT`].
pub(crate) async fn close_connection(conn: &Connection, why: &str) {
    match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, why.into())).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            timeout = ?CLOSE_TIMEOUT,
            why,
            "the broker did not confirm the connection's close; dropped it"
        ),
    }
}

/// Closes channels (code 200) in order, each waiting at most
/// [`CLOSE_TIMEOUT`]. Once one is not confirmed the broker is not
/// answering: the rest are left to the connection's close.
pub(crate) async fn close_channels(channels: &[&Channel], why: &str) {
    for channel in channels {
        if tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, why.into()))
            .await
            .is_err()
        {
            tracing::warn!(
                timeout = ?CLOSE_TIMEOUT,
                why,
                "the broker did not confirm a channel's close; dropped it"
            );
            return;
        }
    }
}

/// Closes a connection being given up (to retry or reconnect), like
/// [`close_connection`], but gives way at once to `stop`: a connection that
/// just died may never confirm its close, and a stop should not wait on it.
pub(crate) async fn close_unless_stopped(conn: &Connection, why: &str, stop: &CancellationToken) {
    tokio::select! {
        biased;
        _ = stop.cancelled() => {}
        () = close_connection(conn, why) => {}
    }
}

/// Declares a durable topic exchange: the only kind nameko declares (the
/// RPC exchange and every `{service}.events`), so every declaration here
/// agrees with a Python peer's and none fails with 406.
pub(crate) async fn declare_topic_exchange(
    channel: &Channel,
    name: &str,
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

async fn connect_once(uri: &AmqpUri, options: &ConnectOptions) -> Result<Connection, String> {
    let props = ConnectionProperties::default()
        .with_connection_name(options.connection_name.clone().into());
    let tls = match &options.tls_ca_file {
        Some(path) => OwnedTLSConfig {
            identity: None,
            cert_chain: Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?,
            ),
        },
        None => OwnedTLSConfig::default(),
    };
    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
    // A TCP connect to a black-holed address can hang for minutes; bound it.
    let timeout = Duration::from_millis(uri.connection_timeout_ms.unwrap_or(10_000));
    match tokio::time::timeout(
        timeout,
        Connection::connect_uri_with_config(
            uri.to_lapin(options.heartbeat, options.frame_max),
            props,
            tls,
            runtime,
        ),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> AmqpUri {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn kombu_vhost_rules() {
        for (uri, vhost) in [
            ("amqp://h", "/"),
            ("amqp://h/", "/"),
            ("amqp://h//", "/"),
            ("amqp://h/%2F", "/"),
            ("amqp://h/%2f", "/"),
            ("amqp://h/name", "name"),
            ("amqp://h/a%2Fb", "a/b"),
        ] {
            assert_eq!(parse(uri).vhost(), vhost, "{uri}");
        }
    }

    #[test]
    fn schemes_ports_and_defaults() {
        let u = parse("pyamqp://guest:guest@localhost");
        assert_eq!((u.host(), u.port(), u.is_tls()), ("localhost", 5672, false));
        let u = parse("amqps://u:p@broker.example:5999/v");
        assert_eq!((u.port(), u.is_tls(), u.vhost()), (5999, true, "v"));
        assert_eq!(parse("amqps://broker").port(), 5671);
        let u = parse("amqp://broker");
        assert_eq!((u.username(), u.password.as_str()), ("guest", "guest"));
        let u = parse("amqp://us%40er:p%3Ass@[::1]:5673/?heartbeat=5");
        assert_eq!(
            (u.username(), u.password.as_str(), u.host(), u.port()),
            ("us@er", "p:ss", "::1", 5673)
        );
        assert_eq!(u.heartbeat(), Some(5));
        assert_eq!(u.endpoint(), "[::1]:5673");
        assert!("http://x".parse::<AmqpUri>().is_err());
        assert!("amqp://h:notaport".parse::<AmqpUri>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_the_max_resets_and_stops() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(3),
            attempts: None,
        };
        let stop = CancellationToken::new();
        let mut backoff = Backoff::new(&policy);
        let mut waits = Vec::new();
        for _ in 0..5 {
            let start = tokio::time::Instant::now();
            assert!(backoff.wait(&stop).await);
            waits.push(start.elapsed().as_millis());
        }
        assert_eq!(waits, vec![500, 1000, 2000, 3000, 3000]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(500));
        stop.cancel();
        assert!(!backoff.wait(&stop).await);
    }

    #[test]
    fn password_never_displayed() {
        let u = parse("amqp://app:hunter2@h:5672/v");
        assert_eq!(u.to_string(), "amqp://app@h:5672/v");
        assert!(!format!("{u:?}").contains("hunter2"));
        let err = "amqp://app:hunter2@h:bad/"
            .parse::<AmqpUri>()
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
