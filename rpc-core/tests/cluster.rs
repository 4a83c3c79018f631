//! Broker failover on a real 3-node RabbitMQ cluster of the test's own
//! (test_support::cluster). A service and two clients have the three nodes
//! in their AMQP_URI list; the service starts on node 1, the main client on
//! node 2 and a second client on node 1. Callers keep calls in flight
//! through both. Node 1 is hard-killed (SIGKILL): the service reconnects to
//! another node, redeclares its queue and consumes again; the main client's
//! calls in flight are redelivered and answered; the second client's calls
//! in flight fail at once with `ConnectionLost` (not after their timeout).
//! The test prints how long until calls succeeded again on a
//! `RELIABILITY scenario=cluster-node-kill` line.
//!
//! The client whose node died can get its calls through again while that
//! node is still down (printed, not asserted: see below). Its reply queue is durable (with `x-expires`, as nameko
//! declares it), so it lived on the lost node and cannot be declared again
//! elsewhere (404 "home node … is down"); the client declares a new reply
//! queue, bound to the same routing key, and goes on. (nameko's own
//! ClusterRpcProxy keeps the name and stays deaf until the node is back; a
//! new proxy works.)
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
/// Callers through the client on node 1.
const NODE1_CALLERS: usize = 2;
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
    test_support::init_logging();
    let cluster = Cluster::start().await;
    // Queues live on the test's cluster and go with it: no Cleanup.
    let quorum = unique_name("cluster_quorum");
    let classic = unique_name("cluster_classic");
    let list = cluster.kombu_uri();
    let service = start(&quorum, &config(&list, QueueType::Quorum)).await;
    let classic_service = start(&classic, &config(&list, QueueType::Classic)).await;
    let proxy = RpcProxy::connect(config(&cluster.kombu_uri_from(2), QueueType::Classic))
        .await
        .expect("proxy connects");
    let proxy1 = RpcProxy::connect(config(&list, QueueType::Classic))
        .await
        .expect("proxy connects");
    let reply_queue_before = proxy1.reply_queue();
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
    // In list order: the services and proxy1 on node 1, the main proxy on
    // node 2.
    let me = std::process::id();
    assert_eq!(cluster.nodes_connected_from(me), vec![1, 2]);
    let statuses = watch_consuming(&service);

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::<Call>::new()));
    let calls1 = Arc::new(Mutex::new(Vec::<Call>::new()));
    let mut callers = Vec::new();
    for c in 0..CALLERS + NODE1_CALLERS {
        let (proxy, calls) = if c < CALLERS {
            (proxy.clone(), calls.clone())
        } else {
            (proxy1.clone(), calls1.clone())
        };
        let (quorum, stop) = (quorum.clone(), stop.clone());
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
                    tokio::time::sleep(Duration::from_millis(200)).await;
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

    // The SIGKILL is sent at once; `kill` returns once the VM is gone (about
    // a second later, a CLI round trip): times count from before the call.
    let killed = Instant::now();
    cluster.kill(1).await;
    let deadline = killed + Duration::from_secs(30);
    let recovered = loop {
        let first_ok = first_success_after(&calls, killed);
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

    // The client that was on node 1 reconnects with its own back-off; give
    // it a bound of its own rather than the classic probe's window.
    let node1_deadline = killed + Duration::from_secs(30);
    let node1_back_after = loop {
        let first_ok = first_success_after(&calls1, killed);
        if let Some(t) = first_ok {
            break Some(t - killed);
        }
        if Instant::now() > node1_deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::SeqCst);
    for c in callers {
        c.within(Duration::from_secs(20), "the callers to stop")
            .await
            .expect("a caller panicked");
    }
    let calls = std::mem::take(&mut *calls.lock().unwrap());
    let calls1 = std::mem::take(&mut *calls1.lock().unwrap());
    let node1_in_flight: Vec<&Call> = calls1
        .iter()
        .filter(|c| c.started < killed && c.ended >= killed)
        .collect();
    let node1_slowest = node1_in_flight
        .iter()
        .map(|c| c.ended.saturating_duration_since(killed))
        .max()
        .unwrap_or_default();
    let node1_back = calls1
        .iter()
        .any(|c| c.started > killed && c.result.is_ok());
    let in_flight: Vec<&Call> = calls
        .iter()
        .filter(|c| c.started < killed && c.ended >= killed)
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
        "RELIABILITY scenario=cluster-node-kill client=on-the-killed-node callers={NODE1_CALLERS} in_flight={} failed_fast_within_ms={} errors={:?} answered_again_while_node_down={node1_back} answered_again_after_ms={} errors_after_kill={:?}",
        node1_in_flight.len(),
        node1_slowest.as_millis(),
        node1_in_flight.iter().filter_map(|c| c.result.as_ref().err().map(kind_of)).collect::<Vec<_>>(),
        node1_back_after.map_or("never".to_owned(), |d| d.as_millis().to_string()),
        {
            let mut kinds: Vec<String> = calls1
                .iter()
                .filter(|c| c.started > killed)
                .filter_map(|c| c.result.as_ref().err().map(kind_of))
                .collect();
            kinds.dedup();
            kinds
        },
    );
    println!(
        "RELIABILITY scenario=cluster-node-kill queue=classic answered_within_6s={classic_answered} errors={classic_errors:?}"
    );

    for c in in_flight.iter().chain(&node1_in_flight) {
        match &c.result {
            Ok(()) | Err(CallError::ConnectionLost { .. }) => {}
            Err(e) => panic!("a call in flight failed unclearly: {e}"),
        }
    }
    assert!(
        in_flight_failed.is_empty() || slowest_failure < Duration::from_secs(3),
        "calls in flight took {slowest_failure:?} to fail (their timeout is 10 s)"
    );
    assert!(
        !node1_in_flight.is_empty(),
        "no call was in flight through the client on node 1"
    );
    assert!(
        node1_in_flight.iter().all(|c| c.result.is_err()) && node1_slowest < Duration::from_secs(3),
        "calls in flight on the killed node did not all fail at once: slowest {node1_slowest:?}"
    );
    // Not asserted: on a loaded machine (the suite beside it, or 3 busy
    // loops) the client reconnected and declared its new reply queue within
    // 50 ms, yet got no answer within 30 s in 2 of 5 runs; on a quiet one it
    // was answered 0.6 s after the kill. The cause is not found yet: the
    // line above prints what its calls failed with.
    assert_ne!(
        proxy1.reply_queue(),
        reply_queue_before,
        "the client on the killed node kept its reply queue's name"
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
    proxy1
        .close()
        .within(
            Duration::from_secs(30),
            "the proxy on the killed node to close",
        )
        .await;
    for handle in [service, classic_service] {
        handle
            .shutdown()
            .within(test_support::STOP_BOUND, "the service to stop")
            .await
            .expect("stops");
    }
}

/// When the first call started after `killed` succeeded, if one has.
fn first_success_after(calls: &Mutex<Vec<Call>>, killed: Instant) -> Option<Instant> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.started > killed && c.result.is_ok())
        .map(|c| c.ended)
        .min()
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
