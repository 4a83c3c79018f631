//! JSON exactly as kombu writes it.
//!
//! kombu's `json` serializer calls `json.dumps` with `", "` / `": "` separators
//! and ASCII-only output. Python peers accept any valid JSON, so this matters
//! for one reason: our messages are byte-for-byte what a nameko peer would
//! send, which keeps captures, diffs and golden tests meaningful.

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};
use std::io::{self, Write};

/// Serialise `value` the way kombu does (`json.dumps(value)` with defaults).
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    // Room for a typical reply or event (a person's record is ~150 bytes):
    // growing the buffer once costs more than the bytes it saves.
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, KombuFormatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// `json.dumps` defaults: `", "` between items, `": "` after keys, and every
/// non-ASCII character escaped as `\uXXXX` (surrogate pairs above U+FFFF).
#[derive(Clone, Copy, Debug, Default)]
pub struct KombuFormatter;

impl Formatter for KombuFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if fragment.is_ascii() {
            return w.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            if ch.is_ascii() {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            start = i + ch.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        // Same escapes as Python's json module: short forms where it has them.
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => {
                return write!(w, "\\u{byte:04x}");
            }
        };
        w.write_all(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn separators_match_python() {
        let v = json!({"args": [1, 2], "kwargs": {"b": 2}});
        assert_eq!(
            String::from_utf8(to_vec(&v).unwrap()).unwrap(),
            r#"{"args": [1, 2], "kwargs": {"b": 2}}"#
        );
    }

    #[test]
    fn non_ascii_is_escaped_like_python() {
        // python3 -c 'import json; print(json.dumps("Zoë 😀\n"))'
        let s = to_vec(&json!("Zoë 😀\n\u{1}")).unwrap();
        assert_eq!(
            String::from_utf8(s).unwrap(),
            r#""Zo\u00eb \ud83d\ude00\n\u0001""#
        );
    }

    #[test]
    fn escaped_output_round_trips() {
        let v = json!({"name": "Ŝŧřïñĝ 🦀 \"quoted\" \\ back"});
        let bytes = to_vec(&v).unwrap();
        assert!(bytes.is_ascii());
        let back: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, v);
    }
}
