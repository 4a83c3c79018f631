//! Rounds with event checks against the real person-service, run in this
//! process (as person-service/tests/helpers does: a unique service name, a
//! database of its own): through the library, through the `--once` binary
//! and in service mode. Its events come from its outbox relay after each
//! commit, with the caller's call-id stack, and every check passes.

use person_service::{Application, RunningApp, Settings};
use rpc_core::Config;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use test_service::events::{self, Kind};
use test_service::once::{self, OnceOptions};
use test_service::scenario::{Report, Step};
use test_service::service::{self, Stats};
use test_support::Cleanup;

/// The person-service running as `name` on a fresh database, removed (with
/// its queue and event exchange) when this is dropped.
struct RealPerson {
    name: String,
    running: Option<RunningApp>,
    db: PathBuf,
    _cleanup: Cleanup,
}

impl RealPerson {
    async fn start() -> RealPerson {
        let uri = test_support::require_broker();
        let name = test_support::unique_name("person");
        let cleanup = Cleanup::new()
            .service(&name)
            .exchange(&format!("{name}.events"));
        let db = std::env::temp_dir().join(format!("{name}.db"));
        let mut settings = Settings::new(&uri, db.clone());
        settings.service_name = name.clone();
        let app = Application::build(settings).await.expect("app builds");
        let mut running = app.start().await.expect("app starts");
        running.ready().await.expect("the person-service consumes");
        RealPerson {
            name,
            running: Some(running),
            db,
            _cleanup: cleanup,
        }
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("stops cleanly");
        }
    }
}

impl Drop for RealPerson {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut path = self.db.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

fn config() -> Config {
    let mut config = Config::new(&test_support::require_broker()).expect("AMQP_URI parses");
    config.rpc_timeout = Duration::from_secs(10);
    config
}

fn assert_all_passed(report: &Report) {
    assert!(report.passed(), "{report:#?}");
    let steps: Vec<Step> = report.checks.iter().map(|c| c.step).collect();
    assert_eq!(steps, Step::ALL, "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_through_the_library_passes_every_check() {
    let person = RealPerson::start().await;
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
    let person = RealPerson::start().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-service"))
        .args([
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
        .env("AMQP_URI", test_support::require_broker())
        .output()
        .await
        .expect("test-service runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
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
    let person = RealPerson::start().await;
    let name = test_support::unique_name("test_service");
    let _cleanup = Kind::ALL
        .iter()
        .fold(Cleanup::new().service(&name), |c, kind| {
            c.queue(&events::queue_name(&person.name, &name, *kind))
        });
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
    handle.ready().await.expect("the test service starts");
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
    handle.shutdown().await.expect("the test service stops");
    person.stop().await;
}
