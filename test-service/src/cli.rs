//! Command line, environment and config file.
//!
//! Every setting can also come from the environment, so the same image runs
//! as a long-lived checker or as a compose smoke test without a wrapper
//! script, or from a nameko config file (`--config`): each setting comes
//! from the first of flag, environment, file, default. The file's own keys
//! are named like the environment variables ([`FILE_KEYS`]). The broker URI
//! is taken as plain text and parsed only after clap is done: clap quotes
//! rejected values in its errors, and this value carries a password.

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use rpc_core::config_file::{ConfigFileError, FileConfig};
use rpc_core::{Config, ConnectError};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// test-service's own keys in a `--config` file, beside nameko's
/// (`AMQP_URI` is nameko's key for `--amqp-uri`).
pub const FILE_KEYS: &[&str] = &[
    "TARGET_SERVICE",
    "SERVICE_NAME",
    "INTERVAL",
    "RPC_TIMEOUT",
    "WAIT",
    "EVENT_TIMEOUT",
];

/// Exit status when the command line's config file cannot be used (as
/// clap's for a bad command line, and as an unusable broker URI).
pub const EXIT_CONFIG: u8 = 2;

/// Exercises a person service over nameko-compatible RPC.
#[derive(Clone, Debug, Parser)]
#[command(name = "test-service", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// A nameko config file (YAML, with ${VAR:default} substitution):
    /// AMQP_URI, max_workers, rpc_exchange, parent_calls_tracked, HEARTBEAT,
    /// AMQP_SSL's ca_certs, QUEUE_TYPE, and this program's TARGET_SERVICE, SERVICE_NAME,
    /// INTERVAL, RPC_TIMEOUT, WAIT, EVENT_TIMEOUT. Flags and environment win
    /// over it. A file that cannot be used exits with status 2.
    #[arg(long = "config", env = "CONFIG_FILE", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Broker to connect to, or a `;`-separated list to fail over between
    /// (kombu's form). Defaults to the local RabbitMQ (localhost:5672,
    /// vhost "/") as user guest.
    #[arg(
        long,
        env = "AMQP_URI",
        default_value = rpc_core::config::DEFAULT_AMQP_URI,
        hide_default_value = true,
        hide_env_values = true
    )]
    pub amqp_uri: String,

    /// Name of the person service to check.
    #[arg(long, env = "TARGET_SERVICE", default_value = "person")]
    pub target: String,

    /// Name this service runs under (service mode only).
    #[arg(long, env = "SERVICE_NAME", default_value = "test_service")]
    pub service_name: String,

    /// Seconds between rounds in service mode; fractions allowed.
    #[arg(long, env = "INTERVAL", default_value = "5", value_parser = positive_seconds)]
    pub interval: Duration,

    /// Seconds each call may take before it counts as failed.
    #[arg(long, env = "RPC_TIMEOUT", default_value = "10", value_parser = positive_seconds)]
    pub timeout: Duration,

    /// Run one round, print a summary and exit: 0 when every check passed,
    /// 1 when one failed, 2 when the broker cannot be reached.
    #[arg(long)]
    pub once: bool,

    /// With --once: seconds to wait for the broker and the target service
    /// to come up before giving up.
    #[arg(long, env = "WAIT", default_value = "30", value_parser = seconds)]
    pub wait: Duration,

    /// Seconds each change's event (person_created, person_updated,
    /// person_deleted) may take after the change's reply; 0 subscribes to
    /// no events and checks none, for a target that dispatches none.
    #[arg(long, env = "EVENT_TIMEOUT", default_value = "5", value_parser = seconds)]
    pub event_timeout: Duration,

    /// Type of the queues shared by this service's instances (its event
    /// handlers' queues, service mode): classic, as nameko declares them,
    /// or quorum, replicated over a RabbitMQ cluster. Broadcast and reply
    /// queues stay classic.
    #[arg(long, env = "QUEUE_TYPE", default_value = "classic", value_parser = parse_queue_type)]
    pub queue_type: rpc_core::QueueType,

    /// The `--config` file as loaded: its nameko settings that have no flag
    /// (rpc_exchange, max_workers, …) and its warnings. `None` without one.
    #[arg(skip)]
    pub file: Option<FileConfig>,
}

/// Why the settings cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag or an environment variable is wrong, or `--help` /
    /// `--version` was asked for: [`clap::Error::exit`] prints it.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The config file is unusable; the message names the file and key.
    #[error(transparent)]
    File(#[from] ConfigFileError),
}

const EXAMPLES: &str = "\
Examples:
  test-service                          check `person` every 5 s, forever
  test-service --interval 0.5 --target people
  test-service --once --wait 60         smoke test, e.g. in docker compose
  test-service --config config.yaml     a nameko config file, plus TARGET_SERVICE etc.
  AMQP_URI=\"amqp://app:${RABBIT_PASSWORD}@rabbit/%2f\" test-service --once";

/// What the command line asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Run rounds on a timer until stopped.
    Service,
    /// Run one round, waiting up to `wait` for the target.
    Once {
        /// How long to wait for the broker and the target.
        wait: Duration,
    },
}

impl Cli {
    /// Reads the command line, the environment and the `--config` file.
    pub fn load() -> Result<Self, CliError> {
        Self::load_from(std::env::args_os())
    }

    /// [`load`](Self::load) with the given arguments (the first is the
    /// program name); the environment is still the process's.
    pub fn load_from<I, T>(args: I) -> Result<Self, CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        if let Some(path) = cli.config_file.clone() {
            let file = FileConfig::load(&path, FILE_KEYS)?;
            cli.layer_file(&matches, &file)?;
            cli.file = Some(file);
        }
        Ok(cli)
    }

    /// Takes each setting that neither a flag nor the environment gave from
    /// the file, when the file has it; values are checked as the flags'.
    fn layer_file(
        &mut self,
        matches: &ArgMatches,
        file: &FileConfig,
    ) -> Result<(), ConfigFileError> {
        // The file's `key`, unless a flag or the environment set `id`.
        let text = |id: &str, key: &str| match matches.value_source(id) {
            None | Some(ValueSource::DefaultValue) => file.get_text(key),
            Some(_) => Ok(None),
        };
        let duration = |id: &str, key: &str, parse: fn(&str) -> Result<Duration, String>| {
            text(id, key)?
                .map(|text| parse(&text).map_err(|e| file.invalid(key, e)))
                .transpose()
        };
        if matches!(
            matches.value_source("amqp_uri"),
            None | Some(ValueSource::DefaultValue)
        ) {
            if let Some(uri) = file.amqp_uri_text()? {
                self.amqp_uri = uri;
            }
        }
        if matches!(
            matches.value_source("queue_type"),
            None | Some(ValueSource::DefaultValue)
        ) {
            if let Some(t) = file.queue_type {
                self.queue_type = t;
            }
        }
        if let Some(target) = text("target", "TARGET_SERVICE")? {
            self.target = target;
        }
        if let Some(name) = text("service_name", "SERVICE_NAME")? {
            self.service_name = name;
        }
        if let Some(d) = duration("interval", "INTERVAL", positive_seconds)? {
            self.interval = d;
        }
        if let Some(d) = duration("timeout", "RPC_TIMEOUT", positive_seconds)? {
            self.timeout = d;
        }
        if let Some(d) = duration("wait", "WAIT", seconds)? {
            self.wait = d;
        }
        if let Some(d) = duration("event_timeout", "EVENT_TIMEOUT", seconds)? {
            self.event_timeout = d;
        }
        Ok(())
    }

    /// How long an event may take, or `None` (`--event-timeout 0`) for no
    /// event checks at all.
    pub fn event_checks(&self) -> Option<Duration> {
        Some(self.event_timeout).filter(|d| !d.is_zero())
    }

    /// The mode, so callers cannot read `--wait` outside `--once`.
    pub fn mode(&self) -> Mode {
        if self.once {
            Mode::Once { wait: self.wait }
        } else {
            Mode::Service
        }
    }

    /// rpc-core settings: defaults, the config file's nameko settings, then
    /// the broker and the per-call timeout as layered above.
    pub fn config(&self) -> Result<Config, ConnectError> {
        let mut config = Config::default();
        if let Some(file) = &self.file {
            file.apply_to(&mut config);
        }
        config.amqp_uri = self.amqp_uri.parse()?;
        config.rpc_timeout = self.timeout;
        config.queue_type = self.queue_type;
        Ok(config)
    }
}

pub use rpc_core::config::{positive_seconds, seconds, MAX_DURATION};

fn parse_queue_type(text: &str) -> Result<rpc_core::QueueType, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("test-service").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn defaults() {
        let cli = parse(&[]);
        assert_eq!(cli.target, "person");
        assert_eq!(cli.service_name, "test_service");
        assert_eq!(cli.interval, Duration::from_secs(5));
        assert_eq!(cli.timeout, Duration::from_secs(10));
        assert_eq!(cli.mode(), Mode::Service);
        assert_eq!(cli.event_checks(), Some(crate::events::DEFAULT_TIMEOUT));
    }

    #[test]
    fn zero_event_timeout_checks_no_events() {
        assert_eq!(parse(&["--event-timeout", "0"]).event_checks(), None);
        assert_eq!(
            parse(&["--event-timeout", "0.5"]).event_checks(),
            Some(Duration::from_millis(500))
        );
        let cli = load_with_file("EVENT_TIMEOUT: 0\n", &[]).unwrap();
        assert_eq!(cli.event_checks(), None);
    }

    #[test]
    fn fractions_and_once() {
        let cli = parse(&["--interval", "0.25", "--once", "--wait", "0"]);
        assert_eq!(cli.interval, Duration::from_millis(250));
        assert_eq!(
            cli.mode(),
            Mode::Once {
                wait: Duration::ZERO
            }
        );
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in [
            ["--interval", "0"],
            ["--interval", "-1"],
            ["--interval", "soon"],
            ["--timeout", "NaN"],
            ["--wait", "inf"],
            ["--wait", "1e18"],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("test-service").chain(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn help_never_shows_the_password() {
        let help = Cli::command().render_long_help().to_string();
        assert!(!help.contains("guest:guest"), "{help}");
        assert!(help.contains("AMQP_URI"), "{help}");
    }

    fn load_with_file(text: &str, args: &[&str]) -> Result<Cli, CliError> {
        let dir = std::env::temp_dir().join(format!("test-service-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_owned();
        let mut argv = vec!["test-service", "--config", path.as_str()];
        argv.extend_from_slice(args);
        let result = Cli::load_from(argv);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    // The environment is the test process's: these use settings no test
    // environment sets; tests/config.rs runs the binary with a controlled
    // environment.
    #[test]
    fn the_file_fills_what_flags_leave_unset() {
        let text = "TARGET_SERVICE: people\nINTERVAL: 0.5\nRPC_TIMEOUT: 2\nWAIT: 0\n\
                    rpc_exchange: other-rpc\nmax_workers: 3\n";
        let cli = load_with_file(text, &[]).unwrap();
        assert_eq!(cli.target, "people");
        assert_eq!(cli.interval, Duration::from_millis(500));
        assert_eq!(cli.timeout, Duration::from_secs(2));
        assert_eq!(cli.wait, Duration::ZERO);
        let config = cli.config().unwrap();
        assert_eq!(config.rpc_exchange, "other-rpc");
        assert_eq!(config.max_workers, 3);
        assert_eq!(config.rpc_timeout, Duration::from_secs(2));

        let cli = load_with_file(text, &["--target", "flagged", "--interval", "7"]).unwrap();
        assert_eq!(cli.target, "flagged");
        assert_eq!(cli.interval, Duration::from_secs(7));
    }

    #[test]
    fn file_values_are_checked_like_flags() {
        for (text, key) in [
            ("INTERVAL: 0\n", "INTERVAL"),
            ("RPC_TIMEOUT: soon\n", "RPC_TIMEOUT"),
            ("WAIT: [1]\n", "WAIT"),
            ("EVENT_TIMEOUT: -1\n", "EVENT_TIMEOUT"),
            ("serializer: pickle\n", "serializer"),
        ] {
            match load_with_file(text, &[]) {
                Err(CliError::File(e)) => assert_eq!(e.key(), Some(key), "{text}: {e}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_bad_uri_is_refused_without_the_password() {
        let cli = parse(&["--amqp-uri", "amqp://u:hunter2@h:notaport/v"]);
        let e = cli.config().unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn config_takes_the_timeout() {
        let cli = parse(&["--timeout", "1.5", "--amqp-uri", "amqp://u:p@h:1/v"]);
        let config = cli.config().unwrap();
        assert_eq!(config.rpc_timeout, Duration::from_millis(1500));
        assert_eq!(config.amqp_uri.endpoint(), "h:1");
    }
}
