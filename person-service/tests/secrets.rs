//! The broker password never shows: not in `--help` (even when AMQP_URI is
//! set in the environment), not in logs while the broker is unreachable,
//! not in errors when the broker refuses the credentials. Nor does the
//! PostgreSQL password of `--db`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "Tr0ub4dor-s3cret";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_person-service"))
}

#[test]
fn help_hides_the_uri_from_the_environment() {
    let out = bin()
        .arg("--help")
        .env(
            "AMQP_URI",
            format!("amqp://app:{SECRET}@broker.internal:5672/%2f"),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("--amqp-uri"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(
        !text.contains("guest:guest"),
        "the default's password is not printed either: {text}"
    );
}

/// Runs person-service until `until` appears in its output (or 20 s), then
/// stops it; returns everything it printed.
fn run_until(uri: &str, until: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args([
            "--service-name",
            &test_support::unique_name("person-secret"),
            "--db",
        ])
        .arg(dir.path().join("p.db"))
        .env("AMQP_URI", uri)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text.contains(until) && Instant::now() < deadline {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains(until),
        "never printed {until:?}:\n{text}\n{err}"
    );
    text + &err
}

#[test]
fn an_unreachable_broker_is_named_without_the_password() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let out = run_until(
        &format!("amqp://app:{SECRET}@127.0.0.1:{port}/%2f"),
        "retrying",
    );
    assert!(
        out.contains(&format!("127.0.0.1:{port}")),
        "names host and port:\n{out}"
    );
    assert!(!out.contains(SECRET), "{out}");
}

#[test]
fn refused_credentials_are_reported_without_the_password() {
    let uri = test_support::require_broker();
    let hostport = uri.split_once('@').map_or("127.0.0.1:5672/%2f", |(_, h)| h);
    let out = run_until(&format!("amqp://guest:{SECRET}@{hostport}"), "retrying");
    assert!(
        out.contains("ACCESS_REFUSED") || out.to_lowercase().contains("auth"),
        "says why:\n{out}"
    );
    assert!(!out.contains(SECRET), "{out}");
}

/// The database password never shows either: not in `--help` with
/// PERSON_DB set, not in the start-up error when PostgreSQL cannot be
/// reached, not in the log line naming the store.
#[test]
fn a_postgres_password_never_shows() {
    let url = format!("postgres://app:{SECRET}@127.0.0.1:1/person");
    let out = bin().arg("--help").env("PERSON_DB", &url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--db"), "{text}");
    assert!(!text.contains(SECRET), "{text}");

    // Nothing listens on port 1: the store cannot open, and says so.
    let out = bin()
        .args([
            "--service-name",
            &test_support::unique_name("person-secret"),
        ])
        .args(["--db", &url, "--db-statement-timeout", "2"])
        .env("AMQP_URI", "amqp://127.0.0.1:1/%2f")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("postgres://app:***@127.0.0.1:1/person"),
        "{all}"
    );
    assert!(!all.contains(SECRET), "{all}");
}

#[test]
fn a_broker_list_hides_every_password_in_help_and_logs() {
    let list =
        format!("amqp://app:{SECRET}-one@127.0.0.1:1/%2f;amqp://app:{SECRET}-two@127.0.0.1:2/%2f");
    let out = bin().arg("--help").env("AMQP_URI", &list).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && help.contains("--amqp-uri"),
        "{help}"
    );
    assert!(!help.contains(SECRET), "{help}");
    // The old failure mode: the list read as one URI whose vhost held the
    // second password, printed on every retry.
    let out = run_until(&list, "retrying");
    assert!(
        out.contains("127.0.0.1:1") && out.contains("127.0.0.1:2"),
        "names both brokers:\n{out}"
    );
    assert!(!out.contains(SECRET), "{out}");
}

#[test]
fn a_bad_element_stops_the_start_with_its_password_masked() {
    // A raw `;` inside a password splits the list there, as kombu does.
    let out = bin()
        .args(["--db", "/nonexistent/never-opened.db"])
        .env("AMQP_URI", format!("amqp://app:{SECRET};x@127.0.0.1:1/%2f"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("%3B"), "says how to write a `;`:\n{text}");
    assert!(
        !text.contains("Tr0ub4dor") && !text.contains("x@127"),
        "{text}"
    );
}
