//! Making a call and reporting how it went: the result on stdout, anything
//! else on stderr, and an exit status a script can branch on.

use crate::args::{self, ArgsError};
use crate::cli::{CallCommand, ConnectionOptions};
use crate::settings;
use rpc_core::config_file::ConfigFileError;
use rpc_core::{
    Args, CallError, Config, ConnectError, DispatchError, RemoteError, RpcProxy, Value,
};
use std::collections::BTreeMap;
use std::io::Write;

/// The call worked.
pub const EXIT_OK: u8 = 0;
/// The remote method raised an error.
pub const EXIT_REMOTE: u8 = 1;
/// No result: unknown service, timeout, broker unreachable.
pub const EXIT_FAILURE: u8 = 2;
/// The command line (or its `--config` file, or a shell line) is wrong
/// (sysexits' EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Interrupted by SIGINT or SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Why a call produced no result.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The call is not well formed; nothing was sent.
    #[error(transparent)]
    Usage(#[from] ArgsError),
    /// The broker could not be reached (the text names host:port, never the
    /// password).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The call was sent but did not return a result.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The `--config` file cannot be used (the message names the file and
    /// the key, never the password).
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    /// An event was not published.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// A signal arrived while waiting.
    #[error("interrupted")]
    Interrupted,
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::ConfigFile(_) => EXIT_USAGE,
            CliError::Call(CallError::Remote(_)) => EXIT_REMOTE,
            CliError::Connect(_) | CliError::Call(_) | CliError::Dispatch(_) => EXIT_FAILURE,
            CliError::Interrupted => EXIT_INTERRUPTED,
        }
    }

    /// What to print on stderr. A remote error shows everything nameko
    /// sends, since `exc_path` and `exc_args` are what a caller matches on.
    pub fn describe(&self, exchange: &str, broker: Option<&str>) -> String {
        match self {
            CliError::Call(CallError::Remote(remote)) => describe_remote(remote),
            CliError::Call(CallError::UnknownService(service)) => format!(
                "error: unknown service `{service}`: nothing consumes rpc-{service} on exchange \
                 {exchange}{} (is it running, and under that name?)",
                broker.map(|b| format!(" at {b}")).unwrap_or_default()
            ),
            CliError::Usage(e) => format!("error: {e}\n\nFor more information, try '--help'."),
            other => format!("error: {other}"),
        }
    }
}

/// `ExcType: value`, then the path and the args.
pub fn describe_remote(remote: &RemoteError) -> String {
    let args = serde_json::to_string(&remote.exc_args).unwrap_or_else(|_| "?".to_owned());
    format!(
        "{}: {}\n  exc_path: {}\n  exc_args: {}",
        remote.exc_type, remote.value, remote.exc_path, args
    )
}

/// A call ready to send: everything the command line says, checked before
/// connecting so that a typo never costs a connection.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The service called.
    pub service: String,
    /// The method called.
    pub method: String,
    /// Its arguments.
    pub args: Args,
    /// Context data: the global `--context` entries, then the call's own.
    pub context: BTreeMap<String, Value>,
}

impl Prepared {
    /// Reads `rpc call`'s target, arguments and context.
    pub fn from_command(options: &ConnectionOptions, cmd: &CallCommand) -> Result<Self, ArgsError> {
        let (service, method) = args::parse_target(&cmd.target)?;
        let args = args::build_args(
            &cmd.words,
            cmd.args_json.as_deref(),
            cmd.kwargs_json.as_deref(),
        )?;
        let entries: Vec<&String> = options.context.iter().chain(&cmd.context).collect();
        let context = args::parse_context(&entries)?;
        Ok(Prepared {
            service,
            method,
            args,
            context,
        })
    }
}

/// The result as JSON text: indented, or on one line with `compact`.
pub fn render(value: &Value, compact: bool) -> String {
    let text = if compact {
        serde_json::to_string(value)
    } else {
        serde_json::to_string_pretty(value)
    };
    // A Value always serialises; keep a fallback rather than a panic.
    text.unwrap_or_else(|_| value.to_string())
}

/// Runs `rpc call` and returns the exit status; the result goes to stdout,
/// errors to stderr.
pub async fn run_call(options: &ConnectionOptions, cmd: &CallCommand, compact: bool) -> u8 {
    // A malformed call is reported before the settings are even read, so a
    // typo never costs a connection (or a config file error).
    let result = match Prepared::from_command(options, cmd) {
        Err(e) => Err((CliError::from(e), None)),
        Ok(prepared) => match settings::resolve(options) {
            Err(e) => Err((e, None)),
            Ok(config) => call_once(&config, prepared)
                .await
                .map_err(|e| (e, Some(config))),
        },
    };
    match result {
        Ok(value) => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`rpc call … | head -1`) is not an error.
            let _ = writeln!(out, "{}", render(&value, compact));
            EXIT_OK
        }
        Err((e, config)) => {
            tracing::debug!(error = ?e, "call failed");
            let exchange = config
                .as_ref()
                .map_or("nameko-rpc", |c| c.rpc_exchange.as_str());
            let broker = config.as_ref().map(|c| c.amqp_uri.endpoint());
            eprintln!("{}", e.describe(exchange, broker.as_deref()));
            e.exit_code()
        }
    }
}

async fn call_once(config: &Config, prepared: Prepared) -> Result<Value, CliError> {
    let proxy = RpcProxy::connect(config.clone())
        .await?
        .with_context_data(prepared.context);
    let result = tokio::select! {
        r = proxy.call(&prepared.service, &prepared.method, prepared.args) => r.map_err(CliError::from),
        _ = rpc_core::shutdown::signal() => Err(CliError::Interrupted),
    };
    // Deletes the reply queue now rather than leaving it to expire.
    proxy.close().await;
    result
}
