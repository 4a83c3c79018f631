//! The person service's contract, apart from its implementation: what
//! [`PersonService`] takes and returns, the events it dispatches, the
//! errors it raises, and the typed client callers use, [`PersonClient`].
//!
//! person-service implements the trait (over its store); test-service and
//! any other Rust caller depend on this crate alone, so they get a client
//! checked by the compiler against the server's own definition, without
//! SQLite or PostgreSQL.
//!
//! ```no_run
//! use person_api::PersonClient;
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = rpc_core::RpcProxy::connect(rpc_core::Config::default()).await?;
//! let people = PersonClient::new(proxy);
//! let id = people.create("Ada".into(), "Lovelace".into(), 36, Some(true)).await?;
//! let ada = people.get(id).await?;
//! assert!(ada.member);
//! # Ok(()) }
//! ```

use rpc_core::method::ArgumentError;
use rpc_core::{Context, RpcError, Value};
use serde::{Deserialize, Serialize};

/// A stored person, as every method and event carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Assigned by the store; never reused after a delete.
    pub id: i64,
    /// First name, 1 to 100 characters.
    pub first_name: String,
    /// Last name, 1 to 100 characters.
    pub last_name: String,
    /// Age in years, 0 to 150.
    pub age: i64,
    /// Club member.
    pub member: bool,
}

/// The data of a `person_deleted` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonDeleted {
    /// The id that was deleted.
    pub id: i64,
}

/// The events the service dispatches (from `{service}.events`) once a
/// change is committed.
pub mod events {
    /// A person was created; the data is the [`Person`](crate::Person).
    pub const PERSON_CREATED: &str = "person_created";
    /// A person was changed; the data is the [`Person`](crate::Person) as
    /// stored afterwards.
    pub const PERSON_UPDATED: &str = "person_updated";
    /// A person was deleted; the data is a
    /// [`PersonDeleted`](crate::PersonDeleted).
    pub const PERSON_DELETED: &str = "person_deleted";
}

/// `exc_path` of each error the service sends. A Python client can
/// register classes under these paths (nameko's `deserialize_to_instance`)
/// to get typed exceptions; other clients see a RemoteError with them.
pub mod exc_path {
    /// No person has the id. `exc_args`: `[id]`.
    pub const PERSON_NOT_FOUND: &str = "person_service.exceptions.PersonNotFound";
    /// A field breaks a rule or has the wrong type. `exc_args`: `[field, message]`.
    pub const VALIDATION_ERROR: &str = "person_service.exceptions.ValidationError";
    /// The database failed. `exc_args`: `[message]`.
    pub const STORAGE_ERROR: &str = "person_service.exceptions.StorageError";
}

/// A `ValidationError` naming `field`: what the service raises for a field
/// that breaks a rule.
pub fn validation_error(field: &str, message: &str) -> RpcError {
    RpcError::new(
        "ValidationError",
        exc_path::VALIDATION_ERROR,
        vec![Value::from(field), Value::from(message)],
    )
    .with_value(format!("{field}: {message}"))
}

/// An argument of the wrong JSON type is a `ValidationError` naming it, in
/// the words the rest of the API uses (every integer parameter is an `i64`).
pub fn invalid_argument(e: &ArgumentError) -> RpcError {
    validation_error(
        &e.param,
        &e.message.replace("expected i64", "expected an integer"),
    )
}

/// The person service: what its RPC methods take and return.
#[rpc_core::service(name = "person", client = PersonClient, on_invalid_argument = crate::invalid_argument)]
pub trait PersonService {
    /// Stores a new person and returns its id. Python:
    /// `create(first_name, last_name, age, member=False)`.
    #[rpc]
    async fn create(
        &self,
        ctx: &Context,
        first_name: String,
        last_name: String,
        age: i64,
        #[default(false)] member: bool,
    ) -> Result<i64, RpcError>;

    /// One person, or `PersonNotFound`.
    #[rpc]
    async fn get(&self, id: i64) -> Result<Person, RpcError>;

    /// People in id order: at most `limit` (1 to 10,000), after `after_id`
    /// (the last id of the previous page).
    #[rpc]
    async fn list(
        &self,
        limit: Option<i64>,
        after_id: Option<i64>,
    ) -> Result<Vec<Person>, RpcError>;

    /// Changes the given fields only, and returns the person as stored.
    #[rpc]
    async fn update(
        &self,
        ctx: &Context,
        id: i64,
        first_name: Option<String>,
        last_name: Option<String>,
        age: Option<i64>,
        member: Option<bool>,
    ) -> Result<Person, RpcError>;

    /// Removes a person, or raises `PersonNotFound`.
    #[rpc]
    async fn delete(&self, ctx: &Context, id: i64) -> Result<(), RpcError>;
}
