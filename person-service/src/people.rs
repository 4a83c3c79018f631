//! People as both faces change them: the store, plus what each change
//! leaves behind. Every create, update and delete, over RPC or HTTP, emits
//! its event (`person_created` and `person_updated` with the record,
//! `person_deleted` with `{"id": …}`) through the store's outbox, and an RPC
//! write records its correlation id so a redelivery is not applied twice.

use crate::domain::{DomainError, NewPerson, Page, Person, PersonChanges};
use crate::store::{Store, WriteMeta};
use rpc_core::Context;
use std::sync::Arc;

/// Where a change comes from: an RPC call (its context travels with the
/// event, its correlation id identifies a redelivery) or an HTTP request (a
/// fresh context, as nameko's HTTP entrypoints start with).
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    /// An RPC call.
    Rpc(&'a Context),
    /// An HTTP request.
    Http,
}

impl Origin<'_> {
    /// Awaits a write queued for the store's writer thread. Over RPC the
    /// call gives its `max_workers` slot back meanwhile
    /// ([`Context::off_worker`]): the write waits for a durable group
    /// commit (~2 ms), not for a worker, and holding the slot would cap
    /// the writes in one commit at `max_workers`.
    async fn waiting<F: std::future::Future>(self, write: F) -> F::Output {
        match self {
            Origin::Rpc(ctx) => ctx.off_worker(write).await,
            Origin::Http => write.await,
        }
    }
}

/// The person operations shared by the RPC and HTTP faces.
#[derive(Clone, Debug)]
pub struct People {
    store: Store,
    service: String,
}

impl People {
    /// People in `store`, whose events come from service `service`.
    pub fn new(store: Store, service: &str) -> Self {
        People {
            store,
            service: service.to_owned(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn meta(&self, origin: Origin<'_>) -> WriteMeta {
        match origin {
            Origin::Rpc(ctx) => WriteMeta {
                request_id: ctx.correlation_id().map(str::to_owned),
                event: Some(Arc::clone(ctx.propagated())),
            },
            Origin::Http => WriteMeta {
                request_id: None,
                event: Some(Arc::new(rpc_core::Propagated {
                    call_id_stack: vec![rpc_core::wire::new_call_id(&self.service, "http")],
                    data: Default::default(),
                })),
            },
        }
    }

    /// Adds a person.
    pub async fn create(
        &self,
        person: NewPerson,
        origin: Origin<'_>,
    ) -> Result<Person, DomainError> {
        let write = self.store.create(person, self.meta(origin));
        origin.waiting(write).await
    }

    /// Changes the given fields.
    pub async fn update(
        &self,
        id: i64,
        changes: PersonChanges,
        origin: Origin<'_>,
    ) -> Result<Person, DomainError> {
        let write = self.store.update(id, changes, self.meta(origin));
        origin.waiting(write).await
    }

    /// Removes a person.
    pub async fn delete(&self, id: i64, origin: Origin<'_>) -> Result<(), DomainError> {
        let write = self.store.delete(id, self.meta(origin));
        origin.waiting(write).await
    }

    /// One person.
    pub async fn get(&self, id: i64) -> Result<Person, DomainError> {
        self.store.get(id).await
    }

    /// A page of people in id order.
    pub async fn list(&self, page: Page) -> Result<Vec<Person>, DomainError> {
        self.store.list(page).await
    }
}
