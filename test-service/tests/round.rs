//! Rounds against a fake person service on the real broker: a correct fake
//! passes every check, a broken one is caught with a reason, the `--once`
//! binary's exit statuses, and service mode's rounds and call-id stacks.
//!
//! The fake implements person-service's RPC contract (five methods, two
//! errors) over a map in memory, so these tests do not depend on the real
//! person-service, which is developed separately.

use rpc_core::{
    Args, Config, Context, RpcError, RpcProxy, Service, ServiceHandle, Signature, Value,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use test_service::scenario::{self, Outcome, Person, Step};
use test_service::service::{self, Stats};
use test_support::Cleanup;

const NOT_FOUND_PATH: &str = "person_service.exceptions.PersonNotFound";
const VALIDATION_PATH: &str = "person_service.exceptions.ValidationError";

/// A deliberate bug the fake can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quirk {
    None,
    /// `update` accepts `age` but does not change it.
    UpdateIgnoresAge,
}

#[derive(Default)]
struct Store {
    last_id: i64,
    people: BTreeMap<i64, Person>,
    /// The call-id stack of every `create`, to check propagation.
    create_stacks: Vec<Vec<String>>,
}

type Shared = Arc<Mutex<Store>>;

fn not_found(id: i64) -> RpcError {
    RpcError::new("PersonNotFound", NOT_FOUND_PATH, vec![id.into()])
}

fn invalid(field: &str, message: &str) -> RpcError {
    RpcError::new(
        "ValidationError",
        VALIDATION_PATH,
        vec![field.into(), message.into()],
    )
}

fn check_name(field: &str, name: &str) -> Result<(), RpcError> {
    match name.chars().count() {
        0 => Err(invalid(field, "must not be empty")),
        n if n > 100 => Err(invalid(field, "must be at most 100 characters")),
        _ => Ok(()),
    }
}

fn check_age(age: i64) -> Result<(), RpcError> {
    if (0..=150).contains(&age) {
        Ok(())
    } else {
        Err(invalid("age", "must be between 0 and 150"))
    }
}

fn fake_person_service(name: &str, store: Shared, quirk: Quirk) -> Service {
    let (s1, s2, s3, s4, s5) = (
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        store,
    );
    Service::builder(name)
        .on_invalid_argument(|e| invalid(&e.param, &e.message))
        .method(
            "create",
            Signature::new()
                .param("first_name")
                .param("last_name")
                .param("age")
                .optional("member", false),
            move |ctx: Context,
                  (first_name, last_name, age, member): (String, String, i64, bool)| {
                let store = s1.clone();
                async move {
                    check_name("first_name", &first_name)?;
                    check_name("last_name", &last_name)?;
                    check_age(age)?;
                    let mut store = store.lock().unwrap();
                    store.create_stacks.push(ctx.call_id_stack().to_vec());
                    store.last_id += 1;
                    let id = store.last_id;
                    store.people.insert(
                        id,
                        Person {
                            id,
                            first_name,
                            last_name,
                            age,
                            member,
                        },
                    );
                    Ok::<_, RpcError>(id)
                }
            },
        )
        .method(
            "get",
            Signature::new().param("id"),
            move |_ctx: Context, (id,): (i64,)| {
                let store = s2.clone();
                async move {
                    let store = store.lock().unwrap();
                    store.people.get(&id).cloned().ok_or_else(|| not_found(id))
                }
            },
        )
        .method(
            "list",
            Signature::new()
                .optional("limit", Value::Null)
                .optional("after_id", Value::Null),
            move |_ctx: Context, (limit, after_id): (Option<i64>, Option<i64>)| {
                let store = s3.clone();
                async move {
                    let limit = match limit {
                        Some(n) if n < 0 => return Err(invalid("limit", "must not be negative")),
                        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                        None => usize::MAX,
                    };
                    let store = store.lock().unwrap();
                    let after = after_id.unwrap_or(i64::MIN);
                    Ok(store
                        .people
                        .range(after.saturating_add(1)..)
                        .take(limit)
                        .map(|(_, p)| p.clone())
                        .collect::<Vec<_>>())
                }
            },
        )
        .method(
            "update",
            Signature::new()
                .param("id")
                .optional("first_name", Value::Null)
                .optional("last_name", Value::Null)
                .optional("age", Value::Null)
                .optional("member", Value::Null),
            move |_ctx: Context,
                  (id, first_name, last_name, age, member): (
                i64,
                Option<String>,
                Option<String>,
                Option<i64>,
                Option<bool>,
            )| {
                let store = s4.clone();
                async move {
                    if let Some(n) = &first_name {
                        check_name("first_name", n)?;
                    }
                    if let Some(n) = &last_name {
                        check_name("last_name", n)?;
                    }
                    if let Some(a) = age {
                        check_age(a)?;
                    }
                    let mut store = store.lock().unwrap();
                    let person = store.people.get_mut(&id).ok_or_else(|| not_found(id))?;
                    if let Some(n) = first_name {
                        person.first_name = n;
                    }
                    if let Some(n) = last_name {
                        person.last_name = n;
                    }
                    if let Some(a) = age {
                        if quirk != Quirk::UpdateIgnoresAge {
                            person.age = a;
                        }
                    }
                    if let Some(m) = member {
                        person.member = m;
                    }
                    Ok::<_, RpcError>(person.clone())
                }
            },
        )
        .method(
            "delete",
            Signature::new().param("id"),
            move |_ctx: Context, (id,): (i64,)| {
                let store = s5.clone();
                async move {
                    let mut store = store.lock().unwrap();
                    store.people.remove(&id).ok_or_else(|| not_found(id))?;
                    Ok::<_, RpcError>(())
                }
            },
        )
        .build()
}

/// A running fake with its own queue, deleted when the test ends.
struct Fake {
    name: String,
    store: Shared,
    handle: Option<ServiceHandle>,
    _cleanup: Cleanup,
}

impl Fake {
    async fn start(config: &Config, quirk: Quirk) -> Fake {
        Self::start_named(&test_support::unique_name("fake_person"), config, quirk).await
    }

    async fn start_named(name: &str, config: &Config, quirk: Quirk) -> Fake {
        let store = Shared::default();
        let mut handle = fake_person_service(name, store.clone(), quirk).spawn(config.clone());
        handle
            .ready()
            .await
            .expect("the fake person service starts");
        Fake {
            name: name.to_owned(),
            store,
            handle: Some(handle),
            _cleanup: Cleanup::new().service(name),
        }
    }

    fn people(&self) -> usize {
        self.store.lock().unwrap().people.len()
    }

    async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await.expect("the fake stops cleanly");
        }
    }
}

fn config() -> Config {
    let mut config = Config::new(&test_support::require_broker()).expect("AMQP_URI parses");
    config.rpc_timeout = Duration::from_secs(10);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_against_a_correct_service_passes_every_check() {
    let config = config();
    let fake = Fake::start(&config, Quirk::None).await;
    let proxy = RpcProxy::connect(config).await.expect("proxy connects");

    let report = scenario::run_round(&proxy, &fake.name).await;

    assert!(report.passed(), "{report:#?}");
    let steps: Vec<Step> = report.checks.iter().map(|c| c.step).collect();
    assert_eq!(steps, Step::ALL);
    assert!(report.checks.iter().all(|c| c.latency.is_some()));
    assert!(report.person_id.is_some());
    assert_eq!(fake.people(), 0, "the round leaves nothing behind");
    proxy.close().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_update_is_reported_with_its_reason() {
    let config = config();
    let fake = Fake::start(&config, Quirk::UpdateIgnoresAge).await;
    let proxy = RpcProxy::connect(config).await.expect("proxy connects");

    let report = scenario::run_round(&proxy, &fake.name).await;

    assert!(!report.passed());
    let update = report.check(Step::Update).expect("update was checked");
    match &update.outcome {
        Outcome::Failed(reason) => {
            assert!(reason.contains("age is 41, expected 42"), "{reason}")
        }
        other => panic!("update should have failed, got {other:?}"),
    }
    assert!(!report.check(Step::Get).expect("get was checked").passed());
    for step in [
        Step::Create,
        Step::List,
        Step::Delete,
        Step::GetDeleted,
        Step::CreateInvalid,
    ] {
        assert!(
            report.check(step).is_some_and(|c| c.passed()),
            "{step}: {report:#?}"
        );
    }
    assert!(report.failure_summary().starts_with("update: "));
    assert_eq!(fake.people(), 0, "deleted despite the failed update");
    proxy.close().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_service_fails_every_check_without_panicking() {
    let config = config();
    let proxy = RpcProxy::connect(config).await.expect("proxy connects");
    let report = scenario::run_round(&proxy, &test_support::unique_name("nobody")).await;
    assert!(!report.passed());
    let create = report.check(Step::Create).expect("create was checked");
    assert!(
        create
            .reason()
            .is_some_and(|r| r.contains("Unknown service")),
        "{create:?}"
    );
    assert!(matches!(
        report.check(Step::Get).map(|c| &c.outcome),
        Some(Outcome::Skipped(_))
    ));
    proxy.close().await;
}

/// Runs the `--once` binary and returns its status, stdout and stderr.
async fn run_once(uri: &str, target: &str, wait: &str) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-service"))
        .args([
            "--once",
            "--amqp-uri",
            uri,
            "--target",
            target,
            "--wait",
            wait,
            "--timeout",
            "10",
        ])
        .output()
        .await
        .expect("the binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_0_when_every_check_passes() {
    let uri = test_support::require_broker();
    let fake = Fake::start(&config(), Quirk::None).await;
    let (code, stdout, stderr) = run_once(&uri, &fake.name, "5").await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("PASS  create"), "{stdout}");
    assert!(stdout.contains("passed: 7/7 checks"), "{stdout}");
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_1_when_a_check_fails() {
    let uri = test_support::require_broker();
    let fake = Fake::start(&config(), Quirk::UpdateIgnoresAge).await;
    let (code, stdout, stderr) = run_once(&uri, &fake.name, "5").await;
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("FAIL  update"), "{stdout}");
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_1_when_the_target_never_comes_up() {
    let uri = test_support::require_broker();
    let target = test_support::unique_name("nobody");
    let (code, stdout, stderr) = run_once(&uri, &target, "0.5").await;
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("did not come up"), "{stderr}");
    assert!(stderr.contains(&target), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_waits_for_a_target_that_starts_late() {
    let uri = test_support::require_broker();
    let name = test_support::unique_name("late_person");
    let _cleanup = Cleanup::new().service(&name);
    let waiting = tokio::spawn({
        let (uri, name) = (uri.clone(), name.clone());
        async move { run_once(&uri, &name, "30").await }
    });
    // However the start races with the binary's first probe, it must pass:
    // either the queue exists already or the binary waits for it.
    let fake = Fake::start_named(&name, &config(), Quirk::None).await;
    let (code, stdout, stderr) = waiting.await.expect("the runner task completes");
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_2_without_a_broker_and_hides_the_password() {
    test_support::require_broker();
    let (code, stdout, stderr) =
        run_once("amqp://probe:hunter2-secret@127.0.0.1:1/%2f", "person", "0").await;
    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_mode_runs_rounds_with_its_call_id_stack() {
    let config = config();
    let fake = Fake::start(&config, Quirk::None).await;
    let name = test_support::unique_name("test_service");
    let _cleanup = Cleanup::new().service(&name);
    let stats = Stats::new();
    let settings = service::Settings {
        name: name.clone(),
        target: fake.name.clone(),
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(10),
    };
    let mut rounds = stats.subscribe();
    let mut handle = service::build(&settings, Arc::clone(&stats)).spawn(config.clone());
    handle.ready().await.expect("the test service starts");

    tokio::time::timeout(Duration::from_secs(30), rounds.wait_for(|n| *n >= 2))
        .await
        .expect("two rounds within 30 s")
        .expect("the stats live as long as the test");

    let totals = stats.totals();
    assert!(
        totals.passed >= 2 && totals.failed == 0,
        "{totals:?}: {:#?}",
        stats.last()
    );
    {
        let store = fake.store.lock().unwrap();
        assert!(store.create_stacks.len() >= 2);
        for stack in &store.create_stacks {
            assert_eq!(stack.len(), 2, "{stack:?}");
            assert!(
                stack[0].starts_with(&format!("{name}.run_round.")),
                "the tick's call id is the parent: {stack:?}"
            );
            assert!(stack[1].starts_with(&format!("{}.create.", fake.name)));
        }
    }

    let proxy = RpcProxy::connect(config).await.expect("proxy connects");
    let reported = proxy
        .call(&name, "stats", Args::new())
        .await
        .expect("stats answers");
    assert!(
        reported["passed"].as_u64().is_some_and(|n| n >= 2),
        "{reported}"
    );
    assert_eq!(reported["last"]["passed"], Value::Bool(true), "{reported}");
    proxy.close().await;

    handle.shutdown().await.expect("the test service stops");
    fake.stop().await;
}
