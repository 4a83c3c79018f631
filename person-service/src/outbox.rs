//! The outbox relay: publishes the events that writes left in the store's
//! outbox, in commit order, and removes each once the broker has confirmed
//! it. An event is therefore published at least once even if the process
//! dies between a commit and the publish (a crash between the confirm and
//! the removal publishes it again on the next start).
//!
//! The relay wakes when a commit adds events, and every few seconds to
//! retry after a failure. On stop it makes a last attempt to empty the
//! outbox, bounded in time; whatever is left is published after a restart.

use crate::store::Store;
use rpc_core::{CancellationToken, Config, EventDispatcher, OutgoingEvent};
use std::time::Duration;

/// Events published in one go.
const BATCH: usize = 256;
/// Wait before retrying after a failure, and the idle wake-up period.
const RETRY: Duration = Duration::from_secs(2);
/// The last attempt at stop.
const FINAL_DRAIN: Duration = Duration::from_secs(5);
/// Committing the published events' removal at stop.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until `stop`, publishing events from `source` (the service name).
pub async fn run(store: Store, config: Config, source: String, stop: CancellationToken) {
    let signal = store.outbox_signal();
    let mut dispatcher: Option<EventDispatcher> = None;
    // Published events leave the outbox lazily (see Store::clear_outbox);
    // this is the last one published, so they are not sent twice meanwhile.
    let mut published = 0i64;
    loop {
        let outcome = drain(
            &store,
            &config,
            &source,
            &mut dispatcher,
            &mut published,
            &stop,
        )
        .await;
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
    match tokio::time::timeout(
        FINAL_DRAIN,
        drain(
            &store,
            &once,
            &source,
            &mut dispatcher,
            &mut published,
            &last,
        ),
    )
    .await
    {
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

/// Publishes until the outbox is empty.
async fn drain(
    store: &Store,
    config: &Config,
    source: &str,
    dispatcher: &mut Option<EventDispatcher>,
    published: &mut i64,
    stop: &CancellationToken,
) -> Result<(), String> {
    loop {
        let batch = store
            .outbox_after(*published, BATCH)
            .await
            .map_err(|e| e.to_string())?;
        if batch.is_empty() {
            return Ok(());
        }
        let d = match dispatcher {
            Some(d) => d.clone(),
            None => {
                let connect = EventDispatcher::connect(config.clone());
                let d = tokio::select! {
                    _ = stop.cancelled() => return Err("stopping".into()),
                    d = connect => d.map_err(|e| e.to_string())?,
                };
                *dispatcher = Some(d.clone());
                d
            }
        };
        let mut ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
        let events: Vec<OutgoingEvent> = batch
            .into_iter()
            .map(|e| OutgoingEvent {
                source_service: source.to_owned(),
                event_type: e.event_type,
                data: e.payload,
                call_id_stack: e.context.call_id_stack,
                context: e.context.data,
            })
            .collect();
        let outcome = d.dispatch_batch(&events).await;
        let done = *outcome.as_ref().unwrap_or(&0);
        let nacked = done < ids.len();
        ids.truncate(done);
        if let Some(last) = ids.last() {
            *published = *last;
        }
        store.clear_outbox(ids).await.map_err(|e| e.to_string())?;
        tracing::debug!(published = done, "events published");
        match outcome {
            Err(e) => return Err(e.to_string()),
            Ok(_) if nacked => return Err("the broker nacked an event".into()),
            Ok(_) => {}
        }
    }
}
