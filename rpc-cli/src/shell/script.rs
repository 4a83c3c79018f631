//! `rpc shell` with stdin not a terminal: a script of shell lines.
//!
//! Each line runs in turn (a statement left open by a bracket takes the
//! following lines too). stdout gets one JSON document per result and
//! nothing else; errors go to stderr as `line N: …`. The exit status is 0
//! when every line succeeded, else the status of the first line that failed
//! (1 a method raised, 2 no result, 64 a line is wrong), or 130 when a
//! signal stops the script. Background calls still pending at the end of the
//! input (or at `exit`) are collected before the shell ends, so no result
//! is lost.

use super::command::parse;
use super::session::{Backend, Output, Session};
use crate::call::{EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE};
use std::future::Future;
use std::io::{BufRead, Write};
use tokio::sync::mpsc;

/// Lines of stdin, read on a thread of their own.
///
/// Not tokio's stdin: its blocking read cannot be cancelled, so a script
/// that ends early (`exit`, `--stop-on-error`, a signal) while its writer
/// keeps the pipe open would hang the runtime's shutdown. A plain thread
/// does not hold the process up.
pub fn stdin_lines() -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(16);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut stdin = stdin.lock();
            loop {
                let mut line = Vec::new();
                match stdin.read_until(b'\n', &mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        if tx.blocking_send(Ok(line)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        // The receiver then reports the end of input at once; say why.
        tracing::error!(error = %e, "cannot start the thread reading stdin");
    }
    rx
}

/// Keeps the first failure.
fn first_failure(status: &mut u8, new: u8) {
    if *status == EXIT_OK {
        *status = new;
    }
}

/// Runs the script read from `lines`; see the module docs. `interrupt`
/// resolving (SIGINT, SIGTERM) stops it with 130.
pub async fn run<B: Backend>(
    session: &mut Session<B>,
    mut lines: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    stop_on_error: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
    interrupt: impl Future<Output = ()>,
) -> u8 {
    tokio::pin!(interrupt);
    let mut status = EXIT_OK;
    let mut statement = String::new();
    let mut first_line = 0;
    let mut line_no = 0;
    let interrupted = |err: &mut dyn Write| {
        let _ = writeln!(err, "interrupted");
        EXIT_INTERRUPTED
    };
    loop {
        let next = tokio::select! {
            next = lines.recv() => next,
            () = &mut interrupt => return interrupted(err),
        };
        let Some(next) = next else { break };
        line_no += 1;
        let bytes = match next {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = writeln!(err, "error: cannot read stdin: {e}");
                first_failure(&mut status, EXIT_FAILURE);
                break;
            }
        };
        let Ok(mut text) = String::from_utf8(bytes) else {
            let _ = writeln!(err, "line {line_no}: error: the line is not UTF-8 text");
            first_failure(&mut status, EXIT_USAGE);
            statement.clear();
            if stop_on_error {
                break;
            }
            continue;
        };
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        if statement.is_empty() {
            first_line = line_no;
        } else {
            statement.push('\n');
        }
        statement.push_str(&text);
        let command = match parse(&statement) {
            Err(e) if e.incomplete => continue,
            Err(mut e) => {
                let text = std::mem::take(&mut statement);
                // Name the script's line, not the statement's.
                let place = format!("line {}", first_line + e.line - 1);
                e.line = 1;
                let mut o = Output {
                    out: &mut *out,
                    err: &mut *err,
                    place: Some(place),
                };
                let step = session.syntax_error(&mut o, &e, &text);
                first_failure(&mut status, step.status);
                if stop_on_error {
                    break;
                }
                continue;
            }
            Ok(command) => command,
        };
        statement.clear();
        let mut o = Output {
            out: &mut *out,
            err: &mut *err,
            place: Some(format!("line {first_line}")),
        };
        let step = tokio::select! {
            step = session.run(command, &mut o) => step,
            () = &mut interrupt => return interrupted(err),
        };
        first_failure(&mut status, step.status);
        if step.exit || (stop_on_error && status != EXIT_OK) {
            break;
        }
    }
    if !statement.is_empty() {
        // The input ended inside a bracket.
        if let Err(e) = parse(&statement) {
            let mut o = Output {
                out: &mut *out,
                err: &mut *err,
                place: Some(format!("line {first_line}")),
            };
            let step = session.syntax_error(&mut o, &e, &statement);
            first_failure(&mut status, step.status);
        }
    }
    if session.pending() > 0 {
        let mut o = Output {
            out: &mut *out,
            err: &mut *err,
            place: Some("end of input".to_owned()),
        };
        let step = tokio::select! {
            step = session.wait_all(&mut o) => step,
            () = &mut interrupt => return interrupted(err),
        };
        first_failure(&mut status, step.status);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::EXIT_REMOTE;
    use crate::shell::session::tests::session;

    struct Ran {
        status: u8,
        out: String,
        err: String,
    }

    async fn script(lines: &[&[u8]], stop_on_error: bool) -> Ran {
        let (tx, rx) = mpsc::channel(lines.len().max(1));
        for line in lines {
            tx.send(Ok(line.to_vec())).await.unwrap();
        }
        drop(tx);
        let mut s = session(false);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let status = run(
            &mut s,
            rx,
            stop_on_error,
            &mut out,
            &mut err,
            std::future::pending(),
        )
        .await;
        Ran {
            status,
            out: String::from_utf8_lossy(&out).into_owned(),
            err: String::from_utf8_lossy(&err).into_owned(),
        }
    }

    #[tokio::test]
    async fn every_line_runs_and_the_first_failure_sets_the_status() {
        let r = script(
            &[
                b"# a script\n",
                b"svc.echo(1)\n",
                b"svc.fail(1)\r\n",
                b"svc.echo(2 3)\n",
                b"\n",
                b"svc.echo('last')",
            ],
            false,
        )
        .await;
        assert_eq!(r.status, EXIT_REMOTE);
        assert_eq!(
            r.out,
            "{\"args\":[1],\"kwargs\":{}}\n{\"args\":[\"last\"],\"kwargs\":{}}\n"
        );
        assert!(
            r.err.starts_with("line 3: RemoteError PersonNotFound"),
            "{}",
            r.err
        );
        assert!(
            r.err
                .contains("line 4: error: syntax error at column 12: expected `,` or `)`"),
            "{}",
            r.err
        );
    }

    #[tokio::test]
    async fn stop_on_error_stops() {
        let r = script(&[b"svc.echo(1 2)\n", b"svc.echo(1)\n"], true).await;
        assert_eq!(r.status, EXIT_USAGE);
        assert_eq!(r.out, "");
    }

    #[tokio::test]
    async fn exit_ends_the_script_and_success_is_0() {
        let r = script(&[b"svc.echo(1)\n", b"exit\n", b"svc.fail(1)\n"], false).await;
        assert_eq!((r.status, r.err.as_str()), (0, ""));
        assert_eq!(r.out.lines().count(), 1);
    }

    #[tokio::test]
    async fn statements_span_lines_and_errors_name_the_script_line() {
        let r = script(
            &[
                b"svc.echo(\n",
                b"  'Ada',   # first name\n",
                b"  age=36,\n",
                b")\n",
                b"svc.echo(\n",
                b"  1 2)\n",
            ],
            false,
        )
        .await;
        assert_eq!(r.out, "{\"args\":[\"Ada\"],\"kwargs\":{\"age\":36}}\n");
        assert_eq!(r.status, EXIT_USAGE);
        assert!(
            r.err
                .starts_with("line 6: error: syntax error at column 5: expected `,` or `)`"),
            "{}",
            r.err
        );
        assert!(r.err.contains("\n    1 2)\n      ^"), "{}", r.err);
    }

    #[tokio::test]
    async fn input_ending_inside_a_bracket_is_an_error() {
        let r = script(&[b"svc.echo(1,\n"], false).await;
        assert_eq!(r.status, EXIT_USAGE);
        assert!(
            r.err.starts_with("line 1: error: syntax error"),
            "{}",
            r.err
        );
        assert!(r.err.contains("`(` at column 9 is not closed"), "{}", r.err);
    }

    #[tokio::test]
    async fn non_utf8_lines_are_reported_and_skipped() {
        let r = script(&[b"svc.echo(\xff)\n", b"svc.echo(1)\n"], false).await;
        assert_eq!(r.status, EXIT_USAGE);
        assert!(
            r.err.starts_with("line 1: error: the line is not UTF-8"),
            "{}",
            r.err
        );
        assert_eq!(r.out, "{\"args\":[1],\"kwargs\":{}}\n");
    }

    #[tokio::test]
    async fn pending_background_calls_are_collected_at_the_end() {
        let r = script(
            &[b"async svc.echo(1)\n", b"svc.fail.call_async(1)\n"],
            false,
        )
        .await;
        assert_eq!(r.out, "{\"args\":[1],\"kwargs\":{}}\n");
        assert!(
            r.err
                .starts_with("end of input: [2] svc.fail: RemoteError PersonNotFound"),
            "{}",
            r.err
        );
        assert_eq!(r.status, EXIT_REMOTE);
    }

    #[tokio::test]
    async fn an_interrupt_stops_with_130() {
        let (_tx, rx) = mpsc::channel(1);
        let mut s = session(false);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let status = run(&mut s, rx, false, &mut out, &mut err, async {}).await;
        assert_eq!(status, EXIT_INTERRUPTED);
        assert_eq!(String::from_utf8_lossy(&err), "interrupted\n");
    }
}
