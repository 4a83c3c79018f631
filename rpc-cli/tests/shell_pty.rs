//! `rpc shell` at a terminal: the binary runs on a pseudo-terminal (rexpect),
//! as a person would use it. Checks the prompt, a call's result, a statement
//! over two lines, Ctrl-C abandoning a slow call, `exit`, and the history
//! file written in $HOME with mode 0600.

use rexpect::process::WaitStatus;
use rexpect::session::{spawn_with_options, Options, PtySession};
use rpc_core::{Config, Context, RpcError, Service, Signature};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;
use test_support::Cleanup;
use test_support::WithinExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_session_prints_results_and_keeps_history() {
    let uri = test_support::require_broker();
    let name = test_support::unique_name("rpc_pty");
    let _cleanup = Cleanup::new().service(&name);
    // Tells the terminal thread that the slow call is running, so Ctrl-C
    // reaches the shell while it waits for the reply (not while rustyline
    // still has the terminal in raw mode, where Ctrl-C is a key).
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let mut handle = Service::builder(&name)
        .method(
            "greet",
            Signature::new().param("name").optional("greeting", "Hello"),
            |_ctx: Context, (name, greeting): (String, String)| async move {
                Ok::<_, RpcError>(format!("{greeting}, {name}"))
            },
        )
        .method(
            "slow",
            Signature::new().param("seconds"),
            move |_ctx: Context, (seconds,): (f64,)| {
                let _ = started_tx.send(());
                async move {
                    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                    Ok::<_, RpcError>(seconds)
                }
            },
        )
        .build()
        .spawn(Config {
            // The call abandoned with Ctrl-C need not hold the stop up.
            shutdown_timeout: Duration::from_secs(1),
            ..Config::new(&uri).expect("AMQP_URI parses")
        });
    handle
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .expect("the service starts");

    let home = std::env::temp_dir().join(test_support::unique_name("rpc-pty-home"));
    std::fs::create_dir_all(&home).expect("a temp HOME");
    let history = home.join(".rpc_history");

    // rexpect is blocking: drive it on a thread of its own so the service
    // keeps running on the runtime.
    let (svc, home_dir) = (name.clone(), home.clone());
    let transcript = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rpc"));
        command
            .arg("shell")
            .env("AMQP_URI", &uri)
            .env("HOME", &home_dir)
            .env("TERM", "xterm")
            .env_remove("RUST_LOG")
            .env_remove("RPC_TIMEOUT");
        let options = Options::new()
            .timeout_ms(Some(20_000))
            .strip_ansi_escape_codes(true);
        let mut p = spawn_with_options(command, options).map_err(|e| e.to_string())?;
        let mut seen = String::new();
        let mut expect = |p: &mut PtySession, needle: &str| match p.exp_string(needle) {
            Ok(before) => {
                seen.push_str(&before);
                seen.push_str(needle);
                Ok(seen.clone())
            }
            Err(e) => Err(format!(
                "waiting for {needle:?}: {e}\n--- seen so far:\n{seen}"
            )),
        };
        expect(&mut p, "`help` shows the syntax")?;
        expect(&mut p, ">>> ")?;
        p.send_line(&format!("{svc}.greet('Ada', greeting='Hi')"))
            .map_err(|e| e.to_string())?;
        expect(&mut p, "\"Hi, Ada\"")?;
        expect(&mut p, ">>> ")?;
        // An open bracket asks for more with Python's continuation prompt.
        p.send_line(&format!("n.rpc.{svc}.greet("))
            .map_err(|e| e.to_string())?;
        expect(&mut p, "... ")?;
        p.send_line("'Bob')").map_err(|e| e.to_string())?;
        expect(&mut p, "\"Hello, Bob\"")?;
        expect(&mut p, ">>> ")?;
        // A mistake is shown with a caret, and the shell goes on.
        p.send_line(&format!("{svc}.greet(Ada)"))
            .map_err(|e| e.to_string())?;
        expect(&mut p, "strings need quotes")?;
        expect(&mut p, ">>> ")?;
        // Ctrl-C while waiting abandons the call, not the shell.
        p.send_line(&format!("{svc}.slow(10)"))
            .map_err(|e| e.to_string())?;
        started_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|e| format!("the slow call never started: {e}"))?;
        std::thread::sleep(Duration::from_millis(100));
        p.send_control('c').map_err(|e| e.to_string())?;
        expect(&mut p, "interrupted")?;
        let seen = expect(&mut p, ">>> ")?;
        p.send_line("exit").map_err(|e| e.to_string())?;
        p.exp_eof()
            .map_err(|e| format!("waiting for the end: {e}\n{seen}"))?;
        match p.process().wait() {
            Ok(WaitStatus::Exited(_, 0)) => Ok(seen),
            other => Err(format!("rpc shell ended with {other:?}\n{seen}")),
        }
    })
    .await
    .expect("the terminal thread finishes");
    let transcript = transcript.unwrap_or_else(|e| panic!("{e}"));
    // Shown by the test harness when an assertion below fails.
    eprintln!("--- transcript\n{transcript}");
    assert!(
        transcript.contains("^"),
        "a caret under the column: {transcript}"
    );

    let text = std::fs::read_to_string(&history).expect("the history file is written");
    let lines: Vec<&str> = text.lines().collect();
    for entry in [
        format!("{name}.greet('Ada', greeting='Hi')"),
        format!("{name}.greet(Ada)"),
        format!("{name}.slow(10)"),
        "exit".to_owned(),
    ] {
        assert!(lines.contains(&entry.as_str()), "{entry:?} in {text}");
    }
    let mode = std::fs::metadata(&history)
        .expect("history metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "calls may carry personal data");
    let _ = std::fs::remove_dir_all(&home);
    handle
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .expect("the service stops");
}
