//! RPC end to end against the real broker: results, every error path,
//! concurrency, timeouts, UnknownService, call_async, context propagation.

mod common;

use common::{add, config, proxy, start_calc, start_named, Probe};
use rpc_core::error::exc_path;
use rpc_core::{json, Args, CallError, ConnectError, RpcProxy, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use test_support::WithinExt;

fn remote(result: Result<Value, CallError>) -> rpc_core::RemoteError {
    match result {
        Err(CallError::Remote(e)) => e,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_positional_keyword_and_defaults() {
    let config = config();
    let (probe, _) = Probe::new();
    let mut svc = start_calc(&config, probe).await;
    let p = proxy(&config).await;

    assert_eq!(
        p.call(&svc.name, "add", Args::new().arg(1).arg(2))
            .await
            .unwrap(),
        json!(3)
    );
    assert_eq!(
        p.call(&svc.name, "add", Args::new().arg(1).kwarg("b", 2))
            .await
            .unwrap(),
        json!(3)
    );
    assert_eq!(
        p.call(&svc.name, "add", Args::new().kwarg("b", 5).kwarg("a", 1))
            .await
            .unwrap(),
        json!(6)
    );
    assert_eq!(
        p.call(&svc.name, "greet", Args::new().arg("Ada"))
            .await
            .unwrap(),
        json!("Hello, Ada")
    );
    assert_eq!(
        p.call(
            &svc.name,
            "greet",
            Args::new().arg("Ada").kwarg("greeting", "Hi")
        )
        .await
        .unwrap(),
        json!("Hi, Ada")
    );
    let nested = json!({"list": [1, 2.5, "ü", null, true], "map": {"z": 1, "a": 2}});
    assert_eq!(
        p.call(&svc.name, "echo", Args::new().arg(nested.clone()))
            .await
            .unwrap(),
        nested
    );
    let sum: i64 = p
        .call_as(&svc.name, "add", Args::new().arg(40).arg(2))
        .await
        .unwrap();
    assert_eq!(sum, 42);

    p.close().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_reply() {
    let config = config();
    let (probe, _) = Probe::new();
    let mut svc = start_calc(&config, probe).await;
    let p = proxy(&config).await;
    let name = svc.name.clone();

    let e = remote(p.call(&name, "nosuch", Args::new()).await);
    assert_eq!(
        (e.exc_type.as_str(), e.exc_path.as_str()),
        ("MethodNotFound", exc_path::METHOD_NOT_FOUND)
    );
    assert_eq!(e.value, "nosuch");

    let e = remote(p.call(&name, "add", Args::new().arg(1)).await);
    assert_eq!(e.exc_path, exc_path::INCORRECT_SIGNATURE);
    assert_eq!(e.value, "add() missing 1 required positional argument: 'b'");
    let e = remote(
        p.call(&name, "add", Args::new().arg(1).arg(2).kwarg("c", 3))
            .await,
    );
    assert_eq!(e.value, "add() got an unexpected keyword argument 'c'");
    let e = remote(p.call(&name, "add", Args::new().arg(1).arg(2).arg(3)).await);
    // Counting `self`, as Python does.
    assert_eq!(
        e.value,
        "add() takes 3 positional arguments but 4 were given"
    );

    let e = remote(p.call(&name, "add", Args::new().arg(1).arg("two")).await);
    assert_eq!(
        (e.exc_type.as_str(), e.exc_path.as_str()),
        ("InvalidArgument", exc_path::INVALID_ARGUMENT)
    );
    assert_eq!(e.exc_args[0], json!("b"));
    assert!(e.value.contains("add() argument 'b'"), "{}", e.value);

    let e = remote(p.call(&name, "fail", Args::new().arg("bad input")).await);
    assert_eq!(
        (e.exc_type.as_str(), e.exc_path.as_str()),
        ("CalcError", "calc.exceptions.CalcError")
    );
    assert_eq!(e.exc_args, vec![json!("bad input"), json!("42")]);
    assert_eq!(e.value, "('bad input', 42)");
    assert_eq!(e.to_string(), "CalcError ('bad input', 42)");

    let e = remote(p.call(&name, "unserializable", Args::new()).await);
    assert_eq!(e.exc_path, exc_path::UNSERIALIZABLE_VALUE);

    let e = remote(p.call(&name, "explode", Args::new()).await);
    assert_eq!(e.exc_path, exc_path::INTERNAL_ERROR);
    assert!(
        !e.value.contains("boom"),
        "panic text must stay in the log: {}",
        e.value
    );
    // The panic did not take the service down.
    assert_eq!(add(&p, &name, 2, 2).await, json!(4));

    p.close().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_on_one_proxy() {
    let mut config = config();
    config.max_workers = 10;
    let (probe, _) = Probe::new();
    let mut svc = start_calc(&config, probe.clone()).await;
    let p = proxy(&config).await;

    let n = 200;
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(
            p.call_async(&svc.name, "slow", Args::new().arg(i).arg(20))
                .await
                .unwrap(),
        );
    }
    // All 200 are published before any result is collected.
    // Collected in reverse order: each reply reaches its own caller.
    for (i, call) in pending.into_iter().enumerate().rev() {
        assert_eq!(call.result().await.unwrap(), json!(i));
    }
    assert_eq!(p.in_flight(), 0);

    // And concurrently from many tasks.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let p = p.clone();
        let name = svc.name.clone();
        tasks.push(tokio::spawn(async move {
            p.call(&name, "add", Args::new().arg(i).arg(1000)).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), json!(i as i64 + 1000));
    }
    let runs = probe.runs();
    assert_eq!(runs.len(), n);
    assert!(runs.values().all(|&c| c == 1));

    p.close().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_leaves_the_proxy_usable() {
    let config = config();
    let (probe, mut started) = Probe::new();
    let mut svc = start_calc(&config, probe.clone()).await;
    let p = proxy(&config).await;

    let short = p.with_timeout(Duration::from_millis(300));
    let t0 = Instant::now();
    match short
        .call(&svc.name, "slow", Args::new().arg("late").arg(1500))
        .await
    {
        Err(CallError::Timeout { timeout, .. }) => assert_eq!(timeout, Duration::from_millis(300)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_millis(1400),
        "the timeout fired late: {:?}",
        t0.elapsed()
    );
    assert_eq!(p.in_flight(), 0, "a timed-out call leaves no entry behind");
    assert_eq!(
        started
            .recv()
            .within(Duration::from_secs(15), "the late call to start")
            .await
            .as_deref(),
        Some("\"late\"")
    );

    // Still usable, and the late reply (when it comes) is not mistaken for
    // another call's.
    for i in 0..5 {
        assert_eq!(
            p.call(&svc.name, "slow", Args::new().arg(i).arg(400))
                .await
                .unwrap(),
            json!(i)
        );
    }
    // A dropped call future also cleans up.
    let fut = p.call(&svc.name, "slow", Args::new().arg("dropped").arg(1000));
    let _ = tokio::time::timeout(Duration::from_millis(100), fut).await;
    assert_eq!(p.in_flight(), 0);

    p.close().await;
    svc.stop().await;
}

/// Many tasks on two threads publish through one proxy's channel, half of
/// them to a service that does not exist. The broker numbers a channel's
/// messages in the order their frames arrive and returns each unroutable
/// one just before the confirm of its number; if a publish's frames could
/// overtake another's after the two took their delivery tags, a call would
/// get the other's return (a live service reported unknown, and the call
/// to the missing one left waiting for a reply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_to_live_and_missing_services_each_get_their_own_answer() {
    let config = config();
    let (probe, _) = Probe::new();
    let mut svc = start_calc(&config, probe).await;
    let p = std::sync::Arc::new(proxy(&config).await);
    let missing = test_support::unique_name("no-such-service");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..600i64 {
        let p = std::sync::Arc::clone(&p);
        let live = svc.name.clone();
        let missing = missing.clone();
        calls.spawn(async move {
            let outcome = if i % 2 == 0 {
                p.call(&live, "add", Args::new().arg(i).arg(1)).await
            } else {
                p.call(&missing, "add", Args::new().arg(i).arg(1)).await
            };
            (i, outcome)
        });
    }
    let mut wrong = Vec::new();
    while let Some(joined) = calls
        .join_next()
        .within(Duration::from_secs(60), "the calls")
        .await
    {
        let (i, outcome) = joined.expect("call task");
        let right = match (&outcome, i % 2) {
            (Ok(v), 0) => *v == json!(i + 1),
            (Err(CallError::UnknownService(s)), 1) => *s == missing,
            _ => false,
        };
        if !right {
            wrong.push(format!("call {i}: {outcome:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} calls got another's answer: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_fails_at_once() {
    let config = config();
    let p = proxy(&config).await;
    let missing = test_support::unique_name("no-such-service");
    let t0 = Instant::now();
    match p.call(&missing, "anything", Args::new()).await {
        Err(CallError::UnknownService(s)) => assert_eq!(s, missing),
        other => panic!("expected UnknownService, got {other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        CallError::UnknownService(missing.clone()).to_string(),
        format!("Unknown service `{missing}`")
    );
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_to_service_carries_the_call_id_stack_and_context() {
    let config = config();
    let (probe, _) = Probe::new();
    let mut front = start_calc(&config, probe.clone()).await;
    let mut back = start_calc(&config, probe).await;

    let mut data = BTreeMap::new();
    data.insert("user_id".to_owned(), json!("u1"));
    data.insert("language".to_owned(), json!("en"));
    let p = proxy(&config).await.with_context_data(data);
    let proxy_id = p.call_id_stack()[0].clone();
    assert!(proxy_id.starts_with("standalone_rpc_proxy.call."));

    let out = p
        .call(&front.name, "chain", Args::new().arg(back.name.clone()))
        .await
        .unwrap();
    let mine: Vec<String> = serde_json::from_value(out["mine"].clone()).unwrap();
    let remote_stack: Vec<String> = serde_json::from_value(out["remote"]["stack"].clone()).unwrap();
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[0], proxy_id);
    assert!(mine[1].starts_with(&format!("{}.chain.", front.name)));
    assert_eq!(remote_stack.len(), 3);
    assert_eq!(&remote_stack[..2], &mine[..]);
    assert!(remote_stack[2].starts_with(&format!("{}.ctx.", back.name)));
    assert_eq!(out["remote"]["call_id"], json!(remote_stack[2]));
    // Context data travelled two hops.
    assert_eq!(out["remote"]["data"]["user_id"], json!("u1"));
    assert_eq!(out["remote"]["data"]["language"], json!("en"));

    // The same proxy id on every call: nameko generates it once per proxy.
    let again = p.call(&back.name, "ctx", Args::new()).await.unwrap();
    assert_eq!(again["stack"][0], json!(proxy_id));

    p.close().await;
    front.stop().await;
    back.stop().await;
}

/// Names over AMQP's 255 bytes fail clearly, before anything is declared
/// (lapin would panic on them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_too_long_for_the_wire_fail_the_proxy_clearly() {
    let config = config();
    let mut long_exchange = config.clone();
    long_exchange.rpc_exchange = "x".repeat(256);
    match RpcProxy::connect(long_exchange).await {
        Err(ConnectError::InvalidName { what, .. }) => assert!(what.contains("RPC exchange")),
        Err(e) => panic!("expected InvalidName, got {e}"),
        Ok(_) => panic!("a proxy with a 256-byte exchange name started"),
    }

    // 210 bytes: `rpc-{name}` fits, the handlers' reply queue
    // `rpc.reply-{name}-{uuid}` does not.
    let mut name = test_support::unique_name("calc");
    name.push_str(&"a".repeat(210 - name.len()));
    let (probe, _) = Probe::new();
    let mut svc = start_named(&name, &config, probe).await;
    let p = proxy(&config).await;
    let e = remote(p.call(&name, "chain", Args::new().arg(name.clone())).await);
    assert!(
        e.value.contains("the reply queue") && e.value.contains("cannot be declared"),
        "{e:?}"
    );
    // The service lives on.
    assert_eq!(add(&p, &name, 1, 2).await, json!(3));
    p.close().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_async_results_are_collected_in_any_order() {
    let config = config();
    let (probe, _) = Probe::new();
    let mut svc = start_calc(&config, probe).await;
    let p = proxy(&config).await;
    let a = p
        .call_async(&svc.name, "slow", Args::new().arg("a").arg(300))
        .await
        .unwrap();
    let b = p
        .call_async(&svc.name, "add", Args::new().arg(1).arg(1))
        .await
        .unwrap();
    let c = p
        .call_async(&svc.name, "fail", Args::new().arg("x"))
        .await
        .unwrap();
    let ids: HashSet<String> = [&a, &b, &c]
        .iter()
        .map(|c| c.correlation_id().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(matches!(c.result().await, Err(CallError::Remote(e)) if e.exc_type == "CalcError"));
    assert_eq!(b.result().await.unwrap(), json!(2));
    assert_eq!(a.result().await.unwrap(), json!("a"));
    p.close().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_see_every_call_with_bounded_method_names() {
    use rpc_core::{CallObserver, CallOutcome, Context, RpcError, Service, Signature};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, &'static str)>>, Mutex<usize>);
    impl CallObserver for Seen {
        fn started(&self, _method: &str) {
            *self.1.lock().unwrap() += 1;
        }
        fn finished(&self, method: &str, outcome: CallOutcome<'_>, _elapsed: Duration) {
            let kind = match outcome {
                CallOutcome::Ok => "ok",
                CallOutcome::Raised(_) => "raised",
                CallOutcome::Refused(_) => "refused",
            };
            self.0.lock().unwrap().push((method.to_owned(), kind));
        }
    }

    let config = config();
    let seen = Arc::new(Seen::default());
    let name = test_support::unique_name("observed");
    let _cleanup = test_support::Cleanup::new().service(&name);
    let mut handle = Service::builder(&name)
        .method("ok", Signature::new(), |_c: Context, (): ()| async {
            Ok::<_, RpcError>(1)
        })
        .method("bad", Signature::new(), |_c: Context, (): ()| async {
            Err::<(), _>(RpcError::new("Bad", "x.Bad", vec![]))
        })
        .observe(seen.clone())
        .build()
        .spawn(config.clone());
    handle
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .unwrap();
    let p = proxy(&config).await;
    p.call(&name, "ok", Args::new()).await.unwrap();
    p.call(&name, "bad", Args::new()).await.unwrap_err();
    p.call(&name, "random-name-1", Args::new())
        .await
        .unwrap_err();
    p.call(&name, "ok", Args::new().arg(1)).await.unwrap_err();
    let got = seen.0.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![
            ("ok".to_owned(), "ok"),
            ("bad".to_owned(), "raised"),
            ("<unknown>".to_owned(), "refused"),
            ("ok".to_owned(), "refused"),
        ]
    );
    assert_eq!(*seen.1.lock().unwrap(), 4);
    assert!(matches!(
        handle.status(),
        rpc_core::ServiceStatus::Consuming
    ));
    p.close().await;
    handle
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}
