//! `rpc shell`: an interactive shell in the spirit of `nameko shell`, which
//! also runs scripts piped to it.
//!
//! * [`command`]: what one line means (shell commands, calls, dispatches);
//!   the call syntax itself is [`crate::syntax`].
//! * [`session`]: the session's state and what each command prints where,
//!   against a [`session::Backend`] so it is testable without a broker.
//! * [`broker`]: the backend on a real broker.
//! * [`script`]: stdin not a terminal: run each line, results on stdout,
//!   errors on stderr, an exit status for the whole script.
//! * [`interactive`]: a terminal: line editing and history (rustyline).

pub mod broker;
pub mod command;
pub mod interactive;
pub mod script;
pub mod session;

use crate::args;
use crate::call::{CliError, EXIT_USAGE};
use crate::cli::{ConnectionOptions, ShellCommand};
use crate::settings;
use broker::Broker;
use session::Session;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Runs `rpc shell` and returns the exit status.
pub async fn run_shell(options: &ConnectionOptions, cmd: &ShellCommand, compact: bool) -> u8 {
    let entries: Vec<&String> = options.context.iter().chain(&cmd.context).collect();
    let context = match args::parse_context(&entries) {
        Ok(context) => context,
        Err(e) => {
            eprintln!("{}", CliError::from(e).describe("", None));
            return EXIT_USAGE;
        }
    };
    let config = match settings::resolve(options) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}", e.describe("", None));
            return e.exit_code();
        }
    };
    let interactive = std::io::stdin().is_terminal();
    let broker = match Broker::connect(config.clone()).await {
        Ok(broker) => broker,
        Err(e) => {
            eprintln!(
                "{}",
                e.describe(&config.rpc_exchange, Some(&config.amqp_uri.endpoint()))
            );
            return e.exit_code();
        }
    };
    let session = Session::new(broker, config.rpc_timeout, context, compact, interactive);
    if interactive {
        let banner = format!(
            "rpc shell on {} (exchange {}). `help` shows the syntax; exit, quit or Ctrl-D leaves.",
            config.amqp_uri.endpoint(),
            config.rpc_exchange
        );
        interactive::run(session, history_file(cmd), &banner).await
    } else {
        let mut session = session;
        let lines = script::stdin_lines();
        let status = script::run(
            &mut session,
            lines,
            cmd.stop_on_error,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
            rpc_core::shutdown::signal(),
        )
        .await;
        session.close().await;
        status
    }
}

/// `--history FILE`, else `~/.rpc_history`; none with `--no-history` or
/// without a home directory.
pub fn history_file(cmd: &ShellCommand) -> Option<PathBuf> {
    if cmd.no_history {
        return None;
    }
    if let Some(path) = &cmd.history {
        return Some(path.clone());
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Some(PathBuf::from(home).join(".rpc_history")),
        None => {
            tracing::debug!("HOME is not set: no history file");
            None
        }
    }
}
