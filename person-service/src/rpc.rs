//! The RPC face: person-api's [`PersonService`] over the domain rules and
//! the store. The contract (methods, parameters, defaults, records, error
//! paths) is person-api's; this is only how each method is answered.
//!
//! | method | returns |
//! |---|---|
//! | `create(first_name, last_name, age, member=False)` | the new id |
//! | `get(id)` | the record |
//! | `list(limit=None, after_id=None)` | records in id order |
//! | `update(id, first_name=None, last_name=None, age=None, member=None)` | the updated record |
//! | `delete(id)` | `None` |
//!
//! Each change dispatches `person_created`, `person_updated` or
//! `person_deleted` from this service once committed (see [`crate::people`]).

use crate::domain::{DomainError, NewPerson, Page, Person, PersonChanges};
use crate::people::{Origin, People};
use person_api::PersonService;
use rpc_core::{Context, RpcError, ServiceBuilder, Value};

pub use person_api::exc_path;

impl From<DomainError> for RpcError {
    fn from(e: DomainError) -> Self {
        match &e {
            DomainError::NotFound(id) => RpcError::new(
                "PersonNotFound",
                exc_path::PERSON_NOT_FOUND,
                vec![Value::from(*id)],
            )
            .with_value(e.to_string()),
            DomainError::Invalid { field, message } => person_api::validation_error(field, message),
            DomainError::Storage => RpcError::new(
                "StorageError",
                exc_path::STORAGE_ERROR,
                vec![Value::from(e.to_string())],
            ),
        }
    }
}

/// The person methods over `people`.
pub struct PersonRpc {
    people: People,
}

impl PersonRpc {
    /// The methods over `people`.
    pub fn new(people: People) -> Self {
        PersonRpc { people }
    }
}

impl PersonService for PersonRpc {
    async fn create(
        &self,
        ctx: &Context,
        first_name: String,
        last_name: String,
        age: i64,
        member: bool,
    ) -> Result<i64, RpcError> {
        let person = NewPerson::new(first_name, last_name, age, member)?;
        Ok(self.people.create(person, Origin::Rpc(ctx)).await?.id)
    }

    async fn get(&self, id: i64) -> Result<Person, RpcError> {
        Ok(self.people.get(id).await?)
    }

    async fn list(
        &self,
        limit: Option<i64>,
        after_id: Option<i64>,
    ) -> Result<Vec<Person>, RpcError> {
        Ok(self.people.list(Page::new(limit, after_id)?).await?)
    }

    async fn update(
        &self,
        ctx: &Context,
        id: i64,
        first_name: Option<String>,
        last_name: Option<String>,
        age: Option<i64>,
        member: Option<bool>,
    ) -> Result<Person, RpcError> {
        let changes = PersonChanges::new(first_name, last_name, age, member)?;
        Ok(self.people.update(id, changes, Origin::Rpc(ctx)).await?)
    }

    async fn delete(&self, ctx: &Context, id: i64) -> Result<(), RpcError> {
        Ok(self.people.delete(id, Origin::Rpc(ctx)).await?)
    }
}

/// The person methods on a service called `name`. Further entrypoints can
/// be added to the returned builder.
pub fn service(name: &str, people: People) -> ServiceBuilder {
    PersonRpc::new(people).into_service_builder(name)
}
