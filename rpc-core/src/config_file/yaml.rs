//! YAML 1.1 as PyYAML's `safe_load` reads it, with nameko 2.14.1's
//! `${VAR}` / `${VAR:default}` substitution (see the [parent module's
//! docs](super) for the rules). Kept apart from the config keys: this is
//! the loader, the parent is what the keys mean.

use regex::{Captures, Regex};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use std::sync::LazyLock;
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML document that cannot be read (see [`parse_yaml`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct YamlError {
    /// Where in the document, dotted (`LOGGING.handlers`, `ACCEPT[0]`);
    /// `None` for a syntax error, whose message gives line and column.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Parses one YAML document as nameko's loader does (PyYAML `safe_load`
/// plus nameko's `${VAR}` substitution, see the [module docs](crate::config_file)), with
/// `env` giving the variables. An empty document is `null`; mapping keys
/// that are not strings are written as JSON (`1`, `true`, `null`).
pub fn parse_yaml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Value, YamlError> {
    Loader { env }.load(text, 0)
}

// --- PyYAML's implicit resolvers (YAML 1.1), verbatim from resolver.py ---

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| unreachable!("a fixed pattern compiles: {e}"))
}

static BOOL: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$")
});
static FLOAT: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
    )
});
static INT: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$",
    )
});
static MERGE: LazyLock<Regex> = LazyLock::new(|| regex(r"^(?:<<)$"));
static NULL: LazyLock<Regex> = LazyLock::new(|| regex(r"^(?:~|null|Null|NULL|)$"));
static TIMESTAMP: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$",
    )
});
static VALUE: LazyLock<Regex> = LazyLock::new(|| regex(r"^(?:=)$"));

// --- nameko 2.14.1's patterns (nameko/cli/main.py, without `regex`) ---

static ENV_VAR: LazyLock<Regex> = LazyLock::new(|| regex(r"\$\{([^}:\s]+):?([^}]+)?\}"));
static IMPLICIT_ENV_VAR: LazyLock<Regex> = LazyLock::new(|| regex(r"^.*\$\{.*\}.*"));
static RECURSIVE_ENV_VAR: LazyLock<Regex> = LazyLock::new(|| regex(r"^\$\{([^}]+)?\}([^$}]+)?\}"));

/// How deep `${VAR}` values may expand into further `${VAR}`s before the
/// loader gives up (nameko would recurse until Python's stack runs out).
const MAX_SUBSTITUTION_DEPTH: usize = 16;
/// How deeply collections may nest.
const MAX_NESTING: usize = 128;

const YAML_TAG: &str = "tag:yaml.org,2002:";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolved {
    Bool,
    Float,
    Int,
    Merge,
    Null,
    Timestamp,
    Value,
    EnvVar,
    Str,
}

/// PyYAML's `Resolver.resolve` for an untagged plain scalar: the resolvers
/// registered for its first character, in registration order, then the
/// ones registered for any character (nameko's `!env_var`).
fn resolve_plain(value: &str) -> Resolved {
    let first = value.chars().next();
    let candidates: &[(Resolved, &str, &LazyLock<Regex>)] = &[
        (Resolved::Bool, "yYnNtTfFoO", &BOOL),
        (Resolved::Float, "-+0123456789.", &FLOAT),
        (Resolved::Int, "-+0123456789", &INT),
        (Resolved::Merge, "<", &MERGE),
        (Resolved::Null, "~nN", &NULL),
        (Resolved::Timestamp, "0123456789", &TIMESTAMP),
        (Resolved::Value, "=", &VALUE),
    ];
    match first {
        None => return Resolved::Null,
        Some(c) => {
            for (resolved, firsts, re) in candidates {
                if firsts.contains(c) && re.is_match(value) {
                    return *resolved;
                }
            }
        }
    }
    if IMPLICIT_ENV_VAR.is_match(value) {
        Resolved::EnvVar
    } else {
        Resolved::Str
    }
}

/// PyYAML's `construct_yaml_int`.
fn construct_int(text: &str) -> Option<Value> {
    let cleaned = text.replace('_', "");
    let (negative, digits) = match cleaned.as_bytes().first()? {
        b'-' => (true, &cleaned[1..]),
        b'+' => (false, &cleaned[1..]),
        _ => (false, cleaned.as_str()),
    };
    let magnitude: i128 = if digits == "0" {
        0
    } else if let Some(bin) = digits.strip_prefix("0b") {
        i128::from_str_radix(bin, 2).ok()?
    } else if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()?
    } else if digits.starts_with('0') {
        i128::from_str_radix(digits, 8).ok()?
    } else if digits.contains(':') {
        let mut total: i128 = 0;
        for part in digits.split(':') {
            total = total
                .checked_mul(60)?
                .checked_add(part.parse::<i128>().ok()?)?;
        }
        total
    } else {
        digits.parse().ok()?
    };
    let n = if negative { -magnitude } else { magnitude };
    if let Ok(i) = i64::try_from(n) {
        Some(Value::from(i))
    } else if let Ok(u) = u64::try_from(n) {
        Some(Value::from(u))
    } else {
        // Python's ints are unbounded; JSON's are not. Keep the text.
        Some(Value::String(text.to_owned()))
    }
}

/// PyYAML's `construct_yaml_float`.
fn construct_float(text: &str) -> Option<Value> {
    let cleaned = text.replace('_', "").to_lowercase();
    let (negative, body) = match cleaned.as_bytes().first()? {
        b'-' => (true, &cleaned[1..]),
        b'+' => (false, &cleaned[1..]),
        _ => (false, cleaned.as_str()),
    };
    let special = |s: &str| Some(Value::String(s.to_owned()));
    if body == ".inf" {
        return special(if negative { "-.inf" } else { ".inf" });
    }
    if body == ".nan" {
        return special(".nan");
    }
    let magnitude: f64 = if body.contains(':') {
        let mut total = 0.0;
        for part in body.split(':') {
            total = total * 60.0 + part.parse::<f64>().ok()?;
        }
        total
    } else {
        body.parse().ok()?
    };
    let f = if negative { -magnitude } else { magnitude };
    Number::from_f64(f).map(Value::Number).or_else(|| {
        special(if f.is_nan() {
            ".nan"
        } else if f > 0.0 {
            ".inf"
        } else {
            "-.inf"
        })
    })
}

/// PyYAML's `construct_yaml_bool`.
fn construct_bool(text: &str) -> Option<Value> {
    match text.to_lowercase().as_str() {
        "yes" | "true" | "on" => Some(Value::Bool(true)),
        "no" | "false" | "off" => Some(Value::Bool(false)),
        _ => None,
    }
}

/// A composed YAML node (PyYAML's composer output), before construction.
#[derive(Clone, Debug)]
enum Node {
    Scalar {
        value: String,
        plain: bool,
        tag: Option<String>,
    },
    Seq {
        items: Vec<Node>,
        tag: Option<String>,
    },
    Map {
        pairs: Vec<(Node, Node)>,
        tag: Option<String>,
    },
}

fn tag_name(tag: Option<Tag>) -> Option<String> {
    let tag = tag?;
    Some(if tag.handle == "!!" {
        format!("{YAML_TAG}{}", tag.suffix)
    } else {
        format!("{}{}", tag.handle, tag.suffix)
    })
}

fn syntax(message: impl Into<String>, mark: Option<Marker>) -> YamlError {
    let message = message.into();
    YamlError {
        key: None,
        message: match mark {
            Some(m) => format!("{message} at line {} column {}", m.line(), m.col() + 1),
            None => message,
        },
    }
}

struct Composer<'t> {
    parser: Parser<std::str::Chars<'t>>,
    anchors: HashMap<usize, Node>,
}

impl Composer<'_> {
    fn next(&mut self) -> Result<(Event, Marker), YamlError> {
        self.parser
            .next_token()
            .map_err(|e| syntax(e.to_string(), None))
    }

    /// The single document of the stream, as PyYAML's `get_single_node`.
    fn single_document(&mut self) -> Result<Option<Node>, YamlError> {
        let (event, mark) = self.next()?;
        if event != Event::StreamStart {
            return Err(syntax("expected the start of the stream", Some(mark)));
        }
        let (event, mark) = self.next()?;
        let node = match event {
            Event::StreamEnd => return Ok(None),
            Event::DocumentStart => {
                let (event, mark) = self.next()?;
                let node = self.node(event, mark, 0)?;
                let (end, mark) = self.next()?;
                if end != Event::DocumentEnd {
                    return Err(syntax("expected the end of the document", Some(mark)));
                }
                node
            }
            _ => return Err(syntax("expected a document", Some(mark))),
        };
        let (event, mark) = self.next()?;
        if event != Event::StreamEnd {
            return Err(syntax(
                "expected a single document in the stream, found another",
                Some(mark),
            ));
        }
        Ok(Some(node))
    }

    fn node(&mut self, event: Event, mark: Marker, depth: usize) -> Result<Node, YamlError> {
        if depth > MAX_NESTING {
            return Err(syntax("collections nest too deeply", Some(mark)));
        }
        let (node, anchor) = match event {
            Event::Alias(id) => {
                return self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| syntax("found an undefined alias", Some(mark)))
            }
            Event::Scalar(value, style, anchor, tag) => (
                Node::Scalar {
                    value,
                    plain: style == TScalarStyle::Plain,
                    tag: tag_name(tag),
                },
                anchor,
            ),
            Event::SequenceStart(anchor, tag) => {
                let mut items = Vec::new();
                loop {
                    let (event, mark) = self.next()?;
                    if event == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(event, mark, depth + 1)?);
                }
                (
                    Node::Seq {
                        items,
                        tag: tag_name(tag),
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, tag) => {
                let mut pairs = Vec::new();
                loop {
                    let (event, mark) = self.next()?;
                    if event == Event::MappingEnd {
                        break;
                    }
                    let key = self.node(event, mark, depth + 1)?;
                    let (event, mark) = self.next()?;
                    let value = self.node(event, mark, depth + 1)?;
                    pairs.push((key, value));
                }
                (
                    Node::Map {
                        pairs,
                        tag: tag_name(tag),
                    },
                    anchor,
                )
            }
            _ => return Err(syntax("unexpected YAML event", Some(mark))),
        };
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

/// Where the constructor is, for error messages.
#[derive(Default)]
struct KeyPath(Vec<String>);

impl KeyPath {
    fn error(&self, message: impl Into<String>) -> YamlError {
        YamlError {
            key: Some(if self.0.is_empty() {
                "(document)".to_owned()
            } else {
                self.0.concat()
            }),
            message: message.into(),
        }
    }

    fn push_key(&mut self, key: &str) {
        if self.0.is_empty() {
            self.0.push(key.to_owned());
        } else {
            self.0.push(format!(".{key}"));
        }
    }

    fn push_index(&mut self, i: usize) {
        self.0.push(format!("[{i}]"));
    }

    fn pop(&mut self) {
        self.0.pop();
    }
}

struct Loader<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
}

impl Loader<'_> {
    fn load(&self, text: &str, depth: usize) -> Result<Value, YamlError> {
        let mut composer = Composer {
            parser: Parser::new_from_str(text),
            anchors: HashMap::new(),
        };
        match composer.single_document()? {
            None => Ok(Value::Null),
            Some(node) => self.construct(&node, &mut KeyPath::default(), depth),
        }
    }

    fn construct(&self, node: &Node, at: &mut KeyPath, depth: usize) -> Result<Value, YamlError> {
        match node {
            Node::Scalar { value, plain, tag } => {
                let tag = match tag.as_deref() {
                    Some(t) => t,
                    None if *plain => {
                        return self.construct_resolved(resolve_plain(value), value, at, depth)
                    }
                    None => return Ok(Value::String(value.clone())),
                };
                match tag {
                    "!env_var" => self.env_var(value, false, at, depth),
                    "!raw_env_var" => self.env_var(value, true, at, depth),
                    "!" => Ok(Value::String(value.clone())),
                    t => {
                        match t.strip_prefix(YAML_TAG) {
                            Some("str") => Ok(Value::String(value.clone())),
                            Some("null") => Ok(Value::Null),
                            Some("bool") => construct_bool(value)
                                .ok_or_else(|| at.error("!!bool needs yes/no/true/false/on/off")),
                            Some("int") => construct_int(value)
                                .ok_or_else(|| at.error("!!int needs an integer")),
                            Some("float") => construct_float(value)
                                .ok_or_else(|| at.error("!!float needs a number")),
                            Some("timestamp" | "binary") => Ok(Value::String(value.clone())),
                            Some("seq" | "map" | "set" | "omap" | "pairs") => Err(
                                at.error(format!("the tag {t} needs a collection, found a scalar"))
                            ),
                            _ => Err(at.error(format!(
                                "unknown tag {t} (nameko's loader knows !env_var and !raw_env_var)"
                            ))),
                        }
                    }
                }
            }
            Node::Seq { items, tag } => {
                match tag.as_deref() {
                    None | Some("!") => {}
                    Some(t) if t.strip_prefix(YAML_TAG) == Some("seq") => {}
                    Some(t) => {
                        return Err(at.error(format!("the tag {t} cannot be used on a list")))
                    }
                }
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    at.push_index(i);
                    out.push(self.construct(item, at, depth)?);
                    at.pop();
                }
                Ok(Value::Array(out))
            }
            Node::Map { pairs, tag } => {
                let is_set = match tag.as_deref() {
                    None | Some("!") => false,
                    Some(t) if t.strip_prefix(YAML_TAG) == Some("map") => false,
                    Some(t) if t.strip_prefix(YAML_TAG) == Some("set") => true,
                    Some(t) => {
                        return Err(at.error(format!("the tag {t} cannot be used on a mapping")))
                    }
                };
                let mut out = Map::new();
                for (key, value) in self.flatten(pairs, at)? {
                    let key = self.construct_key(key, at, depth)?;
                    at.push_key(&key);
                    let value = if is_set {
                        Value::Null
                    } else {
                        self.construct(value, at, depth)?
                    };
                    at.pop();
                    // A later duplicate key wins, in the first one's place, as in a Python dict.
                    out.insert(key, value);
                }
                Ok(Value::Object(out))
            }
        }
    }

    /// PyYAML's `flatten_mapping`: `<<: *base` (or a list of them) merges
    /// keys in; the mapping's own keys, and earlier bases, win.
    fn flatten<'n>(
        &self,
        pairs: &'n [(Node, Node)],
        at: &KeyPath,
    ) -> Result<Vec<(&'n Node, &'n Node)>, YamlError> {
        let mut merged: Vec<(&Node, &Node)> = Vec::new();
        let mut own = Vec::new();
        for (key, value) in pairs {
            let is_merge = matches!(key, Node::Scalar { value: k, plain: true, tag: None }
                if resolve_plain(k) == Resolved::Merge)
                || matches!(key, Node::Scalar { tag: Some(t), .. } if t.strip_prefix(YAML_TAG) == Some("merge"));
            if !is_merge {
                own.push((key, value));
                continue;
            }
            match value {
                Node::Map { pairs, .. } => merged.extend(self.flatten(pairs, at)?),
                Node::Seq { items, .. } => {
                    let mut bases = Vec::new();
                    for item in items {
                        match item {
                            Node::Map { pairs, .. } => bases.push(self.flatten(pairs, at)?),
                            _ => return Err(at.error("<< needs mappings to merge")),
                        }
                    }
                    for base in bases.into_iter().rev() {
                        merged.extend(base);
                    }
                }
                _ => return Err(at.error("<< needs a mapping or a list of mappings")),
            }
        }
        merged.extend(own);
        Ok(merged)
    }

    fn construct_key(
        &self,
        key: &Node,
        at: &mut KeyPath,
        depth: usize,
    ) -> Result<String, YamlError> {
        match self.construct(key, at, depth)? {
            Value::String(s) => Ok(s),
            Value::Array(_) | Value::Object(_) => {
                Err(at.error("a list or a mapping cannot be a key"))
            }
            other => Ok(other.to_string()),
        }
    }

    fn construct_resolved(
        &self,
        resolved: Resolved,
        value: &str,
        at: &mut KeyPath,
        depth: usize,
    ) -> Result<Value, YamlError> {
        let unexpected = || at.error("the value does not match its type");
        match resolved {
            Resolved::Bool => construct_bool(value).ok_or_else(unexpected),
            Resolved::Int => construct_int(value).ok_or_else(unexpected),
            Resolved::Float => construct_float(value).ok_or_else(unexpected),
            Resolved::Null => Ok(Value::Null),
            Resolved::Timestamp | Resolved::Str | Resolved::Merge => {
                Ok(Value::String(value.to_owned()))
            }
            Resolved::Value => Err(at.error(
                "a plain `=` has no meaning in PyYAML's safe loader (nameko fails on it); quote it",
            )),
            Resolved::EnvVar => self.env_var(value, false, at, depth),
        }
    }

    /// nameko's `env_var_constructor`.
    fn env_var(
        &self,
        raw: &str,
        raw_mode: bool,
        at: &mut KeyPath,
        depth: usize,
    ) -> Result<Value, YamlError> {
        if RECURSIVE_ENV_VAR.is_match(raw) {
            return Err(at.error(
                "a nested ${...} reference is not supported (nameko needs the optional Python \
                 `regex` module for it)",
            ));
        }
        let substituted = ENV_VAR.replace_all(raw, |caps: &Captures<'_>| {
            // An unset variable without a default becomes "".
            (self.env)(&caps[1])
                .unwrap_or_else(|| caps.get(2).map_or("", |d| d.as_str()).to_owned())
        });
        if substituted == raw || raw_mode {
            return Ok(Value::String(substituted.into_owned()));
        }
        if depth >= MAX_SUBSTITUTION_DEPTH {
            return Err(
                at.error("${...} substitution does not end (does a variable refer to itself?)")
            );
        }
        // Parsed again, as nameko's yaml.safe_load(value). The value is not
        // quoted in the message: it may be a password.
        self.load(&substituted, depth + 1).map_err(|e| {
            at.error(format!(
                "after ${{...}} substitution the value is not valid YAML: {}",
                e.message
            ))
        })
    }
}
