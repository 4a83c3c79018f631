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
use crate::error::{CallError, ConnectError};
use crate::link::{Link, Replies, ReplyQueueName, ReplySink};
use crate::wire::{self, RequestBody};
use lapin::options::BasicPublishOptions;
use lapin::Confirmation;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
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

    /// The positional arguments.
    pub fn positional_args(&self) -> &[Value] {
        &self.0.args
    }

    /// The keyword arguments.
    pub fn keyword_args(&self) -> &Map<String, Value> {
        &self.0.kwargs
    }

    /// The request body these arguments make.
    pub fn body(&self) -> &RequestBody {
        &self.0
    }
}

enum ReplyEvent {
    Body(Vec<u8>),
    Lost(String),
    /// The broker returned the request (unroutable); it came with another
    /// call's confirm (see [`RpcProxy::call_async`]).
    Returned {
        reply_code: u16,
        reply_text: String,
    },
}

/// The error for a request the broker returned: 312 NO_ROUTE means no queue
/// is bound for the service, as nameko's `UnknownService`.
fn returned_error(service: &str, reply_code: u16, reply_text: &str) -> CallError {
    if reply_code == 312 {
        CallError::UnknownService(service.to_owned())
    } else {
        CallError::Publish(format!("{reply_code} {reply_text}"))
    }
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

    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl ReplySink for Pending {
    fn deliver(&self, correlation_id: Option<&str>, body: Vec<u8>) {
        match correlation_id.and_then(|id| self.remove(id)) {
            Some(tx) => {
                let _ = tx.send(ReplyEvent::Body(body));
            }
            None => tracing::debug!(
                correlation_id = correlation_id.unwrap_or(""),
                "reply for no waiting call (timed out or abandoned); dropped"
            ),
        }
    }

    fn lost(&self, reason: &str) {
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

struct Shared {
    link: Link,
    reply_key: String,
    reply_queue: ReplyQueueName,
    pending: Arc<Pending>,
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
            .field("reply_queue", &self.shared.reply_queue.get())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// `now + timeout`, or far in the future when that overflows (a caller may
/// ask for a timeout of years).
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365 * 30))
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
        let reply_queue = ReplyQueueName::new(caller, &reply_key);
        let pending = Arc::new(Pending::default());
        let timeout = config.rpc_timeout;
        let replies = Replies {
            queue: reply_queue.clone(),
            routing_key: reply_key.clone(),
            sink: pending.clone(),
        };
        let link = Link::start(&format!("{caller} rpc proxy"), config, Some(replies), stop).await?;
        Ok(RpcProxy {
            shared: Arc::new(Shared {
                link,
                reply_key,
                reply_queue,
                pending,
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

    /// The name of this proxy's reply queue now (a new one after the
    /// cluster node that held the old one went down).
    pub fn reply_queue(&self) -> String {
        self.shared.reply_queue.get()
    }

    /// Calls waiting for a reply right now.
    pub fn in_flight(&self) -> usize {
        self.shared.pending.len()
    }

    /// Whether the proxy has a live connection right now.
    pub fn is_connected(&self) -> bool {
        self.shared.link.is_up()
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
        let deadline = deadline_after(self.timeout);
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
        let session = match tokio::time::timeout_at(deadline, self.shared.link.session()).await {
            Ok(Ok(session)) => session,
            Ok(Err(())) => return Err(CallError::Closed),
            Err(_) => {
                return Err(self
                    .shared
                    .link
                    .down_reason()
                    .map_or_else(timed_out, CallError::NotConnected))
            }
        };
        let headers = wire::write_context(&self.call_id_stack, &self.data);
        let config = &self.shared.link.config;
        let props = wire::request_properties(
            &correlation_id,
            &self.shared.reply_key,
            headers,
            config.delivery_mode(),
        )?;
        let body = wire::encode_request(args.body());
        let lost = |e: lapin::Error| CallError::ConnectionLost {
            service: service.to_owned(),
            method: method.to_owned(),
            reason: e.to_string(),
        };
        let publish = async {
            let confirm = session
                .channel
                .basic_publish(
                    config.rpc_exchange.as_str().into(),
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
        // lapin hands a returned message to the confirm it resolves next,
        // and a multiple ack resolves several confirms in no set order: the
        // return may come with another call's confirm. The returned request
        // names its call by correlation id.
        let (nacked, returned) = match confirmation {
            Confirmation::Ack(returned) => (false, returned),
            Confirmation::Nack(returned) => (true, returned),
            Confirmation::NotRequested => (false, None),
        };
        if let Some(returned) = returned {
            let owner = returned
                .properties
                .correlation_id()
                .as_ref()
                .map(|id| id.as_str().to_owned());
            let code = returned.reply_code;
            let text = returned.reply_text.as_str();
            match owner {
                Some(owner) if owner == correlation_id => {
                    return Err(returned_error(service, code, text));
                }
                Some(owner) => match self.shared.pending.remove(&owner) {
                    Some(tx) => {
                        let _ = tx.send(ReplyEvent::Returned {
                            reply_code: code,
                            reply_text: text.to_owned(),
                        });
                    }
                    None => tracing::debug!(
                        correlation_id = %owner,
                        "returned request of a call no longer waiting; dropped"
                    ),
                },
                None => tracing::warn!(
                    reply_code = code,
                    "the broker returned a message without a correlation id; dropped"
                ),
            }
        }
        if nacked {
            return Err(CallError::Publish("the broker nacked the request".into()));
        }
        tracing::trace!(%correlation_id, service, method, "request published");
        Ok(PendingCall {
            answer: Answer::Reply {
                rx,
                _guard: guard,
                deadline,
                timeout: self.timeout,
            },
            service: service.to_owned(),
            method: method.to_owned(),
            correlation_id,
            result_type: PhantomData,
        })
    }

    /// Deletes the reply queue and closes the connection. Calls still
    /// waiting fail with [`CallError::ConnectionLost`].
    pub async fn close(&self) {
        self.shared.link.close().await;
    }
}

/// A call that has been published; see [`RpcProxy::call_async`]. Its
/// result is decoded into `T` (any JSON value by default; typed clients
/// made by [`macro@crate::service`] name the method's return type).
#[must_use = "a pending call does nothing unless its result is awaited"]
pub struct PendingCall<T = Value> {
    answer: Answer,
    service: String,
    method: String,
    correlation_id: String,
    result_type: PhantomData<fn() -> T>,
}

/// Where a pending call's answer comes from.
enum Answer {
    /// A reply queue, until the deadline.
    Reply {
        rx: oneshot::Receiver<ReplyEvent>,
        _guard: PendingGuard,
        deadline: Instant,
        timeout: Duration,
    },
    /// Known already (a stub of [`crate::testing::LocalService`]).
    Known(Result<Value, CallError>),
}

impl<T> std::fmt::Debug for PendingCall<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCall")
            .field("service", &self.service)
            .field("method", &self.method)
            .field("correlation_id", &self.correlation_id)
            .finish_non_exhaustive()
    }
}

impl PendingCall {
    /// A call whose answer is already known (no broker involved).
    pub(crate) fn known(service: &str, method: &str, answer: Result<Value, CallError>) -> Self {
        PendingCall {
            answer: Answer::Known(answer),
            service: service.to_owned(),
            method: method.to_owned(),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            result_type: PhantomData,
        }
    }

    /// Like [`PendingCall::result`], deserialising the result into `U`.
    pub async fn result_as<U: DeserializeOwned>(self) -> Result<U, CallError> {
        self.typed::<U>().result().await
    }
}

impl<T> PendingCall<T> {
    /// The request's correlation id.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// The same call, its result decoded into `U` instead.
    pub fn typed<U>(self) -> PendingCall<U> {
        PendingCall {
            answer: self.answer,
            service: self.service,
            method: self.method,
            correlation_id: self.correlation_id,
            result_type: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> PendingCall<T> {
    /// Waits for the reply (until the call's deadline, counted from when it
    /// was made) and returns the result or the remote error.
    pub async fn result(self) -> Result<T, CallError> {
        let value = match self.answer {
            Answer::Known(answer) => answer?,
            Answer::Reply {
                rx,
                _guard,
                deadline,
                timeout,
            } => {
                let lost = |reason: String| CallError::ConnectionLost {
                    service: self.service.clone(),
                    method: self.method.clone(),
                    reason,
                };
                let body = match tokio::time::timeout_at(deadline, rx).await {
                    Err(_) => {
                        return Err(CallError::Timeout {
                            service: self.service,
                            method: self.method,
                            timeout,
                        })
                    }
                    Ok(Err(_)) => return Err(lost("the reply listener stopped".into())),
                    Ok(Ok(ReplyEvent::Lost(reason))) => return Err(lost(reason)),
                    Ok(Ok(ReplyEvent::Returned {
                        reply_code,
                        reply_text,
                    })) => return Err(returned_error(&self.service, reply_code, &reply_text)),
                    Ok(Ok(ReplyEvent::Body(body))) => body,
                };
                match wire::decode_reply(&body) {
                    Ok(Ok(value)) => value,
                    Ok(Err(error)) => return Err(CallError::Remote(error.into())),
                    Err(e) => return Err(CallError::Decode(e.to_string())),
                }
            }
        };
        serde_json::from_value(value).map_err(|e| {
            CallError::Decode(format!(
                "the result of {}.{} does not fit the type asked for: {e}",
                self.service, self.method
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Record {
        id: i64,
        age: i64,
    }

    #[tokio::test]
    async fn a_result_of_the_wrong_shape_is_described() {
        let wrong = PendingCall::known("person", "get", Ok(json!({"id": 7, "age": "36"})));
        let err = wrong.typed::<Record>().result().await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CallError::Decode(_)), "{err:?}");
        assert!(text.contains("person.get"), "{text}");
        assert!(
            text.contains("invalid type: string \"36\", expected i64"),
            "{text}"
        );
        let missing = PendingCall::known("person", "get", Ok(json!({"id": 7})));
        let text = missing
            .typed::<Record>()
            .result()
            .await
            .unwrap_err()
            .to_string();
        assert!(text.contains("missing field `age`"), "{text}");
    }
}
