//! What every entrypoint of a running service shares: its name, its
//! config, the stop's tokens, and the way out to other services (calls and
//! events). Out means the broker for a running service, and the test's
//! stubs and records for a [`LocalService`](crate::testing::LocalService).

use crate::config::Config;
use crate::error::CallError;
use crate::events::{DispatchError, EventDispatcher, OutgoingEvent};
use crate::proxy::{Args, RpcProxy};
use crate::tripwire::Tripwire;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) struct ServiceRuntime {
    pub(crate) name: String,
    pub(crate) config: Config,
    pub(crate) outbound: Outbound,
    /// Cancelled when the service is asked to stop: a handler waiting out a
    /// back-off stops waiting.
    pub(crate) stopping: CancellationToken,
    /// Tripped when a stop's deadline passes: work still running is
    /// dropped.
    abandon: Tripwire,
}

/// Where a handler's calls and events go.
pub(crate) enum Outbound {
    /// The broker, through a proxy and a dispatcher made on first use (so
    /// services that never call out declare no reply queue).
    Broker(BrokerLinks),
    /// A test's stubs and records.
    Local(Arc<dyn LocalOutbound>),
}

pub(crate) struct BrokerLinks {
    proxy: OnceCell<RpcProxy>,
    events: OnceCell<EventDispatcher>,
    /// Stops these connections. They outlive the stop signal, so that
    /// calls finishing during a graceful stop can still call out and
    /// dispatch events; they close once those calls are done.
    links: CancellationToken,
}

/// A call a handler makes, with the context it carries.
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingCall {
    /// The service called.
    pub service: String,
    /// The method called.
    pub method: String,
    /// Its arguments.
    pub args: Args,
    /// The call-id stack sent with it (the handler's own call id last).
    pub call_id_stack: Vec<String>,
    /// The context data sent with it.
    pub data: BTreeMap<String, Value>,
}

/// The way out of a service run in process.
pub(crate) trait LocalOutbound: Send + Sync {
    fn call(&self, call: OutgoingCall) -> Result<Value, CallError>;
    fn dispatch(&self, event: OutgoingEvent);
}

impl ServiceRuntime {
    pub(crate) fn new(name: String, config: Config, stopping: CancellationToken) -> Self {
        let outbound = Outbound::Broker(BrokerLinks {
            proxy: OnceCell::new(),
            events: OnceCell::new(),
            links: CancellationToken::new(),
        });
        Self::with_outbound(name, config, stopping, outbound)
    }

    pub(crate) fn with_outbound(
        name: String,
        config: Config,
        stopping: CancellationToken,
        outbound: Outbound,
    ) -> Self {
        ServiceRuntime {
            name,
            config,
            outbound,
            stopping,
            abandon: Tripwire::new(),
        }
    }

    /// Runs one call, event or timer tick, unless the stop's deadline
    /// passes first: then it is dropped, and logged with its call id.
    pub(crate) async fn until_abandoned(&self, work: impl Future<Output = ()>, call_id: &str) {
        if self.abandon.guard(work).await.is_none() {
            tracing::warn!(
                service = %self.name,
                call_id,
                "abandoned at the shutdown timeout; its message returns to the queue"
            );
        }
    }

    /// Drops the work still running (see [`Self::until_abandoned`]).
    pub(crate) fn abandon(&self) {
        self.abandon.trip();
    }

    /// Closes the runtime's own connections (each close is bounded).
    pub(crate) async fn close(&self) {
        let Outbound::Broker(broker) = &self.outbound else {
            return;
        };
        broker.links.cancel();
        let proxy = async {
            if let Some(proxy) = broker.proxy.get() {
                proxy.close().await;
            }
        };
        let events = async {
            if let Some(events) = broker.events.get() {
                events.close().await;
            }
        };
        tokio::join!(proxy, events);
    }
}

impl BrokerLinks {
    /// The proxy if it is connected already.
    pub(crate) fn connected_proxy(&self) -> Option<&RpcProxy> {
        self.proxy.get()
    }

    /// The in-service proxy, connecting it first if needed (by `deadline`).
    pub(crate) async fn proxy(
        &self,
        runtime: &ServiceRuntime,
        deadline: Instant,
    ) -> Result<&RpcProxy, CallError> {
        let connect = self.proxy.get_or_try_init(|| {
            RpcProxy::for_service(
                &runtime.name,
                runtime.config.clone(),
                self.links.child_token(),
            )
        });
        match tokio::time::timeout_at(deadline, connect).await {
            Ok(proxy) => proxy.map_err(|e| CallError::NotConnected(e.to_string())),
            Err(_) => Err(CallError::NotConnected(
                "no connection to the broker within the call's timeout".into(),
            )),
        }
    }

    /// The in-service dispatcher, connecting it first if needed (within the
    /// config's `rpc_timeout`).
    pub(crate) async fn events(
        &self,
        runtime: &ServiceRuntime,
    ) -> Result<&EventDispatcher, DispatchError> {
        let timeout = runtime.config.rpc_timeout;
        let connect = self.events.get_or_try_init(|| async {
            let name = format!("{} events", runtime.name);
            EventDispatcher::start(&name, runtime.config.clone(), self.links.child_token()).await
        });
        match tokio::time::timeout(timeout, connect).await {
            Ok(events) => events.map_err(|e| DispatchError::NotConnected(e.to_string())),
            Err(_) => Err(DispatchError::NotConnected(format!(
                "no connection to the broker within {timeout:?}"
            ))),
        }
    }
}
