//! `rpc shell` at a terminal: line editing and history with rustyline,
//! Python's `>>>` / `...` prompts, results as they come.
//!
//! rustyline reads in raw mode, where Ctrl-C is a key: it clears the line
//! being typed. While a call runs the terminal is back in cooked mode and
//! Ctrl-C is SIGINT, which abandons the call being waited for and returns
//! to the prompt. Only SIGINT is caught: SIGTERM and SIGHUP keep their
//! default action, so the shell never outlives its terminal.
//!
//! Each statement is added to the history file as soon as it is entered
//! (rustyline appends under a file lock, mode 0600), so a killed shell
//! loses none, and several shells can share the file.

use super::broker::Broker;
use super::command::parse;
use super::session::{Output, Session, Step};
use crate::call::{EXIT_FAILURE, EXIT_OK};
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;
use std::path::{Path, PathBuf};

/// Most statements kept in the history file.
const HISTORY_SIZE: usize = 1000;

/// Resolves at SIGINT; never when SIGINT cannot be listened for (then it
/// keeps its default action and ends the shell, which is still safe).
async fn sigint() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn editor(history: Option<&Path>) -> Result<DefaultEditor, ReadlineError> {
    let config = rustyline::Config::builder()
        .auto_add_history(false)
        .history_ignore_space(true)
        .max_history_size(HISTORY_SIZE)?
        .build();
    let mut editor = DefaultEditor::with_config(config)?;
    if let Some(path) = history {
        match editor.load_history(path) {
            Ok(()) => {}
            Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the history file")
            }
        }
    }
    Ok(editor)
}

/// Runs the interactive shell until `exit`, `quit` or Ctrl-D; returns the
/// exit status (0, or 2 when the terminal cannot be used).
pub async fn run(mut session: Session<Broker>, history: Option<PathBuf>, banner: &str) -> u8 {
    let mut editor = match editor(history.as_deref()) {
        Ok(editor) => Some(editor),
        Err(e) => {
            eprintln!("error: cannot set up line editing: {e}");
            session.close().await;
            return EXIT_FAILURE;
        }
    };
    println!("{banner}");
    let mut status = EXIT_OK;
    let mut history_failed = false;
    let mut statement = String::new();
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        let prompt = if statement.is_empty() { ">>> " } else { "... " };
        let Some(mut ed) = editor.take() else { break };
        // readline blocks; the editor moves to a blocking thread and back.
        let read = tokio::task::spawn_blocking(move || {
            let line = ed.readline(prompt);
            (ed, line)
        })
        .await;
        let line = match read {
            Ok((ed, line)) => {
                editor = Some(ed);
                line
            }
            Err(e) => {
                eprintln!("error: reading the terminal failed: {e}");
                status = EXIT_FAILURE;
                break;
            }
        };
        let line = match line {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                statement.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("error: reading the terminal failed: {e}");
                status = EXIT_FAILURE;
                break;
            }
        };
        if !statement.is_empty() {
            statement.push('\n');
        }
        statement.push_str(&line);
        let parsed = parse(&statement);
        if matches!(&parsed, Err(e) if e.incomplete) {
            continue;
        }
        let text = std::mem::take(&mut statement);
        if let (Some(ed), Some(path)) = (editor.as_mut(), history.as_deref()) {
            // Mistyped lines too: they are the ones worth recalling.
            let saved = ed
                .add_history_entry(text.as_str())
                .and_then(|_| ed.append_history(path));
            if let Err(e) = saved {
                if !history_failed {
                    tracing::warn!(file = %path.display(), error = %e, "cannot write the history file");
                    history_failed = true;
                }
            }
        } else if let Some(ed) = editor.as_mut() {
            let _ = ed.add_history_entry(text.as_str());
        }
        let mut o = Output {
            out: &mut stdout,
            err: &mut stderr,
            place: None,
        };
        let step = match parsed {
            Err(e) => session.syntax_error(&mut o, &e, &text),
            Ok(command) => tokio::select! {
                step = session.run(command, &mut o) => step,
                () = sigint() => {
                    eprintln!("interrupted: the call is abandoned (a late reply is dropped)");
                    Step::OK
                }
            },
        };
        if step.exit {
            break;
        }
    }
    if session.pending() > 0 {
        println!(
            "collecting {} background call(s); Ctrl-C abandons them",
            session.pending()
        );
        let mut o = Output {
            out: &mut stdout,
            err: &mut stderr,
            place: None,
        };
        tokio::select! {
            _ = session.wait_all(&mut o) => {}
            () = sigint() => eprintln!("interrupted"),
        }
    }
    session.close().await;
    status
}
