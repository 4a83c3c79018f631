//! Events between Rust and real Python nameko 2.14.1: Python handlers of
//! each handler type receive events a Rust service dispatches (with the
//! context a Rust handler sends along), and Rust handlers of each type
//! receive events a Python service dispatches.

mod common;

use common::{emitter, python_dir, wait_for_python};
use rpc_core::events::Subscription;
use rpc_core::{
    json, Args, Config, Context, EventDispatcher, EventHandlerOptions, RpcError, RpcProxy, Service,
    ServiceHandle, Signature, Value,
};
use std::time::Duration;
use test_support::nameko::NamekoRun;
use test_support::WithinExt;
use test_support::{unique_name, Cleanup};
use tokio::sync::mpsc;

type Records = mpsc::UnboundedReceiver<(String, Value, Vec<String>)>;

/// A Rust service whose `record(kind, data, stack)` reports what Python saw.
async fn recorder(config: &Config) -> (String, ServiceHandle, Records) {
    let name = unique_name("recorder");
    let (tx, rx) = mpsc::unbounded_channel();
    let mut handle = Service::builder(&name)
        .method(
            "record",
            Signature::new().param("kind").param("data").param("stack"),
            move |_ctx: Context, (kind, data, stack): (String, Value, Vec<String>)| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((kind, data, stack));
                    Ok::<_, RpcError>(())
                }
            },
        )
        .build()
        .spawn(config.clone());
    handle
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .unwrap();
    (name, handle, rx)
}

async fn next(rx: &mut Records) -> (String, Value, Vec<String>) {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("a record within 15 s")
        .expect("recorder alive")
}

/// `py_events` (tests/python) running as the Python service `py`, handling
/// `source`'s `ping` events with one handler of each type and reporting
/// them to `recorder`; returns once it answers.
async fn start_py_events(proxy: &RpcProxy, py: &str, source: &str, recorder: &str) -> NamekoRun {
    let mut run = NamekoRun::start(
        python_dir(),
        "py_events",
        &test_support::broker_uri(),
        &[
            ("PY_SERVICE_NAME", py),
            ("SOURCE", source),
            ("RECORDER", recorder),
        ],
    );
    wait_for_python(proxy, py, &mut run).await;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_handlers_of_each_type_receive_rust_events() {
    let config = common::config();
    let source = unique_name("rust_src");
    let py = unique_name("py_events");
    let (recorder_name, recorder_handle, mut records) = recorder(&config).await;
    let _cleanup = Cleanup::new()
        .service(&recorder_name)
        .service(&py)
        .service(&source)
        .queue(&format!("evt-{source}-ping--{py}.on_ping_pool"))
        .queue(&format!("evt-{source}-ping"))
        .exchange(&format!("{source}.events"))
        .exchange(&format!("{py}.events"));
    let proxy = RpcProxy::connect(config.clone()).await.unwrap();
    let mut run = start_py_events(&proxy, &py, &source, &recorder_name).await;

    // A standalone dispatch reaches each Python handler type once.
    let events = EventDispatcher::connect(config.clone()).await.unwrap();
    events
        .dispatch(&source, "ping", &json!({"n": 1}))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let (kind, data, _) = next(&mut records).await;
        assert_eq!(data, json!({"n": 1}));
        kinds.push(kind);
    }
    kinds.sort();
    assert_eq!(kinds, vec!["broadcast", "service_pool", "singleton"]);

    // Dispatched from a Rust handler, the event carries its call-id stack.
    let mut emitter = emitter(&source).spawn(config.clone());
    emitter
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .unwrap();
    let emitter_id = proxy
        .call(&source, "emit", Args::new().arg(json!({"n": 2})))
        .await
        .unwrap();
    for _ in 0..3 {
        let (_, data, stack) = next(&mut records).await;
        assert_eq!(data, json!({"n": 2}));
        assert_eq!(stack[0], proxy.call_id_stack()[0]);
        assert_eq!(json!(stack[1]), emitter_id);
        assert!(stack[2].starts_with(&format!("{py}.on_ping_")), "{stack:?}");
    }

    run.stop();
    events.close().await;
    proxy.close().await;
    emitter
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    recorder_handle
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_handlers_of_each_type_receive_python_events() {
    let config = common::config();
    let source = unique_name("unused_src");
    let py = unique_name("py_emitter");
    let rust = unique_name("rust_listener");
    let (recorder_name, recorder_handle, _) = recorder(&config).await;
    let _cleanup = Cleanup::new()
        .service(&recorder_name)
        .service(&py)
        .queue(&format!("evt-{source}-ping--{py}.on_ping_pool"))
        .queue(&format!("evt-{source}-ping"))
        .queue(&format!("evt-{py}-pong--{rust}.on_pong_pool"))
        .queue(&format!("evt-{py}-pong"))
        .exchange(&format!("{source}.events"))
        .exchange(&format!("{py}.events"));
    let proxy = RpcProxy::connect(config.clone()).await.unwrap();
    let mut run = start_py_events(&proxy, &py, &source, &recorder_name).await;

    let (tx, mut seen) = mpsc::unbounded_channel();
    let mut builder = Service::builder(&rust);
    for (handler, options) in [
        ("on_pong_pool", EventHandlerOptions::service_pool()),
        ("on_pong_singleton", EventHandlerOptions::singleton()),
        (
            "on_pong_broadcast",
            EventHandlerOptions::broadcast().reliable_delivery(false),
        ),
    ] {
        let tx = tx.clone();
        builder = builder.event_handler(
            handler,
            Subscription::to("pong").from(&py),
            options,
            move |ctx: Context, data: Value| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((handler.to_owned(), data, ctx.call_id_stack().to_vec()));
                    Ok::<(), String>(())
                }
            },
        );
    }
    let mut listener = builder.build().spawn(config.clone());
    listener
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .unwrap();

    let python_id = proxy
        .call(
            &py,
            "emit",
            Args::new().arg("pong").arg(json!({"from": "python"})),
        )
        .await
        .unwrap();
    let mut handlers = Vec::new();
    for _ in 0..3 {
        let (handler, data, stack) = next(&mut seen).await;
        assert_eq!(data, json!({"from": "python"}));
        // Python's worker context travelled with its event.
        assert_eq!(stack[0], proxy.call_id_stack()[0]);
        assert_eq!(json!(stack[1]), python_id);
        assert!(stack[2].starts_with(&format!("{rust}.{handler}.")));
        handlers.push(handler);
    }
    handlers.sort();
    assert_eq!(
        handlers,
        vec!["on_pong_broadcast", "on_pong_pool", "on_pong_singleton"]
    );

    run.stop();
    proxy.close().await;
    listener
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    recorder_handle
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}
