//! person-service's events: every change over RPC or HTTP dispatches its
//! event once committed, with the record (or id) as data and the caller's
//! context, and events committed while nothing could publish them go out
//! when the service starts.

mod helpers;

use helpers::http::Body;
use helpers::spawn_app;
use helpers::Api;
use person_service::domain::NewPerson;
use person_service::store::{Store, WriteMeta};
use rpc_core::events::Subscription;
use rpc_core::{json, Args, Context, EventHandlerOptions, Service, ServiceHandle, Value};
use std::time::Duration;
use test_support::WithinExt;
use test_support::{unique_name, Cleanup};
use tokio::sync::mpsc;

type Seen = mpsc::UnboundedReceiver<(String, Value, Vec<String>)>;

/// Subscribes to the three person events of `source`.
async fn subscribe(source: &str) -> (ServiceHandle, Seen, Cleanup) {
    let name = unique_name("watcher");
    let mut cleanup = Cleanup::new().exchange(&format!("{source}.events"));
    let (tx, rx) = mpsc::unbounded_channel();
    let mut builder = Service::builder(&name);
    for event in ["person_created", "person_updated", "person_deleted"] {
        cleanup.add_queue(&format!("evt-{source}-{event}--{name}.on_{event}"));
        let tx = tx.clone();
        builder = builder.event_handler(
            &format!("on_{event}"),
            Subscription::to(event).from(source),
            EventHandlerOptions::service_pool(),
            move |ctx: Context, data: Value| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((event.to_owned(), data, ctx.call_id_stack().to_vec()));
                    Ok::<(), String>(())
                }
            },
        );
    }
    let config = rpc_core::Config::new(&test_support::require_broker()).unwrap();
    let mut handle = builder.build().spawn(config);
    handle
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .unwrap();
    (handle, rx, cleanup)
}

/// The outbox is empty (published events leave it); then stops `watcher`.
async fn published_and_stopped(store: &Store, watcher: ServiceHandle) {
    assert!(
        store.outbox(10).await.unwrap().is_empty(),
        "published events leave the outbox"
    );
    watcher
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}

/// A database directory and a service name of the test's own, and the
/// cleanup of the service's queues and events exchange.
fn fresh_service() -> (tempfile::TempDir, String, Cleanup) {
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("person");
    let cleanup = Cleanup::new()
        .service(&name)
        .exchange(&format!("{name}.events"));
    (dir, name, cleanup)
}

/// A write made outside RPC that dispatches its event.
fn with_event() -> WriteMeta {
    WriteMeta {
        request_id: None,
        event: Some(Default::default()),
    }
}

/// A service `name` that publishes its own events (one trivial method).
fn publishing_service(name: &str) -> Service {
    Service::builder(name)
        .publishes_events()
        .method(
            "ping",
            rpc_core::Signature::new(),
            |_: Context, (): ()| async { Ok::<_, rpc_core::RpcError>(true) },
        )
        .build()
}

async fn next(rx: &mut Seen) -> (String, Value, Vec<String>) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("subscriber alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_over_either_face_dispatches_its_event() {
    let app = spawn_app().await;
    let (watcher, mut seen, _cleanup) = subscribe(&app.name).await;

    let id = app.create("Ada", "Lovelace", 36).await;
    let (kind, data, stack) = next(&mut seen).await;
    assert_eq!(kind, "person_created");
    assert_eq!(
        data,
        json!({"id": id, "first_name": "Ada", "last_name": "Lovelace", "age": 36, "member": false})
    );
    // The RPC caller's context travels with the event.
    assert_eq!(stack[0], app.proxy.call_id_stack()[0]);
    assert!(stack[1].starts_with(&format!("{}.create.", app.name)));

    app.ok("update", Args::new().arg(id).kwarg("member", true))
        .await;
    let (kind, data, _) = next(&mut seen).await;
    assert_eq!(
        (kind.as_str(), data["member"].clone(), data["age"].clone()),
        ("person_updated", json!(true), json!(36))
    );

    // A no-op update changes nothing and emits nothing; a failed write neither.
    app.ok("update", Args::new().arg(id)).await;
    app.remote_err("update", Args::new().arg(id + 999).kwarg("age", 1))
        .await;
    app.remote_err("create", Args::new().arg("").arg("x").arg(1))
        .await;

    let created = app.http.post_person("Alan", "Turing", 41).await;
    let id2 = created.body["id"].as_i64().unwrap();
    let (kind, data, stack) = next(&mut seen).await;
    assert_eq!(
        (kind.as_str(), data.clone()),
        ("person_created", created.body.clone())
    );
    assert!(
        stack[0].starts_with(&format!("{}.http.", app.name)),
        "{stack:?}"
    );
    app.http
        .put(&format!("/person/{id2}"), Body::Form("age=42".into()))
        .await;
    assert_eq!(next(&mut seen).await.1["age"], json!(42));
    app.http.delete(&format!("/person/{id2}")).await;
    let (kind, data, stack) = next(&mut seen).await;
    assert_eq!(
        (kind.as_str(), data),
        ("person_deleted", json!({"id": id2}))
    );
    assert!(
        stack[0].starts_with(&format!("{}.http.", app.name)),
        "{stack:?}"
    );
    app.ok("delete", Args::new().arg(id)).await;
    let (kind, data, _) = next(&mut seen).await;
    assert_eq!((kind.as_str(), data), ("person_deleted", json!({"id": id})));

    assert!(
        tokio::time::timeout(Duration::from_millis(300), seen.recv())
            .await
            .is_err(),
        "no extra events"
    );
    watcher
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_while_nothing_publishes_go_out_at_start() {
    let (dir, name, _cleanup) = fresh_service();
    let db = dir.path().join("person.db");
    // Commit two changes with their events and no relay running (as if the
    // process had died right after the commit).
    {
        let store = Store::open(&db).unwrap();
        let meta = with_event();
        store
            .create(
                NewPerson::new("Left".into(), "Behind".into(), 1, false).unwrap(),
                meta.clone(),
            )
            .await
            .unwrap();
        store
            .create(
                NewPerson::new("Also".into(), "Waiting".into(), 2, true).unwrap(),
                meta,
            )
            .await
            .unwrap();
        assert_eq!(store.outbox(10).await.unwrap().len(), 2);
    }
    let (watcher, mut seen, _c) = subscribe(&name).await;
    let running = helpers::start(&name, &db).await;
    // Handlers run concurrently, so compare as a set.
    let mut names = Vec::new();
    for _ in 0..2 {
        let (kind, data, _) = next(&mut seen).await;
        assert_eq!(kind, "person_created");
        names.push(data["first_name"].as_str().unwrap().to_owned());
    }
    names.sort();
    assert_eq!(names, vec!["Also", "Left"]);
    running
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    let store = Store::open(&db).unwrap();
    published_and_stopped(&store, watcher).await;
}

/// While the service has no connection the relay stands in with one of its
/// own; once the service is connected again the relay publishes on the
/// service's connection and closes the stand-in. Each side goes through a
/// proxy of its own, so the test sees the service's connection held off
/// and the stand-in's connection close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_closes_its_stand_in_connection_once_the_service_is_back() {
    let (dir, name, _cleanup) = fresh_service();
    let db = dir.path().join("person.db");
    let broker = test_support::require_broker();
    let service_side = test_support::faulty::FaultyProxy::in_front_of(&broker).await;
    let relay_side = test_support::faulty::FaultyProxy::in_front_of(&broker).await;
    service_side.refuse(true);
    let service_config = rpc_core::Config::new(&service_side.uri(&broker)).unwrap();
    let relay_config = rpc_core::Config::new(&relay_side.uri(&broker)).unwrap();
    let mut service = publishing_service(&name).spawn(service_config);
    let publisher = service.publisher();
    assert!(
        !publisher.is_connected(),
        "the broker is refused to the service"
    );

    let (watcher, mut seen, _c) = subscribe(&name).await;
    let store = Store::open(&db).unwrap();
    let stop = rpc_core::CancellationToken::new();
    let relay = tokio::spawn(person_service::outbox::run(
        store.clone(),
        relay_config,
        name.clone(),
        Some(publisher.clone()),
        stop.clone(),
    ));
    let meta = with_event();
    let create = |first: &str| NewPerson::new(first.into(), "Relay".into(), 4, false).unwrap();
    store.create(create("Before"), meta.clone()).await.unwrap();
    let (kind, data, _) = next(&mut seen).await;
    assert_eq!(
        (kind.as_str(), &data["first_name"]),
        ("person_created", &json!("Before"))
    );
    assert_eq!(
        relay_side.open(),
        1,
        "the relay published on a connection of its own"
    );

    service_side.refuse(false);
    service
        .ready()
        .within(test_support::START_BOUND, "the service to connect")
        .await
        .unwrap();
    assert!(publisher.is_connected());
    store.create(create("After"), meta).await.unwrap();
    let (kind, data, _) = next(&mut seen).await;
    assert_eq!(
        (kind.as_str(), &data["first_name"]),
        ("person_created", &json!("After"))
    );
    // The stand-in is closed before the relay claims the batch it then
    // publishes on the service's connection; its TCP connection ends once
    // the broker has answered the close. No event marks that end: look
    // again until it has, within a bound.
    let closed = async {
        while relay_side.open() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    closed
        .within(Duration::from_secs(10), "the stand-in connection to close")
        .await;
    assert_eq!(relay_side.accepted(), 1, "one stand-in connection in all");

    stop.cancel();
    relay
        .within(test_support::STOP_BOUND, "the relay to stop")
        .await
        .unwrap();
    service
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    published_and_stopped(&store, watcher).await;
}

/// The relay publishes on the service's connection while the service has
/// one; with the service stopped (as in the last drain of a shutdown) it
/// falls back on a connection of its own, and the events still go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_service_stopped_the_relay_publishes_on_its_own_connection() {
    let (dir, name, _cleanup) = fresh_service();
    let db = dir.path().join("person.db");
    let config = rpc_core::Config::new(&test_support::require_broker()).unwrap();
    // A service that has come and gone: its publisher has no session.
    let mut stopped = publishing_service(&name).spawn(config.clone());
    stopped
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .unwrap();
    let publisher = stopped.publisher();
    stopped
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    assert!(!publisher.is_connected());

    let (watcher, mut seen, _c) = subscribe(&name).await;
    let store = Store::open(&db).unwrap();
    store
        .create(
            NewPerson::new("After".into(), "Stop".into(), 3, false).unwrap(),
            with_event(),
        )
        .await
        .unwrap();
    let stop = rpc_core::CancellationToken::new();
    let relay = tokio::spawn(person_service::outbox::run(
        store.clone(),
        config,
        name.clone(),
        Some(publisher),
        stop.clone(),
    ));
    let (kind, data, _) = next(&mut seen).await;
    assert_eq!(
        (kind.as_str(), &data["first_name"]),
        ("person_created", &json!("After"))
    );
    stop.cancel();
    relay
        .within(test_support::STOP_BOUND, "the relay to stop")
        .await
        .unwrap();
    published_and_stopped(&store, watcher).await;
}
