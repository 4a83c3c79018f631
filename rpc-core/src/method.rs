//! Registering typed methods: mapping a request's `args` and `kwargs` onto
//! named parameters the way Python binds a call, then each parameter onto its
//! Rust type with serde.
//!
//! Binding follows `inspect.getcallargs`, which is what nameko runs before a
//! worker starts, and produces the same `IncorrectSignature` texts
//! (`add() missing 1 required positional argument: 'b'`). A value of the wrong
//! type for its parameter is an [`ArgumentError`] naming the parameter.

use crate::context::Context;
use crate::error::RpcError;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::future::Future;
use std::sync::Arc;

/// The parameters of a method, in order, with defaults for optional ones.
///
/// ```
/// use rpc_core::Signature;
/// let sig = Signature::new().param("first_name").param("age").optional("member", false);
/// let bound = sig.bind("create", vec!["Ada".into()], serde_json::json!({"age": 36}).as_object().unwrap().clone());
/// assert_eq!(bound.unwrap(), vec![serde_json::json!("Ada"), 36.into(), false.into()]);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signature {
    params: Vec<Param>,
}

#[derive(Clone, Debug, PartialEq)]
struct Param {
    name: String,
    default: Option<Value>,
}

impl Signature {
    /// A method without parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a required parameter.
    #[must_use]
    pub fn param(mut self, name: &str) -> Self {
        self.params.push(Param {
            name: name.to_owned(),
            default: None,
        });
        self
    }

    /// Adds an optional parameter that takes `default` when not given.
    ///
    /// # Panics
    /// If `default` cannot be represented as JSON (a map with non-string
    /// keys, for instance): a programming error, caught at start-up.
    #[must_use]
    pub fn optional<T: Serialize>(mut self, name: &str, default: T) -> Self {
        let default = match serde_json::to_value(default) {
            Ok(v) => v,
            Err(e) => panic!("default of parameter {name} is not JSON: {e}"),
        };
        self.params.push(Param {
            name: name.to_owned(),
            default: Some(default),
        });
        self
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether the method takes no parameters.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Parameter names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// Binds a call's arguments to the parameters, Python-style: positional
    /// first, then keywords, then defaults. Returns one value per parameter,
    /// or the `IncorrectSignature` error Python would raise.
    pub fn bind(
        &self,
        method: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<Vec<Value>, RpcError> {
        let n = self.params.len();
        if args.len() > n {
            // Python counts the method's `self` in this message (and only in
            // this one), so a nameko client sees the same text from a Rust
            // service as from a Python one.
            let required = self.params.iter().filter(|p| p.default.is_none()).count() + 1;
            let total = n + 1;
            let takes = if required == total {
                format!("{total} positional argument{}", plural(total))
            } else {
                format!("from {required} to {total} positional arguments")
            };
            let given = args.len() + 1;
            let verb = if given == 1 { "was" } else { "were" };
            return Err(RpcError::incorrect_signature(format!(
                "{method}() takes {takes} but {given} {verb} given"
            )));
        }
        let mut slots: Vec<Option<Value>> = Vec::with_capacity(n);
        slots.extend(args.into_iter().map(Some));
        slots.resize(n, None);
        for (key, value) in kwargs {
            let Some(i) = self.params.iter().position(|p| p.name == key) else {
                return Err(RpcError::incorrect_signature(format!(
                    "{method}() got an unexpected keyword argument '{key}'"
                )));
            };
            if slots[i].is_some() {
                return Err(RpcError::incorrect_signature(format!(
                    "{method}() got multiple values for argument '{key}'"
                )));
            }
            slots[i] = Some(value);
        }
        let missing: Vec<&str> = self
            .params
            .iter()
            .zip(&slots)
            .filter(|(p, s)| s.is_none() && p.default.is_none())
            .map(|(p, _)| p.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(RpcError::incorrect_signature(format!(
                "{method}() missing {} required positional argument{}: {}",
                missing.len(),
                plural(missing.len()),
                python_name_list(&missing)
            )));
        }
        Ok(slots
            .into_iter()
            .zip(&self.params)
            .map(|(slot, p)| slot.or_else(|| p.default.clone()).unwrap_or(Value::Null))
            .collect())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `'a'`, `'a' and 'b'`, `'a', 'b', and 'c'`: CPython's wording.
fn python_name_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    match quoted.len() {
        1 => quoted[0].clone(),
        2 => format!("{} and {}", quoted[0], quoted[1]),
        k => format!("{}, and {}", quoted[..k - 1].join(", "), quoted[k - 1]),
    }
}

/// A value that does not deserialise into its parameter's type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{method}() argument '{param}': {message}")]
pub struct ArgumentError {
    /// The method called.
    pub method: String,
    /// The parameter whose value was refused.
    pub param: String,
    /// serde's description, e.g. `invalid type: string "x", expected u8`.
    pub message: String,
}

/// A tuple of parameter types, deserialised one parameter at a time so that
/// an error names the parameter. Implemented for `()` and tuples of up to 12
/// elements; use `(T,)` for one parameter.
pub trait FromArgs: Sized + Send + 'static {
    /// Number of parameters.
    const ARITY: usize;
    /// Converts the bound values (one per parameter, in order).
    fn from_args(method: &str, names: &[String], values: Vec<Value>)
        -> Result<Self, ArgumentError>;
}

impl FromArgs for () {
    const ARITY: usize = 0;
    fn from_args(_: &str, _: &[String], _: Vec<Value>) -> Result<Self, ArgumentError> {
        Ok(())
    }
}

fn take_arg<T: DeserializeOwned>(
    method: &str,
    names: &[String],
    index: usize,
    values: &mut std::vec::IntoIter<Value>,
) -> Result<T, ArgumentError> {
    let value = values.next().unwrap_or(Value::Null);
    serde_json::from_value(value).map_err(|e| ArgumentError {
        method: method.to_owned(),
        param: names.get(index).cloned().unwrap_or_default(),
        message: e.to_string(),
    })
}

macro_rules! impl_from_args {
    ($n:expr; $($t:ident $i:tt),+) => {
        impl<$($t: DeserializeOwned + Send + 'static),+> FromArgs for ($($t,)+) {
            const ARITY: usize = $n;
            fn from_args(method: &str, names: &[String], values: Vec<Value>) -> Result<Self, ArgumentError> {
                let mut it = values.into_iter();
                Ok(($(take_arg::<$t>(method, names, $i, &mut it)?,)+))
            }
        }
    };
}

impl_from_args!(1; A 0);
impl_from_args!(2; A 0, B 1);
impl_from_args!(3; A 0, B 1, C 2);
impl_from_args!(4; A 0, B 1, C 2, D 3);
impl_from_args!(5; A 0, B 1, C 2, D 3, E 4);
impl_from_args!(6; A 0, B 1, C 2, D 3, E 4, F 5);
impl_from_args!(7; A 0, B 1, C 2, D 3, E 4, F 5, G 6);
impl_from_args!(8; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
impl_from_args!(9; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
impl_from_args!(10; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
impl_from_args!(11; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
impl_from_args!(12; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);

/// Why a handler produced no result.
#[derive(Debug)]
pub(crate) enum HandlerFailure {
    Argument(ArgumentError),
    Raised(RpcError),
    Unserializable(String),
}

pub(crate) type ErasedHandler = Arc<
    dyn Fn(Context, Vec<Value>) -> BoxFuture<'static, Result<Vec<u8>, HandlerFailure>>
        + Send
        + Sync,
>;

/// A registered method: its signature and its type-erased handler, which
/// returns the encoded reply body so the result is serialised only once.
#[derive(Clone)]
pub(crate) struct Method {
    pub(crate) signature: Signature,
    pub(crate) handler: ErasedHandler,
}

impl Method {
    pub(crate) fn new<Args, R, E, F, Fut>(name: &str, signature: Signature, handler: F) -> Self
    where
        Args: FromArgs,
        F: Fn(Context, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<RpcError> + Send + 'static,
    {
        assert_eq!(
            signature.len(),
            Args::ARITY,
            "method {name}: the signature names {} parameters but the handler takes {}",
            signature.len(),
            Args::ARITY
        );
        let names: Arc<[String]> = signature.names().map(str::to_owned).collect();
        let method_name: Arc<str> = Arc::from(name);
        let handler = Arc::new(handler);
        let erased: ErasedHandler = Arc::new(move |ctx: Context, values: Vec<Value>| {
            let args = Args::from_args(&method_name, &names, values);
            let handler = Arc::clone(&handler);
            async move {
                let args = args.map_err(HandlerFailure::Argument)?;
                let result = handler(ctx, args)
                    .await
                    .map_err(|e| HandlerFailure::Raised(e.into()))?;
                crate::wire::encode_ok_reply(&result)
                    .map_err(|e| HandlerFailure::Unserializable(e.to_string()))
            }
            .boxed()
        });
        Method {
            signature,
            handler: erased,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kw(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn sig() -> Signature {
        Signature::new().param("a").param("b").optional("c", 1)
    }

    fn err(r: Result<Vec<Value>, RpcError>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.exc_type(), "IncorrectSignature");
        e.to_error_object().value
    }

    #[test]
    fn binds_like_python() {
        assert_eq!(
            sig()
                .bind("f", vec![json!(1), json!(2)], kw(json!({})))
                .unwrap(),
            vec![json!(1), json!(2), json!(1)]
        );
        assert_eq!(
            sig()
                .bind("f", vec![json!(1)], kw(json!({"b": 5, "c": 9})))
                .unwrap(),
            vec![json!(1), json!(5), json!(9)]
        );
        assert_eq!(
            sig()
                .bind("f", vec![], kw(json!({"b": 5, "a": 4})))
                .unwrap(),
            vec![json!(4), json!(5), json!(1)]
        );
    }

    #[test]
    fn python_error_texts() {
        assert_eq!(
            err(sig().bind("f", vec![json!(1)], kw(json!({})))),
            "f() missing 1 required positional argument: 'b'"
        );
        assert_eq!(
            err(sig().bind("f", vec![], kw(json!({})))),
            "f() missing 2 required positional arguments: 'a' and 'b'"
        );
        let three = Signature::new().param("a").param("b").param("c");
        assert_eq!(
            err(three.bind("g", vec![], kw(json!({})))),
            "g() missing 3 required positional arguments: 'a', 'b', and 'c'"
        );
        assert_eq!(
            err(sig().bind("f", vec![json!(1), json!(2)], kw(json!({"d": 1})))),
            "f() got an unexpected keyword argument 'd'"
        );
        assert_eq!(
            err(sig().bind("f", vec![json!(1), json!(2)], kw(json!({"a": 1})))),
            "f() got multiple values for argument 'a'"
        );
        assert_eq!(
            err(sig().bind(
                "f",
                vec![json!(1), json!(2), json!(3), json!(4)],
                kw(json!({}))
            )),
            "f() takes from 3 to 4 positional arguments but 5 were given"
        );
        assert_eq!(
            err(Signature::new()
                .param("x")
                .bind("h", vec![json!(1), json!(2)], kw(json!({})))),
            "h() takes 2 positional arguments but 3 were given"
        );
        assert_eq!(
            err(Signature::new().bind("k", vec![json!(1)], kw(json!({})))),
            "k() takes 1 positional argument but 2 were given"
        );
    }

    #[test]
    fn typed_conversion_names_the_parameter() {
        let names = vec!["id".to_owned(), "name".to_owned()];
        let ok = <(i64, String)>::from_args("get", &names, vec![json!(7), json!("x")]).unwrap();
        assert_eq!(ok, (7, "x".to_owned()));
        let e = <(i64, String)>::from_args("get", &names, vec![json!(7), json!(5)]).unwrap_err();
        assert_eq!(e.param, "name");
        assert!(e.message.contains("expected a string"), "{}", e.message);
        let opt = <(Option<i64>,)>::from_args("m", &names[..1], vec![Value::Null]).unwrap();
        assert_eq!(opt, (None,));
    }
}
