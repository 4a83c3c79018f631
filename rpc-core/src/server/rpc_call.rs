//! One RPC request, from delivery to ack: decode, bind, run the method,
//! then reply, wait for the broker's confirm, and only then ack.

use super::builder::ServiceDef;
use super::invoke::{invoke, Target};
use super::observer::{CallOutcome, UNKNOWN_METHOD};
use super::session::{ack, requeue, unless_gone, Handoff};
use crate::context::{Context, MessageFacts};
use crate::error::RpcError;
use crate::method::Method;
use crate::publish::OrderedChannel;
use crate::runtime::ServiceRuntime;
use crate::wire;
use crate::worker::WorkerSlot;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

/// Publishes replies with confirms.
#[derive(Clone)]
pub(super) struct Replier {
    pub(super) channel: OrderedChannel,
    pub(super) exchange: String,
    pub(super) delivery_mode: u8,
}

pub(super) struct Call {
    pub(super) def: Arc<ServiceDef>,
    pub(super) runtime: Arc<ServiceRuntime>,
    pub(super) handoff: Arc<Handoff>,
    /// The max_workers pool the permit came from, to take a slot again
    /// after [`Context::off_worker`].
    pub(super) workers: Arc<tokio::sync::Semaphore>,
}

impl Call {
    pub(super) async fn handle(self, delivery: Delivery, permit: OwnedSemaphorePermit) {
        let props = &delivery.properties;
        let routing_key = delivery.routing_key.as_str();
        let method = routing_key
            .strip_prefix(self.def.name.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or_else(|| routing_key.rsplit('.').next().unwrap_or(routing_key))
            .to_owned();
        let incoming = wire::read_context(props.headers().as_ref());
        let facts = MessageFacts {
            correlation_id: props
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str().to_owned()),
            redelivered: delivery.redelivered,
            worker: Some(WorkerSlot::new(Arc::clone(&self.workers), permit)),
        };
        let slot = facts.worker.clone();
        let ctx = Context::new(
            Arc::clone(&self.runtime),
            &method,
            incoming.call_id_stack,
            incoming.data,
            facts,
        );
        // A span per call at debug level: formatting one for every call at
        // info costs about a fifth of a `get`. The lines below that are
        // logged at info and above carry the call id themselves.
        let span = tracing::debug_span!("rpc", call_id = %ctx.call_id());
        let def = Arc::clone(&self.def);
        let found = def.methods.get_key_value(method.as_str());
        let label = found.map_or(UNKNOWN_METHOD, |(name, _)| name.as_str());
        let entry = found.map(|(_, entry)| entry);
        for o in &def.observers {
            o.started(label);
        }
        let runtime = Arc::clone(&self.runtime);
        // For the log line if the call is abandoned: a second handle on the
        // context, not a copy of its id.
        let logged = ctx.clone();
        let work = async move {
            let started = Instant::now();
            let outcome = self.execute(&ctx, &method, entry, &delivery).await;
            // The worker's job is done; replying and acking do not hold a
            // max_workers slot (the prefetch bounds them).
            if let Some(slot) = &slot {
                slot.release();
            }
            let elapsed = started.elapsed();
            let elapsed_us = elapsed.as_micros() as u64;
            let call_id = ctx.call_id();
            let body = match outcome {
                Ok(body) => {
                    tracing::debug!(%method, elapsed_us, "call succeeded");
                    for o in &self.def.observers {
                        o.finished(label, CallOutcome::Ok, elapsed);
                    }
                    body
                }
                Err((error, expected)) => {
                    let outcome = if expected {
                        tracing::info!(service = %self.def.name, %method, call_id, elapsed_us, error = %error, "call raised");
                        CallOutcome::Raised(&error)
                    } else {
                        tracing::warn!(service = %self.def.name, %method, call_id, elapsed_us, error = %error, "request refused");
                        CallOutcome::Refused(&error)
                    };
                    for o in &self.def.observers {
                        o.finished(label, outcome, elapsed);
                    }
                    wire::encode_error_reply(&error.to_error_object())
                }
            };
            self.reply_then_ack(&delivery, &body, call_id).await;
        };
        // Boxed: the call's state machine is several KB (the handler's and
        // lapin's futures nest in it), and a task's future is moved a few
        // times on the way into tokio and written again when it ends; the
        // profile showed those copies as half of a `get`'s instructions.
        // Boxed, only a pointer moves.
        let work = Box::pin(work.instrument(span));
        runtime.until_abandoned(work, logged.call_id()).await;
    }

    /// Runs the request, or says why it cannot run (see [`invoke`]).
    async fn execute(
        &self,
        ctx: &Context,
        method: &str,
        entry: Option<&Method>,
        delivery: &Delivery,
    ) -> Result<Vec<u8>, (RpcError, bool)> {
        let props = &delivery.properties;
        invoke(
            &self.def,
            ctx,
            Target { method, entry },
            props.content_type().as_ref().map(|c| c.as_str()),
            props.content_encoding().as_ref().map(|c| c.as_str()),
            &delivery.data,
            self.handoff.max_request_bytes,
        )
        .await
    }

    /// Reply, wait for the confirm, then ack: the request leaves the queue
    /// only once its answer is safely with the broker.
    async fn reply_then_ack(&self, delivery: &Delivery, body: &[u8], call_id: &str) {
        let props = &delivery.properties;
        let Some(reply_to) = props.reply_to().clone() else {
            tracing::warn!(call_id, "request has no reply_to; the result is dropped");
            ack(&self.handoff, delivery, call_id).await;
            return;
        };
        // The reply is as persistent as the request: a nameko caller sends
        // persistent requests and may wait across a broker restart, so its
        // reply is persistent too; a caller that chose transient requests
        // does not pay for a persistent reply.
        let mode = props
            .delivery_mode()
            .unwrap_or(self.handoff.replies.delivery_mode);
        let reply_props = wire::reply_properties(props.correlation_id().as_ref(), mode);
        let publish = async {
            let replies = &self.handoff.replies;
            replies
                .channel
                .basic_publish(
                    replies.exchange.as_str().into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    body,
                    reply_props,
                )
                .await?
                .await
        };
        // A confirm normally takes a millisecond; on a channel whose
        // connection died it may never come.
        match unless_gone(&self.handoff, publish).await {
            Some(Ok(c)) if c.is_ack() => ack(&self.handoff, delivery, call_id).await,
            Some(Ok(_)) => {
                // The broker refused to take the reply: give the request back
                // so that it is answered again rather than never.
                tracing::error!(
                    call_id,
                    "the broker nacked the reply; requeueing the request"
                );
                requeue(&self.handoff, delivery, call_id).await;
            }
            Some(Err(e)) => {
                // Without a confirmed reply the request must stay unacked; the
                // broker redelivers it when the channel closes.
                tracing::error!(call_id, error = %e, "publishing the reply failed; the request will be redelivered");
            }
            None => {
                tracing::warn!(call_id, "the connection was lost before the reply was confirmed; the request will be redelivered");
            }
        }
    }
}
