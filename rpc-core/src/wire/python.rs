//! Python's `str()` and `repr()` of JSON values, as nameko uses them in error
//! objects: `exc_args` go through `safe_for_serialization` (non-strings become
//! `str(x)`) and `value` is `str(exception)`. Getting these right means a
//! Python caller sees exactly the text it would see from a Python service.

use serde_json::{Map, Number, Value};

/// nameko's `safe_for_serialization`: strings stay, objects and arrays are
/// converted element by element, anything else becomes `str(x)`.
pub fn safe_for_serialization(value: &Value) -> Value {
    match value {
        Value::String(_) => value.clone(),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), safe_for_serialization(v)))
                .collect::<Map<_, _>>(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(safe_for_serialization).collect()),
        other => Value::String(py_str(other)),
    }
}

/// `str(exc)` for an exception built with `args`: `""` for none, `str(arg)`
/// for one, the tuple's repr for several.
pub fn exception_str(args: &[Value]) -> String {
    match args {
        [] => String::new(),
        [one] => py_str(one),
        many => {
            let items: Vec<String> = many.iter().map(py_repr).collect();
            format!("({})", items.join(", "))
        }
    }
}

/// Python `str(x)` of the value a JSON document decodes to.
pub fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python `repr(x)` of the value a JSON document decodes to.
pub fn py_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => number_repr(n),
        Value::String(s) => string_repr(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(py_repr).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", string_repr(k), py_repr(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

fn number_repr(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        float_repr(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// `repr(float)`: the shortest round-trip digits, in positional notation when
/// the decimal exponent is in -4..16 and scientific (`1e+16`, `1.5e-05`) outside.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-4..16).contains(&exp) {
        let mut m = digits[..1].to_owned();
        if digits.len() > 1 {
            m.push('.');
            m.push_str(&digits[1..]);
        }
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{m}e{esign}{:02}", exp.abs());
    }
    // Positional: the decimal point goes after `exp + 1` digits.
    let point = exp + 1;
    let body = if point <= 0 {
        format!("0.{}{}", "0".repeat((-point) as usize), digits)
    } else if (point as usize) >= digits.len() {
        format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

/// `repr(str)`: single quotes unless the text holds a `'` and no `"`.
pub fn string_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn str_and_repr_of_scalars() {
        assert_eq!(py_str(&json!(null)), "None");
        assert_eq!(py_str(&json!(true)), "True");
        assert_eq!(py_str(&json!(42)), "42");
        assert_eq!(py_str(&json!("text")), "text");
        assert_eq!(py_repr(&json!("text")), "'text'");
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
        assert_eq!(py_repr(&json!("a'b\"c")), "'a\\'b\"c'");
        assert_eq!(py_repr(&json!("tab\there")), "'tab\\there'");
    }

    #[test]
    fn float_repr_matches_python() {
        // Each pair checked with python3 -c 'print(repr(x))'.
        let cases = [
            (1.0, "1.0"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e20, "1.2345e+20"),
            (123456.789, "123456.789"),
            (0.0, "0.0"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "repr({x})");
        }
    }

    #[test]
    fn containers() {
        assert_eq!(py_repr(&json!({"k": [1, 2]})), "{'k': [1, 2]}");
        assert_eq!(py_str(&json!([1, "a", null])), "[1, 'a', None]");
    }

    #[test]
    fn exception_text_follows_arg_count() {
        assert_eq!(exception_str(&[]), "");
        assert_eq!(exception_str(&[json!("nosuch")]), "nosuch");
        assert_eq!(exception_str(&[json!(7)]), "7");
        assert_eq!(
            exception_str(&[json!("bad"), json!(42), json!({"k": [1, 2]})]),
            "('bad', 42, {'k': [1, 2]})"
        );
    }

    #[test]
    fn safe_for_serialization_stringifies_leaves() {
        assert_eq!(
            safe_for_serialization(&json!(["bad", 42, {"k": [1, 2]}, true, null])),
            json!(["bad", "42", {"k": ["1", "2"]}, "True", "None"])
        );
    }
}
