//! Turning command-line words into a call: `SERVICE.METHOD`, arguments, and
//! context data.
//!
//! The rules are meant to make the common case need no quoting at all, and
//! are the same wherever words come from (the `call` command today, an
//! interactive shell later):
//!
//! * a word that is valid JSON is that JSON value: `36`, `true`, `null`,
//!   `[1,2]`, `{"a":1}`, `"36"` (a string);
//! * any other word is a string: `Ada`, `hello world`, `2024-01-01`;
//! * `name=VALUE`, where name is `[A-Za-z_][A-Za-z0-9_]*`, is a keyword
//!   argument whose VALUE follows the two rules above. To pass such a word
//!   as a positional string, give it as JSON: `'"a=b"'`.
//!
//! Most shells strip one level of quotes, so `'"36"'` reaches us as `"36"`,
//! the JSON string.

use rpc_core::{Args, Map, Value};
use std::collections::BTreeMap;

/// A call that cannot be made as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// The target is not `SERVICE.METHOD`.
    #[error("expected SERVICE.METHOD, got `{0}`")]
    BadTarget(String),
    /// `--args` is not a JSON list.
    #[error("--args must be a JSON list, e.g. '[1, \"two\"]': {0}")]
    BadArgsDocument(String),
    /// `--kwargs` is not a JSON object.
    #[error("--kwargs must be a JSON object, e.g. '{{\"member\": true}}': {0}")]
    BadKwargsDocument(String),
    /// The same keyword argument twice: Python would refuse the call too,
    /// and silently keeping one would hide a typo.
    #[error("keyword argument `{0}` is given more than once")]
    DuplicateKeyword(String),
    /// A `--context` entry is not `KEY=VALUE`.
    #[error("--context expects KEY=VALUE, got `{0}`")]
    BadContext(String),
    /// The same context key twice.
    #[error("context key `{0}` is given more than once")]
    DuplicateContext(String),
}

/// One argument word, classified.
#[derive(Clone, Debug, PartialEq)]
pub enum Word {
    /// A positional argument.
    Positional(Value),
    /// A keyword argument.
    Keyword(String, Value),
}

/// A word as a value: its JSON reading if it has one, else the word as a
/// string.
pub fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Whether `name` can be a Python keyword argument (ASCII identifiers only,
/// which is what nameko services use).
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Classifies one word; see the module docs for the rules.
pub fn parse_word(word: &str) -> Word {
    if let Some((name, value)) = word.split_once('=') {
        if is_identifier(name) {
            return Word::Keyword(name.to_owned(), parse_value(value));
        }
    }
    Word::Positional(parse_value(word))
}

/// Splits `SERVICE.METHOD` at its last dot: method names never contain
/// one, and splitting there keeps dotted service names usable.
pub fn parse_target(target: &str) -> Result<(String, String), ArgsError> {
    match target.rsplit_once('.') {
        Some((service, method)) if !service.is_empty() && !method.is_empty() => {
            Ok((service.to_owned(), method.to_owned()))
        }
        _ => Err(ArgsError::BadTarget(target.to_owned())),
    }
}

/// The arguments of a call from its words and the optional whole-document
/// `--args` (a JSON list, placed before the positional words) and
/// `--kwargs` (a JSON object, merged with the keyword words).
pub fn build_args<S: AsRef<str>>(
    words: &[S],
    args_json: Option<&str>,
    kwargs_json: Option<&str>,
) -> Result<Args, ArgsError> {
    let mut positional = match args_json {
        None => Vec::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Array(list)) => list,
            Ok(other) => return Err(ArgsError::BadArgsDocument(format!("got {other}"))),
            Err(e) => return Err(ArgsError::BadArgsDocument(e.to_string())),
        },
    };
    let mut keywords = match kwargs_json {
        None => Map::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => map,
            Ok(other) => return Err(ArgsError::BadKwargsDocument(format!("got {other}"))),
            Err(e) => return Err(ArgsError::BadKwargsDocument(e.to_string())),
        },
    };
    for word in words {
        match parse_word(word.as_ref()) {
            Word::Positional(value) => positional.push(value),
            Word::Keyword(name, value) => {
                if keywords.contains_key(&name) {
                    return Err(ArgsError::DuplicateKeyword(name));
                }
                keywords.insert(name, value);
            }
        }
    }
    Args::from_json(Value::Array(positional), Value::Object(keywords))
        .map_err(ArgsError::BadArgsDocument)
}

/// Context data from `KEY=VALUE` entries, values read as argument values
/// are (so `user_id=7` is the number 7 and `user_id='"7"'` the string).
pub fn parse_context<S: AsRef<str>>(entries: &[S]) -> Result<BTreeMap<String, Value>, ArgsError> {
    let mut data = BTreeMap::new();
    for entry in entries {
        let entry = entry.as_ref();
        let Some((key, value)) = entry.split_once('=') else {
            return Err(ArgsError::BadContext(entry.to_owned()));
        };
        if key.is_empty() {
            return Err(ArgsError::BadContext(entry.to_owned()));
        }
        if data.insert(key.to_owned(), parse_value(value)).is_some() {
            return Err(ArgsError::DuplicateContext(key.to_owned()));
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_core::json;

    fn args(words: &[&str]) -> Args {
        build_args(words, None, None).unwrap()
    }

    #[test]
    fn json_words_and_bare_strings() {
        assert_eq!(
            args(&["Ada", "Lovelace", "36", "member=true"]),
            Args::new()
                .arg("Ada")
                .arg("Lovelace")
                .arg(36)
                .kwarg("member", true)
        );
        assert_eq!(parse_value("\"36\""), json!("36"));
        assert_eq!(parse_value("-1.5"), json!(-1.5));
        assert_eq!(parse_value("null"), Value::Null);
        assert_eq!(parse_value("[1, \"a\"]"), json!([1, "a"]));
        assert_eq!(parse_value("{\"a\": {\"b\": 2}}"), json!({"a": {"b": 2}}));
        assert_eq!(parse_value(""), json!(""));
        assert_eq!(parse_value("hello world"), json!("hello world"));
        assert_eq!(parse_value("[1,"), json!("[1,"));
        assert_eq!(parse_value("True"), json!("True"));
    }

    #[test]
    fn keywords_need_an_identifier() {
        assert_eq!(
            parse_word("first_name=Ada"),
            Word::Keyword("first_name".into(), json!("Ada"))
        );
        assert_eq!(parse_word("_x=1"), Word::Keyword("_x".into(), json!(1)));
        assert_eq!(parse_word("x="), Word::Keyword("x".into(), json!("")));
        assert_eq!(parse_word("a=b=c"), Word::Keyword("a".into(), json!("b=c")));
        assert_eq!(
            parse_word("x={\"k\":1}"),
            Word::Keyword("x".into(), json!({"k": 1}))
        );
        for positional in ["1a=2", "=5", "a-b=1", "é=1", "\"a=b\"", "{\"a\":\"=\"}"] {
            assert!(
                matches!(parse_word(positional), Word::Positional(_)),
                "{positional}"
            );
        }
        assert_eq!(parse_word("\"a=b\""), Word::Positional(json!("a=b")));
    }

    #[test]
    fn documents_merge_with_words() {
        let merged = build_args(&["3", "c=true"], Some("[1, 2]"), Some("{\"b\": \"x\"}")).unwrap();
        assert_eq!(
            merged,
            Args::from_json(json!([1, 2, 3]), json!({"b": "x", "c": true})).unwrap()
        );
        assert_eq!(
            build_args(&["b=1"], None, Some("{\"b\": 2}")),
            Err(ArgsError::DuplicateKeyword("b".into()))
        );
        assert_eq!(
            build_args(&["a=1", "a=1"], None, None),
            Err(ArgsError::DuplicateKeyword("a".into()))
        );
        assert!(matches!(
            build_args::<&str>(&[], Some("{}"), None),
            Err(ArgsError::BadArgsDocument(_))
        ));
        assert!(matches!(
            build_args::<&str>(&[], Some("[1,"), None),
            Err(ArgsError::BadArgsDocument(_))
        ));
        assert!(matches!(
            build_args::<&str>(&[], None, Some("[]")),
            Err(ArgsError::BadKwargsDocument(_))
        ));
        assert_eq!(build_args::<&str>(&[], None, None).unwrap(), Args::new());
    }

    #[test]
    fn targets_split_at_the_last_dot() {
        assert_eq!(
            parse_target("person.get").unwrap(),
            ("person".into(), "get".into())
        );
        assert_eq!(
            parse_target("eu.person.get").unwrap(),
            ("eu.person".into(), "get".into())
        );
        for bad in ["person", "person.", ".get", ""] {
            assert_eq!(parse_target(bad), Err(ArgsError::BadTarget(bad.into())));
        }
    }

    #[test]
    fn context_entries() {
        let data = parse_context(&["user_id=7", "language=en-GB", "token=\"7\""]).unwrap();
        assert_eq!(data["user_id"], json!(7));
        assert_eq!(data["language"], json!("en-GB"));
        assert_eq!(data["token"], json!("7"));
        assert_eq!(
            parse_context(&["nokey"]),
            Err(ArgsError::BadContext("nokey".into()))
        );
        assert_eq!(
            parse_context(&["=v"]),
            Err(ArgsError::BadContext("=v".into()))
        );
        assert_eq!(
            parse_context(&["a=1", "a=2"]),
            Err(ArgsError::DuplicateContext("a".into()))
        );
    }
}
