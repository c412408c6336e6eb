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
