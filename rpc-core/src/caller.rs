//! Typed clients: the [`Caller`] they call through, and how they lay out
//! a call's arguments.
//!
//! [`macro@crate::service`] and [`macro@crate::client`] generate a client
//! per service (`GreeterClient<C>`), generic over a [`Caller`]:
//! * [`RpcProxy`](crate::RpcProxy) for standalone calls;
//! * [`ContextProxy`](crate::ContextProxy) (from `ctx.rpc()`) inside a
//!   handler, so the call-id stack and the context data travel with the
//!   call (and a [`LocalService`](crate::testing::LocalService) answers
//!   them from its stubs).
//!
//! A generated client sends the arguments as a Python caller would write
//! them: positionally, in order, until the first optional parameter left
//! out; after that, by keyword. An optional parameter that is `None` is not
//! sent at all, so the server's default applies, whatever it is.

use crate::error::CallError;
use crate::proxy::{Args, PendingCall};
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;

/// Something calls can be made through: what a typed client needs.
pub trait Caller: Send + Sync {
    /// Publishes `service.method(args)` and returns once the broker (or
    /// the stub) has taken it; the result is collected from the
    /// [`PendingCall`].
    fn call_async(
        &self,
        service: &str,
        method: &str,
        args: Args,
    ) -> impl Future<Output = Result<PendingCall, CallError>> + Send;
}

impl Caller for crate::RpcProxy {
    fn call_async(
        &self,
        service: &str,
        method: &str,
        args: Args,
    ) -> impl Future<Output = Result<PendingCall, CallError>> + Send {
        crate::RpcProxy::call_async(self, service, method, args)
    }
}

impl Caller for crate::ContextProxy {
    fn call_async(
        &self,
        service: &str,
        method: &str,
        args: Args,
    ) -> impl Future<Output = Result<PendingCall, CallError>> + Send {
        crate::ContextProxy::call_async(self, service, method, args)
    }
}

impl<C: Caller + ?Sized> Caller for &C {
    fn call_async(
        &self,
        service: &str,
        method: &str,
        args: Args,
    ) -> impl Future<Output = Result<PendingCall, CallError>> + Send {
        (**self).call_async(service, method, args)
    }
}

impl<C: Caller + ?Sized> Caller for Arc<C> {
    fn call_async(
        &self,
        service: &str,
        method: &str,
        args: Args,
    ) -> impl Future<Output = Result<PendingCall, CallError>> + Send {
        (**self).call_async(service, method, args)
    }
}

/// The arguments of a typed call, laid out as the module docs say. Used by
/// generated clients; public so that hand-written ones can do the same.
#[derive(Debug, Default)]
pub struct CallArgs {
    args: Args,
    keywords_only: bool,
}

impl CallArgs {
    /// No arguments yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A parameter the call always sends.
    pub fn required<T: Serialize + ?Sized>(self, name: &str, value: &T) -> Result<Self, CallError> {
        let value =
            serde_json::to_value(value).map_err(|e| CallError::Encode(format!("{name}: {e}")))?;
        Ok(self.push(name, value))
    }

    /// A parameter with a default on the server: sent when `Some`, left
    /// out when `None`.
    pub fn optional<T: Serialize>(self, name: &str, value: Option<&T>) -> Result<Self, CallError> {
        match value {
            Some(value) => self.required(name, value),
            None => Ok(CallArgs {
                keywords_only: true,
                ..self
            }),
        }
    }

    fn push(self, name: &str, value: serde_json::Value) -> Self {
        let args = if self.keywords_only {
            self.args.kwarg(name, value)
        } else {
            self.args.arg(value)
        };
        CallArgs { args, ..self }
    }

    /// The finished arguments.
    pub fn finish(self) -> Args {
        self.args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn positional_until_the_first_gap_then_keywords() {
        let args = CallArgs::new()
            .required("id", &7)
            .and_then(|a| a.optional("first_name", Some(&"Ada")))
            .and_then(|a| a.optional::<String>("last_name", None))
            .and_then(|a| a.optional("age", Some(&36)))
            .unwrap()
            .finish();
        assert_eq!(args.positional_args(), &[json!(7), json!("Ada")]);
        assert_eq!(
            serde_json::Value::Object(args.keyword_args().clone()),
            json!({"age": 36})
        );
    }

    #[test]
    fn an_unserialisable_argument_is_an_error_naming_it() {
        let mut map = std::collections::HashMap::new();
        map.insert((1, 2), 3);
        let err = CallArgs::new().required("weights", &map).unwrap_err();
        assert!(
            matches!(&err, CallError::Encode(m) if m.starts_with("weights:")),
            "{err}"
        );
    }
}
