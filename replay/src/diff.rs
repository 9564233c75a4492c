//! Structural diffs of two JSON values, field by field: what a divergence
//! report shows (recorded vs replayed event body) and what `stele diff`
//! shows (a view's state at two seqs).
//!
//! Objects are compared key by key, arrays index by index; a string that
//! holds a JSON object or array on both sides (a policy request, tool
//! arguments, tool calls) is compared inside, its path marked with `$`
//! (`request$.context.args.path`), so a one-field change in a request is one
//! line, not two blobs.

use serde_json::Value;

/// One difference: the path and the value on each side (`None`: absent).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldDiff {
    /// `a.b[2].c`; empty for the root.
    pub path: String,
    /// The value on the left (recorded, or the earlier state).
    pub before: Option<Value>,
    /// The value on the right (replayed, or the later state).
    pub after: Option<Value>,
}

/// Every difference between `before` and `after`, in document order.
#[must_use]
pub fn diff_values(before: &Value, after: &Value) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    walk(String::new(), Some(before), Some(after), &mut out);
    out
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A string holding a JSON object or array.
fn embedded(v: &Value) -> Option<Value> {
    let s = v.as_str()?;
    let t = s.trim_start();
    if !(t.starts_with('{') || t.starts_with('[')) {
        return None;
    }
    serde_json::from_str::<Value>(s)
        .ok()
        .filter(|v| v.is_object() || v.is_array())
}

fn walk(path: String, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<FieldDiff>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            for (k, va) in x {
                walk(child(&path, k), Some(va), y.get(k), out);
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    walk(child(&path, k), None, Some(vb), out);
                }
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                walk(format!("{path}[{i}]"), x.get(i), y.get(i), out);
            }
        }
        (Some(x), Some(y)) if x == y => {}
        (Some(x), Some(y)) => match (embedded(x), embedded(y)) {
            (Some(ex), Some(ey)) => walk(format!("{path}$"), Some(&ex), Some(&ey), out),
            _ => out.push(FieldDiff {
                path,
                before: Some(x.clone()),
                after: Some(y.clone()),
            }),
        },
        (None, None) => {}
        (a, b) => out.push(FieldDiff {
            path,
            before: a.cloned(),
            after: b.cloned(),
        }),
    }
}

/// `v` as one line of at most `max` characters (cut with `…`); `absent`
/// for `None`.
#[must_use]
pub fn short(v: Option<&Value>, max: usize) -> String {
    let Some(v) = v else {
        return "(absent)".to_owned();
    };
    let s = v.to_string();
    if s.chars().count() <= max {
        return s;
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The differences as an aligned three-column table (path, before, after),
/// each value cut at `width` characters.
#[must_use]
pub fn render_table(diffs: &[FieldDiff], left: &str, right: &str, width: usize) -> String {
    let rows: Vec<(String, String, String)> = diffs
        .iter()
        .map(|d| {
            let path = if d.path.is_empty() {
                "(root)".to_owned()
            } else {
                d.path.clone()
            };
            (
                path,
                short(d.before.as_ref(), width),
                short(d.after.as_ref(), width),
            )
        })
        .collect();
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max(5);
    let w1 = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .max(left.len());
    let mut out = format!("  {:<w0$}  {:<w1$}  {right}\n", "field", left);
    for (p, a, b) in rows {
        out.push_str(&format!("  {p:<w0$}  {a:<w1$}  {b}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nested_fields_arrays_and_embedded_json() {
        let a = json!({"kind": "policy_decided", "verdict": "deny", "policies": ["x"],
            "request": "{\"context\":{\"args\":{\"path\":\"a\"}},\"id\":1}", "same": 1});
        let b = json!({"kind": "policy_decided", "verdict": "allow", "policies": ["x", "y"],
            "request": "{\"context\":{\"args\":{\"path\":\"b\"}},\"id\":1}", "same": 1, "new": true});
        let d = diff_values(&a, &b);
        let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            ["verdict", "policies[1]", "request$.context.args.path", "new"]
        );
        assert_eq!(d[1].before, None);
        assert_eq!(d[2].after, Some(json!("b")));
        assert!(diff_values(&a, &a).is_empty());
    }

    #[test]
    fn table_aligns_and_cuts() {
        let d = diff_values(&json!({"a": "x".repeat(100)}), &json!({"a": 1}));
        let t = render_table(&d, "recorded", "replayed", 20);
        assert!(t.contains("field"), "{t}");
        assert!(t.contains('…'), "{t}");
        assert!(
            t.lines().nth(1).is_some_and(|l| l.trim_start().starts_with('a')),
            "{t}"
        );
    }
}
