//! Running a service: its RPC methods, event handlers and timers.
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
//! # Stopping
//! Cancelling the stop token starts a stop with a deadline,
//! `shutdown_timeout` later. Until then the service cancels its consumers,
//! hands the deliveries already received to workers, and waits for running
//! calls, events and timer ticks to reply and ack. Only then does it close
//! its channels and connection, so no request runs twice because of a stop.
//! Work still running at the deadline is dropped (and logged with its call
//! id), and the connection is closed anyway: the broker returns the
//! unacknowledged requests to the queue. Closing is bounded too
//! ([`CLOSE_TIMEOUT`](crate::connection::CLOSE_TIMEOUT)), so a stop always
//! ends, even when the broker no longer answers.
//!
//! When the connection is lost the service reconnects with backoff and
//! resumes; calls that were running on the dead channel could not be acked,
//! so the broker redelivers them.
//!
//! # Files
//! * `builder`: defining a service ([`ServiceBuilder`]).
//! * `handle`: a running service's handle and status.
//! * `session`: the AMQP session: declare, consume, reconnect, wind down.
//! * `rpc_call`, `event_call`: handling one request, one event, on AMQP.
//! * `invoke`: one request's work without the transport (shared with
//!   [`crate::testing`]).
//! * `observer`: hooks on every call.

mod acks;
mod builder;
mod event_call;
mod handle;
mod invoke;
mod observer;
mod rpc_call;
mod session;

pub use builder::ServiceBuilder;
pub use handle::{ServiceHandle, ServiceStatus};
pub use observer::{CallObserver, CallOutcome, UNKNOWN_METHOD};

use crate::config::Config;
use crate::connection;
use crate::error::ConnectError;
use crate::runtime::ServiceRuntime;
use crate::timer;
use crate::wire;
use builder::ServiceDef;
use session::{Consumption, Stopped};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a service stopped with an error (as opposed to [`crate::RpcError`],
/// which one call raises to its caller).
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
    /// A queue the service shares with its other instances already exists
    /// with another type (RabbitMQ's 406 `inequivalent arg 'x-queue-type'`).
    /// A queue's type cannot change; the message says how to migrate.
    #[error(
        "queue {queue:?} already exists as a {existing} queue, but this service declares it {wanted} \
         (QUEUE_TYPE / --queue-type); RabbitMQ cannot change a queue's type. To migrate: let the \
         queue drain, stop every instance of the service, delete the queue \
         (rabbitmqctl delete_queue {queue}), then start the services with --queue-type {wanted}; \
         or run under a new service name"
    )]
    QueueTypeMismatch {
        /// The queue.
        queue: String,
        /// The type it has on the broker.
        existing: crate::config::QueueType,
        /// The type this service is configured for.
        wanted: crate::config::QueueType,
    },
}

/// How long the work dropped at a stop's deadline gets to unwind (its
/// futures are dropped at their next poll; this covers a handler that
/// blocks its thread for a moment).
const ABANDON_GRACE: Duration = Duration::from_secs(1);

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

impl Service {
    /// Starts defining a service called `name` (its queue is `rpc-{name}`).
    pub fn builder(name: &str) -> ServiceBuilder {
        ServiceBuilder::new(name)
    }

    fn from_def(def: ServiceDef) -> Self {
        Service {
            def: Arc::new(def),
            broadcast_id: uuid::Uuid::new_v4().simple().to_string(),
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

    pub(crate) fn timers(&self) -> impl Iterator<Item = &crate::timer::TimerEntry> {
        self.def.timers.iter()
    }

    pub(crate) fn event_handlers(&self) -> impl Iterator<Item = &crate::events::EventHandlerEntry> {
        self.def.event_handlers.iter()
    }

    /// Runs until `stop` is cancelled, then stops gracefully (see the
    /// module docs for how long that may take).
    pub async fn run(self, config: Config, stop: CancellationToken) -> Result<(), ServiceError> {
        let (status, _rx) = watch::channel(ServiceStatus::Starting);
        let (publish, _) = watch::channel(None);
        self.run_reporting(config, stop, status, publish).await
    }

    /// Runs the service on a new task.
    pub fn spawn(self, config: Config) -> ServiceHandle {
        let stop = CancellationToken::new();
        let (status_tx, status_rx) = watch::channel(ServiceStatus::Starting);
        let (publish_tx, publish_rx) = watch::channel(None);
        let publisher = crate::events::ServicePublisher::new(
            &self.def.name,
            self.def.publishes_events,
            &config,
            publish_rx,
        );
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let result = self
                .run_reporting(config, token, status_tx.clone(), publish_tx)
                .await;
            status_tx.send_replace(ServiceStatus::Stopped(result.as_ref().err().cloned()));
            result
        });
        ServiceHandle {
            stop,
            status: status_rx,
            task,
            publisher,
        }
    }

    /// Refuses, before connecting, what cannot work: names lapin would
    /// panic on (over 255 bytes), and inconsistent entrypoints.
    fn check(&self, config: &Config) -> Result<(), ServiceError> {
        let name = &self.def.name;
        for candidate in [
            wire::rpc_queue(name),
            wire::rpc_binding_key(name),
            session::consumer_tag(name),
        ] {
            if let Err(e) = wire::short_string(&candidate) {
                return Err(ServiceError::InvalidName(name.clone(), e.to_string()));
            }
        }
        wire::short_string(&config.rpc_exchange)
            .map_err(|e| ServiceError::Configuration(format!("rpc_exchange: {e}")))?;
        for handler in &self.def.event_handlers {
            handler.check().map_err(ServiceError::Configuration)?;
        }
        Ok(())
    }

    async fn run_reporting(
        self,
        config: Config,
        stop: CancellationToken,
        status: watch::Sender<ServiceStatus>,
        publish: watch::Sender<Option<crate::publish::OrderedChannel>>,
    ) -> Result<(), ServiceError> {
        self.check(&config)?;
        let name = self.def.name.clone();
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
        let (result, stopped) = if self.def.methods.is_empty() && self.def.event_handlers.is_empty()
        {
            status.send_replace(ServiceStatus::Consuming);
            stop.cancelled().await;
            (Ok(()), Stopped::before_consuming(&config))
        } else {
            let consumption = Consumption {
                def: &self.def,
                broadcast_id: &self.broadcast_id,
                config: &config,
                runtime: &runtime,
                tracker: &tracker,
                stop: &stop,
                status: &status,
                publish: &publish,
                workers: Arc::new(Semaphore::new(config.workers())),
            };
            match consumption.run().await {
                Ok(stopped) => (Ok(()), stopped),
                Err(e) => (Err(e), Stopped::before_consuming(&config)),
            }
        };
        // Keep the connection open until every call in flight has published
        // its reply and acked its request (nameko's stop skips those acks:
        // §12). One wait covers those calls, the events and the timers alike.
        tracker.close();
        if tokio::time::timeout_at(stopped.deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::error!(
                service = %name,
                running = tracker.len(),
                timeout = ?config.shutdown_timeout,
                "work still running at the shutdown timeout is abandoned; its requests and events return to the queue"
            );
            runtime.abandon();
            if tokio::time::timeout(ABANDON_GRACE, tracker.wait())
                .await
                .is_err()
            {
                tracing::error!(service = %name, running = tracker.len(), "abandoned work did not unwind; closing the connection under it");
            }
        }
        // The consuming channel closes first: its close follows the last
        // acks on the same channel, so the broker has them all before the
        // connection goes (a connection close can overtake them). Whatever
        // is still unacknowledged then returns to its queue.
        let close_broker = async {
            publish.send_replace(None);
            if let Some(open) = stopped.open {
                connection::close_channels(&[&open.consume, &open.publish], "stopped").await;
                connection::close_connection(&open.conn, "stopped").await;
            }
        };
        // The runtime's own connections (calls and events from handlers)
        // close last, once no handler can use them.
        tokio::join!(close_broker, runtime.close());
        tracing::info!(service = %name, "stopped");
        result
    }
}

/// One request's work for [`crate::testing::LocalService`]: a JSON body,
/// as it would arrive from the broker.
pub(crate) async fn invoke_local(
    service: &Service,
    ctx: &crate::context::Context,
    method: &str,
    body: &[u8],
    max_request_bytes: usize,
) -> Result<Vec<u8>, (crate::error::RpcError, bool)> {
    invoke::invoke(
        &service.def,
        ctx,
        invoke::Target::find(&service.def, method),
        Some("application/json"),
        Some("utf-8"),
        body,
        max_request_bytes,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Context;
    use crate::error::RpcError;
    use crate::method::Signature;

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
