//! The person service's events, as a round sees them.
//!
//! Each change a round makes must produce its event: `person_created` with
//! the created record, `person_updated` with the record the update
//! returned, `person_deleted` with `{"id": id}`, all from the exchange
//! `{target}.events`. This module receives them and hands each to the round
//! that waits for it.
//!
//! * [`subscribe`] adds the three handlers (`on_person_created`, …,
//!   service-pool, so their queues are `evt-{target}-{event}--{service}.on_{event}`)
//!   to a service being built; every event they receive goes to an
//!   [`EventBoard`].
//! * A round [`watch`](EventBoard::watch)es its own person on the board
//!   before it creates it, and waits on the [`Watch`] for each event with a
//!   deadline, so it wakes when the event arrives rather than polling.
//! * [`TempSubscriber`] is a short-lived service with those handlers, for
//!   `--once`: its name is unique per run (service-pool queues are shared
//!   by service name, so two runs under one name would take each other's
//!   events) and its queues auto-delete when it stops.
//!
//! Handlers run concurrently, and the target's other clients (and other
//! rounds) cause events too, so events are matched to rounds by person:
//! an event about a person no round is watching is acked and ignored. A
//! round's person has a unique last name, so its `person_created` event is
//! also recognised by that name: the event may well arrive before the
//! create's reply has told the round which id the person got.

use rpc_core::events::Subscription;
use rpc_core::{
    Config, Context, EventHandlerOptions, Service, ServiceBuilder, ServiceHandle, Value,
};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long after a change's reply its event may take, unless set
/// otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The three events a round checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `person_created`, data: the record.
    Created,
    /// `person_updated`, data: the record after the update.
    Updated,
    /// `person_deleted`, data: `{"id": id}`.
    Deleted,
}

impl Kind {
    /// All three, in the order a round causes them.
    pub const ALL: [Kind; 3] = [Kind::Created, Kind::Updated, Kind::Deleted];

    /// The event type (the routing key).
    pub fn event_type(self) -> &'static str {
        match self {
            Kind::Created => "person_created",
            Kind::Updated => "person_updated",
            Kind::Deleted => "person_deleted",
        }
    }

    /// The handler's entrypoint name.
    pub fn handler_name(self) -> &'static str {
        match self {
            Kind::Created => "on_person_created",
            Kind::Updated => "on_person_updated",
            Kind::Deleted => "on_person_deleted",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.event_type())
    }
}

/// The queue the handler of `kind` in service `service` consumes, for the
/// events of `target` (nameko's service-pool name).
pub fn queue_name(target: &str, service: &str, kind: Kind) -> String {
    format!(
        "evt-{target}-{}--{service}.{}",
        kind.event_type(),
        kind.handler_name()
    )
}

/// An event as a handler received it.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// The event's data.
    pub data: Value,
    /// The handler's call-id stack: the stack the event carried, then the
    /// handler's own call id.
    pub call_id_stack: Vec<String>,
    /// When the handler got it.
    pub at: Instant,
}

/// The events seen so far for one watched person; the first of each kind
/// counts (delivery is at least once, so a repeat is not an error).
#[derive(Clone, Debug, Default)]
struct Seen {
    created: Option<Received>,
    updated: Option<Received>,
    deleted: Option<Received>,
}

impl Seen {
    fn get(&self, kind: Kind) -> Option<&Received> {
        match kind {
            Kind::Created => self.created.as_ref(),
            Kind::Updated => self.updated.as_ref(),
            Kind::Deleted => self.deleted.as_ref(),
        }
    }

    fn slot(&mut self, kind: Kind) -> &mut Option<Received> {
        match kind {
            Kind::Created => &mut self.created,
            Kind::Updated => &mut self.updated,
            Kind::Deleted => &mut self.deleted,
        }
    }
}

/// Where handlers put events and rounds wait for them; cheap to clone.
#[derive(Clone, Default)]
pub struct EventBoard {
    inner: Arc<Mutex<Board>>,
}

#[derive(Default)]
struct Board {
    next_key: u64,
    /// Watched last names → watch.
    names: HashMap<String, u64>,
    /// Watched ids → watch.
    ids: HashMap<i64, u64>,
    watches: HashMap<u64, watch::Sender<Seen>>,
}

impl fmt::Debug for EventBoard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBoard")
            .field("watching", &self.watching())
            .finish()
    }
}

impl EventBoard {
    /// No watches yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts collecting the events about the person with this (unique)
    /// last name; add its id with [`Watch::set_id`] once known. Stops when
    /// the watch is dropped.
    pub fn watch(&self, last_name: &str) -> Watch {
        let (tx, rx) = watch::channel(Seen::default());
        let mut board = self.lock();
        let key = board.next_key;
        board.next_key += 1;
        board.watches.insert(key, tx);
        board.names.insert(last_name.to_owned(), key);
        Watch {
            board: self.clone(),
            key,
            last_name: last_name.to_owned(),
            id: None,
            rx,
        }
    }

    /// How many persons are being watched.
    pub fn watching(&self) -> usize {
        self.lock().watches.len()
    }

    /// Hands an event to the round watching its person. Returns whether one
    /// was: events about anyone else are ignored.
    ///
    /// `person_created` and `person_updated` are matched by `data.id` or
    /// `data.last_name`, `person_deleted` by `data.id`. Data of any other
    /// shape matches nothing.
    pub fn deliver(&self, kind: Kind, data: Value, call_id_stack: Vec<String>) -> bool {
        let at = Instant::now();
        let id = data.get("id").and_then(Value::as_i64);
        let last_name = match kind {
            Kind::Created | Kind::Updated => data.get("last_name").and_then(Value::as_str),
            Kind::Deleted => None,
        };
        let board = self.lock();
        let key = id
            .and_then(|id| board.ids.get(&id))
            .or_else(|| last_name.and_then(|n| board.names.get(n)));
        let Some(tx) = key.and_then(|k| board.watches.get(k)) else {
            return false;
        };
        tx.send_if_modified(|seen| {
            let slot = seen.slot(kind);
            if slot.is_some() {
                return false;
            }
            *slot = Some(Received {
                data,
                call_id_stack,
                at,
            });
            true
        });
        true
    }
}

/// A round's interest in the events about its person.
pub struct Watch {
    board: EventBoard,
    key: u64,
    last_name: String,
    id: Option<i64>,
    rx: watch::Receiver<Seen>,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("last_name", &self.last_name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// Also matches events by this id (the one the create returned).
    pub fn set_id(&mut self, id: i64) {
        let mut board = self.board.lock();
        if let Some(old) = self.id.replace(id) {
            board.ids.remove(&old);
        }
        board.ids.insert(id, self.key);
    }

    /// The event of `kind`, if it has arrived.
    pub fn get(&self, kind: Kind) -> Option<Received> {
        self.rx.borrow().get(kind).cloned()
    }

    /// Waits until the event of `kind` has arrived or `deadline` has
    /// passed. An event that arrived before is returned at once, even
    /// after the deadline (the caller judges when it arrived).
    pub async fn wait(&mut self, kind: Kind, deadline: Instant) -> Option<Received> {
        if let Some(r) = self.get(kind) {
            return Some(r);
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(deadline, self.rx.wait_for(|s| s.get(kind).is_some())).await {
            Ok(Ok(seen)) => seen.get(kind).cloned(),
            // The sender lives in the board as long as this watch does.
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut board = self.board.lock();
        board.watches.remove(&self.key);
        if board.names.get(&self.last_name) == Some(&self.key) {
            board.names.remove(&self.last_name);
        }
        if let Some(id) = self.id {
            if board.ids.get(&id) == Some(&self.key) {
                board.ids.remove(&id);
            }
        }
    }
}

/// Adds handlers for `target`'s three person events to `builder`, each
/// putting what it receives on `board`. The handlers never fail: an event
/// is acked whether or not a round wanted it.
pub fn subscribe(
    mut builder: ServiceBuilder,
    target: &str,
    board: &EventBoard,
    options: EventHandlerOptions,
) -> ServiceBuilder {
    for kind in Kind::ALL {
        let board = board.clone();
        builder = builder.event_handler(
            kind.handler_name(),
            Subscription::to(kind.event_type()).from(target),
            options.clone(),
            move |ctx: Context, data: Value| {
                let board = board.clone();
                async move {
                    let matched = board.deliver(kind, data, ctx.call_id_stack().to_vec());
                    tracing::trace!(event_type = kind.event_type(), matched, "event received");
                    Ok::<(), std::convert::Infallible>(())
                }
            },
        );
    }
    builder
}

/// A short-lived subscriber for `--once`: a service of its own, with a
/// unique name, whose queues auto-delete (`reliable_delivery(false)`) once
/// it stops consuming, also when the process dies.
pub struct TempSubscriber {
    name: String,
    board: EventBoard,
    handle: ServiceHandle,
}

impl fmt::Debug for TempSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TempSubscriber")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TempSubscriber {
    /// Starts a subscriber called `{prefix}-once-{random}` to `target`'s
    /// events and waits (up to `within`) until its queues are bound, so
    /// that no event of a round that starts afterwards is missed.
    pub async fn start(
        config: Config,
        target: &str,
        prefix: &str,
        within: Duration,
    ) -> Result<Self, String> {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{prefix}-once-{}", &uuid[..12]);
        let board = EventBoard::new();
        let builder = subscribe(
            Service::builder(&name),
            target,
            &board,
            EventHandlerOptions::service_pool().reliable_delivery(false),
        );
        let mut handle = builder.build().spawn(config);
        match tokio::time::timeout(within, handle.ready()).await {
            Ok(Ok(())) => Ok(TempSubscriber {
                name,
                board,
                handle,
            }),
            Ok(Err(e)) => Err(format!("the event subscriber could not start: {e}")),
            Err(_) => {
                handle.stop();
                Err(format!(
                    "the event subscriber was not consuming within {within:?}"
                ))
            }
        }
    }

    /// The subscriber's service name (its queues end in `--{name}.on_…`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where its events go.
    pub fn board(&self) -> &EventBoard {
        &self.board
    }

    /// Stops consuming, so that the broker deletes its queues.
    pub async fn stop(self) {
        if let Err(e) = self.handle.shutdown().await {
            tracing::warn!(subscriber = %self.name, error = %e, "the event subscriber did not stop cleanly");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_core::json;

    fn record(id: i64, last_name: &str) -> Value {
        json!({"id": id, "first_name": "Probe", "last_name": last_name, "age": 41, "member": false})
    }

    #[test]
    fn names_follow_nameko() {
        assert_eq!(
            queue_name("person", "test_service", Kind::Created),
            "evt-person-person_created--test_service.on_person_created"
        );
    }

    #[tokio::test]
    async fn events_go_to_the_round_watching_their_person() {
        let board = EventBoard::new();
        let mut mine = board.watch("Roundtrip-a");
        let other = board.watch("Roundtrip-b");
        // Created before the round knows its id: matched by name.
        assert!(board.deliver(Kind::Created, record(7, "Roundtrip-a"), vec!["x".into()]));
        mine.set_id(7);
        // Someone else's person, and data of no known shape: ignored.
        assert!(!board.deliver(Kind::Updated, record(8, "Someone"), vec![]));
        assert!(!board.deliver(Kind::Deleted, json!([7]), vec![]));
        assert!(board.deliver(Kind::Deleted, json!({"id": 7}), vec![]));
        // A repeat does not replace the first.
        assert!(board.deliver(Kind::Created, record(7, "changed"), vec![]));

        let deadline = Instant::now() + Duration::from_secs(5);
        let created = mine.wait(Kind::Created, deadline).await.unwrap();
        assert_eq!(created.data, record(7, "Roundtrip-a"));
        assert_eq!(created.call_id_stack, vec!["x".to_owned()]);
        assert_eq!(
            mine.wait(Kind::Deleted, deadline).await.unwrap().data,
            json!({"id": 7})
        );
        assert!(other.get(Kind::Created).is_none());

        drop(mine);
        assert_eq!(board.watching(), 1);
        assert!(!board.deliver(Kind::Deleted, json!({"id": 7}), vec![]));
        drop(other);
        let b = board.lock();
        assert!(b.names.is_empty() && b.ids.is_empty() && b.watches.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_round_wakes_when_its_event_arrives() {
        let board = EventBoard::new();
        let mut watch = board.watch("Roundtrip-c");
        watch.set_id(3);
        let sender = board.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            sender.deliver(Kind::Updated, record(3, "Roundtrip-c"), vec![]);
        });
        let got = watch
            .wait(Kind::Updated, Instant::now() + Duration::from_secs(30))
            .await;
        assert_eq!(got.map(|r| r.data), Some(record(3, "Roundtrip-c")));
    }

    #[tokio::test]
    async fn a_missing_event_ends_the_wait_at_the_deadline() {
        let board = EventBoard::new();
        let mut watch = board.watch("Roundtrip-d");
        let deadline = Instant::now() + Duration::from_millis(50);
        assert!(watch.wait(Kind::Deleted, deadline).await.is_none());
        assert!(Instant::now() >= deadline);
        // A deadline in the past still returns what has arrived.
        board.deliver(Kind::Created, record(1, "Roundtrip-d"), vec![]);
        assert!(watch.wait(Kind::Created, deadline).await.is_some());
    }
}
