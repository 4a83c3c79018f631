//! The nameko 2.x wire format, and nothing else: names of exchanges and
//! queues, request / reply / event bodies, the four-key error object, message
//! properties and `nameko.*` headers. Pure functions with no I/O, so every
//! rule here is unit-tested against messages captured from real nameko
//! (`tests/golden.rs`). Section numbers refer to `nameko-wire.md`.

pub mod headers;
pub mod json;
pub mod python;

use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use headers::{read_context, write_context, IncomingContext, CALL_ID_STACK, HEADER_PREFIX};

/// Default RPC exchange (config key `rpc_exchange`).
pub const DEFAULT_RPC_EXCHANGE: &str = "nameko-rpc";
/// The only serialisation nameko peers are configured with by default.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Content encoding of every JSON message.
pub const UTF8: &str = "utf-8";
/// Reply queues expire after five idle minutes (`x-expires`, ms).
pub const REPLY_QUEUE_EXPIRES_MS: i32 = 300_000;
/// Service name standalone proxies use in their call ids and queue names.
pub const STANDALONE_PROXY: &str = "standalone_rpc_proxy";
/// Entrypoint name standalone proxies use in their call ids.
pub const STANDALONE_PROXY_METHOD: &str = "call";
/// AMQP delivery mode of a persistent message.
pub const PERSISTENT: u8 = 2;
/// AMQP delivery mode of a transient message.
pub const TRANSIENT: u8 = 1;

/// `rpc-{service}`: the durable queue a service consumes requests from (§3).
pub fn rpc_queue(service: &str) -> String {
    format!("rpc-{service}")
}

/// `{service}.*`: how `rpc-{service}` is bound to the RPC exchange.
pub fn rpc_binding_key(service: &str) -> String {
    format!("{service}.*")
}

/// `{service}.{method}`: the routing key of a request.
pub fn routing_key(service: &str, method: &str) -> String {
    format!("{service}.{method}")
}

/// `rpc.reply-{service}-{id}`: a proxy's reply queue, bound with key `{id}`.
pub fn reply_queue(service: &str, id: &str) -> String {
    format!("rpc.reply-{service}-{id}")
}

/// `{service}.events`: the topic exchange a service's events go to (§2).
pub fn events_exchange(service: &str) -> String {
    format!("{service}.events")
}

/// The queue of an event handler (§3): `evt-{src}-{type}--{service}.{method}`
/// for a service pool, `evt-{src}-{type}` for a singleton, and the service
/// pool name plus `-{identifier}` for a broadcast handler.
pub fn event_queue(
    source: &str,
    event_type: &str,
    service: &str,
    method: &str,
    handler_type: EventHandlerType,
    broadcast_identifier: &str,
) -> String {
    match handler_type {
        EventHandlerType::ServicePool => format!("evt-{source}-{event_type}--{service}.{method}"),
        EventHandlerType::Singleton => format!("evt-{source}-{event_type}"),
        EventHandlerType::Broadcast => {
            format!("evt-{source}-{event_type}--{service}.{method}-{broadcast_identifier}")
        }
    }
}

/// How the instances of a service share the events one handler receives
/// (nameko's `handler_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventHandlerType {
    /// One queue per service and handler: each event reaches one instance
    /// of each subscribing service (nameko's default, `SERVICE_POOL`).
    #[default]
    ServicePool,
    /// One queue per event type: each event reaches one handler in the
    /// whole cluster (`SINGLETON`).
    Singleton,
    /// One queue per instance: every instance gets every event (`BROADCAST`).
    Broadcast,
}

/// `{service}.{entrypoint}.{uuid4}`: the id of one worker (§4.1).
pub fn new_call_id(service: &str, entrypoint: &str) -> String {
    // Built by hand: `format!` costs about as much again as the uuid, once
    // per call.
    let mut buf = uuid::Uuid::encode_buffer();
    let uuid = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    let mut id = String::with_capacity(service.len() + entrypoint.len() + uuid.len() + 2);
    id.push_str(service);
    id.push('.');
    id.push_str(entrypoint);
    id.push('.');
    id.push_str(uuid);
    id
}

/// A short-string field built from text a peer or user chose; AMQP caps
/// these at 255 bytes, which lapin enforces with a panic on `From`.
pub fn short_string(text: &str) -> Result<ShortString, WireError> {
    ShortString::try_new(text).map_err(|_| WireError::TooLong {
        what: "name",
        len: text.len(),
    })
}

/// A malformed message or a name the wire cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The request's content type is not JSON.
    #[error("unsupported content type {0:?}: this service accepts application/json only")]
    ContentType(String),
    /// The request names a content encoding other than UTF-8.
    #[error("unsupported content encoding {0:?}: this service accepts utf-8 only")]
    ContentEncoding(String),
    /// The body is not JSON.
    #[error("request body is not valid JSON: {0}")]
    Json(String),
    /// The body is JSON but lacks `args` or `kwargs`.
    #[error("Message missing `args` or `kwargs`")]
    MissingArgs,
    /// `args` is not a list or `kwargs` is not an object.
    #[error("`args` must be a list and `kwargs` an object")]
    ArgsShape,
    /// The body is larger than the configured limit.
    #[error("request body is {len} bytes; the limit is {limit}")]
    TooLarge {
        /// Size of the body.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A name longer than AMQP's 255-byte short string.
    #[error("{what} is {len} bytes; AMQP allows at most 255")]
    TooLong {
        /// What the name was for.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A reply body that is not `{"result": ..., "error": ...}`.
    #[error("reply body is not a nameko reply: {0}")]
    Reply(String),
}

/// The arguments of one RPC request: `{"args": [...], "kwargs": {...}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestBody {
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
}

/// Encodes a request body as kombu would.
pub fn encode_request(body: &RequestBody) -> Vec<u8> {
    // A map of `Value`s always serialises.
    json::to_vec(body).unwrap_or_else(|_| br#"{"args": [], "kwargs": {}}"#.to_vec())
}

/// Checks a request's content type and encoding and decodes its body (§5
/// steps 1 and 3). The content type must be `application/json`; parameters
/// such as `; charset=utf-8` are tolerated, which nameko itself does not.
pub fn decode_request(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
    limit: usize,
) -> Result<RequestBody, WireError> {
    if body.len() > limit {
        return Err(WireError::TooLarge {
            len: body.len(),
            limit,
        });
    }
    check_content_type(content_type)?;
    if let Some(enc) = content_encoding {
        if !(enc.eq_ignore_ascii_case("utf-8") || enc.eq_ignore_ascii_case("utf8")) {
            return Err(WireError::ContentEncoding(enc.to_owned()));
        }
    }
    let (args, kwargs) = match serde_json::from_slice::<TopLevel>(body) {
        Ok(TopLevel {
            args: Some(args),
            kwargs: Some(kwargs),
        }) => (args, kwargs),
        Ok(_) => return Err(WireError::MissingArgs),
        // Valid JSON that is not an object.
        Err(e) if e.is_data() => return Err(WireError::MissingArgs),
        Err(e) => return Err(WireError::Json(e.to_string())),
    };
    match (args, kwargs) {
        (Value::Array(args), Value::Object(kwargs)) => Ok(RequestBody { args, kwargs }),
        _ => Err(WireError::ArgsShape),
    }
}

/// A request's top level: `args` and `kwargs`, anything else skipped
/// unread. Read straight from the text rather than through a `Value`: the
/// object around the two (an insertion-ordered map, its keys hashed) and
/// the removal of each cost a tenth of a `create`'s decoding. Like
/// Python's `json`, a repeated key counts once, the last one.
struct TopLevel {
    args: Option<Value>,
    kwargs: Option<Value>,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> serde::de::Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object with args and kwargs")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut top = TopLevel {
            args: None,
            kwargs: None,
        };
        while let Some(key) = map.next_key::<TopLevelKey>()? {
            match key {
                TopLevelKey::Args => top.args = Some(map.next_value()?),
                TopLevelKey::Kwargs => top.kwargs = Some(map.next_value()?),
                TopLevelKey::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(top)
    }
}

/// A top-level key, told apart without allocating it.
enum TopLevelKey {
    Args,
    Kwargs,
    Other,
}

impl<'de> Deserialize<'de> for TopLevelKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = TopLevelKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<TopLevelKey, E> {
                Ok(match key {
                    "args" => TopLevelKey::Args,
                    "kwargs" => TopLevelKey::Kwargs,
                    _ => TopLevelKey::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// `application/json`, parameters allowed: what requests and events must
/// be.
pub(crate) fn check_content_type(content_type: Option<&str>) -> Result<(), WireError> {
    let Some(ct) = content_type else {
        return Err(WireError::ContentType(String::new()));
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(JSON_CONTENT_TYPE) {
        Ok(())
    } else {
        Err(WireError::ContentType(ct.to_owned()))
    }
}

/// The four-key error object of a reply (§6.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// Exception class name, e.g. `MethodNotFound`.
    pub exc_type: String,
    /// `<module>.<ClassName>`; Python callers look this up to raise a typed
    /// exception.
    pub exc_path: String,
    /// The exception's args after `safe_for_serialization`.
    pub exc_args: Vec<Value>,
    /// `str(exception)`.
    pub value: String,
}

impl ErrorObject {
    /// Builds the object for an exception raised with `args`: args are made
    /// safe as nameko does, and `value` is `str(exc)` unless given.
    pub fn new(exc_type: &str, exc_path: &str, args: &[Value], value: Option<&str>) -> Self {
        ErrorObject {
            exc_type: exc_type.to_owned(),
            exc_path: exc_path.to_owned(),
            exc_args: args.iter().map(python::safe_for_serialization).collect(),
            value: value.map_or_else(|| python::exception_str(args), str::to_owned),
        }
    }
}

#[derive(Serialize)]
struct ReplyOut<'a, T: Serialize + ?Sized> {
    result: Option<&'a T>,
    error: Option<&'a ErrorObject>,
}

/// `{"result": <value>, "error": null}`.
pub fn encode_ok_reply<T: Serialize + ?Sized>(result: &T) -> serde_json::Result<Vec<u8>> {
    json::to_vec(&ReplyOut {
        result: Some(result),
        error: None,
    })
}

/// `{"result": null, "error": {...}}`.
pub fn encode_error_reply(error: &ErrorObject) -> Vec<u8> {
    json::to_vec(&ReplyOut::<()> {
        result: None,
        error: Some(error),
    })
    .unwrap_or_else(|_| br#"{"result": null, "error": null}"#.to_vec())
}

/// Decodes a reply body. An `error` that is present and truthy wins, as in
/// nameko's client; missing error-object keys default to empty.
pub fn decode_reply(body: &[u8]) -> Result<Result<Value, ErrorObject>, WireError> {
    let mut reply: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| WireError::Reply(e.to_string()))?;
    let result = reply.remove("result").unwrap_or(Value::Null);
    match reply.remove("error").unwrap_or(Value::Null) {
        Value::Null => Ok(Ok(result)),
        Value::Object(map) if map.is_empty() => Ok(Ok(result)),
        Value::Object(map) => {
            let text = |k: &str| match map.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => python::py_str(other),
            };
            let exc_args = match map.get("exc_args") {
                Some(Value::Array(a)) => a.clone(),
                Some(Value::Null) | None => Vec::new(),
                Some(other) => vec![other.clone()],
            };
            Ok(Err(ErrorObject {
                exc_type: text("exc_type"),
                exc_path: text("exc_path"),
                exc_args,
                value: text("value"),
            }))
        }
        other => Err(WireError::Reply(format!(
            "`error` is not an object: {other}"
        ))),
    }
}

/// Properties of a request (§4): JSON, UTF-8, priority 0, a correlation id,
/// `reply_to` = the reply queue's routing key, and the context headers.
pub fn request_properties(
    correlation_id: &str,
    reply_to: &str,
    headers: FieldTable,
    delivery_mode: u8,
) -> Result<BasicProperties, WireError> {
    Ok(json_properties(delivery_mode)
        .with_correlation_id(short_string(correlation_id)?)
        .with_reply_to(short_string(reply_to)?)
        .with_headers(headers))
}

/// Properties of a reply (§6): empty headers, the request's correlation id
/// (omitted when the request had none), no `reply_to`.
pub fn reply_properties(
    correlation_id: Option<&ShortString>,
    delivery_mode: u8,
) -> BasicProperties {
    let props = json_properties(delivery_mode).with_headers(FieldTable::default());
    match correlation_id {
        Some(id) => props.with_correlation_id(id.clone()),
        None => props,
    }
}

/// Properties of an event (§8): no correlation id or `reply_to`.
pub fn event_properties(headers: FieldTable, delivery_mode: u8) -> BasicProperties {
    json_properties(delivery_mode).with_headers(headers)
}

fn json_properties(delivery_mode: u8) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from(JSON_CONTENT_TYPE))
        .with_content_encoding(ShortString::from(UTF8))
        .with_delivery_mode(delivery_mode)
        .with_priority(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMIT: usize = 1 << 20;

    #[test]
    fn a_call_id_is_service_entrypoint_and_a_fresh_uuid4() {
        let id = new_call_id("person", "get");
        let uuid = id
            .strip_prefix("person.get.")
            .unwrap_or_else(|| panic!("{id}"));
        let parsed = uuid::Uuid::parse_str(uuid).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        // nameko's form: lower-case, hyphenated.
        assert_eq!(uuid, parsed.hyphenated().to_string());
        assert_ne!(new_call_id("person", "get"), id);
    }

    #[test]
    fn request_rules() {
        // A JSON request, as every caller sends it, with the default limit.
        let decode = |body: &[u8]| decode_request(Some("application/json"), None, body, LIMIT);
        let ok = decode_request(
            Some("application/json"),
            Some("utf-8"),
            br#"{"args": [1], "kwargs": {"b": 2}}"#,
            LIMIT,
        );
        assert_eq!(
            ok,
            Ok(RequestBody {
                args: vec![json!(1)],
                kwargs: json!({"b": 2}).as_object().cloned().unwrap()
            })
        );
        assert_eq!(decode(br#"{"args": []}"#), Err(WireError::MissingArgs));
        assert_eq!(decode(br#"[1, 2]"#), Err(WireError::MissingArgs));
        for not_an_object in [&b"[[1], {}]"[..], b"7", b"\"args\"", b"null"] {
            assert_eq!(
                decode(not_an_object),
                Err(WireError::MissingArgs),
                "{}",
                String::from_utf8_lossy(not_an_object)
            );
        }
        // Other keys are skipped; an escaped key is still the key; the
        // last of a repeated key counts, as in Python.
        assert_eq!(
            decode(br#"{"x": {"args": 1}, "args": [0], "\u0061rgs": [2], "kwargs": {}}"#),
            Ok(RequestBody {
                args: vec![json!(2)],
                kwargs: Map::new()
            })
        );
        assert!(matches!(
            decode(br#"{"args": [], "kwargs": {}} x"#),
            Err(WireError::Json(_))
        ));
        assert!(matches!(
            decode(br#"{"args": [], "kwargs": {"#),
            Err(WireError::Json(_))
        ));
        assert_eq!(
            decode(br#"{"args": {}, "kwargs": {}}"#),
            Err(WireError::ArgsShape)
        );
        assert!(matches!(
            decode_request(Some("text/plain"), None, b"{}", LIMIT),
            Err(WireError::ContentType(_))
        ));
        assert!(matches!(
            decode_request(None, None, b"{}", LIMIT),
            Err(WireError::ContentType(_))
        ));
        assert!(matches!(
            decode_request(Some("application/json"), Some("utf-16"), b"{}", LIMIT),
            Err(WireError::ContentEncoding(_))
        ));
        assert!(matches!(decode(b"\xff\xfe"), Err(WireError::Json(_))));
        assert!(matches!(
            decode(br#"{"args": [NaN], "kwargs": {}}"#),
            Err(WireError::Json(_))
        ));
        assert_eq!(
            decode_request(Some("application/json"), None, &[b' '; 11], 10),
            Err(WireError::TooLarge { len: 11, limit: 10 })
        );
        assert!(decode_request(
            Some("application/json; charset=utf-8"),
            Some("UTF8"),
            br#"{"args": [], "kwargs": {}}"#,
            LIMIT
        )
        .is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!("{{\"args\": [{}], \"kwargs\": {{}}}}", "[".repeat(100_000));
        assert!(matches!(
            decode_request(Some("application/json"), None, deep.as_bytes(), usize::MAX),
            Err(WireError::Json(_))
        ));
    }

    #[test]
    fn event_queue_names() {
        use EventHandlerType::*;
        assert_eq!(events_exchange("svc"), "svc.events");
        assert_eq!(
            event_queue("src", "ping", "svc", "on_ping", ServicePool, "x"),
            "evt-src-ping--svc.on_ping"
        );
        assert_eq!(
            event_queue("src", "ping", "svc", "on_ping", Singleton, "x"),
            "evt-src-ping"
        );
        assert_eq!(
            event_queue("src", "ping", "svc", "on_ping", Broadcast, "abc"),
            "evt-src-ping--svc.on_ping-abc"
        );
    }

    #[test]
    fn reply_round_trip() {
        let body = encode_ok_reply(&json!(3)).unwrap();
        assert_eq!(body, br#"{"result": 3, "error": null}"#);
        assert_eq!(decode_reply(&body), Ok(Ok(json!(3))));
        let err = ErrorObject::new(
            "MethodNotFound",
            "nameko.exceptions.MethodNotFound",
            &[json!("nosuch")],
            None,
        );
        let body = encode_error_reply(&err);
        assert_eq!(decode_reply(&body), Ok(Err(err)));
        assert!(decode_reply(b"[]").is_err());
        assert!(decode_reply(br#"{"result": 1, "error": 5}"#).is_err());
    }
}
