//! libpq connection strings: `key=value` pairs and `postgresql://` URIs.
//!
//! A [`Conninfo`] never carries a password when it is displayed or handed to a PostgreSQL
//! tool: passwords travel separately (see [`super::secret`]), so a conninfo can be journaled,
//! logged and printed as is.

use std::fmt;

/// Keywords libpq accepts (PostgreSQL 12-17). Anything else is refused, as libpq does.
const KNOWN_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConninfoError {
    #[error("unknown connection option {0:?} (libpq does not know it)")]
    UnknownKey(String),
    #[error("missing \"=\" after {0:?}")]
    MissingEquals(String),
    #[error("unterminated quoted value for {0:?}")]
    Unterminated(String),
    #[error("invalid URI: {0}")]
    BadUri(String),
    #[error("invalid port {0:?}")]
    BadPort(String),
}

#[derive(Clone, PartialEq, Eq)]
pub struct Conninfo {
    params: Vec<(String, String)>,
}

impl Conninfo {
    pub fn parse(text: &str) -> Result<Conninfo, ConninfoError> {
        let t = text.trim();
        let info = if t.starts_with("postgresql://") || t.starts_with("postgres://") {
            parse_uri(t)?
        } else {
            parse_pairs(t)?
        };
        if let Some(port) = info.get("port") {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(ConninfoError::BadPort(port.to_string()));
            }
        }
        Ok(info)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.params.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.params.push((key.to_string(), value)),
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.params.retain(|(k, _)| k != key);
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Conninfo {
        self.set(key, value);
        self
    }

    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The host as libpq would use it: `host`, else `hostaddr`, else `localhost`.
    pub fn host(&self) -> &str {
        self.get("host")
            .or_else(|| self.get("hostaddr"))
            .unwrap_or("localhost")
    }

    pub fn port(&self) -> u16 {
        self.get("port")
            .and_then(|p| p.parse().ok())
            .unwrap_or(5432)
    }

    pub fn user(&self) -> &str {
        self.get("user").unwrap_or("postgres")
    }

    pub fn dbname(&self) -> &str {
        self.get("dbname").unwrap_or_else(|| self.user())
    }

    pub fn has_password(&self) -> bool {
        self.get("password").is_some()
    }

    /// `key='value' …` for libpq tools, password always left out.
    pub fn to_libpq_string(&self) -> String {
        self.params
            .iter()
            .filter(|(k, _)| k != "password")
            .map(|(k, v)| format!("{k}={}", quote_value(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for Conninfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_libpq_string())
    }
}

impl fmt::Debug for Conninfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Conninfo({self})")
    }
}

fn quote_value(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:,@".contains(c))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

fn push_checked(
    params: &mut Vec<(String, String)>,
    key: String,
    value: String,
) -> Result<(), ConninfoError> {
    if !KNOWN_KEYS.contains(&key.as_str()) {
        return Err(ConninfoError::UnknownKey(key));
    }
    params.retain(|(k, _)| *k != key);
    params.push((key, value));
    Ok(())
}

fn parse_pairs(text: &str) -> Result<Conninfo, ConninfoError> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConninfoError::MissingEquals(key));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(ConninfoError::Unterminated(key)),
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(ConninfoError::Unterminated(key)),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        push_checked(&mut params, key, value)?;
    }
    Ok(Conninfo { params })
}

fn percent_decode(s: &str) -> Result<String, ConninfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConninfoError::BadUri(format!("bad percent-escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConninfoError::BadUri("escape is not UTF-8".into()))
}

fn parse_uri(text: &str) -> Result<Conninfo, ConninfoError> {
    let rest = text.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let mut params = Vec::new();
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                push_checked(&mut params, "user".into(), percent_decode(user)?)?;
            }
            if let Some(p) = password {
                push_checked(&mut params, "password".into(), percent_decode(p)?)?;
            }
            hostport
        }
        None => authority,
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| ConninfoError::BadUri("unclosed [ in IPv6 host".into()))?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        push_checked(&mut params, "host".into(), percent_decode(host)?)?;
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        push_checked(&mut params, "port".into(), p.to_string())?;
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        push_checked(&mut params, "dbname".into(), percent_decode(db)?)?;
    }
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ConninfoError::MissingEquals(pair.to_string()))?;
        push_checked(&mut params, percent_decode(k)?, percent_decode(v)?)?;
    }
    Ok(Conninfo { params })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_pairs_with_quotes() {
        let c =
            Conninfo::parse(r"host=db1 port = 5433 dbname='my db' options='-c x=\'y\''").unwrap();
        assert_eq!(c.host(), "db1");
        assert_eq!(c.port(), 5433);
        assert_eq!(c.dbname(), "my db");
        assert_eq!(c.get("options"), Some("-c x='y'"));
        let again = Conninfo::parse(&c.to_libpq_string()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn uri_forms() {
        let c = Conninfo::parse("postgresql://repl@[::1]:6000/app?sslmode=verify-full").unwrap();
        assert_eq!(c.host(), "::1");
        assert_eq!(c.port(), 6000);
        assert_eq!(c.user(), "repl");
        assert_eq!(c.dbname(), "app");
        assert_eq!(c.get("sslmode"), Some("verify-full"));
        let d = Conninfo::parse("postgres://u%40x:s3cret@h/d%20b").unwrap();
        assert_eq!(d.user(), "u@x");
        assert_eq!(d.dbname(), "d b");
        assert!(d.has_password());
    }

    #[test]
    fn password_never_rendered() {
        let c = Conninfo::parse("host=h password=hunter2 user=u").unwrap();
        assert!(c.has_password());
        assert!(!c.to_string().contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        let u = Conninfo::parse("postgresql://u:hunter2@h/db").unwrap();
        assert!(!u.to_libpq_string().contains("hunter2"));
    }

    #[test]
    fn errors() {
        assert_eq!(
            Conninfo::parse("host=h colour=blue"),
            Err(ConninfoError::UnknownKey("colour".into()))
        );
        assert!(matches!(
            Conninfo::parse("host"),
            Err(ConninfoError::MissingEquals(_))
        ));
        assert!(matches!(
            Conninfo::parse("host='h"),
            Err(ConninfoError::Unterminated(_))
        ));
        assert!(matches!(
            Conninfo::parse("port=x"),
            Err(ConninfoError::BadPort(_))
        ));
    }

    #[test]
    fn defaults() {
        let c = Conninfo::parse("").unwrap();
        assert_eq!(
            (c.host(), c.port(), c.user(), c.dbname()),
            ("localhost", 5432, "postgres", "postgres")
        );
    }
}
