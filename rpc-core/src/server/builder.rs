//! Defining a service: its methods, timers, event handlers and observers.

use super::observer::CallObserver;
use super::Service;
use crate::context::Context;
use crate::error::RpcError;
use crate::events::{EventHandlerEntry, EventHandlerOptions, Subscription};
use crate::method::{ArgumentError, FromArgs, Method, Signature};
use crate::timer::{Timer, TimerEntry};
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

pub(crate) type ArgumentErrorMapper = Arc<dyn Fn(&ArgumentError) -> RpcError + Send + Sync>;

/// Everything a running service needs to know about its entrypoints; shared
/// by every call.
pub(crate) struct ServiceDef {
    pub(crate) name: String,
    pub(crate) methods: HashMap<String, Method>,
    pub(crate) timers: Vec<TimerEntry>,
    pub(crate) on_invalid_argument: ArgumentErrorMapper,
    pub(crate) observers: Vec<Arc<dyn CallObserver>>,
    pub(crate) event_handlers: Vec<EventHandlerEntry>,
    /// Declare `{name}.events` with the session, for
    /// [`ServicePublisher`](crate::events::ServicePublisher).
    pub(crate) publishes_events: bool,
}

/// Collects a service's methods and timers; see [`Service::builder`].
pub struct ServiceBuilder {
    def: ServiceDef,
}

impl ServiceBuilder {
    pub(super) fn new(name: &str) -> Self {
        ServiceBuilder {
            def: ServiceDef {
                name: name.to_owned(),
                methods: HashMap::new(),
                timers: Vec::new(),
                observers: Vec::new(),
                event_handlers: Vec::new(),
                publishes_events: false,
                on_invalid_argument: Arc::new(|e: &ArgumentError| {
                    RpcError::invalid_argument(&e.method, &e.param, &e.message)
                }),
            },
        }
    }

    /// The service publishes events of its own on its own connection
    /// ([`ServiceHandle::publisher`](crate::ServiceHandle::publisher)): each
    /// session declares `{name}.events` before it consumes, so a publish
    /// never meets a missing exchange (which would close the channel the
    /// replies use too).
    #[must_use]
    pub fn publishes_events(mut self) -> Self {
        self.def.publishes_events = true;
        self
    }

    /// Registers an event handler: entrypoint `name` receives the events of
    /// `subscription` (`Subscription::to("person_created").from("person")`),
    /// its data deserialised into `T`. See [`crate::events`] for the queue,
    /// ack and requeue rules.
    #[must_use]
    pub fn event_handler<T, F, Fut, E>(
        mut self,
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
        self.def
            .event_handlers
            .push(EventHandlerEntry::new(name, subscription, options, handler));
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
    pub fn method<Params, R, E, F, Fut>(
        mut self,
        name: &str,
        signature: Signature,
        handler: F,
    ) -> Self
    where
        Params: FromArgs,
        F: Fn(Context, Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<RpcError> + Send + 'static,
    {
        self.def
            .methods
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
        self.def.timers.push(TimerEntry {
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
        self.def.on_invalid_argument = Arc::new(map);
        self
    }

    /// Adds an observer of every call (see [`CallObserver`]).
    #[must_use]
    pub fn observe(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.def.observers.push(observer);
        self
    }

    /// Finishes the service.
    pub fn build(self) -> Service {
        Service::from_def(self.def)
    }
}
