//! JSON text as Python's `json.dumps(value)` renders it with its default arguments:
//! `", "` between items, `": "` after keys, every character outside printable ASCII escaped
//! (`ensure_ascii=True`, astral characters as surrogate pairs), floats as `repr(float)`.
//!
//! The seed's consumers only parse this text, but rendering it byte for byte the way the
//! seed did means an entry written by Broadcaster cannot be told apart from one written by
//! django-broadcaster.

use serde_json::Value;

/// Renders `value` as `json.dumps(value)` does.
///
/// ```
/// let v = serde_json::json!({"name": "Zoë", "n": [1, 2.0, 1e16, null, true]});
/// assert_eq!(
///     broadcaster_entry::pyjson::to_string(&v),
///     r#"{"name": "Zo\u00eb", "n": [1, 2.0, 1e+16, null, true]}"#
/// );
/// ```
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

/// Appends `value` rendered as `json.dumps(value)` does.
pub fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else if let Some(f) = n.as_f64() {
                write_float(out, f);
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, key);
                out.push_str(": ");
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// Appends `s` as a JSON string literal with `ensure_ascii=True` escaping.
pub fn write_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let push_u = |out: &mut String, unit: u16| {
        out.push_str("\\u");
        for shift in [12, 8, 4, 0] {
            out.push(HEX[usize::from((unit >> shift) & 0xf)] as char);
        }
    };
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    push_u(out, *unit);
                }
            }
        }
    }
    out.push('"');
}

/// Appends a float as Python's `repr(float)` renders it: the shortest digits that read back
/// to the same value, positional notation for decimal exponents from -4 to 15 (always with
/// a fractional part, `2.0`), scientific notation otherwise (`1e+16`, `1.5e-07`).
///
/// JSON has no NaN or infinity; should one reach here it is rendered as Python would
/// (`NaN`, `Infinity`, `-Infinity`).
pub fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    // Rust's `{:e}` gives the shortest round-tripping digits: "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if negative {
        out.push('-');
    }
    // Position of the decimal point relative to the start of `digits`.
    let point = exp + 1;
    if !(-4 < point && point <= 16) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.unsigned_abs()));
    } else if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', point.unsigned_abs() as usize));
        out.push_str(&digits);
    } else {
        let point = point as usize;
        if point < digits.len() {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        } else {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', point - digits.len()));
            out.push_str(".0");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn float(f: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, f);
        s
    }

    #[test]
    fn floats_render_as_python_repr() {
        // Each right-hand side is what CPython 3.11 prints for repr(left).
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (2.5, "2.5"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e20, "1.2345e+20"),
            (1e100, "1e+100"),
            (-3.25e-10, "-3.25e-10"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (0.30000000000000004, "0.30000000000000004"),
        ];
        for (value, python) in cases {
            assert_eq!(float(value), python, "repr({value:?})");
        }
    }

    #[test]
    fn strings_escape_everything_outside_printable_ascii() {
        let mut s = String::new();
        write_str(&mut s, "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{7f}é€😀/");
        assert_eq!(s, r#""a\"b\\c\n\r\t\b\f\u0001\u007f\u00e9\u20ac\ud83d\ude00/""#);
    }

    #[test]
    fn containers_use_python_separators_and_keep_key_order() {
        let v = json!({"z": [], "a": {}, "m": [1, {"k": null}], "b": false});
        assert_eq!(to_string(&v), r#"{"z": [], "a": {}, "m": [1, {"k": null}], "b": false}"#);
    }

    #[test]
    fn integers_keep_their_full_width() {
        let v = json!([i64::MIN, u64::MAX, -1, 0]);
        assert_eq!(to_string(&v), "[-9223372036854775808, 18446744073709551615, -1, 0]");
    }
}
