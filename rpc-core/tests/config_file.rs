//! Loading a nameko deployment's config file (config/nameko-example.yaml),
//! and reading config files the same way the real nameko 2.14.1 does:
//! `nameko show-config` prints the YAML after substitution, and rpc-core
//! must read the same document from the same file and environment.

use rpc_core::config_file::{parse_yaml, FileConfig, WarningKind};
use rpc_core::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/nameko-example.yaml")
}

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| vars.get(name).cloned()
}

/// `nameko show-config --config FILE` with exactly `vars` in the
/// environment, parsed back (it prints plain YAML: nothing left to
/// substitute, and quoted where a string would read as something else).
fn nameko_reads(file: &Path, vars: &[(&str, &str)]) -> Value {
    let out = Command::new(test_support::python::nameko())
        .args(["show-config", "--config"])
        .arg(file)
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("nameko runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stdout.starts_with("Error:"),
        "nameko show-config failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_yaml(&stdout, &|_| None).unwrap_or_else(|e| panic!("nameko's output: {e}\n{stdout}"))
}

fn write_temp(name: &str, text: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-{name}", test_support::unique_name("config")));
    std::fs::write(&path, text).expect("write the config file");
    path
}

#[test]
fn a_nameko_deployment_config_loads() {
    let vars = [
        ("RABBIT_HOST", "rabbit.internal"),
        ("RABBIT_PASSWORD", "s3cret"),
        ("RABBIT_VHOST", "prod"),
        ("MAX_WORKERS", "25"),
    ];
    let file = FileConfig::load_with_env(example(), &[], &env_of(&vars)).unwrap();
    let uri = file.amqp_uri.as_ref().expect("AMQP_URI");
    assert_eq!(uri.endpoint(), "rabbit.internal:5672");
    assert_eq!(uri.first().username(), "guest");
    assert_eq!(uri.vhost(), "prod");
    assert_eq!(file.max_workers, Some(25));
    assert_eq!(file.rpc_exchange.as_deref(), Some("nameko-rpc"));
    assert_eq!(file.parent_calls_tracked, Some(10));
    assert_eq!(file.heartbeat, Some(60));

    let config = file.config();
    assert_eq!(config.max_workers, 25);
    assert_eq!(config.amqp_uri.vhost(), "prod");

    // Everything nameko-only is reported once, by name; nothing is unknown.
    let warned: Vec<(&str, WarningKind)> = file
        .warnings()
        .iter()
        .map(|w| (w.key.as_str(), w.kind))
        .collect();
    assert_eq!(
        warned,
        [
            ("WEB_SERVER_ADDRESS", WarningKind::Ignored),
            ("TRANSPORT_OPTIONS", WarningKind::Ignored),
            ("LOGGING", WarningKind::Ignored),
        ]
    );
    // The password stays out of what a program might print.
    assert!(!format!("{file:?}").contains("s3cret"));
    for w in file.warnings() {
        assert!(!w.to_string().contains("s3cret"), "{w}");
    }
}

#[test]
fn the_example_without_environment_gives_nameko_defaults() {
    let file = FileConfig::load_with_env(example(), &[], &|_| None).unwrap();
    let config = file.config();
    assert_eq!(config.amqp_uri.endpoint(), "localhost:5672");
    assert_eq!(config.amqp_uri.vhost(), "/");
    assert_eq!(config.rpc_exchange, "nameko-rpc");
    assert_eq!(config.max_workers, 10);
    assert_eq!(config.heartbeat, 60);
}

#[test]
fn nameko_and_rpc_core_read_the_example_alike() {
    for vars in [
        &[][..],
        &[
            ("RABBIT_HOST", "rabbit.internal"),
            ("RABBIT_PORT", "5673"),
            ("RABBIT_PASSWORD", "s3cret"),
            ("MAX_WORKERS", "25"),
            ("AMQP_HEARTBEAT", "15"),
            ("LOG_LEVEL", "DEBUG"),
        ][..],
    ] {
        let ours = parse_yaml(&std::fs::read_to_string(example()).unwrap(), &env_of(vars)).unwrap();
        let theirs = nameko_reads(&example(), vars);
        assert_eq!(ours, theirs, "with {vars:?}");
        // And the typed keys mean what nameko's values say.
        let file = FileConfig::load_with_env(example(), &[], &env_of(vars)).unwrap();
        assert_eq!(
            file.get_text("AMQP_URI").unwrap().as_deref(),
            theirs["AMQP_URI"].as_str()
        );
        assert_eq!(
            file.max_workers.map(|n| n as u64),
            theirs["max_workers"].as_u64()
        );
        assert_eq!(file.heartbeat.map(u64::from), theirs["HEARTBEAT"].as_u64());
        assert_eq!(
            file.rpc_exchange.as_deref(),
            theirs["rpc_exchange"].as_str()
        );
    }
}

/// The corners of nameko's substitution and PyYAML's YAML 1.1 typing.
const CORNERS: &str = r#"
unset: ${UNSET_X}
unset_empty_default: ${UNSET_X:}
quoted: "${PORT:5672}"
single_quoted: '${PORT:5672}'
port: ${PORT:5672}
tagged: !env_var "${PORT:5672}"
raw: !raw_env_var "${PORT:5672}"
raw_plain: !raw_env_var ${ON:yes}
text_around: amqp://${UNSET_X}:${PORT:5672}/
colon_default: ${UNSET_X:a:b}
list: ${LIST:[1, 2]}
map: ${MAP}
from_env_reparsed: ${HAS}
comment_cuts: ${X:foo # bar}
${KEYX:kk}: 1
two: ${A:1}${B:2}
bools: [yes, No, on, OFF, true, y, n]
octal: 017
not_octal: 0o17
underscores: 1_000
sexagesimal: 1:30
hex: 0x1F
float: 1.5
not_float: 1e5
float_exp: 1.0e+2
nothing: ~
empty:
date: 2001-12-14
big: 99999999999999999999999
anchor: &a {x: 1, y: 2}
merged:
  <<: *a
  y: 3
"#;

#[test]
fn nameko_and_rpc_core_agree_on_the_corners() {
    let file = write_temp("corners.yaml", CORNERS);
    let vars = [
        ("MAP", "{a: 1}"),
        ("HAS", "a: ${PORT:9}"),
        ("ON", "off"),
        ("PORT", "5999"),
    ];
    let ours = parse_yaml(CORNERS, &env_of(&vars)).unwrap();
    let theirs = nameko_reads(&file, &vars);
    assert_eq!(ours, theirs);
    // A few spelled out, so a change on both sides is noticed too.
    assert_eq!(ours["unset"], Value::Null);
    assert_eq!(ours["quoted"], json!("${PORT:5672}"));
    assert_eq!(ours["port"], json!(5999));
    assert_eq!(ours["raw"], json!("5999"));
    assert_eq!(ours["text_around"], json!("amqp://:5999/"));
    assert_eq!(ours["from_env_reparsed"], json!({"a": 5999}));
    assert_eq!(ours["kk"], json!(1));
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_config_with_unknown_and_program_keys() {
    let file = write_temp(
        "program.yaml",
        "AMQP_URI: amqp://localhost\nPERSON_DB: /data/person.db\nMAX_WORKRES: 4\nmax_Workers: 5\n",
    );
    let loaded = FileConfig::load(&file, &["PERSON_DB"]).unwrap();
    assert_eq!(
        loaded.get_text("PERSON_DB").unwrap().as_deref(),
        Some("/data/person.db")
    );
    let unknown: Vec<(&str, &str)> = loaded
        .warnings()
        .iter()
        .map(|w| (w.key.as_str(), w.message.as_str()))
        .collect();
    assert_eq!(
        unknown,
        [
            ("MAX_WORKRES", "unknown key, ignored"),
            (
                "max_Workers",
                "unknown key, ignored (did you mean max_workers?)"
            ),
        ]
    );
    assert_eq!(loaded.max_workers, None);
    let _ = std::fs::remove_file(file);
}

#[test]
fn bad_files_are_errors_naming_file_and_key() {
    let cases = [
        ("serializer: pickle\n", "serializer", "not supported"),
        ("ACCEPT: [json, msgpack]\n", "ACCEPT", "\"msgpack\""),
        ("max_workers: many\n", "max_workers", "found a string"),
        ("HEARTBEAT: ${HB:[1]}\n", "HEARTBEAT", "found a list"),
    ];
    for (text, key, needle) in cases {
        let file = write_temp("bad.yaml", text);
        let err = FileConfig::load(&file, &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&file.display().to_string()) && msg.contains(key) && msg.contains(needle),
            "{text}: {msg}"
        );
        let _ = std::fs::remove_file(file);
    }
    let file = write_temp("syntax.yaml", "AMQP_URI: [amqp://h\n");
    let msg = FileConfig::load(&file, &[]).unwrap_err().to_string();
    assert!(
        msg.contains("invalid YAML") && msg.contains("line"),
        "{msg}"
    );
    let _ = std::fs::remove_file(file);
}
