//! JavaScript's conversions, as PostHog's Node.js ingestion applies them to JSON values.

use serde_json::Value;

/// `String(n)` for a JSON number, as JavaScript prints the nearest double.
pub fn number_to_string(n: &serde_json::Number) -> String {
    let x = n.as_f64().unwrap_or(0.0);
    f64_to_js_string(x)
}

/// JavaScript's `Number.prototype.toString()` for a finite double.
pub fn f64_to_js_string(x: f64) -> String {
    if x == 0.0 {
        return "0".to_string();
    }
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sign = if x < 0.0 { "-" } else { "" };
    // Rust's `{:e}` gives the shortest round-trip digits, like ECMAScript's algorithm.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let e: i32 = exp.parse().unwrap_or(0);
    let k = digits.len() as i32;
    let n = e + 1;
    let body = if k <= n && n <= 21 {
        format!("{}{}", digits, "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{}", "0".repeat((-n) as usize), digits)
    } else {
        let exp_sign = if n > 0 { "+" } else { "-" };
        let rest = if k > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits.clone()
        };
        format!("{}e{}{}", rest, exp_sign, (n - 1).abs())
    };
    format!("{sign}{body}")
}

/// JavaScript's `String(v)` for a JSON value.
pub fn to_js_string(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number_to_string(n),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::Null => String::new(),
                other => to_js_string(other),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => "[object Object]".into(),
    }
}

/// Whether two JSON values are equal once parsed by JavaScript (`JSON.parse`, then deep
/// equality): numbers compare by value, so `1`, `1.0` and `1e0` are one number, at any depth.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_value(v, w))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

/// JavaScript truthiness of a JSON value.
pub fn is_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0 && !x.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_equal_as_javascript_parses_them() {
        let parse = |t: &str| serde_json::from_str::<Value>(t).unwrap();
        for (a, b) in [
            ("1", "1.0"),
            ("100", "1e2"),
            ("0", "-0.0"),
            (r#"{"a":[1,{"b":2}]}"#, r#"{"a":[1.0,{"b":2e0}]}"#),
        ] {
            assert!(same_value(&parse(a), &parse(b)), "{a} {b}");
        }
        for (a, b) in [
            ("1", "1.5"),
            ("1", "\"1\""),
            ("[1]", "[1,1]"),
            (r#"{"a":1}"#, r#"{"b":1}"#),
            ("null", "0"),
        ] {
            assert!(!same_value(&parse(a), &parse(b)), "{a} {b}");
        }
    }

    #[test]
    fn numbers_print_as_javascript_prints_them() {
        let cases = [
            (json!(42), "42"),
            (json!(4.5), "4.5"),
            (json!(1e21), "1e+21"),
            (json!(1e20), "100000000000000000000"),
            (json!(-7), "-7"),
            (json!(0.000001), "0.000001"),
            (json!(1e-7), "1e-7"),
            (json!(123.456), "123.456"),
            (json!(1.5e300), "1.5e+300"),
            (json!(12345678901234567890u64), "12345678901234567000"),
        ];
        for (v, want) in cases {
            assert_eq!(to_js_string(&v), want, "String({v})");
        }
    }

    #[test]
    fn truthiness_follows_javascript() {
        assert!(!is_truthy(&json!("")));
        assert!(!is_truthy(&json!(0)));
        assert!(!is_truthy(&json!(false)));
        assert!(!is_truthy(&json!(null)));
        assert!(is_truthy(&json!("x")));
        assert!(is_truthy(&json!(-1)));
        assert!(is_truthy(&json!({})));
        assert!(is_truthy(&json!([])));
    }
}
