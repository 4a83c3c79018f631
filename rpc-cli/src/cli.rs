//! The command line: options shared by every subcommand, and the
//! subcommands.
//!
//! Connection and output options are global, so they can be given before or
//! after the subcommand, and `call` and `shell` share them. The broker URI
//! is kept as text until clap is done: clap quotes rejected values in its
//! errors, and this one carries a password. Settings a `--config` file may
//! give have no clap default (see [`crate::settings`]).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

const TOP_EXAMPLES: &str = "\
Examples:
  rpc call person.get 42
  rpc call person.create Ada Lovelace 36 member=true
  rpc call greeting_service.hello name=Matt         # a Python nameko service
  rpc --context user_id=7 --context language=en call person.list limit=10
  rpc --config config/person-service.yaml call person.get 42
  rpc shell                                         # interactive, like nameko shell
  echo 'person.get(42)' | rpc shell --compact       # the same lines from a script

Settings are taken from a flag, else its environment variable, else the
nameko YAML file given with --config (AMQP_URI, rpc_exchange), else the
default. Run `rpc call --help` or `rpc shell --help` for more.";

const CALL_EXAMPLES: &str = "\
How arguments are read:
  A word that is valid JSON is that value; any other word is a string.
  NAME=VALUE (NAME a Python identifier) is a keyword argument.
  So `36` is a number, `Ada` a string, and '\"36\"' forces the string \"36\".
  '\"a=b\"' passes the positional string a=b. Put `--` before words that
  start with a dash (negative numbers work without it).

Examples:
  rpc call person.get 42
  rpc call person.create Ada Lovelace 36 member=true
  rpc call person.create first_name=Ada last_name=Lovelace age='\"36\"'
  rpc call person.update 42 --kwargs '{\"age\": 37, \"member\": false}'
  rpc call person.list --args '[10]' after_id=100
  rpc call greeting_service.hello name=Matt         # a Python nameko service
  rpc --context user_id=7 --context language=en call person.get 42
  rpc --compact call person.list limit=3 | jq .

Exit status: 0 success, 1 the method raised (the remote error is printed
on stderr), 2 no result (unknown service, timeout, broker unreachable),
64 the command line or the --config file is wrong, 130 interrupted.";

const SHELL_HELP: &str = "\
At a terminal, `rpc shell` reads lines with editing and history (kept in
~/.rpc_history unless --history or --no-history says otherwise). Type
`help` inside for the whole syntax. Calls are written as in nameko shell:

  >>> person.create(\"Ada\", \"Lovelace\", 36, member=True)
  >>> person.get(1)
  >>> n.rpc.person.list(limit=10)                      # nameko's spelling
  >>> n.rpc[\"person-v2\"].get(1)
  >>> dispatch(\"person\", \"person_created\", {\"id\": 1})
  >>> n.dispatch_event(\"person\", \"person_created\", {\"id\": 1})
  >>> context user_id=u1 language=en                  # sent with every call
  >>> timeout 5                                        # seconds per call
  >>> async person.get(1)                              # then: wait
  >>> exit                                             # or quit, or Ctrl-D

Values are JSON plus Python's True/False/None, 'single-quoted' strings and
tuples. A statement may span lines while a bracket is open.

With stdin not a terminal, each line is run in turn: every call's result is
printed on stdout as one JSON document (indented, or one line each with
--compact), errors go to stderr prefixed with their line number, and
nothing else is written to stdout.

  rpc shell --compact < calls.txt | jq .
  printf 'context user_id=7\\nperson.get(1)\\n' | rpc shell

Exit status: at a terminal, 0 (2 if the broker cannot be reached at start).
With piped input: 0 when every line succeeded; otherwise the status of the
first line that failed: 1 a method raised, 2 no result (unknown service,
timeout, broker unreachable, event not accepted), 64 a line (or the command
line, or the --config file) is wrong; 130 interrupted by SIGINT or SIGTERM.
The remaining lines still run unless --stop-on-error is given.";

/// Calls methods of nameko-compatible services (Python or Rust) over
/// RabbitMQ and prints the results as JSON.
#[derive(Debug, Parser)]
#[command(name = "rpc", version, about, long_about = None, after_help = TOP_EXAMPLES)]
pub struct Cli {
    /// Broker and call settings.
    #[command(flatten)]
    pub connection: ConnectionOptions,

    /// Output settings.
    #[command(flatten)]
    pub output: OutputOptions,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the services.
#[derive(Clone, Debug, Args)]
pub struct ConnectionOptions {
    /// Broker to connect to, or a `;`-separated list to fail over between
    /// (kombu's form). Default: the --config file's AMQP_URI, else the
    /// local RabbitMQ (localhost:5672, vhost "/") as user guest.
    // No clap default: the config file sits between the environment and the
    // default, so the default is applied in `settings`.
    #[arg(long, global = true, env = "AMQP_URI", hide_env_values = true)]
    pub amqp_uri: Option<String>,

    /// Seconds to wait for a reply; fractions allowed.
    #[arg(long, global = true, env = "RPC_TIMEOUT", default_value = "30", value_parser = positive_seconds)]
    pub timeout: Duration,

    /// The RPC exchange; must match the services' `rpc_exchange`. Default:
    /// the --config file's rpc_exchange, else nameko-rpc.
    #[arg(long, global = true, env = "RPC_EXCHANGE")]
    pub rpc_exchange: Option<String>,

    /// A nameko YAML config file (as given to `nameko run --config`) to take
    /// AMQP_URI and rpc_exchange from, when no flag or environment variable
    /// sets them. ${VAR} references are substituted as nameko does.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Context data sent with every call as the `nameko.KEY` header (e.g.
    /// user_id, language). VALUE is read as arguments are. Repeatable.
    // Not global: clap lets a global list given after the subcommand
    // replace the one given before it; subcommands take their own instead.
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, Args)]
pub struct OutputOptions {
    /// Print the result as one line of JSON instead of indented JSON.
    #[arg(long, global = true)]
    pub compact: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Call SERVICE.METHOD once and print its result as JSON.
    #[command(after_help = CALL_EXAMPLES)]
    Call(CallCommand),
    /// An interactive shell in the spirit of `nameko shell`; also runs
    /// piped scripts of calls.
    #[command(after_help = SHELL_HELP)]
    Shell(ShellCommand),
}

/// `rpc shell`.
#[derive(Clone, Debug, Args)]
pub struct ShellCommand {
    /// History file, used at a terminal only. Default: ~/.rpc_history.
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,

    /// Keep no history file.
    #[arg(long, conflicts_with = "history")]
    pub no_history: bool,

    /// With piped input, stop at the first line that fails instead of
    /// running the rest.
    #[arg(long)]
    pub stop_on_error: bool,

    /// Context data to start with, in addition to any given before `shell`;
    /// change it inside with `context KEY=VALUE`. Repeatable.
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
}

/// `rpc call`.
#[derive(Clone, Debug, Args)]
pub struct CallCommand {
    /// The service and method, e.g. person.get.
    #[arg(value_name = "SERVICE.METHOD")]
    pub target: String,

    /// Arguments: JSON values or bare strings, positional or NAME=VALUE.
    #[arg(value_name = "ARG", allow_negative_numbers = true)]
    pub words: Vec<String>,

    /// Positional arguments as one JSON list, placed before the ARGs.
    #[arg(long = "args", value_name = "JSON_LIST")]
    pub args_json: Option<String>,

    /// Keyword arguments as one JSON object, merged with the NAME=VALUE
    /// ARGs (a name given twice is an error).
    #[arg(long = "kwargs", value_name = "JSON_OBJECT")]
    pub kwargs_json: Option<String>,

    /// Context data sent as the `nameko.KEY` header, in addition to any
    /// given before `call`. Repeatable.
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
}

pub use rpc_core::config::positive_seconds;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rpc").chain(args.iter().copied()))
    }

    fn call(cli: &Cli) -> &CallCommand {
        match &cli.command {
            Command::Call(c) => c,
            other => panic!("not a call: {other:?}"),
        }
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn words_keep_their_order_and_negative_numbers() {
        let cli = parse(&["call", "person.create", "Ada", "-3", "member=true"]).unwrap();
        let c = call(&cli);
        assert_eq!(c.target, "person.create");
        assert_eq!(c.words, ["Ada", "-3", "member=true"]);
        assert_eq!(cli.connection.timeout, Duration::from_secs(30));
        assert_eq!(cli.connection.config, None);
        assert!(!cli.output.compact);
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let cli = parse(&[
            "--context",
            "user_id=7",
            "call",
            "--compact",
            "--timeout",
            "1.5",
            "s.m",
            "--context",
            "language=en",
            "--kwargs",
            "{}",
        ])
        .unwrap();
        assert_eq!(cli.connection.context, ["user_id=7"]);
        assert_eq!(call(&cli).context, ["language=en"]);
        assert_eq!(cli.connection.timeout, Duration::from_millis(1500));
        assert!(cli.output.compact);
        assert_eq!(call(&cli).kwargs_json.as_deref(), Some("{}"));
    }

    #[test]
    fn dash_words_after_double_dash() {
        let cli = parse(&["call", "s.m", "--", "--not-an-option"]).unwrap();
        assert_eq!(call(&cli).words, ["--not-an-option"]);
    }

    #[test]
    fn usage_errors() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["call"]).is_err());
        assert!(parse(&["call", "s.m", "--timeout", "0"]).is_err());
        assert!(parse(&["call", "s.m", "--timeout", "1e300"]).is_err());
        assert!(parse(&["call", "s.m", "--bogus"]).is_err());
    }

    #[test]
    fn shell_options() {
        let cli = parse(&[
            "--config",
            "nameko.yaml",
            "shell",
            "--compact",
            "--history",
            "/tmp/h",
            "--context",
            "user_id=7",
            "--stop-on-error",
        ])
        .unwrap();
        let Command::Shell(shell) = &cli.command else {
            panic!("not a shell: {cli:?}");
        };
        assert_eq!(
            shell.history.as_deref(),
            Some(std::path::Path::new("/tmp/h"))
        );
        assert_eq!(shell.context, ["user_id=7"]);
        assert!(shell.stop_on_error && !shell.no_history && cli.output.compact);
        assert_eq!(
            cli.connection.config.as_deref(),
            Some(std::path::Path::new("nameko.yaml"))
        );
        assert!(parse(&["shell", "--history", "h", "--no-history"]).is_err());
        assert!(parse(&["shell", "person.get(1)"]).is_err());
    }

    #[test]
    fn help_shows_examples_but_never_the_password() {
        let top = Cli::command().render_long_help().to_string();
        assert!(top.contains("rpc call person.get 42"), "{top}");
        assert!(!top.contains("guest:guest"), "{top}");
        let mut cmd = Cli::command();
        cmd.build();
        let call_help = cmd
            .find_subcommand_mut("call")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        assert!(call_help.contains("greeting_service.hello"), "{call_help}");
        assert!(call_help.contains("--context"), "{call_help}");
        assert!(!call_help.contains("guest:guest"), "{call_help}");
        let shell_help = cmd
            .find_subcommand_mut("shell")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        assert!(
            shell_help.contains("n.rpc.person.list(limit=10)"),
            "{shell_help}"
        );
        assert!(shell_help.contains("--history"), "{shell_help}");
        assert!(shell_help.contains("--config"), "{shell_help}");
        assert!(!shell_help.contains("guest:guest"), "{shell_help}");
        assert!(top.contains("rpc shell"), "{top}");
    }
}
