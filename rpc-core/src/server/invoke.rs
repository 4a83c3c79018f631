//! One request's work, without the transport: decode the body, find the
//! method, bind the arguments, run the handler and encode its result. The
//! AMQP side ([`super::rpc_call`]) and the in-process test harness
//! ([`crate::testing::LocalService`]) both go through here, so a test sees
//! exactly the binding, validation and error objects a remote caller gets.

use super::builder::ServiceDef;
use crate::context::Context;
use crate::error::RpcError;
use crate::method::{HandlerFailure, Method};
use crate::wire;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;

/// The method a request names, and the service's registration of it if it
/// has one: looked up once, by the caller, who needs it for its label too.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) method: &'a str,
    pub(crate) entry: Option<&'a Method>,
}

impl<'a> Target<'a> {
    pub(crate) fn find(def: &'a ServiceDef, method: &'a str) -> Self {
        Target {
            method,
            entry: def.methods.get(method),
        }
    }
}

/// Runs the request, or says why it cannot run: the reply body, or the
/// error with a flag telling an error the handler raised (expected) from
/// one about the request itself.
pub(crate) async fn invoke(
    def: &ServiceDef,
    ctx: &Context,
    Target { method, entry }: Target<'_>,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
    max_request_bytes: usize,
) -> Result<Vec<u8>, (RpcError, bool)> {
    let request = wire::decode_request(content_type, content_encoding, body, max_request_bytes)
        .map_err(|e| (RpcError::malformed_request(e.to_string()), false))?;
    let entry = entry.ok_or_else(|| (RpcError::method_not_found(method), false))?;
    let values = entry
        .signature
        .bind(method, request.args, request.kwargs)
        .map_err(|e| (e, false))?;
    match AssertUnwindSafe((entry.handler)(ctx.clone(), values))
        .catch_unwind()
        .await
    {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(HandlerFailure::Raised(e))) => Err((e, true)),
        Ok(Err(HandlerFailure::Argument(e))) => Err(((def.on_invalid_argument)(&e), false)),
        Ok(Err(HandlerFailure::Unserializable(detail))) => {
            tracing::error!(detail = %detail, "the method's result cannot be serialised");
            Err((RpcError::unserializable(&detail), false))
        }
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %text, "the method panicked");
            Err((
                RpcError::internal(
                    "the method failed unexpectedly; the service log has the details",
                ),
                false,
            ))
        }
    }
}
