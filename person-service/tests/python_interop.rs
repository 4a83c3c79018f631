//! Python nameko 2.14.1's ClusterRpcProxy calls every person method on the
//! Rust service.

mod helpers;

use helpers::spawn_app;
use rpc_core::{json, Value};
use std::path::Path;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cluster_rpc_proxy_uses_every_method() {
    let python = test_support::python::python();
    let app = spawn_app().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/person_client.py");
    let name = app.name.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(test_support::broker_uri())
            .arg(name)
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("python prints JSON");
    let id = v["create"].as_i64().expect("an integer id");
    assert_eq!(
        v["get"],
        json!({"id": id, "first_name": "Ada", "last_name": "Lovelace", "age": 36, "member": true})
    );
    assert_eq!(v["list"].as_array().unwrap().len(), 2);
    assert_eq!(v["list"][1]["first_name"], json!("Zoë"));
    assert_eq!(v["page"].as_array().unwrap().len(), 1);
    assert_eq!(v["page"][0]["last_name"], json!("Ñúñez"));
    assert_eq!(v["update"]["age"], json!(37));
    assert_eq!(v["update"]["member"], json!(true));
    assert_eq!(v["delete"], Value::Null);
    assert_eq!(v["not_found"]["exc_type"], json!("PersonNotFound"));
    assert_eq!(v["invalid"]["exc_type"], json!("ValidationError"));
    assert_eq!(
        v["invalid"]["value"],
        json!("first_name: must not be empty")
    );
    assert_eq!(
        v["signature"],
        json!("create() missing 2 required positional arguments: 'last_name' and 'age'")
    );
    assert_eq!(v["async"], json!([37, 37, 37, 37, 37, 37, 37, 37, 37, 37]));
    app.close().await;
}
