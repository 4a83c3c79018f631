//! A Python nameko 2.14.1 service, run with `nameko run`, calls the Rust
//! person-service from inside its worker through nameko's `RpcProxy`
//! dependency, and the Rust side receives the Python worker's call id on
//! its call-id stack.
//!
//! person-service does not expose the stacks it receives, so the Python
//! worker also calls a small Rust rpc-core service whose `stack()` returns
//! its stack: nameko sends one worker's context with every call it makes,
//! so person-service got the same headers.

mod helpers;

use helpers::{python_dir, spawn_app, Api};
use rpc_core::{json, Args, CallError, Context, RpcError, RpcProxy, Service, Signature, Value};
use std::time::{Duration, Instant};
use test_support::nameko::NamekoRun;
use test_support::Cleanup;
use test_support::WithinExt;

/// Calls `ping` until the Python service answers (its queue exists and it
/// consumes), and returns the answer.
async fn wait_for_python(proxy: &RpcProxy, service: &str, run: &mut NamekoRun) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    let quick = proxy.with_timeout(Duration::from_secs(2));
    loop {
        run.assert_running();
        match quick.call(service, "ping", Args::new()).await {
            Ok(v) => return v,
            // No queue yet; a timeout would be a call that arrived before
            // the queue did and is not coming back.
            Err(CallError::UnknownService(_)) | Err(CallError::Timeout { .. }) => {}
            Err(e) => panic!("ping failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "{service} did not answer within 60 s; its log:\n{}",
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts `id` is `{prefix}.{uuid4}` (hyphenated, as nameko makes them).
fn assert_call_id(id: &Value, prefix: &str) {
    let id = id.as_str().unwrap_or_else(|| panic!("not a string: {id}"));
    let uuid = id
        .strip_prefix(&format!("{prefix}."))
        .unwrap_or_else(|| panic!("{id} does not start with {prefix}."));
    let parsed = uuid::Uuid::parse_str(uuid).unwrap_or_else(|e| panic!("{id}: {e}"));
    assert_eq!(parsed.hyphenated().to_string(), uuid, "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_calls_the_rust_person_service_with_its_call_id() {
    let app = spawn_app().await;
    let ctx_name = test_support::unique_name("ctx");
    let py_name = test_support::unique_name("py_caller");
    // spawn_app's clean-up deletes the person queue and event exchange.
    let mut cleanup = Cleanup::new().service(&ctx_name).service(&py_name);

    let config = rpc_core::Config::new(&test_support::broker_uri()).unwrap();
    let mut ctx_service = Service::builder(&ctx_name)
        .method(
            "stack",
            Signature::new(),
            |ctx: Context, (): ()| async move { Ok::<_, RpcError>(ctx.call_id_stack().to_vec()) },
        )
        .build()
        .spawn(config);
    ctx_service
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .expect("the ctx service consumes");

    let mut run = NamekoRun::start(
        python_dir(),
        "person_caller",
        &test_support::broker_uri(),
        &[
            ("PY_SERVICE_NAME", py_name.as_str()),
            ("PERSON_SERVICE", app.name.as_str()),
            ("CTX_SERVICE", ctx_name.as_str()),
        ],
    );
    let ping = wait_for_python(&app.proxy, &py_name, &mut run).await;
    // One reply queue for the container's two RpcProxy dependencies.
    let reply_queues = ping["reply_queues"].as_array().expect("a list");
    assert_eq!(reply_queues.len(), 1, "{ping}");
    let reply_queue = reply_queues[0].as_str().unwrap();
    cleanup.add_queue(reply_queue);
    assert!(
        reply_queue.starts_with(&format!("rpc.reply-{py_name}-")),
        "{reply_queue}"
    );

    let proxy = app.proxy.with_timeout(Duration::from_secs(20));
    let out = proxy
        .call(
            &py_name,
            "register",
            Args::new().arg("Ada").arg("Lovelace").arg(36),
        )
        .await
        .unwrap_or_else(|e| panic!("register failed: {e}\n{}", run.log()));

    // The Python worker's calls reached the Rust person-service: the
    // record is there, read directly.
    let id = out["id"].as_i64().expect("an integer id");
    let ada =
        json!({"id": id, "first_name": "Ada", "last_name": "Lovelace", "age": 36, "member": false});
    assert_eq!(out["get"], ada);
    assert_eq!(out["list"], json!([ada]));
    assert_eq!(app.ok("get", Args::new().arg(id)).await, ada);

    // Stacks: our proxy's id, then the Python worker's, then the Rust one's.
    let proxy_id = &proxy.call_id_stack()[0];
    assert_call_id(&json!(proxy_id), "standalone_rpc_proxy.call");
    let own = out["own_stack"].as_array().expect("a list");
    assert_eq!(own.len(), 2, "{out}");
    assert_eq!(own[0], json!(proxy_id));
    assert_call_id(&own[1], &format!("{py_name}.register"));
    let rust = out["rust_stack"].as_array().expect("a list");
    assert_eq!(rust.len(), 3, "{out}");
    assert_eq!(rust[0], json!(proxy_id));
    assert_eq!(rust[1], own[1], "the Python worker's own call id");
    assert_call_id(&rust[2], &format!("{ctx_name}.stack"));

    // The person-service's errors reach the Python worker as RemoteError...
    let missing = id + 1000;
    assert_eq!(
        proxy
            .call(&py_name, "get_or_error", Args::new().arg(missing))
            .await
            .unwrap(),
        json!({"exc_type": "PersonNotFound", "value": format!("no person with id {missing}")})
    );
    // ...and one it does not catch comes back to us as that RemoteError,
    // which is how nameko passes errors along a chain.
    match proxy
        .call(&py_name, "call_person", Args::new().arg("get").arg(missing))
        .await
    {
        Err(CallError::Remote(e)) => {
            assert_eq!(
                (e.exc_type.as_str(), e.exc_path.as_str()),
                ("RemoteError", "nameko.exceptions.RemoteError"),
                "{e:?}"
            );
            let text = format!("PersonNotFound no person with id {missing}");
            assert_eq!(e.value, text);
            assert_eq!(e.exc_args, [json!(text)]);
        }
        other => panic!("expected a RemoteError, got {other:?}"),
    }

    // Keyword arguments pass through the Python worker too.
    assert_eq!(
        proxy
            .call(
                &py_name,
                "call_person",
                Args::new().arg("update").arg(id).kwarg("age", 37),
            )
            .await
            .unwrap()["age"],
        json!(37)
    );
    assert_eq!(
        proxy
            .call(&py_name, "call_person", Args::new().arg("delete").arg(id))
            .await
            .unwrap(),
        Value::Null
    );
    assert!(app
        .remote_err("get", Args::new().arg(id))
        .await
        .is("PersonNotFound"));

    run.assert_running();
    run.stop();
    ctx_service
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .expect("ctx stops");
    app.close().await;
}
