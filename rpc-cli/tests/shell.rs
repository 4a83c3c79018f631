//! `rpc shell` with piped stdin against a small service on the real broker:
//! arguments in JSON and Python spellings, remote and syntax errors with
//! their exit statuses, context data, timeouts, background calls, events
//! received by a Rust handler, and `--config` with its precedence.
//!
//! The interactive path is driven through a pseudo-terminal in
//! `tests/shell_pty.rs`.

use rpc_core::events::Subscription;
use rpc_core::{
    json, Config, Context, EventHandlerOptions, RpcError, Service, ServiceHandle, Signature, Value,
};
use std::process::Stdio;
use std::time::Duration;
use test_support::output::Output;
use test_support::Cleanup;
use test_support::WithinExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

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
                Err::<(), _>(
                    RpcError::new(
                        "PersonNotFound",
                        "person_service.exceptions.PersonNotFound",
                        vec![id.into()],
                    )
                    .with_value(format!("no person with id {id}")),
                )
            },
        )
        .method("ctx", Signature::new(), |ctx: Context, (): ()| async move {
            Ok::<_, RpcError>(json!(ctx.data()))
        })
        .method(
            "slow",
            Signature::new().param("seconds"),
            |_ctx: Context, (seconds,): (f64,)| async move {
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                Ok::<_, RpcError>(seconds)
            },
        )
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
        Self::start_with(|c| c, Cleanup::new()).await
    }

    async fn start_with(tweak: impl FnOnce(Config) -> Config, cleanup: Cleanup) -> Running {
        let uri = test_support::require_broker();
        let config = tweak(Config::new(&uri).expect("AMQP_URI parses"));
        let name = test_support::unique_name("rpc_shell");
        let cleanup = cleanup.service(&name);
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

/// `out`'s stdout as a stream of JSON documents.
fn documents(out: &Output) -> Vec<Value> {
    serde_json::Deserializer::from_str(&out.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("stdout is not JSON documents ({e}):\n{out}"))
}

/// Runs `rpc ARGS…` with `script` on its stdin (a pipe, so not a terminal)
/// and the given environment (AMQP_URI, RPC_EXCHANGE and RUST_LOG are
/// removed first).
async fn rpc_env(env: &[(&str, &str)], args: &[&str], script: &str) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rpc"));
    command
        .env_remove("AMQP_URI")
        .env_remove("RPC_EXCHANGE")
        .env_remove("RPC_TIMEOUT")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the binary runs");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(script.as_bytes())
        .await
        .expect("the script is written");
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("rpc shell ends within 60 s")
        .expect("the binary runs");
    Output::from(output)
}

/// `rpc shell ARGS…` with `AMQP_URI` set to `uri`.
async fn shell(uri: &str, args: &[&str], script: &str) -> Output {
    let mut all = vec!["shell"];
    all.extend_from_slice(args);
    rpc_env(&[("AMQP_URI", uri)], &all, script).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_with_json_and_python_arguments() {
    let svc = Running::start().await;
    let s = &svc.name;
    let script = format!(
        "# positional, keyword, Python literals, nameko spellings\n\
         {s}.greet('Ada', greeting=\"Hi\")\n\
         n.rpc.{s}.greet(u'Zoë')\n\
         n.rpc[\"{s}\"].greet(name='Bob', )\n\
         {s}.echo([1, -2.5, True, False, None, 'it\\'s', (3, 4)], kwargs={{'n': {{\"deep\": [1_000]}}}})\n\
         \n\
         {s}.echo(\n  'spanning', # lines\n  kwargs={{}},\n)\n"
    );
    let out = shell(&svc.uri, &["--compact"], &script).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stderr, "", "{out}");
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        [
            "\"Hi, Ada\"",
            "\"Hello, Zoë\"",
            "\"Hello, Bob\"",
            r#"{"args":[1,-2.5,true,false,null,"it's",[3,4]],"kwargs":{"n":{"deep":[1000]}}}"#,
            r#"{"args":"spanning","kwargs":{}}"#,
        ],
        "{out}"
    );

    // Pretty by default: still one JSON document per result.
    let out = shell(
        &svc.uri,
        &[],
        &format!("{s}.echo({{'a': 1}})\n{s}.greet('x')\n"),
    )
    .await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.lines().count() > 2, "indented: {out}");
    assert_eq!(
        documents(&out),
        [json!({"args": {"a": 1}, "kwargs": {}}), json!("Hello, x")]
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_error_is_readable_and_the_script_goes_on() {
    let svc = Running::start().await;
    let s = &svc.name;
    let script = format!("{s}.fail(42)\n{s}.greet('after')\n");
    let out = shell(&svc.uri, &["--compact"], &script).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.stdout, "\"Hello, after\"\n", "{out}");
    assert_eq!(
        out.stderr,
        "line 1: RemoteError PersonNotFound: no person with id 42\n  \
         exc_path: person_service.exceptions.PersonNotFound\n  exc_args: [\"42\"]\n",
        "{out}"
    );

    // A wrong signature is a remote error too (nameko's IncorrectSignature),
    // and --stop-on-error skips what follows.
    let script = format!("{s}.greet()\n{s}.greet('never')\n");
    let out = shell(&svc.uri, &["--stop-on-error"], &script).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.stdout, "", "{out}");
    assert!(
        out.stderr
            .starts_with("line 1: RemoteError IncorrectSignature: "),
        "{out}"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_names_line_and_column_and_exits_64() {
    let svc = Running::start().await;
    let s = &svc.name;
    let script = format!("{s}.greet('ok')\n{s}.greet('Ada' 'Lovelace')\n{s}.greet(Ada)\n");
    let out = shell(&svc.uri, &["--compact"], &script).await;
    assert_eq!(out.code, Some(64), "{out}");
    // The good line still ran.
    assert_eq!(out.stdout, "\"Hello, ok\"\n", "{out}");
    let column = s.len() + ".greet('Ada' ".len() + 1;
    let expected = format!(
        "line 2: error: syntax error at column {column}: expected `,` or `)`, found a string\n  \
         {s}.greet('Ada' 'Lovelace')\n  {}^\n",
        " ".repeat(column - 1)
    );
    assert!(out.stderr.starts_with(&expected), "{out}");
    assert!(
        out.stderr.contains("line 3: error: syntax error at column")
            && out.stderr.contains("strings need quotes (\"Ada\")"),
        "{out}"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_reaches_the_service() {
    let svc = Running::start().await;
    let s = &svc.name;
    let script = format!(
        "{s}.ctx()\n\
         context user_id=u1 language=en-GB roles=['admin', 'ops']\n\
         {s}.ctx()\n\
         context unset language\n\
         context\n\
         {s}.ctx()\n"
    );
    let out = shell(&svc.uri, &["--compact", "--context", "tenant=7"], &script).await;
    assert_eq!(out.code, Some(0), "{out}");
    let docs = documents(&out);
    assert_eq!(docs.len(), 3, "{out}");
    assert_eq!(docs[0]["tenant"], json!(7), "{out}");
    assert_eq!(docs[0].get("user_id"), None, "{out}");
    assert_eq!(docs[1]["user_id"], json!("u1"), "{out}");
    assert_eq!(docs[1]["language"], json!("en-GB"), "{out}");
    assert_eq!(docs[1]["roles"], json!(["admin", "ops"]), "{out}");
    assert_eq!(docs[1]["tenant"], json!(7), "{out}");
    assert_eq!(docs[2].get("language"), None, "{out}");
    assert_eq!(docs[2]["user_id"], json!("u1"), "{out}");
    // `context` alone shows it, on stderr in a script.
    assert!(
        out.stderr
            .contains(r#"context {"roles":["admin","ops"],"tenant":7,"user_id":"u1"}"#),
        "{out}"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_applies_to_later_calls_and_the_shell_recovers() {
    let svc = Running::start().await;
    let s = &svc.name;
    let script = format!("timeout 0.3\n{s}.slow(2)\ntimeout 10\n{s}.slow(0.1)\ntimeout\n");
    let started = std::time::Instant::now();
    let out = shell(&svc.uri, &["--compact"], &script).await;
    assert_eq!(out.code, Some(2), "{out}");
    assert_eq!(out.stdout, "0.1\n", "{out}");
    assert!(
        out.stderr.contains(&format!(
            "line 2: error: no reply from {s}.slow within 300ms"
        )),
        "{out}"
    );
    assert!(out.stderr.contains("timeout 10\n"), "{out}");
    // Well under the 2 s the slow call takes, plus the connection.
    assert!(started.elapsed() < Duration::from_secs(10), "{out}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_calls_and_wait() {
    let svc = Running::start().await;
    let s = &svc.name;
    let script = format!(
        "async {s}.slow(0.3)\n\
         n.rpc.{s}.greet.call_async('b')\n\
         async {s}.fail(7)\n\
         jobs\n\
         wait 2\n\
         wait\n\
         {s}.greet.call_async('collected at the end')\n"
    );
    let out = shell(&svc.uri, &["--compact"], &script).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(
        out.stdout, "\"Hello, b\"\n0.3\n\"Hello, collected at the end\"\n",
        "{out}"
    );
    assert!(
        out.stderr
            .contains(&format!("[1] {s}.slow\n[2] {s}.greet\n[3] {s}.fail\n")),
        "{out}"
    );
    assert!(
        out.stderr.contains(&format!(
            "line 6: [3] {s}.fail: RemoteError PersonNotFound: no person with id 7"
        )),
        "{out}"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatched_events_reach_a_rust_handler() {
    let uri = test_support::require_broker();
    let config = Config::new(&uri).expect("AMQP_URI parses");
    let source = test_support::unique_name("shell_src");
    let sink = test_support::unique_name("shell_sink");
    let _cleanup = Cleanup::new()
        .service(&sink)
        .queue(&format!("evt-{source}-person_created--{sink}.on_created"))
        .exchange(&format!("{source}.events"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut handle = Service::builder(&sink)
        .event_handler(
            "on_created",
            Subscription::to("person_created").from(&source),
            EventHandlerOptions::service_pool(),
            move |_ctx: Context, data: Value| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(data);
                    Ok::<(), String>(())
                }
            },
        )
        .build()
        .spawn(config);
    handle
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .expect("the handler starts");

    let script = format!(
        "dispatch(\"{source}\", \"person_created\", {{\"id\": 1}})\n\
         n.dispatch_event('{source}', 'person_created', {{'id': 2, 'name': u'Zoë'}})\n\
         dispatch('{source}', event_type='person_created', event_data=None)\n\
         dispatch('{source}', 'person_created')\n"
    );
    let out = shell(&uri, &[], &script).await;
    assert_eq!(out.code, Some(64), "the last line is wrong: {out}");
    assert_eq!(
        out.stdout, "",
        "dispatches print nothing in a script: {out}"
    );
    assert!(
        out.stderr.starts_with(
            "line 4: error: syntax error at column 1: dispatch() is missing `event_data`"
        ),
        "{out}"
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let data = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("the handler is alive");
        got.push(data);
    }
    // The handler runs events concurrently: their order is not kept.
    for expected in [
        json!({"id": 1}),
        json!({"id": 2, "name": "Zoë"}),
        Value::Null,
    ] {
        assert!(got.contains(&expected), "{expected} in {got:?}");
    }
    handle
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .expect("the handler stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_settings_and_their_precedence() {
    let exchange = test_support::unique_name("shell-rpc");
    let svc = Running::start_with(
        |mut c| {
            c.rpc_exchange = exchange.clone();
            c
        },
        Cleanup::new().exchange(&exchange),
    )
    .await;
    let s = &svc.name;
    let dir = std::env::temp_dir().join(test_support::unique_name("rpc-shell-config"));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let good = dir.join("good.yaml");
    // ${VAR} substitution as nameko does; LOGGING is a service's key, ignored.
    std::fs::write(
        &good,
        format!(
            "AMQP_URI: ${{SHELL_TEST_URI}}\nrpc_exchange: {exchange}\nLOGGING: {{version: 1}}\n"
        ),
    )
    .expect("the config file is written");
    let unreachable = dir.join("unreachable.yaml");
    std::fs::write(
        &unreachable,
        "AMQP_URI: amqp://probe:hunter2-secret@127.0.0.1:1/%2f\n",
    )
    .expect("the config file is written");
    let good_path = good.to_string_lossy().into_owned();
    let unreachable_path = unreachable.to_string_lossy().into_owned();
    let env = [("SHELL_TEST_URI", svc.uri.as_str())];
    let call = format!("{s}.greet('file')\n");

    // The file alone: its broker and its exchange (only that exchange
    // reaches the service).
    let out = rpc_env(&env, &["--config", &good_path, "shell", "--compact"], &call).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "\"Hello, file\"\n"),
        "{out}"
    );
    assert_eq!(out.stderr, "", "no warning for a service's own keys: {out}");
    // `rpc call` reads it too.
    let greet = format!("{s}.greet");
    let out = rpc_env(
        &env,
        &["--config", &good_path, "call", &greet, "call", "--compact"],
        "",
    )
    .await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "\"Hello, call\"\n"),
        "{out}"
    );

    // The environment beats the file …
    let out = rpc_env(
        &[("AMQP_URI", "amqp://probe:hunter2-secret@127.0.0.1:1/%2f")],
        &["shell", "--config", &good_path],
        &call,
    )
    .await;
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("127.0.0.1:1"), "{out}");
    assert!(!out.stderr.contains("hunter2"), "{out}");
    // … and a flag beats both.
    let out = rpc_env(
        &[("AMQP_URI", "amqp://probe:hunter2-secret@127.0.0.1:1/%2f")],
        &[
            "shell",
            "--config",
            &unreachable_path,
            "--amqp-uri",
            &svc.uri,
            "--rpc-exchange",
            &exchange,
            "--compact",
        ],
        &call,
    )
    .await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "\"Hello, file\"\n"),
        "{out}"
    );
    // The file's exchange beats the default, but a flag beats the file.
    let out = rpc_env(
        &env,
        &[
            "shell",
            "--config",
            &good_path,
            "--rpc-exchange",
            "nameko-rpc",
        ],
        &call,
    )
    .await;
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("unknown service"), "{out}");
    assert!(out.stderr.contains("on exchange nameko-rpc"), "{out}");

    // A file that cannot be used is a usage error, before connecting.
    let out = rpc_env(
        &[],
        &["shell", "--config", "/nonexistent/nameko.yaml"],
        &call,
    )
    .await;
    assert_eq!(out.code, Some(64), "{out}");
    assert!(out.stderr.contains("/nonexistent/nameko.yaml"), "{out}");
    let out = rpc_env(&[], &["shell", "--config", &unreachable_path], &call).await;
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("127.0.0.1:1") && !out.stderr.contains("hunter2"),
        "{out}"
    );

    let _ = std::fs::remove_dir_all(&dir);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_exits_2_before_reading() {
    test_support::require_broker();
    let out = shell(
        "amqp://probe:hunter2-secret@127.0.0.1:1/%2f",
        &[],
        "person.get(1)\n",
    )
    .await;
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.starts_with("error: cannot connect"), "{out}");
    assert!(!out.stderr.contains("hunter2"), "{out}");
    // A bad --context is a usage error, before connecting.
    let out = shell("amqp://127.0.0.1:1/%2f", &["--context", "novalue"], "").await;
    assert_eq!(out.code, Some(64), "{out}");
    // Empty input is a successful (empty) script.
    let uri = test_support::broker_uri();
    let out = shell(&uri, &[], "").await;
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (Some(0), "", ""),
        "{out}"
    );
}
