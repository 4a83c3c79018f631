//! Command line and environment.
//!
//! Every setting can also come from the environment, so the same image runs
//! as a long-lived checker or as a compose smoke test without a wrapper
//! script. The broker URI is taken as plain text and parsed only after clap
//! is done: clap quotes rejected values in its errors, and this value
//! carries a password.

use clap::Parser;
use rpc_core::{Config, ConnectError};
use std::time::Duration;

/// Exercises a person service over nameko-compatible RPC.
#[derive(Clone, Debug, Parser)]
#[command(name = "test-service", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// Broker to connect to. Defaults to the local RabbitMQ (localhost:5672,
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
}

const EXAMPLES: &str = "\
Examples:
  test-service                          check `person` every 5 s, forever
  test-service --interval 0.5 --target people
  test-service --once --wait 60         smoke test, e.g. in docker compose
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
    /// The mode, so callers cannot read `--wait` outside `--once`.
    pub fn mode(&self) -> Mode {
        if self.once {
            Mode::Once { wait: self.wait }
        } else {
            Mode::Service
        }
    }

    /// rpc-core settings: the broker and the per-call timeout.
    pub fn config(&self) -> Result<Config, ConnectError> {
        let mut config = Config::new(&self.amqp_uri)?;
        config.rpc_timeout = self.timeout;
        Ok(config)
    }
}

/// Longest duration accepted anywhere: deadlines are computed as
/// `now + duration`, which panics when it overflows, and anything longer
/// than this is a typo anyway.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Seconds as a duration; zero allowed, at most [`MAX_SECONDS`].
pub fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if secs > MAX_SECONDS {
        return Err(format!("`{text}` is more than a year"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{text}` is not a usable duration"))
}

/// Seconds as a duration, more than zero (a zero interval would make the
/// timer spin).
pub fn positive_seconds(text: &str) -> Result<Duration, String> {
    let d = seconds(text)?;
    if d.is_zero() {
        Err("must be more than zero".to_owned())
    } else {
        Ok(d)
    }
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

    #[test]
    fn config_takes_the_timeout() {
        let cli = parse(&["--timeout", "1.5", "--amqp-uri", "amqp://u:p@h:1/v"]);
        let config = cli.config().unwrap();
        assert_eq!(config.rpc_timeout, Duration::from_millis(1500));
        assert_eq!(config.amqp_uri.endpoint(), "h:1");
    }
}
