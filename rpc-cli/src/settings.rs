//! Where the connection settings come from, in order of precedence:
//! a flag, then its environment variable (clap merges these two), then the
//! nameko YAML file given with `--config`, then the default.
//!
//! The file layer lets `rpc` point at the very file a nameko (or rpc-core)
//! service runs with, so a caller reaches the same broker and exchange as
//! the service without copying its URI, password included, onto a command
//! line.

use crate::call::CliError;
use crate::cli::ConnectionOptions;
use rpc_core::config_file::{FileConfig, WarningKind};
use rpc_core::{Config, RetryPolicy};

/// The keys of a config file this tool uses. A warning about any other key
/// (a service's `LOGGING`, its own settings) says nothing about the calls
/// made here, so it is logged at debug level only.
const USED_KEYS: &[&str] = &["AMQP_URI", "rpc_exchange", "AMQP_SSL", "HEARTBEAT"];

/// The settings to connect with, layered as the module docs say. The proxy
/// tries to connect once: a person at a terminal wants "cannot connect" now
/// rather than after a backoff.
pub fn resolve(options: &ConnectionOptions) -> Result<Config, CliError> {
    let file = match &options.config {
        Some(path) => {
            let file = FileConfig::load(path, &[])?;
            log_warnings(&file);
            Some(file)
        }
        None => None,
    };
    layer(options, file.as_ref())
}

/// Applies the layers over the defaults; `file` is the loaded `--config`.
pub fn layer(options: &ConnectionOptions, file: Option<&FileConfig>) -> Result<Config, CliError> {
    let mut config = Config::default();
    if let Some(file) = file {
        file.apply_to(&mut config);
    }
    if let Some(uri) = &options.amqp_uri {
        // The parse error never contains the password.
        config.amqp_uri = uri.parse()?;
    }
    if let Some(exchange) = &options.rpc_exchange {
        config.rpc_exchange = exchange.clone();
    }
    config.rpc_timeout = options.timeout;
    config.connect_retry = RetryPolicy::once();
    Ok(config)
}

fn log_warnings(file: &FileConfig) {
    for w in file.warnings() {
        let relevant = USED_KEYS.contains(&w.key.as_str())
            && matches!(w.kind, WarningKind::Null | WarningKind::Partial);
        if relevant {
            tracing::warn!(file = %file.path().display(), key = %w.key, "config file: {}", w.message);
        } else {
            tracing::debug!(file = %file.path().display(), key = %w.key, "config file: {}", w.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;
    use std::time::Duration;

    fn options(args: &[&str]) -> ConnectionOptions {
        Cli::try_parse_from(
            ["rpc"]
                .into_iter()
                .chain(args.iter().copied())
                .chain(["call", "s.m"]),
        )
        .unwrap()
        .connection
    }

    fn file(yaml: &str) -> FileConfig {
        FileConfig::from_yaml("test.yaml", yaml, &[], &|_| None).unwrap()
    }

    #[test]
    fn defaults_without_flags_or_file() {
        // Only meaningful when the environment does not set these.
        if std::env::var_os("AMQP_URI").is_some() || std::env::var_os("RPC_EXCHANGE").is_some() {
            return;
        }
        let config = layer(&options(&[]), None).unwrap();
        assert_eq!(config.amqp_uri.endpoint(), "localhost:5672");
        assert_eq!(config.rpc_exchange, "nameko-rpc");
        assert_eq!(config.rpc_timeout, Duration::from_secs(30));
        assert_eq!(config.connect_retry, RetryPolicy::once());
    }

    #[test]
    fn the_file_beats_the_default_and_a_flag_beats_the_file() {
        let f = file(
            "AMQP_URI: amqp://app:s3cret@rabbit.example:5673/\nrpc_exchange: file-rpc\nLOGGING: {}\n",
        );
        if std::env::var_os("AMQP_URI").is_none() && std::env::var_os("RPC_EXCHANGE").is_none() {
            let config = layer(&options(&[]), Some(&f)).unwrap();
            assert_eq!(config.amqp_uri.endpoint(), "rabbit.example:5673");
            assert_eq!(config.rpc_exchange, "file-rpc");
        }
        let config = layer(
            &options(&[
                "--amqp-uri",
                "amqp://guest:guest@flag.example:5674/",
                "--rpc-exchange",
                "flag-rpc",
                "--timeout",
                "2",
            ]),
            Some(&f),
        )
        .unwrap();
        assert_eq!(config.amqp_uri.endpoint(), "flag.example:5674");
        assert_eq!(config.rpc_exchange, "flag-rpc");
        assert_eq!(config.rpc_timeout, Duration::from_secs(2));
    }

    #[test]
    fn a_bad_uri_flag_is_a_connect_error_without_the_password() {
        let e = layer(
            &options(&["--amqp-uri", "amqp://u:hunter2@h:notaport/"]),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, CliError::Connect(_)), "{e:?}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn a_missing_file_is_a_usage_error() {
        let mut o = options(&[]);
        o.config = Some("/nonexistent/rpc-cli-test.yaml".into());
        let e = resolve(&o).unwrap_err();
        assert_eq!(e.exit_code(), crate::call::EXIT_USAGE);
        assert!(
            e.to_string().contains("/nonexistent/rpc-cli-test.yaml"),
            "{e}"
        );
    }
}
