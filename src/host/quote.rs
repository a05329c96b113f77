//! POSIX shell quoting for commands sent through `ssh`.

/// Quote one word so that any POSIX shell reads it back unchanged.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

pub fn shell_join<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|w| shell_quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips_through_sh() {
        let words = [
            "plain",
            "",
            "two words",
            "it's",
            "$(rm -rf /)",
            "`x`",
            "a\"b",
            "new\nline",
            "*",
            "; echo pwned",
        ];
        let script = format!("printf '%s\\0' {}", shell_join(&words));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        // Every word ends with a NUL, so splitting leaves one empty piece after the last.
        let mut pieces: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .map(|s| String::from_utf8(s.to_vec()).unwrap())
            .collect();
        assert_eq!(pieces.pop().as_deref(), Some(""));
        assert_eq!(pieces, words);
        assert_eq!(shell_quote(""), "''");
    }
}
