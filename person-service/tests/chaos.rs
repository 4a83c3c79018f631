//! The broker restarts under load. This disturbs every client of the
//! broker, so it is ignored in the normal run; `scripts/test` runs it alone,
//! after everything else: `cargo test -p person-service --test chaos -- --ignored`.
//!
//! A person-service process, a test-service process (service mode, rounds
//! every 0.3 s) and a client with four callers run; the broker is stopped
//! and started again. Calls in flight fail at once with a clear error, calls
//! during the outage fail with a clear error, everything reconnects, calls
//! succeed again, test-service's passed rounds resume, and no answered
//! create is lost or stored twice.

mod helpers;

use helpers::lost_and_duplicated;
use helpers::process::ServiceProcess;
use rpc_core::{Args, CallError, Config, RpcProxy};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::{unique_name, Cleanup};

#[derive(Debug, Default)]
struct Tally {
    answered: usize,
    failed_clear: Vec<String>,
    unexpected: Vec<String>,
    creates: HashMap<String, i64>,
    /// When each successful call returned.
    successes: Vec<Instant>,
}

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

fn test_service_bin() -> std::path::PathBuf {
    // Built alongside this crate's binaries by `cargo test --workspace`.
    let bin =
        std::path::Path::new(env!("CARGO_BIN_EXE_person-service")).with_file_name("test-service");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace) so it is built",
        bin.display()
    );
    bin
}

fn passed_rounds(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains("round") && (l.contains("result=\"pass\"") || l.contains("result=pass"))
        })
        .count()
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the broker: scripts/test runs it alone, after the other tests"]
async fn everything_recovers_from_a_broker_restart() {
    let uri = test_support::require_broker();
    let name = unique_name("person-chaos");
    let checker = unique_name("test_service_chaos");
    let mut cleanup = Cleanup::new()
        .service(&name)
        .service(&checker)
        .exchange(&format!("{name}.events"));
    for event in ["person_created", "person_updated", "person_deleted"] {
        cleanup.add_queue(&format!("evt-{name}-{event}--{checker}.on_{event}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let mut config = Config::new(&uri).unwrap();
    config.rpc_timeout = Duration::from_secs(3);
    config.connect_retry.max = Duration::from_secs(1);
    let proxy = RpcProxy::connect(config).await.unwrap();
    let svc = ServiceProcess::start(&name, &db, &dir.path().join("person.log"), &proxy).await;

    let checker_log = dir.path().join("test-service.log");
    let log_file = std::fs::File::create(&checker_log).unwrap();
    let mut checker_proc = Command::new(test_service_bin())
        .args([
            "--target",
            &name,
            "--service-name",
            &checker,
            "--interval",
            "0.3",
        ])
        .env("AMQP_URI", &uri)
        .env("RUST_LOG", "info")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("start test-service");
    wait_for(
        "test-service passing rounds",
        Duration::from_secs(30),
        || passed_rounds(&checker_log) >= 2,
    )
    .await;

    // Four callers alternate reads and creates until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let seeded = proxy
        .call(&name, "create", Args::new().arg("Seed").arg("Chaos").arg(1))
        .await
        .unwrap();
    let mut callers = Vec::new();
    for c in 0..4 {
        let (proxy, name, stop, tally, seeded) = (
            proxy.clone(),
            name.clone(),
            stop.clone(),
            tally.clone(),
            seeded.clone(),
        );
        callers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let last = format!("C{c}-{n}");
                let result = if n % 2 == 0 {
                    proxy
                        .call(
                            &name,
                            "create",
                            Args::new().arg("Chaos").arg(last.as_str()).arg(2),
                        )
                        .await
                } else {
                    proxy
                        .call(&name, "get", Args::new().arg(seeded.clone()))
                        .await
                };
                let back_off = {
                    let mut t = tally.lock().unwrap();
                    match result {
                        Ok(v) => {
                            t.answered += 1;
                            t.successes.push(Instant::now());
                            if n % 2 == 0 {
                                t.creates.insert(last, v.as_i64().unwrap_or(-1));
                            }
                            false
                        }
                        Err(
                            e @ (CallError::ConnectionLost { .. }
                            | CallError::NotConnected(_)
                            | CallError::Timeout { .. }),
                        ) => {
                            t.failed_clear.push(e.to_string());
                            true
                        }
                        Err(e) => {
                            t.unexpected.push(e.to_string());
                            true
                        }
                    }
                };
                if back_off {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    wait_for("load running", Duration::from_secs(10), || {
        tally.lock().unwrap().answered > 200
    })
    .await;
    let passed_before = passed_rounds(&checker_log);

    let t_stop = Instant::now();
    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
        .await
        .unwrap();
    let stopped_in = t_stop.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t_start = Instant::now();
    tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    })
    .await
    .unwrap();
    let back = Instant::now();
    let started_in = back - t_start;

    wait_for(
        "a call succeeding after the restart",
        Duration::from_secs(30),
        || tally.lock().unwrap().successes.iter().any(|t| *t > back),
    )
    .await;
    let recovery = tally
        .lock()
        .unwrap()
        .successes
        .iter()
        .find(|t| **t > back)
        .map(|t| *t - back)
        .unwrap();
    wait_for(
        "test-service passing rounds again",
        Duration::from_secs(30),
        || passed_rounds(&checker_log) >= passed_before + 2,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for c in callers {
        c.await.unwrap();
    }

    let t = std::mem::take(&mut *tally.lock().unwrap());
    assert!(
        t.unexpected.is_empty(),
        "unexpected failures: {:?}",
        &t.unexpected[..t.unexpected.len().min(5)]
    );
    let (lost, duplicated) = lost_and_duplicated(&db, &t.creates).await;
    let sent = t.answered + t.failed_clear.len();
    println!(
        "RELIABILITY scenario=broker-restart sent={sent} answered={} failed_clear={} lost={lost} duplicated={duplicated} broker_stop_s={:.1} outage_s=2 broker_start_s={:.1} recovery_ms={} test_service_rounds_passed_before={passed_before} after={}",
        t.answered,
        t.failed_clear.len(),
        stopped_in.as_secs_f64(),
        started_in.as_secs_f64(),
        recovery.as_millis(),
        passed_rounds(&checker_log) - passed_before,
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert!(
        recovery < Duration::from_secs(10),
        "recovery took {recovery:?}"
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(checker_proc.id().to_string())
        .status();
    let _ = checker_proc.wait();
    proxy.close().await;
    drop(svc);
}
