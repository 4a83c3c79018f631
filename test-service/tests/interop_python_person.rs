//! `test-service --once` against two person services: a Python nameko
//! 2.14.1 fixture (tests/python/person_fixture.py, run with `nameko run`)
//! and the Rust person-service, run in this process. A round (its calls,
//! and the events the changes dispatch, carrying the caller's call id)
//! passes against both.
//!
//! A fixture is only worth passing if it behaves like the real thing, so a
//! third test makes the same calls to both and compares every answer.

use rpc_core::{json, Args, CallError, RpcProxy, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use test_support::nameko::NamekoRun;
use test_support::Cleanup;

mod common;
use common::RealPerson;

fn python_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python"))
}

/// The Python fixture, running as `name`.
fn start_fixture(name: &str) -> NamekoRun {
    NamekoRun::start(
        python_dir(),
        "person_fixture",
        &test_support::require_broker(),
        &[("PERSON_SERVICE_NAME", name)],
    )
}

/// Deletes the fixture's queue and event exchange when dropped.
fn cleanup_for(name: &str) -> Cleanup {
    Cleanup::new()
        .service(name)
        .exchange(&format!("{name}.events"))
}

/// Runs `test-service --once` against `target`. It waits (up to `--wait`)
/// for the target to answer, so it can start alongside it.
async fn run_once(target: &str) -> (Option<i32>, String, String) {
    common::run_test_service(&[
        "--once",
        "--target",
        target,
        "--wait",
        "60",
        "--timeout",
        "10",
    ])
    .await
}

fn assert_round_passed(target: &str, (code, stdout, stderr): &(Option<i32>, String, String)) {
    assert_eq!(
        *code,
        Some(0),
        "test-service --once against {target}:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Every call, and the event each change dispatches, was checked.
    for step in [
        "create",
        "list",
        "update",
        "get",
        "delete",
        "get_deleted",
        "create_invalid",
        "person_created",
        "person_updated",
        "person_deleted",
        "event_call_ids",
    ] {
        assert!(
            stdout.contains(&format!("PASS  {step} ")),
            "{step}: {stdout}"
        );
    }
    assert!(
        !stdout.contains("FAIL  ") && !stdout.contains("SKIP  "),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("round against `{target}` passed: ")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_passes_against_the_python_fixture() {
    let name = test_support::unique_name("py_person");
    let _cleanup = cleanup_for(&name);
    let mut fixture = start_fixture(&name);
    let outcome = run_once(&name).await;
    fixture.assert_running();
    assert_round_passed(&name, &outcome);
    fixture.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_passes_against_the_rust_person_service() {
    let name = test_support::unique_name("rust_person");
    let person = RealPerson::start(&name).await;
    let outcome = run_once(&name).await;
    assert_round_passed(&name, &outcome);
    person.stop().await;
}

/// How much of two answers must agree.
#[derive(Clone, Copy, Debug)]
enum Compare {
    /// Result, or error type, path, args and value.
    Exactly,
    /// Error type, path and the first arg (the field): the message of a
    /// type error is serde's in Rust and the fixture's own in Python.
    Field,
}

/// An answer as comparable JSON.
fn answer(result: Result<Value, CallError>, compare: Compare) -> Value {
    match result {
        Ok(v) => json!({ "result": v }),
        Err(CallError::Remote(e)) => match compare {
            Compare::Exactly => json!({
                "exc_type": e.exc_type, "exc_path": e.exc_path,
                "exc_args": e.exc_args, "value": e.value,
            }),
            Compare::Field => json!({
                "exc_type": e.exc_type, "exc_path": e.exc_path,
                "field": e.exc_args.first(),
            }),
        },
        Err(e) => panic!("not an answer: {e}"),
    }
}

/// Calls `list(limit=1)` until the service answers.
async fn wait_until_up(proxy: &RpcProxy, name: &str, fixture: &mut NamekoRun) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        fixture.assert_running();
        match proxy
            .call(name, "list", Args::new().kwarg("limit", 1))
            .await
        {
            Ok(_) => return,
            Err(CallError::UnknownService(_)) => {}
            Err(e) => panic!("{name} failed: {e}"),
        }
        assert!(Instant::now() < deadline, "{name} did not come up in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fixture_answers_like_the_rust_person_service() {
    let py = test_support::unique_name("py_person");
    let rust = test_support::unique_name("rust_person");
    let _cleanup = cleanup_for(&py);
    let mut fixture = start_fixture(&py);
    let person = RealPerson::start(&rust).await;
    let proxy = RpcProxy::connect(common::config())
        .await
        .expect("proxy connects");
    wait_until_up(&proxy, &py, &mut fixture).await;

    use Compare::*;
    let long_name = "x".repeat(101);
    let calls: Vec<(&str, Args, Compare)> = vec![
        (
            "create",
            Args::new().arg("Ada").arg("Lovelace").arg(36),
            Exactly,
        ),
        (
            "create",
            Args::new()
                .kwarg("first_name", "Grace")
                .kwarg("last_name", "Hopper")
                .kwarg("age", 85)
                .kwarg("member", true),
            Exactly,
        ),
        (
            "create",
            Args::new()
                .arg("Zoë")
                .arg("Ñúñez 😀")
                .arg(0)
                .kwarg("member", false),
            Exactly,
        ),
        ("get", Args::new().arg(1), Exactly),
        ("get", Args::new().kwarg("id", 2), Exactly),
        ("list", Args::new(), Exactly),
        ("list", Args::new().kwarg("limit", 2), Exactly),
        (
            "list",
            Args::new().kwarg("limit", 2).kwarg("after_id", 2),
            Exactly,
        ),
        ("list", Args::new().arg(1).arg(1), Exactly),
        ("list", Args::new().kwarg("after_id", 3), Exactly),
        ("list", Args::new().kwarg("limit", Value::Null), Exactly),
        (
            "update",
            Args::new().arg(1).kwarg("age", 37).kwarg("member", true),
            Exactly,
        ),
        (
            "update",
            Args::new().arg(2).kwarg("first_name", "Amazing Grace"),
            Exactly,
        ),
        (
            "update",
            Args::new().arg(2).kwarg("age", Value::Null),
            Exactly,
        ),
        ("get", Args::new().arg(1), Exactly),
        ("delete", Args::new().arg(3), Exactly),
        ("get", Args::new().arg(3), Exactly),
        ("delete", Args::new().arg(3), Exactly),
        ("update", Args::new().arg(3).kwarg("age", 1), Exactly),
        // The changes are checked before the id.
        ("update", Args::new().arg(3).kwarg("age", 200), Exactly),
        ("list", Args::new(), Exactly),
        ("create", Args::new().arg("").arg("x").arg(1), Exactly),
        ("create", Args::new().arg("a").arg("  ").arg(1), Exactly),
        ("create", Args::new().arg("a").arg("b").arg(151), Exactly),
        ("create", Args::new().arg("a").arg("b").arg(-1), Exactly),
        ("create", Args::new().arg("a\nb").arg("c").arg(1), Exactly),
        (
            "create",
            Args::new().arg(long_name).arg("c").arg(1),
            Exactly,
        ),
        ("create", Args::new().arg("a").arg("b").arg("old"), Field),
        ("create", Args::new().arg("").arg(5).arg(1), Field),
        (
            "create",
            Args::new().arg("a").arg("b").arg(1).kwarg("member", "yes"),
            Field,
        ),
        ("update", Args::new().arg(1).kwarg("last_name", ""), Exactly),
        ("list", Args::new().kwarg("limit", 0), Exactly),
        ("list", Args::new().kwarg("limit", 10_001), Exactly),
        ("list", Args::new().kwarg("limit", "x"), Field),
        ("get", Args::new().arg("1"), Field),
        ("get", Args::new(), Exactly),
        ("get", Args::new().arg(1).kwarg("bogus", 1), Exactly),
        ("get", Args::new().arg(1).kwarg("id", 1), Exactly),
        ("create", Args::new().arg("only-one"), Exactly),
        ("get", Args::new().arg(1).arg(2), Exactly),
        ("nosuch", Args::new(), Exactly),
        // The first three are still there, in id order, ids not reused.
        (
            "create",
            Args::new().arg("Late").arg("Comer").arg(1),
            Exactly,
        ),
        ("list", Args::new(), Exactly),
    ];
    let mut differences = Vec::new();
    for (method, args, compare) in calls {
        let shown = format!("{method}{}", serde_json::to_string(args.body()).unwrap());
        let from_rust = answer(proxy.call(&rust, method, args.clone()).await, compare);
        let from_python = answer(proxy.call(&py, method, args).await, compare);
        if from_rust != from_python {
            differences.push(format!(
                "{shown}:\n  rust:   {from_rust}\n  python: {from_python}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "the fixture differs from the Rust person-service:\n{}",
        differences.join("\n")
    );

    fixture.assert_running();
    fixture.stop();
    proxy.close().await;
    person.stop().await;
}
