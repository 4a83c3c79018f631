//! person-service on PostgreSQL, several instances on one database: RPC
//! CRUD, a write replayed to another instance, the relays of two instances
//! sharing one outbox, and a PostgreSQL restart under a running service.
//!
//! Each test creates its own database (dropped at the end, also on
//! failure); the restart test runs a private server so that stopping it
//! disturbs no one.

mod helpers;

use futures_util::StreamExt;
use helpers::http::Http;
use helpers::raw::Raw;
use helpers::start_with;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use person_service::store::{Database, Store, StoreOptions};
use person_service::{RunningApp, Settings};
use rpc_core::{Args, CallError, RpcProxy, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use test_support::postgres::{PrivateServer, TestDb};
use test_support::{unique_name, Cleanup, WithinExt};

fn settings(db: &TestDb) -> Settings {
    Settings::new(&test_support::require_broker(), Database::parse(&db.url()))
}

async fn proxy() -> RpcProxy {
    let mut config = rpc_core::Config::new(&test_support::broker_uri()).unwrap();
    config.rpc_timeout = Duration::from_secs(15);
    RpcProxy::connect(config).await.expect("proxy connects")
}

async fn stop(app: RunningApp) {
    app.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .expect("stops cleanly");
}

fn ok(reply: helpers::raw::RawReply) -> Value {
    reply.body.unwrap_or_else(|e| panic!("remote error {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_and_a_write_replayed_to_another_instance() {
    let db = TestDb::create().await;
    let (a, b) = (unique_name("person-pg-a"), unique_name("person-pg-b"));
    let _cleanup = Cleanup::new()
        .service(&a)
        .service(&b)
        .exchange(&format!("{a}.events"))
        .exchange(&format!("{b}.events"));
    let one = start_with(&a, settings(&db)).await;
    let two = start_with(&b, settings(&db)).await;
    let proxy = proxy().await;

    // CRUD through one instance, seen through the other.
    let call = |service: &str, method: &str, args: Args| {
        let proxy = proxy.clone();
        let (service, method) = (service.to_owned(), method.to_owned());
        async move { proxy.call(&service, &method, args).await }
    };
    let id = call(&a, "create", Args::new().arg("Ada").arg("Lovelace").arg(36))
        .await
        .unwrap()
        .as_i64()
        .unwrap();
    let got = call(&b, "get", Args::new().arg(id)).await.unwrap();
    assert_eq!(got["first_name"], "Ada");
    let updated = call(&b, "update", Args::new().arg(id).kwarg("age", 37))
        .await
        .unwrap();
    assert_eq!(updated["age"], 37);
    let id2 = call(&a, "create", Args::new().arg("Alan").arg("Turing").arg(41))
        .await
        .unwrap()
        .as_i64()
        .unwrap();
    let page = call(
        &a,
        "list",
        Args::new().kwarg("limit", 1).kwarg("after_id", id),
    )
    .await
    .unwrap();
    assert_eq!(page.as_array().map(Vec::len), Some(1));
    assert_eq!(page[0]["id"], id2);
    call(&b, "delete", Args::new().arg(id2)).await.unwrap();
    match call(&a, "get", Args::new().arg(id2)).await {
        Err(CallError::Remote(e)) => assert_eq!(e.exc_type, "PersonNotFound"),
        other => panic!("expected PersonNotFound, got {other:?}"),
    }

    // A create delivered to instance one, then redelivered to instance
    // two (same correlation id): two answers as one did and writes nothing.
    let mut raw = Raw::connect().await;
    let body = br#"{"args": ["Grace", "Hopper", 85], "kwargs": {}}"#;
    raw.publish(&format!("{a}.create"), body, raw.props("pg-replay-1"))
        .await;
    let first = ok(raw.reply().await);
    raw.publish(&format!("{b}.create"), body, raw.props("pg-replay-1"))
        .await;
    let again = raw.reply().await;
    assert_eq!(again.correlation_id.as_deref(), Some("pg-replay-1"));
    assert_eq!(
        ok(again),
        first,
        "the other instance replays the first answer"
    );
    let all = call(&b, "list", Args::new()).await.unwrap();
    let hoppers = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["last_name"] == "Hopper")
        .count();
    assert_eq!(hoppers, 1, "and writes no second row");

    raw.close().await;
    proxy.close().await;
    stop(one).await;
    stop(two).await;
}

/// Two instances of one service on one database: their relays take events
/// from the same outbox at the same time, and each event reaches the
/// events exchange exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_every_event_exactly_once() {
    const CREATES: usize = 60;
    let db = TestDb::create().await;
    let name = unique_name("person-pg-relay");
    let exchange = format!("{name}.events");
    let _cleanup = Cleanup::new().service(&name).exchange(&exchange);

    // A queue bound to every event of the service, declared before any
    // event is sent.
    let conn = test_support::raw::connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        queue.name().as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut events = ch
        .basic_consume(
            queue.name().as_str().into(),
            "count".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let one = start_with(&name, settings(&db)).await;
    let two = start_with(&name, settings(&db)).await;
    let proxy = proxy().await;
    // Concurrent creates: the queue hands them to both instances.
    let calls: Vec<_> = (0..CREATES)
        .map(|i| {
            let proxy = proxy.clone();
            let name = name.clone();
            tokio::spawn(async move {
                proxy
                    .call(
                        &name,
                        "create",
                        Args::new().arg(format!("R{i}")).arg("Relay").arg(30),
                    )
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("create succeeds");
    }

    let mut seen: HashMap<i64, usize> = HashMap::new();
    async {
        while seen.len() < CREATES {
            let delivery = events.next().await.expect("consumer open").unwrap();
            let data: Value = serde_json::from_slice(&delivery.data).unwrap();
            *seen.entry(data["id"].as_i64().unwrap()).or_default() += 1;
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    .within(Duration::from_secs(60), "every event")
    .await;
    // Nothing more comes: more than a relay's idle period (2 s) passes in
    // which either relay would send a duplicate.
    let extra = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
    if let Ok(Some(Ok(delivery))) = extra {
        panic!(
            "an event was published twice: {}",
            String::from_utf8_lossy(&delivery.data)
        );
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    let store = Store::connect(&Database::parse(&db.url()), StoreOptions::default())
        .await
        .unwrap();
    assert!(store.outbox(10).await.unwrap().is_empty());

    proxy.close().await;
    stop(one).await;
    stop(two).await;
    let _ = conn.close(200, "OK".into()).await;
}

/// A PostgreSQL restart under a running service: meanwhile calls fail with
/// StorageError (quickly, not a hang) and /healthz says why with a 503;
/// afterwards the same process serves again and the outbox drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_fails_calls_meanwhile_and_the_service_recovers() {
    let server = tokio::task::spawn_blocking(PrivateServer::start)
        .await
        .expect("the private server starts");
    let db = TestDb::create_on(&server.url()).await;
    let name = unique_name("person-pg-restart");
    let _cleanup = Cleanup::new()
        .service(&name)
        .exchange(&format!("{name}.events"));
    let mut settings = settings(&db);
    settings.db_statement_timeout = Duration::from_secs(2);
    let app = start_with(&name, settings).await;
    let http = Http::new(app.http_addr().expect("HTTP on"));
    let proxy = proxy().await;
    let create = |n: &str| {
        let (proxy, name, n) = (proxy.clone(), name.clone(), n.to_owned());
        async move {
            proxy
                .call(&name, "create", Args::new().arg(n).arg("Restart").arg(1))
                .await
        }
    };
    create("before").await.expect("create before the outage");
    assert_eq!(http.get("/healthz").await.status, 200);

    let server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    let outage = Instant::now();
    let failed = create("during")
        .within(Duration::from_secs(20), "a create during the outage")
        .await;
    let failed_after = outage.elapsed();
    match failed {
        Err(CallError::Remote(e)) => assert_eq!(e.exc_type, "StorageError", "{e:?}"),
        other => panic!("expected StorageError, got {other:?}"),
    }
    // Over HTTP too: the storage error (500, code storage_error), at once.
    // (Sent with a bare client: the test helper treats any 500 as a bug.)
    let addr = app.http_addr().expect("HTTP on");
    let reply = reqwest::Client::new()
        .post(format!("http://{addr}/person"))
        .json(&serde_json::json!({"first_name": "Http", "last_name": "During", "age": 1}))
        .send()
        .within(Duration::from_secs(20), "an HTTP create during the outage")
        .await
        .expect("an HTTP answer");
    assert_eq!(reply.status().as_u16(), 500);
    let body: Value = reply.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "storage_error", "{body}");
    let health = http.get("/healthz").await;
    assert_eq!(health.status, 503, "{}", health.text);
    let reason = health.body["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("PostgreSQL"), "{reason}");
    assert!(!reason.contains("password"), "{reason}");

    let resumed = Instant::now();
    let server = tokio::task::spawn_blocking(move || {
        server.resume();
        server
    })
    .await
    .unwrap();
    let restart_took = resumed.elapsed();
    // The pool makes new connections as calls come: the first create after
    // the restart may still meet a connection the restart broke, which is
    // dropped; within a few calls they succeed.
    let recovered = async {
        loop {
            match create("after").await {
                Ok(id) => return id,
                Err(CallError::Remote(e)) if e.exc_type == "StorageError" => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("unexpected error after the restart: {e}"),
            }
        }
    }
    .within(
        Duration::from_secs(30),
        "a create to succeed after the restart",
    )
    .await;
    let recovery = resumed.elapsed();
    assert!(recovered.as_i64().is_some());
    assert_eq!(http.get("/healthz").await.status, 200);
    // The relay retried: every committed event goes out.
    let store = Store::connect(&Database::parse(&db.url()), StoreOptions::default())
        .await
        .unwrap();
    async {
        while !store.outbox(10).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .within(Duration::from_secs(30), "the outbox to drain")
    .await;
    println!(
        "outage: create failed after {failed_after:?}; server restart took {restart_took:?}; \
         first create ok {recovery:?} after the restart began"
    );
    assert!(
        failed_after < Duration::from_secs(10),
        "a call during the outage took {failed_after:?}"
    );

    drop(store);
    proxy.close().await;
    stop(app).await;
    drop(db);
    drop(server);
}
