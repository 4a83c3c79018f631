//! Events, nameko-style (§8): a dispatcher that publishes to
//! `{service}.events`, and handlers that subscribe with nameko's queue names,
//! flags and acknowledgement rules, so Python and Rust services can send
//! each other events.
//!
//! * [`EventDispatcher`] publishes with publisher confirms, routing key =
//!   event type, the data as the raw JSON body. From a handler,
//!   [`Context::dispatch`](crate::Context::dispatch) also sends the call's
//!   context headers; a standalone dispatcher sends empty headers, as
//!   nameko's does.
//! * Handlers are registered with
//!   [`ServiceBuilder::event_handler`](crate::ServiceBuilder::event_handler).
//!   An event is acked after its handler finishes, whether it succeeded or
//!   failed; with `requeue_on_error` a failure puts it back instead. Unlike
//!   nameko, which redelivers a failing event in a tight loop, the requeue
//!   waits for a back-off that doubles with each consecutive failure of the
//!   handler (1 s up to 30 s by default), so a handler that keeps failing
//!   costs a retry every 30 s, not a core. An event whose data cannot be
//!   decoded into the handler's type can never succeed: it is logged and
//!   dropped rather than requeued.

use crate::config::Config;
use crate::context::Context;
use crate::error::ConnectError;
use crate::link::Link;
use crate::method::ArgumentError;
use crate::publish::OrderedChannel;
use crate::wire::{self, EventHandlerType, WireError};
use futures::future::BoxFuture;
use futures::FutureExt;
use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::Confirmation;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The data cannot be serialised as JSON.
    #[error("event data is not serialisable: {0}")]
    Serialize(String),
    /// A name the wire cannot carry.
    #[error("invalid event: {0}")]
    Invalid(#[from] WireError),
    /// No connection within the configured `rpc_timeout`.
    #[error("not connected to the broker: {0}")]
    NotConnected(String),
    /// The broker did not take the event (nack, or the channel failed).
    #[error("the broker did not accept the event: {0}")]
    Publish(String),
    /// The dispatcher was closed.
    #[error("the dispatcher is closed")]
    Closed,
}

/// Publishes events; cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use rpc_core::{events::EventDispatcher, json, Config};
/// let events = EventDispatcher::connect(Config::default()).await?;
/// events.dispatch("person", "person_created", &json!({"id": 1})).await?;
/// events.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EventDispatcher {
    link: Arc<Link>,
}

impl std::fmt::Debug for EventDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventDispatcher").finish_non_exhaustive()
    }
}

impl EventDispatcher {
    /// A standalone dispatcher (nameko's `event_dispatcher(config)`).
    pub async fn connect(config: Config) -> Result<Self, ConnectError> {
        Self::start("event dispatcher", config, CancellationToken::new()).await
    }

    pub(crate) async fn start(
        name: &str,
        config: Config,
        stop: CancellationToken,
    ) -> Result<Self, ConnectError> {
        let link = Link::start(name, config, None, stop).await?;
        Ok(EventDispatcher {
            link: Arc::new(link),
        })
    }

    /// Publishes `data` as event `event_type` of `source_service`, with
    /// empty headers, and waits for the broker's confirm. The exchange
    /// `{source_service}.events` is declared first (nameko's standalone
    /// dispatcher does not, and fails with 404 when it does not exist yet).
    pub async fn dispatch<T: Serialize + ?Sized>(
        &self,
        source_service: &str,
        event_type: &str,
        data: &T,
    ) -> Result<(), DispatchError> {
        let data =
            serde_json::to_value(data).map_err(|e| DispatchError::Serialize(e.to_string()))?;
        self.dispatch_one(OutgoingEvent {
            source_service: source_service.to_owned(),
            event_type: event_type.to_owned(),
            data,
            call_id_stack: Vec::new(),
            context: BTreeMap::new(),
        })
        .await
    }

    /// Publishes one event and waits for its confirm.
    pub(crate) async fn dispatch_one(&self, event: OutgoingEvent) -> Result<(), DispatchError> {
        match self.dispatch_batch(std::slice::from_ref(&event)).await? {
            1 => {
                tracing::debug!(source = %event.source_service, event_type = %event.event_type, "event dispatched");
                Ok(())
            }
            _ => Err(DispatchError::Publish("the broker nacked the event".into())),
        }
    }

    /// Publishes events in order, all at once, then waits for their
    /// confirms: much faster than one [`dispatch`](Self::dispatch) after
    /// another, for relays that forward many events. Returns how many of the
    /// first events the broker confirmed; on a failure the rest are not
    /// known to be published (send them again).
    pub async fn dispatch_batch(&self, events: &[OutgoingEvent]) -> Result<usize, DispatchError> {
        let bodies = events
            .iter()
            .map(|e| wire::json::to_vec(&e.data))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DispatchError::Serialize(e.to_string()))?;
        let encoded: Vec<EncodedEvent<'_>> = events
            .iter()
            .zip(&bodies)
            .map(|(e, body)| EncodedEvent {
                source_service: &e.source_service,
                event_type: &e.event_type,
                body,
                call_id_stack: &e.call_id_stack,
                context: &e.context,
            })
            .collect();
        self.dispatch_encoded(&encoded).await
    }

    /// [`dispatch_batch`](Self::dispatch_batch) for events whose bodies are
    /// already encoded: a relay that keeps events as the bytes it will send
    /// publishes them without building and serialising a JSON tree again.
    pub async fn dispatch_encoded(
        &self,
        events: &[EncodedEvent<'_>],
    ) -> Result<usize, DispatchError> {
        if events.is_empty() {
            return Ok(0);
        }
        let config = &self.link.config;
        let deadline = crate::proxy::deadline_after(config.rpc_timeout);
        let session = match tokio::time::timeout_at(deadline, self.link.session()).await {
            Ok(Ok(session)) => session,
            Ok(Err(())) => return Err(DispatchError::Closed),
            Err(_) => {
                return Err(DispatchError::NotConnected(
                    self.link
                        .down_reason()
                        .unwrap_or_else(|| "timed out".into()),
                ))
            }
        };
        let work = async {
            // A relay's batch is one service's events: its exchange name
            // is built (and declared) once, not per event.
            let mut exchanges: Vec<(&str, ShortString)> = Vec::new();
            for event in events {
                if !exchanges.iter().any(|(s, _)| *s == event.source_service) {
                    let name = wire::short_string(&wire::events_exchange(event.source_service))?;
                    session
                        .ensure_topic_exchange(&name)
                        .await
                        .map_err(publish_failed)?;
                    exchanges.push((event.source_service, name));
                }
            }
            publish_encoded(&session.channel, events, &exchanges, config.delivery_mode()).await
        };
        confirmed_by(deadline, work).await
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.link.close().await;
    }
}

fn publish_failed(e: lapin::Error) -> DispatchError {
    DispatchError::Publish(e.to_string())
}

/// Runs a batch's publishes (and whatever they wait on) until `deadline`:
/// a confirm normally takes a millisecond, on a dying connection it may
/// never come.
async fn confirmed_by(
    deadline: tokio::time::Instant,
    work: impl Future<Output = Result<usize, DispatchError>>,
) -> Result<usize, DispatchError> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or_else(|_| {
            Err(DispatchError::Publish(
                "no confirm within the timeout".into(),
            ))
        })
}

/// Publishes `events` on `channel` (with confirms), each to its source's
/// exchange in `exchanges`, and waits for the confirms; returns how many of
/// the first were confirmed.
async fn publish_encoded(
    channel: &OrderedChannel,
    events: &[EncodedEvent<'_>],
    exchanges: &[(&str, ShortString)],
    delivery_mode: u8,
) -> Result<usize, DispatchError> {
    let mut messages = Vec::with_capacity(events.len());
    for event in events {
        let exchange = exchanges
            .iter()
            .find(|(s, _)| *s == event.source_service)
            .map(|(_, name)| name.clone())
            .ok_or_else(|| {
                DispatchError::Publish(format!(
                    "no exchange for events of {}",
                    event.source_service
                ))
            })?;
        let routing_key = wire::short_string(event.event_type)?;
        let headers = if event.call_id_stack.is_empty() && event.context.is_empty() {
            FieldTable::default()
        } else {
            wire::write_context(event.call_id_stack, event.context)
        };
        messages.push((exchange, routing_key, event.body, headers));
    }
    let publishes = messages
        .into_iter()
        .map(|(exchange, routing_key, body, headers)| {
            channel.basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions::default(),
                body,
                wire::event_properties(headers, delivery_mode),
            )
        });
    let mut done = 0;
    for sent in publish_in_order(publishes).await {
        match sent
            .map_err(publish_failed)?
            .await
            .map_err(publish_failed)?
        {
            Confirmation::Nack(_) => break,
            _ => done += 1,
        }
    }
    Ok(done)
}

/// Publishes a running service's own events on the service's connection;
/// from [`ServiceHandle::publisher`](crate::ServiceHandle::publisher),
/// cheap to clone.
///
/// It publishes only while the service has a session (not while it
/// reconnects, and not after it stopped: [`DispatchError::NotConnected`]),
/// and only events of the service itself (`{service}.events`, declared by
/// every session when the service was built with
/// [`publishes_events`](crate::ServiceBuilder::publishes_events)). A
/// publisher that must also work when the service is down keeps an
/// [`EventDispatcher`] to fall back on.
#[derive(Clone)]
pub struct ServicePublisher {
    service: Arc<str>,
    exchange: Option<ShortString>,
    delivery_mode: u8,
    rpc_timeout: Duration,
    channel: tokio::sync::watch::Receiver<Option<OrderedChannel>>,
}

impl std::fmt::Debug for ServicePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServicePublisher")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl ServicePublisher {
    /// `declared`: whether the service's sessions declare its events
    /// exchange ([`publishes_events`](crate::ServiceBuilder::publishes_events)).
    /// Without that the publisher refuses every event: a publish to a
    /// missing exchange would close the channel the replies use.
    pub(crate) fn new(
        service: &str,
        declared: bool,
        config: &Config,
        channel: tokio::sync::watch::Receiver<Option<OrderedChannel>>,
    ) -> Self {
        ServicePublisher {
            service: service.into(),
            // A valid name whenever the service starts: its start-up check
            // refuses a name too long for its consumer tag
            // (`{service}-{uuid}`), which is longer than `{service}.events`.
            exchange: declared
                .then(|| wire::short_string(&wire::events_exchange(service)).ok())
                .flatten(),
            delivery_mode: config.delivery_mode(),
            rpc_timeout: config.rpc_timeout,
            channel,
        }
    }

    /// Whether the service has a session to publish on now.
    pub fn is_connected(&self) -> bool {
        self.channel.borrow().is_some()
    }

    /// As [`EventDispatcher::dispatch_encoded`], on the service's
    /// connection. Every event's `source_service` must be the service's
    /// name.
    pub async fn dispatch_encoded(
        &self,
        events: &[EncodedEvent<'_>],
    ) -> Result<usize, DispatchError> {
        if events.is_empty() {
            return Ok(0);
        }
        if let Some(other) = events.iter().find(|e| e.source_service != &*self.service) {
            return Err(DispatchError::Publish(format!(
                "a service publishes only its own events: {} is not {}",
                other.source_service, self.service
            )));
        }
        let Some(exchange) = &self.exchange else {
            return Err(DispatchError::Publish(
                "the service was built without publishes_events(): its events exchange is not declared".into(),
            ));
        };
        let Some(channel) = self.channel.borrow().clone() else {
            return Err(DispatchError::NotConnected(
                "the service has no session (reconnecting or stopped)".into(),
            ));
        };
        let exchanges = [(&*self.service, exchange.clone())];
        let deadline = crate::proxy::deadline_after(self.rpc_timeout);
        confirmed_by(
            deadline,
            publish_encoded(&channel, events, &exchanges, self.delivery_mode),
        )
        .await
    }
}

/// Runs publishes together, their frames queued in the order given.
///
/// lapin's `basic_publish` resolves only once the connection's I/O thread
/// has written the message, so publishing a batch one `await` after another
/// costs two thread hand-offs and a socket write per event: the profile
/// showed that as most of what an event cost (40 µs of the service's CPU
/// per create). Each publish registers its delivery tag and queues its
/// frames on its first poll, with no `await` before that; polling every
/// future once, in order, before waiting on any, queues the whole batch in
/// order, and the I/O thread writes it in one go.
async fn publish_in_order<F: Future>(publishes: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<Pin<Box<F>>> = publishes.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_ready = true;
        for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => all_ready = false,
                }
            }
        }
        if all_ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    // Sized up front: collected through `flatten` the vector grew (and
    // was copied) step by step, 0.8 k instructions per event.
    let mut ready = Vec::with_capacity(outputs.len());
    ready.extend(outputs.into_iter().flatten());
    ready
}

/// An event for [`EventDispatcher::dispatch_encoded`]: borrowed, its body
/// already encoded.
#[derive(Clone, Copy, Debug)]
pub struct EncodedEvent<'a> {
    /// The service the event is from (`{source_service}.events`).
    pub source_service: &'a str,
    /// The event type (the routing key).
    pub event_type: &'a str,
    /// The body, as [`wire::json::to_vec`] writes it (JSON as kombu writes
    /// it); sent as it is.
    pub body: &'a [u8],
    /// Call-id stack of the call that caused it.
    pub call_id_stack: &'a [String],
    /// Context data sent as `nameko.<key>` headers.
    pub context: &'a BTreeMap<String, Value>,
}

/// An event for [`EventDispatcher::dispatch_batch`], with the context it
/// carries (empty stack and context: no headers, like a standalone
/// dispatch).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutgoingEvent {
    /// The service the event is from (`{source_service}.events`).
    pub source_service: String,
    /// The event type (the routing key).
    pub event_type: String,
    /// The body.
    pub data: Value,
    /// Call-id stack of the call that caused it.
    pub call_id_stack: Vec<String>,
    /// Context data sent as `nameko.<key>` headers.
    pub context: BTreeMap<String, Value>,
}

/// Which events a handler receives: events of one type dispatched by one
/// service. Written `Subscription::to("person_created").from("person")`, so
/// the two names cannot be swapped unnoticed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub(crate) source_service: String,
    pub(crate) event_type: String,
}

/// The first half of a [`Subscription`]: the event type, waiting for the
/// service it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "finish the subscription with .from(source_service)"]
pub struct EventType(String);

impl Subscription {
    /// Events of type `event_type` (nameko's `event_type`, the routing key).
    pub fn to(event_type: &str) -> EventType {
        EventType(event_type.to_owned())
    }

    /// The service the events come from (`{source_service}.events`).
    pub fn source_service(&self) -> &str {
        &self.source_service
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
}

impl EventType {
    /// ... dispatched by `source_service` (nameko's `source_service`).
    pub fn from(self, source_service: &str) -> Subscription {
        Subscription {
            source_service: source_service.to_owned(),
            event_type: self.0,
        }
    }
}

/// How a handler subscribes: nameko's `handler_type`, `reliable_delivery`,
/// `requeue_on_error` and `broadcast_identifier`, plus the back-off between
/// requeues.
#[derive(Clone, Debug)]
pub struct EventHandlerOptions {
    pub(crate) handler_type: EventHandlerType,
    pub(crate) reliable_delivery: bool,
    pub(crate) requeue_on_error: bool,
    pub(crate) broadcast_identifier: Option<String>,
    pub(crate) retry_delay: Duration,
    pub(crate) max_retry_delay: Duration,
}

impl Default for EventHandlerOptions {
    fn default() -> Self {
        EventHandlerOptions {
            handler_type: EventHandlerType::ServicePool,
            reliable_delivery: true,
            requeue_on_error: false,
            broadcast_identifier: None,
            retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(30),
        }
    }
}

impl EventHandlerOptions {
    /// One queue per service and handler (the default).
    pub fn service_pool() -> Self {
        Self::default()
    }

    /// One queue per event type for the whole cluster.
    pub fn singleton() -> Self {
        EventHandlerOptions {
            handler_type: EventHandlerType::Singleton,
            ..Self::default()
        }
    }

    /// One queue per instance. nameko requires either
    /// `reliable_delivery(false)` (an exclusive, auto-delete queue that
    /// loses events while the instance is away) or a stable
    /// [`broadcast_identifier`](Self::broadcast_identifier).
    pub fn broadcast() -> Self {
        EventHandlerOptions {
            handler_type: EventHandlerType::Broadcast,
            ..Self::default()
        }
    }

    /// Keep the queue while no consumer is connected (default true); false
    /// makes it auto-delete.
    #[must_use]
    pub fn reliable_delivery(mut self, on: bool) -> Self {
        self.reliable_delivery = on;
        self
    }

    /// Put an event back when its handler fails (default false: log and
    /// drop).
    #[must_use]
    pub fn requeue_on_error(mut self, on: bool) -> Self {
        self.requeue_on_error = on;
        self
    }

    /// The identifier a broadcast queue's name ends with (default: a fresh
    /// uuid per start).
    #[must_use]
    pub fn broadcast_identifier(mut self, id: &str) -> Self {
        self.broadcast_identifier = Some(id.to_owned());
        self
    }

    /// First and longest wait before a failed event is requeued.
    #[must_use]
    pub fn retry_delay(mut self, first: Duration, max: Duration) -> Self {
        self.retry_delay = first;
        self.max_retry_delay = max.max(first);
        self
    }

    /// The handler type.
    pub fn handler_type(&self) -> EventHandlerType {
        self.handler_type
    }
}

pub(crate) type ErasedEventHandler =
    Arc<dyn Fn(Context, Value) -> BoxFuture<'static, Result<(), EventFailure>> + Send + Sync>;

pub(crate) enum EventFailure {
    /// The data does not fit the handler's type: it never will.
    Undecodable(ArgumentError),
    /// The handler failed.
    Failed(String),
}

/// A registered event handler.
#[derive(Clone)]
pub(crate) struct EventHandlerEntry {
    pub(crate) name: String,
    pub(crate) source_service: String,
    pub(crate) event_type: String,
    pub(crate) options: EventHandlerOptions,
    pub(crate) handler: ErasedEventHandler,
    /// Consecutive failures, for the requeue back-off.
    pub(crate) failures: Arc<AtomicU32>,
}

impl EventHandlerEntry {
    pub(crate) fn new<T, F, Fut, E>(
        name: &str,
        subscription: Subscription,
        options: EventHandlerOptions,
        handler: F,
    ) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Context, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let handler = Arc::new(handler);
        let method: Arc<str> = Arc::from(name);
        let erased: ErasedEventHandler = Arc::new(move |ctx, data| {
            let handler = Arc::clone(&handler);
            let method = Arc::clone(&method);
            async move {
                let data: T = serde_json::from_value(data).map_err(|e| {
                    EventFailure::Undecodable(ArgumentError {
                        method: method.to_string(),
                        param: "event data".into(),
                        message: e.to_string(),
                    })
                })?;
                handler(ctx, data)
                    .await
                    .map_err(|e| EventFailure::Failed(e.to_string()))
            }
            .boxed()
        });
        EventHandlerEntry {
            name: name.to_owned(),
            source_service: subscription.source_service,
            event_type: subscription.event_type,
            options,
            handler: erased,
            failures: Arc::new(AtomicU32::new(0)),
        }
    }

    /// nameko refuses a reliable broadcast handler with the default
    /// (per-start) identifier: its queue would outlive the instance and fill
    /// up forever.
    pub(crate) fn check(&self) -> Result<(), String> {
        let o = &self.options;
        if o.handler_type == EventHandlerType::Broadcast
            && o.reliable_delivery
            && o.broadcast_identifier.is_none()
        {
            return Err(format!(
                "event handler {}: a broadcast handler needs reliable_delivery(false) or a broadcast_identifier",
                self.name
            ));
        }
        Ok(())
    }

    /// Wait before requeueing after the `n`-th consecutive failure.
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let o = &self.options;
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(16));
        o.retry_delay.saturating_mul(factor).min(o.max_retry_delay)
    }

    pub(crate) fn record(&self, ok: bool) -> u32 {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            0
        } else {
            self.failures
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        }
    }
}

/// The queue declaration of a handler: name, and the flags nameko uses.
pub(crate) struct QueueSpec {
    pub(crate) name: String,
    pub(crate) durable: bool,
    pub(crate) exclusive: bool,
    pub(crate) auto_delete: bool,
    /// Whether `--queue-type quorum` applies: the durable, shared queues of
    /// service_pool and singleton handlers. Broadcast queues are one
    /// instance's and exclusive or auto-delete ones cannot be quorum.
    pub(crate) may_be_quorum: bool,
}

impl EventHandlerEntry {
    /// `broadcast_identifier` is the instance's, used unless the options
    /// fix one.
    pub(crate) fn queue(&self, service: &str, broadcast_identifier: &str) -> QueueSpec {
        let o = &self.options;
        let name = wire::event_queue(
            &self.source_service,
            &self.event_type,
            service,
            &self.name,
            o.handler_type,
            o.broadcast_identifier
                .as_deref()
                .unwrap_or(broadcast_identifier),
        );
        QueueSpec {
            name,
            durable: true,
            // Only an unreliable broadcast queue is the instance's alone.
            exclusive: o.handler_type == EventHandlerType::Broadcast && !o.reliable_delivery,
            auto_delete: !o.reliable_delivery,
            may_be_quorum: o.handler_type != EventHandlerType::Broadcast && o.reliable_delivery,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(options: EventHandlerOptions) -> EventHandlerEntry {
        EventHandlerEntry::new(
            "on_ping",
            Subscription::to("ping").from("src"),
            options,
            |_c: Context, _d: Value| async { Ok::<(), String>(()) },
        )
    }

    #[test]
    fn queue_flags_follow_nameko() {
        let q = entry(EventHandlerOptions::service_pool()).queue("svc", "id");
        assert_eq!(
            (q.name.as_str(), q.durable, q.exclusive, q.auto_delete),
            ("evt-src-ping--svc.on_ping", true, false, false)
        );
        let q =
            entry(EventHandlerOptions::service_pool().reliable_delivery(false)).queue("svc", "id");
        assert!(q.auto_delete && !q.exclusive);
        assert!(!q.may_be_quorum);
        let q = entry(EventHandlerOptions::singleton()).queue("svc", "id");
        assert_eq!(q.name, "evt-src-ping");
        assert!(q.may_be_quorum);
        assert!(
            entry(EventHandlerOptions::service_pool())
                .queue("svc", "id")
                .may_be_quorum
        );
        assert!(
            !entry(EventHandlerOptions::broadcast())
                .queue("svc", "id")
                .may_be_quorum
        );
        let q =
            entry(EventHandlerOptions::broadcast().reliable_delivery(false)).queue("svc", "abc");
        assert_eq!(
            (q.name.as_str(), q.exclusive, q.auto_delete),
            ("evt-src-ping--svc.on_ping-abc", true, true)
        );
        let q = entry(EventHandlerOptions::broadcast().broadcast_identifier("fixed"))
            .queue("svc", "abc");
        assert_eq!(
            (q.name.as_str(), q.exclusive, q.auto_delete),
            ("evt-src-ping--svc.on_ping-fixed", false, false)
        );
    }

    #[test]
    fn reliable_broadcast_needs_an_identifier() {
        assert!(entry(EventHandlerOptions::broadcast()).check().is_err());
        assert!(
            entry(EventHandlerOptions::broadcast().reliable_delivery(false))
                .check()
                .is_ok()
        );
        assert!(
            entry(EventHandlerOptions::broadcast().broadcast_identifier("x"))
                .check()
                .is_ok()
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let e = entry(
            EventHandlerOptions::default()
                .retry_delay(Duration::from_millis(100), Duration::from_secs(1)),
        );
        let waits: Vec<u128> = (1..=6).map(|n| e.backoff(n).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(e.backoff(u32::MAX), Duration::from_secs(1));
    }
}
