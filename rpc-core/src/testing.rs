//! Testing a service without a broker: nameko's `worker_factory`,
//! `entrypoint_hook` and `replace_dependencies`, in process.
//!
//! [`LocalService`] runs a [`Service`]'s entrypoints directly:
//! * [`call`](LocalService::call) goes through the same decoding, binding,
//!   validation and error objects as a request from the broker (the
//!   request and the reply are even encoded and decoded as on the wire),
//!   so a test sees exactly what a remote caller would;
//! * calls a handler makes through `ctx.rpc()` (and typed clients over it)
//!   are answered by stubs the test registers ([`stub`](LocalService::stub));
//!   a call nothing stubs fails as a call to a service with no queue does,
//!   with [`CallError::UnknownService`];
//! * events a handler dispatches are recorded
//!   ([`dispatched`](LocalService::dispatched));
//! * timers and event handlers run on demand
//!   ([`tick`](LocalService::tick), [`handle_event`](LocalService::handle_event));
//! * the context data and call-id stack a call arrives with are the test's
//!   to set ([`with_context_data`](LocalService::with_context_data)).
//!
//! Shared state (a database handle, a client) lives in the service's value,
//! so replacing a dependency is building the value with a test double.
//!
//! A `LocalService` is also a [`Caller`](crate::Caller) of its own
//! methods, so a typed client can be tested against it:
//! `GreeterClient::new(&local)`.
//!
//! ```
//! use rpc_core::testing::LocalService;
//! use rpc_core::{Args, Context, RpcError, Service, Signature};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let service = Service::builder("greeter")
//!     .method("hello", Signature::new().param("name").optional("punctuation", "!"),
//!         |_ctx: Context, (name, p): (String, String)| async move {
//!             Ok::<_, RpcError>(format!("Hello, {name}{p}"))
//!         })
//!     .build();
//! let local = LocalService::new(service);
//! assert_eq!(local.call("hello", Args::new().arg("Ada")).await.unwrap(), "Hello, Ada!");
//! let err = local.call("hello", Args::new()).await.unwrap_err();
//! assert_eq!(err.exc_type, "IncorrectSignature");
//! # }
//! ```

use crate::config::Config;
use crate::context::{Context, MessageFacts};
use crate::error::{CallError, RemoteError, RpcError};
use crate::events::{EventFailure, OutgoingEvent};
use crate::proxy::Args;
use crate::runtime::{LocalOutbound, Outbound, ServiceRuntime};
use crate::server::Service;
use crate::wire;
use futures::FutureExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio_util::sync::CancellationToken;

pub use crate::runtime::OutgoingCall;

/// A stub's answer to a call: the result, or the error the remote method
/// raised.
pub type StubAnswer = Result<Value, RemoteError>;

type Stub = Arc<dyn Fn(&Args) -> StubAnswer + Send + Sync>;

/// What the service's handlers sent out, and the stubs that answer them.
#[derive(Default)]
struct World {
    stubs: Mutex<HashMap<(String, String), Stub>>,
    calls: Mutex<Vec<OutgoingCall>>,
    events: Mutex<Vec<OutgoingEvent>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LocalOutbound for World {
    fn call(&self, call: OutgoingCall) -> Result<Value, CallError> {
        let key = (call.service.clone(), call.method.clone());
        let stub = lock(&self.stubs).get(&key).cloned();
        let knows_service = || lock(&self.stubs).keys().any(|(s, _)| *s == call.service);
        let answer = match stub {
            Some(stub) => stub(&call.args).map_err(CallError::Remote),
            // A service that exists answers an unknown method as nameko
            // does; a service nobody stubbed has no queue.
            None if knows_service() => Err(CallError::Remote(
                RpcError::method_not_found(&call.method)
                    .to_error_object()
                    .into(),
            )),
            None => Err(CallError::UnknownService(call.service.clone())),
        };
        lock(&self.calls).push(call);
        answer
    }

    fn dispatch(&self, event: OutgoingEvent) {
        lock(&self.events).push(event);
    }
}

/// A service's entrypoints run in process; see the module docs.
pub struct LocalService {
    service: Service,
    runtime: Arc<ServiceRuntime>,
    world: Arc<World>,
    call_id_stack: Vec<String>,
    data: BTreeMap<String, Value>,
}

impl LocalService {
    /// Runs `service` in process, with the default [`Config`] (whose
    /// `max_request_bytes` and `parent_calls_tracked` apply as they would
    /// when it runs on a broker).
    pub fn new(service: Service) -> Self {
        Self::with_config(service, Config::default())
    }

    /// Like [`new`](Self::new), with the settings a handler reads through
    /// [`Context::config`].
    pub fn with_config(service: Service, config: Config) -> Self {
        let world = Arc::new(World::default());
        let runtime = Arc::new(ServiceRuntime::with_outbound(
            service.name().to_owned(),
            config,
            CancellationToken::new(),
            Outbound::Local(world.clone()),
        ));
        LocalService {
            service,
            runtime,
            world,
            call_id_stack: Vec::new(),
            data: BTreeMap::new(),
        }
    }

    /// Calls arrive with this context data (as `nameko.*` headers would
    /// bring it: `user_id`, `language`, …).
    #[must_use]
    pub fn with_context_data(mut self, data: BTreeMap<String, Value>) -> Self {
        self.data = data;
        self
    }

    /// Calls arrive from these callers (the caller's call-id stack).
    #[must_use]
    pub fn with_call_id_stack(mut self, stack: Vec<String>) -> Self {
        self.call_id_stack = stack;
        self
    }

    /// Answers the handlers' calls to `service.method` with `answer`.
    pub fn stub(
        &self,
        service: &str,
        method: &str,
        answer: impl Fn(&Args) -> StubAnswer + Send + Sync + 'static,
    ) -> &Self {
        lock(&self.world.stubs).insert((service.to_owned(), method.to_owned()), Arc::new(answer));
        self
    }

    /// The calls the handlers made so far, in order.
    pub fn calls_made(&self) -> Vec<OutgoingCall> {
        lock(&self.world.calls).clone()
    }

    /// The events the handlers dispatched so far, in order.
    pub fn dispatched(&self) -> Vec<OutgoingEvent> {
        lock(&self.world.events).clone()
    }

    fn context(&self, entrypoint: &str, correlation_id: Option<String>) -> Context {
        Context::new(
            Arc::clone(&self.runtime),
            entrypoint,
            self.call_id_stack.clone(),
            self.data.clone(),
            MessageFacts {
                correlation_id,
                redelivered: false,
                worker: None,
            },
        )
    }

    /// Calls `method` as a remote caller would, and returns its result or
    /// the error object the caller would receive.
    pub async fn call(&self, method: &str, args: Args) -> Result<Value, RemoteError> {
        let ctx = self.context(method, Some(uuid::Uuid::new_v4().to_string()));
        let request = wire::encode_request(args.body());
        let outcome = crate::server::invoke_local(
            &self.service,
            &ctx,
            method,
            &request,
            self.runtime.config.max_request_bytes,
        )
        .await;
        let reply = match outcome {
            Ok(body) => body,
            Err((error, _)) => wire::encode_error_reply(&error.to_error_object()),
        };
        match wire::decode_reply(&reply) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.into()),
            Err(e) => Err(
                RpcError::internal(format!("the reply does not decode: {e}"))
                    .to_error_object()
                    .into(),
            ),
        }
    }

    /// Runs timer `name` once, as one tick would; its error, if any, is
    /// the text the service would log.
    pub async fn tick(&self, name: &str) -> Result<(), String> {
        let entry = self
            .service
            .timers()
            .find(|t| t.name == name)
            .ok_or_else(|| format!("the service has no timer {name:?}"))?;
        let ctx = Context::new(
            Arc::clone(&self.runtime),
            name,
            Vec::new(),
            BTreeMap::new(),
            MessageFacts::default(),
        );
        match AssertUnwindSafe((entry.handler)(ctx)).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(_) => Err("the timer panicked".into()),
        }
    }

    /// Hands event `data` to event handler `name`, as a delivery would,
    /// with the context data and call-id stack set on this harness. Its
    /// error, if any, is the text the service would log (data that does
    /// not fit the handler's type included).
    pub async fn handle_event(&self, name: &str, data: Value) -> Result<(), String> {
        let entry = self
            .service
            .event_handlers()
            .find(|h| h.name == name)
            .ok_or_else(|| format!("the service has no event handler {name:?}"))?;
        let ctx = self.context(name, None);
        match AssertUnwindSafe((entry.handler)(ctx, data))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(EventFailure::Undecodable(e))) => {
                Err(format!("event data does not fit the handler: {e}"))
            }
            Ok(Err(EventFailure::Failed(e))) => Err(e),
            Err(_) => Err("the handler panicked".into()),
        }
    }
}

impl crate::caller::Caller for LocalService {
    async fn call_async(
        &self,
        service: &str,
        method: &str,
        args: Args,
    ) -> Result<crate::PendingCall, CallError> {
        if service != self.service.name() {
            return Err(CallError::UnknownService(service.to_owned()));
        }
        let answer = self.call(method, args).await.map_err(CallError::Remote);
        Ok(crate::PendingCall::known(service, method, answer))
    }
}
