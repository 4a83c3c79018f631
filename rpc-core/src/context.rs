//! The context of one call: who is calling (the call-id stack), the
//! `nameko.*` data that travels with the call, and the way to call other
//! services on its behalf so that both propagate.

use crate::config::Config;
use crate::error::CallError;
use crate::events::{DispatchError, OutgoingEvent};
use crate::proxy::{Args, PendingCall, RpcProxy};
use crate::runtime::{BrokerLinks, Outbound, OutgoingCall, ServiceRuntime};
use crate::worker::WorkerSlot;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The context a handler runs in.
///
/// Cheap to clone. Read the caller's data with [`Context::data`], and call
/// other services with [`Context::rpc`], which sends this call's id stack and
/// data along, as a nameko worker does.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<ServiceRuntime>,
    entrypoint: String,
    propagated: Arc<Propagated>,
    correlation_id: Option<String>,
    redelivered: bool,
    worker: Option<Arc<WorkerSlot>>,
}

/// What a call passes on to the calls and events it makes: its call-id
/// stack and its context data.
///
/// Shared rather than copied ([`Context::propagated`]): a service that
/// keeps it past the call, as an outbox keeps an event's context until the
/// event is published, clones an `Arc`, not the stack and the data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Propagated {
    /// The callers' ids, oldest first, ending with the call's own id.
    pub call_id_stack: Vec<String>,
    /// Context data (see [`Context::data`]).
    pub data: BTreeMap<String, Value>,
}

/// Facts about the message that started a call, beyond its context.
#[derive(Clone, Debug, Default)]
pub(crate) struct MessageFacts {
    pub(crate) correlation_id: Option<String>,
    pub(crate) redelivered: bool,
    /// The max_workers slot the call runs under, when it has one.
    pub(crate) worker: Option<Arc<WorkerSlot>>,
}

impl Context {
    pub(crate) fn new(
        runtime: Arc<ServiceRuntime>,
        entrypoint: &str,
        parent_stack: Vec<String>,
        data: BTreeMap<String, Value>,
        facts: MessageFacts,
    ) -> Self {
        let call_id = crate::wire::new_call_id(&runtime.name, entrypoint);
        let call_id_stack =
            extend_stack(parent_stack, call_id, runtime.config.parent_calls_tracked);
        Context {
            inner: Arc::new(Inner {
                runtime,
                entrypoint: entrypoint.to_owned(),
                propagated: Arc::new(Propagated {
                    call_id_stack,
                    data,
                }),
                correlation_id: facts.correlation_id,
                redelivered: facts.redelivered,
                worker: facts.worker,
            }),
        }
    }

    /// The service this call runs in.
    pub fn service_name(&self) -> &str {
        &self.inner.runtime.name
    }

    /// The method, timer or handler being run.
    pub fn entrypoint(&self) -> &str {
        &self.inner.entrypoint
    }

    /// This call's id: `{service}.{entrypoint}.{uuid4}`.
    pub fn call_id(&self) -> &str {
        // The stack always ends with it (`extend_stack`): kept once.
        self.inner
            .propagated
            .call_id_stack
            .last()
            .map_or("", String::as_str)
    }

    /// The callers' ids, oldest first, ending with this call's own id;
    /// capped at `parent_calls_tracked + 1` entries.
    pub fn call_id_stack(&self) -> &[String] {
        &self.inner.propagated.call_id_stack
    }

    /// The id of the call that made this one, if any.
    pub fn parent_call_id(&self) -> Option<&str> {
        let stack = &self.inner.propagated.call_id_stack;
        stack.len().checked_sub(2).map(|i| stack[i].as_str())
    }

    /// Context data from the caller's headers (`nameko.` prefix removed;
    /// other headers under their full name).
    pub fn data(&self) -> &BTreeMap<String, Value> {
        &self.inner.propagated.data
    }

    /// The call-id stack and the data together, shared.
    pub fn propagated(&self) -> &Arc<Propagated> {
        &self.inner.propagated
    }

    /// One context entry, e.g. `user_id`, `auth_token`, `language`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.inner.propagated.data.get(key)
    }

    /// The request's correlation id: unique per call from nameko clients and
    /// ours, and the same when the broker redelivers the request, so it
    /// identifies a retried request.
    pub fn correlation_id(&self) -> Option<&str> {
        self.inner.correlation_id.as_deref()
    }

    /// Whether the broker delivered this request before (to a consumer that
    /// did not acknowledge it).
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// Awaits `wait` without holding one of the service's `max_workers`
    /// slots, then takes one again.
    ///
    /// For a handler that is waiting, not working: a write queued for a
    /// durable group commit, a lock, a slow peer. nameko counts such a wait
    /// against `max_workers` (its greenlet is busy); here the slot goes to
    /// another request meanwhile, so that, e.g., ten creates waiting for
    /// their commit do not cap the service at ten writes per commit. The
    /// request stays unacknowledged until its reply is confirmed, and the
    /// prefetch still bounds the requests held at once. Outside a worker
    /// (timers, the test harness) it just awaits `wait`.
    pub async fn off_worker<F: std::future::Future>(&self, wait: F) -> F::Output {
        match &self.inner.worker {
            Some(slot) => slot.off(wait).await,
            None => wait.await,
        }
    }

    /// The service's settings.
    pub fn config(&self) -> &Config {
        &self.inner.runtime.config
    }

    /// Calls other services on behalf of this call: the requests carry this
    /// call's id stack and context data.
    pub fn rpc(&self) -> ContextProxy {
        ContextProxy {
            ctx: self.clone(),
            timeout: None,
        }
    }

    /// Dispatches event `event_type` from this service (to exchange
    /// `{service}.events`) with `data` as its body, carrying this call's
    /// context headers, and waits for the broker's confirm.
    pub async fn dispatch<T: serde::Serialize + ?Sized>(
        &self,
        event_type: &str,
        data: &T,
    ) -> Result<(), DispatchError> {
        let data =
            serde_json::to_value(data).map_err(|e| DispatchError::Serialize(e.to_string()))?;
        let event = OutgoingEvent {
            source_service: self.service_name().to_owned(),
            event_type: event_type.to_owned(),
            data,
            call_id_stack: self.call_id_stack().to_vec(),
            context: self.data().clone(),
        };
        let runtime = self.runtime();
        match &runtime.outbound {
            Outbound::Broker(broker) => broker.events(runtime).await?.dispatch_one(event).await,
            Outbound::Local(local) => {
                local.dispatch(event);
                Ok(())
            }
        }
    }

    pub(crate) fn runtime(&self) -> &Arc<ServiceRuntime> {
        &self.inner.runtime
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("call_id", &self.call_id())
            .field("call_id_stack", &self.inner.propagated.call_id_stack)
            .finish_non_exhaustive()
    }
}

/// Appends `own` to the parent stack and keeps the newest `tracked + 1`.
pub(crate) fn extend_stack(mut parent: Vec<String>, own: String, tracked: usize) -> Vec<String> {
    parent.push(own);
    let keep = tracked + 1;
    if parent.len() > keep {
        parent.drain(..parent.len() - keep);
    }
    parent
}

/// Calls made from inside a handler; see [`Context::rpc`].
#[derive(Clone, Debug)]
pub struct ContextProxy {
    ctx: Context,
    timeout: Option<Duration>,
}

impl ContextProxy {
    /// Uses this timeout instead of the configured `rpc_timeout`.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The service's proxy, carrying this call's context, and the deadline
    /// the whole call (connecting included) must meet.
    async fn proxy(&self, broker: &BrokerLinks) -> Result<RpcProxy, CallError> {
        let runtime = self.ctx.runtime();
        let timeout = self.timeout.unwrap_or(runtime.config.rpc_timeout);
        let proxy = match broker.connected_proxy() {
            Some(proxy) => proxy.with_timeout(timeout),
            None => {
                // The first call also waits for the connection: both share
                // the one timeout.
                let deadline = crate::proxy::deadline_after(timeout);
                let proxy = broker.proxy(runtime, deadline).await?;
                proxy.with_timeout(deadline.saturating_duration_since(Instant::now()))
            }
        };
        Ok(proxy.with_context(self.ctx.call_id_stack().to_vec(), self.ctx.data().clone()))
    }

    /// Calls `service.method` and waits for the result.
    pub async fn call(&self, service: &str, method: &str, args: Args) -> Result<Value, CallError> {
        self.call_async(service, method, args).await?.result().await
    }

    /// Publishes the call and returns at once; collect the result later with
    /// [`PendingCall::result`].
    pub async fn call_async(
        &self,
        service: &str,
        method: &str,
        args: Args,
    ) -> Result<PendingCall, CallError> {
        match &self.ctx.runtime().outbound {
            Outbound::Broker(broker) => {
                self.proxy(broker)
                    .await?
                    .call_async(service, method, args)
                    .await
            }
            Outbound::Local(local) => {
                let answer = local.call(OutgoingCall {
                    service: service.to_owned(),
                    method: method.to_owned(),
                    args,
                    call_id_stack: self.ctx.call_id_stack().to_vec(),
                    data: self.ctx.data().clone(),
                });
                Ok(PendingCall::known(service, method, answer))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_is_capped_from_the_oldest_end() {
        let parents: Vec<String> = (0..15).map(|i| format!("s{i}")).collect();
        let stack = extend_stack(parents, "me".into(), 10);
        assert_eq!(stack.len(), 11);
        assert_eq!(stack.first().map(String::as_str), Some("s5"));
        assert_eq!(stack.last().map(String::as_str), Some("me"));
        assert_eq!(extend_stack(vec![], "me".into(), 10), vec!["me".to_owned()]);
    }
}
