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

/// A timer's interval: seconds (an integer or a float) or a `Duration`.
pub fn interval(every: impl IntoInterval) -> std::time::Duration {
    every.into_interval()
}

/// What `#[timer(interval = ...)]` accepts.
pub trait IntoInterval {
    /// The interval as a duration.
    fn into_interval(self) -> std::time::Duration;
}

impl IntoInterval for std::time::Duration {
    fn into_interval(self) -> std::time::Duration {
        self
    }
}

macro_rules! seconds {
    ($($t:ty),*) => {$(
        impl IntoInterval for $t {
            fn into_interval(self) -> std::time::Duration {
                let seconds = self as f64;
                std::time::Duration::try_from_secs_f64(seconds).unwrap_or_else(|_| {
                    panic!("a timer interval is a positive number of seconds, not {seconds}")
                })
            }
        }
    )*};
}
seconds!(i32, i64, u32, u64, usize, f32, f64);
