//! Secret values migrate has read (passwords, API keys), remembered for the life of the
//! process so that no journal line and no terminal line can carry one, whoever wrote the text
//! (a server's error, a plugin's answer, a child's stderr).

use std::sync::RwLock;

static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Shorter values are not remembered: replacing every "abc" in the output would hide more than
/// it protects. (The spec's checks refuse nothing by length; a short secret is the operator's
/// choice.)
const SHORTEST: usize = 4;

/// What a secret becomes in any output.
pub const MASK: &str = "<redacted>";

/// Remember a secret value (no-op for short or already known ones).
pub fn remember(secret: &str) {
    if secret.chars().count() < SHORTEST {
        return;
    }
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    if !known.iter().any(|k| k == secret) {
        known.push(secret.to_string());
        // Longest first, so a secret that contains another is masked whole.
        known.sort_by_key(|k| std::cmp::Reverse(k.len()));
    }
}

/// `text` with every remembered secret (as written, and as JSON would escape it) masked.
pub fn redact(text: &str) -> String {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    mask(text, &known)
}

/// The pure part of [`redact`].
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
        // The JSON string without its two enclosing quotes (not `trim_matches`, which would
        // also eat an escaped quote at the end and leave a dangling backslash).
        let quoted = serde_json::to_string(s).unwrap_or_default();
        let escaped = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .unwrap_or(&quoted);
        if escaped != s && out.contains(escaped) {
            out = out.replace(escaped, MASK);
        }
    }
    out
}

/// Text for a terminal: secrets masked and control characters other than line breaks and tabs
/// shown escaped, so a server's or a plugin's output cannot drive the terminal.
pub fn for_terminal(text: &str) -> String {
    let masked = redact(text);
    if !masked
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return masked;
    }
    masked
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_as_written_and_json_escaped() {
        let secrets = vec![
            "pa\"ss\\word".to_string(),
            "hunter22".to_string(),
            "ends-in-quote\"".to_string(),
        ];
        let line = serde_json::json!({
            "error": "auth failed for pa\"ss\\word; hunter22; ends-in-quote\""
        })
        .to_string();
        let masked = mask(&line, &secrets);
        serde_json::from_str::<serde_json::Value>(&masked).expect("still JSON");
        assert!(
            !masked.contains("hunter22") && !masked.contains("ss\\\\word"),
            "{masked}"
        );
        assert_eq!(masked.matches(MASK).count(), 3, "{masked}");
    }

    #[test]
    fn terminal_text_has_no_raw_escapes() {
        assert_eq!(for_terminal("a\u{1b}[2Jb\nc\td"), "a\\u{1b}[2Jb\nc\td");
    }
}
