//! `nameko.*` message headers ⇄ call context.
//!
//! py-amqp reads a short-string (`s`) header as an int16, so every string is
//! written as a long string (`S`); integers use the smallest of `I`/`l` that
//! fits, as py-amqp does.

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;

/// Prefix nameko puts on every context header.
pub const HEADER_PREFIX: &str = "nameko.";
/// Context key of the call-id stack.
pub const CALL_ID_STACK: &str = "call_id_stack";
/// Its header, on every message (spelled out: `format!` per message cost
/// a tenth of an event's publish).
const CALL_ID_STACK_HEADER: &str = "nameko.call_id_stack";
const _: () = assert!(CALL_ID_STACK_HEADER.len() == HEADER_PREFIX.len() + CALL_ID_STACK.len());

/// What a message's headers say about the call that sent it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IncomingContext {
    /// The caller's call-id stack (oldest first), empty when absent.
    pub call_id_stack: Vec<String>,
    /// Every other header: `nameko.` stripped, foreign keys kept whole.
    pub data: BTreeMap<String, Value>,
}

/// Reads the context from a message's headers, as nameko's
/// `get_context_data` does: strip `nameko.`, keep foreign headers under their
/// full name, and take `call_id_stack` out as the parent stack.
pub fn read_context(headers: Option<&FieldTable>) -> IncomingContext {
    let mut ctx = IncomingContext::default();
    let Some(headers) = headers else {
        return ctx;
    };
    for (key, value) in headers {
        let key = key.as_str();
        let key = key.strip_prefix(HEADER_PREFIX).unwrap_or(key);
        if key == CALL_ID_STACK {
            // Every call carries one; read as strings directly rather than
            // through a JSON array.
            if let AMQPValue::FieldArray(items) = value {
                ctx.call_id_stack = items
                    .as_slice()
                    .iter()
                    .map(|item| match item {
                        AMQPValue::LongString(s) => text(s.as_bytes()),
                        AMQPValue::ShortString(s) => s.as_str().to_owned(),
                        other => match amqp_to_json(other) {
                            Value::String(s) => s,
                            other => other.to_string(),
                        },
                    })
                    .collect();
                continue;
            }
            ctx.call_id_stack = match amqp_to_json(value) {
                Value::Array(items) => items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect(),
                Value::String(s) => vec![s],
                _ => Vec::new(),
            };
        } else {
            ctx.data.insert(key.to_owned(), amqp_to_json(value));
        }
    }
    ctx
}

/// Builds the headers of an outgoing call or event: every non-null context
/// entry as `nameko.<key>`, plus `nameko.call_id_stack`. Keys that would not
/// fit an AMQP short string (255 bytes) cannot be sent and are skipped.
pub fn write_context(call_id_stack: &[String], data: &BTreeMap<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in data {
        if value.is_null() || key == CALL_ID_STACK {
            continue;
        }
        let mut name = String::with_capacity(HEADER_PREFIX.len() + key.len());
        name.push_str(HEADER_PREFIX);
        name.push_str(key);
        if let Ok(name) = ShortString::try_new(name) {
            table.insert(name, json_to_amqp(value));
        } else {
            tracing::warn!(key = %key, "context key too long for an AMQP header; not propagated");
        }
    }
    let stack = call_id_stack
        .iter()
        .map(|id| AMQPValue::LongString(LongString::from(id.as_bytes())))
        .collect::<Vec<_>>();
    table.insert(
        ShortString::from(CALL_ID_STACK_HEADER),
        AMQPValue::FieldArray(FieldArray::from(stack)),
    );
    table
}

/// An AMQP table value as JSON (the form handlers see).
pub fn amqp_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(text(s.as_bytes())),
        AMQPValue::ByteArray(b) => Value::String(text(b.as_slice())),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(amqp_to_json).collect())
        }
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), amqp_to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        AMQPValue::Void => Value::Null,
    }
}

/// Header bytes as text, invalid UTF-8 replaced. The check alone is much
/// cheaper than `from_utf8_lossy`'s walk, and headers are almost always
/// valid.
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// JSON as an AMQP table value, with py-amqp's choice of types.
pub fn json_to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(small) => AMQPValue::LongInt(small),
                    Err(_) => AMQPValue::LongLongInt(i),
                }
            } else {
                AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(json_to_amqp).collect::<Vec<_>>(),
        )),
        Value::Object(map) => {
            let mut table = FieldTable::default();
            for (k, v) in map {
                if let Ok(key) = ShortString::try_new(k.as_str()) {
                    table.insert(key, json_to_amqp(v));
                }
            }
            AMQPValue::FieldTable(table)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefix_is_stripped_and_foreign_headers_kept() {
        let mut t = FieldTable::default();
        t.insert("nameko.user_id".into(), AMQPValue::LongString("u1".into()));
        t.insert("x-other".into(), AMQPValue::LongInt(5));
        t.insert(
            "nameko.call_id_stack".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongString("a.b.1".into())].into()),
        );
        let ctx = read_context(Some(&t));
        assert_eq!(ctx.call_id_stack, vec!["a.b.1".to_owned()]);
        assert_eq!(ctx.data.get("user_id"), Some(&json!("u1")));
        assert_eq!(ctx.data.get("x-other"), Some(&json!(5)));
        assert!(!ctx.data.contains_key("call_id_stack"));
    }

    #[test]
    fn a_stack_of_odd_entries_reads_as_text() {
        let mut t = FieldTable::default();
        t.insert(
            "nameko.call_id_stack".into(),
            AMQPValue::FieldArray(
                vec![
                    AMQPValue::LongString(b"a.b.\xff"[..].into()),
                    AMQPValue::ShortString("c.d.2".into()),
                    AMQPValue::LongInt(3),
                    AMQPValue::ByteArray(b"e.f.4".to_vec().into()),
                ]
                .into(),
            ),
        );
        let ctx = read_context(Some(&t));
        assert_eq!(
            ctx.call_id_stack,
            vec!["a.b.\u{fffd}", "c.d.2", "3", "e.f.4"]
        );
        // A single string instead of an array is a stack of one.
        t.insert(
            "nameko.call_id_stack".into(),
            AMQPValue::LongString("g.h.5".into()),
        );
        assert_eq!(read_context(Some(&t)).call_id_stack, vec!["g.h.5"]);
    }

    #[test]
    fn outgoing_headers_use_long_strings_and_skip_nulls() {
        let mut data = BTreeMap::new();
        data.insert("user_id".to_owned(), json!("u1"));
        data.insert("gone".to_owned(), Value::Null);
        data.insert("x-other".to_owned(), json!(7));
        let t = write_context(&["s.m.1".to_owned()], &data);
        let m = t.inner();
        assert!(matches!(
            m.get("nameko.user_id"),
            Some(AMQPValue::LongString(_))
        ));
        assert!(matches!(
            m.get("nameko.x-other"),
            Some(AMQPValue::LongInt(7))
        ));
        assert!(!m.contains_key("nameko.gone"));
        assert!(
            matches!(m.get("nameko.call_id_stack"), Some(AMQPValue::FieldArray(a)) if a.as_slice().len() == 1)
        );
    }

    #[test]
    fn json_amqp_round_trip() {
        let v = json!({"a": [1, 5_000_000_000i64, 1.5, "s", true, null], "b": {"c": "d"}});
        assert_eq!(amqp_to_json(&json_to_amqp(&v)), v);
    }
}
