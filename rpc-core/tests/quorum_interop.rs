//! Python nameko 2.14.1 peers and Rust services on quorum queues: a
//! Python ClusterRpcProxy calls a Rust service whose `rpc-{service}` queue
//! is quorum, and Rust service_pool and singleton handlers on quorum queues
//! receive an event a Python service dispatches. (The Python service's own
//! queues are classic: nameko declares them so.)

mod common;

use common::{python_dir, start_calc, wait_for_python, Probe};
use rpc_core::events::Subscription;
use rpc_core::{json, Args, Context, EventHandlerOptions, QueueType, RpcProxy, Service, Value};
use std::process::Command;
use std::time::Duration;
use test_support::nameko::NamekoRun;
use test_support::WithinExt;
use test_support::{unique_name, Cleanup};
use tokio::sync::mpsc;

fn quorum_config() -> rpc_core::Config {
    let mut config = common::config();
    config.queue_type = QueueType::Quorum;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_cluster_rpc_proxy_calls_a_rust_service_on_a_quorum_queue() {
    let config = quorum_config();
    let python = test_support::python::python();
    let (probe, _) = Probe::new();
    let mut svc = start_calc(&config, probe).await;
    // The queue is quorum: a classic declaration of it is refused.
    let (probe, _) = Probe::new();
    let mut classic = common::calc_service(&svc.name, probe).spawn(common::config());
    assert!(matches!(
        classic
            .ready()
            .within(
                test_support::START_BOUND,
                "a classic instance to be refused"
            )
            .await,
        Err(rpc_core::ServiceError::QueueTypeMismatch { .. })
    ));

    let out = tokio::task::spawn_blocking({
        let name = svc.name.clone();
        move || {
            Command::new(python)
                .arg(python_dir().join("py_client.py"))
                .arg(test_support::broker_uri())
                .arg(name)
                .output()
                .expect("run the Python client")
        }
    })
    .within(Duration::from_secs(120), "the Python client")
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let add = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["name"] == "add")
        .expect("the client reports its add call");
    assert_eq!(add["result"], json!(3));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_handlers_on_quorum_queues_receive_python_events() {
    let classic = common::config();
    let config = quorum_config();
    let source = unique_name("unused_src");
    let py = unique_name("py_emitter_q");
    let rust = unique_name("rust_quorum_listener");
    let recorder = unique_name("recorder_q");
    let _cleanup = Cleanup::new()
        .service(&py)
        .service(&recorder)
        .queue(&format!("evt-{source}-ping--{py}.on_ping_pool"))
        .queue(&format!("evt-{source}-ping"))
        .queue(&format!("evt-{py}-pong--{rust}.on_pong_pool"))
        .queue(&format!("evt-{py}-pong"))
        .exchange(&format!("{source}.events"))
        .exchange(&format!("{py}.events"));
    let proxy = RpcProxy::connect(classic.clone()).await.unwrap();
    let mut run = NamekoRun::start(
        python_dir(),
        "py_events",
        &test_support::broker_uri(),
        &[
            ("PY_SERVICE_NAME", py.as_str()),
            ("SOURCE", source.as_str()),
            ("RECORDER", recorder.as_str()),
        ],
    );
    wait_for_python(&proxy, &py, &mut run).await;

    let (tx, mut seen) = mpsc::unbounded_channel();
    let mut builder = Service::builder(&rust);
    for (handler, options) in [
        ("on_pong_pool", EventHandlerOptions::service_pool()),
        ("on_pong_singleton", EventHandlerOptions::singleton()),
    ] {
        let tx = tx.clone();
        builder = builder.event_handler(
            handler,
            Subscription::to("pong").from(&py),
            options,
            move |_ctx: Context, data: Value| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((handler.to_owned(), data));
                    Ok::<(), String>(())
                }
            },
        );
    }
    let mut listener = builder.build().spawn(config.clone());
    listener
        .ready()
        .within(test_support::START_BOUND, "the quorum listener to start")
        .await
        .expect("quorum event queues are declared");

    proxy
        .call(
            &py,
            "emit",
            Args::new().arg("pong").arg(json!({"from": "python"})),
        )
        .await
        .unwrap();
    let mut handlers = Vec::new();
    for _ in 0..2 {
        let (handler, data) = seen
            .recv()
            .within(Duration::from_secs(15), "a Rust handler to get the event")
            .await
            .expect("listener alive");
        assert_eq!(data, json!({"from": "python"}));
        handlers.push(handler);
    }
    handlers.sort();
    assert_eq!(handlers, vec!["on_pong_pool", "on_pong_singleton"]);

    run.stop();
    proxy.close().await;
    listener
        .shutdown()
        .within(test_support::STOP_BOUND, "the listener to stop")
        .await
        .unwrap();
}
