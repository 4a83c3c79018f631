//! The HTTP face end to end with a real HTTP client: people added, listed,
//! changed and removed with form and JSON input, every error code, the same
//! records over RPC, concurrency, health, metrics, and the OpenAPI contract
//! (every response is checked against openapi.json by the helper).

mod helpers;

use helpers::http::{spec, Body, Http};
use helpers::spawn_app;
use helpers::Api;
use reqwest::Method;
use rpc_core::{json, Args, Value};
use std::collections::BTreeSet;
use test_support::WithinExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_list_modify_delete_with_form_and_json() {
    let app = spawn_app().await;
    let http = &app.http;

    let created = http
        .post(
            "/person",
            Body::Form("first_name=Ada&last_name=Lovelace&age=36&member=on".into()),
        )
        .await;
    assert_eq!(created.status, 201);
    assert!(created.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let id = created.body["id"].as_i64().unwrap();
    assert_eq!(
        created.headers["location"],
        format!("/person/{id}").as_str()
    );
    assert_eq!(
        created.body,
        json!({"id": id, "first_name": "Ada", "last_name": "Lovelace", "age": 36, "member": true})
    );

    let second = http.post_person("Alan", "Turing", 41).await;
    assert_eq!(second.status, 201);
    assert_eq!(second.body["member"], json!(false));
    let id2 = second.body["id"].as_i64().unwrap();

    assert_eq!(http.get(&format!("/person/{id}")).await.body, created.body);
    let all = http.get("/person").await;
    assert_eq!(all.status, 200);
    assert_eq!(all.body.as_array().unwrap().len(), 2);
    let page = http.get(&format!("/person?limit=1&after_id={id}")).await;
    assert_eq!(page.body, json!([second.body]));

    let changed = http
        .put(
            &format!("/person/{id}"),
            Body::Json(json!({"age": 37, "member": null})),
        )
        .await;
    assert_eq!(changed.status, 200);
    assert_eq!(
        changed.body,
        json!({"id": id, "first_name": "Ada", "last_name": "Lovelace", "age": 37, "member": true})
    );
    let changed = http
        .put(
            &format!("/person/{id2}"),
            Body::Form("last_name=Turing%20OBE&member=false".into()),
        )
        .await;
    assert_eq!(changed.body["last_name"], json!("Turing OBE"));
    assert_eq!(changed.body["age"], json!(41));

    let deleted = http.delete(&format!("/person/{id}")).await;
    assert_eq!(
        (deleted.status, deleted.body.clone()),
        (200, json!({"id": id, "deleted": true}))
    );
    assert_eq!(http.get(&format!("/person/{id}")).await.status, 404);
    assert_eq!(http.get("/person").await.body.as_array().unwrap().len(), 1);
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_is_json_with_a_stable_shape() {
    let app = spawn_app().await;
    let http = &app.http;
    let id = http.post_person("E", "Rr", 1).await.body["id"]
        .as_i64()
        .unwrap();

    // 400: missing and invalid fields, named.
    let cases: Vec<(Body, &str)> = vec![
        (Body::Form("last_name=L&age=3".into()), "first_name"),
        (
            Body::Json(json!({"first_name": "F", "age": 3})),
            "last_name",
        ),
        (
            Body::Json(json!({"first_name": "F", "last_name": "L"})),
            "age",
        ),
        (Body::Form("first_name=F&last_name=L&age=abc".into()), "age"),
        (Body::Form("first_name=F&last_name=L&age=151".into()), "age"),
        (
            Body::Json(json!({"first_name": "F", "last_name": "L", "age": "36"})),
            "age",
        ),
        (
            Body::Json(json!({"first_name": "F", "last_name": "L", "age": 3, "member": "maybe"})),
            "member",
        ),
        (
            Body::Form("first_name=F&last_name=L&age=3&member=maybe".into()),
            "member",
        ),
        (
            Body::Json(json!({"first_name": "", "last_name": "L", "age": 3})),
            "first_name",
        ),
        (
            Body::Json(json!({"first_name": 7, "last_name": "L", "age": 3})),
            "first_name",
        ),
        (
            Body::Json(json!({"first_name": "F", "last_name": "x".repeat(101), "age": 3})),
            "last_name",
        ),
        (
            Body::Json(json!({"first_name": "F", "last_name": "L", "age": 3, "nick": "x"})),
            "nick",
        ),
        (
            Body::Form("first_name=F&first_name=G&last_name=L&age=3".into()),
            "first_name",
        ),
    ];
    for (body, field) in cases {
        let r = http.post("/person", body).await;
        assert_eq!(
            (r.status, r.error_code(), r.error_field()),
            (400, "validation_error", Some(field)),
            "{r:?}"
        );
    }
    for (path, body, field) in [
        (
            format!("/person/{id}"),
            Body::Json(json!({"age": -1})),
            "age",
        ),
        (
            format!("/person/{id}"),
            Body::Json(json!({"frist_name": "typo"})),
            "frist_name",
        ),
        (
            "/person/abc".to_owned(),
            Body::Json(json!({"age": 1})),
            "id",
        ),
    ] {
        let r = http.put(&path, body).await;
        assert_eq!((r.status, r.error_field()), (400, Some(field)), "{r:?}");
    }
    for path in [
        "/person?limit=0",
        "/person?limit=ten",
        "/person?after_id=x",
        "/person?color=red",
    ] {
        let r = http.get(path).await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert!(r.error_field().is_some());
    }
    let r = http.get("/person/12abc").await;
    assert_eq!((r.status, r.error_field()), (400, Some("id")));
    // Malformed bodies.
    let r = http
        .post(
            "/person",
            Body::Raw("application/json", b"{not json".to_vec()),
        )
        .await;
    assert_eq!((r.status, r.error_code()), (400, "bad_request"));
    let r = http
        .post("/person", Body::Raw("application/json", b"[1, 2]".to_vec()))
        .await;
    assert_eq!((r.status, r.error_code()), (400, "bad_request"));
    let r = http
        .post(
            "/person",
            Body::Raw("application/json", b"\xff\xfe".to_vec()),
        )
        .await;
    assert_eq!(r.status, 400);

    // 404: unknown ids and routes.
    assert_eq!(http.get("/person/999999").await.error_code(), "not_found");
    assert_eq!(
        http.put("/person/999999", Body::Json(json!({"age": 2})))
            .await
            .status,
        404
    );
    assert_eq!(http.delete("/person/999999").await.status, 404);
    let r = http.get("/nowhere").await;
    assert_eq!((r.status, r.error_code()), (404, "not_found"));
    assert_eq!(http.get("/person/1/extra").await.status, 404);

    // 405: wrong methods on known routes.
    for (method, path) in [
        (Method::PATCH, "/person".to_owned()),
        (Method::DELETE, "/person".to_owned()),
        (Method::POST, format!("/person/{id}")),
        (Method::POST, "/healthz".to_owned()),
    ] {
        let r = http
            .send(method.clone(), &path, Some(Body::Json(json!({}))))
            .await;
        assert_eq!(
            (r.status, r.error_code()),
            (405, "method_not_allowed"),
            "{method} {path}"
        );
    }

    // 413: too large, with and without a declared length.
    let big = format!(
        r#"{{"first_name": "{}", "last_name": "L", "age": 1}}"#,
        "x".repeat(100_000)
    );
    let r = http
        .post("/person", Body::Raw("application/json", big.into_bytes()))
        .await;
    assert_eq!((r.status, r.error_code()), (413, "payload_too_large"));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..100).map(|_| Ok(vec![b' '; 1024])).collect();
    let streamed = reqwest::Client::new()
        .post(format!("{}/person", http.base))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status().as_u16(), 413);

    // 415: anything but form or JSON, including no content type.
    let r = http
        .post("/person", Body::Raw("text/plain", b"first_name=F".to_vec()))
        .await;
    assert_eq!((r.status, r.error_code()), (415, "unsupported_media_type"));
    let r = http
        .put(&format!("/person/{id}"), Body::Raw("", b"age=3".to_vec()))
        .await;
    assert_eq!(r.status, 415);

    // Nothing invalid was stored; the one valid record is intact.
    let all = http.get("/person").await;
    assert_eq!(all.body.as_array().unwrap().len(), 1);
    assert_eq!(all.body[0]["age"], json!(1));
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_rpc_see_the_same_records_at_once() {
    let app = spawn_app().await;
    let http = &app.http;
    let created = http.post_person("Grace", "Hopper", 85).await;
    let id = created.body["id"].as_i64().unwrap();
    assert_eq!(app.ok("get", Args::new().arg(id)).await, created.body);

    let via_rpc = app
        .ok("update", Args::new().arg(id).kwarg("member", true))
        .await;
    assert_eq!(http.get(&format!("/person/{id}")).await.body, via_rpc);

    let rpc_id = app.create("Katherine", "Johnson", 101).await;
    let listed: Vec<i64> = http
        .get("/person")
        .await
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, vec![id, rpc_id]);

    http.delete(&format!("/person/{id}")).await;
    assert_eq!(
        app.remote_err("get", Args::new().arg(id)).await.exc_type,
        "PersonNotFound"
    );
    app.ok("delete", Args::new().arg(rpc_id)).await;
    assert_eq!(http.get(&format!("/person/{rpc_id}")).await.status, 404);
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_http_requests() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let http: Http = app.http.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                http.post(
                    "/person",
                    Body::Form(format!("first_name=P{i}&last_name=Par&age={}", i % 150)),
                )
                .await
            } else {
                http.post(
                    "/person",
                    Body::Json(
                        json!({"first_name": format!("P{i}"), "last_name": "Par", "age": i % 150}),
                    ),
                )
                .await
            }
        }));
    }
    let mut ids = BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 201);
        ids.insert(r.body["id"].as_i64().unwrap());
    }
    assert_eq!(ids.len(), 100);
    let mut reads = Vec::new();
    for id in ids {
        let http = app.http.clone();
        reads.push(tokio::spawn(async move {
            http.get(&format!("/person/{id}")).await.status
        }));
    }
    for r in reads {
        assert_eq!(r.await.unwrap(), 200);
    }
    assert_eq!(
        app.http.get("/person").await.body.as_array().unwrap().len(),
        100
    );
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let app = spawn_app().await;
    let http = &app.http;
    let h = http.get("/healthz").await;
    assert_eq!(h.status, 200);
    assert_eq!(
        h.body,
        json!({"status": "ok", "checks": {"store": "ok", "broker": "consuming"}, "reason": null})
    );

    let id = app.create("M", "Etrics", 5).await;
    app.ok("get", Args::new().arg(id)).await;
    app.remote_err("get", Args::new().arg(id + 1000)).await;
    app.remote_err("nosuch", Args::new()).await;
    http.get(&format!("/person/{id}")).await;
    http.get("/nowhere").await;

    let m = http.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert_eq!(
        m.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = m.text;
    for line in [
        r#"person_rpc_calls_total{method="create",outcome="ok"} 1"#,
        r#"person_rpc_calls_total{method="get",outcome="ok"} 1"#,
        r#"person_rpc_calls_total{method="get",outcome="raised"} 1"#,
        r#"person_rpc_calls_total{method="<unknown>",outcome="refused"} 1"#,
        r#"person_rpc_errors_total{exc_type="PersonNotFound",method="get"} 1"#,
        r#"person_rpc_errors_total{exc_type="MethodNotFound",method="<unknown>"} 1"#,
        r#"person_rpc_call_duration_seconds_count{method="get"} 2"#,
        r#"person_http_requests_total{method="GET",route="/person/{id}",status="200"} 1"#,
        r#"person_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"person_http_requests_total{method="GET",route="/healthz",status="200"} 1"#,
        r#"person_in_flight{face="rpc"} 0"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    // The scrape itself is in flight while it renders.
    assert!(
        text.lines()
            .any(|l| l == r#"person_in_flight{face="http"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"person_http_request_duration_seconds_bucket{method="GET",route="/person/{id}",le="0.001"}"#));
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_503_with_the_reason_while_the_broker_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = person_service::Settings::new(
        &format!("amqp://guest:guest@{dead}/%2f"),
        dir.path().join("p.db"),
    );
    settings.http = Some("127.0.0.1:0".parse().unwrap());
    let running = person_service::Application::build(settings)
        .await
        .unwrap()
        .start()
        .await
        .unwrap();
    let http = Http::new(running.http_addr().unwrap());
    let h = http.get("/healthz").await;
    assert_eq!(h.status, 503);
    assert_eq!(h.body["status"], json!("unavailable"));
    assert_eq!(h.body["checks"]["store"], json!("ok"));
    assert!(
        h.body["reason"].as_str().unwrap().contains("broker"),
        "{h:?}"
    );
    // The HTTP face still serves the store meanwhile.
    assert_eq!(http.post_person("Off", "Line", 1).await.status, 201);
    running
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_true() {
    let app = spawn_app().await;
    let http = &app.http;
    let served = http.get("/openapi.json").await;
    assert_eq!(served.body, *spec());
    assert_eq!(spec()["openapi"], json!("3.1.0"));

    // Every documented path answers exactly its documented methods.
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    let id = http.post_person("Doc", "Umented", 2).await.body["id"]
        .as_i64()
        .unwrap();
    for (template, item) in spec()["paths"].as_object().unwrap() {
        let path = template.replace("{id}", &id.to_string());
        for m in &methods {
            let documented = item.get(m.as_str().to_ascii_lowercase()).is_some();
            let body = matches!(*m, Method::POST | Method::PUT).then(|| Body::Json(json!({})));
            let r = http.send(m.clone(), &path, body).await;
            assert_eq!(
                r.status == 405,
                !documented,
                "{m} {template} answered {}",
                r.status
            );
        }
    }

    // Produce every documented status of every operation, then compare.
    let ok = || Body::Json(json!({"first_name": "A", "last_name": "B", "age": 3}));
    http.get("/person").await;
    http.get("/person?limit=0").await;
    http.post("/person", ok()).await;
    http.post("/person", Body::Json(json!({}))).await;
    http.post("/person", Body::Raw("application/json", vec![b' '; 70_000]))
        .await;
    http.post("/person", Body::Raw("text/plain", b"x".to_vec()))
        .await;
    let p = format!("/person/{id}");
    http.get(&p).await;
    http.get("/person/x").await;
    http.get("/person/999999").await;
    http.put(&p, Body::Form("age=4".into())).await;
    http.put(&p, Body::Form("age=x".into())).await;
    http.put("/person/999999", Body::Form("age=4".into())).await;
    http.put(&p, Body::Raw("application/json", vec![b' '; 70_000]))
        .await;
    http.put(&p, Body::Raw("text/csv", b"x".to_vec())).await;
    http.get("/healthz").await;
    http.get("/metrics").await;
    http.delete("/person/x").await;
    http.delete(&p).await;
    http.delete(&p).await;

    let mut documented = BTreeSet::new();
    for (template, item) in spec()["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if let Some(responses) = op.get("responses").and_then(Value::as_object) {
                for status in responses.keys() {
                    documented.insert((
                        method.to_ascii_uppercase(),
                        template.clone(),
                        status.parse::<u16>().unwrap(),
                    ));
                }
            }
        }
    }
    let seen = http.seen();
    // 503 from /healthz is covered by the unreachable-broker test.
    let missing: Vec<_> = documented
        .iter()
        .filter(|op| !seen.contains(op) && **op != ("GET".to_owned(), "/healthz".to_owned(), 503))
        .collect();
    assert!(
        missing.is_empty(),
        "documented but never produced: {missing:?}"
    );
    app.close().await;
}
