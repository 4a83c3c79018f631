//! Broker failover and quorum queues against the real broker.
//!
//! A list's "dead" element is an address nothing listens on (127.0.0.1:1)
//! or a [`FaultyProxy`] in front of the shared broker that the test cuts:
//! only this test's own connections suffer.

mod common;

use common::{add, calc_service, Probe};
use rpc_core::{json, Config, QueueType, RpcProxy, ServiceError, ServiceStatus};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use test_support::faulty::FaultyProxy;
use test_support::WithinExt;
use test_support::{unique_name, Cleanup};

fn config_of(list: &str) -> Config {
    let mut config = Config::new(list).expect("the broker list parses");
    config.rpc_timeout = Duration::from_secs(10);
    config.connect_retry.initial = Duration::from_millis(100);
    config.connect_retry.max = Duration::from_millis(500);
    config
}

/// Every log line of the process, for the password checks.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        std::io::stderr().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Installs it as the process's subscriber (each test is a process of
    /// its own under nextest), at debug level for rpc-core.
    fn install() -> Captured {
        let captured = Captured::default();
        let writer = captured.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("rpc_core=debug,info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        captured
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().map(|v| v.clone()).unwrap_or_default()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_broker_is_skipped_and_no_password_is_logged() {
    let logs = Captured::install();
    let uri = test_support::require_broker();
    let name = unique_name("failover-dead-first");
    let _cleanup = Cleanup::new().service(&name);
    let list = format!("amqp://app:dead-secret-1@127.0.0.1:1/%2f; {uri}");
    let config = config_of(&list);
    assert_eq!(config.amqp_uri.len(), 2);
    let (probe, _) = Probe::new();
    let mut svc = calc_service(&name, probe).spawn(config.clone());
    svc.ready()
        .within(
            test_support::START_BOUND,
            "the service to start past the dead broker",
        )
        .await
        .expect("the service starts on the second broker");
    let p = RpcProxy::connect(config.clone())
        .within(
            test_support::START_BOUND,
            "the proxy to connect past the dead broker",
        )
        .await
        .expect("the proxy connects to the second broker");
    assert_eq!(add(&p, &name, 2, 3).await, json!(5));
    p.close().await;
    svc.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();

    let text = logs.text();
    assert!(
        text.contains("127.0.0.1:1") && text.contains("trying the next one"),
        "the dead broker's skip is logged:\n{text}"
    );
    assert!(text.contains("broker_index=1"), "{text}");
    assert!(
        !text.contains("dead-secret-1"),
        "a password was logged:\n{text}"
    );
    let shown = format!("{config:?} {}", config.amqp_uri);
    assert!(!shown.contains("dead-secret-1"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_dead_brokers_fails_once_with_every_endpoint_and_no_password() {
    let logs = Captured::install();
    let mut config =
        config_of("amqp://u:dead-secret-2@127.0.0.1:1/;amqp://u:dead-secret-3@127.0.0.1:2/");
    config.connect_retry = rpc_core::RetryPolicy::once();
    let Err(err) = RpcProxy::connect(config)
        .within(Duration::from_secs(15), "connecting to two dead brokers")
        .await
    else {
        panic!("nothing listens there, yet the proxy connected");
    };
    let text = format!("{err} {err:?} {}", logs.text());
    assert!(
        text.contains("127.0.0.1:1") && text.contains("127.0.0.1:2"),
        "{text}"
    );
    assert!(!text.contains("dead-secret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_loss_services_and_proxies_reconnect_to_the_next_broker() {
    let uri = test_support::require_broker();
    let name = unique_name("failover-next");
    let _cleanup = Cleanup::new().service(&name);
    let faulty = FaultyProxy::in_front_of(&uri).await;
    // First element: the proxy (cut below); second: the broker itself.
    let config = config_of(&format!("{};{uri}", faulty.uri(&uri)));
    let (probe, _) = Probe::new();
    let mut svc = calc_service(&name, probe).spawn(config.clone());
    svc.ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .unwrap();
    let p = RpcProxy::connect(config.clone())
        .within(test_support::START_BOUND, "the proxy to connect")
        .await
        .unwrap();
    assert_eq!(add(&p, &name, 1, 2).await, json!(3));
    assert_eq!(faulty.accepted(), 2, "both started on the first element");

    let mut status = svc.status_receiver();
    faulty.cut();
    status
        .wait_for(|s| matches!(s, ServiceStatus::Reconnecting(_)))
        .within(Duration::from_secs(20), "the service to see the loss")
        .await
        .unwrap();
    status
        .wait_for(|s| matches!(s, ServiceStatus::Consuming))
        .within(Duration::from_secs(20), "the service to consume again")
        .await
        .unwrap();
    // The proxy's link reconnects on its own; a call waits for it.
    let mut served = None;
    for _ in 0..20 {
        match p
            .call(&name, "add", rpc_core::Args::new().arg(2).arg(2))
            .await
        {
            Ok(v) => {
                served = Some(v);
                break;
            }
            // A call in flight at the cut fails fast; the next one waits
            // for the new connection.
            Err(e) => eprintln!("call during failover: {e}"),
        }
    }
    assert_eq!(served, Some(json!(4)));
    assert_eq!(
        faulty.accepted(),
        2,
        "after the loss both went to the next element, not back through the cut one"
    );
    p.close().await;
    svc.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_rpc_queue_serves_and_a_type_mismatch_stops_the_start_with_the_migration() {
    let uri = test_support::require_broker();
    let name = unique_name("quorum-rpc");
    let _cleanup = Cleanup::new().service(&name);
    let mut quorum = config_of(&uri);
    quorum.queue_type = QueueType::Quorum;
    let (probe, _) = Probe::new();
    let mut svc = calc_service(&name, probe).spawn(quorum.clone());
    svc.ready()
        .within(test_support::START_BOUND, "the quorum service to start")
        .await
        .expect("a quorum rpc queue is declared");
    let p = RpcProxy::connect(config_of(&uri)).await.unwrap();
    assert_eq!(add(&p, &name, 20, 22).await, json!(42));

    // The same service with the default (classic, no argument) is refused.
    let (probe, _) = Probe::new();
    let mut classic = calc_service(&name, probe).spawn(config_of(&uri));
    let err = classic
        .ready()
        .within(
            test_support::START_BOUND,
            "the classic instance to be refused",
        )
        .await
        .expect_err("a classic declaration of a quorum queue fails");
    match &err {
        ServiceError::QueueTypeMismatch {
            queue,
            existing,
            wanted,
        } => assert_eq!(
            (queue.as_str(), *existing, *wanted),
            (
                format!("rpc-{name}").as_str(),
                QueueType::Quorum,
                QueueType::Classic
            )
        ),
        other => panic!("expected QueueTypeMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("rpc-{name}"))
            && msg.contains("delete")
            && msg.contains("new service name"),
        "{msg}"
    );
    // The quorum instance is unharmed.
    assert_eq!(add(&p, &name, 1, 1).await, json!(2));
    p.close().await;
    svc.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}
