//! `test-service --config FILE`, run as the built binary with a controlled
//! environment: each setting comes from the first of flag, environment,
//! file, default; keys it does not use are warned about; a bad file exits
//! with status 2 and a message naming file and key.

use rpc_core::{Args, CallError, Config, RpcProxy};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};
use test_support::unique_name;

mod common;

const WAIT: Duration = Duration::from_secs(30);

fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `test-service ARGS` to the end, with only `env` in its environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_test-service"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_files_broker_unless_the_environment_says_otherwise() {
    let uri = test_support::require_broker();
    let dir = tempfile_dir();
    let port = dead_port();
    let target = unique_name("absent");
    let path = write_config(
        &dir,
        &format!(
            "AMQP_URI: amqp://guest:hunter2@127.0.0.1:{port}/\nTARGET_SERVICE: {target}\nWAIT: 0\n"
        ),
    );
    let config = path.to_str().unwrap();

    // File: the dead broker, named in the error.
    let (code, stderr) = run(&["--once", "--config", config], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    // Environment over file: the real broker; the file's target is not up.
    let (code, stderr) = run(&["--once", "--config", config], &[("AMQP_URI", &uri)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("`{target}` did not come up")),
        "{stderr}"
    );

    // Flag over environment over file, for the target.
    let env_target = unique_name("absent-env");
    let flag_target = unique_name("absent-flag");
    let env = [("AMQP_URI", uri.as_str()), ("TARGET_SERVICE", &env_target)];
    let (code, stderr) = run(&["--once", "--config", config], &env);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("`{env_target}`")), "{stderr}");
    let (code, stderr) = run(
        &["--once", "--config", config, "--target", &flag_target],
        &env,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("`{flag_target}`")), "{stderr}");

    // Flag over file, for the broker.
    let (code, stderr) = run(&["--once", "--config", config, "--amqp-uri", &uri], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("`{target}` did not come up")),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ignored_and_unknown_keys_are_warned() {
    let dir = tempfile_dir();
    let path = write_config(
        &dir,
        &format!(
            "AMQP_URI: amqp://guest:guest@127.0.0.1:{}/\nWAIT: 0\n\
             WEB_SERVER_ADDRESS: 0.0.0.0:8000\nTARGET: person\n",
            dead_port()
        ),
    );
    let config = path.to_str().unwrap();
    let (code, stderr) = run(&["--once", "--config", config], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    let warning = |key: &str| {
        stderr
            .lines()
            .find(|l| l.contains(" WARN ") && l.contains(&format!("key={key}")))
            .unwrap_or_else(|| panic!("no warning about {key}:\n{stderr}"))
            .to_owned()
    };
    let line = warning("WEB_SERVER_ADDRESS");
    assert!(line.contains("known to nameko, ignored here"), "{line}");
    assert!(line.contains(&format!("file={config}")), "{line}");
    let line = warning("TARGET");
    assert!(line.contains("unknown key"), "{line}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bad_file_exits_2_naming_file_and_key() {
    let dir = tempfile_dir();
    for (text, needles) in [
        (
            "serializer: yaml\n",
            &["serializer", "\"yaml\" is not supported"][..],
        ),
        ("ACCEPT: [pickle]\n", &["ACCEPT", "json"][..]),
        ("INTERVAL: 0\n", &["INTERVAL", "more than zero"][..]),
        ("RPC_TIMEOUT: [1]\n", &["RPC_TIMEOUT", "a list"][..]),
        ("TARGET_SERVICE: {a: 1\n", &["invalid YAML"][..]),
    ] {
        let path = write_config(&dir, text);
        let (code, stderr) = run(&["--once", "--config", path.to_str().unwrap()], &[]);
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
    }
    let (code, stderr) = run(&["--config", "/nonexistent/test-service.yaml"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/test-service.yaml"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Service mode: its name, interval, timeout, max_workers and RPC exchange
/// from the file (the environment overriding the interval), reachable on
/// that exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_mode_takes_its_settings_from_the_file() {
    let uri = test_support::require_broker();
    let dir = tempfile_dir();
    let name = unique_name("tester-cfg");
    let exchange = unique_name("rpc-x");
    let target = unique_name("absent");
    // Service mode subscribes to the target's events: its durable queues
    // and the target's exchange go too.
    let _cleanup = common::service_cleanup(&name, &target)
        .exchange(&exchange)
        .exchange(&format!("{target}.events"));
    let path = write_config(
        &dir,
        &format!(
            "AMQP_URI: {uri}\nrpc_exchange: {exchange}\nmax_workers: 2\n\
             SERVICE_NAME: {name}\nTARGET_SERVICE: {target}\nINTERVAL: 30\nRPC_TIMEOUT: 3\n"
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_test-service"))
        .args(["--config", path.to_str().unwrap()])
        .env_clear()
        .env("INTERVAL", "20")
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let lines = read_lines(&mut child);
    let mut seen = Vec::new();
    let starting = wait_for(&lines, &mut seen, "starting", |l| l.contains(" starting "));
    for field in [
        format!("service={name}"),
        "interval_s=20".to_owned(),
        "timeout_s=3".to_owned(),
    ] {
        assert!(starting.contains(&field), "wanted {field} in {starting}");
    }
    let consuming = wait_for(&lines, &mut seen, "consuming", |l| {
        l.contains(" consuming ")
    });
    assert!(consuming.contains("max_workers=2"), "{consuming}");

    let mut config = Config::new(&uri).unwrap();
    config.rpc_exchange = exchange.clone();
    config.rpc_timeout = Duration::from_secs(10);
    let proxy = RpcProxy::connect(config).await.unwrap();
    let stats = match proxy.call(&name, "stats", Args::new()).await {
        Ok(stats) => stats,
        Err(e @ CallError::UnknownService(_)) => panic!("not on the file's exchange: {e}"),
        Err(e) => panic!("stats: {e}"),
    };
    assert!(stats.is_object(), "{stats}");
    proxy.close().await;

    let status = terminate(&mut child);
    assert!(status.success(), "{status}\n{}", seen.join("\n"));
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique_name("test-service-config"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read_lines(child: &mut Child) -> Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn wait_for(
    lines: &Receiver<String>,
    seen: &mut Vec<String>,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if want(&line) {
                    return line;
                }
            }
            Err(_) => panic!("no {what} line within {WAIT:?}:\n{}", seen.join("\n")),
        }
    }
}

fn terminate(child: &mut Child) -> ExitStatus {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no exit within {WAIT:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_example_config_loads_without_warnings() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/test-service.yaml");
    let file = rpc_core::config_file::FileConfig::load_with_env(
        &path,
        test_service::cli::FILE_KEYS,
        &|_| None,
    )
    .unwrap();
    assert_eq!(file.warnings(), &[]);
    assert_eq!(
        file.get_text("TARGET_SERVICE").unwrap().as_deref(),
        Some("person")
    );
    let cli =
        test_service::cli::Cli::load_from(["test-service", "--config", path.to_str().unwrap()])
            .unwrap();
    assert_eq!(cli.interval, Duration::from_secs(5));
}
