//! What one shell line asks for: a shell command (`help`, `timeout 5`,
//! `context user_id=u1`, `wait`, …) or a statement (a call or a dispatch,
//! see [`crate::syntax`]).
//!
//! Shell commands are bare words followed by space-separated arguments, as
//! in a Unix shell, because they configure the session rather than send
//! anything; a word followed by `.` or `(` is always the start of a call, so
//! a service called `context` or `wait` stays callable (`context.get(1)`).

use crate::cli::positive_seconds;
use crate::syntax::{self, ParseError, Parser, Statement};
use rpc_core::Value;
use std::time::Duration;

/// One line's meaning.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// A blank line or a comment.
    Nothing,
    /// `help`.
    Help,
    /// `exit`, `quit` (or `exit()`, `quit()`).
    Exit,
    /// `timeout` (show) or `timeout SECONDS` (set).
    Timeout(Option<Duration>),
    /// `context …`.
    Context(ContextChange),
    /// A call (`background` for `async …` / `.call_async(…)`) or a
    /// dispatch.
    Statement(Statement),
    /// `wait` (every background call) or `wait N` (call N).
    Wait(Option<usize>),
    /// `jobs`: the background calls not collected yet.
    Jobs,
}

/// What `context` does.
#[derive(Clone, Debug, PartialEq)]
pub enum ContextChange {
    /// `context`: show it.
    Show,
    /// `context KEY=VALUE …`: set these keys (others are kept).
    Set(Vec<(String, Value)>),
    /// `context unset KEY …`.
    Unset(Vec<String>),
    /// `context clear`.
    Clear,
}

/// Reads one line (or several joined with `\n`, for a statement spanning
/// lines). An error with [`ParseError::incomplete`] set means "read another
/// line and try again".
pub fn parse(text: &str) -> Result<Command, ParseError> {
    let mut p = Parser::new(text);
    p.skip_space();
    let start = p.pos();
    if start == text.len() {
        return Ok(Command::Nothing);
    }
    let rest = &text[start..];
    let word_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let word = &rest[..word_len];
    let after = &rest[word_len..];
    let args_at = start + word_len;
    let bare = after.is_empty() || after.starts_with(char::is_whitespace) || after.starts_with('#');
    // `exit()` and friends, as typed by Python habit.
    let empty_call = after
        .split('#')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_whitespace())
        .eq("()".chars());
    match word {
        "help" | "exit" | "quit" if bare || empty_call => {
            if !empty_call {
                if let Some((at, extra)) = words(text, args_at).first() {
                    return Err(error_at(
                        text,
                        *at,
                        format!("`{word}` takes no arguments, found `{extra}`"),
                    ));
                }
            }
            Ok(if word == "help" {
                Command::Help
            } else {
                Command::Exit
            })
        }
        "jobs" if bare => match words(text, args_at).first() {
            Some((at, extra)) => Err(error_at(
                text,
                *at,
                format!("`jobs` takes no arguments, found `{extra}`"),
            )),
            None => Ok(Command::Jobs),
        },
        "timeout" if bare => parse_timeout(text, args_at),
        "wait" if bare => parse_wait(text, args_at),
        "context" if bare => parse_context(text, args_at),
        "async" if bare => {
            let mut p = Parser::at(text, args_at);
            match p.statement()? {
                Statement::Call {
                    service,
                    method,
                    args,
                    ..
                } => {
                    p.expect_end("after the call")?;
                    Ok(Command::Statement(Statement::Call {
                        service,
                        method,
                        args,
                        background: true,
                    }))
                }
                Statement::Dispatch { .. } => Err(error_at(
                    text,
                    start,
                    "`async` is for calls: a dispatch returns as soon as the broker has the event",
                )),
            }
        }
        _ => syntax::parse_statement(text).map(Command::Statement),
    }
}

fn error_at(text: &str, at: usize, message: impl Into<String>) -> ParseError {
    Parser::new(text).error(at, message)
}

/// Whitespace-separated words from `from` up to a `#` comment, with their
/// byte offsets.
fn words(text: &str, from: usize) -> Vec<(usize, &str)> {
    let rest = &text[from..];
    let rest = &rest[..rest.find('#').unwrap_or(rest.len())];
    let mut out = Vec::new();
    let mut offset = 0;
    for piece in rest.split_whitespace() {
        let at = rest[offset..].find(piece).map_or(offset, |i| offset + i);
        out.push((from + at, piece));
        offset = at + piece.len();
    }
    out
}

fn parse_timeout(text: &str, from: usize) -> Result<Command, ParseError> {
    match words(text, from).as_slice() {
        [] => Ok(Command::Timeout(None)),
        [(at, seconds)] => positive_seconds(seconds)
            .map(|d| Command::Timeout(Some(d)))
            .map_err(|e| error_at(text, *at, format!("timeout: {e}"))),
        [_, (at, extra), ..] => Err(error_at(
            text,
            *at,
            format!("`timeout` takes one number of seconds, found `{extra}` too"),
        )),
    }
}

fn parse_wait(text: &str, from: usize) -> Result<Command, ParseError> {
    match words(text, from).as_slice() {
        [] => Ok(Command::Wait(None)),
        [(at, n)] => {
            let digits = n.trim_start_matches('[').trim_end_matches(']');
            digits
                .parse::<usize>()
                .map(|n| Command::Wait(Some(n)))
                .map_err(|_| {
                    error_at(
                        text,
                        *at,
                        format!("`wait` takes a call number (see `jobs`), found `{n}`"),
                    )
                })
        }
        [_, (at, extra), ..] => Err(error_at(
            text,
            *at,
            format!("`wait` takes at most one call number, found `{extra}` too"),
        )),
    }
}

/// `context`, `context clear`, `context unset KEY…`, `context KEY=VALUE…`.
///
/// A VALUE starting with a quote or a bracket is read as a shell value
/// (JSON or Python literal, spaces allowed inside); any other VALUE is one
/// word, read as a number / boolean / null when it is one and as a string
/// otherwise, so `context user_id=u1` needs no quotes while `user_id=7` is
/// the number 7 and `user_id="7"` the string.
fn parse_context(text: &str, from: usize) -> Result<Command, ParseError> {
    let first = words(text, from);
    match first.first() {
        None => return Ok(Command::Context(ContextChange::Show)),
        Some((_, "clear")) => {
            return match first.get(1) {
                Some((at, extra)) => Err(error_at(
                    text,
                    *at,
                    format!("`context clear` takes no arguments, found `{extra}`"),
                )),
                None => Ok(Command::Context(ContextChange::Clear)),
            }
        }
        Some((at, "unset")) => {
            let keys: Vec<String> = first[1..].iter().map(|(_, k)| (*k).to_owned()).collect();
            if keys.is_empty() {
                return Err(error_at(
                    text,
                    *at,
                    "`context unset` needs the keys to remove",
                ));
            }
            return Ok(Command::Context(ContextChange::Unset(keys)));
        }
        Some(_) => {}
    }
    let mut entries: Vec<(String, Value)> = Vec::new();
    let mut pos = from;
    loop {
        let mut p = Parser::at(text, pos);
        p.skip_space();
        pos = p.pos();
        if pos >= text.len() {
            break;
        }
        let rest = &text[pos..];
        let key_len = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_len];
        if !rest[key_len..].starts_with('=') || key.is_empty() {
            let word = rest.split_whitespace().next().unwrap_or(rest);
            return Err(error_at(
                text,
                pos,
                format!("`context` expects KEY=VALUE, found `{word}`"),
            ));
        }
        if entries.iter().any(|(k, _)| k == key) {
            return Err(error_at(
                text,
                pos,
                format!("context key `{key}` is given twice"),
            ));
        }
        let value_at = pos + key_len + 1;
        let value_text = &text[value_at..];
        let (value, end) = if value_text.starts_with(['"', '\'', '[', '{', '(']) {
            let mut p = Parser::at(text, value_at);
            let value = p.value()?;
            (value, p.pos())
        } else {
            let len = value_text
                .find(char::is_whitespace)
                .unwrap_or(value_text.len());
            let word = &value_text[..len];
            let value =
                syntax::parse_value(word).unwrap_or_else(|_| Value::String(word.to_owned()));
            (value, value_at + len)
        };
        if let Some(c) = text[end..]
            .chars()
            .next()
            .filter(|c| !c.is_whitespace() && *c != '#')
        {
            return Err(error_at(
                text,
                end,
                format!(
                    "unexpected `{c}` after the value of `{key}` (put a space between entries)"
                ),
            ));
        }
        entries.push((key.to_owned(), value));
        pos = end;
    }
    Ok(Command::Context(ContextChange::Set(entries)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_core::{json, Args};

    fn ok(text: &str) -> Command {
        parse(text).unwrap_or_else(|e| panic!("{text}: {}", e.render(text)))
    }

    fn err(text: &str) -> ParseError {
        match parse(text) {
            Ok(c) => panic!("{text} parsed as {c:?}"),
            Err(e) => e,
        }
    }

    fn set(entries: &[(&str, Value)]) -> Command {
        Command::Context(ContextChange::Set(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        ))
    }

    #[test]
    fn blank_lines_and_comments_do_nothing() {
        for text in ["", "   ", "\t", "# a comment", "   # indented comment"] {
            assert_eq!(ok(text), Command::Nothing, "{text:?}");
        }
    }

    #[test]
    fn simple_commands() {
        for text in ["help", " help ", "help()", "help # me"] {
            assert_eq!(ok(text), Command::Help, "{text}");
        }
        for text in ["exit", "quit", "exit()", "quit ( )", "exit  # bye"] {
            assert_eq!(ok(text), Command::Exit, "{text}");
        }
        assert_eq!(ok("jobs"), Command::Jobs);
        assert_eq!(ok("wait"), Command::Wait(None));
        assert_eq!(ok("wait 2"), Command::Wait(Some(2)));
        assert_eq!(ok("wait [3]"), Command::Wait(Some(3)));
        assert_eq!(ok("timeout"), Command::Timeout(None));
        assert_eq!(
            ok("timeout 5"),
            Command::Timeout(Some(Duration::from_secs(5)))
        );
        assert_eq!(
            ok("timeout 0.25  # quick"),
            Command::Timeout(Some(Duration::from_millis(250)))
        );
    }

    #[test]
    fn command_errors_point_at_the_argument() {
        let e = err("timeout abc");
        assert_eq!(e.column, 9);
        assert!(
            e.message.contains("`abc` is not a number of seconds"),
            "{e}"
        );
        let e = err("timeout 0");
        assert!(e.message.contains("positive"), "{e}");
        let e = err("timeout 1 2");
        assert_eq!(e.column, 11);
        let e = err("exit now");
        assert_eq!(
            (e.column, e.message.as_str()),
            (6, "`exit` takes no arguments, found `now`")
        );
        assert_eq!(err("wait x").column, 6);
        assert_eq!(err("wait 1 2").column, 8);
        assert_eq!(err("jobs 1").column, 6);
        let e = err("frobnicate");
        assert!(e.message.contains("unknown command `frobnicate`"), "{e}");
        let e = err("async dispatch('s', 't', 1)");
        assert!(e.message.contains("`async` is for calls"), "{e}");
        let e = err("async person.get(1) 2");
        assert_eq!(e.column, 21);
        let e = err("async");
        assert!(e.message.contains("expected a call"), "{e}");
    }

    #[test]
    fn calls_and_their_background_forms() {
        let call = |background| {
            Command::Statement(Statement::Call {
                service: "person".into(),
                method: "get".into(),
                args: Args::new().arg(1),
                background,
            })
        };
        assert_eq!(ok("person.get(1)"), call(false));
        assert_eq!(ok("n.rpc.person.get(1)"), call(false));
        assert_eq!(ok("async person.get(1)"), call(true));
        assert_eq!(ok("async  n.rpc.person.get(1)  # later"), call(true));
        assert_eq!(ok("n.rpc.person.get.call_async(1)"), call(true));
        assert_eq!(
            ok("dispatch('person', 'person_created', {'id': 1})"),
            Command::Statement(Statement::Dispatch {
                service: "person".into(),
                event_type: "person_created".into(),
                data: json!({"id": 1})
            })
        );
        // Services named like commands stay callable.
        for (text, service) in [
            ("context.get(1)", "context"),
            ("wait.get(1)", "wait"),
            ("help.get(1)", "help"),
            ("timeout.get(1)", "timeout"),
        ] {
            match ok(text) {
                Command::Statement(Statement::Call { service: s, .. }) => assert_eq!(s, service),
                other => panic!("{text}: {other:?}"),
            }
        }
        // A statement left open asks for more.
        assert!(err("person.create('Ada',").incomplete);
        assert!(err("async person.create(").incomplete);
    }

    #[test]
    fn context_entries() {
        assert_eq!(ok("context"), Command::Context(ContextChange::Show));
        assert_eq!(ok("context clear"), Command::Context(ContextChange::Clear));
        assert_eq!(
            ok("context unset user_id language"),
            Command::Context(ContextChange::Unset(vec![
                "user_id".into(),
                "language".into()
            ]))
        );
        assert_eq!(ok("context user_id=u1"), set(&[("user_id", json!("u1"))]));
        assert_eq!(
            ok("context user_id=7 token='7' lang=\"en GB\" on=True off=false none=None neg=-1.5"),
            set(&[
                ("user_id", json!(7)),
                ("token", json!("7")),
                ("lang", json!("en GB")),
                ("on", json!(true)),
                ("off", json!(false)),
                ("none", Value::Null),
                ("neg", json!(-1.5)),
            ])
        );
        assert_eq!(
            ok("context roles=['a', 'b'] meta={'k': (1, 2)}  # comment"),
            set(&[("roles", json!(["a", "b"])), ("meta", json!({"k": [1, 2]}))])
        );
        assert_eq!(
            ok("context empty= url=http://x/?a=b x-request-id=ab-12"),
            set(&[
                ("empty", json!("")),
                ("url", json!("http://x/?a=b")),
                ("x-request-id", json!("ab-12")),
            ])
        );
        // A key named like a sub-command is still a key.
        assert_eq!(ok("context clear=1"), set(&[("clear", json!(1))]));
    }

    #[test]
    fn context_errors() {
        let e = err("context user_id");
        assert_eq!(e.column, 9);
        assert!(e.message.contains("KEY=VALUE"), "{e}");
        assert_eq!(err("context =1").column, 9);
        let e = err("context a=1 a=2");
        assert!(e.message.contains("given twice"), "{e}");
        assert_eq!(e.column, 13);
        let e = err("context a='x'b=1");
        assert_eq!(e.column, 14);
        let e = err("context a='unclosed");
        assert!(e.message.contains("not closed"), "{e}");
        assert_eq!(e.column, 11);
        assert!(err("context a=[1,").incomplete);
        assert!(err("context clear now").message.contains("no arguments"));
        assert!(err("context unset").message.contains("needs the keys"));
    }
}
