//! person-service's RPC methods without a broker (rpc_core's
//! LocalService, over a real SQLite file): signatures, validation, error
//! objects and paging, exactly as a remote caller gets them.

mod helpers;

use helpers::{assert_invalid, local_app, Api};
use rpc_core::{json, Args, Value};

#[tokio::test]
async fn missing_ids_are_person_not_found() {
    let app = local_app().await;
    for (method, args) in [
        ("get", Args::new().arg(999_999)),
        ("update", Args::new().arg(999_999).kwarg("age", 3)),
        ("delete", Args::new().arg(999_999)),
    ] {
        let e = app.remote_err(method, args).await;
        assert_eq!(e.exc_type, "PersonNotFound", "{method}");
    }
}

#[tokio::test]
async fn invalid_values_name_the_field() {
    let app = local_app().await;
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
}

#[tokio::test]
async fn values_round_trip_exactly() {
    let app = local_app().await;
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
}

#[tokio::test]
async fn list_pages_in_id_order() {
    let app = local_app().await;
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
}
