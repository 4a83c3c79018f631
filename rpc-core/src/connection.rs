//! Reaching the broker: AMQP URIs with kombu's rules, lists of them for
//! failover, and connecting with backoff.
//!
//! A URI carries a password, so [`AmqpUri`] never prints it: `Display` and
//! `Debug` show `amqp://user:***@host:port/vhost`, [`BrokerList`] shows its
//! elements that way, and every log line and error names a broker by
//! `host:port` only. Text that does not parse is masked by one function,
//! [`mask_uri_text`], before it goes into an error.

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
            "{}://{}:***@{}/{}",
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

    /// One URI. A `;` list is a [`BrokerList`].
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        AmqpUri::parse(input, false)
    }
}

impl AmqpUri {
    /// Parses one URI; errors show it masked, `strict`ly when it is a piece
    /// of a `;` list (see [`mask_uri_text`]).
    fn parse(input: &str, strict: bool) -> Result<Self, ConnectError> {
        let bad =
            |why: &str| ConnectError::InvalidUri(format!("{why} (in {})", mask(input, strict)));
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://host"))?;
        let scheme = scheme.to_ascii_lowercase();
        let tls = match scheme.as_str() {
            "amqp" | "pyamqp" => false,
            "amqps" => true,
            other if is_scheme(other) => {
                return Err(bad(&format!(
                    "unsupported scheme {other:?}; use amqp, amqps or pyamqp"
                )))
            }
            _ => return Err(bad("unsupported scheme; use amqp, amqps or pyamqp")),
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

/// Whether text looks like a URI scheme (`amqp`, `pyamqp`, …) and so may be
/// shown: anything else before `://` may be a piece of a password.
fn is_scheme(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 16
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// The brokers to connect to (`AMQP_URI`): one URI, or several for
/// failover, tried in order.
///
/// Text takes kombu's form, URIs separated by `;`
/// (`amqp://a:5672/;amqp://b:5672/`); spaces around an element and empty
/// elements (a trailing `;`) are ignored. A nameko config file may also
/// give a YAML list, whose elements are whole URIs ([`BrokerList::new`]),
/// so a `;` in a password needs no escaping there; in the `;` form it must
/// be written `%3B`.
///
/// `Display` and `Debug` mask every password:
///
/// ```
/// use rpc_core::connection::BrokerList;
/// let list: BrokerList = "amqp://app:s3cret@a/; amqp://app:s3cret@b:5673/prod;".parse().unwrap();
/// assert_eq!(list.len(), 2);
/// assert_eq!(list.to_string(), "amqp://app:***@a:5672/%2F;amqp://app:***@b:5673/prod");
/// assert_eq!(list.endpoint(), "a:5672, b:5673");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerList {
    /// Never empty.
    uris: Vec<AmqpUri>,
}

impl BrokerList {
    /// A list of whole URIs (a YAML list); at least one.
    pub fn new(uris: Vec<AmqpUri>) -> Result<Self, ConnectError> {
        if uris.is_empty() {
            return Err(ConnectError::InvalidUri(
                "the broker list is empty; give at least one amqp:// URI".into(),
            ));
        }
        Ok(BrokerList { uris })
    }

    /// Parses each text as one whole URI (the elements of a YAML list: a
    /// `;` in them is not a separator). Errors name the element by position.
    pub fn from_uris<S: AsRef<str>>(texts: &[S]) -> Result<Self, ConnectError> {
        let total = texts.len();
        let uris = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                AmqpUri::parse(t.as_ref().trim(), false).map_err(|e| element_error(e, i, total))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(uris)
    }

    /// The URIs, in the order they are tried.
    pub fn uris(&self) -> &[AmqpUri] {
        &self.uris
    }

    /// How many brokers.
    pub fn len(&self) -> usize {
        self.uris.len()
    }

    /// Always `false`: a list holds at least one URI.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The first URI.
    pub fn first(&self) -> &AmqpUri {
        &self.uris[0]
    }

    /// The URI at `index`, counting round the list.
    pub fn get(&self, index: usize) -> &AmqpUri {
        &self.uris[index % self.uris.len()]
    }

    /// `host:port` of each broker, joined by `, `: how logs and errors name
    /// the list.
    pub fn endpoint(&self) -> String {
        self.uris
            .iter()
            .map(AmqpUri::endpoint)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The first URI's virtual host.
    pub fn vhost(&self) -> &str {
        self.first().vhost()
    }

    /// Whether any broker is reached over TLS.
    pub fn any_tls(&self) -> bool {
        self.uris.iter().any(AmqpUri::is_tls)
    }

    /// Whether any broker is reached without TLS.
    pub fn any_plain(&self) -> bool {
        self.uris.iter().any(|u| !u.is_tls())
    }

    /// The same brokers, each on another vhost (tests use one vhost each).
    #[must_use]
    pub fn with_vhost(self, vhost: &str) -> Self {
        BrokerList {
            uris: self.uris.into_iter().map(|u| u.with_vhost(vhost)).collect(),
        }
    }
}

/// An element's parse error, naming its position in a list.
fn element_error(e: ConnectError, index: usize, total: usize) -> ConnectError {
    match e {
        ConnectError::InvalidUri(why) if total > 1 => {
            ConnectError::InvalidUri(format!("element {} of {total}: {why}", index + 1))
        }
        other => other,
    }
}

impl From<AmqpUri> for BrokerList {
    fn from(uri: AmqpUri) -> Self {
        BrokerList { uris: vec![uri] }
    }
}

impl FromStr for BrokerList {
    type Err = ConnectError;

    /// kombu's form: URIs separated by `;`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let is_list = input.contains(';');
        let pieces: Vec<&str> = input
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let total = pieces.len();
        let uris = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| {
                AmqpUri::parse(p, is_list).map_err(|e| match element_error(e, i, total) {
                    ConnectError::InvalidUri(why) if is_list => ConnectError::InvalidUri(format!(
                        "{why}; `;` separates broker URIs (as in kombu), so a `;` in a \
                         password must be written %3B"
                    )),
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(uris)
    }
}

impl fmt::Display for BrokerList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, uri) in self.uris.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{uri}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BrokerList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerList({self})")
    }
}

/// The one place where URI *text* (which may not parse) is masked for a
/// message: everything between `://` and the last `@` becomes `user:***`.
///
/// Text with no `://` is not shown at all, and neither is the authority of
/// text with no `@`, when `strict`: a `;` inside a password splits a kombu
/// list there, so such a piece may be the tail or the head of a password
/// (`amqp://u:pa;ss@h/` gives `amqp://u:pa` and `ss@h/`).
///
/// ```
/// use rpc_core::connection::mask_uri_text;
/// assert_eq!(mask_uri_text("amqp://u:p@ss@h/"), "amqp://u:***@h/");
/// assert!(!mask_uri_text("ss@h/").contains("ss"));
/// ```
pub fn mask_uri_text(input: &str) -> String {
    mask(input, true)
}

fn mask(input: &str, strict: bool) -> String {
    let Some(s) = input.find("://") else {
        return "(text that is not a URI, not shown)".to_owned();
    };
    let scheme = &input[..s];
    let scheme = if is_scheme(scheme) { scheme } else { "?" };
    let rest = &input[s + 3..];
    match rest.rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None if strict => {
            // No user info: `host:port/vhost` as written, unless it may be
            // a piece of a password (see above): then only the path.
            match rest.find('/') {
                Some(i) => format!("{scheme}://***{}", &rest[i..]),
                None => format!("{scheme}://***"),
            }
        }
        None => format!("{scheme}://{rest}"),
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

/// Connects to the first broker of `brokers` that answers, starting at
/// element `start` (counting round the list), and retries with exponential
/// backoff as `options.retry` says. Returns the connection and the index of
/// the broker it reached.
///
/// The backoff waits only after a whole cycle of the list failed: a dead
/// broker is skipped at once for the next one. `options.retry.attempts`
/// counts such cycles. After a loss, callers start at the element after the
/// lost one (see [`BrokerList`]), so a node going down is not the first one
/// tried again.
///
/// Every failed attempt is logged with the broker's `host:port` and the
/// reason; no password ever appears. Returns [`ConnectError::Shutdown`] as
/// soon as `shutdown` is cancelled.
pub async fn connect(
    brokers: &BrokerList,
    start: usize,
    options: &ConnectOptions,
    shutdown: &CancellationToken,
) -> Result<(Connection, usize), ConnectError> {
    let mut backoff = Backoff::new(&options.retry);
    let count = brokers.len();
    let mut cycle: u32 = 0;
    loop {
        cycle += 1;
        let mut reasons = Vec::with_capacity(count);
        for step in 0..count {
            let index = (start + step) % count;
            let uri = brokers.get(index);
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Err(ConnectError::Shutdown),
                r = connect_once(uri, options) => r,
            };
            match result {
                Ok(conn) => {
                    if cycle > 1 || step > 0 {
                        tracing::info!(broker = %uri.endpoint(), broker_index = index, vhost = %uri.vhost(), attempt = cycle, "connected to the broker");
                    } else {
                        tracing::debug!(broker = %uri.endpoint(), broker_index = index, vhost = %uri.vhost(), "connected to the broker");
                    }
                    return Ok((conn, index));
                }
                Err(reason) => {
                    if step + 1 < count {
                        tracing::warn!(
                            broker = %uri.endpoint(),
                            broker_index = index,
                            vhost = %uri.vhost(),
                            error = %reason,
                            "cannot connect to the broker; trying the next one in the list"
                        );
                    }
                    reasons.push((uri.endpoint(), reason));
                }
            }
        }
        let last = options.retry.attempts.is_some_and(|max| cycle >= max);
        let (endpoint, reason) = if count == 1 {
            reasons.pop().unwrap_or_default()
        } else {
            (
                brokers.endpoint(),
                reasons
                    .iter()
                    .map(|(e, r)| format!("{e}: {r}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        };
        if last {
            return Err(ConnectError::Unreachable { endpoint, reason });
        }
        let last_tried = brokers.get(start + count - 1);
        tracing::warn!(
            broker = %endpoint,
            vhost = %last_tried.vhost(),
            attempt = cycle,
            retry_in_ms = backoff.next().as_millis() as u64,
            error = %reason,
            "cannot connect to the broker; retrying"
        );
        if !backoff.wait(shutdown).await {
            return Err(ConnectError::Shutdown);
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

    fn list(s: &str) -> BrokerList {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_semicolon_list_keeps_order_and_ignores_spaces_and_empty_elements() {
        let l = list(" amqp://u:p@a:1/x ;;\tpyamqp://b:2/ ; amqps://c/;");
        let endpoints: Vec<String> = l.uris().iter().map(AmqpUri::endpoint).collect();
        assert_eq!(endpoints, ["a:1", "b:2", "c:5671"]);
        assert_eq!(l.uris()[0].vhost(), "x");
        assert_eq!(l.uris()[1].vhost(), "/");
        assert_eq!(l.endpoint(), "a:1, b:2, c:5671");
        assert_eq!(l.get(3), l.first(), "get counts round the list");
        assert_eq!(list("amqp://h:1/").len(), 1);
        for empty in ["", " ", ";", " ; ;"] {
            let err = empty.parse::<BrokerList>().unwrap_err().to_string();
            assert!(err.contains("empty"), "{empty:?}: {err}");
        }
    }

    #[test]
    fn yaml_elements_are_whole_uris_so_a_semicolon_stays_in_the_password() {
        let l = BrokerList::from_uris(&["amqp://u:pa;ss@a/", " amqp://b "]).unwrap();
        assert_eq!(l.first().password, "pa;ss");
        assert_eq!(l.len(), 2);
        assert!(!format!("{l} {l:?}").contains("pa;ss"));
        let err = BrokerList::from_uris(&["amqp://a/", "amqp://u:hunter2@b:port/"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("element 2 of 2") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(BrokerList::from_uris::<&str>(&[]).is_err());
    }

    #[test]
    fn no_element_password_is_ever_shown() {
        let l = list("amqp://app:first-pw@a/;amqp://app:p%3Bw%40x@b/");
        assert_eq!(l.uris()[1].password, "p;w@x");
        let shown = format!("{l} {l:?} {}", l.endpoint());
        assert!(
            !shown.contains("first-pw") && !shown.contains("p;w"),
            "{shown}"
        );
        assert_eq!(
            l.to_string(),
            "amqp://app:***@a:5672/%2F;amqp://app:***@b:5672/%2F"
        );
        // Bad elements: passwords holding `@`, `:` and a raw `;` (which
        // splits the list inside the password, as kombu would).
        for (text, secret) in [
            ("amqp://a/;amqp://u:hun@ter:2@h:bad/", "ter:2"),
            ("amqp://a/;amqp://u:hunter2@h:bad/", "hunter2"),
            ("amqp://u:hun;ter2@h/", "hun"),
            ("amqp://u:hun;ter2@h/", "ter2"),
            ("amqp://u:12;34@h/", "34"),
            ("amqp://u:qz;cret://x@h/", "qz"),
            ("u:hunter2@h", "hunter2"),
            ("amqp://u:abc:def;x@h:1/", "abc"),
        ] {
            let err = text.parse::<BrokerList>().unwrap_err().to_string();
            assert!(!err.contains(secret), "{text}: {err}");
        }
        let err = "amqp://a/;amqp://u:pw@h:bad/"
            .parse::<BrokerList>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("element 2 of 2") && err.contains("invalid port") && err.contains("%3B"),
            "{err}"
        );
        // A single URI without user info still shows its host in errors.
        let err = "amqp://h:notaport/"
            .parse::<AmqpUri>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqp://h:notaport/"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn connect_goes_round_the_list_and_backs_off_after_a_full_cycle() {
        // Nothing listens on port 1: each element fails at once.
        let l = list("amqp://127.0.0.1:1/;amqp://u:hunter2@127.0.0.2:1/");
        let options = ConnectOptions {
            heartbeat: 0,
            frame_max: 4096,
            retry: RetryPolicy {
                attempts: Some(2),
                ..RetryPolicy::forever()
            },
            connection_name: "t".into(),
            tls_ca_file: None,
        };
        let stop = CancellationToken::new();
        let err = connect(&l, 1, &options, &stop).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("127.0.0.1:1")
                && text.contains("127.0.0.2:1")
                && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn password_never_displayed() {
        let u = parse("amqp://app:hunter2@h:5672/v");
        assert_eq!(u.to_string(), "amqp://app:***@h:5672/v");
        assert!(!format!("{u:?}").contains("hunter2"));
        let err = "amqp://app:hunter2@h:bad/"
            .parse::<AmqpUri>()
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
