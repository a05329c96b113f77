//! Pure checks and normal forms for values read from a spec: time limits with bounds, text free
//! of control characters, and the spellings of paths and addresses that name the same thing.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The range a time limit must fall in. A zero limit that would only fail after the point of
/// no return (a promotion that may take no time) is refused at parse time instead.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub min: Duration,
    pub max: Duration,
}

impl Bounds {
    pub const fn new(min: Duration, max: Duration) -> Bounds {
        Bounds { min, max }
    }

    /// `None` when `d` is within; otherwise the problem, for a [`super::SpecError`].
    pub fn problem(&self, d: Duration) -> Option<String> {
        if d < self.min {
            Some(format!(
                "{} is shorter than the least this limit can be ({})",
                human(d),
                human(self.min)
            ))
        } else if d > self.max {
            Some(format!(
                "{} is longer than the most this limit can be ({})",
                human(d),
                human(self.max)
            ))
        } else {
            None
        }
    }

    pub fn fix(&self) -> String {
        format!(
            "give a duration between {} and {}",
            human(self.min),
            human(self.max)
        )
    }
}

pub const SECOND: Duration = Duration::from_secs(1);
pub const MINUTE: Duration = Duration::from_secs(60);
pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(86_400);

fn human(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        m if m % 86_400_000 == 0 => format!("{}d", m / 86_400_000),
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1_000 == 0 => format!("{}s", m / 1_000),
        m => format!("{m}ms"),
    }
}

/// The longest piece of spec text quoted in a message; longer values are cut with a count.
pub const QUOTE_MAX: usize = 120;

/// Spec text made safe to show on a terminal: control characters (ESC, CR, NUL, …) escaped as
/// `\u{1b}`, and cut after `max` characters with the number left out.
pub fn shown(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == max {
            let left = text.chars().count() - max;
            out.push_str(&format!("… ({left} more characters)"));
            break;
        }
        if unprintable(c) && c != '\n' {
            out.extend(c.escape_default());
        } else if c == '\n' {
            out.push_str("\\n");
        } else {
            out.push(c);
        }
    }
    out
}

/// The first control character in `text`, if any (they never belong in a name, a user, a
/// path or a conninfo value), or invisible formatting character (see [`unprintable`]).
pub fn control_char(text: &str) -> Option<char> {
    text.chars().find(|&c| unprintable(c))
}

/// A control character (C0, DEL, C1), or one of Unicode's invisible formatting characters: the
/// bidirectional overrides and isolates that make text read otherwise than it is (U+202E shows
/// `db-old` for what is another name), zero-width characters, line and paragraph separators,
/// the byte-order mark. None belongs in a spec's names, paths or arguments.
pub fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{ad}' | '\u{61c}' | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}')
}

/// The first string (or key) anywhere in a spec document that holds an [`unprintable`]
/// character, as its dotted path and the character. The one place such text may stay is a
/// plugin's `config` table (an exec route's, a fence's): handed to the plugin as JSON, where
/// it is escaped, and opaque to migrate (a PEM block may need its line breaks).
pub fn first_unprintable(doc: &toml::Table) -> Option<(String, char)> {
    fn walk(v: &toml::Value, at: &str) -> Option<(String, char)> {
        match v {
            toml::Value::String(s) => control_char(s).map(|c| (at.to_string(), c)),
            toml::Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, v)| walk(v, &format!("{at}[{i}]"))),
            toml::Value::Table(t) => in_table(t, at),
            _ => None,
        }
    }
    fn in_table(t: &toml::Table, at: &str) -> Option<(String, char)> {
        t.iter().find_map(|(k, v)| {
            let here = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if let Some(c) = control_char(k) {
                return Some((here, c));
            }
            if k == "config" && v.is_table() {
                return None;
            }
            walk(v, &here)
        })
    }
    in_table(doc, "")
}

/// `/a/./b//c/../d` → `/a/b/d`, without touching the file system (the path is on another
/// host). `..` above the root stays at the root, as the kernel resolves it.
pub fn normal_path(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => {}
        }
    }
    if out.as_os_str().is_empty() {
        out.push("/");
    }
    out
}

/// One spelling per host: IP addresses in canonical form (`::0:1` and `::1` agree, an
/// IPv4-mapped IPv6 address is its IPv4), names lower-cased without a trailing dot, and the
/// loopback names (`localhost`, `127.0.0.1`, `::1`) as one.
pub fn normal_host(h: &str) -> String {
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    let lower = bare.trim_end_matches('.').to_ascii_lowercase();
    let ip = lower.parse::<IpAddr>().ok().map(|ip| match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    });
    match ip {
        // Only the default loopback addresses: a server may listen on 127.0.0.2 alone.
        Some(ip)
            if ip == IpAddr::from([127, 0, 0, 1])
                || ip == IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]) =>
        {
            "loopback".into()
        }
        Some(ip) => ip.to_string(),
        None if lower == "localhost" => "loopback".into(),
        None => lower,
    }
}

/// A key equal for two host controls that reach the same machine: ssh destinations compared
/// in normal form (see [`normal_host`]), others by their own identity.
pub fn machine(h: &crate::host::HostSpec) -> String {
    match h {
        crate::host::HostSpec::Ssh { host, port, .. } => {
            format!("ssh:{}:{}", normal_host(host), port.unwrap_or(22))
        }
        other => other.identity(),
    }
}

/// A name that goes into SQL, a config file or a command line as is: letters, digits and a
/// few separators, starting with a letter or '_', at most 63 bytes (PostgreSQL's NAMEDATALEN).
pub fn plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// An environment variable name as a shell writes it: no `=`, no NUL, not empty.
pub fn env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_the_limits() {
        let b = Bounds::new(SECOND, HOUR);
        assert!(b.problem(Duration::ZERO).unwrap().contains("least"));
        assert!(b.problem(2 * HOUR).unwrap().contains("1h"));
        assert_eq!(b.problem(30 * SECOND), None);
        assert_eq!(b.fix(), "give a duration between 1s and 1h");
    }

    #[test]
    fn shown_escapes_control_characters_and_cuts_long_text() {
        assert_eq!(shown("a\u{1b}[31mb\r\n", 50), "a\\u{1b}[31mb\\r\\n");
        let long = "x".repeat(10_000_000);
        let s = shown(&long, 10);
        assert!(s.starts_with("xxxxxxxxxx… (9999990 more"), "{s}");
        assert!(s.len() < 60);
        assert_eq!(shown("db\u{202e}dlo", 50), "db\\u{202e}dlo");
    }

    #[test]
    fn invisible_characters_are_found_anywhere_but_in_a_plugins_config() {
        let doc = |text: &str| -> toml::Table { toml::from_str(text).unwrap() };
        assert_eq!(first_unprintable(&doc("a = \"x\"\n[b]\nc = [\"y\"]")), None);
        assert_eq!(
            first_unprintable(&doc(
                "[nodes.old]\nhost = { options = [\"a\", \"b\\u202e\"] }"
            )),
            Some(("nodes.old.host.options[1]".into(), '\u{202e}'))
        );
        assert_eq!(
            first_unprintable(&doc("[nodes.\"a\\u0000\"]\nx = 1")),
            Some(("nodes.a\u{0}".into(), '\u{0}'))
        );
        assert_eq!(
            first_unprintable(&doc("[[route]]\nconfig = { pem = \"a\\nb\" }")),
            None
        );
        assert_eq!(
            first_unprintable(&doc("[clone]\nconfig = \"/a\\nb\"")),
            Some(("clone.config".into(), '\n'))
        );
        for c in ['\u{1b}', '\u{85}', '\u{200b}', '\u{2066}', '\u{feff}'] {
            assert!(unprintable(c), "{c:?}");
        }
        for c in ['é', '💥', ' ', 'ß'] {
            assert!(!unprintable(c), "{c:?}");
        }
    }

    #[test]
    fn paths_are_compared_in_normal_form() {
        assert_eq!(
            normal_path(Path::new("/srv/pg/../pg//data/.")),
            Path::new("/srv/pg/data")
        );
        assert_eq!(normal_path(Path::new("/../..")), Path::new("/"));
    }

    #[test]
    fn host_spellings_agree() {
        assert_eq!(normal_host("2001:DB8::0:1"), normal_host("[2001:db8::1]"));
        assert_eq!(normal_host("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(normal_host("DB1.Example.com."), "db1.example.com");
        for l in ["localhost", "127.0.0.1", "::1", "[::1]"] {
            assert_eq!(normal_host(l), "loopback", "{l}");
        }
        assert_eq!(normal_host("127.0.0.2"), "127.0.0.2");
    }

    #[test]
    fn env_names() {
        assert!(env_name("PGPASSWORD_OLD") && env_name("_x1"));
        for bad in ["", "A=B", "A\u{0}B", "1A", "A B", "-A"] {
            assert!(!env_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn identifiers() {
        assert!(plain_identifier("app_db-2"));
        for bad in ["", "a b", "x;DROP TABLE t", "2abc", "a\"b", &"a".repeat(64)] {
            assert!(!plain_identifier(bad), "{bad:?}");
        }
    }
}
