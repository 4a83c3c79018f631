//! Rounds against a fake person service on the real broker: a correct fake
//! passes every check, a broken one is caught with a reason, the `--once`
//! binary's exit statuses, and service mode's rounds and call-id stacks.
//!
//! The fake implements person-service's RPC contract (five methods, two
//! errors) over a map in memory, and dispatches its events as
//! person-service does (`person_created` / `person_updated` with the
//! record, `person_deleted` with `{"id": id}`, carrying the caller's
//! context), so these tests do not depend on the real person-service,
//! which is developed separately (tests/person_service_events.rs runs
//! rounds against the real one).

use rpc_core::{
    Args, Config, Context, EventDispatcher, RpcError, RpcProxy, Service, ServiceHandle, Signature,
    Value,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use test_service::events::{self, Kind, TempSubscriber};
use test_service::once::{self, OnceOptions};
use test_service::scenario::{self, EventChecks, Outcome, Person, Report, Step};
use test_service::service::{self, Stats};
use test_support::Cleanup;
use test_support::WithinExt;

mod common;
use common::{config, service_cleanup};

const NOT_FOUND_PATH: &str = "person_service.exceptions.PersonNotFound";
const VALIDATION_PATH: &str = "person_service.exceptions.ValidationError";

/// A deliberate bug the fake can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quirk {
    None,
    /// `update` accepts `age` but does not change it.
    UpdateIgnoresAge,
    /// `delete` deletes but dispatches no `person_deleted`.
    NoDeletedEvent,
    /// `person_updated` goes out through a standalone dispatcher, without
    /// the caller's context.
    UpdatedEventWithoutContext,
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

/// An event the fake could not send is the call's failure, as in a service
/// that dispatches before it answers.
fn dispatch_failed(e: rpc_core::DispatchError) -> RpcError {
    RpcError::internal(format!("dispatching the event failed: {e}"))
}

fn fake_person_service(
    name: &str,
    store: Shared,
    quirk: Quirk,
    standalone: Option<EventDispatcher>,
) -> Service {
    let source = name.to_owned();
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
                    let person = {
                        let mut store = store.lock().unwrap();
                        store.create_stacks.push(ctx.call_id_stack().to_vec());
                        store.last_id += 1;
                        let person = Person {
                            id: store.last_id,
                            first_name,
                            last_name,
                            age,
                            member,
                        };
                        store.people.insert(person.id, person.clone());
                        person
                    };
                    ctx.dispatch("person_created", &person)
                        .await
                        .map_err(dispatch_failed)?;
                    Ok::<_, RpcError>(person.id)
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
            move |ctx: Context,
                  (id, first_name, last_name, age, member): (
                i64,
                Option<String>,
                Option<String>,
                Option<i64>,
                Option<bool>,
            )| {
                let store = s4.clone();
                let standalone = standalone.clone();
                let source = source.clone();
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
                    let person = {
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
                        person.clone()
                    };
                    match &standalone {
                        Some(d) if quirk == Quirk::UpdatedEventWithoutContext => {
                            d.dispatch(&source, "person_updated", &person).await
                        }
                        _ => ctx.dispatch("person_updated", &person).await,
                    }
                    .map_err(dispatch_failed)?;
                    Ok::<_, RpcError>(person)
                }
            },
        )
        .method(
            "delete",
            Signature::new().param("id"),
            move |ctx: Context, (id,): (i64,)| {
                let store = s5.clone();
                async move {
                    store
                        .lock()
                        .unwrap()
                        .people
                        .remove(&id)
                        .ok_or_else(|| not_found(id))?;
                    if quirk != Quirk::NoDeletedEvent {
                        ctx.dispatch("person_deleted", &serde_json::json!({ "id": id }))
                            .await
                            .map_err(dispatch_failed)?;
                    }
                    Ok::<_, RpcError>(())
                }
            },
        )
        .build()
}

/// A running fake with its own queue and event exchange, deleted when the
/// test ends.
struct Fake {
    name: String,
    store: Shared,
    handle: Option<ServiceHandle>,
    standalone: Option<EventDispatcher>,
    _cleanup: Cleanup,
}

impl Fake {
    async fn start(config: &Config, quirk: Quirk) -> Fake {
        Self::start_named(&test_support::unique_name("fake_person"), config, quirk).await
    }

    async fn start_named(name: &str, config: &Config, quirk: Quirk) -> Fake {
        let cleanup = Cleanup::new()
            .service(name)
            .exchange(&format!("{name}.events"));
        let store = Shared::default();
        let standalone = match quirk {
            Quirk::UpdatedEventWithoutContext => Some(
                EventDispatcher::connect(config.clone())
                    .await
                    .expect("the standalone dispatcher connects"),
            ),
            _ => None,
        };
        let mut handle = fake_person_service(name, store.clone(), quirk, standalone.clone())
            .spawn(config.clone());
        handle
            .ready()
            .within(test_support::START_BOUND, "the service to start")
            .await
            .expect("the fake person service starts");
        Fake {
            name: name.to_owned(),
            store,
            handle: Some(handle),
            standalone,
            _cleanup: cleanup,
        }
    }

    fn people(&self) -> usize {
        self.store.lock().unwrap().people.len()
    }

    async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle
                .shutdown()
                .within(test_support::STOP_BOUND, "the service to stop")
                .await
                .expect("the fake stops cleanly");
        }
        if let Some(d) = self.standalone.take() {
            d.close().await;
        }
    }
}

/// `--once` through the library: a temporary subscriber under a unique
/// prefix, events due within `event_timeout`.
async fn once_round(config: &Config, target: &str, event_timeout: Duration) -> Report {
    let options = OnceOptions {
        subscriber_prefix: test_support::unique_name("ts"),
        event_timeout: Some(event_timeout),
    };
    once::run_once_with(config.clone(), target, Duration::from_secs(5), &options)
        .await
        .expect("the round runs")
}

/// Asserts that exactly `failed` did not pass, each with a reason that
/// contains the text given.
fn assert_only_failed(report: &Report, failed: &[(Step, &str)]) {
    for check in &report.checks {
        match failed.iter().find(|(step, _)| *step == check.step) {
            None => assert!(check.passed(), "{}: {report:#?}", check.step),
            Some((_, text)) => match &check.outcome {
                Outcome::Failed(reason) => {
                    assert!(reason.contains(text), "{}: {reason}", check.step)
                }
                other => panic!("{} should have failed, got {other:?}", check.step),
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_against_a_correct_service_passes_every_check() {
    let config = config();
    let fake = Fake::start(&config, Quirk::None).await;
    let proxy = RpcProxy::connect(config).await.expect("proxy connects");

    let report = scenario::run_round(&proxy, &fake.name).await;

    assert!(report.passed(), "{report:#?}");
    let steps: Vec<Step> = report.checks.iter().map(|c| c.step).collect();
    assert_eq!(steps, Step::CALLS, "no event checks were asked for");
    assert!(report.checks.iter().all(|c| c.latency.is_some()));
    assert!(report.person_id.is_some());
    assert_eq!(fake.people(), 0, "the round leaves nothing behind");
    proxy.close().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_checks_that_every_change_produced_its_event() {
    let config = config();
    let fake = Fake::start(&config, Quirk::None).await;

    let report = once_round(&config, &fake.name, Duration::from_secs(10)).await;

    assert!(report.passed(), "{report:#?}");
    let steps: Vec<Step> = report.checks.iter().map(|c| c.step).collect();
    assert_eq!(steps, Step::ALL);
    for step in Step::EVENTS {
        let check = report.check(step).expect("checked");
        // Each event's delay is its latency; the call-id check has none.
        assert_eq!(
            check.latency.is_some(),
            step != Step::EventCallIds,
            "{check:?}"
        );
    }
    let call_id = report.round_call_id.as_deref().expect("a round call id");
    assert!(
        call_id.starts_with("standalone_rpc_proxy.call."),
        "{call_id}"
    );
    let events = report.events_summary();
    assert!(events.starts_with("person_created=pass+"), "{events}");
    assert!(events.ends_with("event_call_ids=pass"), "{events}");
    assert_eq!(fake.people(), 0);
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_event_is_a_failed_check_with_its_reason() {
    let config = config();
    let fake = Fake::start(&config, Quirk::NoDeletedEvent).await;

    let started = std::time::Instant::now();
    let report = once_round(&config, &fake.name, Duration::from_millis(500)).await;

    assert!(!report.passed());
    let id = report.person_id.expect("created");
    assert_only_failed(
        &report,
        &[(
            Step::PersonDeleted,
            &format!("no person_deleted event for person {id} within 0.5 s of the delete's reply"),
        )],
    );
    let deleted = report.check(Step::PersonDeleted).expect("checked");
    assert_eq!(deleted.latency, None, "no event, no delay");
    assert!(report.events_summary().contains("person_deleted=fail"));
    assert!(report
        .failure_summary()
        .starts_with("person_deleted: no person_deleted event"));
    // Bounded: the round waited for the timeout, not much longer.
    assert!(started.elapsed() < Duration::from_secs(10));
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_the_callers_context_fails_the_call_id_check() {
    let config = config();
    let fake = Fake::start(&config, Quirk::UpdatedEventWithoutContext).await;

    let report = once_round(&config, &fake.name, Duration::from_secs(10)).await;

    assert_only_failed(
        &report,
        &[(Step::EventCallIds, "person_updated event's call-id stack [")],
    );
    let reason = report
        .check(Step::EventCallIds)
        .and_then(|c| c.reason())
        .expect("a reason");
    assert!(
        reason.contains("lacks the round's call id standalone_rpc_proxy.call."),
        "{reason}"
    );
    assert!(!reason.contains("person_created"), "{reason}");
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rounds_each_get_their_own_events() {
    let config = config();
    let fake = Fake::start(&config, Quirk::None).await;
    let prefix = test_support::unique_name("ts");
    let subscriber =
        TempSubscriber::start(config.clone(), &fake.name, &prefix, Duration::from_secs(10))
            .await
            .expect("the subscriber starts");
    let mut rounds = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (config, board, target) = (
            config.clone(),
            subscriber.board().clone(),
            fake.name.clone(),
        );
        rounds.spawn(async move {
            // A proxy each: each round has its own call id.
            let proxy = RpcProxy::connect(config).await.expect("proxy connects");
            let call_id = proxy.call_id_stack().last().cloned().expect("a call id");
            let report = scenario::run_round_with(
                &proxy,
                &target,
                EventChecks::On {
                    board: &board,
                    round_call_id: &call_id,
                    timeout: Duration::from_secs(10),
                },
            )
            .await;
            proxy.close().await;
            report
        });
    }
    let mut ids = Vec::new();
    while let Some(report) = rounds
        .join_next()
        .within(Duration::from_secs(60), "the concurrent rounds")
        .await
    {
        let report = report.expect("the round's task completes");
        assert!(report.passed(), "{report:#?}");
        ids.push(report.person_id.expect("created"));
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    assert_eq!(
        subscriber.board().watching(),
        0,
        "every watch ended with its round"
    );
    subscriber.stop().await;
    fake.stop().await;
}

/// Whether a queue exists, by a passive declare on a connection of its own.
async fn queue_exists(queue: &str) -> bool {
    let conn = lapin::Connection::connect(&test_support::broker_uri(), Default::default())
        .await
        .expect("connects");
    let channel = conn.create_channel().await.expect("a channel");
    let exists = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .is_ok();
    let _ = conn.close(200, "OK".into()).await;
    exists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_once_subscriber_is_unique_and_leaves_no_queues() {
    let config = config();
    let target = test_support::unique_name("quiet_person");
    let _cleanup = Cleanup::new().exchange(&format!("{target}.events"));
    let prefix = test_support::unique_name("ts");
    let first = TempSubscriber::start(config.clone(), &target, &prefix, Duration::from_secs(10))
        .await
        .expect("starts");
    let second = TempSubscriber::start(config.clone(), &target, &prefix, Duration::from_secs(10))
        .await
        .expect("starts");
    assert_ne!(first.name(), second.name(), "one name per run");
    assert!(first.name().starts_with(&format!("{prefix}-once-")));
    let mut queues = Vec::new();
    for subscriber in [&first, &second] {
        for kind in Kind::ALL {
            queues.push(events::queue_name(&target, subscriber.name(), kind));
        }
    }
    // In case an assertion below fails first.
    let _queues = queues.iter().fold(Cleanup::new(), |c, q| c.queue(q));
    for queue in &queues {
        assert!(queue_exists(queue).await, "{queue} while subscribed");
    }
    first.stop().await;
    second.stop().await;
    for queue in &queues {
        assert!(
            !queue_exists(queue).await,
            "{queue} outlived its subscriber"
        );
    }
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
    common::run_test_service(&[
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
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_0_when_every_check_passes() {
    let uri = test_support::require_broker();
    let fake = Fake::start(&config(), Quirk::None).await;
    let (code, stdout, stderr) = run_once(&uri, &fake.name, "5").await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("PASS  create"), "{stdout}");
    for step in Step::EVENTS {
        assert!(stdout.contains(&format!("PASS  {step} ")), "{stdout}");
    }
    assert!(stdout.contains("passed: 11/11 checks"), "{stdout}");
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
async fn once_exits_1_when_an_event_is_missing() {
    let uri = test_support::require_broker();
    let fake = Fake::start(&config(), Quirk::NoDeletedEvent).await;
    let (code, stdout, stderr) = run_once(&uri, &fake.name, "5").await;
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("PASS  delete "), "{stdout}");
    assert!(stdout.contains("FAIL  person_deleted"), "{stdout}");
    assert!(
        stdout.contains("no person_deleted event for person 1 within 5.0 s of the delete's reply"),
        "{stdout}"
    );
    assert!(stdout.contains("1 of 11 checks did not pass"), "{stdout}");
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
    let _cleanup = service_cleanup(&name, &fake.name);
    let stats = Stats::new();
    let settings = service::Settings {
        name: name.clone(),
        target: fake.name.clone(),
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(10),
        event_timeout: Some(Duration::from_secs(10)),
    };
    let mut rounds = stats.subscribe();
    // The first round starts at once (eager) but waits for the event
    // queues: it must not miss its events.
    let mut handle = service::spawn(&settings, Arc::clone(&stats), config.clone());
    handle
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .expect("the test service starts");

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
    let last = stats.last().expect("a last round");
    let steps: Vec<Step> = last.checks.iter().map(|c| c.step).collect();
    assert_eq!(steps, Step::ALL, "service mode checks events");
    // The events carry the tick's call id: the call-id check passed on it.
    let call_id = last.round_call_id.as_deref().expect("a round call id");
    assert!(
        call_id.starts_with(&format!("{name}.run_round.")),
        "{call_id}"
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
    assert_eq!(reported["last"]["checks"][10]["step"], "event_call_ids");
    assert_eq!(reported["last"]["checks"][10]["kind"], "event");
    proxy.close().await;

    handle
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .expect("the test service stops");
    fake.stop().await;
}
