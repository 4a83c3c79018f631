//! nameko-compatible RPC microservices over RabbitMQ.
//!
//! Services written with this crate speak nameko 2.x's wire protocol, so a
//! Python `nameko shell` or `ClusterRpcProxy` can call them, and they can call
//! Python nameko services, during a move from one to the other.
//!
//! # A service, a typed client, a test without a broker
//! ```no_run
//! use rpc_core::testing::LocalService;
//! use rpc_core::{Args, Config, Context, RpcError, RpcProxy};
//!
//! pub struct Greeter;
//!
//! #[rpc_core::service(name = "greeter")]
//! impl Greeter {
//!     /// Python: hello(name, punctuation="!")
//!     #[rpc]
//!     async fn hello(&self, name: String, #[default("!")] punctuation: String) -> Result<String, RpcError> {
//!         Ok(format!("Hello, {name}{punctuation}"))
//!     }
//!
//!     /// The context is not an argument; `Option` parameters default to None.
//!     #[rpc]
//!     async fn whoami(&self, ctx: &Context, shout: Option<bool>) -> Result<Option<String>, RpcError> {
//!         Ok(ctx.get("user_id").map(|u| u.to_string()))
//!     }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // In a test: the wire's binding and errors, no broker.
//! let local = LocalService::new(Greeter.into_service());
//! assert_eq!(local.call("hello", Args::new().arg("Ada")).await?, "Hello, Ada!");
//!
//! // For real: run it, and call it through its typed client.
//! let config = Config::new("amqp://guest:guest@localhost:5672/%2f")?;
//! let mut running = Greeter.into_service().spawn(config.clone());
//! running.ready().await?;
//! let greeter = GreeterClient::new(RpcProxy::connect(config).await?);
//! assert_eq!(greeter.hello("Ada".into(), Some("?".into())).await?, "Hello, Ada?");
//! running.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Modules
//! * [`macro@service`] and [`macro@client`]: services as plain Rust types,
//!   and typed clients; they expand to [`ServiceBuilder`] calls.
//! * [`caller`]: the [`Caller`] typed clients call through.
//! * [`testing`]: [`LocalService`](testing::LocalService), a service's
//!   entrypoints in process, with stubs for its calls and records of its
//!   events.
//! * [`wire`]: the nameko message format and nothing else: names, bodies,
//!   headers, error objects. Pure functions, golden-tested against captures.
//! * [`connection`]: AMQP URIs (kombu's rules), connecting with backoff,
//!   and the bounds on every exchange with the broker.
//! * [`config`]: settings with nameko's defaults. [`config_file`]: nameko's
//!   YAML config files.
//! * [`server`]: running a [`Service`]: declare, consume, bound concurrency,
//!   reply → confirm → ack, a stop that always ends, reconnect.
//! * [`method`]: Python-style binding of `args`/`kwargs` to named
//!   parameters, then serde per parameter ([`Signature`], the one binder).
//! * [`proxy`]: the untyped client, [`RpcProxy`]: many calls in flight on
//!   one reply queue, timeouts, `call_async`, UnknownService detection.
//! * [`context`]: the call-id stack and context data of a call, and calls to
//!   other services that carry them.
//! * [`timer`]: timer entrypoints with nameko's schedule.
//! * [`events`]: nameko events: a dispatcher and handlers of the three
//!   handler types, with nameko's exchanges, queues and ack rules.
//! * [`error`]: errors at each boundary; remote errors keep nameko's
//!   `exc_type`, `exc_path`, `exc_args` and `value`.
//! * [`shutdown`]: stopping on SIGINT / SIGTERM.

#![warn(missing_docs)]

pub mod caller;
pub mod config;
pub mod config_file;
pub mod connection;
pub mod context;
pub mod error;
pub mod events;
mod link;
pub mod method;
pub mod proxy;
mod publish;
mod runtime;
pub mod server;
pub mod shutdown;
pub mod testing;
pub mod timer;
mod tripwire;
pub mod wire;
mod worker;

pub use caller::{CallArgs, Caller};
pub use config::{Config, QueueType, RetryPolicy};
pub use connection::{AmqpUri, BrokerList};
pub use context::{Context, ContextProxy, Propagated};
pub use error::{CallError, ConnectError, RemoteError, RpcError};
pub use events::{
    DispatchError, EncodedEvent, EventDispatcher, EventHandlerOptions, OutgoingEvent,
    ServicePublisher, Subscription,
};
pub use method::{ArgumentError, FromArgs, Signature};
pub use proxy::{Args, PendingCall, RpcProxy};
pub use rpc_core_macros::{client, service};
pub use server::{
    CallObserver, CallOutcome, Service, ServiceBuilder, ServiceError, ServiceHandle, ServiceStatus,
};
pub use timer::Timer;
pub use wire::EventHandlerType;

#[doc(hidden)]
pub mod __private;

/// Re-exported so services can build JSON values and maps without naming
/// serde_json's version.
pub use serde_json::{json, Map, Value};
/// Re-exported: services stop when this token is cancelled.
pub use tokio_util::sync::CancellationToken;
