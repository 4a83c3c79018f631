//! Not API: what the code `#[service]` expands to calls. Each check is a
//! function with the bound the builder needs, called with the user's type
//! and spanned on it, so that a type that does not fit is reported where it
//! is written instead of deep inside the expansion.

/// A method's result must be serialisable.
pub fn assert_result<T: serde::Serialize>() {}

/// A method's error must convert into what its caller is sent.
pub fn assert_rpc_error<E: Into<crate::RpcError>>() {}

/// A parameter must be deserialisable from its JSON argument.
pub fn assert_param<T: serde::de::DeserializeOwned + Send + 'static>() {}

/// A timer or event handler returns nothing on success.
pub fn assert_unit<T: IsUnit>() {}

/// A timer's or event handler's error is logged.
pub fn assert_display<E: std::fmt::Display>() {}

/// `()`, the only success a timer or event handler has.
pub trait IsUnit {}
impl IsUnit for () {}
