//! Reading nameko-style YAML configuration files.
//!
//! `nameko run --config FILE` reads a YAML file whose top-level keys are
//! settings (`AMQP_URI`, `max_workers`, `LOGGING`, …). [`FileConfig::load`]
//! reads the same file, so an existing nameko deployment's config works as
//! is: it types the keys rpc-core uses, reports the keys nameko knows but
//! rpc-core ignores, reports keys nobody knows, and hands a program the
//! values of the extra keys it says it understands.
//!
//! # Keys
//! | Key | Here |
//! |---|---|
//! | `AMQP_URI` | [`Config::amqp_uri`]: one URI (kombu's rules, see [`AmqpUri`](crate::AmqpUri)), kombu's `;`-separated list, or a YAML list of URIs, for failover ([`BrokerList`]) |
//! | `max_workers` | [`Config::max_workers`]; 0 means the default, 10, as in nameko |
//! | `rpc_exchange` | [`Config::rpc_exchange`] |
//! | `parent_calls_tracked` | [`Config::parent_calls_tracked`] |
//! | `HEARTBEAT` | [`Config::heartbeat`] (whole seconds, 0–65535) |
//! | `serializer` | must be `json`, the only serializer rpc-core speaks; anything else is an error |
//! | `ACCEPT` | must be a list of `json` / `application/json`; anything else is an error |
//! | `AMQP_SSL` | `ca_certs` becomes [`Config::tls_ca_file`]; see below |
//! | `QUEUE_TYPE` | rpc-core's own key (not nameko's): [`Config::queue_type`], `classic` (default) or `quorum` |
//! | `LOGGING`, `WEB_SERVER_ADDRESS`, `TRANSPORT_OPTIONS`, `SERIALIZERS`, `LOGIN_METHOD`, `AUTO_DELETE_EVENT_EXCHANGES`, `DECLARE_EVENT_EXCHANGES`, `SERVICE_CONTAINER_CLS` | known to nameko, ignored here: one [`Warning`] each |
//! | the program's own keys | kept for the program: [`FileConfig::get_text`], [`FileConfig::get`] |
//! | anything else | one [`Warning`] each (with a "did you mean" when only the case differs) |
//!
//! `AMQP_SSL`: nameko hands it to kombu as the `ssl` option: `true`, or a
//! mapping of `ssl` module options. rpc-core turns TLS on by the URI's
//! scheme (`amqps://`) instead, so `AMQP_SSL` only contributes its
//! `ca_certs` entry (the CA to trust). Its other entries (`certfile`,
//! `keyfile`, `cert_reqs`, …) are reported as ignored, and when the file's
//! `AMQP_URI` is a plain `amqp://` URI a warning says that nameko would use
//! TLS there and rpc-core will not.
//!
//! A key whose value is null (`~`, empty, or a `${VAR}` whose variable is
//! unset, see below) counts as not set: the default applies, and a
//! [`Warning`] says so.
//!
//! # Values: YAML 1.1 as PyYAML reads it
//! nameko reads the file with PyYAML's `safe_load`, which follows YAML 1.1:
//! `yes`/`no`/`on`/`off` are booleans, `017` is octal, `1_000` is 1000,
//! `1:30` is 90, `~` is null. Values here are typed by the same rules, so a
//! value means the same to both. Dates stay the text they were written as,
//! and the floats `.inf` and `.nan` (which JSON cannot hold) become the
//! strings `.inf`, `-.inf` and `.nan`.
//!
//! # Environment variables, exactly as nameko 2.14.1
//! * In a *plain* (unquoted) scalar, `${VAR}` and `${VAR:default}` are
//!   replaced by the variable's value, or by the default when it is unset.
//!   A quoted scalar (`"${VAR}"`) is left alone, as in nameko.
//! * When anything was replaced, the result is parsed again as YAML:
//!   `${PORT:5672}` is the integer 5672, `${ON:yes}` is `true`, and a
//!   variable holding `[a, b]` gives a list. A scalar with several
//!   references or other text around one (`amqp://${HOST}:${PORT}/`) is
//!   usually still a string after that.
//! * The tag `!env_var` does the same for any scalar, quoted or not;
//!   `!raw_env_var` replaces without parsing again (the result is always a
//!   string).
//! * **An unset variable with no default** becomes the empty string, which
//!   parses as null: `AMQP_URI: ${RABBIT_URI}` with `RABBIT_URI` unset is
//!   null, so the default applies (nameko passes `None` on; kombu then
//!   connects to `localhost` as guest, which is also rpc-core's default),
//!   and a [`Warning`] names the key. Inside other text it is just removed:
//!   `amqp://${USER}@h/` becomes `amqp://@h/`.
//! * The default ends at the first `}`, so it cannot contain `}` or another
//!   reference. A value *starting* with a nested reference
//!   (`${A:${B}}`) is an error, as it is in nameko without the optional
//!   Python `regex` module (which pip does not install with nameko).
//! * Mapping keys are plain scalars too and are substituted the same way.
//!
//! # Layering
//! A program usually layers its settings *flag > environment > file >
//! default*: start from [`Config::default`], [`FileConfig::apply_to`] it,
//! then overwrite what a flag or the environment gave. The passwords in
//! `AMQP_URI` never appear in errors, warnings or `Debug` output.
//!
//! ```
//! use rpc_core::config_file::FileConfig;
//!
//! let yaml = "AMQP_URI: amqp://app:s3cret@${RABBIT_HOST:localhost}:5672/\n\
//!             max_workers: ${WORKERS:4}\n\
//!             PERSON_DB: /data/person.db\n\
//!             LOGGING: {version: 1}\n";
//! let env = |name: &str| (name == "RABBIT_HOST").then(|| "rabbit".to_owned());
//! let file = FileConfig::from_yaml("person.yaml", yaml, &["PERSON_DB"], &env).unwrap();
//! assert_eq!(file.amqp_uri.as_ref().unwrap().endpoint(), "rabbit:5672");
//! assert_eq!(file.max_workers, Some(4));
//! assert_eq!(file.get_text("PERSON_DB").unwrap().as_deref(), Some("/data/person.db"));
//! assert_eq!(file.warnings()[0].key, "LOGGING");
//! let config = file.config();
//! assert_eq!(config.max_workers, 4);
//! ```

mod yaml;

pub use yaml::{parse_yaml, YamlError};

use crate::config::Config;
use crate::connection::BrokerList;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a config file cannot be used. Every variant names the file, and
/// every value error the key; none contains the AMQP password.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("config file {}: invalid YAML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line and column.
        message: String,
    },
    /// The file is valid YAML but not a mapping of keys to values.
    #[error("config file {}: expected a mapping of settings (KEY: value), found {found}", path.display())]
    NotAMapping {
        /// The file.
        path: PathBuf,
        /// What the document is instead.
        found: &'static str,
    },
    /// A key's value is unusable: the wrong type, an unsupported value, or a
    /// substitution that fails.
    #[error("config file {}: {key}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, dotted for nested keys (`LOGGING.handlers`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigFileError {
    /// The key the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigFileError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// What kind of thing a [`Warning`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarningKind {
    /// A key nameko knows that rpc-core ignores (`LOGGING`, …).
    Ignored,
    /// A key neither nameko nor the program knows.
    Unknown,
    /// A key whose value is null, so its default applies.
    Null,
    /// Part of a key's value is not used (`AMQP_SSL`'s client certificate,
    /// for instance).
    Partial,
}

/// Something in a config file that is not used as nameko would use it.
/// Programs log each one at warn level ([`FileConfig::log_warnings`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The top-level key.
    pub key: String,
    /// What kind of warning.
    pub kind: WarningKind,
    /// A sentence for the log line.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// nameko keys rpc-core does not use, with what to do instead.
pub const IGNORED_KEYS: &[(&str, &str)] = &[
    (
        "LOGGING",
        "logging is set with RUST_LOG (and the program's log format option)",
    ),
    (
        "WEB_SERVER_ADDRESS",
        "nameko's HTTP entrypoint is not part of rpc-core",
    ),
    (
        "TRANSPORT_OPTIONS",
        "connection retries follow rpc-core's own policy",
    ),
    ("SERIALIZERS", "only the json serializer is supported"),
    (
        "LOGIN_METHOD",
        "the broker login uses the URI's user and password (PLAIN)",
    ),
    (
        "AUTO_DELETE_EVENT_EXCHANGES",
        "event exchanges are declared as nameko's defaults",
    ),
    (
        "DECLARE_EVENT_EXCHANGES",
        "event exchanges are declared as nameko's defaults",
    ),
    ("SERVICE_CONTAINER_CLS", "there is no Python container here"),
];

/// rpc-core's own keys, beside nameko's (nameko does not know them).
pub const RPC_CORE_KEYS: &[&str] = &["QUEUE_TYPE"];

/// The nameko keys rpc-core reads ([`FileConfig`]'s typed fields).
pub const NAMEKO_KEYS: &[&str] = &[
    "AMQP_URI",
    "max_workers",
    "rpc_exchange",
    "parent_calls_tracked",
    "HEARTBEAT",
    "serializer",
    "ACCEPT",
    "AMQP_SSL",
];

/// A loaded nameko-style config file: the typed values of the keys rpc-core
/// uses, the program's own keys, and warnings.
///
/// The typed fields are `None` when the file does not set the key (or sets
/// it to null).
#[derive(Clone)]
pub struct FileConfig {
    path: PathBuf,
    /// `AMQP_URI`: one broker or a list.
    pub amqp_uri: Option<BrokerList>,
    /// `max_workers` (0 means 10, as in nameko).
    pub max_workers: Option<usize>,
    /// `rpc_exchange`.
    pub rpc_exchange: Option<String>,
    /// `parent_calls_tracked`.
    pub parent_calls_tracked: Option<usize>,
    /// `HEARTBEAT`, in seconds.
    pub heartbeat: Option<u16>,
    /// `AMQP_SSL.ca_certs`.
    pub tls_ca_file: Option<PathBuf>,
    /// `QUEUE_TYPE` (rpc-core's key): `classic` or `quorum`.
    pub queue_type: Option<crate::config::QueueType>,
    values: Map<String, Value>,
    program_keys: Vec<String>,
    warnings: Vec<Warning>,
}

impl fmt::Debug for FileConfig {
    /// Values of other keys may hold secrets, so only their names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileConfig")
            .field("path", &self.path)
            .field("amqp_uri", &self.amqp_uri)
            .field("max_workers", &self.max_workers)
            .field("rpc_exchange", &self.rpc_exchange)
            .field("parent_calls_tracked", &self.parent_calls_tracked)
            .field("heartbeat", &self.heartbeat)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("queue_type", &self.queue_type)
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl FileConfig {
    /// Reads `path`, substituting from the process environment.
    /// `program_keys` are the extra top-level keys the caller reads itself
    /// (with [`get_text`](Self::get_text) or [`get`](Self::get)); other
    /// unknown keys become warnings.
    pub fn load(path: impl AsRef<Path>, program_keys: &[&str]) -> Result<Self, ConfigFileError> {
        Self::load_with_env(path, program_keys, &|name| std::env::var(name).ok())
    }

    /// [`load`](Self::load), with `env` giving the variables `${VAR}` reads
    /// (for tests).
    pub fn load_with_env(
        path: impl AsRef<Path>,
        program_keys: &[&str],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(path, &text, program_keys, env)
    }

    /// Reads config text; `path` is only used in messages.
    pub fn from_yaml(
        path: impl Into<PathBuf>,
        text: &str,
        program_keys: &[&str],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigFileError> {
        let path = path.into();
        let document = parse_yaml(text, env).map_err(|e| match e.key {
            None => ConfigFileError::Syntax {
                path: path.clone(),
                message: e.message,
            },
            Some(key) => ConfigFileError::Invalid {
                path: path.clone(),
                key,
                message: e.message,
            },
        })?;
        let values = match document {
            Value::Object(map) => map,
            Value::Null => {
                return Err(ConfigFileError::NotAMapping {
                    path,
                    found: "an empty document",
                })
            }
            other => {
                return Err(ConfigFileError::NotAMapping {
                    path,
                    found: kind(&other),
                })
            }
        };
        let mut file = FileConfig {
            path,
            amqp_uri: None,
            max_workers: None,
            rpc_exchange: None,
            parent_calls_tracked: None,
            heartbeat: None,
            tls_ca_file: None,
            queue_type: None,
            values: Map::new(),
            program_keys: program_keys.iter().map(|k| (*k).to_owned()).collect(),
            warnings: Vec::new(),
        };
        for (key, value) in &values {
            file.read_key(key, value)?;
        }
        file.values = values;
        file.check_tls();
        Ok(file)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keys that are not used as nameko would use them, in file order.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Logs each warning at warn level, naming the file and the key.
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!(file = %self.path.display(), key = %w.key, "config file: {}", w.message);
        }
    }

    /// Writes the file's values over `config` (the file's layer: call it on
    /// defaults, before applying flags and environment).
    pub fn apply_to(&self, config: &mut Config) {
        if let Some(uri) = &self.amqp_uri {
            config.amqp_uri = uri.clone();
        }
        if let Some(n) = self.max_workers {
            config.max_workers = n;
        }
        if let Some(x) = &self.rpc_exchange {
            config.rpc_exchange = x.clone();
        }
        if let Some(n) = self.parent_calls_tracked {
            config.parent_calls_tracked = n;
        }
        if let Some(h) = self.heartbeat {
            config.heartbeat = h;
        }
        if let Some(ca) = &self.tls_ca_file {
            config.tls_ca_file = Some(ca.clone());
        }
        if let Some(t) = self.queue_type {
            config.queue_type = t;
        }
    }

    /// [`Config::default`] with the file's values.
    pub fn config(&self) -> Config {
        let mut config = Config::default();
        self.apply_to(&mut config);
        config
    }

    /// A top-level value after substitution, whatever the key (`None` when
    /// absent). Nameko keys' values are here too, as written (the
    /// `AMQP_URI` text includes its password).
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// A single value as text, the way an environment variable would give
    /// it: strings as they are, numbers and booleans spelled out (`8000`,
    /// `0.5`, `true`). `None` when the key is absent or null. A list or a
    /// mapping is an error naming the file and the key.
    ///
    /// Programs parse this text with the same parser as the matching flag,
    /// so a file value means what the flag's value would.
    pub fn get_text(&self, key: &str) -> Result<Option<String>, ConfigFileError> {
        match self.values.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(other) => Err(self.invalid(
                key,
                format!("expected a single value, found {}", kind(other)),
            )),
        }
    }

    /// `AMQP_URI` as the text `--amqp-uri` or the environment would give:
    /// a string as it is, a YAML list joined by `;` (kombu's form), each
    /// element's own `;` written `%3B` so that it stays in its element
    /// (percent-decoding gives it back). Programs that take the URI as text
    /// layer it with this; `None` when the key is absent or null.
    pub fn amqp_uri_text(&self) -> Result<Option<String>, ConfigFileError> {
        match self.values.get("AMQP_URI") {
            Some(Value::Array(items)) => {
                let texts = items
                    .iter()
                    .map(|item| {
                        item.as_str()
                            .map(|t| t.trim().replace(';', "%3B"))
                            .ok_or_else(|| {
                                self.wrong_type("AMQP_URI", "a list of URI strings", item)
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Some(texts.join(";")))
            }
            _ => self.get_text("AMQP_URI"),
        }
    }

    /// A value deserialized as `T` (`None` when absent or null); a value of
    /// the wrong shape is an error naming the file and the key.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ConfigFileError> {
        match self.values.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => T::deserialize(v)
                .map(Some)
                .map_err(|e| self.invalid(key, e.to_string())),
        }
    }

    /// An error about `key` of this file, for a program's own checks of its
    /// keys.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigFileError {
        ConfigFileError::Invalid {
            path: self.path.clone(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn warn(&mut self, key: &str, kind: WarningKind, message: impl Into<String>) {
        self.warnings.push(Warning {
            key: key.to_owned(),
            kind,
            message: message.into(),
        });
    }

    fn read_key(&mut self, key: &str, value: &Value) -> Result<(), ConfigFileError> {
        if let Some((_, why)) = IGNORED_KEYS.iter().find(|(k, _)| *k == key) {
            self.warn(
                key,
                WarningKind::Ignored,
                format!("known to nameko, ignored here: {why}"),
            );
            return Ok(());
        }
        let known = NAMEKO_KEYS.contains(&key)
            || RPC_CORE_KEYS.contains(&key)
            || self.program_keys.iter().any(|k| k == key);
        if !known {
            let hint = self.suggestion(key);
            let message = match &hint {
                Some(k) => format!("unknown key, ignored (did you mean {k}?)"),
                None => "unknown key, ignored".to_owned(),
            };
            self.warn(key, WarningKind::Unknown, message);
            return Ok(());
        }
        if value.is_null() {
            if key != "AMQP_SSL" {
                self.warn(
                    key,
                    WarningKind::Null,
                    "the value is null (empty, ~, or ${VAR} with VAR unset and no default), \
                     so the default applies",
                );
            }
            return Ok(());
        }
        match key {
            "AMQP_URI" => {
                // BrokerList's errors never contain a password.
                let list = match value {
                    Value::String(text) => text.parse::<BrokerList>(),
                    Value::Array(items) => {
                        let texts = items
                            .iter()
                            .map(|item| {
                                item.as_str().ok_or_else(|| {
                                    self.wrong_type(key, "a list of URI strings", item)
                                })
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        BrokerList::from_uris(&texts)
                    }
                    other => {
                        return Err(self.wrong_type(key, "a URI string or a list of them", other))
                    }
                };
                self.amqp_uri = Some(list.map_err(|e| self.invalid(key, e.to_string()))?);
            }
            "QUEUE_TYPE" => {
                let text = value
                    .as_str()
                    .ok_or_else(|| self.wrong_type(key, "classic or quorum", value))?;
                self.queue_type = Some(text.parse().map_err(|e: String| self.invalid(key, e))?);
            }
            "max_workers" => self.max_workers = Some(self.count(key, value)?),
            "parent_calls_tracked" => self.parent_calls_tracked = Some(self.count(key, value)?),
            "rpc_exchange" => {
                let name = value
                    .as_str()
                    .ok_or_else(|| self.wrong_type(key, "an exchange name", value))?;
                if name.is_empty() {
                    return Err(self.invalid(key, "the exchange name is empty"));
                }
                self.rpc_exchange = Some(name.to_owned());
            }
            "HEARTBEAT" => {
                let secs = whole_number(value)
                    .filter(|n| u16::try_from(*n).is_ok())
                    .ok_or_else(|| self.wrong_type(key, "whole seconds, 0 to 65535", value))?;
                self.heartbeat = Some(secs as u16);
            }
            "serializer" => {
                let name = value
                    .as_str()
                    .ok_or_else(|| self.wrong_type(key, "a serializer name", value))?;
                if name != "json" {
                    return Err(self.invalid(
                        key,
                        format!("{name:?} is not supported; rpc-core speaks json only (nameko's default)"),
                    ));
                }
            }
            "ACCEPT" => self.check_accept(value)?,
            "AMQP_SSL" => self.read_ssl(value)?,
            _ => {} // a program key: kept in `values`
        }
        Ok(())
    }

    fn check_accept(&self, value: &Value) -> Result<(), ConfigFileError> {
        const SUPPORTED: &str = "json (or application/json)";
        let items = value.as_array().ok_or_else(|| {
            self.invalid(
                "ACCEPT",
                format!("expected a list such as [json], found {}", kind(value)),
            )
        })?;
        if items.is_empty() {
            return Err(self.invalid(
                "ACCEPT",
                format!("an empty list accepts nothing; rpc-core supports {SUPPORTED}"),
            ));
        }
        for item in items {
            match item.as_str() {
                Some("json" | "application/json") => {}
                Some(other) => {
                    return Err(self.invalid(
                        "ACCEPT",
                        format!("{other:?} is not supported; rpc-core supports {SUPPORTED} only"),
                    ))
                }
                None => {
                    return Err(self.invalid(
                        "ACCEPT",
                        format!("expected serializer names, found {}", kind(item)),
                    ))
                }
            }
        }
        Ok(())
    }

    fn read_ssl(&mut self, value: &Value) -> Result<(), ConfigFileError> {
        match value {
            // `true` asks for TLS, which the URI's scheme decides here; see
            // `check_tls`.
            Value::Null | Value::Bool(_) => {}
            Value::Object(options) => {
                for (name, option) in options {
                    match name.as_str() {
                        "ca_certs" => {
                            let file = option.as_str().ok_or_else(|| {
                                self.invalid(
                                    "AMQP_SSL.ca_certs",
                                    format!("expected a file name, found {}", kind(option)),
                                )
                            })?;
                            self.tls_ca_file = Some(PathBuf::from(file));
                        }
                        other => self.warn(
                            "AMQP_SSL",
                            WarningKind::Partial,
                            format!(
                                "{other} is ignored: only ca_certs is used (TLS is on for amqps:// URIs, \
                                 with the system's trust store plus ca_certs)"
                            ),
                        ),
                    }
                }
            }
            other => {
                return Err(self.invalid(
                    "AMQP_SSL",
                    format!(
                        "expected true, false or a mapping of ssl options, found {}",
                        kind(other)
                    ),
                ))
            }
        }
        Ok(())
    }

    /// nameko uses TLS whenever AMQP_SSL is set; rpc-core only for amqps://.
    fn check_tls(&mut self) {
        let wants_tls = match self.values.get("AMQP_SSL") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Object(m)) => !m.is_empty(),
            Some(_) => true,
        };
        if wants_tls && self.amqp_uri.as_ref().is_some_and(BrokerList::any_plain) {
            self.warn(
                "AMQP_SSL",
                WarningKind::Partial,
                "nameko would use TLS with this plain amqp:// AMQP_URI; rpc-core uses TLS only \
                 for amqps:// URIs, so change AMQP_URI to amqps://",
            );
        }
    }

    fn count(&self, key: &str, value: &Value) -> Result<usize, ConfigFileError> {
        value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.wrong_type(key, "a whole number, 0 or more", value))
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> ConfigFileError {
        self.invalid(key, format!("expected {expected}, found {}", kind(found)))
    }

    fn suggestion(&self, key: &str) -> Option<String> {
        NAMEKO_KEYS
            .iter()
            .copied()
            .chain(RPC_CORE_KEYS.iter().copied())
            .chain(IGNORED_KEYS.iter().map(|(k, _)| *k))
            .chain(self.program_keys.iter().map(String::as_str))
            .find(|k| k.eq_ignore_ascii_case(key))
            .map(str::to_owned)
    }
}

/// A number with no fractional part (YAML `30` or `30.0`).
fn whole_number(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64).then_some(f as u64)
}

/// How a value is described in messages (never the value itself: it may be
/// a secret).
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal number",
        Value::Number(n) if n.as_i64().is_some_and(|i| i < 0) => "a negative number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn parse(text: &str, vars: &[(&str, &str)]) -> Value {
        parse_yaml(text, &env(vars)).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn one(text: &str, vars: &[(&str, &str)]) -> Value {
        parse(&format!("k: {text}"), vars)["k"].clone()
    }

    fn file(text: &str, keys: &[&str], vars: &[(&str, &str)]) -> FileConfig {
        FileConfig::from_yaml("test.yaml", text, keys, &env(vars))
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn file_err(text: &str) -> String {
        FileConfig::from_yaml("test.yaml", text, &[], &env(&[]))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn amqp_uri_takes_a_semicolon_list_or_a_yaml_list() {
        let f = file(
            "AMQP_URI: amqp://u:pw1@a:1/x; amqp://u:pw2@b:2/ ;\nQUEUE_TYPE: quorum\n",
            &[],
            &[],
        );
        let config = f.config();
        assert_eq!(config.amqp_uri.endpoint(), "a:1, b:2");
        assert_eq!(config.queue_type, crate::config::QueueType::Quorum);
        let f = file(
            "AMQP_URI:\n  - amqp://u:p;w@a:1/x\n  - ' amqp://u:pw2@b:2/ '\n",
            &[],
            &[],
        );
        let list = f.amqp_uri.clone().unwrap();
        assert_eq!(list.endpoint(), "a:1, b:2");
        assert!(!format!("{f:?} {list}").contains("p;w"));
        // The text a program layers keeps the `;` inside its element.
        let text = f.amqp_uri_text().unwrap().unwrap();
        assert_eq!(text.parse::<BrokerList>().unwrap(), list);
        // Not a list of strings, or a bad element: the key is named, no
        // password shown.
        let msg = file_err("AMQP_URI: [amqp://a/, 5]\n");
        assert!(
            msg.contains("AMQP_URI") && msg.contains("list of URI strings"),
            "{msg}"
        );
        let msg = file_err("AMQP_URI:\n  - amqp://a/\n  - amqp://u:hunter2@b:bad/\n");
        assert!(
            msg.contains("element 2 of 2") && !msg.contains("hunter2"),
            "{msg}"
        );
        let msg = file_err("AMQP_URI: amqp://u:hun;ter2@b/\n");
        assert!(!msg.contains("hun") && !msg.contains("ter2"), "{msg}");
        assert!(file_err("AMQP_URI: []\n").contains("empty"));
        assert!(file_err("QUEUE_TYPE: stream\n").contains("classic or quorum"));
    }

    #[test]
    fn substitution_reparses_as_yaml() {
        assert_eq!(one("${PORT:5672}", &[]), json!(5672));
        assert_eq!(one("${PORT:5672}", &[("PORT", "5999")]), json!(5999));
        assert_eq!(one("${PORT}", &[("PORT", "0x10")]), json!(16));
        assert_eq!(one("${ON:yes}", &[]), json!(true));
        assert_eq!(one("${L}", &[("L", "[1, two]")]), json!([1, "two"]));
        assert_eq!(one("${M}", &[("M", "{a: 1}")]), json!({"a": 1}));
        assert_eq!(one("${M}", &[("M", "a: ${N:2}")]), json!({"a": 2}));
        assert_eq!(one("${S:foo # comment}", &[]), json!("${S:foo"));
        assert_eq!(one("${X:a:b}", &[]), json!("a:b"));
        // nameko's pattern reads " B" as the default (then YAML trims it).
        assert_eq!(one("${A B}", &[]), json!("B"));
    }

    #[test]
    fn several_references_or_text_stay_a_string() {
        let v = one(
            "amqp://${U:guest}:${P:pw}@${H:localhost}:${PORT:5672}/",
            &[("H", "rabbit")],
        );
        assert_eq!(v, json!("amqp://guest:pw@rabbit:5672/"));
        assert_eq!(one("plain ${N:5} text", &[]), json!("plain 5 text"));
        // ...unless the whole result still reads as another type.
        assert_eq!(one("${A:1}${B:2}", &[]), json!(12));
    }

    #[test]
    fn unset_without_default_is_null_or_removed() {
        assert_eq!(one("${UNSET}", &[]), Value::Null);
        assert_eq!(one("${UNSET:}", &[]), Value::Null);
        assert_eq!(one("${SET}", &[("SET", "")]), Value::Null);
        assert_eq!(one("amqp://${UNSET}@h/", &[]), json!("amqp://@h/"));
    }

    #[test]
    fn quoted_scalars_are_left_alone_unless_tagged() {
        assert_eq!(one("\"${PORT:5672}\"", &[]), json!("${PORT:5672}"));
        assert_eq!(one("'${PORT:5672}'", &[]), json!("${PORT:5672}"));
        assert_eq!(one("!env_var \"${PORT:5672}\"", &[]), json!(5672));
        assert_eq!(one("!raw_env_var \"${PORT:5672}\"", &[]), json!("5672"));
        assert_eq!(one("!raw_env_var ${PORT:5672}", &[]), json!("5672"));
        assert_eq!(one("!raw_env_var ${T:true}", &[]), json!("true"));
        // Nothing to substitute: the text as it is, not parsed again.
        assert_eq!(one("!env_var 5672", &[]), json!("5672"));
        assert_eq!(one("|\n  ${X:1}\n", &[]), json!("${X:1}\n"));
    }

    #[test]
    fn keys_are_substituted_too() {
        assert_eq!(parse("${K:name}: 1", &[]), json!({"name": 1}));
    }

    #[test]
    fn nested_and_self_referencing_variables_are_errors() {
        let err = parse_yaml("k: ${A:${B}}", &env(&[])).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("k"));
        assert!(err.message.contains("nested"), "{err}");
        // A variable holding its own reference is left as it is (nameko
        // returns a value that did not change)...
        assert_eq!(parse("k: ${X}", &[("X", "${X}")]), json!({"k": "${X}"}));
        // ...but two that refer to each other never end.
        let err = parse_yaml("k: ${X}", &env(&[("X", "${Y}"), ("Y", "${X}")])).unwrap_err();
        assert!(err.message.contains("does not end"), "{err}");
        let err = parse_yaml("k: ${X}", &env(&[("X", "a: b: c")])).unwrap_err();
        assert!(err.message.contains("not valid YAML"), "{err}");
        assert!(!err.to_string().contains("a: b: c"), "{err}");
    }

    #[test]
    fn yaml_1_1_scalars_as_pyyaml() {
        for (text, want) in [
            ("yes", json!(true)),
            ("On", json!(true)),
            ("OFF", json!(false)),
            ("no", json!(false)),
            ("y", json!("y")),
            ("017", json!(15)),
            ("0o17", json!("0o17")),
            ("0x1F", json!(31)),
            ("0b101", json!(5)),
            ("1_000", json!(1000)),
            ("-42", json!(-42)),
            ("1:30", json!(90)),
            ("1.5", json!(1.5)),
            ("1e5", json!("1e5")),
            ("1.0e+2", json!(100.0)),
            ("1:30.5", json!(90.5)),
            (".inf", json!(".inf")),
            ("-.Inf", json!("-.inf")),
            (".NaN", json!(".nan")),
            ("~", Value::Null),
            ("null", Value::Null),
            ("", Value::Null),
            ("2001-12-14", json!("2001-12-14")),
            ("!!str 12", json!("12")),
            ("!!int \"12\"", json!(12)),
            ("!!float 1", json!(1.0)),
            ("\"12\"", json!("12")),
            ("99999999999999999999999", json!("99999999999999999999999")),
        ] {
            assert_eq!(one(text, &[]), want, "{text}");
        }
    }

    #[test]
    fn anchors_merges_and_duplicates() {
        let v = parse(
            "base: &b {a: 1, b: 2}\nother: &o {b: 3, c: 4}\nm:\n  <<: [*b, *o]\n  a: 9\nd: 1\nd: 2\nalias: *b\n",
            &[],
        );
        assert_eq!(v["m"], json!({"b": 2, "c": 4, "a": 9}));
        assert_eq!(v["d"], json!(2));
        assert_eq!(v["alias"], json!({"a": 1, "b": 2}));
    }

    #[test]
    fn syntax_errors_and_documents() {
        assert_eq!(parse("", &[]), Value::Null);
        let err = parse_yaml("a: [1, 2", &env(&[])).unwrap_err();
        assert_eq!(err.key, None);
        assert!(err.message.contains("line"), "{err}");
        let err = parse_yaml("a: 1\n---\nb: 2\n", &env(&[])).unwrap_err();
        assert!(err.message.contains("single document"), "{err}");
        let err = parse_yaml("a: !python/object x", &env(&[])).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("a"));
    }

    #[test]
    fn typed_nameko_keys() {
        let f = file(
            "AMQP_URI: pyamqp://app:s3cret@${H:localhost}:${P:5672}/%2F\n\
             max_workers: ${W:4}\nrpc_exchange: rpc-x\nparent_calls_tracked: 3\n\
             HEARTBEAT: 30.0\nserializer: json\nACCEPT: [json, application/json]\n",
            &[],
            &[("H", "rabbit"), ("P", "5673")],
        );
        assert!(f.warnings().is_empty(), "{:?}", f.warnings());
        let c = f.config();
        assert_eq!(c.amqp_uri.endpoint(), "rabbit:5673");
        assert_eq!(c.amqp_uri.vhost(), "/");
        assert_eq!(c.max_workers, 4);
        assert_eq!(c.rpc_exchange, "rpc-x");
        assert_eq!(c.parent_calls_tracked, 3);
        assert_eq!(c.heartbeat, 30);
        assert!(!format!("{f:?}").contains("s3cret"));
        // The text, password and all, for a program to layer.
        assert_eq!(
            f.get_text("AMQP_URI").unwrap().as_deref(),
            Some("pyamqp://app:s3cret@rabbit:5673/%2F")
        );
    }

    #[test]
    fn wrong_types_name_file_and_key() {
        for (text, key, needle) in [
            ("max_workers: \"10\"", "max_workers", "found a string"),
            ("max_workers: -1", "max_workers", "negative"),
            ("max_workers: yes", "max_workers", "boolean"),
            ("HEARTBEAT: 70000", "HEARTBEAT", "0 to 65535"),
            ("HEARTBEAT: 1.5", "HEARTBEAT", "decimal"),
            ("rpc_exchange: [a]", "rpc_exchange", "a list"),
            (
                "parent_calls_tracked: {a: 1}",
                "parent_calls_tracked",
                "a mapping",
            ),
            ("AMQP_URI: 5672", "AMQP_URI", "a number"),
            ("AMQP_URI: http://h", "AMQP_URI", "scheme"),
            ("AMQP_SSL: 1", "AMQP_SSL", "a number"),
        ] {
            let err = FileConfig::from_yaml("/etc/svc.yaml", text, &[], &env(&[])).unwrap_err();
            assert_eq!(err.key(), Some(key), "{text}: {err}");
            let msg = err.to_string();
            assert!(msg.contains("/etc/svc.yaml") && msg.contains(key), "{msg}");
            assert!(msg.contains(needle), "{text}: {msg}");
        }
    }

    #[test]
    fn passwords_stay_out_of_errors() {
        let msg = file_err("AMQP_URI: amqp://app:hunter2@h:notaport/");
        assert!(
            msg.contains("AMQP_URI") && !msg.contains("hunter2"),
            "{msg}"
        );
    }

    #[test]
    fn only_json_is_spoken() {
        let msg = file_err("serializer: pickle");
        assert!(
            msg.contains("\"pickle\" is not supported") && msg.contains("json"),
            "{msg}"
        );
        let msg = file_err("ACCEPT: [json, pickle]");
        assert!(
            msg.contains("\"pickle\"") && msg.contains("json (or application/json)"),
            "{msg}"
        );
        assert!(file_err("ACCEPT: json").contains("expected a list"));
        assert!(file_err("ACCEPT: []").contains("accepts nothing"));
        assert!(file_err("ACCEPT: [1]").contains("a number"));
    }

    #[test]
    fn ignored_unknown_and_null_keys_are_warned() {
        let f = file(
            "LOGGING: {version: 1}\nWEB_SERVER_ADDRESS: 0.0.0.0:8000\nFROB: 1\nMAX_WORKERS: 3\n\
             AMQP_URI: ${UNSET_URI}\nPERSON_DB: x.db\n",
            &["PERSON_DB"],
            &[],
        );
        let got: Vec<(&str, WarningKind)> = f
            .warnings()
            .iter()
            .map(|w| (w.key.as_str(), w.kind))
            .collect();
        assert_eq!(
            got,
            [
                ("LOGGING", WarningKind::Ignored),
                ("WEB_SERVER_ADDRESS", WarningKind::Ignored),
                ("FROB", WarningKind::Unknown),
                ("MAX_WORKERS", WarningKind::Unknown),
                ("AMQP_URI", WarningKind::Null),
            ]
        );
        assert!(f.warnings()[3]
            .message
            .contains("did you mean max_workers?"));
        assert!(f.amqp_uri.is_none());
        assert_eq!(f.config().amqp_uri.endpoint(), "localhost:5672");
    }

    #[test]
    fn amqp_ssl_gives_the_ca_file() {
        let f = file(
            "AMQP_URI: amqps://h/\nAMQP_SSL: {ca_certs: /etc/ca.pem, certfile: c.pem}\n",
            &[],
            &[],
        );
        assert_eq!(f.tls_ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(
            f.config().tls_ca_file.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );
        assert_eq!(f.warnings().len(), 1, "{:?}", f.warnings());
        assert!(f.warnings()[0].message.contains("certfile"));
        let f = file("AMQP_URI: amqp://h/\nAMQP_SSL: true\n", &[], &[]);
        assert!(
            f.warnings()[0].message.contains("amqps://"),
            "{:?}",
            f.warnings()
        );
        assert!(file("AMQP_SSL: false\n", &[], &[]).warnings().is_empty());
    }

    #[test]
    fn program_keys() {
        let f = file(
            "PORT: 8000\nRATE: 0.5\nFLAG: yes\nNAME: svc\nLIST: [1]\nNOTHING: ~\nON: 1\n",
            &["PORT", "RATE", "FLAG", "NAME", "LIST", "NOTHING", "true"],
            &[],
        );
        assert_eq!(f.get_text("PORT").unwrap().as_deref(), Some("8000"));
        assert_eq!(f.get_text("RATE").unwrap().as_deref(), Some("0.5"));
        assert_eq!(f.get_text("FLAG").unwrap().as_deref(), Some("true"));
        // A plain `ON` key is the boolean true to PyYAML, as to us.
        assert_eq!(f.get_text("true").unwrap().as_deref(), Some("1"));
        assert_eq!(f.get_text("NAME").unwrap().as_deref(), Some("svc"));
        assert_eq!(f.get_text("ABSENT").unwrap(), None);
        assert_eq!(f.get_text("NOTHING").unwrap(), None);
        let err = f.get_text("LIST").unwrap_err();
        assert_eq!(err.key(), Some("LIST"));
        assert_eq!(f.get::<Vec<u8>>("LIST").unwrap(), Some(vec![1]));
        assert_eq!(f.get::<u16>("PORT").unwrap(), Some(8000));
        assert!(f
            .get::<u8>("PORT")
            .unwrap_err()
            .to_string()
            .contains("PORT"));
    }

    #[test]
    fn bad_documents() {
        assert!(file_err("").contains("empty document"));
        assert!(file_err("[1, 2]").contains("found a list"));
        let msg = file_err("a: [1");
        assert!(
            msg.contains("test.yaml") && msg.contains("invalid YAML"),
            "{msg}"
        );
        let err = FileConfig::load("/nonexistent/dir/x.yaml", &[]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dir/x.yaml"), "{err}");
    }
}
