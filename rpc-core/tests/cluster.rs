//! Broker failover on a real 3-node RabbitMQ cluster of the test's own
//! (test_support::cluster). A service and a client both have the three
//! nodes in their AMQP_URI list and both start on node 1; four callers keep
//! calls in flight. Node 1 is hard-killed (SIGKILL): the service reconnects
//! to another node, redeclares its queue and consumes again; the calls in
//! flight at the kill fail at once with `ConnectionLost` (not after their
//! timeout); calls succeed again once the client has reconnected too. The
//! test prints how long that took on a `RELIABILITY scenario=cluster-node-kill`
//! line.
//!
//! The service's queue is a quorum queue, replicated on the three nodes, so
//! it survives the loss of the node it was declared on. A second service
//! with a classic queue, declared on node 1 as well, shows the difference:
//! its queue is gone with its home node, and it gets no answer while node 1
//! is down.

mod common;

use common::{calc_service, Probe};
use rpc_core::{json, Args, CallError, Config, QueueType, RpcProxy, ServiceHandle, ServiceStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::cluster::Cluster;
use test_support::{unique_name, WithinExt};

const CALLERS: usize = 4;
/// How long each call runs in the service: calls are in flight at the kill.
const CALL_MS: u64 = 300;

#[derive(Debug)]
struct Call {
    started: Instant,
    ended: Instant,
    result: Result<(), CallError>,
}

fn config(uri: &str, queue_type: QueueType) -> Config {
    let mut config = Config::new(uri).expect("the URI list parses");
    config.rpc_timeout = Duration::from_secs(10);
    config.connect_retry.initial = Duration::from_millis(100);
    config.connect_retry.max = Duration::from_millis(500);
    config.queue_type = queue_type;
    config
}

async fn start(name: &str, config: &Config) -> ServiceHandle {
    let (probe, _) = Probe::new();
    let mut handle = calc_service(name, probe).spawn(config.clone());
    handle
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .expect("the service consumes");
    handle
}

/// When the service went back to consuming after `after`, watched from now.
fn watch_consuming(handle: &ServiceHandle) -> Arc<Mutex<Vec<(Instant, bool)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut rx = handle.status_receiver();
    let out = seen.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let consuming = matches!(*rx.borrow(), ServiceStatus::Consuming);
            out.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((Instant::now(), consuming));
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_fails_over_to_another_node_when_its_node_is_killed() {
    let cluster = Cluster::start().await;
    // Queues live on the test's cluster and go with it: no Cleanup.
    let quorum = unique_name("cluster_quorum");
    let classic = unique_name("cluster_classic");
    let list = cluster.kombu_uri();
    let service = start(&quorum, &config(&list, QueueType::Quorum)).await;
    let classic_service = start(&classic, &config(&list, QueueType::Classic)).await;
    let proxy = RpcProxy::connect(config(&list, QueueType::Classic))
        .await
        .expect("proxy connects");
    assert_eq!(
        proxy
            .call(&quorum, "add", Args::new().arg(1).arg(2))
            .await
            .expect("a first call"),
        json!(3)
    );
    let queues = cluster
        .rabbitmqctl(1, &["-q", "list_queues", "name", "type"])
        .await
        .expect("list_queues");
    let kind = |q: &str| {
        queues
            .lines()
            .find(|l| l.split_whitespace().next() == Some(q))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("missing")
            .to_owned()
    };
    assert_eq!(kind(&format!("rpc-{quorum}")), "quorum", "{queues}");
    assert_eq!(kind(&format!("rpc-{classic}")), "classic", "{queues}");
    // In order: the service, the classic one and the client all start on
    // node 1.
    let me = std::process::id();
    assert_eq!(cluster.nodes_connected_from(me), vec![1]);
    let statuses = watch_consuming(&service);

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::<Call>::new()));
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let (proxy, quorum, stop, calls) =
            (proxy.clone(), quorum.clone(), stop.clone(), calls.clone());
        callers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let started = Instant::now();
                let result = proxy
                    .call(&quorum, "slow", Args::new().arg(json!([c, n])).arg(CALL_MS))
                    .await
                    .map(|_| ());
                let failed = result.is_err();
                calls.lock().unwrap().push(Call {
                    started,
                    ended: Instant::now(),
                    result,
                });
                if failed {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    let count_ok = |calls: &Mutex<Vec<Call>>| {
        calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.result.is_ok())
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_ok(&calls) < 20 {
        assert!(
            Instant::now() < deadline,
            "20 calls did not succeed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cluster.kill(1).await;
    // `kill` returns once the VM is gone; its sockets closed with it.
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    let recovered = loop {
        let first_ok = calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.started > killed && c.result.is_ok())
            .map(|c| c.ended)
            .min();
        if let Some(t) = first_ok {
            break t - killed;
        }
        assert!(
            Instant::now() < deadline,
            "no call succeeded within 30 s of the node kill: {:?}",
            calls
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(5)
                .map(|c| &c.result)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let service_back = statuses
        .lock()
        .unwrap()
        .iter()
        .find(|(t, consuming)| *consuming && *t > killed)
        .map(|(t, _)| *t - killed);

    // The classic service's queue went with node 1.
    let classic_probe = proxy.with_timeout(Duration::from_secs(2));
    let mut classic_errors = Vec::new();
    let classic_window = Instant::now() + Duration::from_secs(6);
    let mut classic_answered = false;
    while Instant::now() < classic_window {
        match classic_probe
            .call(&classic, "add", Args::new().arg(1).arg(1))
            .await
        {
            Ok(_) => {
                classic_answered = true;
                break;
            }
            Err(e) => classic_errors.push(kind_of(&e)),
        }
    }
    classic_errors.dedup();

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for c in callers {
        c.within(Duration::from_secs(20), "the callers to stop")
            .await
            .expect("a caller panicked");
    }
    let calls = std::mem::take(&mut *calls.lock().unwrap());
    let in_flight: Vec<&Call> = calls
        .iter()
        .filter(|c| c.started < killed && c.ended >= killed - Duration::from_millis(100))
        .collect();
    let in_flight_failed: Vec<&Call> = in_flight
        .iter()
        .copied()
        .filter(|c| c.result.is_err())
        .collect();
    let slowest_failure = in_flight_failed
        .iter()
        .map(|c| c.ended.saturating_duration_since(killed))
        .max()
        .unwrap_or_default();
    let mut errors: Vec<String> = calls
        .iter()
        .filter_map(|c| c.result.as_ref().err().map(kind_of))
        .collect();
    errors.sort();
    errors.dedup();
    let now_on = cluster.nodes_connected_from(me);
    println!(
        "RELIABILITY scenario=cluster-node-kill queue=quorum callers={CALLERS} calls={} failed={} in_flight={} in_flight_failed={} in_flight_failed_within_ms={} first_success_after_kill_ms={} service_consuming_again_ms={} now_on_nodes={now_on:?} error_kinds={errors:?}",
        calls.len(),
        calls.iter().filter(|c| c.result.is_err()).count(),
        in_flight.len(),
        in_flight_failed.len(),
        slowest_failure.as_millis(),
        recovered.as_millis(),
        service_back.map_or("never".to_owned(), |d| d.as_millis().to_string()),
    );
    println!(
        "RELIABILITY scenario=cluster-node-kill queue=classic answered_within_6s={classic_answered} errors={classic_errors:?}"
    );

    assert!(
        !now_on.is_empty() && !now_on.contains(&1),
        "still on {now_on:?}"
    );
    assert!(
        service_back.is_some(),
        "the quorum service did not consume again"
    );
    assert!(in_flight.iter().all(|c| match &c.result {
        Ok(()) => true,
        Err(CallError::ConnectionLost { .. }) => true,
        Err(e) => panic!("a call in flight failed unclearly: {e}"),
    }),);
    assert!(
        slowest_failure < Duration::from_secs(3),
        "calls in flight took {slowest_failure:?} to fail (their timeout is 10 s)"
    );
    assert!(
        recovered < Duration::from_secs(15),
        "calls succeeded again only {recovered:?} after the kill"
    );
    assert!(
        !classic_answered,
        "the classic queue's service answered with its queue's home node down"
    );
    proxy.close().await;
    for handle in [service, classic_service] {
        handle
            .shutdown()
            .within(test_support::STOP_BOUND, "the service to stop")
            .await
            .expect("stops");
    }
}

/// A call error's kind, for the figures.
fn kind_of(e: &CallError) -> String {
    match e {
        CallError::Remote(r) => format!("Remote({})", r.exc_type),
        CallError::UnknownService(_) => "UnknownService".into(),
        CallError::Timeout { .. } => "Timeout".into(),
        CallError::ConnectionLost { .. } => "ConnectionLost".into(),
        CallError::NotConnected(_) => "NotConnected".into(),
        CallError::Publish(_) => "Publish".into(),
        other => other.to_string(),
    }
}
