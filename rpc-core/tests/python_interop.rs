//! Interop with real Python nameko 2.14.1 (in a venv the test setup
//! creates): Python's ClusterRpcProxy calls a Rust service, and the Rust
//! RpcProxy calls a Python service, which calls back into Rust.

mod common;

use common::{config, proxy, python_dir, start_calc, wait_for_python, Probe};
use rpc_core::{json, Args, CallError, Value};
use std::process::Command;
use test_support::nameko::NamekoRun;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cluster_rpc_proxy_calls_a_rust_service() {
    let config = config();
    let python = test_support::python::python();
    let (probe, _) = Probe::new();
    let mut svc = start_calc(&config, probe).await;

    let out = tokio::task::spawn_blocking({
        let name = svc.name.clone();
        move || {
            Command::new(python)
                .arg(python_dir().join("py_client.py"))
                .arg(test_support::broker_uri())
                .arg(name)
                .output()
                .expect("run the Python client")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: std::collections::HashMap<String, Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("client prints JSON");
            (v["name"].as_str().unwrap().to_owned(), v)
        })
        .collect();

    assert_eq!(results["add"]["result"], json!(3));
    assert_eq!(results["add_kw"]["result"], json!(42));
    assert_eq!(results["greet_default"]["result"], json!("Hello, Ada"));
    assert_eq!(
        results["echo_unicode"]["result"],
        json!({"name": "Zoë 😀", "n": [1, 2.5, null, true]})
    );
    // Built-in errors arrive as nameko's own exception classes.
    assert_eq!(results["not_found"]["class"], json!("MethodNotFound"));
    assert_eq!(results["not_found"]["module"], json!("nameko.exceptions"));
    assert_eq!(results["not_found"]["args"], json!(["nosuch"]));
    assert_eq!(
        results["bad_signature"]["class"],
        json!("IncorrectSignature")
    );
    assert_eq!(
        results["bad_signature"]["args"],
        json!(["add() missing 1 required positional argument: 'b'"])
    );
    // Application errors as RemoteError with our exc_type.
    assert_eq!(results["app_error"]["class"], json!("RemoteError"));
    assert_eq!(results["app_error"]["exc_type"], json!("CalcError"));
    assert_eq!(results["app_error"]["value"], json!("('bad', 42)"));
    // Python's context reached the Rust handler.
    let stack = results["ctx"]["result"]["stack"].as_array().unwrap();
    assert_eq!(stack.len(), 2);
    assert!(stack[0]
        .as_str()
        .unwrap()
        .starts_with("standalone_rpc_proxy.call."));
    assert!(stack[1]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}.ctx.", svc.name)));
    assert_eq!(
        results["ctx"]["result"]["data"]["user_id"],
        json!("py-user")
    );
    let expected: Vec<Value> = (0..20).rev().map(Value::from).collect();
    assert_eq!(results["call_async"]["result"], Value::Array(expected));

    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_proxy_calls_a_python_service_which_calls_back() {
    let config = config();
    let (probe, _) = Probe::new();
    let mut rust = start_calc(&config, probe).await;
    let py_name = test_support::unique_name("py_svc");
    let _cleanup = test_support::Cleanup::new().service(&py_name);
    let mut run = NamekoRun::start(
        python_dir(),
        "py_service",
        &test_support::broker_uri(),
        &[
            ("PY_SERVICE_NAME", py_name.as_str()),
            ("RUST_SERVICE", rust.name.as_str()),
        ],
    );
    let p = proxy(&config).await;
    wait_for_python(&p, &py_name, &mut run).await;

    assert_eq!(
        p.call(&py_name, "add", Args::new().arg(2).arg(40))
            .await
            .unwrap(),
        json!(42)
    );
    assert_eq!(
        p.call(&py_name, "add", Args::new().arg(2)).await.unwrap(),
        json!(2)
    );

    match p.call(&py_name, "fail", Args::new().arg("nope")).await {
        Err(CallError::Remote(e)) => {
            assert_eq!(
                (e.exc_type.as_str(), e.exc_path.as_str()),
                ("ValueError", "builtins.ValueError")
            );
            assert_eq!(e.value, "nope");
        }
        other => panic!("expected a remote ValueError, got {other:?}"),
    }
    match p.call(&py_name, "nosuch", Args::new()).await {
        Err(CallError::Remote(e)) => assert_eq!(e.exc_path, "nameko.exceptions.MethodNotFound"),
        other => panic!("expected MethodNotFound, got {other:?}"),
    }
    match p.call(&py_name, "add", Args::new().kwarg("c", 1)).await {
        Err(CallError::Remote(e)) => assert_eq!(e.exc_path, "nameko.exceptions.IncorrectSignature"),
        other => panic!("expected IncorrectSignature, got {other:?}"),
    }

    // Our call id and context data reach the Python worker.
    let mut data = std::collections::BTreeMap::new();
    data.insert("user_id".to_owned(), json!("rust-user"));
    let p2 = p.with_context_data(data);
    let ctx = p2.call(&py_name, "ctx", Args::new()).await.unwrap();
    assert_eq!(ctx["stack"][0], json!(p.call_id_stack()[0]));
    assert!(ctx["stack"][1]
        .as_str()
        .unwrap()
        .starts_with(&format!("{py_name}.ctx.")));
    assert_eq!(ctx["data"]["user_id"], json!("rust-user"));

    // Python calls back into Rust from inside its worker: three hops of stack.
    let back = p2
        .call(&py_name, "call_rust", Args::new().arg("ctx"))
        .await
        .unwrap();
    let stack: Vec<String> = serde_json::from_value(back["stack"].clone()).unwrap();
    assert_eq!(stack.len(), 3, "{stack:?}");
    assert_eq!(stack[0], p.call_id_stack()[0]);
    assert!(stack[1].starts_with(&format!("{py_name}.call_rust.")));
    assert!(stack[2].starts_with(&format!("{}.ctx.", rust.name)));
    assert_eq!(back["data"]["user_id"], json!("rust-user"));

    run.stop();
    p.close().await;
    rust.stop().await;
}
