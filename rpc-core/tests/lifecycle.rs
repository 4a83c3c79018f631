//! Stopping and starting: a graceful stop with calls in flight loses no
//! reply and runs nothing twice; requests queued while no instance runs are
//! answered by the next one; a broker that is not there is retried.

mod common;

use common::{config, proxy, start_named, Probe};
use rpc_core::{json, Args, RetryPolicy, RpcProxy};
use std::time::Duration;
use test_support::raw::queue_depth;
use test_support::WithinExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_with_calls_in_flight_loses_nothing_and_runs_nothing_twice() {
    let mut config = config();
    config.max_workers = 4;
    config.rpc_timeout = Duration::from_secs(30);
    let name = test_support::unique_name("calc-stop");
    let (probe, mut started) = Probe::new();
    let mut first = start_named(&name, &config, probe.clone()).await;
    let p = proxy(&config).await;

    let total = 12;
    let mut calls = Vec::new();
    for i in 0..total {
        calls.push(
            p.call_async(&name, "slow", Args::new().arg(i).arg(400))
                .await
                .unwrap(),
        );
    }
    // Stop while four calls are running.
    for _ in 0..4 {
        started
            .recv()
            .within(Duration::from_secs(15), "a slow call to start")
            .await
            .unwrap();
    }
    first.stop().await;
    let done_by_first: usize = probe.runs().values().sum();
    assert_eq!(
        done_by_first, 4,
        "the stop let the running calls finish, and took no new ones"
    );
    assert_eq!(
        queue_depth(&rpc_core::wire::rpc_queue(&name)).await,
        (total - done_by_first) as u32,
        "the rest wait in the queue"
    );

    // A new instance answers the rest; every call gets exactly one reply.
    let mut second = start_named(&name, &config, probe.clone()).await;
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.result().await.unwrap(), json!(i));
    }
    let runs = probe.runs();
    assert_eq!(runs.len(), total);
    assert!(
        runs.values().all(|&n| n == 1),
        "something ran twice: {runs:?}"
    );
    assert_eq!(queue_depth(&rpc_core::wire::rpc_queue(&name)).await, 0);

    p.close().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_while_down_are_answered_after_start() {
    let config = config();
    let name = test_support::unique_name("calc-late");
    let (probe, _) = Probe::new();
    // Declare the queue by running once, then stop.
    let mut svc = start_named(&name, &config, probe.clone()).await;
    svc.stop().await;
    let p = proxy(&config).await;
    let pending = p
        .call_async(&name, "add", Args::new().arg(2).arg(3))
        .await
        .unwrap();
    assert_eq!(queue_depth(&rpc_core::wire::rpc_queue(&name)).await, 1);
    let mut svc = start_named(&name, &config, probe).await;
    assert_eq!(pending.result().await.unwrap(), json!(5));
    p.close().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_named_without_the_password() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut config =
        rpc_core::Config::new(&format!("amqp://user:sup3rsecret@127.0.0.1:{port}/%2f")).unwrap();
    config.connect_retry = RetryPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(100),
        attempts: Some(3),
    };
    let err = RpcProxy::connect(config).await.unwrap_err().to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("sup3rsecret"), "{err}");
}
