//! Spawns an isolated person-service per test: its own service name, its
//! own SQLite file in a temporary directory, the real broker.

#![allow(dead_code)]

use person_service::domain::Page;
use person_service::people::People;
use person_service::store::Store;
use person_service::{Application, RunningApp, Settings};
use rpc_core::testing::LocalService;
use rpc_core::{Args, CallError, RemoteError, RpcProxy, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use test_support::Cleanup;
use test_support::WithinExt;

pub mod http;
pub mod process;
pub mod raw;

pub struct TestApp {
    pub name: String,
    pub proxy: RpcProxy,
    pub http: http::Http,
    pub db: PathBuf,
    pub running: Option<RunningApp>,
    pub dir: tempfile::TempDir,
    pub cleanup: Cleanup,
}

pub async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("person.db");
    let name = test_support::unique_name("person");
    let running = start(&name, &db).await;
    let mut config = rpc_core::Config::new(&test_support::broker_uri()).unwrap();
    config.rpc_timeout = Duration::from_secs(15);
    let proxy = RpcProxy::connect(config).await.expect("proxy connects");
    let addr = running.http_addr().expect("tests run the HTTP face");
    TestApp {
        http: http::Http::new(addr),
        // The outbox relay declares {name}.events for the events it sends.
        cleanup: Cleanup::new()
            .service(&name)
            .exchange(&format!("{name}.events")),
        name,
        proxy,
        db,
        running: Some(running),
        dir,
    }
}

/// Starts (or restarts) a person-service called `name` on `db`.
pub async fn start(name: &str, db: &Path) -> RunningApp {
    start_with(
        name,
        Settings::new(&test_support::require_broker(), db.to_owned()),
    )
    .await
}

/// Starts a person-service called `name` with `settings` (HTTP on a free
/// port), and waits until it consumes.
pub async fn start_with(name: &str, mut settings: Settings) -> RunningApp {
    test_support::require_broker();
    settings.service_name = name.to_owned();
    settings.http = Some("127.0.0.1:0".parse().unwrap());
    let app = Application::build(settings).await.expect("app builds");
    let mut running = app.start().await.expect("app starts");
    running
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .expect("service consumes");
    running
}

/// Calls to a person service, over the broker ([`TestApp`]) or in
/// process ([`LocalApp`]): the helpers tests use on either.
pub trait Api {
    fn call(
        &self,
        method: &str,
        args: Args,
    ) -> impl std::future::Future<Output = Result<Value, CallError>>;

    async fn ok(&self, method: &str, args: Args) -> Value {
        self.call(method, args)
            .await
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    async fn remote_err(&self, method: &str, args: Args) -> RemoteError {
        match self.call(method, args).await {
            Err(CallError::Remote(e)) => e,
            other => panic!("{method}: expected a remote error, got {other:?}"),
        }
    }

    async fn create(&self, first: &str, last: &str, age: i64) -> i64 {
        self.ok("create", Args::new().arg(first).arg(last).arg(age))
            .await
            .as_i64()
            .expect("create returns an id")
    }
}

impl Api for TestApp {
    async fn call(&self, method: &str, args: Args) -> Result<Value, CallError> {
        self.proxy.call(&self.name, method, args).await
    }
}

/// person-service's RPC methods run in process (no broker) over a real
/// SQLite file of their own.
pub struct LocalApp {
    pub local: LocalService,
    pub dir: tempfile::TempDir,
}

pub async fn local_app() -> LocalApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("person.db");
    let store = tokio::task::spawn_blocking(move || Store::open(&db))
        .await
        .unwrap()
        .expect("the database opens");
    let people = People::new(store, "person");
    let local = LocalService::new(person_service::rpc::service("person", people).build());
    LocalApp { local, dir }
}

impl Api for LocalApp {
    async fn call(&self, method: &str, args: Args) -> Result<Value, CallError> {
        self.local
            .call(method, args)
            .await
            .map_err(CallError::Remote)
    }
}

impl TestApp {
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running
                .shutdown()
                .within(test_support::STOP_BOUND, "the service to stop")
                .await
                .expect("stops cleanly");
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        let running = start(&self.name, &self.db).await;
        self.http = http::Http::new(running.http_addr().expect("HTTP on"));
        self.running = Some(running);
    }

    pub async fn close(mut self) {
        self.stop().await;
        self.proxy.close().await;
    }
}

/// Asserts a ValidationError naming `field`.
pub fn assert_invalid(e: &RemoteError, field: &str) {
    assert_eq!(e.exc_type, "ValidationError", "{e:?}");
    assert_eq!(e.exc_path, person_service::rpc::exc_path::VALIDATION_ERROR);
    assert_eq!(
        e.exc_args.first().and_then(Value::as_str),
        Some(field),
        "{e:?}"
    );
    assert!(e.value.starts_with(&format!("{field}: ")), "{e:?}");
}

/// The Python services and scripts of the interop tests.
pub fn python_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python"))
}

/// Checks the database `db` against the creates that were answered (last
/// name → id, each last name used once): returns how many answered creates
/// are not stored exactly once with the id answered, and how many last
/// names are stored more than once.
pub async fn lost_and_duplicated(db: &Path, answered: &HashMap<String, i64>) -> (usize, usize) {
    let db = db.to_owned();
    let store = tokio::task::spawn_blocking(move || Store::open(&db))
        .await
        .unwrap()
        .expect("the database opens");
    let rows = store.list(Page::default()).await.unwrap();
    let mut by_name: HashMap<&str, Vec<i64>> = HashMap::new();
    for p in &rows {
        by_name.entry(p.last_name.as_str()).or_default().push(p.id);
    }
    let duplicated = by_name.values().filter(|ids| ids.len() > 1).count();
    let lost = answered
        .iter()
        .filter(|(name, id)| by_name.get(name.as_str()) != Some(&vec![**id]))
        .count();
    (lost, duplicated)
}
