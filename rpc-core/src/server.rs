//! Running a service: its RPC methods and timers.
//!
//! The service declares `nameko-rpc` and `rpc-{service}` exactly as nameko
//! does, consumes with prefetch = max_workers, and runs at most max_workers
//! calls at once. Each call ends in the same order: publish the reply (with
//! publisher confirms), wait for the confirm, then ack the request. A request
//! is therefore acked only once its reply is safely with the broker.
//!
//! Bad input never reaches a handler and never goes unanswered: a body that
//! is not JSON, lacks `args`/`kwargs`, is too large, names an unknown method
//! or does not fit the signature gets an error reply when it has a
//! `reply_to`, and is acked and logged either way.
//!
//! Stopping (cancelling the token) cancels the consumer, answers what was
//! already delivered, waits for running calls to reply and ack, and only then
//! closes the connection, so no request is run twice because of a stop.
//! When the connection is lost the service reconnects with backoff and
//! resumes; calls that were running on the dead channel could not be acked,
//! so the broker redelivers them.

use crate::config::Config;
use crate::connection;
use crate::context::{Context, Origin, ServiceRuntime};
use crate::error::{ConnectError, RpcError};
use crate::events::{EventFailure, EventHandlerEntry, EventHandlerOptions};
use crate::method::{ArgumentError, FromArgs, HandlerFailure, Method, Signature};
use crate::timer::{self, Timer, TimerEntry};
use crate::wire;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

type ArgumentErrorMapper = Arc<dyn Fn(&ArgumentError) -> RpcError + Send + Sync>;

/// How a call ended, for a [`CallObserver`].
#[derive(Clone, Copy, Debug)]
pub enum CallOutcome<'a> {
    /// The method returned a result.
    Ok,
    /// The method raised this error (an application error).
    Raised(&'a RpcError),
    /// The request never reached the method (malformed, unknown method,
    /// wrong signature or argument types), or the method panicked.
    Refused(&'a RpcError),
}

/// Watches every call a service runs: for metrics, auditing or tracing
/// exports. Called on the call's task, so keep it cheap.
///
/// `method` is the registered method's name, or `"<unknown>"` when the
/// request named no such method, so a label built from it stays bounded.
pub trait CallObserver: Send + Sync + 'static {
    /// A request arrived and is about to be handled.
    fn started(&self, method: &str) {
        let _ = method;
    }
    /// The call finished (before its reply is published).
    fn finished(&self, method: &str, outcome: CallOutcome<'_>, elapsed: std::time::Duration) {
        let _ = (method, outcome, elapsed);
    }
}

/// Name reported for requests to methods that do not exist.
pub const UNKNOWN_METHOD: &str = "<unknown>";

/// Why a service stopped with an error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    /// The broker could not be reached or refused the service's topology.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The service name cannot be used in AMQP names.
    #[error("invalid service name {0:?}: {1}")]
    InvalidName(String, String),
    /// An entrypoint is configured in a way that cannot work (for example a
    /// reliable broadcast event handler without an identifier).
    #[error("invalid configuration: {0}")]
    Configuration(String),
}

/// Collects a service's methods and timers; see [`Service::builder`].
pub struct ServiceBuilder {
    name: String,
    methods: HashMap<String, Method>,
    timers: Vec<TimerEntry>,
    on_invalid_argument: ArgumentErrorMapper,
    observers: Vec<Arc<dyn CallObserver>>,
    event_handlers: Vec<EventHandlerEntry>,
}

impl ServiceBuilder {
    /// Registers an event handler: entrypoint `name` receives events
    /// `event_type` dispatched by `source_service`, its data deserialised
    /// into `T`. See [`crate::events`] for the queue, ack and requeue rules.
    #[must_use]
    pub fn event_handler<T, F, Fut, E>(
        mut self,
        name: &str,
        source_service: &str,
        event_type: &str,
        options: EventHandlerOptions,
        handler: F,
    ) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Context, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.event_handlers.push(EventHandlerEntry::new(
            name,
            source_service,
            event_type,
            options,
            handler,
        ));
        self
    }

    /// Registers an RPC method.
    ///
    /// `signature` names the parameters (with defaults for optional ones);
    /// the handler takes the context and a tuple with one typed element per
    /// parameter, and returns anything serialisable or an error convertible
    /// to [`RpcError`].
    ///
    /// # Panics
    /// If the signature and the tuple have different lengths: a programming
    /// error, caught when the service is built.
    #[must_use]
    pub fn method<Args, R, E, F, Fut>(
        mut self,
        name: &str,
        signature: Signature,
        handler: F,
    ) -> Self
    where
        Args: FromArgs,
        F: Fn(Context, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<RpcError> + Send + 'static,
    {
        self.methods
            .insert(name.to_owned(), Method::new(name, signature, handler));
        self
    }

    /// Registers a timer entrypoint. Each tick gets a fresh context (a new
    /// call-id stack), like nameko's `@timer`.
    #[must_use]
    pub fn timer<F, Fut, E>(mut self, name: &str, timer: Timer, handler: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.timers.push(TimerEntry {
            name: name.to_owned(),
            timer,
            handler: Arc::new(move |ctx| {
                let handler = Arc::clone(&handler);
                async move { handler(ctx).await.map_err(|e| e.to_string()) }.boxed()
            }),
        });
        self
    }

    /// Chooses the error sent when an argument has the wrong type for its
    /// parameter. The default is `InvalidArgument` (see
    /// [`RpcError::invalid_argument`]); a service with its own validation
    /// error can answer with that instead.
    #[must_use]
    pub fn on_invalid_argument(
        mut self,
        map: impl Fn(&ArgumentError) -> RpcError + Send + Sync + 'static,
    ) -> Self {
        self.on_invalid_argument = Arc::new(map);
        self
    }

    /// Adds an observer of every call (see [`CallObserver`]).
    #[must_use]
    pub fn observe(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Finishes the service.
    pub fn build(self) -> Service {
        Service {
            def: Arc::new(ServiceDef {
                name: self.name,
                methods: self.methods,
                timers: self.timers,
                on_invalid_argument: self.on_invalid_argument,
                observers: self.observers,
                event_handlers: self.event_handlers,
            }),
            broadcast_id: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

struct ServiceDef {
    name: String,
    methods: HashMap<String, Method>,
    timers: Vec<TimerEntry>,
    on_invalid_argument: ArgumentErrorMapper,
    observers: Vec<Arc<dyn CallObserver>>,
    event_handlers: Vec<EventHandlerEntry>,
}

/// A service definition, ready to run.
///
/// ```no_run
/// use rpc_core::{Config, Context, RpcError, Service, Signature};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let service = Service::builder("calc")
///     .method("add", Signature::new().param("a").param("b"), |_ctx: Context, (a, b): (i64, i64)| async move {
///         Ok::<_, RpcError>(a + b)
///     })
///     .build();
/// service.run(Config::default(), rpc_core::shutdown::on_signal()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Service {
    def: Arc<ServiceDef>,
    /// Ends broadcast handlers' queue names; fixed for this instance, so a
    /// reconnect re-declares the same queues, as nameko does.
    broadcast_id: String,
}

/// Where a running service is in its life, as [`ServiceHandle::status`]
/// reports it (health checks read this).
#[derive(Clone, Debug)]
pub enum ServiceStatus {
    /// Connecting for the first time (retrying while the broker is away).
    Starting,
    /// Consuming its queue.
    Consuming,
    /// Lost its connection; reconnecting. The text says why it was lost.
    Reconnecting(String),
    /// Stopped, with the error it failed with if any.
    Stopped(Option<ServiceError>),
}

type State = ServiceStatus;

/// A service running on its own task.
pub struct ServiceHandle {
    stop: CancellationToken,
    state: watch::Receiver<State>,
    task: JoinHandle<Result<(), ServiceError>>,
}

impl ServiceHandle {
    /// Waits until the service consumes its queue (or has failed).
    pub async fn ready(&mut self) -> Result<(), ServiceError> {
        let state = self
            .state
            .wait_for(|s| !matches!(s, State::Starting))
            .await
            .map(|s| s.clone());
        match state {
            Ok(State::Consuming) | Ok(State::Reconnecting(_)) | Ok(State::Stopped(None)) => Ok(()),
            Ok(State::Stopped(Some(e))) => Err(e),
            Ok(State::Starting) | Err(_) => Err(ServiceError::Connect(ConnectError::Shutdown)),
        }
    }

    /// The service's status now.
    pub fn status(&self) -> ServiceStatus {
        self.state.borrow().clone()
    }

    /// A receiver that always holds the current status, for components
    /// (such as a health endpoint) that outlive a borrow of the handle.
    pub fn status_receiver(&self) -> watch::Receiver<ServiceStatus> {
        self.state.clone()
    }

    /// Waits until the service has stopped, by request or because it could
    /// not go on (a fatal broker refusal), without consuming the handle.
    /// Returns the error it stopped with, if any.
    pub async fn wait_stopped(&mut self) -> Option<ServiceError> {
        match self
            .state
            .wait_for(|s| matches!(s, State::Stopped(_)))
            .await
        {
            Ok(state) => match &*state {
                State::Stopped(e) => e.clone(),
                _ => None,
            },
            Err(_) => None,
        }
    }

    /// Asks the service to stop gracefully; see [`ServiceHandle::stopped`].
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The token that stops the service.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until the service has stopped.
    pub async fn stopped(self) -> Result<(), ServiceError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ServiceError::Connect(ConnectError::Refused {
                what: "the service task".into(),
                reason: e.to_string(),
            })),
        }
    }

    /// Stops gracefully and waits until done.
    pub async fn shutdown(self) -> Result<(), ServiceError> {
        self.stop();
        self.stopped().await
    }
}

impl Service {
    /// Starts defining a service called `name` (its queue is `rpc-{name}`).
    pub fn builder(name: &str) -> ServiceBuilder {
        ServiceBuilder {
            name: name.to_owned(),
            methods: HashMap::new(),
            timers: Vec::new(),
            observers: Vec::new(),
            event_handlers: Vec::new(),
            on_invalid_argument: Arc::new(|e: &ArgumentError| {
                RpcError::invalid_argument(&e.method, &e.param, &e.message)
            }),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// Names of the registered methods.
    pub fn method_names(&self) -> impl Iterator<Item = &str> {
        self.def.methods.keys().map(String::as_str)
    }

    /// Runs until `stop` is cancelled, then stops gracefully.
    pub async fn run(self, config: Config, stop: CancellationToken) -> Result<(), ServiceError> {
        let (state, _rx) = watch::channel(State::Starting);
        self.run_reporting(config, stop, state).await
    }

    /// Runs the service on a new task.
    pub fn spawn(self, config: Config) -> ServiceHandle {
        let stop = CancellationToken::new();
        let (state_tx, state_rx) = watch::channel(State::Starting);
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let result = self.run_reporting(config, token, state_tx.clone()).await;
            state_tx.send_replace(State::Stopped(result.as_ref().err().cloned()));
            result
        });
        ServiceHandle {
            stop,
            state: state_rx,
            task,
        }
    }

    async fn run_reporting(
        self,
        config: Config,
        stop: CancellationToken,
        state: watch::Sender<State>,
    ) -> Result<(), ServiceError> {
        let name = self.def.name.clone();
        // lapin panics on a name over 255 bytes; refuse it here instead.
        for candidate in [
            wire::rpc_queue(&name),
            wire::rpc_binding_key(&name),
            consumer_tag(&name),
        ] {
            if let Err(e) = wire::short_string(&candidate) {
                return Err(ServiceError::InvalidName(name, e.to_string()));
            }
        }
        wire::short_string(&config.rpc_exchange)
            .map_err(|e| ServiceError::Configuration(format!("rpc_exchange: {e}")))?;
        for handler in &self.def.event_handlers {
            handler.check().map_err(ServiceError::Configuration)?;
        }
        let runtime = Arc::new(ServiceRuntime::new(
            name.clone(),
            config.clone(),
            stop.child_token(),
        ));
        let tracker = TaskTracker::new();
        for entry in &self.def.timers {
            tracker.spawn(timer::run(
                entry.clone(),
                Arc::clone(&runtime),
                stop.clone(),
            ));
        }
        let (result, open) = if self.def.methods.is_empty() && self.def.event_handlers.is_empty() {
            state.send_replace(State::Consuming);
            stop.cancelled().await;
            (Ok(()), None)
        } else {
            match self
                .consume_until_stopped(&config, &runtime, &tracker, &stop, &state)
                .await
            {
                Ok(open) => (Ok(()), open),
                Err(e) => (Err(e), None),
            }
        };
        // Keep the connection open until every call in flight has published
        // its reply and acked its request (nameko's stop skips those acks:
        // §12). One wait covers those calls and the timers alike.
        tracker.close();
        if tokio::time::timeout(config.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::error!(
                service = %name,
                running = tracker.len(),
                timeout = ?config.shutdown_timeout,
                "calls still running at the shutdown timeout; their requests return to the queue"
            );
        }
        if let Some(open) = open {
            let _ = open.consume.close(200, "OK".into()).await;
            let _ = open.conn.close(200, "OK".into()).await;
        }
        runtime.close().await;
        tracing::info!(service = %name, "stopped");
        result
    }

    /// Connects, consumes, and reconnects after a loss, until `stop`. Hands
    /// back the connection it was consuming on, if any, for the caller to
    /// close once the calls in flight are done.
    async fn consume_until_stopped(
        &self,
        config: &Config,
        runtime: &Arc<ServiceRuntime>,
        tracker: &TaskTracker,
        stop: &CancellationToken,
        state: &watch::Sender<State>,
    ) -> Result<Option<Open>, ServiceError> {
        let mut options = config.connect_options(format!("{} service", self.def.name));
        let workers = Arc::new(Semaphore::new(config.workers()));
        let mut backoff = connection::Backoff::new(&config.connect_retry);
        loop {
            let conn = match connection::connect(&config.amqp_uri, &options, stop).await {
                Ok(conn) => conn,
                Err(ConnectError::Shutdown) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let session = match self.open_session(&conn, config).await {
                Ok(session) => session,
                Err(e) if e.fatal => return Err(e.error.into()),
                Err(e) => {
                    tracing::warn!(service = %self.def.name, error = %e.error, "setting up the service failed; retrying");
                    let _ = conn.close(320, "retrying".into()).await;
                    if !backoff.wait(stop).await {
                        return Ok(None);
                    }
                    continue;
                }
            };
            backoff.reset();
            state.send_replace(State::Consuming);
            tracing::info!(
                service = %self.def.name,
                event_handlers = self.def.event_handlers.len(),
                broker = %config.amqp_uri.endpoint(),
                max_workers = config.workers(),
                "consuming"
            );
            let run = Workers {
                runtime,
                tracker,
                slots: &workers,
            };
            let end = self.consume(session, &run, stop).await;
            match end {
                SessionEnd::Stopped { consume } => return Ok(Some(Open { consume, conn })),
                SessionEnd::Lost(reason) => {
                    tracing::warn!(service = %self.def.name, reason = %reason, "lost the broker connection; reconnecting");
                    state.send_replace(State::Reconnecting(reason));
                    // connect_retry may give up on the first connection; a
                    // service that was up keeps trying until it is stopped.
                    options.retry.attempts = None;
                    let _ = conn.close(320, "reconnecting".into()).await;
                }
            }
        }
    }

    async fn open_session(
        &self,
        conn: &Connection,
        config: &Config,
    ) -> Result<Session, SetupError> {
        let name = &self.def.name;
        let consume = conn
            .create_channel()
            .await
            .map_err(SetupError::from_lapin("opening a channel"))?;
        let prefetch = config.prefetch();
        // Per consumer, as nameko issues it (global = false).
        consume
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(SetupError::from_lapin("setting the prefetch"))?;
        let mut consumers: Vec<(Entry, Consumer)> = Vec::new();
        if !self.def.methods.is_empty() {
            let queue = wire::rpc_queue(name);
            connection::declare_topic_exchange(&consume, &config.rpc_exchange)
                .await
                .map_err(SetupError::from_lapin("declaring the RPC exchange"))?;
            let options = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            declare_bound_queue(
                &consume,
                &queue,
                options,
                &config.rpc_exchange,
                &wire::rpc_binding_key(name),
                "the service queue",
            )
            .await?;
            let consumer = start_consumer(&consume, &queue, name).await?;
            consumers.push((Entry::Rpc, consumer));
        }
        for (i, handler) in self.def.event_handlers.iter().enumerate() {
            let exchange = wire::events_exchange(&handler.source_service);
            let spec = handler.queue(name, &self.broadcast_id);
            for candidate in [&exchange, &spec.name, &handler.event_type] {
                wire::short_string(candidate).map_err(|e| SetupError {
                    error: ConnectError::Refused {
                        what: format!("event handler {}", handler.name),
                        reason: e.to_string(),
                    },
                    fatal: true,
                })?;
            }
            connection::declare_topic_exchange(&consume, &exchange)
                .await
                .map_err(SetupError::from_lapin("declaring an events exchange"))?;
            let options = QueueDeclareOptions {
                durable: spec.durable,
                exclusive: spec.exclusive,
                auto_delete: spec.auto_delete,
                ..QueueDeclareOptions::default()
            };
            declare_bound_queue(
                &consume,
                &spec.name,
                options,
                &exchange,
                &handler.event_type,
                "an event handler queue",
            )
            .await?;
            let consumer = start_consumer(&consume, &spec.name, name).await?;
            consumers.push((Entry::Event(i), consumer));
        }
        let publish = conn
            .create_channel()
            .await
            .map_err(SetupError::from_lapin("opening a channel"))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(SetupError::from_lapin("enabling publisher confirms"))?;
        let tags = consumers
            .iter()
            .map(|(_, c)| c.tag().as_str().to_owned())
            .collect();
        let merged = futures::stream::select_all(consumers.into_iter().map(|(entry, consumer)| {
            // A consumer's end shows up as `None`, so that a broker-side
            // cancel is noticed rather than silently dropped from the merge.
            consumer
                .map(move |d| (entry, Some(d)))
                .chain(futures::stream::once(async move { (entry, None) }))
                .boxed()
        }));
        Ok(Session {
            consume,
            deliveries: merged,
            tags,
            replies: Replier {
                channel: publish,
                exchange: config.rpc_exchange.clone(),
                delivery_mode: config.delivery_mode(),
            },
            max_request_bytes: config.max_request_bytes,
        })
    }

    async fn consume(
        &self,
        mut session: Session,
        run: &Workers<'_>,
        stop: &CancellationToken,
    ) -> SessionEnd {
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                d = session.deliveries.next() => d,
            };
            match next {
                Some((entry, Some(Ok(delivery)))) => {
                    self.dispatch(
                        entry,
                        delivery,
                        &session.replies,
                        session.max_request_bytes,
                        run,
                    )
                    .await
                }
                Some((_, Some(Err(e)))) => return SessionEnd::Lost(e.to_string()),
                Some((_, None)) | None => {
                    return SessionEnd::Lost("the broker cancelled a consumer".into())
                }
            }
        }
        // Stop: no new deliveries, but handle the ones already received.
        for tag in &session.tags {
            if let Err(e) = session
                .consume
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await
            {
                tracing::warn!(error = %e, "cancelling a consumer failed");
            }
        }
        while let Some((entry, item)) = session.deliveries.next().await {
            match item {
                Some(Ok(delivery)) => {
                    self.dispatch(
                        entry,
                        delivery,
                        &session.replies,
                        session.max_request_bytes,
                        run,
                    )
                    .await
                }
                Some(Err(_)) => break,
                None => {}
            }
        }
        SessionEnd::Stopped {
            consume: session.consume,
        }
    }

    async fn dispatch(
        &self,
        entry: Entry,
        delivery: Delivery,
        replies: &Replier,
        max_bytes: usize,
        run: &Workers<'_>,
    ) {
        let (runtime, tracker) = (run.runtime, run.tracker);
        let Ok(permit) = Arc::clone(run.slots).acquire_owned().await else {
            return;
        };
        match entry {
            Entry::Rpc => {
                let call = Call {
                    def: Arc::clone(&self.def),
                    runtime: Arc::clone(runtime),
                    replies: replies.clone(),
                    max_request_bytes: max_bytes,
                };
                tracker.spawn(call.handle(delivery, permit));
            }
            Entry::Event(i) => {
                let Some(handler) = self.def.event_handlers.get(i).cloned() else {
                    return;
                };
                let call = EventCall {
                    handler,
                    runtime: Arc::clone(runtime),
                    max_bytes,
                };
                tracker.spawn(call.handle(delivery, permit));
            }
        }
    }
}

/// Declares a queue with nameko's flags and binds it.
async fn declare_bound_queue(
    channel: &Channel,
    queue: &str,
    options: QueueDeclareOptions,
    exchange: &str,
    routing_key: &str,
    what: &'static str,
) -> Result<(), SetupError> {
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .map_err(SetupError::from_lapin(what))?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(SetupError::from_lapin(what))
}

/// Unique per consumer, and naming the service in the broker's lists.
fn consumer_tag(service: &str) -> String {
    format!("{service}-{}", uuid::Uuid::new_v4())
}

async fn start_consumer(
    channel: &Channel,
    queue: &str,
    service: &str,
) -> Result<Consumer, SetupError> {
    let tag = consumer_tag(service);
    channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(SetupError::from_lapin("consuming a queue"))
}

/// Where handled deliveries run: the service's runtime, the tracker a stop
/// waits on, and the max_workers slots.
struct Workers<'a> {
    runtime: &'a Arc<ServiceRuntime>,
    tracker: &'a TaskTracker,
    slots: &'a Arc<Semaphore>,
}

/// Which entrypoint a delivery is for.
#[derive(Clone, Copy, Debug)]
enum Entry {
    Rpc,
    Event(usize),
}

type Deliveries = futures::stream::SelectAll<
    futures::stream::BoxStream<'static, (Entry, Option<Result<Delivery, lapin::Error>>)>,
>;

struct Session {
    consume: Channel,
    deliveries: Deliveries,
    tags: Vec<String>,
    replies: Replier,
    max_request_bytes: usize,
}

enum SessionEnd {
    Stopped { consume: Channel },
    Lost(String),
}

/// A stopped service's connection, closed only after its calls in flight
/// have replied and acked on it.
struct Open {
    consume: Channel,
    conn: Connection,
}

struct SetupError {
    error: ConnectError,
    fatal: bool,
}

impl SetupError {
    fn from_lapin(what: &'static str) -> impl Fn(lapin::Error) -> SetupError {
        move |e: lapin::Error| {
            // 406 PRECONDITION_FAILED and 403 ACCESS_REFUSED will not go away
            // by retrying: the queue exists with other flags, or the user
            // lacks permissions.
            let text = e.to_string();
            let fatal = text.contains("PRECONDITION_FAILED") || text.contains("ACCESS_REFUSED");
            SetupError {
                error: ConnectError::Refused {
                    what: what.to_owned(),
                    reason: text,
                },
                fatal,
            }
        }
    }
}

/// Publishes replies with confirms.
#[derive(Clone)]
struct Replier {
    channel: Channel,
    exchange: String,
    delivery_mode: u8,
}

struct Call {
    def: Arc<ServiceDef>,
    runtime: Arc<ServiceRuntime>,
    replies: Replier,
    max_request_bytes: usize,
}

impl Call {
    async fn handle(self, delivery: Delivery, permit: OwnedSemaphorePermit) {
        let props = &delivery.properties;
        let routing_key = delivery.routing_key.as_str();
        let method = routing_key
            .strip_prefix(self.def.name.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or_else(|| routing_key.rsplit('.').next().unwrap_or(routing_key))
            .to_owned();
        let incoming = wire::read_context(props.headers().as_ref());
        let origin = Origin {
            correlation_id: props
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str().to_owned()),
            redelivered: delivery.redelivered,
        };
        let ctx = Context::new(
            Arc::clone(&self.runtime),
            &method,
            incoming.call_id_stack,
            incoming.data,
            origin,
        );
        // A span per call at debug level: formatting one for every call at
        // info costs about a fifth of a `get`. The lines below that are
        // logged at info and above carry the call id themselves.
        let span = tracing::debug_span!("rpc", call_id = %ctx.call_id());
        let def = Arc::clone(&self.def);
        let label = match def.methods.get_key_value(method.as_str()) {
            Some((name, _)) => name.as_str(),
            None => UNKNOWN_METHOD,
        };
        for o in &def.observers {
            o.started(label);
        }
        async move {
            let started = Instant::now();
            let outcome = self.execute(&ctx, &method, &delivery).await;
            // The worker's job is done; replying and acking do not hold a
            // max_workers slot (the prefetch bounds them).
            drop(permit);
            let elapsed = started.elapsed();
            let elapsed_us = elapsed.as_micros() as u64;
            let call_id = ctx.call_id();
            let body = match outcome {
                Ok(body) => {
                    tracing::debug!(%method, elapsed_us, "call succeeded");
                    for o in &self.def.observers {
                        o.finished(label, CallOutcome::Ok, elapsed);
                    }
                    body
                }
                Err((error, expected)) => {
                    let outcome = if expected {
                        tracing::info!(service = %self.def.name, %method, call_id, elapsed_us, error = %error, "call raised");
                        CallOutcome::Raised(&error)
                    } else {
                        tracing::warn!(service = %self.def.name, %method, call_id, elapsed_us, error = %error, "request refused");
                        CallOutcome::Refused(&error)
                    };
                    for o in &self.def.observers {
                        o.finished(label, outcome, elapsed);
                    }
                    wire::encode_error_reply(&error.to_error_object())
                }
            };
            self.reply_then_ack(&delivery, &body, call_id).await;
        }
        .instrument(span)
        .await;
    }

    /// Runs the request, or says why it cannot run. The flag tells an error
    /// the handler raised (expected) from one about the request itself.
    async fn execute(
        &self,
        ctx: &Context,
        method: &str,
        delivery: &Delivery,
    ) -> Result<Vec<u8>, (RpcError, bool)> {
        let props = &delivery.properties;
        let request = wire::decode_request(
            props.content_type().as_ref().map(|c| c.as_str()),
            props.content_encoding().as_ref().map(|c| c.as_str()),
            &delivery.data,
            self.max_request_bytes,
        )
        .map_err(|e| (RpcError::malformed_request(e.to_string()), false))?;
        let entry = self
            .def
            .methods
            .get(method)
            .ok_or_else(|| (RpcError::method_not_found(method), false))?;
        let values = entry
            .signature
            .bind(method, request.args, request.kwargs)
            .map_err(|e| (e, false))?;
        match AssertUnwindSafe((entry.handler)(ctx.clone(), values))
            .catch_unwind()
            .await
        {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(HandlerFailure::Raised(e))) => Err((e, true)),
            Ok(Err(HandlerFailure::Argument(e))) => {
                Err(((self.def.on_invalid_argument)(&e), false))
            }
            Ok(Err(HandlerFailure::Unserializable(detail))) => {
                tracing::error!(detail = %detail, "the method's result cannot be serialised");
                Err((RpcError::unserializable(&detail), false))
            }
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %text, "the method panicked");
                Err((
                    RpcError::internal(
                        "the method failed unexpectedly; the service log has the details",
                    ),
                    false,
                ))
            }
        }
    }

    /// Reply, wait for the confirm, then ack: the request leaves the queue
    /// only once its answer is safely with the broker.
    async fn reply_then_ack(&self, delivery: &Delivery, body: &[u8], call_id: &str) {
        let props = &delivery.properties;
        let Some(reply_to) = props.reply_to().clone() else {
            tracing::warn!(call_id, "request has no reply_to; the result is dropped");
            ack(delivery, call_id).await;
            return;
        };
        // The reply is as persistent as the request: a nameko caller sends
        // persistent requests and may wait across a broker restart, so its
        // reply is persistent too; a caller that chose transient requests
        // does not pay for a persistent reply.
        let mode = props.delivery_mode().unwrap_or(self.replies.delivery_mode);
        let reply_props = wire::reply_properties(props.correlation_id().as_ref(), mode);
        let published = self
            .replies
            .channel
            .basic_publish(
                self.replies.exchange.as_str().into(),
                reply_to,
                BasicPublishOptions::default(),
                body,
                reply_props,
            )
            .await;
        let confirmed = match published {
            Ok(confirm) => confirm.await,
            Err(e) => Err(e),
        };
        match confirmed {
            Ok(c) if c.is_ack() => ack(delivery, call_id).await,
            Ok(_) => {
                // The broker refused to take the reply: give the request back
                // so that it is answered again rather than never.
                tracing::error!(
                    call_id,
                    "the broker nacked the reply; requeueing the request"
                );
                if let Err(e) = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: true })
                    .await
                {
                    tracing::error!(call_id, error = %e, "requeueing the request failed");
                }
            }
            Err(e) => {
                // Without a confirmed reply the request must stay unacked; the
                // broker redelivers it when the channel closes.
                tracing::error!(call_id, error = %e, "publishing the reply failed; the request will be redelivered");
            }
        }
    }
}

/// One event being handled.
struct EventCall {
    handler: EventHandlerEntry,
    runtime: Arc<ServiceRuntime>,
    max_bytes: usize,
}

impl EventCall {
    async fn handle(self, delivery: Delivery, _permit: OwnedSemaphorePermit) {
        let props = &delivery.properties;
        let incoming = wire::read_context(props.headers().as_ref());
        let ctx = Context::new(
            Arc::clone(&self.runtime),
            &self.handler.name,
            incoming.call_id_stack,
            incoming.data,
            Origin {
                correlation_id: None,
                redelivered: delivery.redelivered,
            },
        );
        // Debug level for the same reason as an RPC call's span; the lines
        // logged at info and above name the handler and the call id.
        let span = tracing::debug_span!("event", call_id = %ctx.call_id());
        let call_id = ctx.call_id().to_owned();
        let who = format!("{}.{}", self.runtime.name, self.handler.name);
        async move {
            let content_type = delivery.properties.content_type().as_ref().map(|c| c.as_str());
            let data = match decode_event(content_type, &delivery.data, self.max_bytes) {
                Ok(data) => data,
                Err(why) => {
                    tracing::error!(handler = %who, %call_id, error = %why, "undecodable event dropped");
                    ack(&delivery, &call_id).await;
                    return;
                }
            };
            let outcome = AssertUnwindSafe((self.handler.handler)(ctx, data)).catch_unwind().await;
            let failure = match outcome {
                Ok(Ok(())) => {
                    self.handler.record(true);
                    ack(&delivery, &call_id).await;
                    return;
                }
                Ok(Err(EventFailure::Undecodable(e))) => {
                    // It can never succeed: requeueing would loop forever.
                    tracing::error!(handler = %who, %call_id, error = %e, "event data does not fit the handler; dropped");
                    ack(&delivery, &call_id).await;
                    return;
                }
                Ok(Err(EventFailure::Failed(e))) => e,
                Err(_) => "the handler panicked".to_owned(),
            };
            let failures = self.handler.record(false);
            if self.handler.options.requeue_on_error {
                let wait = self.handler.backoff(failures);
                tracing::warn!(handler = %who, %call_id, error = %failure, failures, retry_in_ms = wait.as_millis() as u64, "event handler failed; requeueing after a back-off");
                tokio::select! {
                    _ = self.runtime.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                if let Err(e) = delivery.acker.reject(BasicRejectOptions { requeue: true }).await {
                    tracing::error!(handler = %who, %call_id, error = %e, "requeueing the event failed; the broker redelivers it when the channel closes");
                }
            } else {
                tracing::error!(handler = %who, %call_id, error = %failure, "event handler failed; event dropped");
                ack(&delivery, &call_id).await;
            }
        }
        .instrument(span)
        .await;
    }
}

/// An event's body, under the same size and content-type rules as a
/// request's.
fn decode_event(
    content_type: Option<&str>,
    body: &[u8],
    max_bytes: usize,
) -> Result<serde_json::Value, String> {
    if body.len() > max_bytes {
        return Err(format!(
            "event body is {} bytes; the limit is {max_bytes}",
            body.len()
        ));
    }
    wire::check_content_type(content_type).map_err(|e| e.to_string())?;
    serde_json::from_slice(body).map_err(|e| format!("event body is not JSON: {e}"))
}

async fn ack(delivery: &Delivery, call_id: &str) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::error!(call_id, error = %e, "acking failed; the broker will redeliver it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_bodies_follow_the_request_rules() {
        let json = Some("application/json");
        assert_eq!(
            decode_event(Some("application/json; charset=utf-8"), b"[1]", 10),
            Ok(serde_json::json!([1]))
        );
        let too_large = decode_event(json, b"[1, 2, 3]", 4).unwrap_err();
        assert!(too_large.contains("9 bytes"), "{too_large}");
        for content_type in [None, Some("text/plain")] {
            let refused = decode_event(content_type, b"1", 10).unwrap_err();
            assert!(refused.contains("content type"), "{refused}");
        }
        let not_json = decode_event(json, b"{nope", 10).unwrap_err();
        assert!(not_json.contains("not JSON"), "{not_json}");
    }

    /// Names are checked before connecting, so no broker is needed.
    #[tokio::test]
    async fn names_the_wire_cannot_carry_are_refused_at_start() {
        let service = |name: &str| {
            Service::builder(name)
                .method("m", Signature::new(), |_: Context, (): ()| async {
                    Ok::<_, RpcError>(())
                })
                .build()
        };
        let stop = CancellationToken::new();
        // Too long for `rpc-{name}`.
        let err = service(&"a".repeat(252))
            .run(Config::default(), stop.clone())
            .await;
        assert!(matches!(err, Err(ServiceError::InvalidName(..))), "{err:?}");
        // `rpc-{name}` fits, but the consumer tag `{name}-{uuid}` does not.
        let err = service(&"a".repeat(230))
            .run(Config::default(), stop.clone())
            .await;
        assert!(matches!(err, Err(ServiceError::InvalidName(..))), "{err:?}");
        let config = Config {
            rpc_exchange: "x".repeat(256),
            ..Config::default()
        };
        let err = service("fine").run(config, stop).await;
        assert!(
            matches!(&err, Err(ServiceError::Configuration(m)) if m.contains("rpc_exchange")),
            "{err:?}"
        );
    }
}
