//! person-service's RPC API end to end over the real broker and a real
//! SQLite file: every method, concurrency, restarts. Signatures, validation
//! and error objects need no broker: `rpc_local.rs` checks them in process.

mod helpers;

use helpers::{spawn_app, Api};
use person_service::rpc::exc_path;
use rpc_core::{json, Args, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_update_delete() {
    let app = spawn_app().await;
    let id = app.create("Ada", "Lovelace", 36).await;
    assert_eq!(
        app.ok("get", Args::new().arg(id)).await,
        json!({"id": id, "first_name": "Ada", "last_name": "Lovelace", "age": 36, "member": false})
    );
    let id2 = app
        .ok(
            "create",
            Args::new()
                .kwarg("first_name", "Alan")
                .kwarg("last_name", "Turing")
                .kwarg("age", 41)
                .kwarg("member", true),
        )
        .await
        .as_i64()
        .unwrap();
    assert!(id2 > id);
    let all = app.ok("list", Args::new()).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[0]["id"], json!(id));
    assert_eq!(all[1]["member"], json!(true));

    // Only the given fields change.
    let updated = app
        .ok(
            "update",
            Args::new().arg(id).kwarg("age", 37).kwarg("member", true),
        )
        .await;
    assert_eq!(
        updated,
        json!({"id": id, "first_name": "Ada", "last_name": "Lovelace", "age": 37, "member": true})
    );
    assert_eq!(app.ok("get", Args::new().arg(id)).await, updated);
    let renamed = app.ok("update", Args::new().arg(id).arg("Augusta")).await;
    assert_eq!(
        (renamed["first_name"].clone(), renamed["age"].clone()),
        (json!("Augusta"), json!(37))
    );
    // No fields: nothing changes, the record comes back.
    assert_eq!(app.ok("update", Args::new().arg(id)).await, renamed);

    assert_eq!(app.ok("delete", Args::new().arg(id)).await, Value::Null);
    let e = app.remote_err("get", Args::new().arg(id)).await;
    assert_eq!(
        (e.exc_type.as_str(), e.exc_path.as_str()),
        ("PersonNotFound", exc_path::PERSON_NOT_FOUND)
    );
    assert_eq!(e.exc_args, vec![json!(id.to_string())]);
    assert_eq!(e.value, format!("no person with id {id}"));
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_all_land() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let proxy = app.proxy.clone();
        let name = app.name.clone();
        tasks.push(tokio::spawn(async move {
            proxy
                .call(
                    &name,
                    "create",
                    Args::new()
                        .arg(format!("C{i}"))
                        .arg("Concurrent")
                        .arg(i % 150),
                )
                .await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().unwrap().as_i64().unwrap());
    }
    assert_eq!(ids.len(), 100);
    // Reads and writes interleaved.
    let mut tasks = Vec::new();
    for (n, id) in ids.iter().copied().enumerate() {
        let proxy = app.proxy.clone();
        let name = app.name.clone();
        tasks.push(tokio::spawn(async move {
            if n % 2 == 0 {
                proxy.call(&name, "get", Args::new().arg(id)).await
            } else {
                proxy
                    .call(&name, "update", Args::new().arg(id).kwarg("member", true))
                    .await
            }
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    assert_eq!(
        app.ok("list", Args::new()).await.as_array().unwrap().len(),
        100
    );
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_restart() {
    let mut app = spawn_app().await;
    let id = app.create("Grace", "Hopper", 85).await;
    app.restart().await;
    assert_eq!(
        app.ok("get", Args::new().arg(id)).await["last_name"],
        json!("Hopper")
    );
    let id2 = app.create("Next", "One", 1).await;
    assert!(id2 > id);
    app.close().await;
}
