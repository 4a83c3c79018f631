//! `rpc`: call any method of any nameko-compatible service, Python or Rust,
//! from a terminal or a script, and get its result as JSON.
//!
//! ```text
//! $ rpc call person.create Ada Lovelace 36 member=true
//! 17
//! $ rpc call person.get 17
//! {
//!   "id": 17,
//!   ...
//! $ rpc shell
//! >>> person.get(17)
//! {
//!   "id": 17,
//!   ...
//! ```
//!
//! # Modules
//! * [`cli`]: options and subcommands (clap).
//! * [`args`]: words → `rpc_core::Args`, `SERVICE.METHOD` and context
//!   data; independent of clap so an interactive shell can reuse it.
//! * [`call`]: connecting, calling, printing, and exit statuses.
//! * [`settings`]: connection settings from flags, the environment and a
//!   nameko YAML `--config` file.
//! * [`syntax`]: the shell's Python-call-like language.
//! * [`shell`]: `rpc shell`, interactive or reading a script.

pub mod args;
pub mod call;
pub mod cli;
pub mod settings;
pub mod shell;
pub mod syntax;

use cli::{Cli, Command};

/// Runs the parsed command line and returns the exit status.
pub async fn run(cli: Cli) -> u8 {
    match &cli.command {
        Command::Call(cmd) => call::run_call(&cli.connection, cmd, cli.output.compact).await,
        Command::Shell(cmd) => shell::run_shell(&cli.connection, cmd, cli.output.compact).await,
    }
}
