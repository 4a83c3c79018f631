//! person-service's RPC API end to end: every method, every error, paging,
//! concurrency, restarts, with the real broker and a real SQLite file.

mod helpers;

use helpers::{assert_invalid, spawn_app};
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
async fn missing_ids_are_person_not_found() {
    let app = spawn_app().await;
    for (method, args) in [
        ("get", Args::new().arg(999_999)),
        ("update", Args::new().arg(999_999).kwarg("age", 3)),
        ("delete", Args::new().arg(999_999)),
    ] {
        let e = app.remote_err(method, args).await;
        assert_eq!(e.exc_type, "PersonNotFound", "{method}");
    }
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_values_name_the_field() {
    let app = spawn_app().await;
    let long = "x".repeat(101);
    let cases: Vec<(&str, Args, &str)> = vec![
        ("create", Args::new().arg("").arg("L").arg(1), "first_name"),
        (
            "create",
            Args::new().arg("  ").arg("L").arg(1),
            "first_name",
        ),
        (
            "create",
            Args::new().arg("F").arg(long.as_str()).arg(1),
            "last_name",
        ),
        ("create", Args::new().arg("F").arg("L").arg(151), "age"),
        ("create", Args::new().arg("F").arg("L").arg(-1), "age"),
        ("create", Args::new().arg("F").arg("L").arg("36"), "age"),
        ("create", Args::new().arg("F").arg("L").arg(36.5), "age"),
        (
            "create",
            Args::new().arg("F").arg("L").arg(3).arg("yes"),
            "member",
        ),
        ("create", Args::new().arg(5).arg("L").arg(3), "first_name"),
        (
            "create",
            Args::new().arg("F").arg(Value::Null).arg(3),
            "last_name",
        ),
        ("get", Args::new().arg("one"), "id"),
        ("update", Args::new().arg(1).kwarg("age", 1000), "age"),
        (
            "update",
            Args::new().arg(1).kwarg("first_name", ""),
            "first_name",
        ),
        ("list", Args::new().kwarg("limit", 0), "limit"),
        ("list", Args::new().kwarg("limit", "ten"), "limit"),
        ("delete", Args::new().arg(json!({"id": 1})), "id"),
    ];
    for (method, args, field) in cases {
        let e = app.remote_err(method, args.clone()).await;
        assert_invalid(&e, field);
    }
    // Wrong arity stays a signature error, as in nameko.
    let e = app.remote_err("create", Args::new().arg("F")).await;
    assert_eq!(e.exc_type, "IncorrectSignature");
    assert_eq!(
        e.value,
        "create() missing 2 required positional arguments: 'last_name' and 'age'"
    );
    // Nothing invalid was stored.
    assert_eq!(app.ok("list", Args::new()).await, json!([]));
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_exactly() {
    let app = spawn_app().await;
    let longest = "名".repeat(100);
    let cases = [
        ("Zoë", "Ñúñez-O'Brien", 0, false),
        ("😀🦀", "\"quoted\" \\ back", 150, true),
        (longest.as_str(), "x", 75, false),
        ("Robert'); DROP TABLE person;--", "Tables", 12, true),
    ];
    for (first, last, age, member) in cases {
        let id = app
            .ok(
                "create",
                Args::new().arg(first).arg(last).arg(age).arg(member),
            )
            .await
            .as_i64()
            .unwrap();
        assert_eq!(
            app.ok("get", Args::new().arg(id)).await,
            json!({"id": id, "first_name": first, "last_name": last, "age": age, "member": member})
        );
    }
    assert_eq!(
        app.ok("list", Args::new()).await.as_array().unwrap().len(),
        cases.len()
    );
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_in_id_order() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(app.create(&format!("P{i}"), "Page", i).await);
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .ok(
                "list",
                Args::new().kwarg("limit", 10).kwarg("after_id", after),
            )
            .await;
        let page = page.as_array().unwrap();
        assert!(page.len() <= 10);
        if page.is_empty() {
            break;
        }
        seen.extend(page.iter().map(|p| p["id"].as_i64().unwrap()));
        after = *seen.last().unwrap();
    }
    assert_eq!(seen, ids);
    let all: Vec<i64> = app
        .ok("list", Args::new())
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(all, ids);
    // Positional paging works too: list(limit, after_id).
    let two = app.ok("list", Args::new().arg(2).arg(ids[20])).await;
    assert_eq!(two.as_array().unwrap().len(), 2);
    assert_eq!(two[0]["id"], json!(ids[21]));
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
