//! Errors at each boundary of the library.
//!
//! * [`RpcError`]: what a handler returns; it becomes a reply's error object,
//!   so it carries nameko's `exc_type` / `exc_path` / args.
//! * [`RemoteError`]: an error object received in a reply.
//! * [`CallError`]: why a call made through an [`RpcProxy`](crate::RpcProxy)
//!   did not return a result.
//! * [`ConnectError`]: why the broker could not be reached.
//!
//! [`RpcError`] is about one call; a service that stops because it cannot
//! go on says why with [`ServiceError`](crate::ServiceError) instead.
//!
//! `?` on a [`CallError`] inside a handler turns it into the [`RpcError`]
//! nameko 2.14.1 would send if a Python service sat in the middle and did
//! not catch the exception: see [`RpcError::from`](#impl-From<CallError>-for-RpcError).

use crate::wire::{python, ErrorObject, WireError};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// `exc_path` values of the errors nameko clients know how to rebuild, and of
/// the ones this library adds.
pub mod exc_path {
    /// The routing key names a method the service does not have.
    pub const METHOD_NOT_FOUND: &str = "nameko.exceptions.MethodNotFound";
    /// The body lacks `args`/`kwargs` or is not JSON at all.
    pub const MALFORMED_REQUEST: &str = "nameko.exceptions.MalformedRequest";
    /// The arguments do not fit the method's parameters.
    pub const INCORRECT_SIGNATURE: &str = "nameko.exceptions.IncorrectSignature";
    /// The handler's result could not be serialised.
    pub const UNSERIALIZABLE_VALUE: &str = "nameko.exceptions.UnserializableValueError";
    /// An argument has the wrong JSON type for its parameter (this library's
    /// own; Python has no type checks, so nameko has no equivalent).
    pub const INVALID_ARGUMENT: &str = "rpc_core.exceptions.InvalidArgument";
    /// The handler panicked; the details are in the service's log only.
    pub const INTERNAL_ERROR: &str = "rpc_core.exceptions.InternalError";
    /// A remote error the caller's process has no class for (nameko's
    /// catch-all).
    pub const REMOTE_ERROR: &str = "nameko.exceptions.RemoteError";
    /// No queue is bound for the service called.
    pub const UNKNOWN_SERVICE: &str = "nameko.exceptions.UnknownService";
    /// No reply within the call's timeout.
    pub const RPC_TIMEOUT: &str = "nameko.exceptions.RpcTimeout";
    /// The connection to the broker failed during the call.
    pub const RPC_CONNECTION_ERROR: &str = "nameko.exceptions.RpcConnectionError";
}

/// An error returned by an RPC handler, sent to the caller as nameko's
/// four-key error object.
///
/// Application errors pick a stable `exc_type` and `exc_path`: a Python
/// client that registers a class under the same path (nameko's
/// `deserialize_to_instance`) gets a typed exception; any other client gets a
/// `RemoteError` carrying both.
///
/// ```
/// use rpc_core::RpcError;
/// let e = RpcError::new("PersonNotFound", "person.exceptions.PersonNotFound", vec![42.into()])
///     .with_value("person 42 not found");
/// assert_eq!(e.exc_type(), "PersonNotFound");
/// assert_eq!(e.to_error_object().exc_args, vec![serde_json::json!("42")]);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    exc_type: Cow<'static, str>,
    exc_path: Cow<'static, str>,
    args: Vec<Value>,
    value: Option<String>,
}

impl RpcError {
    /// An error with the exception's class name, its `module.Class` path and
    /// its args (kept as given here; stringified on the wire as nameko does).
    pub fn new(
        exc_type: impl Into<Cow<'static, str>>,
        exc_path: impl Into<Cow<'static, str>>,
        args: Vec<Value>,
    ) -> Self {
        RpcError {
            exc_type: exc_type.into(),
            exc_path: exc_path.into(),
            args,
            value: None,
        }
    }

    /// Overrides `value` (`str(exc)`), which otherwise follows Python's rule
    /// for the args.
    #[must_use]
    pub fn with_value(mut self, value: impl Into<String>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// nameko's `MethodNotFound(method)`.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            "MethodNotFound",
            exc_path::METHOD_NOT_FOUND,
            vec![method.into()],
        )
    }

    /// nameko's `MalformedRequest(message)`.
    pub fn malformed_request(message: impl Into<String>) -> Self {
        Self::new(
            "MalformedRequest",
            exc_path::MALFORMED_REQUEST,
            vec![Value::String(message.into())],
        )
    }

    /// nameko's `IncorrectSignature(message)`.
    pub fn incorrect_signature(message: impl Into<String>) -> Self {
        Self::new(
            "IncorrectSignature",
            exc_path::INCORRECT_SIGNATURE,
            vec![Value::String(message.into())],
        )
    }

    /// nameko's `UnserializableValueError`, whose args are empty.
    pub fn unserializable(detail: &str) -> Self {
        Self::new(
            "UnserializableValueError",
            exc_path::UNSERIALIZABLE_VALUE,
            vec![],
        )
        .with_value(format!("Unserializable value: `{detail}`"))
    }

    /// An argument of the wrong type: args are `[param, message]`.
    pub fn invalid_argument(method: &str, param: &str, message: &str) -> Self {
        Self::new(
            "InvalidArgument",
            exc_path::INVALID_ARGUMENT,
            vec![param.into(), message.into()],
        )
        .with_value(format!("{method}() argument '{param}': {message}"))
    }

    /// A failure inside the service that the caller cannot act on.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            "InternalError",
            exc_path::INTERNAL_ERROR,
            vec![Value::String(message.into())],
        )
    }

    /// The exception class name.
    pub fn exc_type(&self) -> &str {
        &self.exc_type
    }

    /// The `module.Class` path.
    pub fn exc_path(&self) -> &str {
        &self.exc_path
    }

    /// The args as given (before nameko's stringification).
    pub fn args(&self) -> &[Value] {
        &self.args
    }

    /// The error object this error is sent as.
    pub fn to_error_object(&self) -> ErrorObject {
        ErrorObject::new(
            &self.exc_type,
            &self.exc_path,
            &self.args,
            self.value.as_deref(),
        )
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}: {}", self.exc_type, v),
            None => write!(
                f,
                "{}: {}",
                self.exc_type,
                python::exception_str(&self.args)
            ),
        }
    }
}

impl std::error::Error for RpcError {}

/// An error object received in a reply: the remote exception, as nameko's
/// `RemoteError` keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteError {
    /// Exception class name, e.g. `PersonNotFound`.
    pub exc_type: String,
    /// `module.Class` path, e.g. `nameko.exceptions.MethodNotFound`.
    pub exc_path: String,
    /// The exception's args (strings, lists and objects after nameko's
    /// `safe_for_serialization`).
    pub exc_args: Vec<Value>,
    /// `str(exception)` on the remote side.
    pub value: String,
}

impl RemoteError {
    /// True when the remote exception is of class `exc_type`.
    pub fn is(&self, exc_type: &str) -> bool {
        self.exc_type == exc_type
    }
}

impl From<ErrorObject> for RemoteError {
    fn from(e: ErrorObject) -> Self {
        RemoteError {
            exc_type: e.exc_type,
            exc_path: e.exc_path,
            exc_args: e.exc_args,
            value: e.value,
        }
    }
}

impl fmt::Display for RemoteError {
    /// nameko's `RemoteError` text: `"{exc_type} {value}"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.exc_type, self.value)
    }
}

impl std::error::Error for RemoteError {}

/// Why a call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The remote method raised; the error object is kept whole.
    #[error("remote error: {0}")]
    Remote(RemoteError),
    /// No queue is bound for the service: the broker returned the request.
    #[error("Unknown service `{0}`")]
    UnknownService(String),
    /// No reply within the call's timeout. The proxy stays usable and a late
    /// reply is dropped.
    #[error("no reply from {service}.{method} within {timeout:?}")]
    Timeout {
        /// The service called.
        service: String,
        /// The method called.
        method: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The connection carrying this call died before its reply arrived. The
    /// request may or may not have been executed.
    #[error("connection to the broker was lost while waiting for {service}.{method}: {reason}")]
    ConnectionLost {
        /// The service called.
        service: String,
        /// The method called.
        method: String,
        /// What the connection reported.
        reason: String,
    },
    /// The proxy has no connection to publish on, and none came back within
    /// the call's timeout.
    #[error("not connected to the broker: {0}")]
    NotConnected(String),
    /// The broker refused the request (a nack or a channel error).
    #[error("the broker did not accept the request: {0}")]
    Publish(String),
    /// The reply could not be decoded, or its result did not have the type
    /// asked for.
    #[error("cannot decode the reply: {0}")]
    Decode(String),
    /// A service or method name the wire cannot carry.
    #[error("invalid call: {0}")]
    Invalid(#[from] WireError),
    /// An argument cannot be serialised as JSON (a typed client's
    /// argument with a map keyed by non-strings, say).
    #[error("an argument cannot be sent: {0}")]
    Encode(String),
    /// The proxy was closed.
    #[error("the proxy is closed")]
    Closed,
}

/// The classes nameko's client rebuilds from a reply (its built-in
/// registry); every other remote error arrives as `RemoteError`.
const NAMEKO_REGISTRY: [&str; 3] = [
    exc_path::MALFORMED_REQUEST,
    exc_path::METHOD_NOT_FOUND,
    exc_path::INCORRECT_SIGNATURE,
];

impl From<CallError> for RpcError {
    /// What a nameko 2.14.1 service sends its caller when a call it makes
    /// fails and it lets the exception through:
    ///
    /// * a remote error of a class in nameko's registry (`MethodNotFound`,
    ///   `IncorrectSignature`, `MalformedRequest`) as that class, its args
    ///   and value unchanged;
    /// * any other remote error as `RemoteError`, whose one arg and value
    ///   are `"{exc_type} {value}"` (`RemoteError PersonNotFound no person
    ///   with id 9`);
    /// * an unknown service as `UnknownService` (value ``Unknown service
    ///   `name` ``), a timeout as `RpcTimeout` (its seconds), a lost
    ///   connection as `RpcConnectionError`;
    /// * a reply that does not decode, or a call that could not be made, as
    ///   this library's `InternalError`.
    fn from(e: CallError) -> Self {
        match e {
            CallError::Remote(remote) if NAMEKO_REGISTRY.contains(&remote.exc_path.as_str()) => {
                RpcError::new(remote.exc_type, remote.exc_path, remote.exc_args)
                    .with_value(remote.value)
            }
            CallError::Remote(remote) => {
                let message = remote.to_string();
                RpcError::new(
                    "RemoteError",
                    exc_path::REMOTE_ERROR,
                    vec![Value::String(message.clone())],
                )
                .with_value(message)
            }
            CallError::UnknownService(service) => RpcError::new(
                "UnknownService",
                exc_path::UNKNOWN_SERVICE,
                vec![Value::String(service.clone())],
            )
            .with_value(format!("Unknown service `{service}`")),
            CallError::Timeout { timeout, .. } => {
                let seconds = python_seconds(timeout);
                RpcError::new(
                    "RpcTimeout",
                    exc_path::RPC_TIMEOUT,
                    vec![Value::String(seconds.clone())],
                )
                .with_value(seconds)
            }
            e @ (CallError::ConnectionLost { .. } | CallError::NotConnected(_)) => {
                let text = e.to_string();
                RpcError::new(
                    "RpcConnectionError",
                    exc_path::RPC_CONNECTION_ERROR,
                    vec![Value::String(text.clone())],
                )
                .with_value(text)
            }
            other => RpcError::internal(format!("a call to another service failed: {other}")),
        }
    }
}

/// Seconds as Python prints the number nameko's `RpcTimeout` holds: `10`
/// for a whole number, `2.5` otherwise.
fn python_seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        d.as_secs_f64().to_string()
    }
}

impl CallError {
    /// The remote error, when the call failed on the remote side.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            CallError::Remote(r) => Some(r),
            _ => None,
        }
    }
}

/// Why the broker could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The URI cannot be parsed. The text never contains the password.
    #[error("invalid AMQP URI: {0}")]
    InvalidUri(String),
    /// Every attempt failed; `endpoint` is `host:port` (of each broker of a
    /// list, joined by `, `).
    #[error("cannot connect to the broker at {endpoint}: {reason}")]
    Unreachable {
        /// `host:port` of the broker, or of each broker of the list.
        endpoint: String,
        /// The last error (of each broker of a list, `host:port: reason`).
        reason: String,
    },
    /// The broker accepted the connection but refused a declaration or a
    /// channel (for example a 406 on a queue declared with other flags).
    #[error("broker refused {what}: {reason}")]
    Refused {
        /// What was being set up.
        what: String,
        /// What the broker said.
        reason: String,
    },
    /// Shutdown was requested while connecting.
    #[error("shutdown requested while connecting")]
    Shutdown,
    /// A name to declare does not fit AMQP (a short string: 255 bytes at
    /// most), e.g. the reply queue of a very long service name. Found
    /// before connecting.
    #[error("{what} cannot be declared: {reason}")]
    InvalidName {
        /// Which name.
        what: String,
        /// Why the wire cannot carry it.
        reason: String,
    },
}
