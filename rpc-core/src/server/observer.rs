//! Hooks that watch every call a service runs.

use crate::error::RpcError;
use std::time::Duration;

/// How a call ended, for a [`CallObserver`].
#[derive(Clone, Copy, Debug)]
pub enum CallOutcome<'a> {
    /// The method returned a result.
    Ok,
    /// The method raised this error (an application error).
    Raised(&'a RpcError),
    /// The request never reached the method (malformed, unknown method,
    /// wrong signature or argument types), or the method panicked.
    Refused(&'a RpcError),
}

/// Watches every call a service runs: for metrics, auditing or tracing
/// exports. Called on the call's task, so keep it cheap.
///
/// `method` is the registered method's name, or `"<unknown>"` when the
/// request named no such method, so a label built from it stays bounded.
pub trait CallObserver: Send + Sync + 'static {
    /// A request arrived and is about to be handled.
    fn started(&self, method: &str) {
        let _ = method;
    }
    /// The call finished (before its reply is published).
    fn finished(&self, method: &str, outcome: CallOutcome<'_>, elapsed: Duration) {
        let _ = (method, outcome, elapsed);
    }
}

/// Name reported for requests to methods that do not exist.
pub const UNKNOWN_METHOD: &str = "<unknown>";
