//! `person-service --config FILE`, run as the built binary with a
//! controlled environment: each setting comes from the first of flag,
//! environment, file, default; keys the service does not use are warned
//! about; a bad file stops start-up with a message naming file and key.
//!
//! Logs are read as JSON lines (the files set `LOG_FORMAT: json`, which
//! also checks that a file key reaches the logging set-up).

use rpc_core::{Args, Config, RpcProxy, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use test_support::{unique_name, Cleanup};

const WAIT: Duration = Duration::from_secs(30);

/// A running person-service whose log lines can be waited for.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_person-service"))
            .args(args)
            // Nothing from the test's own environment (AMQP_URI above all).
            .env_clear()
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send(line);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first JSON log line (seen before or arriving within [`WAIT`])
    /// that `want` accepts.
    fn wait_for(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let matches = |line: &str| serde_json::from_str::<Value>(line).ok().filter(|v| want(v));
        if let Some(v) = self.seen.iter().find_map(|l| matches(l)) {
            return v;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = matches(&line);
                    self.seen.push(line);
                    if let Some(v) = found {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.child.kill();
                    panic!(
                        "no log line {what} within {WAIT:?}; output:\n{}",
                        self.output()
                    );
                }
            }
        }
    }

    fn output(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// SIGTERM, then the exit status (a graceful stop is a success).
    fn stop(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the binary") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "no exit within {WAIT:?} of SIGTERM; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn message_is(v: &Value, message: &str) -> bool {
    v["message"].as_str().is_some_and(|m| m.contains(message))
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn endpoint(uri: &str) -> String {
    uri.parse::<rpc_core::AmqpUri>().unwrap().endpoint()
}

#[test]
fn the_file_names_the_broker_and_unknown_keys_are_warned() {
    test_support::require_broker();
    let dir = tempfile::tempdir().unwrap();
    let port = dead_port();
    let name = unique_name("person-cfg");
    let path = write_config(
        dir.path(),
        &format!(
            "AMQP_URI: amqp://guest:hunter2@127.0.0.1:${{DEAD_PORT:{port}}}/\n\
             SERVICE_NAME: {name}\nLOG_FORMAT: json\n\
             LOGGING:\n  version: 1\nFROBNICATE: 3\n"
        ),
    );
    let mut running = Running::start(&["--config", path.to_str().unwrap()], &[], dir.path());
    let file = path.display().to_string();
    for (key, text) in [
        ("LOGGING", "known to nameko, ignored here"),
        ("FROBNICATE", "unknown key"),
    ] {
        let line = running.wait_for(&format!("warning about {key}"), |v| {
            v["level"] == "WARN" && v["key"] == key
        });
        assert_eq!(line["file"], file.as_str(), "{line}");
        assert!(message_is(&line, text), "{line}");
    }
    let line = running.wait_for("a connection warning", |v| {
        v["level"] == "WARN" && message_is(v, "cannot connect to the broker")
    });
    assert_eq!(line["broker"], format!("127.0.0.1:{port}"), "{line}");
    let status = running.stop();
    let output = running.output();
    assert!(status.success(), "{status}\n{output}");
    assert!(
        !output.contains("hunter2"),
        "the password was logged:\n{output}"
    );
}

#[test]
fn the_environment_wins_over_the_file() {
    let uri = test_support::require_broker();
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("person-cfg");
    let _cleanup = Cleanup::new()
        .service(&name)
        .exchange(&format!("{name}.events"));
    let path = write_config(
        dir.path(),
        &format!(
            "AMQP_URI: amqp://guest:guest@127.0.0.1:{}/\nSERVICE_NAME: {name}\nLOG_FORMAT: json\n",
            dead_port()
        ),
    );
    let mut running = Running::start(
        &["--config", path.to_str().unwrap()],
        &[("AMQP_URI", &uri)],
        dir.path(),
    );
    let line = running.wait_for("consuming", |v| message_is(v, "consuming"));
    assert_eq!(line["service"], name.as_str(), "{line}");
    assert_eq!(line["broker"], endpoint(&uri), "{line}");
    let status = running.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn a_flag_wins_over_the_environment() {
    let uri = test_support::require_broker();
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("person-cfg");
    let _cleanup = Cleanup::new()
        .service(&name)
        .exchange(&format!("{name}.events"));
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/", dead_port());
    let path = write_config(dir.path(), &format!("AMQP_URI: {dead}\nLOG_FORMAT: json\n"));
    let mut running = Running::start(
        &[
            "--config",
            path.to_str().unwrap(),
            "--amqp-uri",
            &uri,
            "--service-name",
            &name,
        ],
        &[("AMQP_URI", &dead)],
        dir.path(),
    );
    let line = running.wait_for("consuming", |v| message_is(v, "consuming"));
    assert_eq!(line["broker"], endpoint(&uri), "{line}");
    assert_eq!(line["service"], name.as_str(), "{line}");
    assert!(running.stop().success());
}

/// Each layer over the one below, on settings that show in the logs:
/// the service name, max_workers and the HTTP address.
#[test]
fn flag_over_env_over_file_over_default() {
    let uri = test_support::require_broker();
    let file_name = unique_name("person-file");
    let env_name = unique_name("person-env");
    let flag_name = unique_name("person-flag");
    let _cleanup = Cleanup::new()
        .service(&file_name)
        .service(&env_name)
        .service(&flag_name);
    struct Case<'a> {
        file_keys: &'a str,
        env: Vec<(&'a str, &'a str)>,
        flags: Vec<&'a str>,
        service: &'a str,
        workers: u64,
    }
    let file_keys = format!("SERVICE_NAME: {file_name}\nmax_workers: 3\nHTTP_ADDR: 127.0.0.1:0\n");
    let cases = [
        Case {
            file_keys: "",
            env: vec![("SERVICE_NAME", file_name.as_str())],
            flags: vec![],
            service: &file_name,
            workers: 10,
        },
        Case {
            file_keys: &file_keys,
            env: vec![],
            flags: vec![],
            service: &file_name,
            workers: 3,
        },
        Case {
            file_keys: &file_keys,
            env: vec![("SERVICE_NAME", env_name.as_str()), ("MAX_WORKERS", "4")],
            flags: vec![],
            service: &env_name,
            workers: 4,
        },
        Case {
            file_keys: &file_keys,
            env: vec![("SERVICE_NAME", env_name.as_str()), ("MAX_WORKERS", "4")],
            flags: vec!["--service-name", &flag_name, "--max-workers", "5"],
            service: &flag_name,
            workers: 5,
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(
            dir.path(),
            &format!("AMQP_URI: {uri}\nLOG_FORMAT: json\n{}", case.file_keys),
        );
        let mut args = vec!["--config", path.to_str().unwrap()];
        args.extend(case.flags.iter().copied());
        let mut running = Running::start(&args, &case.env, dir.path());
        let line = running.wait_for("consuming", |v| message_is(v, "consuming"));
        assert_eq!(line["service"], case.service, "{line}");
        assert_eq!(line["max_workers"], case.workers, "{line}");
        if case.file_keys.contains("HTTP_ADDR") {
            let http = running.wait_for("HTTP listening", |v| message_is(v, "HTTP listening"));
            assert!(
                http["addr"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("127.0.0.1:")),
                "{http}"
            );
        }
        assert!(running.stop().success());
    }
}

/// The database settings layer the same way; the "store ready" line shows
/// them.
#[test]
fn the_database_settings_layer_like_the_others() {
    let uri = test_support::require_broker();
    let name = unique_name("person-dbset");
    let _cleanup = Cleanup::new().service(&name);
    let file_keys = "PERSON_DB_POOL_SIZE: 3\nPERSON_DB_STATEMENT_TIMEOUT: 7\n";
    let env = [
        ("PERSON_DB_POOL_SIZE", "4"),
        ("PERSON_DB_STATEMENT_TIMEOUT", "8"),
    ];
    let flags = ["--db-pool-size", "5", "--db-statement-timeout", "9.5"];
    // File keys, environment, flags; the pool size and timeout wanted.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str], u64, f64);
    let cases: [Case; 4] = [
        ("", &[], &[], 16, 5.0),
        (file_keys, &[], &[], 3, 7.0),
        (file_keys, &env, &[], 4, 8.0),
        (file_keys, &env, &flags, 5, 9.5),
    ];
    for (keys, env, flags, pool, timeout) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(
            dir.path(),
            &format!("AMQP_URI: {uri}\nLOG_FORMAT: json\nSERVICE_NAME: {name}\n{keys}"),
        );
        let mut args = vec!["--config", path.to_str().unwrap()];
        args.extend(flags.iter().copied());
        let mut running = Running::start(&args, env, dir.path());
        let line = running.wait_for("store ready", |v| message_is(v, "store ready"));
        assert_eq!(line["pool_size"], pool, "{line}");
        assert_eq!(line["statement_timeout_s"], timeout, "{line}");
        // Stopped once it runs (its signal handler is installed by then).
        running.wait_for("consuming", |v| message_is(v, "consuming"));
        assert!(running.stop().success());
    }
}

/// rpc_exchange has no flag: it comes from the file, and a caller must use
/// the same exchange to reach the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_rpc_exchange_is_used() {
    let uri = test_support::require_broker();
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("person-cfg");
    let exchange = unique_name("rpc-x");
    let _cleanup = Cleanup::new()
        .service(&name)
        .exchange(&exchange)
        .exchange(&format!("{name}.events"));
    let path = write_config(
        dir.path(),
        &format!(
            "AMQP_URI: {uri}\nrpc_exchange: {exchange}\nSERVICE_NAME: {name}\nLOG_FORMAT: json\n\
             HEARTBEAT: 20\nserializer: json\nACCEPT: [json]\n"
        ),
    );
    let mut running = Running::start(&["--config", path.to_str().unwrap()], &[], dir.path());
    running.wait_for("consuming", |v| message_is(v, "consuming"));
    let mut config = Config::new(&uri).unwrap();
    config.rpc_exchange = exchange.clone();
    config.rpc_timeout = Duration::from_secs(10);
    let proxy = RpcProxy::connect(config).await.unwrap();
    let people = proxy.call(&name, "list", Args::new()).await.unwrap();
    assert_eq!(people, rpc_core::json!([]));
    proxy.close().await;
    assert!(running.stop().success());
}

/// Runs to completion (a bad file stops it before it connects).
fn run_to_exit(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_person-service"))
        .args(args)
        .env_clear()
        .current_dir(dir)
        .output()
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_file_stops_start_up_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needles) in [
        (
            "serializer: pickle\n",
            &["serializer", "\"pickle\" is not supported"][..],
        ),
        ("ACCEPT: [msgpack]\n", &["ACCEPT", "json"][..]),
        (
            "max_workers: lots\n",
            &["max_workers", "found a string"][..],
        ),
        ("HTTP_ADDR: nowhere\n", &["HTTP_ADDR", "not an address"][..]),
        ("AMQP_URI: [unclosed\n", &["invalid YAML", "line"][..]),
        (
            "AMQP_URI: amqp://u:hunter2@h:port/\n",
            &["AMQP_URI", "invalid port"][..],
        ),
    ] {
        let path = write_config(dir.path(), text);
        let (code, stderr) = run_to_exit(&["--config", path.to_str().unwrap()], dir.path());
        assert_eq!(code, Some(2), "{text}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{text}: {stderr}"
        );
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{text}: wanted {needle:?} in {stderr}"
            );
        }
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
    let missing = dir.path().join("missing.yaml");
    let (code, stderr) = run_to_exit(&["--config", missing.to_str().unwrap()], dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read config file") && stderr.contains("missing.yaml"),
        "{stderr}"
    );
}

#[test]
fn the_example_configs_load_without_warnings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let file = rpc_core::config_file::FileConfig::load_with_env(
        root.join("person-service.yaml"),
        person_service::settings::FILE_KEYS,
        &|_| None,
    )
    .unwrap();
    assert_eq!(file.warnings(), &[]);
    assert_eq!(
        file.get_text("SERVICE_NAME").unwrap().as_deref(),
        Some("person")
    );
}
