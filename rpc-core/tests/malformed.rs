//! Bad requests published by hand: each gets a clear error reply when it has
//! a `reply_to`, is acked either way, and the service keeps serving.

mod common;

use common::{add, config, proxy, start_calc, Probe};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use rpc_core::error::exc_path;
use rpc_core::wire;
use rpc_core::{json, Value};
use std::time::Duration;
use test_support::raw::{queue_depth, RawClient};

type Reply = (Option<String>, Result<Value, wire::ErrorObject>);

/// The next reply to `raw`, its content type checked and its body decoded
/// as a nameko reply: (correlation id, result or error).
async fn reply(raw: &mut RawClient) -> Reply {
    let r = raw
        .reply_within(Duration::from_secs(10))
        .await
        .expect("a reply within 10 s");
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    (
        r.correlation_id,
        wire::decode_reply(&r.data).expect("a nameko reply"),
    )
}

fn expect_error(reply: Reply, corr: &str, path: &str) -> wire::ErrorObject {
    assert_eq!(reply.0.as_deref(), Some(corr));
    match reply.1 {
        Err(e) => {
            assert_eq!(e.exc_path, path, "{e:?}");
            e
        }
        Ok(v) => panic!("expected {path}, got result {v}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_error_replies_and_are_acked() {
    let mut config = config();
    config.max_request_bytes = 64 * 1024;
    let (probe, _) = Probe::new();
    let mut svc = start_calc(&config, probe).await;
    let mut raw = RawClient::connect().await;
    let rk = format!("{}.add", svc.name);

    raw.publish(&rk, b"this is not json", raw.props("c1")).await;
    let e = expect_error(reply(&mut raw).await, "c1", exc_path::MALFORMED_REQUEST);
    assert!(e.value.contains("not valid JSON"), "{}", e.value);

    raw.publish(&rk, br#"{"args": [1, 2]}"#, raw.props("c2"))
        .await;
    let e = expect_error(reply(&mut raw).await, "c2", exc_path::MALFORMED_REQUEST);
    assert_eq!(e.value, "Message missing `args` or `kwargs`");

    raw.publish(&rk, br#"[1, 2]"#, raw.props("c3")).await;
    expect_error(reply(&mut raw).await, "c3", exc_path::MALFORMED_REQUEST);

    raw.publish(&rk, br#"{"args": 1, "kwargs": []}"#, raw.props("c4"))
        .await;
    expect_error(reply(&mut raw).await, "c4", exc_path::MALFORMED_REQUEST);

    raw.publish(
        &rk,
        br#"{"args": [1, 2], "kwargs": {}}"#,
        raw.props("c5").with_content_type("text/plain".into()),
    )
    .await;
    let e = expect_error(reply(&mut raw).await, "c5", exc_path::MALFORMED_REQUEST);
    assert!(e.value.contains("text/plain"), "{}", e.value);

    raw.publish(&rk, b"\xff\xfe{\"args\": []}", raw.props("c6"))
        .await;
    expect_error(reply(&mut raw).await, "c6", exc_path::MALFORMED_REQUEST);

    let huge = format!(
        r#"{{"args": ["{}", 1], "kwargs": {{}}}}"#,
        "x".repeat(100_000)
    );
    raw.publish(&rk, huge.as_bytes(), raw.props("c7")).await;
    let e = expect_error(reply(&mut raw).await, "c7", exc_path::MALFORMED_REQUEST);
    assert!(e.value.contains("limit is 65536"), "{}", e.value);

    let deep = format!(
        r#"{{"args": [{}1{}], "kwargs": {{}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    raw.publish(&rk, deep.as_bytes(), raw.props("c8")).await;
    expect_error(reply(&mut raw).await, "c8", exc_path::MALFORMED_REQUEST);

    // Missing content type: refused with a reply (nameko's container dies).
    raw.publish(
        &rk,
        br#"{"args": [1, 2], "kwargs": {}}"#,
        BasicProperties::default()
            .with_reply_to(raw.reply_key.as_str().into())
            .with_correlation_id("c9".into()),
    )
    .await;
    expect_error(reply(&mut raw).await, "c9", exc_path::MALFORMED_REQUEST);

    // No correlation id: still answered, without one.
    raw.publish(
        &rk,
        br#"{"args": [1, 2], "kwargs": {}}"#,
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to(raw.reply_key.as_str().into()),
    )
    .await;
    let (corr, result) = reply(&mut raw).await;
    assert_eq!((corr, result), (None, Ok(json!(3))));

    // No reply_to, valid and invalid: run or refused, acked, nothing sent.
    raw.publish(
        &rk,
        br#"{"args": [1, 2], "kwargs": {}}"#,
        BasicProperties::default().with_content_type("application/json".into()),
    )
    .await;
    raw.publish(&rk, b"garbage", BasicProperties::default())
        .await;

    // A header table a Python client would never send still parses.
    let mut headers = FieldTable::default();
    headers.insert("nameko.call_id_stack".into(), AMQPValue::LongInt(5));
    headers.insert(
        "weird".into(),
        AMQPValue::ByteArray(vec![0xff, 0x00].into()),
    );
    raw.publish(
        &rk,
        br#"{"args": [2, 2], "kwargs": {}}"#,
        raw.props("c10").with_headers(headers),
    )
    .await;
    assert_eq!(
        reply(&mut raw).await,
        (Some("c10".to_owned()), Ok(json!(4)))
    );

    // Everything was acked: the queue is empty and the service still works.
    let p = proxy(&config).await;
    assert_eq!(add(&p, &svc.name, 20, 22).await, json!(42));
    assert_eq!(queue_depth(&wire::rpc_queue(&svc.name)).await, 0);
    // Nothing more arrived for the requests without reply_to.
    assert!(raw.reply_within(Duration::from_millis(300)).await.is_none());

    p.close().await;
    raw.close().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_call_id_stack_is_capped_at_parent_calls_tracked_plus_one() {
    let config = config();
    let (probe, _) = Probe::new();
    let mut svc = start_calc(&config, probe).await;
    let mut raw = RawClient::connect().await;
    let parents: Vec<String> = (0..15).map(|i| format!("s{i}")).collect();
    let mut data = std::collections::BTreeMap::new();
    data.insert("user_id".to_owned(), json!("u7"));
    let headers = wire::write_context(&parents, &data);
    raw.publish(
        &format!("{}.ctx", svc.name),
        br#"{"args": [], "kwargs": {}}"#,
        raw.props("s").with_headers(headers),
    )
    .await;
    let (_, result) = reply(&mut raw).await;
    let out = result.unwrap();
    let stack: Vec<String> = serde_json::from_value(out["stack"].clone()).unwrap();
    assert_eq!(stack.len(), 11);
    assert_eq!(stack[0], "s5");
    assert_eq!(stack[9], "s14");
    assert!(stack[10].starts_with(&format!("{}.ctx.", svc.name)));
    assert_eq!(out["data"]["user_id"], json!("u7"));
    assert_eq!(out["correlation_id"], json!("s"));
    raw.close().await;
    svc.stop().await;
}
