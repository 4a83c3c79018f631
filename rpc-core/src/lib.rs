//! nameko-compatible RPC microservices over RabbitMQ.
//!
//! Services written with this crate speak nameko 2.x's wire protocol, so a
//! Python `nameko shell` or `ClusterRpcProxy` can call them, and they can call
//! Python nameko services, during a move from one to the other.
//!
//! # Modules
//! * [`wire`]: the nameko message format and nothing else: names, bodies,
//!   headers, error objects. Pure functions, golden-tested against captures.
//! * [`connection`]: AMQP URIs (kombu's rules) and connecting with backoff.
//! * [`config`]: settings with nameko's defaults.
//! * [`server`]: running a [`Service`]: declare, consume, bound concurrency,
//!   reply → confirm → ack, graceful stop, reconnect.
//! * [`method`]: typed methods: Python-style binding of `args`/`kwargs` to
//!   named parameters, then serde per parameter.
//! * [`proxy`]: the client, [`RpcProxy`]: many calls in flight on one reply
//!   queue, timeouts, `call_async`, UnknownService detection.
//! * [`context`]: the call-id stack and context data of a call, and calls to
//!   other services that carry them.
//! * [`timer`]: timer entrypoints with nameko's schedule.
//! * [`events`]: nameko events: a dispatcher and handlers of the three
//!   handler types, with nameko's exchanges, queues and ack rules.
//! * [`error`]: errors at each boundary; remote errors keep nameko's
//!   `exc_type`, `exc_path`, `exc_args` and `value`.
//! * [`shutdown`]: stopping on SIGINT / SIGTERM.
//!
//! # A service and a call
//! ```no_run
//! use rpc_core::{Args, Config, Context, RpcError, RpcProxy, Service, Signature};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::new("amqp://guest:guest@localhost:5672/%2f")?;
//! let mut running = Service::builder("greeter")
//!     .method(
//!         "hello",
//!         Signature::new().param("name").optional("punctuation", "!"),
//!         |_ctx: Context, (name, punctuation): (String, String)| async move {
//!             Ok::<_, RpcError>(format!("Hello, {name}{punctuation}"))
//!         },
//!     )
//!     .build()
//!     .spawn(config.clone());
//! running.ready().await?;
//!
//! let proxy = RpcProxy::connect(config).await?;
//! let text = proxy.call("greeter", "hello", Args::new().arg("Ada")).await?;
//! assert_eq!(text, "Hello, Ada!");
//! proxy.close().await;
//! running.shutdown().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod config_file;
pub mod connection;
pub mod context;
pub mod error;
pub mod events;
mod link;
pub mod method;
pub mod proxy;
mod runtime;
pub mod server;
pub mod shutdown;
pub mod testing;
pub mod timer;
pub mod wire;

pub use client::{CallArgs, Caller};
pub use config::{Config, RetryPolicy};
pub use connection::AmqpUri;
pub use context::{Context, ContextProxy};
pub use error::{CallError, ConnectError, RemoteError, RpcError};
pub use events::{
    DispatchError, EventDispatcher, EventHandlerOptions, OutgoingEvent, Subscription,
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
