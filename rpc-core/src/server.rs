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
use crate::method::{ArgumentError, FromArgs, HandlerFailure, Method, Signature};
use crate::timer::{self, Timer, TimerEntry};
use crate::wire;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, ExchangeKind};
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
}

/// Collects a service's methods and timers; see [`Service::builder`].
pub struct ServiceBuilder {
    name: String,
    methods: HashMap<String, Method>,
    timers: Vec<TimerEntry>,
    on_invalid_argument: ArgumentErrorMapper,
    observers: Vec<Arc<dyn CallObserver>>,
}

impl ServiceBuilder {
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
            }),
        }
    }
}

struct ServiceDef {
    name: String,
    methods: HashMap<String, Method>,
    timers: Vec<TimerEntry>,
    on_invalid_argument: ArgumentErrorMapper,
    observers: Vec<Arc<dyn CallObserver>>,
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
        for candidate in [wire::rpc_queue(&name), wire::rpc_binding_key(&name)] {
            if let Err(e) = wire::short_string(&candidate) {
                return Err(ServiceError::InvalidName(name, e.to_string()));
            }
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
        let result = if self.def.methods.is_empty() {
            state.send_replace(State::Consuming);
            stop.cancelled().await;
            Ok(())
        } else {
            self.consume_until_stopped(&config, &runtime, &tracker, &stop, &state)
                .await
        };
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
        runtime.close().await;
        tracing::info!(service = %name, "stopped");
        result
    }

    /// Connects, consumes, and reconnects after a loss, until `stop`.
    async fn consume_until_stopped(
        &self,
        config: &Config,
        runtime: &Arc<ServiceRuntime>,
        tracker: &TaskTracker,
        stop: &CancellationToken,
        state: &watch::Sender<State>,
    ) -> Result<(), ServiceError> {
        let options = config.connect_options(format!("{} service", self.def.name));
        let workers = Arc::new(Semaphore::new(config.workers()));
        let mut delay = config.connect_retry.initial;
        loop {
            let conn = match connection::connect(&config.amqp_uri, &options, stop).await {
                Ok(conn) => conn,
                Err(ConnectError::Shutdown) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let session = match self.open_session(&conn, config).await {
                Ok(session) => session,
                Err(e) if e.fatal => return Err(e.error.into()),
                Err(e) => {
                    tracing::warn!(service = %self.def.name, error = %e.error, "setting up the service failed; retrying");
                    let _ = conn.close(320, "retrying".into()).await;
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(config.connect_retry.max);
                    continue;
                }
            };
            delay = config.connect_retry.initial;
            state.send_replace(State::Consuming);
            tracing::info!(
                service = %self.def.name,
                queue = %wire::rpc_queue(&self.def.name),
                broker = %config.amqp_uri.endpoint(),
                max_workers = config.workers(),
                "consuming"
            );
            let end = self
                .consume(session, runtime, tracker, &workers, stop)
                .await;
            match end {
                SessionEnd::Stopped { consume } => {
                    // Keep the connection open until every call in flight has
                    // published its reply and acked its request (nameko's
                    // stop skips those acks: §12).
                    tracker.close();
                    if tokio::time::timeout(config.shutdown_timeout, tracker.wait())
                        .await
                        .is_err()
                    {
                        tracing::error!(service = %self.def.name, "shutdown timeout with calls still running");
                    }
                    let _ = consume.close(200, "OK".into()).await;
                    let _ = conn.close(200, "OK".into()).await;
                    return Ok(());
                }
                SessionEnd::Lost(reason) => {
                    tracing::warn!(service = %self.def.name, reason = %reason, "lost the broker connection; reconnecting");
                    state.send_replace(State::Reconnecting(reason));
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
        let queue = wire::rpc_queue(name);
        let consume = conn
            .create_channel()
            .await
            .map_err(SetupError::from_lapin("opening a channel"))?;
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
            .map_err(SetupError::from_lapin("declaring the RPC exchange"))?;
        consume
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(SetupError::from_lapin("declaring the service queue"))?;
        consume
            .queue_bind(
                queue.as_str().into(),
                config.rpc_exchange.as_str().into(),
                wire::rpc_binding_key(name).as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(SetupError::from_lapin("binding the service queue"))?;
        let prefetch = u16::try_from(config.workers()).unwrap_or(u16::MAX);
        consume
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(SetupError::from_lapin("setting the prefetch"))?;
        let tag = format!("{name}-{}", uuid::Uuid::new_v4());
        let consumer = consume
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(SetupError::from_lapin("consuming the service queue"))?;
        let publish = conn
            .create_channel()
            .await
            .map_err(SetupError::from_lapin("opening a channel"))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(SetupError::from_lapin("enabling publisher confirms"))?;
        Ok(Session {
            consume,
            consumer,
            tag,
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
        runtime: &Arc<ServiceRuntime>,
        tracker: &TaskTracker,
        workers: &Arc<Semaphore>,
        stop: &CancellationToken,
    ) -> SessionEnd {
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                d = session.consumer.next() => d,
            };
            match next {
                Some(Ok(delivery)) => {
                    self.dispatch(delivery, &session, runtime, tracker, workers)
                        .await
                }
                Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
                None => return SessionEnd::Lost("the broker cancelled the consumer".into()),
            }
        }
        // Stop: no new deliveries, but answer the ones already received.
        if let Err(e) = session
            .consume
            .basic_cancel(session.tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            tracing::warn!(error = %e, "cancelling the consumer failed");
        }
        while let Some(Ok(delivery)) = session.consumer.next().await {
            self.dispatch(delivery, &session, runtime, tracker, workers)
                .await;
        }
        SessionEnd::Stopped {
            consume: session.consume,
        }
    }

    async fn dispatch(
        &self,
        delivery: Delivery,
        session: &Session,
        runtime: &Arc<ServiceRuntime>,
        tracker: &TaskTracker,
        workers: &Arc<Semaphore>,
    ) {
        let Ok(permit) = Arc::clone(workers).acquire_owned().await else {
            return;
        };
        let call = Call {
            def: Arc::clone(&self.def),
            runtime: Arc::clone(runtime),
            replies: session.replies.clone(),
            max_request_bytes: session.max_request_bytes,
        };
        tracker.spawn(call.handle(delivery, permit));
    }
}

struct Session {
    consume: Channel,
    consumer: Consumer,
    tag: String,
    replies: Replier,
    max_request_bytes: usize,
}

enum SessionEnd {
    Stopped { consume: Channel },
    Lost(String),
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
    async fn handle(self, delivery: Delivery, _permit: OwnedSemaphorePermit) {
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
        let span = tracing::info_span!(
            "rpc",
            service = %self.def.name,
            method = %method,
            call_id = %ctx.call_id(),
            correlation_id = props.correlation_id().as_ref().map_or("", |c| c.as_str()),
        );
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
            let elapsed = started.elapsed();
            let elapsed_us = elapsed.as_micros() as u64;
            let body = match outcome {
                Ok(body) => {
                    tracing::debug!(elapsed_us, "call succeeded");
                    for o in &self.def.observers {
                        o.finished(label, CallOutcome::Ok, elapsed);
                    }
                    body
                }
                Err((error, expected)) => {
                    let outcome = if expected {
                        tracing::info!(elapsed_us, error = %error, "call raised");
                        CallOutcome::Raised(&error)
                    } else {
                        tracing::warn!(elapsed_us, error = %error, "request refused");
                        CallOutcome::Refused(&error)
                    };
                    for o in &self.def.observers {
                        o.finished(label, outcome, elapsed);
                    }
                    wire::encode_error_reply(&error.to_error_object())
                }
            };
            self.reply_then_ack(&delivery, &body).await;
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
    async fn reply_then_ack(&self, delivery: &Delivery, body: &[u8]) {
        let props = &delivery.properties;
        let Some(reply_to) = props.reply_to().clone() else {
            tracing::warn!("request has no reply_to; the result is dropped");
            self.ack(delivery).await;
            return;
        };
        let reply_props =
            wire::reply_properties(props.correlation_id().as_ref(), self.replies.delivery_mode);
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
            Ok(c) if c.is_ack() => self.ack(delivery).await,
            Ok(_) => {
                // The broker refused to take the reply: give the request back
                // so that it is answered again rather than never.
                tracing::error!("the broker nacked the reply; requeueing the request");
                if let Err(e) = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: true })
                    .await
                {
                    tracing::error!(error = %e, "requeueing the request failed");
                }
            }
            Err(e) => {
                // Without a confirmed reply the request must stay unacked; the
                // broker redelivers it when the channel closes.
                tracing::error!(error = %e, "publishing the reply failed; the request will be redelivered");
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) {
        if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
            tracing::error!(error = %e, "acking the request failed; the broker will redeliver it");
        }
    }
}
