//! The AMQP side of a running service: connect, declare nameko's queues and
//! exchanges, consume, hand each delivery to a worker, reconnect after a
//! loss, and wind the consumers down at a stop.
//!
//! Every await here ends: connecting and the back-off give way to the stop
//! token; setting up a session is bounded by [`connection::SETUP_TIMEOUT`]
//! and gives way to the stop; winding down (cancelling the consumers and
//! handing the deliveries already received to workers) is bounded by the
//! stop's deadline, `shutdown_timeout` after the stop.

use super::acks::{Acks, Registered};
use super::builder::ServiceDef;
use super::event_call::EventCall;
use super::handle::ServiceStatus;
use super::rpc_call::{Call, Replier};
use super::ServiceError;
use crate::config::{Config, QueueType};
use crate::connection;
use crate::error::ConnectError;
use crate::publish::OrderedChannel;
use crate::runtime::ServiceRuntime;
use crate::tripwire::Tripwire;
use crate::wire;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Consumes a service's queues until it is stopped; see the module docs.
pub(super) struct Consumption<'a> {
    pub(super) def: &'a Arc<ServiceDef>,
    pub(super) broadcast_id: &'a str,
    pub(super) config: &'a Config,
    pub(super) runtime: &'a Arc<ServiceRuntime>,
    pub(super) tracker: &'a TaskTracker,
    pub(super) stop: &'a CancellationToken,
    pub(super) status: &'a watch::Sender<ServiceStatus>,
    /// The session's publishing channel, for the service's
    /// [`ServicePublisher`](crate::events::ServicePublisher); `None` while
    /// there is no session.
    pub(super) publish: &'a watch::Sender<Option<OrderedChannel>>,
    pub(super) workers: Arc<Semaphore>,
}

/// How consuming ended after a stop: the connection still open (closed by
/// the caller once the calls in flight are done, or abandoned), and the
/// stop's deadline.
pub(super) struct Stopped {
    pub(super) open: Option<Open>,
    pub(super) deadline: Instant,
}

impl Stopped {
    /// Stopped now, before a session was running.
    pub(super) fn before_consuming(config: &Config) -> Self {
        Stopped {
            open: None,
            deadline: Instant::now() + config.shutdown_timeout,
        }
    }
}

/// A stopped service's connection, closed only after its calls in flight
/// have replied and acked on it.
pub(super) struct Open {
    pub(super) consume: Channel,
    pub(super) publish: Channel,
    pub(super) conn: Connection,
}

struct SetupError {
    error: ServiceError,
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
                error: ServiceError::Connect(ConnectError::Refused {
                    what: what.to_owned(),
                    reason: text,
                }),
                fatal,
            }
        }
    }
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
    /// Shared by every call of the session: one reference count per call
    /// instead of a clone of a channel, a string and a token.
    handoff: Arc<Handoff>,
}

/// What a worker needs from the session to handle a delivery.
pub(super) struct Handoff {
    pub(super) replies: Replier,
    pub(super) max_request_bytes: usize,
    /// Tripped once the session's connection is known to be lost: acks
    /// and confirms still awaited on it will never come (see
    /// [`SETTLE_TIMEOUT`]), and the broker redelivers those messages.
    pub(super) gone: Tripwire,
    /// The consume channel's acks, batched (see [`super::acks`]).
    pub(super) acks: Arc<Acks>,
}

enum SessionEnd {
    /// The channels to close once the calls are done (boxed: lapin's
    /// channels are large, and a session ends once).
    Stopped(Box<(Channel, Channel)>, Instant),
    Lost(String),
}

/// What winding down got through before its deadline, for the log.
#[derive(Default)]
struct WindDown {
    consumers: usize,
    cancelled: usize,
    handed_over: usize,
}

impl Consumption<'_> {
    /// Connects, consumes, and reconnects after a loss, until the stop.
    pub(super) async fn run(self) -> Result<Stopped, ServiceError> {
        let config = self.config;
        let name = &self.def.name;
        let mut options = config.connect_options(format!("{name} service"));
        let mut backoff = connection::Backoff::new(&config.connect_retry);
        // Where in the broker list the next connection attempt starts: the
        // element after the one lost or refused, so a failing node is not
        // tried first again (round-robin, as kombu fails over).
        let mut start = 0;
        loop {
            let (conn, broker) =
                match connection::connect(&config.amqp_uri, start, &options, self.stop).await {
                    Ok(connected) => connected,
                    Err(ConnectError::Shutdown) => return Ok(Stopped::before_consuming(config)),
                    Err(e) => return Err(e.into()),
                };
            let setup = tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    connection::close_connection(&conn, "stopping").await;
                    return Ok(Stopped::before_consuming(config));
                }
                setup = tokio::time::timeout(connection::SETUP_TIMEOUT, self.open_session(&conn)) => setup,
            };
            let session = match setup {
                Ok(Ok(session)) => session,
                Ok(Err(e)) if e.fatal => {
                    connection::close_connection(&conn, "setup refused").await;
                    return Err(e.error);
                }
                failed => {
                    let reason = match failed {
                        Ok(Err(e)) => e.error.to_string(),
                        _ => format!(
                            "the broker did not answer within {:?}",
                            connection::SETUP_TIMEOUT
                        ),
                    };
                    tracing::warn!(
                        service = %name,
                        broker = %config.amqp_uri.get(broker).endpoint(),
                        error = %reason,
                        "setting up the service failed; retrying with the next broker"
                    );
                    start = broker + 1;
                    connection::close_unless_stopped(&conn, "retrying", self.stop).await;
                    if !backoff.wait(self.stop).await {
                        return Ok(Stopped::before_consuming(config));
                    }
                    continue;
                }
            };
            backoff.reset();
            // Before the status: once `ready()` returns, the publisher has
            // the session to publish on.
            self.publish
                .send_replace(Some(session.handoff.replies.channel.clone()));
            self.status.send_replace(ServiceStatus::Consuming);
            tracing::info!(
                service = %name,
                event_handlers = self.def.event_handlers.len(),
                broker = %config.amqp_uri.get(broker).endpoint(),
                broker_index = broker,
                max_workers = config.workers(),
                "consuming"
            );
            let gone = session.handoff.gone.clone();
            let end = self.consume(session).await;
            match end {
                SessionEnd::Stopped(channels, deadline) => {
                    let (consume, publish) = *channels;
                    return Ok(Stopped {
                        open: Some(Open {
                            consume,
                            publish,
                            conn,
                        }),
                        deadline,
                    });
                }
                SessionEnd::Lost(reason) => {
                    self.publish.send_replace(None);
                    gone.trip();
                    tracing::warn!(
                        service = %name,
                        broker = %config.amqp_uri.get(broker).endpoint(),
                        broker_index = broker,
                        reason = %reason,
                        "lost the broker connection; reconnecting to the next broker"
                    );
                    start = broker + 1;
                    self.status
                        .send_replace(ServiceStatus::Reconnecting(reason));
                    // connect_retry may give up on the first connection; a
                    // service that was up keeps trying until it is stopped.
                    options.retry.attempts = None;
                    connection::close_unless_stopped(&conn, "reconnecting", self.stop).await;
                }
            }
        }
    }

    async fn open_session(&self, conn: &Connection) -> Result<Session, SetupError> {
        let config = self.config;
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
                Some(config),
                &config.rpc_exchange,
                &wire::rpc_binding_key(name),
                "the service queue",
            )
            .await?;
            let consumer = start_consumer(&consume, &queue, name).await?;
            consumers.push((Entry::Rpc, consumer));
        }
        if self.def.publishes_events {
            connection::declare_topic_exchange(&consume, &wire::events_exchange(name))
                .await
                .map_err(SetupError::from_lapin(
                    "declaring the service's events exchange",
                ))?;
        }
        for (i, handler) in self.def.event_handlers.iter().enumerate() {
            let exchange = wire::events_exchange(&handler.source_service);
            let spec = handler.queue(name, self.broadcast_id);
            for candidate in [&exchange, &spec.name, &handler.event_type] {
                wire::short_string(candidate).map_err(|e| SetupError {
                    error: ServiceError::Connect(ConnectError::Refused {
                        what: format!("event handler {}", handler.name),
                        reason: e.to_string(),
                    }),
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
                spec.may_be_quorum.then_some(config),
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
            handoff: Arc::new(Handoff {
                replies: Replier {
                    channel: OrderedChannel::new(publish),
                    exchange: config.rpc_exchange.clone(),
                    delivery_mode: config.delivery_mode(),
                },
                max_request_bytes: config.max_request_bytes,
                gone: Tripwire::new(),
                acks: Acks::new(),
            }),
        })
    }

    /// Hands deliveries to workers until the stop or a loss; after a stop,
    /// winds the consumers down within the stop's deadline.
    async fn consume(&self, mut session: Session) -> SessionEnd {
        // One wait on the stop for the whole session: made afresh for each
        // delivery it took the token's lock twice per call.
        let stopped = self.stop.cancelled();
        tokio::pin!(stopped);
        // A delivery taken from the stream while all workers were busy when
        // the stop came: it is handled while winding down.
        let held = loop {
            let next = tokio::select! {
                biased;
                _ = &mut stopped => break None,
                d = session.deliveries.next() => d,
            };
            let (entry, delivery) = match next {
                Some((entry, Some(Ok(delivery)))) => (entry, delivery),
                Some((_, Some(Err(e)))) => return SessionEnd::Lost(e.to_string()),
                Some((_, None)) | None => {
                    return SessionEnd::Lost("the broker cancelled a consumer".into())
                }
            };
            // Waiting for a free worker gives way to the stop, so that a
            // stop is never stuck behind calls that do not end.
            let slot = tokio::select! {
                biased;
                slot = Arc::clone(&self.workers).acquire_owned() => slot,
                _ = &mut stopped => break Some((entry, delivery)),
            };
            match slot {
                Ok(permit) => self.spawn(entry, delivery, &session.handoff, permit),
                Err(_) => break Some((entry, delivery)),
            }
        };
        let deadline = Instant::now() + self.config.shutdown_timeout;
        let mut progress = WindDown {
            consumers: session.tags.len(),
            ..WindDown::default()
        };
        let wound_down =
            tokio::time::timeout_at(deadline, self.wind_down(&mut session, held, &mut progress))
                .await;
        if wound_down.is_err() {
            tracing::warn!(
                service = %self.def.name,
                consumers = progress.consumers,
                cancelled = progress.cancelled,
                handed_over = progress.handed_over,
                timeout = ?self.config.shutdown_timeout,
                "the stop's deadline passed before every consumer was cancelled and its deliveries handled; \
                 unhandled deliveries return to the queue when the channel closes"
            );
        }
        SessionEnd::Stopped(
            Box::new((
                session.consume,
                session.handoff.replies.channel.channel().clone(),
            )),
            deadline,
        )
    }

    /// No new deliveries, but the ones already received are handled.
    async fn wind_down(
        &self,
        session: &mut Session,
        held: Option<(Entry, Delivery)>,
        progress: &mut WindDown,
    ) {
        let cancels = session.tags.iter().map(|tag| {
            session
                .consume
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        });
        for (tag, result) in session
            .tags
            .iter()
            .zip(futures::future::join_all(cancels).await)
        {
            match result {
                Ok(()) => progress.cancelled += 1,
                Err(e) => {
                    tracing::warn!(consumer = %tag, error = %e, "cancelling a consumer failed")
                }
            }
        }
        if let Some((entry, delivery)) = held {
            self.spawn_when_free(entry, delivery, &session.handoff)
                .await;
            progress.handed_over += 1;
        }
        while let Some((entry, item)) = session.deliveries.next().await {
            match item {
                Some(Ok(delivery)) => {
                    self.spawn_when_free(entry, delivery, &session.handoff)
                        .await;
                    progress.handed_over += 1;
                }
                Some(Err(_)) => break,
                None => {}
            }
        }
    }

    async fn spawn_when_free(&self, entry: Entry, delivery: Delivery, handoff: &Arc<Handoff>) {
        if let Ok(permit) = Arc::clone(&self.workers).acquire_owned().await {
            self.spawn(entry, delivery, handoff, permit);
        }
    }

    fn spawn(
        &self,
        entry: Entry,
        delivery: Delivery,
        handoff: &Arc<Handoff>,
        permit: OwnedSemaphorePermit,
    ) {
        // Registered here, in delivery order, so that a multiple ack never
        // covers a delivery that is not done.
        let registered = handoff
            .acks
            .register(delivery.delivery_tag, delivery.acker.clone());
        match entry {
            Entry::Rpc => {
                let call = Call {
                    def: Arc::clone(self.def),
                    runtime: Arc::clone(self.runtime),
                    handoff: Arc::clone(handoff),
                    workers: Arc::clone(&self.workers),
                };
                // Boxed before it is spawned: the call's future holds the
                // delivery and its state machine is large; tokio moves a
                // task's future on the way in and overwrites it when done.
                self.tracker
                    .spawn(Box::pin(settled(registered, call.handle(delivery, permit))));
            }
            Entry::Event(i) => {
                let Some(handler) = self.def.event_handlers.get(i).cloned() else {
                    return;
                };
                let call = EventCall {
                    handler,
                    runtime: Arc::clone(self.runtime),
                    handoff: Arc::clone(handoff),
                };
                self.tracker
                    .spawn(Box::pin(settled(registered, call.handle(delivery, permit))));
            }
        }
    }
}

/// Runs a call holding its delivery's registration, so that a call dropped
/// before it settled keeps its delivery unacked.
async fn settled(registered: Registered, call: impl std::future::Future<Output = ()>) {
    call.await;
    drop(registered);
}

/// Declares a queue with nameko's flags and binds it. `shared` is the
/// config when the queue is one the service's instances share, whose type
/// `queue_type` sets; other queues are always classic.
async fn declare_bound_queue(
    channel: &Channel,
    queue: &str,
    options: QueueDeclareOptions,
    shared: Option<&Config>,
    exchange: &str,
    routing_key: &str,
    what: &'static str,
) -> Result<(), SetupError> {
    let args = shared.map(Config::shared_queue_args).unwrap_or_default();
    channel
        .queue_declare(queue.into(), options, args)
        .await
        .map_err(|e| match shared {
            Some(config) if is_queue_type_mismatch(&e) => SetupError {
                error: ServiceError::QueueTypeMismatch {
                    queue: queue.to_owned(),
                    existing: match config.queue_type {
                        QueueType::Classic => QueueType::Quorum,
                        QueueType::Quorum => QueueType::Classic,
                    },
                    wanted: config.queue_type,
                },
                fatal: true,
            },
            _ => SetupError::from_lapin(what)(e),
        })?;
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

/// RabbitMQ's answer to a declaration whose `x-queue-type` differs from the
/// existing queue's: 406 PRECONDITION_FAILED, "inequivalent arg
/// 'x-queue-type' for queue …". There are two types here, so the existing
/// one is the other.
fn is_queue_type_mismatch(e: &lapin::Error) -> bool {
    let text = e.to_string();
    text.contains("PRECONDITION_FAILED") && text.contains("x-queue-type")
}

/// Unique per consumer, and naming the service in the broker's lists.
pub(super) fn consumer_tag(service: &str) -> String {
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

/// Longest an ack or a reject waits to be handed to the connection.
///
/// lapin resolves an ack once its frame is queued for the socket, which
/// takes microseconds; but an ack sent on a channel whose connection has
/// just died can stay unresolved for good (the stop stress test found
/// event handlers that finished right after a cut never returning from
/// their ack, and a stop waiting on them). A lost session cancels such
/// waits at once ([`Handoff::gone`]); this bounds the rest. The frame is
/// queued either way, so giving up the wait loses nothing.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for an ack, reject or confirm of this session, unless the
/// session's connection is lost first (`None`).
pub(super) async fn unless_gone<T>(
    handoff: &Handoff,
    settle: impl std::future::Future<Output = T>,
) -> Option<T> {
    handoff.gone.guard(settle).await
}

/// Acks a handled delivery: with the others done before it, in one
/// `multiple` ack when it can (see [`super::acks`]).
pub(super) async fn ack(handoff: &Handoff, delivery: &Delivery, call_id: &str) {
    let acked = tokio::time::timeout(
        SETTLE_TIMEOUT,
        unless_gone(handoff, handoff.acks.done(delivery.delivery_tag)),
    );
    match acked.await {
        Ok(Some(Ok(_))) => {}
        Ok(Some(Err(e))) => {
            tracing::error!(call_id, error = %e, "acking failed; the broker will redeliver it")
        }
        Ok(None) => tracing::warn!(
            call_id,
            "the connection was lost before the ack went out; the broker will redeliver it"
        ),
        Err(_) => tracing::error!(
            call_id,
            timeout = ?SETTLE_TIMEOUT,
            "the ack could not be sent in time; the broker will redeliver it if it was lost"
        ),
    }
}

/// Puts a delivery back in its queue (a reject with requeue).
pub(super) async fn requeue(handoff: &Handoff, delivery: &Delivery, call_id: &str) {
    let rejected = tokio::time::timeout(
        SETTLE_TIMEOUT,
        unless_gone(
            handoff,
            handoff
                .acks
                .reject(delivery.delivery_tag, &delivery.acker, true),
        ),
    );
    match rejected.await {
        Ok(Some(Ok(_))) => {}
        Ok(Some(Err(e))) => tracing::error!(
            call_id,
            error = %e,
            "requeueing failed; the broker redelivers it when the channel closes"
        ),
        Ok(None) => tracing::warn!(
            call_id,
            "the connection was lost before the requeue went out; the broker redelivers it"
        ),
        Err(_) => tracing::error!(
            call_id,
            timeout = ?SETTLE_TIMEOUT,
            "the requeue could not be sent in time; the broker redelivers it when the channel closes"
        ),
    }
}
