//! The RPC face: person methods on an rpc-core service, thin over the
//! domain rules and the store.
//!
//! | method | returns |
//! |---|---|
//! | `create(first_name, last_name, age, member=False)` | the new id |
//! | `get(id)` | the record |
//! | `list(limit=None, after_id=None)` | records in id order |
//! | `update(id, first_name=None, last_name=None, age=None, member=None)` | the updated record |
//! | `delete(id)` | `None` |
//!
//! Errors have stable `exc_type` / `exc_path` values (see [`exc_path`]).
//! Each change dispatches `person_created`, `person_updated` or
//! `person_deleted` from this service once committed (see [`crate::people`]).

use crate::domain::{DomainError, NewPerson, Page, PersonChanges};
use crate::people::{Origin, People};
use rpc_core::{Context, RpcError, Service, ServiceBuilder, Signature, Value};

/// `exc_path` of each error this service sends. A Python client can
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

impl From<DomainError> for RpcError {
    fn from(e: DomainError) -> Self {
        match &e {
            DomainError::NotFound(id) => RpcError::new(
                "PersonNotFound",
                exc_path::PERSON_NOT_FOUND,
                vec![Value::from(*id)],
            )
            .with_value(e.to_string()),
            DomainError::Invalid { field, message } => RpcError::new(
                "ValidationError",
                exc_path::VALIDATION_ERROR,
                vec![Value::from(field.as_str()), Value::from(message.as_str())],
            )
            .with_value(e.to_string()),
            DomainError::Storage => RpcError::new(
                "StorageError",
                exc_path::STORAGE_ERROR,
                vec![Value::from(e.to_string())],
            ),
        }
    }
}

/// serde's type complaints, in the words the rest of the API uses (every
/// integer parameter is an `i64`).
fn type_message(serde_message: &str) -> String {
    serde_message.replace("expected i64", "expected an integer")
}

/// The person methods on a service called `name`. Further entrypoints can
/// be added to the returned builder.
pub fn service(name: &str, people: People) -> ServiceBuilder {
    let (s1, s2, s3, s4, s5) = (
        people.clone(),
        people.clone(),
        people.clone(),
        people.clone(),
        people,
    );
    Service::builder(name)
        .on_invalid_argument(|e| DomainError::invalid(&e.param, type_message(&e.message)).into())
        .method(
            "create",
            Signature::new()
                .param("first_name")
                .param("last_name")
                .param("age")
                .optional("member", false),
            move |ctx: Context,
                  (first_name, last_name, age, member): (String, String, i64, bool)| {
                let people = s1.clone();
                async move {
                    let person = people
                        .create(
                            NewPerson::new(first_name, last_name, age, member)?,
                            Origin::Rpc(&ctx),
                        )
                        .await?;
                    Ok::<_, DomainError>(person.id)
                }
            },
        )
        .method(
            "get",
            Signature::new().param("id"),
            move |_ctx: Context, (id,): (i64,)| {
                let people = s2.clone();
                async move { people.get(id).await }
            },
        )
        .method(
            "list",
            Signature::new()
                .optional("limit", Value::Null)
                .optional("after_id", Value::Null),
            move |_ctx: Context, (limit, after_id): (Option<i64>, Option<i64>)| {
                let people = s3.clone();
                async move { people.list(Page::new(limit, after_id)?).await }
            },
        )
        .method(
            "update",
            Signature::new()
                .param("id")
                .optional("first_name", Value::Null)
                .optional("last_name", Value::Null)
                .optional("age", Value::Null)
                .optional("member", Value::Null),
            move |ctx: Context,
                  (id, first_name, last_name, age, member): (
                i64,
                Option<String>,
                Option<String>,
                Option<i64>,
                Option<bool>,
            )| {
                let people = s4.clone();
                async move {
                    people
                        .update(
                            id,
                            PersonChanges::new(first_name, last_name, age, member)?,
                            Origin::Rpc(&ctx),
                        )
                        .await
                }
            },
        )
        .method(
            "delete",
            Signature::new().param("id"),
            move |ctx: Context, (id,): (i64,)| {
                let people = s5.clone();
                async move { people.delete(id, Origin::Rpc(&ctx)).await }
            },
        )
}
