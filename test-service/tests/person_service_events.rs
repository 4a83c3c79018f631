//! Rounds with event checks against the real person-service, run in this
//! process (as person-service/tests/helpers does: a unique service name, a
//! database of its own): through the library, through the `--once` binary
//! and in service mode. Its events come from its outbox relay after each
//! commit, with the caller's call-id stack, and every check passes.

use std::sync::Arc;
use std::time::Duration;
use test_service::once::{self, OnceOptions};
use test_service::scenario::{Report, Step};
use test_service::service::{self, Stats};
use test_support::WithinExt;

mod common;
use common::{config, RealPerson};

/// The person-service on a fresh database, under a unique name.
async fn start_person() -> RealPerson {
    RealPerson::start(&test_support::unique_name("person")).await
}

fn assert_all_passed(report: &Report) {
    assert!(report.passed(), "{report:#?}");
    let steps: Vec<Step> = report.checks.iter().map(|c| c.step).collect();
    assert_eq!(steps, Step::ALL, "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_through_the_library_passes_every_check() {
    let person = start_person().await;
    let options = OnceOptions {
        subscriber_prefix: test_support::unique_name("ts"),
        event_timeout: Some(Duration::from_secs(10)),
    };
    let report = once::run_once_with(config(), &person.name, Duration::from_secs(10), &options)
        .await
        .expect("the round runs");
    assert_all_passed(&report);
    for step in [
        Step::PersonCreated,
        Step::PersonUpdated,
        Step::PersonDeleted,
    ] {
        let check = report.check(step).expect("checked");
        assert!(check.latency.is_some(), "{check:?}");
    }
    person.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_once_binary_passes_every_check() {
    let person = start_person().await;
    let (code, stdout, stderr) = common::run_test_service(&[
        "--once",
        "--target",
        &person.name,
        "--wait",
        "10",
        "--timeout",
        "10",
        "--service-name",
        &test_support::unique_name("ts"),
    ])
    .await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for step in Step::ALL {
        assert!(
            stdout.contains(&format!("PASS  {step} ")),
            "{step}: {stdout}"
        );
    }
    assert!(stdout.contains("passed: 11/11 checks"), "{stdout}");
    person.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_mode_rounds_pass_every_check() {
    let person = start_person().await;
    let name = test_support::unique_name("test_service");
    let _cleanup = common::service_cleanup(&name, &person.name);
    let stats = Stats::new();
    let settings = service::Settings {
        name: name.clone(),
        target: person.name.clone(),
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(10),
        event_timeout: Some(Duration::from_secs(10)),
    };
    let mut rounds = stats.subscribe();
    let mut handle = service::spawn(&settings, Arc::clone(&stats), config());
    handle
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .expect("the test service starts");
    tokio::time::timeout(Duration::from_secs(60), rounds.wait_for(|n| *n >= 2))
        .await
        .expect("two rounds within 60 s")
        .expect("the stats live as long as the test");
    let totals = stats.totals();
    assert!(totals.failed == 0, "{totals:?}: {:#?}", stats.last());
    let last = stats.last().expect("a round");
    assert_all_passed(&last);
    let call_id = last.round_call_id.as_deref().unwrap_or("");
    assert!(
        call_id.starts_with(&format!("{name}.run_round.")),
        "{call_id}"
    );
    handle
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .expect("the test service stops");
    person.stop().await;
}
