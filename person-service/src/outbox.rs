//! The outbox relay: publishes the events that writes left in the store's
//! outbox, oldest first, and removes each once the broker has confirmed
//! it. An event is therefore published at least once even if the process
//! dies between a commit and the publish (a crash between the confirm and
//! the removal publishes it again on the next start).
//!
//! Each batch is a claim on the store ([`Store::claim_outbox`]): on
//! PostgreSQL, rows locked `FOR UPDATE SKIP LOCKED` until their removal
//! commits, so the relays of several instances share one outbox without
//! sending an event twice; on SQLite, the events after the last one
//! published.
//!
//! The relay wakes when a commit of this instance adds events, and every
//! few seconds besides: to retry after a failure (a broker or database
//! outage) and to pick up events another instance committed. On stop it
//! makes a last attempt to empty the outbox, bounded in time; whatever is
//! left is published after a restart.

use crate::store::Store;
use rpc_core::{
    CancellationToken, Config, DispatchError, EncodedEvent, EventDispatcher, ServicePublisher,
};
use std::time::Duration;

/// Events published in one go.
const BATCH: usize = 256;
/// Wait before retrying after a failure, and the idle wake-up period.
const RETRY: Duration = Duration::from_secs(2);
/// The last attempt at stop.
const FINAL_DRAIN: Duration = Duration::from_secs(5);
/// Committing the published events' removal at stop.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until `stop`, publishing events from `source` (the service name):
/// on the service's own connection (`publisher`) while it has a session,
/// else (reconnecting, stopped, or no publisher) on a connection of the
/// relay's own, opened when first needed.
pub async fn run(
    store: Store,
    config: Config,
    source: String,
    publisher: Option<ServicePublisher>,
    stop: CancellationToken,
) {
    let signal = store.outbox_signal();
    let mut dispatcher: Option<EventDispatcher> = None;
    let relay = Relay {
        store: &store,
        source: &source,
        publisher: publisher.as_ref(),
    };
    loop {
        let outcome = relay.drain(&config, &mut dispatcher, &stop).await;
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, retry_in_s = RETRY.as_secs(), "publishing events failed; they stay in the outbox");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = signal.notified(), if outcome.is_ok() => {}
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
    // One last try, without waiting for a broker that is not there.
    let mut once = config.clone();
    once.connect_retry = rpc_core::RetryPolicy::once();
    let last = CancellationToken::new();
    match tokio::time::timeout(FINAL_DRAIN, relay.drain(&once, &mut dispatcher, &last)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "events left in the outbox at stop; they go out after a restart")
        }
        Err(_) => tracing::warn!(
            "events left in the outbox at stop (timeout); they go out after a restart"
        ),
    }
    if let Some(d) = dispatcher {
        d.close().await;
    }
    match tokio::time::timeout(FLUSH_TIMEOUT, store.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not remove published events; they are published again at the next start"),
        Err(_) => tracing::warn!("the store did not remove the published events in time; they are published again at the next start"),
    }
}

struct Relay<'a> {
    store: &'a Store,
    source: &'a str,
    publisher: Option<&'a ServicePublisher>,
}

impl Relay<'_> {
    /// Publishes until the outbox is empty.
    async fn drain(
        &self,
        config: &Config,
        dispatcher: &mut Option<EventDispatcher>,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        loop {
            let publisher = self.publisher.filter(|p| p.is_connected());
            if publisher.is_some() {
                // The service is back: the connection that stood in for it
                // is not needed any more (closed before the claim, which on
                // PostgreSQL holds row locks).
                if let Some(standby) = dispatcher.take() {
                    standby.close().await;
                }
            }
            let claim = self
                .store
                .claim_outbox(BATCH)
                .await
                .map_err(|e| e.to_string())?;
            if claim.is_empty() {
                return Ok(());
            }
            let events: Vec<EncodedEvent<'_>> = claim
                .events()
                .iter()
                .map(|e| EncodedEvent {
                    source_service: self.source,
                    event_type: &e.event_type,
                    body: &e.body,
                    call_id_stack: &e.context.call_id_stack,
                    context: &e.context.data,
                })
                .collect();
            let outcome = match (publisher, &*dispatcher) {
                (Some(publisher), _) => match publisher.dispatch_encoded(&events).await {
                    // The session went in the meantime: nothing was sent.
                    Err(DispatchError::NotConnected(_)) => {
                        claim.finish(0).await.map_err(|e| e.to_string())?;
                        continue;
                    }
                    outcome => outcome,
                },
                (None, Some(d)) => d.dispatch_encoded(&events).await,
                (None, None) => {
                    // Not while holding the claim: on PostgreSQL it is an
                    // open transaction with row locks, and connecting may
                    // wait out a broker outage.
                    claim.finish(0).await.map_err(|e| e.to_string())?;
                    let connect = EventDispatcher::connect(config.clone());
                    let d = tokio::select! {
                        _ = stop.cancelled() => return Err("stopping".into()),
                        d = connect => d.map_err(|e| e.to_string())?,
                    };
                    *dispatcher = Some(d);
                    continue;
                }
            };
            let done = *outcome.as_ref().unwrap_or(&0);
            let nacked = done < events.len();
            claim.finish(done).await.map_err(|e| e.to_string())?;
            tracing::debug!(published = done, "events published");
            match outcome {
                Err(e) => return Err(e.to_string()),
                Ok(_) if nacked => return Err("the broker nacked an event".into()),
                Ok(_) => {}
            }
        }
    }
}
