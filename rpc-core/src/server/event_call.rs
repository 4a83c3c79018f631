//! One event, from delivery to ack: decode, run the handler, then ack, or
//! requeue after a back-off when the handler failed and asked for that.

use super::session::{ack, requeue, Handoff};
use crate::context::{Context, MessageFacts};
use crate::events::{EventFailure, EventHandlerEntry};
use crate::runtime::ServiceRuntime;
use crate::wire;
use futures::FutureExt;
use lapin::message::Delivery;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

/// One event being handled.
pub(super) struct EventCall {
    pub(super) handler: EventHandlerEntry,
    pub(super) runtime: Arc<ServiceRuntime>,
    pub(super) handoff: Arc<Handoff>,
}

impl EventCall {
    pub(super) async fn handle(self, delivery: Delivery, _permit: OwnedSemaphorePermit) {
        let props = &delivery.properties;
        let incoming = wire::read_context(props.headers().as_ref());
        let ctx = Context::new(
            Arc::clone(&self.runtime),
            &self.handler.name,
            incoming.call_id_stack,
            incoming.data,
            MessageFacts {
                correlation_id: None,
                redelivered: delivery.redelivered,
                worker: None,
            },
        );
        // Debug level for the same reason as an RPC call's span; the lines
        // logged at info and above name the handler and the call id.
        let span = tracing::debug_span!("event", call_id = %ctx.call_id());
        let call_id = ctx.call_id().to_owned();
        let who = format!("{}.{}", self.runtime.name, self.handler.name);
        let runtime = Arc::clone(&self.runtime);
        let work = async {
            let content_type = delivery
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str());
            let data = match decode_event(
                content_type,
                &delivery.data,
                self.handoff.max_request_bytes,
            ) {
                Ok(data) => data,
                Err(why) => {
                    tracing::error!(handler = %who, %call_id, error = %why, "undecodable event dropped");
                    ack(&self.handoff, &delivery, &call_id).await;
                    return;
                }
            };
            let outcome = AssertUnwindSafe((self.handler.handler)(ctx, data))
                .catch_unwind()
                .await;
            let failure = match outcome {
                Ok(Ok(())) => {
                    self.handler.record(true);
                    ack(&self.handoff, &delivery, &call_id).await;
                    return;
                }
                Ok(Err(EventFailure::Undecodable(e))) => {
                    // It can never succeed: requeueing would loop forever.
                    tracing::error!(handler = %who, %call_id, error = %e, "event data does not fit the handler; dropped");
                    ack(&self.handoff, &delivery, &call_id).await;
                    return;
                }
                Ok(Err(EventFailure::Failed(e))) => e,
                Err(_) => "the handler panicked".to_owned(),
            };
            let failures = self.handler.record(false);
            if self.handler.options.requeue_on_error {
                let wait = self.handler.backoff(failures);
                tracing::warn!(handler = %who, %call_id, error = %failure, failures, retry_in_ms = wait.as_millis() as u64, "event handler failed; requeueing after a back-off");
                // A stop does not wait out the back-off: the event goes back
                // at once, for this or another instance.
                tokio::select! {
                    _ = self.runtime.stopping.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                requeue(&self.handoff, &delivery, &call_id).await;
            } else {
                tracing::error!(handler = %who, %call_id, error = %failure, "event handler failed; event dropped");
                ack(&self.handoff, &delivery, &call_id).await;
            }
        };
        // Boxed: the call's state machine is several KB (the handler's and
        // lapin's futures nest in it), and a task's future is moved a few
        // times on the way into tokio and written again when it ends; the
        // profile showed those copies as half of a `get`'s instructions.
        // Boxed, only a pointer moves.
        let work = Box::pin(work.instrument(span));
        runtime.until_abandoned(work, &call_id).await;
    }
}

/// An event's body, under the same size and content-type rules as a
/// request's.
fn decode_event(
    content_type: Option<&str>,
    body: &[u8],
    max_bytes: usize,
) -> Result<serde_json::Value, String> {
    if body.len() > max_bytes {
        return Err(format!(
            "event body is {} bytes; the limit is {max_bytes}",
            body.len()
        ));
    }
    wire::check_content_type(content_type).map_err(|e| e.to_string())?;
    serde_json::from_slice(body).map_err(|e| format!("event body is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_bodies_follow_the_request_rules() {
        let json = Some("application/json");
        assert_eq!(
            decode_event(Some("application/json; charset=utf-8"), b"[1]", 10),
            Ok(serde_json::json!([1]))
        );
        let too_large = decode_event(json, b"[1, 2, 3]", 4).unwrap_err();
        assert!(too_large.contains("9 bytes"), "{too_large}");
        for content_type in [None, Some("text/plain")] {
            let refused = decode_event(content_type, b"1", 10).unwrap_err();
            assert!(refused.contains("content type"), "{refused}");
        }
        let not_json = decode_event(json, b"{nope", 10).unwrap_err();
        assert!(not_json.contains("not JSON"), "{not_json}");
    }
}
