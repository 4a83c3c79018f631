//! Helpers shared by the integration tests: the real person-service run in
//! this process, a proxy config, the test-service binary, and clean-up of a
//! service-mode checker's queues.

#![allow(dead_code)]

use person_service::{Application, RunningApp, Settings};
use rpc_core::Config;
use std::path::PathBuf;
use std::time::Duration;
use test_service::events::{self, Kind};
use test_support::Cleanup;
use test_support::WithinExt;

/// The person-service running as `name` on a fresh database, removed (with
/// its queue and event exchange) when this is dropped.
pub struct RealPerson {
    pub name: String,
    running: Option<RunningApp>,
    db: PathBuf,
    _cleanup: Cleanup,
}

impl RealPerson {
    pub async fn start(name: &str) -> RealPerson {
        let uri = test_support::require_broker();
        let cleanup = Cleanup::new()
            .service(name)
            .exchange(&format!("{name}.events"));
        let db = std::env::temp_dir().join(format!("{name}.db"));
        let mut settings = Settings::new(&uri, db.clone());
        settings.service_name = name.to_owned();
        let app = Application::build(settings).await.expect("app builds");
        let mut running = app.start().await.expect("app starts");
        running
            .ready()
            .within(test_support::START_BOUND, "the service to start")
            .await
            .expect("the person-service consumes");
        RealPerson {
            name: name.to_owned(),
            running: Some(running),
            db,
            _cleanup: cleanup,
        }
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running
                .shutdown()
                .within(test_support::STOP_BOUND, "the service to stop")
                .await
                .expect("stops cleanly");
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

/// The test broker, with a 10 s call timeout.
pub fn config() -> Config {
    let mut config = Config::new(&test_support::require_broker()).expect("AMQP_URI parses");
    config.rpc_timeout = Duration::from_secs(10);
    config
}

/// Runs the test-service binary with `args` and `AMQP_URI` set to the test
/// broker (an `--amqp-uri` flag wins over it); returns its exit status,
/// stdout and stderr.
pub async fn run_test_service(args: &[&str]) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-service"))
        .args(args)
        .env("AMQP_URI", test_support::broker_uri())
        .output()
        .await
        .expect("test-service runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Deletes a service-mode checker's queues: its RPC queue and its three
/// (durable) event queues for `target`'s events.
pub fn service_cleanup(name: &str, target: &str) -> Cleanup {
    Kind::ALL
        .iter()
        .fold(Cleanup::new().service(name), |c, kind| {
            c.queue(&events::queue_name(target, name, *kind))
        })
}
