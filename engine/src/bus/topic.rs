//! Topic names and NATS-style patterns: tokens separated by `.`; in a
//! pattern `*` matches exactly one token and `>` (last token only) one or
//! more. Names are validated where they enter (the CLI, the builtins, a
//! peer's envelope).

use super::BusError;

/// Longest topic or pattern, bytes.
pub const MAX_TOPIC_BYTES: usize = 128;

fn check(text: &str, what: &str, wildcards: bool) -> Result<(), BusError> {
    let bad = |reason: String| BusError::Invalid(format!("{what} {text:?}: {reason}"));
    if text.is_empty() || text.len() > MAX_TOPIC_BYTES {
        return Err(bad(format!("must be 1 to {MAX_TOPIC_BYTES} bytes")));
    }
    let tokens: Vec<&str> = text.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(bad(
                "has an empty token (`..`, or a leading or trailing `.`)".into()
            ));
        }
        match *t {
            "*" if wildcards => {}
            ">" if wildcards && i == tokens.len() - 1 => {}
            ">" if wildcards => return Err(bad("`>` may only be the last token".into())),
            _ => {
                if let Some(c) = t
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
                {
                    return Err(bad(format!(
                        "contains {c:?}; tokens are ASCII letters, digits, `_` and `-`{}",
                        if wildcards { ", or `*` / `>`" } else { "" }
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Checks a topic a message is published to (no wildcards).
///
/// # Errors
/// [`BusError::Invalid`] saying what is wrong.
pub fn check_topic(topic: &str) -> Result<(), BusError> {
    check(topic, "topic", false)
}

/// Checks a subscription pattern.
///
/// # Errors
/// [`BusError::Invalid`] saying what is wrong.
pub fn check_pattern(pattern: &str) -> Result<(), BusError> {
    check(pattern, "topic pattern", true)
}

/// Whether `pattern` matches `topic`.
#[must_use]
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*.c", "a.b.d"));
        assert!(!matches("a.*.c", "a.b.c.d"));
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(check_pattern("a.>.c").is_err());
        assert!(check_topic("a.*").is_err());
        assert!(check_topic("a..b").is_err());
        assert!(check_pattern("*.x.>").is_ok());
    }
}
