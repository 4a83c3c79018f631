//! The shell's input language: calls written the way a nameko user writes
//! them in `nameko shell`, read by a small tokenizer and a recursive-descent
//! parser.
//!
//! ```text
//! person.create("Ada", "Lovelace", 36, member=True)
//! n.rpc.person.list(limit=10)
//! n.rpc["person-v2"].get(1)
//! n.rpc.person.get.call_async(1)
//! dispatch("person", "person_created", {"id": 1})
//! n.dispatch_event("person", "person_created", {"id": 1})
//! ```
//!
//! Values are JSON plus the Python spellings a nameko user types by habit:
//! `True`/`False`/`None`, single-quoted strings (with an optional `u` or `r`
//! prefix, so a Python 2 repr pastes), Python escapes (`\x41`, `\U0001F600`,
//! octal), tuples (sent as lists, as Python's json does), numbers with `_`,
//! `0x`/`0o`/`0b` integers, `.5`, `+1`, trailing commas, and `#` comments.
//! A mistake is reported with its line and column rather than guessed at:
//! an unknown escape, a bare word, a lone surrogate or an integer wider than
//! 64 bits is an error, never silently turned into something else.
//!
//! Why hand-rolled rather than a Python or JSON5 parser: the accepted
//! language is small and exactly the values nameko can send (JSON), and
//! writing it here keeps the error messages ours, the columns exact, and the
//! "this line is not finished yet" answer ([`ParseError::incomplete`]) that
//! lets a statement span lines.

use rpc_core::{Args, Map, Value};
use serde_json::Number;
use std::fmt;
use unicode_width::UnicodeWidthChar;

/// Deepest nesting of lists and objects accepted (serde_json's own limit is
/// 128); deeper input is an error, not a stack overflow.
pub const MAX_DEPTH: usize = 64;

/// Input that is not a valid statement, with where the problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset of the problem in the parsed text.
    pub offset: usize,
    /// 1-based line of the problem (statements may span lines).
    pub line: usize,
    /// 1-based column of the problem, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// The text ended inside an unclosed bracket: more lines may complete
    /// it, so a shell asks for another line instead of reporting it.
    pub incomplete: bool,
}

impl ParseError {
    fn new(source: &str, offset: usize, message: impl Into<String>, incomplete: bool) -> Self {
        let offset = offset.min(source.len());
        let before = &source[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        ParseError {
            offset,
            line,
            column,
            message: message.into(),
            incomplete,
        }
    }

    /// The message, then the offending line of `source` with a caret under
    /// the column, so that the problem can be seen, not counted.
    pub fn render(&self, source: &str) -> String {
        let offset = self.offset.min(source.len());
        let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[offset..]
            .find('\n')
            .map_or(source.len(), |i| offset + i);
        let text = &source[line_start..line_end];
        // Tabs stay tabs so the caret lines up however wide the terminal
        // draws them; wide characters (CJK, emoji) take two cells.
        let pad: String = source[line_start..offset]
            .chars()
            .map(|c| match c {
                '\t' => "\t".to_owned(),
                c => " ".repeat(c.width().unwrap_or(0)),
            })
            .collect();
        format!("{self}\n  {text}\n  {pad}^")
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 1 {
            write!(
                f,
                "syntax error at line {}, column {}: {}",
                self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "syntax error at column {}: {}",
                self.column, self.message
            )
        }
    }
}

impl std::error::Error for ParseError {}

/// A call or an event, as written.
#[derive(Clone, Debug, PartialEq)]
pub enum Statement {
    /// `service.method(...)`.
    Call {
        /// The service (may contain dots and dashes).
        service: String,
        /// The method.
        method: String,
        /// Its arguments.
        args: Args,
        /// Written with nameko's `.call_async(...)`: start it and collect the
        /// result later.
        background: bool,
    },
    /// `dispatch(service_name, event_type, event_data)`.
    Dispatch {
        /// The source service (`{service}.events` exchange).
        service: String,
        /// The event type (routing key).
        event_type: String,
        /// The event's data.
        data: Value,
    },
}

/// Parses one statement (a call or a dispatch) making up all of `source`.
pub fn parse_statement(source: &str) -> Result<Statement, ParseError> {
    let mut p = Parser::new(source);
    let statement = p.statement()?;
    p.expect_end("after the call")?;
    Ok(statement)
}

/// Parses one value making up all of `source`.
pub fn parse_value(source: &str) -> Result<Value, ParseError> {
    let mut p = Parser::new(source);
    let value = p.value()?;
    p.expect_end("after the value")?;
    Ok(value)
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Open(char),
    Close(char),
    Comma,
    Colon,
    Equals,
    Str(String),
    Num(Number),
    Name(String),
    End,
}

impl Tok {
    /// How a token is named in messages.
    fn describe(&self) -> String {
        match self {
            Tok::Open(c) | Tok::Close(c) => format!("`{c}`"),
            Tok::Comma => "`,`".into(),
            Tok::Colon => "`:`".into(),
            Tok::Equals => "`=`".into(),
            Tok::Str(_) => "a string".into(),
            Tok::Num(n) => format!("`{n}`"),
            Tok::Name(n) => format!("`{n}`"),
            Tok::End => "the end of the line".into(),
        }
    }
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

/// The closing bracket for an opening one.
fn closer(open: char) -> char {
    match open {
        '(' => ')',
        '[' => ']',
        _ => '}',
    }
}

/// Characters of a name in a call target: service names are free-form in
/// nameko (`name = "person-v2"`), so dashes are allowed there.
fn is_target_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

/// A recursive-descent parser over one statement's text. Crate-visible so
/// the shell's commands (`context key=value`, `async call(...)`) can read
/// values and calls at an offset with the same rules and columns.
pub(crate) struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Parser {
            src,
            pos: 0,
            depth: 0,
        }
    }

    /// A parser positioned at byte `pos` of `src`.
    pub(crate) fn at(src: &'a str, pos: usize) -> Self {
        Parser {
            src,
            pos: pos.min(src.len()),
            depth: 0,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn error(&self, offset: usize, message: impl Into<String>) -> ParseError {
        ParseError::new(self.src, offset, message, false)
    }

    fn incomplete(&self, message: impl Into<String>) -> ParseError {
        ParseError::new(self.src, self.src.len(), message, true)
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// Skips whitespace (newlines too: a statement may span lines) and `#`
    /// comments.
    pub(crate) fn skip_space(&mut self) {
        loop {
            let rest = self.rest();
            let trimmed = rest.trim_start();
            self.pos += rest.len() - trimmed.len();
            if trimmed.starts_with('#') {
                self.pos += trimmed.find('\n').unwrap_or(trimmed.len());
            } else {
                return;
            }
        }
    }

    /// Fails unless only whitespace and comments are left.
    pub(crate) fn expect_end(&mut self, context: &str) -> Result<(), ParseError> {
        self.skip_space();
        if self.pos < self.src.len() {
            let token = self.peek()?;
            return Err(self.error(
                token.start,
                format!("unexpected {} {context}", token.tok.describe()),
            ));
        }
        Ok(())
    }

    fn next(&mut self) -> Result<Token, ParseError> {
        self.skip_space();
        let token = self.lex(self.pos)?;
        self.pos = token.end;
        Ok(token)
    }

    fn peek(&mut self) -> Result<Token, ParseError> {
        self.skip_space();
        self.lex(self.pos)
    }

    /// Reads the token starting at `at` (no whitespace there).
    fn lex(&self, at: usize) -> Result<Token, ParseError> {
        let rest = &self.src[at..];
        let Some(c) = rest.chars().next() else {
            return Ok(Token {
                tok: Tok::End,
                start: at,
                end: at,
            });
        };
        let single = |tok| {
            Ok(Token {
                tok,
                start: at,
                end: at + c.len_utf8(),
            })
        };
        let next = rest[c.len_utf8()..].chars().next();
        let starts_number = |n: Option<char>| n.is_some_and(|n| n.is_ascii_digit() || n == '.');
        match c {
            '(' | '[' | '{' => single(Tok::Open(c)),
            ')' | ']' | '}' => single(Tok::Close(c)),
            ',' => single(Tok::Comma),
            ':' => single(Tok::Colon),
            '=' => single(Tok::Equals),
            '"' | '\'' => self.string(at, at, false),
            '0'..='9' => self.number(at),
            '.' if next.is_some_and(|n| n.is_ascii_digit()) => self.number(at),
            '-' | '+' if starts_number(next) => self.number(at),
            '*' => Err(self.error(
                at,
                "`*args` / `**kwargs` unpacking is not supported: write the values out",
            )),
            c if c.is_alphabetic() || c == '_' => {
                let len = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                let name = &rest[..len];
                let quoted = rest[len..].starts_with(['"', '\'']);
                match name {
                    "u" | "U" if quoted => self.string(at, at + len, false),
                    "r" | "R" if quoted => self.string(at, at + len, true),
                    "b" | "B" | "rb" | "br" | "Rb" | "bR" | "RB" | "BR" | "rB" | "Br" if quoted => {
                        Err(self.error(at, "bytes literals cannot be sent as JSON: use a string"))
                    }
                    "f" | "F" if quoted => {
                        Err(self.error(at, "f-strings are not supported: write the string out"))
                    }
                    _ => Ok(Token {
                        tok: Tok::Name(name.to_owned()),
                        start: at,
                        end: at + len,
                    }),
                }
            }
            other => Err(self.error(at, format!("unexpected character `{other}`"))),
        }
    }

    /// A string literal whose (optional) prefix starts at `start` and whose
    /// opening quote is at `quote_at`.
    fn string(&self, start: usize, quote_at: usize, raw: bool) -> Result<Token, ParseError> {
        let quote = self.src[quote_at..].chars().next().unwrap_or('"');
        let mut out = String::new();
        let mut chars = self.src[quote_at + 1..].char_indices().peekable();
        let base = quote_at + 1;
        let unterminated = || {
            self.error(
                quote_at,
                format!("this string is not closed: add a {quote} at its end"),
            )
        };
        while let Some((i, c)) = chars.next() {
            if c == quote {
                return Ok(Token {
                    tok: Tok::Str(out),
                    start,
                    end: base + i + c.len_utf8(),
                });
            }
            if c == '\n' {
                return Err(unterminated());
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let escape_at = base + i;
            let Some((_, e)) = chars.next() else {
                return Err(unterminated());
            };
            if raw {
                // As in Python: a backslash keeps the next character from
                // ending the string, and both stay.
                out.push('\\');
                out.push(e);
                continue;
            }
            match e {
                '\\' | '\'' | '"' | '/' => out.push(e),
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'a' => out.push('\u{7}'),
                'v' => out.push('\u{b}'),
                '0'..='7' => {
                    let mut code = e.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match chars.peek() {
                            Some(&(_, d)) if d.is_digit(8) => {
                                code = code * 8 + d.to_digit(8).unwrap_or(0);
                                chars.next();
                            }
                            _ => break,
                        }
                    }
                    // At most 0o777: always a valid scalar value.
                    out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                }
                'x' | 'u' | 'U' => {
                    let digits = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let code = hex_digits(&mut chars, digits).ok_or_else(|| {
                        self.error(
                            escape_at,
                            format!("`\\{e}` needs exactly {digits} hex digits"),
                        )
                    })?;
                    let c = if (0xD800..0xDC00).contains(&code) && e == 'u' {
                        // JSON writes characters outside the BMP as a
                        // surrogate pair; accept that, not half of one.
                        let low = match (chars.next(), chars.next()) {
                            (Some((_, '\\')), Some((_, 'u'))) => hex_digits(&mut chars, 4),
                            _ => None,
                        }
                        .filter(|low| (0xDC00..0xE000).contains(low));
                        match low {
                            Some(low) => {
                                char::from_u32(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
                            }
                            None => None,
                        }
                    } else {
                        char::from_u32(code)
                    };
                    let c = c.ok_or_else(|| {
                        self.error(
                            escape_at,
                            format!(
                                "`\\{e}{code:0digits$X}` is not a character (a lone surrogate?): \
                                 write the character itself or a full surrogate pair"
                            ),
                        )
                    })?;
                    out.push(c);
                }
                other => {
                    let message = format!(
                        "unknown escape `\\{other}` (write `\\\\` for a backslash, or use r'...')"
                    );
                    return Err(self.error(escape_at, message));
                }
            }
        }
        Err(unterminated())
    }

    /// A number: JSON's, plus Python's `_` separators, `0x`/`0o`/`0b`
    /// integers, a leading `+`, `.5` and `5.`.
    fn number(&self, start: usize) -> Result<Token, ParseError> {
        let rest = &self.src[start..];
        let bytes = rest.as_bytes();
        let mut i = 0;
        let negative = bytes[0] == b'-';
        if matches!(bytes[0], b'-' | b'+') {
            i += 1;
        }
        let body_start = i;
        let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let radix = match bytes.get(i..i + 2) {
            Some(b"0x" | b"0X") => Some(16),
            Some(b"0o" | b"0O") => Some(8),
            Some(b"0b" | b"0B") => Some(2),
            _ => None,
        };
        let invalid = |end: usize| {
            let text = rest[..end].to_owned();
            self.error(start, format!("`{text}` is not a valid number"))
        };
        if let Some(radix) = radix {
            i += 2;
            let digits_start = i;
            while i < bytes.len() && is_word(bytes[i]) {
                i += 1;
            }
            let digits = &rest[digits_start..i];
            if !valid_underscores(digits) {
                return Err(invalid(i));
            }
            let clean: String = digits.chars().filter(|c| *c != '_').collect();
            if clean.is_empty() || !clean.chars().all(|c| c.is_digit(radix)) {
                return Err(invalid(i));
            }
            // Only digits are left, so the one way to fail is overflow.
            let magnitude = u64::from_str_radix(&clean, radix).map_err(|_| {
                self.error(start, format!("`{}` does not fit in 64 bits", &rest[..i]))
            })?;
            let number = if negative {
                let value = i64::try_from(magnitude)
                    .ok()
                    .map(|m| -m)
                    .or_else(|| (magnitude == 1 << 63).then_some(i64::MIN))
                    .ok_or_else(|| {
                        self.error(start, format!("`{}` does not fit in 64 bits", &rest[..i]))
                    })?;
                Number::from(value)
            } else {
                Number::from(magnitude)
            };
            return Ok(Token {
                tok: Tok::Num(number),
                start,
                end: start + i,
            });
        }
        let digits = |i: &mut usize| {
            while *i < bytes.len() && (bytes[*i].is_ascii_digit() || bytes[*i] == b'_') {
                *i += 1;
            }
        };
        digits(&mut i);
        let int_part = &rest[body_start..i];
        let mut float = false;
        if bytes.get(i) == Some(&b'.') {
            float = true;
            i += 1;
            digits(&mut i);
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            float = true;
            i += 1;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let exp_start = i;
            digits(&mut i);
            if i == exp_start {
                return Err(invalid(i));
            }
        }
        // `1abc`, `1.2.3`: one bad token, not a number then a name.
        if i < bytes.len() && (is_word(bytes[i]) || bytes[i] == b'.') {
            let mut end = i;
            while end < bytes.len() && (is_word(bytes[end]) || bytes[end] == b'.') {
                end += 1;
            }
            return Err(invalid(end));
        }
        let text = &rest[..i];
        let parts_ok = text[body_start..]
            .split(['.', 'e', 'E', '+', '-'])
            .all(valid_underscores);
        if !parts_ok {
            return Err(invalid(i));
        }
        let clean: String = text.chars().filter(|c| *c != '_').collect();
        let number = if float {
            let value: f64 = clean.parse().map_err(|_| invalid(i))?;
            Number::from_f64(value)
                .ok_or_else(|| self.error(start, format!("`{text}` is too large for a float")))?
        } else {
            let int_clean: String = int_part.chars().filter(|c| *c != '_').collect();
            if int_clean.len() > 1 && int_clean.starts_with('0') {
                return Err(self.error(
                    start,
                    format!("`{text}`: leading zeros are not allowed (write 0o17 for octal)"),
                ));
            }
            if let Ok(n) = clean.parse::<i64>() {
                Number::from(n)
            } else if let Ok(n) = clean.trim_start_matches('+').parse::<u64>() {
                Number::from(n)
            } else {
                return Err(self.error(
                    start,
                    format!("`{text}` does not fit in 64 bits (write it as a string or a float)"),
                ));
            }
        };
        Ok(Token {
            tok: Tok::Num(number),
            start,
            end: start + i,
        })
    }

    /// One value: a literal, a list, a tuple or an object.
    pub(crate) fn value(&mut self) -> Result<Value, ParseError> {
        let token = self.next()?;
        match token.tok {
            Tok::Str(s) => Ok(Value::String(s)),
            Tok::Num(n) => Ok(Value::Number(n)),
            Tok::Name(name) => match name.as_str() {
                "true" | "True" => Ok(Value::Bool(true)),
                "false" | "False" => Ok(Value::Bool(false)),
                "null" | "None" => Ok(Value::Null),
                _ => Err(self.error(
                    token.start,
                    format!(
                        "`{name}` is not a value: strings need quotes (\"{name}\"); \
                         literals are numbers, true/True, false/False, null/None, [...], {{...}}"
                    ),
                )),
            },
            Tok::Open(open) => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.error(
                        token.start,
                        format!("nested more than {MAX_DEPTH} levels deep"),
                    ));
                }
                let value = match open {
                    '[' => self.sequence(']', token.start).map(Value::Array),
                    '(' => self.tuple(token.start),
                    _ => self.object(token.start).map(Value::Object),
                };
                self.depth -= 1;
                value
            }
            Tok::End => Err(self.incomplete("expected a value")),
            other => Err(self.error(
                token.start,
                format!("expected a value, found {}", other.describe()),
            )),
        }
    }

    /// The message for input that ends inside the bracket at `open_at`.
    fn unclosed(&self, open_at: usize) -> ParseError {
        let open = self.src[open_at..].chars().next().unwrap_or('(');
        let column = ParseError::new(self.src, open_at, "", false).column;
        self.incomplete(format!(
            "`{open}` at column {column} is not closed: expected `{}`",
            closer(open)
        ))
    }

    /// After a list item: `,` or the closing bracket.
    fn after_item(&mut self, close: char, open_at: usize) -> Result<bool, ParseError> {
        let token = self.next()?;
        match token.tok {
            Tok::Comma => Ok(false),
            Tok::Close(c) if c == close => Ok(true),
            Tok::End => Err(self.unclosed(open_at)),
            other => Err(self.error(
                token.start,
                format!("expected `,` or `{close}`, found {}", other.describe()),
            )),
        }
    }

    /// Items up to `close` (already past the opening bracket), trailing
    /// comma allowed.
    fn sequence(&mut self, close: char, open_at: usize) -> Result<Vec<Value>, ParseError> {
        let mut items = Vec::new();
        loop {
            match self.peek()?.tok {
                Tok::Close(c) if c == close => {
                    self.next()?;
                    return Ok(items);
                }
                Tok::End => return Err(self.unclosed(open_at)),
                _ => {}
            }
            items.push(self.value()?);
            if self.after_item(close, open_at)? {
                return Ok(items);
            }
        }
    }

    /// `( ... )`: Python's tuple, which its json module sends as a list;
    /// `(x)` without a comma is just `x`, as in Python.
    fn tuple(&mut self, open_at: usize) -> Result<Value, ParseError> {
        match self.peek()?.tok {
            Tok::Close(')') => {
                self.next()?;
                return Ok(Value::Array(Vec::new()));
            }
            Tok::End => return Err(self.unclosed(open_at)),
            _ => {}
        }
        let first = self.value()?;
        if self.after_item(')', open_at)? {
            return Ok(first);
        }
        let mut items = vec![first];
        items.extend(self.sequence(')', open_at)?);
        Ok(Value::Array(items))
    }

    /// `{ key: value, ... }`. Keys are strings, or numbers / booleans /
    /// null converted to text as Python's json.dumps does.
    fn object(&mut self, open_at: usize) -> Result<Map<String, Value>, ParseError> {
        let mut map = Map::new();
        loop {
            let token = self.next()?;
            let key = match token.tok {
                Tok::Close('}') => return Ok(map),
                Tok::End => return Err(self.unclosed(open_at)),
                Tok::Str(s) => s,
                Tok::Num(n) => n.to_string(),
                Tok::Name(name) => match name.as_str() {
                    "true" | "True" => "true".to_owned(),
                    "false" | "False" => "false".to_owned(),
                    "null" | "None" => "null".to_owned(),
                    _ => {
                        return Err(
                            self.error(token.start, format!("object keys need quotes: \"{name}\""))
                        )
                    }
                },
                other => {
                    return Err(self.error(
                        token.start,
                        format!("expected a key or `}}`, found {}", other.describe()),
                    ))
                }
            };
            let colon = self.next()?;
            match colon.tok {
                Tok::Colon => {}
                Tok::End => return Err(self.unclosed(open_at)),
                Tok::Comma | Tok::Close('}') => {
                    return Err(self.error(
                        colon.start,
                        "expected `:` after the key (sets are not JSON: use a list)",
                    ))
                }
                other => {
                    return Err(self.error(
                        colon.start,
                        format!("expected `:` after the key, found {}", other.describe()),
                    ))
                }
            }
            let value = self.value()?;
            if map.contains_key(&key) {
                return Err(self.error(token.start, format!("key \"{key}\" is given twice")));
            }
            map.insert(key, value);
            if self.after_item('}', open_at)? {
                return Ok(map);
            }
        }
    }

    /// A call's arguments, after its `(`: positional values, then
    /// `name=value` keywords, trailing comma allowed.
    fn call_args(&mut self, open_at: usize) -> Result<Args, ParseError> {
        let mut positional = Vec::new();
        let mut keywords = Map::new();
        loop {
            let token = self.peek()?;
            match &token.tok {
                Tok::Close(')') => {
                    self.next()?;
                    break;
                }
                Tok::End => return Err(self.unclosed(open_at)),
                _ => {}
            }
            let keyword = match &token.tok {
                Tok::Name(name) => {
                    let after = self.skip_space_from(token.end);
                    let is_kw =
                        self.src[after..].starts_with('=') && !self.src[after..].starts_with("==");
                    is_kw.then(|| (name.clone(), after))
                }
                _ => None,
            };
            if let Some((name, equals_at)) = keyword {
                self.pos = equals_at + 1;
                if keywords.contains_key(&name) {
                    return Err(self.error(
                        token.start,
                        format!("keyword argument `{name}` is repeated"),
                    ));
                }
                let value = self.value()?;
                keywords.insert(name, value);
            } else {
                if !keywords.is_empty() {
                    return Err(
                        self.error(token.start, "positional argument follows keyword argument")
                    );
                }
                positional.push(self.value()?);
            }
            if self.after_item(')', open_at)? {
                break;
            }
        }
        Args::from_json(Value::Array(positional), Value::Object(keywords))
            .map_err(|e| self.error(open_at, e))
    }

    fn skip_space_from(&self, at: usize) -> usize {
        let mut p = Parser::at(self.src, at);
        p.skip_space();
        p.pos
    }

    /// The dotted target of a call, as (name, offset) segments:
    /// `person.get`, `n.rpc.person.get`, `n.rpc["person-v2"].get`.
    fn target(&mut self) -> Result<Vec<(String, usize)>, ParseError> {
        self.skip_space();
        let mut segments = Vec::new();
        loop {
            let start = self.pos;
            if self.peek_char() == Some('[') && !segments.is_empty() {
                self.pos += 1;
                let token = self.next()?;
                let Tok::Str(name) = token.tok else {
                    return Err(match token.tok {
                        Tok::End => self.unclosed(start),
                        _ => self.error(token.start, "expected a quoted service name in [...]"),
                    });
                };
                let close = self.next()?;
                match close.tok {
                    Tok::Close(']') => {}
                    Tok::End => return Err(self.unclosed(start)),
                    other => {
                        return Err(self.error(
                            close.start,
                            format!("expected `]`, found {}", other.describe()),
                        ))
                    }
                }
                segments.push((name, token.start));
            } else {
                let len = self
                    .rest()
                    .find(|c: char| !is_target_char(c))
                    .unwrap_or(self.rest().len());
                if len == 0 {
                    let what = match self.peek_char() {
                        None => "the end of the line".to_owned(),
                        Some(c) => format!("`{c}`"),
                    };
                    let message = if segments.is_empty() {
                        format!(
                            "expected a call such as person.get(1) or a command (try `help`), \
                             found {what}"
                        )
                    } else {
                        format!("expected a name after `.`, found {what}")
                    };
                    return Err(self.error(start, message));
                }
                segments.push((self.rest()[..len].to_owned(), start));
                self.pos += len;
            }
            match self.peek_char() {
                Some('.') => self.pos += 1,
                Some('[') => {}
                _ => return Ok(segments),
            }
        }
    }

    /// A call or a dispatch.
    pub(crate) fn statement(&mut self) -> Result<Statement, ParseError> {
        self.skip_space();
        let start = self.pos;
        let mut segments = self.target()?;
        let names: Vec<&str> = segments.iter().map(|(n, _)| n.as_str()).collect();
        let dispatch = matches!(names.as_slice(), ["dispatch"] | ["n", "dispatch_event"]);
        // nameko shell's `n.rpc.` prefix, so pasted lines work.
        if !dispatch && names.len() > 2 && names[..2] == ["n", "rpc"] {
            segments.drain(..2);
        }
        let background = !dispatch
            && segments.len() > 2
            && segments.last().is_some_and(|(n, _)| n == "call_async");
        if background {
            segments.pop();
        }
        let after_target = self.pos;
        self.skip_space();
        let open_at = self.pos;
        if self.peek_char() != Some('(') {
            let found = self.peek()?;
            let written = self.src[start..after_target].to_owned();
            let message = if segments.len() == 1 && !dispatch {
                format!("unknown command `{written}` (try `help`)")
            } else {
                format!(
                    "expected `(` after {written}, found {}: calls look like {written}(...)",
                    found.tok.describe()
                )
            };
            let at = if segments.len() == 1 && !dispatch {
                start
            } else {
                open_at
            };
            return Err(self.error(at, message));
        }
        self.pos += 1;
        let args = self.call_args(open_at)?;
        if dispatch {
            return self.bind_dispatch(args, start);
        }
        if segments.len() < 2 {
            let name = segments.first().map(|(n, _)| n.as_str()).unwrap_or("");
            return Err(self.error(
                start,
                format!("`{name}(...)` is not SERVICE.METHOD(...) (nor dispatch(...))"),
            ));
        }
        let (method, _) = segments.pop().unwrap_or_default();
        let service = segments
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(".");
        Ok(Statement::Call {
            service,
            method,
            args,
            background,
        })
    }

    /// Binds `dispatch(...)`'s arguments as Python binds nameko's
    /// `dispatch(service_name, event_type, event_data)`.
    fn bind_dispatch(&self, args: Args, at: usize) -> Result<Statement, ParseError> {
        const PARAMS: [&str; 3] = ["service_name", "event_type", "event_data"];
        let body = args.body();
        if body.args.len() > PARAMS.len() {
            return Err(self.error(
                at,
                format!(
                    "dispatch() takes 3 arguments (service_name, event_type, event_data), got {}",
                    body.args.len()
                ),
            ));
        }
        let mut values: [Option<Value>; 3] = [None, None, None];
        for (slot, value) in values.iter_mut().zip(&body.args) {
            *slot = Some(value.clone());
        }
        for (name, value) in &body.kwargs {
            let Some(index) = PARAMS.iter().position(|p| p == name) else {
                return Err(self.error(
                    at,
                    format!("dispatch() got an unexpected keyword argument `{name}`"),
                ));
            };
            if values[index].replace(value.clone()).is_some() {
                return Err(self.error(at, format!("dispatch() got two values for `{name}`")));
            }
        }
        let [service, event_type, data] = values;
        let text = |value: Option<Value>, name: &str| match value {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            Some(_) => {
                Err(self.error(at, format!("dispatch(): {name} must be a non-empty string")))
            }
            None => Err(self.error(at, format!("dispatch() is missing `{name}`"))),
        };
        let service = text(service, "service_name")?;
        let event_type = text(event_type, "event_type")?;
        let data = data.ok_or_else(|| self.error(at, "dispatch() is missing `event_data`"))?;
        Ok(Statement::Dispatch {
            service,
            event_type,
            data,
        })
    }
}

/// Whether `_` separators in a digit run are where Python allows them:
/// single, and between digits.
fn valid_underscores(digits: &str) -> bool {
    !digits.starts_with('_') && !digits.ends_with('_') && !digits.contains("__")
}

/// Exactly `n` hex digits from `chars`.
fn hex_digits(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, n: usize) -> Option<u32> {
    let mut code = 0u32;
    for _ in 0..n {
        let (_, c) = chars.next()?;
        code = code * 16 + c.to_digit(16)?;
    }
    Some(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_core::json;

    fn value(text: &str) -> Value {
        parse_value(text).unwrap_or_else(|e| panic!("{text}: {}", e.render(text)))
    }

    fn value_err(text: &str) -> ParseError {
        match parse_value(text) {
            Ok(v) => panic!("{text} parsed as {v}"),
            Err(e) => e,
        }
    }

    fn call(text: &str) -> (String, String, Args, bool) {
        match parse_statement(text) {
            Ok(Statement::Call {
                service,
                method,
                args,
                background,
            }) => (service, method, args, background),
            other => panic!("{text}: {other:?}"),
        }
    }

    fn args(positional: Value, keywords: Value) -> Args {
        Args::from_json(positional, keywords).unwrap()
    }

    fn stmt_err(text: &str) -> ParseError {
        match parse_statement(text) {
            Ok(s) => panic!("{text} parsed as {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn json_literals() {
        assert_eq!(value("1"), json!(1));
        assert_eq!(value("-1"), json!(-1));
        assert_eq!(value("0"), json!(0));
        assert_eq!(value("-0"), json!(0));
        assert_eq!(value("1.5"), json!(1.5));
        assert_eq!(value("-2.5e3"), json!(-2500.0));
        assert_eq!(value("1E-2"), json!(0.01));
        assert_eq!(value("true"), json!(true));
        assert_eq!(value("false"), json!(false));
        assert_eq!(value("null"), Value::Null);
        assert_eq!(value("\"hi\""), json!("hi"));
        assert_eq!(value("[]"), json!([]));
        assert_eq!(value("{}"), json!({}));
        assert_eq!(
            value(r#"{"a": [1, {"b": null}], "c": "d"}"#),
            json!({"a": [1, {"b": null}], "c": "d"})
        );
        assert_eq!(value("  [ 1 ,2 ]  "), json!([1, 2]));
    }

    #[test]
    fn python_literals() {
        assert_eq!(value("True"), json!(true));
        assert_eq!(value("False"), json!(false));
        assert_eq!(value("None"), Value::Null);
        assert_eq!(value("'single'"), json!("single"));
        assert_eq!(value("u'py2 unicode'"), json!("py2 unicode"));
        assert_eq!(value(r"r'C:\path\n'"), json!(r"C:\path\n"));
        assert_eq!(value(r"r'it\'s'"), json!(r"it\'s"));
        assert_eq!(value("(1, 2)"), json!([1, 2]));
        assert_eq!(value("(1,)"), json!([1]));
        assert_eq!(value("()"), json!([]));
        assert_eq!(value("(1)"), json!(1));
        assert_eq!(value("((1))"), json!(1));
        assert_eq!(
            value("{1: 'a', True: None, 2.5: 0}"),
            json!({"1": "a", "true": null, "2.5": 0})
        );
        assert_eq!(value("{'a': (1, [True])}"), json!({"a": [1, [true]]}));
        assert_eq!(value("1_000_000"), json!(1_000_000));
        assert_eq!(value("0x1F"), json!(31));
        assert_eq!(value("-0x10"), json!(-16));
        assert_eq!(value("0o17"), json!(15));
        assert_eq!(value("0b101"), json!(5));
        assert_eq!(value("+3"), json!(3));
        assert_eq!(value(".5"), json!(0.5));
        assert_eq!(value("-.5"), json!(-0.5));
        assert_eq!(value("5."), json!(5.0));
        assert_eq!(value("1_0.5_0"), json!(10.5));
    }

    #[test]
    fn number_edges() {
        assert_eq!(value("9223372036854775807"), json!(i64::MAX));
        assert_eq!(value("-9223372036854775808"), json!(i64::MIN));
        assert_eq!(value("18446744073709551615"), json!(u64::MAX));
        assert_eq!(value("-0x8000000000000000"), json!(i64::MIN));
        assert_eq!(value("1e308"), json!(1e308));
        let e = value_err("18446744073709551616");
        assert!(e.message.contains("64 bits"), "{e}");
        let e = value_err("-9223372036854775809");
        assert!(e.message.contains("64 bits"), "{e}");
        assert!(value_err("0x1_0000_0000_0000_0000")
            .message
            .contains("64 bits"));
        assert!(value_err("1e999").message.contains("too large"));
        assert!(value_err("017").message.contains("leading zeros"));
        for bad in [
            "1__0", "1_", "1e", "1e+", "1.2.3", "12abc", "0xZZ", "0x", "1_.5",
        ] {
            let e = value_err(bad);
            assert!(e.message.contains("not a valid number"), "{bad}: {e}");
            assert_eq!(e.column, 1, "{bad}: {e}");
        }
        // A sign must touch its number.
        assert_eq!(value_err("- 1").message, "unexpected character `-`");
    }

    #[test]
    fn escapes_and_unicode() {
        assert_eq!(value(r#""a\"b""#), json!("a\"b"));
        assert_eq!(value(r"'it\'s'"), json!("it's"));
        assert_eq!(value(r#"'say "hi"'"#), json!("say \"hi\""));
        assert_eq!(value(r#""it's""#), json!("it's"));
        assert_eq!(
            value(r#""\\ \/ \n \t \r \b \f \a \v""#),
            json!("\\ / \n \t \r \u{8} \u{c} \u{7} \u{b}")
        );
        assert_eq!(value(r#""\x41\101\0""#), json!("AA\u{0}"));
        assert_eq!(value(r#""\u00e9\u00E9""#), json!("éé"));
        assert_eq!(value(r#""\ud83d\ude00""#), json!("😀"));
        assert_eq!(value(r#""\U0001F600""#), json!("😀"));
        assert_eq!(value("\"héllo 世界 😀\""), json!("héllo 世界 😀"));
        assert_eq!(value("\"tab\there\""), json!("tab\there"));
        assert_eq!(value("''"), json!(""));

        let e = value_err(r#""C:\path""#);
        assert!(e.message.starts_with("unknown escape `\\p`"), "{e}");
        assert_eq!(e.column, 4);
        let e = value_err(r#""\ud83d alone""#);
        assert!(e.message.contains("lone surrogate"), "{e}");
        let e = value_err(r#""\udc00""#);
        assert!(e.message.contains("lone surrogate"), "{e}");
        assert!(value_err(r#""\x4""#).message.contains("2 hex digits"));
        assert!(value_err(r#""\u12g4""#).message.contains("4 hex digits"));
        assert!(value_err(r#""\U00110000""#)
            .message
            .contains("is not a character"));
        let e = value_err("\"open");
        assert!(e.message.contains("not closed"), "{e}");
        assert_eq!(e.column, 1);
        // An unclosed string is a mistake, not a reason to read more lines.
        assert!(!e.incomplete);
        assert!(!value_err("'a\\").incomplete);
        assert!(value_err("b'x'").message.contains("bytes"));
        assert!(value_err("f'x'").message.contains("f-strings"));
    }

    #[test]
    fn structure_errors_point_at_the_column() {
        let e = value_err("[1 2]");
        assert_eq!(
            (e.column, e.message.as_str()),
            (4, "expected `,` or `]`, found `2`")
        );
        let e = value_err("[1,,2]");
        assert_eq!(e.column, 4);
        assert_eq!(e.message, "expected a value, found `,`");
        let e = value_err("{\"a\" 1}");
        assert_eq!(e.column, 6);
        let e = value_err("{a: 1}");
        assert!(e.message.contains("keys need quotes"), "{e}");
        assert_eq!(e.column, 2);
        let e = value_err("{1, 2}");
        assert!(e.message.contains("sets are not JSON"), "{e}");
        let e = value_err("{'a': 1, 'a': 2}");
        assert!(e.message.contains("given twice"), "{e}");
        assert_eq!(e.column, 10);
        let e = value_err("Ada");
        assert!(e.message.contains("strings need quotes"), "{e}");
        let e = value_err("1 2");
        assert_eq!(e.message, "unexpected `2` after the value");
        assert_eq!(e.column, 3);
        let e = value_err("[1]]");
        assert_eq!(e.column, 4);
        let e = value_err("@");
        assert_eq!(e.message, "unexpected character `@`");
        let e = value_err("[1, 2");
        assert!(e.incomplete);
        assert!(e.message.contains("`[` at column 1 is not closed"), "{e}");
        assert!(value_err("{\"a\": ").incomplete);
        assert!(value_err("(1,").incomplete);
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse_value(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = value_err(&deep);
        assert!(e.message.contains("nested more than"), "{e}");
        assert_eq!(e.column, MAX_DEPTH + 1);
    }

    #[test]
    fn calls_with_positional_and_keyword_arguments() {
        assert_eq!(
            call(r#"person.create("Ada", "Lovelace", 36, member=true)"#),
            (
                "person".into(),
                "create".into(),
                Args::new()
                    .arg("Ada")
                    .arg("Lovelace")
                    .arg(36)
                    .kwarg("member", true),
                false
            )
        );
        assert_eq!(call("person.get(1)").2, Args::new().arg(1));
        assert_eq!(
            call("person.list(limit=10)").2,
            Args::new().kwarg("limit", 10)
        );
        assert_eq!(call("person.list()").2, Args::new());
        assert_eq!(call("person.list(  )").2, Args::new());
        assert_eq!(call("person.get(1,)").2, Args::new().arg(1));
        assert_eq!(call("person.get(a=1,)").2, Args::new().kwarg("a", 1));
        assert_eq!(call("  person.get ( 1 ) ").2, Args::new().arg(1));
        assert_eq!(
            call("s.m(-1, -2.5, x = None, y=[1, (2, 3)], z={'k': False})").2,
            args(
                json!([-1, -2.5]),
                json!({"x": null, "y": [1, [2, 3]], "z": {"k": false}})
            )
        );
        // Commas, parens, `=` and `#` inside strings are text.
        assert_eq!(
            call(r#"s.m("a, b", ')', "x=1", '#no comment', k="(,)")"#).2,
            args(
                json!(["a, b", ")", "x=1", "#no comment"]),
                json!({"k": "(,)"})
            )
        );
        // A comment after the call.
        assert_eq!(call("s.m(1)  # get one").2, Args::new().arg(1));
        // Unicode everywhere it may be.
        assert_eq!(
            call("personne.créer(nom='Zoë', 名前='太郎')"),
            (
                "personne".into(),
                "créer".into(),
                args(json!([]), json!({"nom": "Zoë", "名前": "太郎"})),
                false
            )
        );
        // Keyword order is kept (nameko binds by name; order helps reading).
        let a = call("s.m(b=1, a=2)").2;
        assert_eq!(a.body().kwargs.keys().collect::<Vec<_>>(), ["b", "a"]);
    }

    #[test]
    fn targets() {
        assert_eq!(call("eu.person.get(1)").0, "eu.person");
        assert_eq!(call("rpc_cli-abc123.greet('x')").0, "rpc_cli-abc123");
        let (service, method, a, bg) = call("n.rpc.person.get(1)");
        assert_eq!(
            (service.as_str(), method.as_str(), bg),
            ("person", "get", false)
        );
        assert_eq!(a, Args::new().arg(1));
        let (service, method, _, _) = call(r#"n.rpc["person-v2"].get(1)"#);
        assert_eq!((service.as_str(), method.as_str()), ("person-v2", "get"));
        let (service, method, _, _) = call("n.rpc['a.b'].get(1)");
        assert_eq!((service.as_str(), method.as_str()), ("a.b", "get"));
        let (service, method, _, bg) = call("n.rpc.person.get.call_async(1)");
        assert_eq!(
            (service.as_str(), method.as_str(), bg),
            ("person", "get", true)
        );
        let (_, _, _, bg) = call("person.get.call_async(1)");
        assert!(bg);
        // A method that happens to be called call_async stays a method.
        let (service, method, _, bg) = call("svc.call_async(1)");
        assert_eq!(
            (service.as_str(), method.as_str(), bg),
            ("svc", "call_async", false)
        );
        // A service called `n` is still reachable.
        assert_eq!(call("n.get(1)").0, "n");
    }

    #[test]
    fn call_errors() {
        let e = stmt_err("person.get(1 2)");
        assert_eq!(
            (e.column, e.message.as_str()),
            (14, "expected `,` or `)`, found `2`")
        );
        let e = stmt_err("person.get(a=1, 2)");
        assert_eq!(e.message, "positional argument follows keyword argument");
        assert_eq!(e.column, 17);
        let e = stmt_err("person.get(a=1, a=2)");
        assert_eq!(e.message, "keyword argument `a` is repeated");
        assert_eq!(e.column, 17);
        let e = stmt_err("person.get(Ada)");
        assert!(e.message.contains("strings need quotes"), "{e}");
        assert_eq!(e.column, 12);
        let e = stmt_err("person.get(*ids)");
        assert!(e.message.contains("unpacking"), "{e}");
        let e = stmt_err("person.get(a==1)");
        assert!(e.message.contains("not a value"), "{e}");
        assert_eq!(e.column, 12);
        let e = stmt_err("person.get");
        assert!(e.message.contains("expected `(` after person.get"), "{e}");
        assert_eq!(e.column, 11);
        let e = stmt_err("frobnicate");
        assert_eq!(e.message, "unknown command `frobnicate` (try `help`)");
        let e = stmt_err("get(1)");
        assert!(e.message.contains("is not SERVICE.METHOD"), "{e}");
        let e = stmt_err("person.(1)");
        assert!(e.message.contains("expected a name after `.`"), "{e}");
        let e = stmt_err("person.get(1).id");
        assert_eq!(e.message, "unexpected character `.`");
        let e = stmt_err("person.get(1) extra");
        assert_eq!(e.message, "unexpected `extra` after the call");
        assert_eq!(e.column, 15);
        let e = stmt_err("(1)");
        assert!(e.message.starts_with("expected a call such as"), "{e}");
        let e = stmt_err("person.get(1");
        assert!(e.incomplete, "{e}");
        assert!(e.message.contains("`(` at column 11 is not closed"), "{e}");
        assert!(stmt_err("person.get(").incomplete);
        assert!(stmt_err("person.get(x=").incomplete);
        assert!(stmt_err("n.rpc[").incomplete);
        assert!(stmt_err("n.rpc[1]").message.contains("quoted service name"));
    }

    #[test]
    fn statements_may_span_lines() {
        let text = "person.create(\n  'Ada',  # first\n  age=36,\n)";
        assert_eq!(call(text).2, Args::new().arg("Ada").kwarg("age", 36));
        let e = stmt_err("person.create(\n  'Ada' 36)");
        assert_eq!((e.line, e.column), (2, 9));
        assert!(
            e.to_string()
                .starts_with("syntax error at line 2, column 9:"),
            "{e}"
        );
    }

    #[test]
    fn dispatch_statements() {
        let expected = Statement::Dispatch {
            service: "person".into(),
            event_type: "person_created".into(),
            data: json!({"id": 1}),
        };
        for text in [
            r#"dispatch("person", "person_created", {"id": 1})"#,
            r#"n.dispatch_event("person", "person_created", {"id": 1})"#,
            r#"dispatch('person', event_type='person_created', event_data={'id': 1})"#,
            r#"dispatch(service_name='person', event_data={'id': 1}, event_type='person_created')"#,
        ] {
            assert_eq!(parse_statement(text).unwrap(), expected, "{text}");
        }
        assert_eq!(
            parse_statement("dispatch('s', 't', None)").unwrap(),
            Statement::Dispatch {
                service: "s".into(),
                event_type: "t".into(),
                data: Value::Null
            }
        );
        for (text, needle) in [
            ("dispatch('s', 't')", "missing `event_data`"),
            ("dispatch('s', 't', 1, 2)", "takes 3 arguments"),
            (
                "dispatch(1, 't', 1)",
                "service_name must be a non-empty string",
            ),
            (
                "dispatch('', 't', 1)",
                "service_name must be a non-empty string",
            ),
            (
                "dispatch('s', 't', 1, event_type='u')",
                "two values for `event_type`",
            ),
            (
                "dispatch('s', 't', data=1)",
                "unexpected keyword argument `data`",
            ),
        ] {
            let e = stmt_err(text);
            assert!(e.message.contains(needle), "{text}: {e}");
            assert_eq!(e.column, 1, "{text}");
        }
    }

    #[test]
    fn render_shows_a_caret_under_the_column() {
        let text = "person.get(1 2)";
        let e = stmt_err(text);
        assert_eq!(
            e.render(text),
            "syntax error at column 14: expected `,` or `)`, found `2`\n  person.get(1 2)\n               ^"
        );
        // Wide characters take two cells; tabs stay tabs.
        let text = "s.m('世界'\t x)";
        let e = stmt_err(text);
        let rendered = e.render(text);
        let caret_line = rendered.lines().last().unwrap();
        assert_eq!(caret_line, format!("  {}\t ^", " ".repeat(10)));
        // On the second line of a statement, that line is shown.
        let text = "s.m(\n  1 2)";
        let rendered = stmt_err(text).render(text);
        assert!(rendered.ends_with("\n    1 2)\n      ^"), "{rendered}");
    }
}
