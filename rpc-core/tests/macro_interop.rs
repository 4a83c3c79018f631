//! `#[rpc_core::service]` against real Python nameko 2.14.1:
//! * Python's ClusterRpcProxy gets the same reply messages, body and
//!   properties, from a macro-defined service as from the same service
//!   built by hand with the builder, errors included;
//! * an error a handler passes on with `?` from a typed client reaches the
//!   caller exactly as nameko reports it when a Python service sits in the
//!   middle and lets the exception through.

mod common;

use common::{config, proxy, python_dir, wait_for_python};
use rpc_core::{json, Args, CallError, Context, RemoteError, RpcError, Service, Signature, Value};
use std::collections::BTreeMap;
use std::process::Command;
use test_support::nameko::NamekoRun;
use test_support::{unique_name, Cleanup, WithinExt};

fn greeter_error(code: i64) -> RpcError {
    RpcError::new(
        "GreeterError",
        "greeter.exceptions.GreeterError",
        vec![code.into(), "failed".into()],
    )
}

fn user(ctx: &Context, shout: Option<bool>) -> String {
    let user = ctx
        .get("user_id")
        .and_then(Value::as_str)
        .unwrap_or("nobody")
        .to_owned();
    if shout == Some(true) {
        user.to_uppercase()
    } else {
        user
    }
}

/// The greeter written with the builder by hand.
fn by_hand(name: &str) -> Service {
    Service::builder(name)
        .method(
            "hello",
            Signature::new().param("name").optional("punctuation", "!"),
            |_ctx: Context, (name, punctuation): (String, String)| async move {
                Ok::<_, RpcError>(format!("Hello, {name}{punctuation}"))
            },
        )
        .method(
            "whoami",
            Signature::new().optional("shout", Value::Null),
            |ctx: Context, (shout,): (Option<bool>,)| async move {
                Ok::<_, RpcError>(user(&ctx, shout))
            },
        )
        .method(
            "fail",
            Signature::new().param("code"),
            |_ctx: Context, (code,): (i64,)| async move { Err::<(), _>(greeter_error(code)) },
        )
        .method(
            "count",
            Signature::new().optional("times", 1u8),
            |_ctx: Context, (times,): (u8,)| async move { Ok::<_, RpcError>(u64::from(times) * 2) },
        )
        .build()
}

/// The same greeter, with the macro.
struct Greeter;

#[rpc_core::service(name = "greeter")]
impl Greeter {
    #[rpc]
    async fn hello(
        &self,
        name: String,
        #[default("!")] punctuation: String,
    ) -> Result<String, RpcError> {
        Ok(format!("Hello, {name}{punctuation}"))
    }

    #[rpc]
    async fn whoami(&self, ctx: &Context, shout: Option<bool>) -> Result<String, RpcError> {
        Ok(user(ctx, shout))
    }

    #[rpc]
    async fn fail(&self, code: i64) -> Result<(), RpcError> {
        Err(greeter_error(code))
    }

    #[rpc]
    async fn count(&self, #[default(1)] times: u8) -> Result<u64, RpcError> {
        Ok(u64::from(times) * 2)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_gets_the_same_replies_from_the_macro_as_from_the_builder() {
    let config = config();
    let (hand, macro_name) = (unique_name("greeter-hand"), unique_name("greeter-macro"));
    let _cleanup = Cleanup::new().service(&hand).service(&macro_name);
    let mut by_hand = by_hand(&hand).spawn(config.clone());
    let mut by_macro = Greeter
        .into_service_builder(&macro_name)
        .build()
        .spawn(config.clone());
    for h in [&mut by_hand, &mut by_macro] {
        h.ready()
            .within(test_support::START_BOUND, "the service to start")
            .await
            .unwrap();
    }
    let python = test_support::python::python();
    let out = tokio::task::spawn_blocking({
        let (hand, macro_name) = (hand.clone(), macro_name.clone());
        move || {
            Command::new(python)
                .arg(python_dir().join("py_raw_replies.py"))
                .arg(test_support::broker_uri())
                .arg(hand)
                .arg(macro_name)
                .output()
                .expect("run the Python client")
        }
    })
    .within(std::time::Duration::from_secs(120), "the Python client")
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the Python client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut replies: BTreeMap<(String, u64), Value> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).expect("the client prints JSON");
        let key = (
            v["service"].as_str().unwrap_or_default().to_owned(),
            v["call"].as_u64().unwrap_or(u64::MAX),
        );
        replies.insert(key, v["reply"].clone());
    }
    let calls = replies.keys().filter(|(s, _)| *s == hand).count() as u64;
    assert_eq!(calls, 14, "every call was made: {replies:?}");
    let mut errors = 0;
    for i in 0..calls {
        let a = &replies[&(hand.clone(), i)];
        let b = &replies[&(macro_name.clone(), i)];
        assert!(!a.is_null(), "call {i} got no reply");
        assert_eq!(a, b, "call {i}: the builder's reply, then the macro's");
        if !a["body"]["error"].is_null() {
            errors += 1;
        }
    }
    // The list covers errors of every kind, not only results: three
    // signature errors, three argument types, one raised, one unknown
    // method.
    assert_eq!(errors, 8);
    assert_eq!(
        replies[&(hand.clone(), 7)]["body"]["result"],
        json!("py-user"),
        "the context data travelled"
    );
    by_hand.shutdown().await.unwrap();
    by_macro.shutdown().await.unwrap();
}

/// The service the middle ones call.
struct Leaf;

#[rpc_core::service(name = "leaf")]
impl Leaf {
    #[rpc]
    async fn get(&self, id: i64) -> Result<i64, RpcError> {
        if id == 404 {
            Err(RpcError::new(
                "NotFound",
                "leaf.exceptions.NotFound",
                vec![id.into(), json!({"tried": [1, 2]})],
            ))
        } else {
            Ok(id * 10)
        }
    }
}

/// The leaf as the middle service's client sees it, with a method it
/// lacks and a wrong signature.
#[rpc_core::client(service = "leaf")]
trait LeafApi {
    async fn get(&self, id: i64) -> i64;
    async fn missing(&self) -> i64;
    #[rpc(name = "get")]
    async fn get_with_extra(&self, id: i64, extra: i64) -> i64;
}

/// The Rust service in the middle: `?` on each call's error.
struct Middle {
    leaf: String,
}

#[rpc_core::service(name = "middle")]
impl Middle {
    #[rpc]
    async fn relay_get(&self, ctx: &Context, id: i64) -> Result<i64, RpcError> {
        Ok(LeafApiClient::for_service(ctx.rpc(), &self.leaf)
            .get(id)
            .await?)
    }

    #[rpc]
    async fn relay_missing(&self, ctx: &Context) -> Result<i64, RpcError> {
        Ok(LeafApiClient::for_service(ctx.rpc(), &self.leaf)
            .missing()
            .await?)
    }

    #[rpc]
    async fn relay_bad(&self, ctx: &Context) -> Result<i64, RpcError> {
        let leaf = LeafApiClient::for_service(ctx.rpc(), &self.leaf);
        Ok(leaf.get_with_extra(1, 2).await?)
    }

    #[rpc]
    async fn relay_unknown(&self, ctx: &Context, service: String) -> Result<i64, RpcError> {
        Ok(LeafApiClient::for_service(ctx.rpc(), &service)
            .get(1)
            .await?)
    }
}

fn remote(result: Result<Value, CallError>) -> RemoteError {
    match result {
        Err(CallError::Remote(e)) => e,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_passed_on_with_question_mark_are_what_nameko_in_the_middle_sends() {
    let config = config();
    let leaf = unique_name("leaf");
    let middle = unique_name("middle");
    let py_middle = unique_name("py_middle");
    let py_lost = unique_name("py_lost");
    let nosuch = unique_name("nosuch");
    let _cleanup = Cleanup::new()
        .service(&leaf)
        .service(&middle)
        .service(&py_middle)
        .service(&py_lost);
    let mut leaf_svc = Leaf
        .into_service_builder(&leaf)
        .build()
        .spawn(config.clone());
    let mut middle_svc = Middle { leaf: leaf.clone() }
        .into_service_builder(&middle)
        .build()
        .spawn(config.clone());
    for h in [&mut leaf_svc, &mut middle_svc] {
        h.ready()
            .within(test_support::START_BOUND, "the service to start")
            .await
            .unwrap();
    }
    let broker = test_support::broker_uri();
    // py_service's call_rust(method, *args) calls RUST_SERVICE and lets
    // whatever it raises through.
    let mut py = NamekoRun::start(
        python_dir(),
        "py_service",
        &broker,
        &[
            ("PY_SERVICE_NAME", py_middle.as_str()),
            ("RUST_SERVICE", leaf.as_str()),
        ],
    );
    let mut py_to_nowhere = NamekoRun::start(
        python_dir(),
        "py_service",
        &broker,
        &[
            ("PY_SERVICE_NAME", py_lost.as_str()),
            ("RUST_SERVICE", nosuch.as_str()),
        ],
    );
    let p = proxy(&config).await;
    wait_for_python(&p, &py_middle, &mut py).await;
    wait_for_python(&p, &py_lost, &mut py_to_nowhere).await;

    // A call that works goes through both.
    assert_eq!(
        p.call(&middle, "relay_get", Args::new().arg(4))
            .await
            .unwrap(),
        json!(40)
    );
    assert_eq!(
        p.call(&py_middle, "call_rust", Args::new().arg("get").arg(4))
            .await
            .unwrap(),
        json!(40)
    );
    let cases = [
        (
            "an application error",
            Args::new().arg(404),
            "relay_get",
            Args::new().arg("get").arg(404),
            &py_middle,
            "RemoteError",
        ),
        (
            "a method the leaf lacks",
            Args::new(),
            "relay_missing",
            Args::new().arg("missing"),
            &py_middle,
            "MethodNotFound",
        ),
        (
            "arguments that do not fit",
            Args::new(),
            "relay_bad",
            Args::new().arg("get").arg(1).arg(2),
            &py_middle,
            "IncorrectSignature",
        ),
        (
            "a service with no queue",
            Args::new().arg(nosuch.as_str()),
            "relay_unknown",
            Args::new().arg("get").arg(1),
            &py_lost,
            "UnknownService",
        ),
    ];
    for (what, rust_args, rust_method, py_args, py_service, exc_type) in cases {
        let from_rust = remote(p.call(&middle, rust_method, rust_args).await);
        let from_python = remote(p.call(py_service, "call_rust", py_args).await);
        eprintln!("{what}: nameko sends {from_python:?}");
        assert_eq!(from_python.exc_type, exc_type, "{what}");
        assert_eq!(
            from_rust, from_python,
            "{what}: the Rust middle, then the Python one"
        );
    }
    py.stop();
    py_to_nowhere.stop();
    p.close().await;
    leaf_svc.shutdown().await.unwrap();
    middle_svc.shutdown().await.unwrap();
}
