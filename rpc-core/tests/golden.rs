//! Golden tests: the 33 messages captured from nameko 2.14.1
//! (`fixtures/nameko-wire-capture.jsonl`) are decoded, and re-encoded to the
//! same bytes, by the `wire` module.

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use rpc_core::wire::{self, headers::amqp_to_json, ErrorObject, RequestBody};
use rpc_core::{RpcError, Signature};
use serde_json::{json, Value};

struct Captured {
    exchange: String,
    routing_key: String,
    props: Value,
    body: String,
}

fn capture() -> Vec<Captured> {
    let text = include_str!("fixtures/nameko-wire-capture.jsonl");
    let messages: Vec<Captured> = text
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("capture line is JSON");
            Captured {
                exchange: v["delivery_info"]["exchange"].as_str().unwrap().to_owned(),
                routing_key: v["delivery_info"]["routing_key"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                props: v["properties"].clone(),
                body: v["body"].as_str().unwrap().to_owned(),
            }
        })
        .collect();
    assert_eq!(messages.len(), 33);
    messages
}

fn is_request(m: &Captured) -> bool {
    m.exchange == "nameko-rpc" && m.props.get("reply_to").is_some()
}

fn is_reply(m: &Captured) -> bool {
    m.exchange == "nameko-rpc" && m.props.get("reply_to").is_none()
}

fn headers_json(table: &FieldTable) -> Value {
    amqp_to_json(&AMQPValue::FieldTable(table.clone()))
}

/// The AMQP header table of a captured message's properties.
fn headers_table(props: &Value) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in props["application_headers"].as_object().unwrap() {
        table.insert(k.as_str().into(), wire::headers::json_to_amqp(v));
    }
    table
}

/// Compares the properties we would send with the captured ones.
fn assert_props(ours: &BasicProperties, captured: &Value) {
    let s = |o: &Option<lapin::types::ShortString>| {
        o.as_ref()
            .map(|v| Value::from(v.as_str()))
            .unwrap_or(Value::Null)
    };
    assert_eq!(s(ours.content_type()), captured["content_type"]);
    assert_eq!(s(ours.content_encoding()), captured["content_encoding"]);
    assert_eq!(
        ours.delivery_mode().map(Value::from).unwrap_or(Value::Null),
        captured["delivery_mode"]
    );
    assert_eq!(
        ours.priority().map(Value::from).unwrap_or(Value::Null),
        captured["priority"]
    );
    assert_eq!(
        s(ours.correlation_id()),
        captured
            .get("correlation_id")
            .cloned()
            .unwrap_or(Value::Null)
    );
    assert_eq!(
        s(ours.reply_to()),
        captured.get("reply_to").cloned().unwrap_or(Value::Null)
    );
    let headers = ours
        .headers()
        .as_ref()
        .map(headers_json)
        .unwrap_or(Value::Null);
    assert_eq!(headers, captured["application_headers"]);
    assert!(
        ours.message_id().is_none() && ours.timestamp().is_none() && ours.expiration().is_none()
    );
}

#[test]
fn requests_decode_and_reencode_byte_for_byte() {
    let mut seen = 0;
    for m in capture().iter().filter(|m| is_request(m)) {
        seen += 1;
        let body = wire::decode_request(
            Some("application/json"),
            Some("utf-8"),
            m.body.as_bytes(),
            1 << 20,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", m.routing_key));
        assert_eq!(
            String::from_utf8(wire::encode_request(&body)).unwrap(),
            m.body
        );

        // Context: stack and data out of the headers, and back into them.
        let ctx = wire::read_context(Some(&headers_table(&m.props)));
        let stack: Vec<Value> = ctx
            .call_id_stack
            .iter()
            .map(|s| Value::from(s.as_str()))
            .collect();
        assert_eq!(
            Value::Array(stack),
            m.props["application_headers"]["nameko.call_id_stack"]
        );
        assert_eq!(ctx.data.get("user_id"), Some(&json!("u1")));
        assert_eq!(ctx.data.get("custom"), Some(&json!("zz")));

        let props = wire::request_properties(
            m.props["correlation_id"].as_str().unwrap(),
            m.props["reply_to"].as_str().unwrap(),
            wire::write_context(&ctx.call_id_stack, &ctx.data),
            wire::PERSISTENT,
        )
        .unwrap();
        assert_props(&props, &m.props);
        let service = m.routing_key.split('.').next().unwrap();
        let method = m.routing_key.split('.').nth(1).unwrap();
        assert_eq!(wire::routing_key(service, method), m.routing_key);
    }
    assert_eq!(seen, 16);
}

#[test]
fn replies_decode_and_reencode_byte_for_byte() {
    let mut seen = 0;
    for m in capture().iter().filter(|m| is_reply(m)) {
        seen += 1;
        let decoded = wire::decode_reply(m.body.as_bytes()).unwrap();
        let again = match &decoded {
            Ok(result) => wire::encode_ok_reply(result).unwrap(),
            Err(error) => wire::encode_error_reply(error),
        };
        assert_eq!(String::from_utf8(again).unwrap(), m.body);
        let corr = lapin::types::ShortString::from(m.props["correlation_id"].as_str().unwrap());
        assert_props(
            &wire::reply_properties(Some(&corr), wire::PERSISTENT),
            &m.props,
        );
        // Replies go to the RPC exchange with the bare reply_to uuid as key.
        assert_eq!(m.routing_key, "6d6c6369-3090-4573-8965-b37e8c9eb7a4");
    }
    assert_eq!(seen, 15);
}

fn reply_error(routing_key_of_request: &str, nth: usize) -> ErrorObject {
    let all = capture();
    let idx = all
        .iter()
        .enumerate()
        .filter(|(_, m)| m.routing_key == routing_key_of_request)
        .nth(nth)
        .map(|(i, _)| i)
        .unwrap();
    let corr = &all[idx].props["correlation_id"];
    let reply = all
        .iter()
        .find(|m| is_reply(m) && &m.props["correlation_id"] == corr)
        .unwrap();
    wire::decode_reply(reply.body.as_bytes())
        .unwrap()
        .unwrap_err()
}

#[test]
fn builtin_errors_match_nameko() {
    assert_eq!(
        RpcError::method_not_found("nosuch").to_error_object(),
        reply_error("svc.nosuch", 0)
    );
    assert_eq!(
        RpcError::unserializable("{1, 2}").to_error_object(),
        reply_error("svc.unser", 0)
    );
    let add = Signature::new().param("a").param("b");
    let missing = add
        .bind("add", vec![json!(1)], serde_json::Map::new())
        .unwrap_err();
    assert_eq!(missing.to_error_object(), reply_error("svc.add", 2));
    let extra = add
        .bind(
            "add",
            vec![json!(1), json!(2)],
            json!({"c": 3}).as_object().unwrap().clone(),
        )
        .unwrap_err();
    assert_eq!(extra.to_error_object(), reply_error("svc.add", 3));
}

#[test]
fn application_errors_stringify_args_like_nameko() {
    let boom = RpcError::new(
        "MyError",
        "svc.MyError",
        vec![json!("bad"), json!(42), json!({"k": [1, 2]})],
    );
    assert_eq!(boom.to_error_object(), reply_error("svc.boom", 0));
    let boom2 = RpcError::new("MyError", "svc.MyError", vec![json!("x")]);
    assert_eq!(boom2.to_error_object(), reply_error("svc.boom2", 0));
    let reg = RpcError::new(
        "RegisteredError",
        "svc.RegisteredError",
        vec![json!("a"), json!(1)],
    );
    assert_eq!(reg.to_error_object(), reply_error("svc.reg", 0));
}

#[test]
fn call_id_stack_grows_by_the_worker_id() {
    let all = capture();
    let chain = all.iter().find(|m| m.routing_key == "svc2.echo").unwrap();
    let stack = chain.props["application_headers"]["nameko.call_id_stack"]
        .as_array()
        .unwrap();
    assert_eq!(stack.len(), 2);
    assert!(stack[0]
        .as_str()
        .unwrap()
        .starts_with("standalone_rpc_proxy.call."));
    assert!(stack[1].as_str().unwrap().starts_with("svc.chain."));
    // Our ids have the same shape: service.entrypoint.uuid4.
    let id = wire::new_call_id("svc", "chain");
    let uuid = id.strip_prefix("svc.chain.").unwrap();
    assert!(uuid::Uuid::parse_str(uuid).is_ok());
}

#[test]
fn events_have_raw_bodies_and_no_reply_fields() {
    let events: Vec<_> = capture()
        .into_iter()
        .filter(|m| m.exchange == "svc.events")
        .collect();
    assert_eq!(events.len(), 2);
    for m in events {
        assert_eq!(m.routing_key, "ping");
        let data: Value = serde_json::from_str(&m.body).unwrap();
        assert_eq!(
            String::from_utf8(wire::json::to_vec(&data).unwrap()).unwrap(),
            m.body
        );
        let ctx = wire::read_context(Some(&headers_table(&m.props)));
        let headers = if ctx.call_id_stack.is_empty() {
            FieldTable::default()
        } else {
            wire::write_context(&ctx.call_id_stack, &ctx.data)
        };
        assert_props(&wire::event_properties(headers, wire::PERSISTENT), &m.props);
    }
}

#[test]
fn kombu_typed_values_pass_through_untouched() {
    let result = wire::decode_reply(
        capture()
            .iter()
            .find(|m| is_reply(m) && m.body.contains("__type__"))
            .unwrap()
            .body
            .as_bytes(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        result["dt"],
        json!({"__type__": "datetime", "__value__": "2020-01-02T03:04:05"})
    );
    assert_eq!(result["t"], json!([1, 2]));
}

#[test]
fn request_body_shape() {
    let body = RequestBody {
        args: vec![json!("Zoë")],
        kwargs: json!({"member": true}).as_object().unwrap().clone(),
    };
    assert_eq!(
        String::from_utf8(wire::encode_request(&body)).unwrap(),
        r#"{"args": ["Zo\u00eb"], "kwargs": {"member": true}}"#
    );
}
