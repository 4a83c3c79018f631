//! The `rpc` binary against a small service on the real broker: results,
//! remote errors, unknown services, unreachable brokers, context data and
//! usage errors, each with its exit status.

use rpc_core::{json, Config, Context, RpcError, Service, ServiceHandle, Signature, Value};
use test_support::output::Output;
use test_support::Cleanup;
use test_support::WithinExt;

fn sample_service(name: &str) -> Service {
    Service::builder(name)
        .method(
            "greet",
            Signature::new().param("name").optional("greeting", "Hello"),
            |_ctx: Context, (name, greeting): (String, String)| async move {
                Ok::<_, RpcError>(format!("{greeting}, {name}"))
            },
        )
        .method(
            "echo",
            Signature::new().param("args").optional("kwargs", json!({})),
            |_ctx: Context, (args, kwargs): (Value, Value)| async move {
                Ok::<_, RpcError>(json!({"args": args, "kwargs": kwargs}))
            },
        )
        .method(
            "fail",
            Signature::new().param("id"),
            |_ctx: Context, (id,): (i64,)| async move {
                Err::<(), _>(RpcError::new(
                    "PersonNotFound",
                    "person_service.exceptions.PersonNotFound",
                    vec![id.into()],
                ))
            },
        )
        .method("ctx", Signature::new(), |ctx: Context, (): ()| async move {
            Ok::<_, RpcError>(json!({
                "user_id": ctx.get("user_id"),
                "language": ctx.get("language"),
            }))
        })
        .build()
}

/// A running sample service on a unique name, its queue deleted at the end.
struct Running {
    name: String,
    uri: String,
    handle: Option<ServiceHandle>,
    _cleanup: Cleanup,
}

impl Running {
    async fn start() -> Running {
        let uri = test_support::require_broker();
        let config = Config::new(&uri).expect("AMQP_URI parses");
        let name = test_support::unique_name("rpc_cli");
        let cleanup = Cleanup::new().service(&name);
        let mut handle = sample_service(&name).spawn(config);
        handle
            .ready()
            .within(test_support::START_BOUND, "the service to start")
            .await
            .expect("the sample service starts");
        Running {
            name,
            uri,
            handle: Some(handle),
            _cleanup: cleanup,
        }
    }

    async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle
                .shutdown()
                .within(test_support::STOP_BOUND, "the service to stop")
                .await
                .expect("the sample service stops");
        }
    }
}

/// Runs `rpc` with `AMQP_URI` set to `uri` (so the flag is also tested as
/// an environment variable) and the given arguments.
async fn rpc(uri: &str, args: &[&str]) -> Output {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rpc"))
        .env("AMQP_URI", uri)
        .env("RPC_TIMEOUT", "10")
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .await
        .expect("the binary runs");
    Output::from(output)
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positional_and_keyword_arguments() {
    let svc = Running::start().await;
    let greet = format!("{}.greet", svc.name);
    let out = rpc(&svc.uri, &["call", &greet, "Ada", "greeting=Hi"]).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stdout, "\"Hi, Ada\"\n");
    assert!(out.stderr.is_empty(), "{out}");

    let echo = format!("{}.echo", svc.name);
    let out = rpc(
        &svc.uri,
        &[
            "call",
            &echo,
            "--kwargs",
            r#"{"kwargs": {"n": -1}}"#,
            r#"[36, "36", true, null, "Ada"]"#,
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        json_of(&out),
        json!({"args": [36, "36", true, null, "Ada"], "kwargs": {"n": -1}})
    );
    assert!(out.stdout.lines().count() > 1, "pretty by default: {out}");

    let out = rpc(
        &svc.uri,
        &["--compact", "call", &echo, "--args", "[[1, 2]]", "kwargs=x"],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stdout, "{\"args\":[1,2],\"kwargs\":\"x\"}\n");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_data_reaches_the_service() {
    let svc = Running::start().await;
    let ctx = format!("{}.ctx", svc.name);
    let out = rpc(
        &svc.uri,
        &[
            "--context",
            "user_id=7",
            "call",
            &ctx,
            "--context",
            "language=en",
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(json_of(&out), json!({"user_id": 7, "language": "en"}));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_error_exits_1_with_its_details() {
    let svc = Running::start().await;
    let fail = format!("{}.fail", svc.name);
    let out = rpc(&svc.uri, &["call", &fail, "42"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    assert!(out.stderr.starts_with("PersonNotFound: 42"), "{out}");
    assert!(
        out.stderr
            .contains("exc_path: person_service.exceptions.PersonNotFound"),
        "{out}"
    );
    assert!(out.stderr.contains(r#"exc_args: ["42"]"#), "{out}");

    // A bad signature is a remote error too: nameko's IncorrectSignature.
    let greet = format!("{}.greet", svc.name);
    let out = rpc(&svc.uri, &["call", &greet]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.starts_with("IncorrectSignature: "), "{out}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_service_exits_2() {
    let uri = test_support::require_broker();
    let target = format!("{}.get", test_support::unique_name("nobody"));
    let out = rpc(&uri, &["call", &target, "1"]).await;
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("unknown service `nobody-"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_broker_exits_2_without_showing_the_password() {
    test_support::require_broker();
    for uri in [
        // Nothing listens on port 1.
        "amqp://probe:hunter2-secret@127.0.0.1:1/%2f",
        // Does not parse.
        "amqp://probe:hunter2-secret@127.0.0.1:notaport/%2f",
        // Wrong password on the real broker.
        "amqp://guest:hunter2-secret@127.0.0.1:5672/%2f",
    ] {
        let out = rpc(uri, &["call", "person.get", "1"]).await;
        assert_eq!(out.code, Some(2), "{uri}: {out}");
        assert!(!out.stderr.contains("hunter2"), "{out}");
        assert!(out.stderr.starts_with("error: "), "{out}");
    }
    let out = rpc(
        "amqp://probe:hunter2-secret@127.0.0.1:1/%2f",
        &["call", "person.get", "1"],
    )
    .await;
    assert!(out.stderr.contains("127.0.0.1:1"), "{out}");
    // --help with the URI in the environment.
    let out = rpc("amqp://probe:hunter2-secret@127.0.0.1:1/%2f", &["--help"]).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(!out.stdout.contains("hunter2"), "{out}");
    assert!(out.stdout.contains("rpc call person.get 42"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_64_without_connecting() {
    // A broker URI that would fail with 2 shows these fail before connecting.
    let unreachable = "amqp://127.0.0.1:1/%2f";
    for args in [
        &["call", "no_method_here"][..],
        &["call", "svc.m", "a=1", "a=2"],
        &["call", "svc.m", "--args", "{}"],
        &["call", "svc.m", "--context", "novalue"],
        &["call", "svc.m", "--timeout", "0"],
        &["frobnicate"],
        &[],
    ] {
        let out = rpc(unreachable, args).await;
        assert_eq!(out.code, Some(64), "{args:?}: {out}");
        assert!(!out.stderr.is_empty(), "{args:?}: {out}");
    }
}

/// A list of brokers in the environment: `--help` shows no password, and a
/// call to a list of dead brokers names both without their passwords.
#[tokio::test]
async fn a_broker_list_shows_no_password_in_help_or_errors() {
    let list =
        "amqp://probe:list-secret-1@127.0.0.1:1/%2f;amqp://probe:list-secret-2@127.0.0.1:2/%2f";
    let help = rpc(list, &["--help"]).await;
    assert!(help.stdout.contains("--amqp-uri"), "{help}");
    assert!(!help.to_string().contains("list-secret"), "{help}");
    let out = rpc(list, &["call", "nobody.nothing"]).await;
    assert_ne!(out.code, Some(0), "{out}");
    let text = out.to_string();
    assert!(
        text.contains("127.0.0.1:1") && text.contains("127.0.0.1:2"),
        "{text}"
    );
    assert!(!text.contains("list-secret"), "{text}");
}
