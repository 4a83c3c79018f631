//! The client side: [`RpcProxy`] calls methods of any nameko-compatible
//! service, Python or Rust.
//!
//! One proxy owns one connection, one reply queue (declared and bound as
//! nameko's: `rpc.reply-{caller}-{uuid}`, `x-expires` 5 min, bound to the
//! RPC exchange with key `{uuid}`) and one task that reads replies and hands
//! each to the call waiting for its correlation id. Any number of calls can
//! be in flight at once; a call that times out or is dropped removes its
//! entry, so nothing leaks, and a late reply is dropped.
//!
//! Requests are published with `mandatory` and publisher confirms, so a call
//! to a service with no queue fails at once with
//! [`CallError::UnknownService`] instead of waiting for its timeout.
//!
//! When the connection dies, every call waiting on it fails at once with
//! [`CallError::ConnectionLost`], and the proxy reconnects in the background
//! with backoff; calls made meanwhile wait (within their timeout) for it.

use crate::config::Config;
use crate::connection;
use crate::error::{CallError, ConnectError};
use crate::wire::{self, RequestBody};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation, Connection, Consumer, ExchangeKind};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The arguments of a call: positional and keyword, as JSON values.
///
/// ```
/// use rpc_core::Args;
/// use serde_json::json;
/// let args = Args::new().arg("Ada").arg("Lovelace").arg(36).kwarg("member", true);
/// let same = Args::from_json(json!(["Ada", "Lovelace", 36]), json!({"member": true})).unwrap();
/// assert_eq!(args, same);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Args(RequestBody);

impl Args {
    /// No arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a positional argument.
    #[must_use]
    pub fn arg(mut self, value: impl Into<Value>) -> Self {
        self.0.args.push(value.into());
        self
    }

    /// Sets a keyword argument.
    #[must_use]
    pub fn kwarg(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.0.kwargs.insert(name.to_owned(), value.into());
        self
    }

    /// Positional arguments from a list.
    pub fn positional(args: Vec<Value>) -> Self {
        Args(RequestBody {
            args,
            kwargs: Map::new(),
        })
    }

    /// From a JSON list of positional and a JSON object of keyword arguments
    /// (`null` for either means none).
    pub fn from_json(args: Value, kwargs: Value) -> Result<Self, String> {
        let args = match args {
            Value::Array(a) => a,
            Value::Null => Vec::new(),
            other => {
                return Err(format!(
                    "positional arguments must be a JSON list, got {other}"
                ))
            }
        };
        let kwargs = match kwargs {
            Value::Object(k) => k,
            Value::Null => Map::new(),
            other => {
                return Err(format!(
                    "keyword arguments must be a JSON object, got {other}"
                ))
            }
        };
        Ok(Args(RequestBody { args, kwargs }))
    }

    /// The request body these arguments make.
    pub fn body(&self) -> &RequestBody {
        &self.0
    }
}

enum ReplyEvent {
    Body(Vec<u8>),
    Lost(String),
}

/// Calls waiting for a reply, by correlation id.
#[derive(Default)]
struct Pending {
    calls: Mutex<HashMap<String, oneshot::Sender<ReplyEvent>>>,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<ReplyEvent>>> {
        // A panic while holding this lock leaves the map consistent.
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, id: String, tx: oneshot::Sender<ReplyEvent>) {
        self.lock().insert(id, tx);
    }

    fn remove(&self, id: &str) -> Option<oneshot::Sender<ReplyEvent>> {
        self.lock().remove(id)
    }

    fn fail_all(&self, reason: &str) {
        let calls: Vec<_> = self.lock().drain().collect();
        if !calls.is_empty() {
            tracing::warn!(
                calls = calls.len(),
                reason,
                "failing calls in flight on a lost connection"
            );
        }
        for (_, tx) in calls {
            let _ = tx.send(ReplyEvent::Lost(reason.to_owned()));
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Removes a call's entry when the call ends in any way (result, timeout,
/// error, or the future being dropped).
struct PendingGuard {
    pending: Arc<Pending>,
    correlation_id: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.pending.remove(&self.correlation_id);
    }
}

#[derive(Clone)]
enum SessionState {
    Up(Channel),
    Down(String),
    Closed,
}

struct Shared {
    config: Config,
    reply_key: String,
    pending: Arc<Pending>,
    session: watch::Receiver<SessionState>,
    stop: CancellationToken,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A client for calling remote methods; see the module docs.
///
/// Cheap to clone: clones share the connection and the reply queue.
/// [`RpcProxy::with_timeout`] and [`RpcProxy::with_context_data`] return
/// such clones with other settings.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use rpc_core::{Args, Config, RpcProxy};
/// let proxy = RpcProxy::connect(Config::new("amqp://guest:guest@localhost:5672/%2f")?).await?;
/// let id = proxy.call("person", "create", Args::new().arg("Ada").arg("Lovelace").arg(36)).await?;
/// let person = proxy.call("person", "get", Args::new().arg(id)).await?;
/// println!("{person}");
/// proxy.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RpcProxy {
    shared: Arc<Shared>,
    timeout: Duration,
    call_id_stack: Arc<Vec<String>>,
    data: Arc<BTreeMap<String, Value>>,
}

impl std::fmt::Debug for RpcProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcProxy")
            .field("reply_key", &self.shared.reply_key)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RpcProxy {
    /// A standalone proxy, like nameko's `ClusterRpcProxy`: its calls carry
    /// the call id `standalone_rpc_proxy.call.{uuid}`, fixed for its life.
    ///
    /// Connects before returning, retrying as `config.connect_retry` says.
    pub async fn connect(config: Config) -> Result<Self, ConnectError> {
        let call_id = wire::new_call_id(wire::STANDALONE_PROXY, wire::STANDALONE_PROXY_METHOD);
        let proxy = Self::start(wire::STANDALONE_PROXY, config, CancellationToken::new()).await?;
        Ok(proxy.with_context(vec![call_id], BTreeMap::new()))
    }

    /// The proxy a service's handlers call through; its reply queue is
    /// `rpc.reply-{service}-{uuid}` as nameko's in-service proxy.
    pub(crate) async fn for_service(
        service: &str,
        config: Config,
        stop: CancellationToken,
    ) -> Result<Self, ConnectError> {
        Self::start(service, config, stop).await
    }

    async fn start(
        caller: &str,
        config: Config,
        stop: CancellationToken,
    ) -> Result<Self, ConnectError> {
        let reply_key = uuid::Uuid::new_v4().to_string();
        let reply_queue = wire::reply_queue(caller, &reply_key);
        let options = config.connect_options(format!("{caller} rpc proxy"));
        let conn = connection::connect(&config.amqp_uri, &options, &stop).await?;
        let (channel, consumer) = setup(&conn, &config, &reply_queue, &reply_key).await?;
        let (state_tx, state_rx) = watch::channel(SessionState::Up(channel));
        let pending = Arc::new(Pending::default());
        let supervisor = Supervisor {
            config: config.clone(),
            reply_queue,
            reply_key: reply_key.clone(),
            pending: Arc::clone(&pending),
            state: state_tx,
            stop: stop.clone(),
        };
        let task = tokio::spawn(supervisor.run(conn, consumer));
        let timeout = config.rpc_timeout;
        Ok(RpcProxy {
            shared: Arc::new(Shared {
                config,
                reply_key,
                pending,
                session: state_rx,
                stop,
                supervisor: Mutex::new(Some(task)),
            }),
            timeout,
            call_id_stack: Arc::new(Vec::new()),
            data: Arc::new(BTreeMap::new()),
        })
    }

    /// A clone whose calls time out after `timeout` (default: the config's
    /// `rpc_timeout`, 30 s).
    #[must_use]
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        RpcProxy {
            timeout,
            ..self.clone()
        }
    }

    /// A clone whose calls carry this context data as `nameko.<key>`
    /// headers (nameko's `context_data`), e.g. `user_id` or `language`.
    #[must_use]
    pub fn with_context_data(&self, data: BTreeMap<String, Value>) -> Self {
        RpcProxy {
            data: Arc::new(data),
            ..self.clone()
        }
    }

    pub(crate) fn with_context(
        &self,
        call_id_stack: Vec<String>,
        data: BTreeMap<String, Value>,
    ) -> Self {
        RpcProxy {
            call_id_stack: Arc::new(call_id_stack),
            data: Arc::new(data),
            ..self.clone()
        }
    }

    /// The timeout calls through this handle use.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The call-id stack sent with each call.
    pub fn call_id_stack(&self) -> &[String] {
        &self.call_id_stack
    }

    /// Calls waiting for a reply right now.
    pub fn in_flight(&self) -> usize {
        self.shared.pending.len()
    }

    /// Calls `service.method` and waits for its result.
    pub async fn call(&self, service: &str, method: &str, args: Args) -> Result<Value, CallError> {
        self.call_async(service, method, args).await?.result().await
    }

    /// Calls and deserialises the result into `T`.
    pub async fn call_as<T: DeserializeOwned>(
        &self,
        service: &str,
        method: &str,
        args: Args,
    ) -> Result<T, CallError> {
        self.call_async(service, method, args)
            .await?
            .result_as()
            .await
    }

    /// Publishes the call and returns once the broker has accepted it,
    /// without waiting for the result (nameko's `call_async`). Start several,
    /// then collect them in any order with [`PendingCall::result`].
    pub async fn call_async(
        &self,
        service: &str,
        method: &str,
        args: Args,
    ) -> Result<PendingCall, CallError> {
        let deadline = Instant::now() + self.timeout;
        let timed_out = || CallError::Timeout {
            service: service.to_owned(),
            method: method.to_owned(),
            timeout: self.timeout,
        };
        let routing_key = wire::short_string(&wire::routing_key(service, method))?;
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        // Registered before publishing: the reply can beat the confirm.
        self.shared.pending.insert(correlation_id.clone(), tx);
        let guard = PendingGuard {
            pending: Arc::clone(&self.shared.pending),
            correlation_id: correlation_id.clone(),
        };
        let channel = match tokio::time::timeout_at(deadline, self.channel()).await {
            Ok(channel) => channel?,
            Err(_) => {
                return Err(self
                    .down_reason()
                    .map_or_else(timed_out, CallError::NotConnected))
            }
        };
        let headers = wire::write_context(&self.call_id_stack, &self.data);
        let props = wire::request_properties(
            &correlation_id,
            &self.shared.reply_key,
            headers,
            self.shared.config.delivery_mode(),
        )?;
        let body = wire::encode_request(args.body());
        let lost = |e: lapin::Error| CallError::ConnectionLost {
            service: service.to_owned(),
            method: method.to_owned(),
            reason: e.to_string(),
        };
        let publish = async {
            let confirm = channel
                .basic_publish(
                    self.shared.config.rpc_exchange.as_str().into(),
                    routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    props,
                )
                .await
                .map_err(lost)?;
            confirm.await.map_err(lost)
        };
        let confirmation = tokio::time::timeout_at(deadline, publish)
            .await
            .map_err(|_| timed_out())??;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                return Err(if returned.reply_code == 312 {
                    CallError::UnknownService(service.to_owned())
                } else {
                    CallError::Publish(format!("{} {}", returned.reply_code, returned.reply_text))
                });
            }
            Confirmation::Nack(None) => {
                return Err(CallError::Publish("the broker nacked the request".into()))
            }
        }
        tracing::trace!(%correlation_id, service, method, "request published");
        Ok(PendingCall {
            rx,
            _guard: guard,
            deadline,
            timeout: self.timeout,
            service: service.to_owned(),
            method: method.to_owned(),
            correlation_id,
        })
    }

    /// The publishing channel, waiting while the proxy reconnects.
    async fn channel(&self) -> Result<Channel, CallError> {
        let mut rx = self.shared.session.clone();
        let state = rx
            .wait_for(|s| !matches!(s, SessionState::Down(_)))
            .await
            .map_err(|_| CallError::Closed)?;
        match &*state {
            SessionState::Up(channel) => Ok(channel.clone()),
            _ => Err(CallError::Closed),
        }
    }

    fn down_reason(&self) -> Option<String> {
        match &*self.shared.session.borrow() {
            SessionState::Down(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Whether the proxy has a live connection right now.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.shared.session.borrow(), SessionState::Up(_))
    }

    /// Stops the reply listener, deletes the reply queue and closes the
    /// connection. Calls still waiting fail with [`CallError::ConnectionLost`].
    pub async fn close(&self) {
        self.shared.stop.cancel();
        let task = self
            .shared
            .supervisor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// A call that has been published; see [`RpcProxy::call_async`].
#[must_use = "a pending call does nothing unless its result is awaited"]
pub struct PendingCall {
    rx: oneshot::Receiver<ReplyEvent>,
    _guard: PendingGuard,
    deadline: Instant,
    timeout: Duration,
    service: String,
    method: String,
    correlation_id: String,
}

impl std::fmt::Debug for PendingCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCall")
            .field("service", &self.service)
            .field("method", &self.method)
            .field("correlation_id", &self.correlation_id)
            .finish_non_exhaustive()
    }
}

impl PendingCall {
    /// The request's correlation id.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// Waits for the reply (until the call's deadline, counted from when it
    /// was made) and returns the result or the remote error.
    pub async fn result(self) -> Result<Value, CallError> {
        let lost = |reason: String| CallError::ConnectionLost {
            service: self.service.clone(),
            method: self.method.clone(),
            reason,
        };
        let event = match tokio::time::timeout_at(self.deadline, self.rx).await {
            Err(_) => {
                return Err(CallError::Timeout {
                    service: self.service,
                    method: self.method,
                    timeout: self.timeout,
                })
            }
            Ok(Err(_)) => return Err(lost("the reply listener stopped".into())),
            Ok(Ok(ReplyEvent::Lost(reason))) => return Err(lost(reason)),
            Ok(Ok(ReplyEvent::Body(body))) => body,
        };
        match wire::decode_reply(&event) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(CallError::Remote(error.into())),
            Err(e) => Err(CallError::Decode(e.to_string())),
        }
    }

    /// Like [`PendingCall::result`], deserialising the result into `T`.
    pub async fn result_as<T: DeserializeOwned>(self) -> Result<T, CallError> {
        let value = self.result().await?;
        serde_json::from_value(value).map_err(|e| CallError::Decode(e.to_string()))
    }
}

/// Declares the reply queue as nameko does and starts consuming from it.
async fn setup(
    conn: &Connection,
    config: &Config,
    reply_queue: &str,
    reply_key: &str,
) -> Result<(Channel, Consumer), ConnectError> {
    let refused = |what: &str| {
        let what = what.to_owned();
        move |e: lapin::Error| ConnectError::Refused {
            what,
            reason: e.to_string(),
        }
    };
    let consume = conn.create_channel().await.map_err(refused("a channel"))?;
    consume
        .exchange_declare(
            config.rpc_exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(refused("the RPC exchange declaration"))?;
    let mut args = FieldTable::default();
    args.insert(
        "x-expires".into(),
        AMQPValue::LongInt(wire::REPLY_QUEUE_EXPIRES_MS),
    );
    consume
        .queue_declare(
            reply_queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map_err(refused("the reply queue declaration"))?;
    consume
        .queue_bind(
            reply_queue.into(),
            config.rpc_exchange.as_str().into(),
            reply_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(refused("the reply queue binding"))?;
    // Replies are consumed without acks: a reply nobody waits for any more
    // is worthless, and acks would cost the broker a frame per call.
    let consumer = consume
        .basic_consume(
            reply_queue.into(),
            format!("reply-{reply_key}").into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(refused("consuming the reply queue"))?;
    let publish = conn.create_channel().await.map_err(refused("a channel"))?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(refused("publisher confirms"))?;
    Ok((publish, consumer))
}

/// Owns the connection: routes replies, and reconnects when it dies.
struct Supervisor {
    config: Config,
    reply_queue: String,
    reply_key: String,
    pending: Arc<Pending>,
    state: watch::Sender<SessionState>,
    stop: CancellationToken,
}

impl Supervisor {
    async fn run(self, mut conn: Connection, mut consumer: Consumer) {
        loop {
            let lost = self.route_replies(&mut consumer).await;
            let Some(reason) = lost else {
                self.state.send_replace(SessionState::Closed);
                self.pending.fail_all("the proxy was closed");
                self.clean_up(&conn).await;
                return;
            };
            tracing::warn!(broker = %self.config.amqp_uri.endpoint(), reason = %reason, "rpc proxy lost its connection; reconnecting");
            self.state.send_replace(SessionState::Down(reason.clone()));
            self.pending.fail_all(&reason);
            let _ = conn.close(320, "reconnecting".into()).await;
            match self.reconnect().await {
                Some((c, cons)) => {
                    conn = c;
                    consumer = cons;
                }
                None => {
                    self.state.send_replace(SessionState::Closed);
                    return;
                }
            }
        }
    }

    /// Routes replies until the consumer fails (`Some(reason)`) or the proxy
    /// is stopped (`None`).
    async fn route_replies(&self, consumer: &mut Consumer) -> Option<String> {
        loop {
            let delivery = tokio::select! {
                _ = self.stop.cancelled() => return None,
                d = consumer.next() => d,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    let id = delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|s| s.as_str());
                    match id.and_then(|id| self.pending.remove(id)) {
                        Some(tx) => {
                            let _ = tx.send(ReplyEvent::Body(delivery.data));
                        }
                        None => tracing::debug!(
                            correlation_id = id.unwrap_or(""),
                            "reply for no waiting call (timed out or abandoned); dropped"
                        ),
                    }
                }
                Some(Err(e)) => return Some(e.to_string()),
                None => return Some("the broker cancelled the reply consumer".to_owned()),
            }
        }
    }

    async fn reconnect(&self) -> Option<(Connection, Consumer)> {
        let options = self
            .config
            .connect_options(format!("{} rpc proxy", self.reply_queue));
        let mut delay = self.config.connect_retry.initial;
        loop {
            let conn = match connection::connect(&self.config.amqp_uri, &options, &self.stop).await
            {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::error!(error = %e, "rpc proxy gave up reconnecting");
                    return None;
                }
            };
            match setup(&conn, &self.config, &self.reply_queue, &self.reply_key).await {
                Ok((channel, consumer)) => {
                    tracing::info!(broker = %self.config.amqp_uri.endpoint(), "rpc proxy reconnected");
                    self.state.send_replace(SessionState::Up(channel));
                    return Some((conn, consumer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rpc proxy could not set up its reply queue; retrying");
                    let _ = conn.close(320, "retrying".into()).await;
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(self.config.connect_retry.max);
                }
            }
        }
    }

    /// The reply queue is ours alone (its name holds a fresh uuid), so it is
    /// deleted rather than left to expire.
    async fn clean_up(&self, conn: &Connection) {
        if let Ok(channel) = conn.create_channel().await {
            if let Err(e) = channel
                .queue_delete(
                    self.reply_queue.as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await
            {
                tracing::debug!(error = %e, "could not delete the reply queue; it expires in 5 minutes");
            }
        }
        let _ = conn.close(200, "OK".into()).await;
    }
}
