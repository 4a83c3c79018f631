//! A small service with one method per behaviour the tests need, started on
//! a unique name against the real broker.

#![allow(dead_code)]

use rpc_core::{
    json, Args, Config, Context, RpcError, RpcProxy, Service, ServiceHandle, Signature, Value,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use test_support::Cleanup;
use test_support::WithinExt;
use tokio::sync::mpsc;

pub fn config() -> Config {
    let mut config = Config::new(&test_support::require_broker()).expect("AMQP_URI parses");
    config.rpc_timeout = Duration::from_secs(10);
    config
}

/// What the `slow` method records: how often each value ran, and an event
/// each time one starts.
#[derive(Clone)]
pub struct Probe {
    pub runs: Arc<Mutex<HashMap<String, usize>>>,
    pub started: mpsc::UnboundedSender<String>,
}

impl Probe {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Probe {
                runs: Arc::default(),
                started: tx,
            },
            rx,
        )
    }

    pub fn runs(&self) -> HashMap<String, usize> {
        self.runs.lock().unwrap().clone()
    }
}

pub fn calc_service(name: &str, probe: Probe) -> Service {
    Service::builder(name)
        .method(
            "add",
            Signature::new().param("a").param("b"),
            |_ctx: Context, (a, b): (i64, i64)| async move { Ok::<_, RpcError>(a + b) },
        )
        .method(
            "greet",
            Signature::new().param("name").optional("greeting", "Hello"),
            |_ctx: Context, (name, greeting): (String, String)| async move {
                Ok::<_, RpcError>(format!("{greeting}, {name}"))
            },
        )
        .method(
            "echo",
            Signature::new().param("value"),
            |_ctx: Context, (value,): (Value,)| async move { Ok::<_, RpcError>(value) },
        )
        .method(
            "slow",
            Signature::new().param("value").param("ms"),
            move |_ctx: Context, (value, ms): (Value, u64)| {
                let probe = probe.clone();
                async move {
                    let key = value.to_string();
                    let _ = probe.started.send(key.clone());
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    *probe.runs.lock().unwrap().entry(key).or_default() += 1;
                    Ok::<_, RpcError>(value)
                }
            },
        )
        .method(
            "fail",
            Signature::new().param("message"),
            |_ctx: Context, (message,): (String,)| async move {
                Err::<(), _>(RpcError::new(
                    "CalcError",
                    "calc.exceptions.CalcError",
                    vec![message.into(), 42.into()],
                ))
            },
        )
        .method(
            "explode",
            Signature::new(),
            |_ctx: Context, (): ()| async move {
                if true {
                    panic!("boom");
                }
                Ok::<(), RpcError>(())
            },
        )
        .method(
            "unserializable",
            Signature::new(),
            |_ctx: Context, (): ()| async move {
                let mut map = HashMap::new();
                map.insert((1, 2), 3);
                Ok::<_, RpcError>(map)
            },
        )
        .method("ctx", Signature::new(), |ctx: Context, (): ()| async move {
            Ok::<_, RpcError>(json!({
                "call_id": ctx.call_id(),
                "stack": ctx.call_id_stack(),
                "data": ctx.data(),
                "correlation_id": ctx.correlation_id(),
            }))
        })
        .method(
            "chain",
            Signature::new().param("target"),
            |ctx: Context, (target,): (String,)| async move {
                let remote = ctx
                    .rpc()
                    .call(&target, "ctx", Args::new())
                    .await
                    .map_err(|e| RpcError::internal(e.to_string()))?;
                Ok::<_, RpcError>(json!({"mine": ctx.call_id_stack(), "remote": remote}))
            },
        )
        .build()
}

/// A running calc service with its own queue, deleted at the end.
pub struct Running {
    pub name: String,
    pub handle: Option<ServiceHandle>,
    pub cleanup: Cleanup,
}

pub async fn start_calc(config: &Config, probe: Probe) -> Running {
    let name = test_support::unique_name("calc");
    start_named(&name, config, probe).await
}

pub async fn start_named(name: &str, config: &Config, probe: Probe) -> Running {
    let mut handle = calc_service(name, probe).spawn(config.clone());
    handle
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .expect("calc service starts");
    Running {
        name: name.to_owned(),
        handle: Some(handle),
        cleanup: Cleanup::new().service(name),
    }
}

impl Running {
    pub async fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle
                .shutdown()
                .within(test_support::STOP_BOUND, "the service to stop")
                .await
                .expect("service stops cleanly");
        }
    }
}

/// Waits until a Python nameko service answers `ping` (its queues exist and
/// it consumes), failing after 60 s or, with its log, if `nameko run` exits.
pub async fn wait_for_python(
    p: &RpcProxy,
    service: &str,
    run: &mut test_support::nameko::NamekoRun,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let quick = p.with_timeout(Duration::from_secs(2));
    loop {
        run.assert_running();
        match quick.call(service, "ping", Args::new()).await {
            Ok(_) => return,
            Err(rpc_core::CallError::UnknownService(_))
            | Err(rpc_core::CallError::Timeout { .. }) => {}
            Err(e) => panic!("ping failed: {e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the Python service did not come up within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn proxy(config: &Config) -> RpcProxy {
    RpcProxy::connect(config.clone())
        .await
        .expect("proxy connects")
}

/// `service.add(a, b)`, a call that must succeed: its result.
pub async fn add(p: &RpcProxy, service: &str, a: i64, b: i64) -> Value {
    p.call(service, "add", Args::new().arg(a).arg(b))
        .await
        .unwrap_or_else(|e| panic!("{service}.add({a}, {b}): {e}"))
}

/// A service `name` whose `emit(data)` dispatches a `ping` event with
/// `data` from inside its worker (so the event carries the call's context)
/// and returns the worker's call id.
pub fn emitter(name: &str) -> Service {
    Service::builder(name)
        .method(
            "emit",
            Signature::new().param("data"),
            |ctx: Context, (data,): (Value,)| async move {
                ctx.dispatch("ping", &data)
                    .await
                    .map_err(|e| RpcError::internal(e.to_string()))?;
                Ok::<_, RpcError>(ctx.call_id().to_owned())
            },
        )
        .build()
}

/// The Python modules and scripts of the interop tests.
pub fn python_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python"))
}
