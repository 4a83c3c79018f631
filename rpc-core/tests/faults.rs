//! Connection faults, injected with a TCP proxy in front of the broker so
//! that only this test's own connections suffer: cut connections, a silent
//! partition caught by missed heartbeats, a broker that refuses connections
//! at start. Services and proxies reconnect on their own, calls in flight
//! on a dead connection fail at once with a clear error, and calls after
//! recovery succeed.

mod common;

use common::{add, calc_service, Probe};
use rpc_core::{json, Args, CallError, Config, RpcProxy, ServiceHandle, ServiceStatus};
use std::time::{Duration, Instant};
use test_support::faulty::FaultyProxy;
use test_support::WithinExt;
use test_support::{unique_name, Cleanup};

fn config_via(uri: &str) -> Config {
    let mut config = Config::new(uri).unwrap();
    config.rpc_timeout = Duration::from_secs(15);
    config.connect_retry.initial = Duration::from_millis(100);
    config.connect_retry.max = Duration::from_millis(500);
    config
}

/// The calc service on `name`, once it consumes.
async fn start(name: &str, config: &Config) -> ServiceHandle {
    let (probe, _) = Probe::new();
    let mut handle = calc_service(name, probe).spawn(config.clone());
    handle
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .unwrap();
    handle
}

/// Waits until the service's status satisfies `want`.
async fn wait_status(handle: &ServiceHandle, want: fn(&ServiceStatus) -> bool, what: &str) {
    let mut rx = handle.status_receiver();
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(want))
        .await
        .unwrap_or_else(|_| panic!("service never became {what}"))
        .unwrap();
}

/// Calls until one succeeds (the proxy is reconnecting), within 20 s.
async fn until_ok(p: &RpcProxy, service: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        match p
            .with_timeout(Duration::from_secs(3))
            .call(service, "add", Args::new().arg(1).arg(1))
            .await
        {
            Ok(v) => {
                assert_eq!(v, json!(2));
                return t0.elapsed();
            }
            Err(e) => assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no recovery in 20 s: {e}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_proxy_connection_fails_calls_in_flight_at_once_then_recovers() {
    let uri = test_support::require_broker();
    let name = unique_name("calc-cut");
    let _cleanup = Cleanup::new().service(&name);
    let svc = start(&name, &config_via(&uri)).await;
    let faulty = FaultyProxy::in_front_of(&uri).await;
    let p = RpcProxy::connect(config_via(&faulty.uri(&uri)))
        .await
        .unwrap();
    assert_eq!(add(&p, &name, 1, 2).await, json!(3));

    let slow = p
        .call_async(&name, "slow", Args::new().arg("x").arg(3000))
        .await
        .unwrap();
    let t0 = Instant::now();
    faulty.cut();
    match slow.result().await {
        Err(CallError::ConnectionLost {
            service, method, ..
        }) => assert_eq!((service.as_str(), method.as_str()), (name.as_str(), "slow")),
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "failed after {:?}, not at once",
        t0.elapsed()
    );
    let recovery = until_ok(&p, &name).await;
    eprintln!("proxy recovered {recovery:?} after the cut");
    assert!(
        faulty.accepted() >= 2,
        "the proxy reconnected through the same address"
    );
    p.close().await;
    svc.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_is_caught_by_missed_heartbeats() {
    let uri = test_support::require_broker();
    let name = unique_name("calc-hb");
    let _cleanup = Cleanup::new().service(&name);
    let svc = start(&name, &config_via(&uri)).await;
    let faulty = FaultyProxy::in_front_of(&uri).await;
    let mut cfg = config_via(&faulty.uri(&uri));
    cfg.heartbeat = 1;
    let p = RpcProxy::connect(cfg).await.unwrap();
    assert_eq!(add(&p, &name, 2, 2).await, json!(4));

    let pending = p
        .call_async(&name, "slow", Args::new().arg("y").arg(100))
        .await
        .unwrap();
    faulty.pause();
    let t0 = Instant::now();
    match pending.result().await {
        Err(CallError::ConnectionLost { reason, .. }) => {
            eprintln!("lost after {:?}: {reason}", t0.elapsed())
        }
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    // Two heartbeat intervals of silence, not the 15 s call timeout.
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t0.elapsed()
    );
    faulty.resume();
    until_ok(&p, &name).await;
    p.close().await;
    svc.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reconnects_redeclares_and_answers_what_it_held() {
    let uri = test_support::require_broker();
    let name = unique_name("calc-svc-cut");
    let _cleanup = Cleanup::new().service(&name);
    let faulty = FaultyProxy::in_front_of(&uri).await;
    let svc = start(&name, &config_via(&faulty.uri(&uri))).await;
    let p = RpcProxy::connect(config_via(&uri)).await.unwrap();
    assert_eq!(add(&p, &name, 1, 1).await, json!(2));

    // A request the service holds unacked when its connection dies is
    // redelivered and answered after the reconnect.
    let held = p
        .call_async(&name, "slow", Args::new().arg("held").arg(500))
        .await
        .unwrap();
    faulty.cut();
    wait_status(
        &svc,
        |s| matches!(s, ServiceStatus::Reconnecting(_)),
        "reconnecting",
    )
    .await;
    wait_status(
        &svc,
        |s| matches!(s, ServiceStatus::Consuming),
        "consuming again",
    )
    .await;
    assert_eq!(held.result().await.unwrap(), json!("held"));
    assert_eq!(add(&p, &name, 20, 22).await, json!(42));
    p.close().await;
    svc.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_before_the_broker_is_reachable_waits_and_then_serves() {
    let uri = test_support::require_broker();
    let name = unique_name("calc-late-broker");
    let _cleanup = Cleanup::new().service(&name);
    let faulty = FaultyProxy::in_front_of(&uri).await;
    faulty.refuse(true);
    let (probe, _) = Probe::new();
    let svc = calc_service(&name, probe).spawn(config_via(&faulty.uri(&uri)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        matches!(svc.status(), ServiceStatus::Starting),
        "{:?}",
        svc.status()
    );
    faulty.refuse(false);
    wait_status(&svc, |s| matches!(s, ServiceStatus::Consuming), "consuming").await;
    let p = RpcProxy::connect(config_via(&uri)).await.unwrap();
    assert_eq!(add(&p, &name, 3, 4).await, json!(7));
    p.close().await;
    svc.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_partitioned_silently_notices_by_heartbeat_and_recovers() {
    let uri = test_support::require_broker();
    let name = unique_name("calc-svc-hb");
    let _cleanup = Cleanup::new().service(&name);
    let faulty = FaultyProxy::in_front_of(&uri).await;
    let mut cfg = config_via(&faulty.uri(&uri));
    cfg.heartbeat = 1;
    let svc = start(&name, &cfg).await;
    faulty.pause();
    wait_status(
        &svc,
        |s| matches!(s, ServiceStatus::Reconnecting(_)),
        "reconnecting",
    )
    .await;
    faulty.resume();
    wait_status(
        &svc,
        |s| matches!(s, ServiceStatus::Consuming),
        "consuming again",
    )
    .await;
    let p = RpcProxy::connect(config_via(&uri)).await.unwrap();
    assert_eq!(add(&p, &name, 5, 5).await, json!(10));
    p.close().await;
    svc.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_fast_first_connect_still_reconnects_patiently() {
    let uri = test_support::require_broker();
    let name = unique_name("calc-once");
    let _cleanup = Cleanup::new().service(&name);
    let svc = start(&name, &config_via(&uri)).await;
    let faulty = FaultyProxy::in_front_of(&uri).await;
    let mut cfg = config_via(&faulty.uri(&uri));
    cfg.connect_retry.attempts = Some(1);
    let p = RpcProxy::connect(cfg).await.unwrap();
    // Down for longer than several reconnection attempts.
    faulty.refuse(true);
    faulty.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!p.is_connected());
    faulty.refuse(false);
    until_ok(&p, &name).await;
    p.close().await;
    svc.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}
