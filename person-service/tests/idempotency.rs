//! A write request delivered twice (as the broker redelivers one that was
//! committed but not acked before a crash) is recognised by its correlation
//! id and answered with the first result, without a second change.

mod helpers;

use helpers::raw::Raw;
use helpers::spawn_app;
use helpers::Api;
use rpc_core::{json, Args, Value};

fn ok(reply: helpers::raw::RawReply) -> Value {
    reply.body.unwrap_or_else(|e| panic!("remote error {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_writes_are_answered_once() {
    let app = spawn_app().await;
    let mut raw = Raw::connect().await;
    let rk = |m: &str| format!("{}.{m}", app.name);

    let create = br#"{"args": ["Ada", "Lovelace", 36], "kwargs": {}}"#;
    raw.publish(&rk("create"), create, raw.props("create-1"))
        .await;
    let first = ok(raw.reply().await);
    raw.publish(&rk("create"), create, raw.props("create-1"))
        .await;
    let again = raw.reply().await;
    assert_eq!(again.correlation_id.as_deref(), Some("create-1"));
    assert_eq!(ok(again), first, "the replay returns the first id");
    assert_eq!(
        app.ok("list", Args::new()).await.as_array().unwrap().len(),
        1,
        "and writes no second row"
    );
    let id = first.as_i64().unwrap();

    // An update replayed after a later change does not undo that change.
    let update = format!(r#"{{"args": [{id}], "kwargs": {{"age": 37}}}}"#);
    raw.publish(&rk("update"), update.as_bytes(), raw.props("update-1"))
        .await;
    let updated = ok(raw.reply().await);
    app.ok("update", Args::new().arg(id).kwarg("age", 50)).await;
    raw.publish(&rk("update"), update.as_bytes(), raw.props("update-1"))
        .await;
    assert_eq!(ok(raw.reply().await), updated);
    assert_eq!(app.ok("get", Args::new().arg(id)).await["age"], json!(50));

    // A delete replayed answers as the first time, not PersonNotFound.
    let delete = format!(r#"{{"args": [{id}], "kwargs": {{}}}}"#);
    raw.publish(&rk("delete"), delete.as_bytes(), raw.props("delete-1"))
        .await;
    assert_eq!(ok(raw.reply().await), Value::Null);
    raw.publish(&rk("delete"), delete.as_bytes(), raw.props("delete-1"))
        .await;
    assert_eq!(ok(raw.reply().await), Value::Null);
    // A new request for the same delete is a new request: PersonNotFound.
    raw.publish(&rk("delete"), delete.as_bytes(), raw.props("delete-2"))
        .await;
    assert_eq!(
        raw.reply().await.body.unwrap_err().exc_type,
        "PersonNotFound"
    );

    // Different correlation ids are different requests.
    raw.publish(&rk("create"), create, raw.props("create-2"))
        .await;
    assert_ne!(ok(raw.reply().await), first);
    raw.close().await;
    app.close().await;
}
