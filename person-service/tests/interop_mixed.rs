//! A mixed deployment during a migration: a Python nameko 2.14.1 instance
//! and a Rust person-service instance under the SAME service name consume
//! one `rpc-{name}` queue at once.
//!
//! Both declare the queue (and the `nameko-rpc` exchange and binding); a
//! difference in flags would make the second declaration fail with 406
//! PRECONDITION_FAILED. Each test starts one side first and the other
//! second, so each side declares after the other in one of them. Then 50
//! calls through a Rust RpcProxy must all succeed, answered by both
//! instances (Python's `get` answers with a record of its own), both must
//! still be running, and when the first one leaves the other answers alone.

mod helpers;

use futures_util::future::join_all;
use helpers::python_dir;
use person_service::domain::NewPerson;
use person_service::people::{Origin, People};
use person_service::store::Store;
use rpc_core::{json, Args, CallError, Config, RpcProxy, ServiceHandle, ServiceStatus, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::nameko::NamekoRun;
use test_support::Cleanup;

fn config() -> Config {
    let mut config = Config::new(&test_support::require_broker()).expect("AMQP_URI parses");
    config.rpc_timeout = Duration::from_secs(10);
    config
}

/// What the Rust instance answers `get(1)` with: the person it is seeded
/// with.
fn rust_record() -> Value {
    json!({"id": 1, "first_name": "Ada", "last_name": "Lovelace", "age": 36, "member": false})
}

/// What the Python instance answers `get(1)` with (person_twin.py).
fn python_record() -> Value {
    json!({"id": 1, "first_name": "Python", "last_name": "Twin", "age": 30, "member": false})
}

/// The Rust person-service's RPC face on a database holding one person,
/// with every status it goes through recorded.
struct RustInstance {
    handle: ServiceHandle,
    statuses: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl RustInstance {
    async fn start(name: &str) -> RustInstance {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("person.db");
        let store = tokio::task::spawn_blocking(move || Store::open(&db))
            .await
            .unwrap()
            .expect("store opens");
        let people = People::new(store, name);
        let ada = NewPerson::new("Ada".into(), "Lovelace".into(), 36, false).unwrap();
        let ada = people.create(ada, Origin::Http).await.expect("seeded");
        assert_eq!(ada.id, 1);
        let mut handle = person_service::rpc::service(name, people)
            .build()
            .spawn(config());
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let mut rx = handle.status_receiver();
        let seen = statuses.clone();
        tokio::spawn(async move {
            loop {
                let status = format!("{:?}", *rx.borrow_and_update());
                seen.lock().unwrap().push(status);
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), handle.ready())
            .await
            .expect("the Rust instance did not get ready within 30 s")
            .expect("the Rust instance consumes");
        let instance = RustInstance {
            handle,
            statuses,
            _dir: dir,
        };
        instance.assert_consuming();
        instance
    }

    /// Consuming now, and never reconnecting or stopped since it started.
    fn assert_consuming(&self) {
        let status = self.handle.status();
        assert!(
            matches!(status, ServiceStatus::Consuming),
            "the Rust instance is {status:?}"
        );
        let statuses = self.statuses.lock().unwrap().clone();
        assert!(
            statuses.iter().all(|s| s == "Starting" || s == "Consuming"),
            "the Rust instance went through {statuses:?}"
        );
    }
}

/// The Python instance, running `person_twin.py` as `name`.
fn start_python(name: &str) -> NamekoRun {
    NamekoRun::start(
        python_dir(),
        "person_twin",
        &test_support::require_broker(),
        &[("PERSON_SERVICE_NAME", name)],
    )
}

/// Calls `get(1)` until the Python instance answers one (the queue may not
/// exist yet, or the Rust instance may answer meanwhile).
async fn wait_for_python(proxy: &RpcProxy, name: &str, python: &mut NamekoRun) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        python.assert_running();
        // nameko does not exit on a 406: it logs it and reconnects, again
        // and again, so look for it rather than wait the full minute.
        assert_clean_log(python);
        match proxy.call(name, "get", Args::new().arg(1)).await {
            Ok(v) if v == python_record() => return,
            Ok(v) if v == rust_record() => {}
            Ok(other) => panic!("unexpected answer {other}"),
            Err(CallError::UnknownService(_)) => {}
            Err(e) => panic!("get failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the Python instance did not answer within 60 s; its log:\n{}",
            python.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes `n` calls at once; returns how many each side answered, failing
/// on any error or unknown answer.
async fn calls(proxy: &RpcProxy, name: &str, n: usize) -> (usize, usize) {
    let results = join_all((0..n).map(|_| proxy.call(name, "get", Args::new().arg(1)))).await;
    let (mut rust, mut python) = (0, 0);
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(v) if v == rust_record() => rust += 1,
            Ok(v) if v == python_record() => python += 1,
            Ok(other) => panic!("call {i}: unexpected answer {other}"),
            Err(e) => panic!("call {i} failed: {e}"),
        }
    }
    (rust, python)
}

/// No 406 or other failure in the Python instance's output. (On a 406
/// nameko 2.14.1 keeps running: its consumer logs the traceback and
/// reconnects in a loop, so a live process proves nothing by itself.)
fn assert_clean_log(python: &NamekoRun) {
    let log = python.log();
    for bad in ["PRECONDITION_FAILED", "Traceback", "Error"] {
        assert!(
            !log.contains(bad),
            "the Python instance logged {bad:?}:\n{log}"
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum First {
    Rust,
    Python,
}

async fn mixed_deployment(first: First) {
    let name = test_support::unique_name("person_mixed");
    let _cleanup = Cleanup::new()
        .service(&name)
        .exchange(&format!("{name}.events"));
    let proxy = RpcProxy::connect(config()).await.expect("proxy connects");

    let (rust, mut python) = match first {
        First::Rust => {
            let rust = RustInstance::start(&name).await;
            let mut python = start_python(&name);
            wait_for_python(&proxy, &name, &mut python).await;
            (rust, python)
        }
        First::Python => {
            let mut python = start_python(&name);
            wait_for_python(&proxy, &name, &mut python).await;
            let rust = RustInstance::start(&name).await;
            (rust, python)
        }
    };

    let (from_rust, from_python) = calls(&proxy, &name, 50).await;
    eprintln!("{first:?} first: rust answered {from_rust}, python {from_python}");
    assert!(
        from_rust > 0 && from_python > 0,
        "both should answer: rust {from_rust}, python {from_python}"
    );

    // Both still running, neither having failed on the way.
    python.assert_running();
    assert_clean_log(&python);
    rust.assert_consuming();

    // The first to start leaves; the other answers alone.
    match first {
        First::Rust => {
            rust.handle
                .shutdown()
                .await
                .expect("the Rust instance stops");
            assert_eq!(calls(&proxy, &name, 10).await, (0, 10));
            python.assert_running();
            assert_clean_log(&python);
            python.stop();
        }
        First::Python => {
            python.stop();
            assert_eq!(calls(&proxy, &name, 10).await, (10, 0));
            rust.assert_consuming();
            rust.handle
                .shutdown()
                .await
                .expect("the Rust instance stops");
        }
    }
    proxy.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_joins_a_running_rust_instance_on_one_queue() {
    mixed_deployment(First::Rust).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_joins_a_running_python_instance_on_one_queue() {
    mixed_deployment(First::Python).await;
}
