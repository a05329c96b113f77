//! Passwords by reference only: an environment variable or a libpq passfile. The value lives
//! in a [`Secret`], whose `Debug` and `Display` never show it.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::conninfo::Conninfo;

/// Where a password comes from. Journaled and printed as the reference, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretRef {
    Env(String),
    Passfile(PathBuf),
    /// A whole file holds the secret (API keys); refused when readable by group or others.
    File(PathBuf),
}

impl SecretRef {
    /// A non-PostgreSQL secret (an API key): the variable's value or the file's content.
    pub fn resolve_plain(&self) -> Result<Secret> {
        match self {
            SecretRef::Env(var) => std::env::var(var).map(Secret::new).map_err(|_| {
                anyhow::anyhow!(
                    "the secret is taken from the environment variable {var}, which is not set; export it before running migrate"
                )
            }),
            SecretRef::File(path) => {
                let meta = std::fs::metadata(path)
                    .with_context(|| format!("the secret file {}", path.display()))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    bail!(
                        "the secret file {} is readable by group or others; chmod 600 it",
                        path.display()
                    );
                }
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read the secret file {}", path.display()))?;
                Ok(Secret::new(text.trim()))
            }
            SecretRef::Passfile(p) => bail!(
                "{} is a PostgreSQL passfile; this secret is not a database password: use {{ env = \"VAR\" }} or {{ file = \"PATH\" }}",
                p.display()
            ),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(v) => write!(f, "environment variable {v}"),
            SecretRef::Passfile(p) => write!(f, "passfile {}", p.display()),
            SecretRef::File(p) => write!(f, "secret file {}", p.display()),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret value; remembered so that no output can show it (see [`crate::redact`]).
    pub fn new(value: impl Into<String>) -> Secret {
        let value = value.into();
        crate::redact::remember(&value);
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The password for `conninfo`: from `reference` when given, else the way libpq looks
/// (`PGPASSWORD`, the conninfo's `passfile`, `PGPASSFILE`, `~/.pgpass`). `None` when nothing
/// applies, which is fine for trust or certificate authentication.
pub fn resolve_password(
    reference: Option<&SecretRef>,
    conninfo: &Conninfo,
) -> Result<Option<Secret>> {
    match reference {
        Some(SecretRef::Env(var)) => match std::env::var(var) {
            Ok(v) => Ok(Some(Secret::new(v))),
            Err(_) => bail!(
                "the password is taken from the environment variable {var}, which is not set; \
                 export it before running migrate"
            ),
        },
        Some(r @ SecretRef::File(_)) => r.resolve_plain().map(Some),
        Some(SecretRef::Passfile(path)) => match lookup_passfile(path, conninfo)? {
            Some(s) => Ok(Some(s)),
            None => bail!(
                "passfile {} has no line matching {}:{}:{}:{}; add one (hostname:port:database:username:password)",
                path.display(),
                passfile_host(conninfo),
                conninfo.port(),
                conninfo.dbname(),
                conninfo.user()
            ),
        },
        None => {
            if let Ok(v) = std::env::var("PGPASSWORD") {
                return Ok(Some(Secret::new(v)));
            }
            let default = conninfo
                .get("passfile")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("PGPASSFILE").map(PathBuf::from))
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")));
            match default {
                Some(p) if p.exists() => lookup_passfile(&p, conninfo),
                _ => Ok(None),
            }
        }
    }
}

fn passfile_host(conninfo: &Conninfo) -> &str {
    let host = conninfo.host();
    if host.starts_with('/') {
        "localhost"
    } else {
        host
    }
}

/// libpq's passfile format: `hostname:port:database:username:password`, `*` matches anything,
/// `\:` and `\\` escape; the first matching line wins. Like libpq, a file readable by group or
/// others is refused.
pub fn lookup_passfile(path: &Path, conninfo: &Conninfo) -> Result<Option<Secret>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("read passfile {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "passfile {} is readable by group or others (mode {mode:04o}); run: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read passfile {}", path.display()))?;
    let port = conninfo.port().to_string();
    let wanted = [
        passfile_host(conninfo),
        port.as_str(),
        conninfo.dbname(),
        conninfo.user(),
    ];
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_passfile_line(line);
        if fields.len() < 5 {
            continue;
        }
        if fields[..4]
            .iter()
            .zip(wanted)
            .all(|(f, w)| f == "*" || f == w)
        {
            return Ok(Some(Secret::new(fields[4].clone())));
        }
    }
    Ok(None)
}

fn split_passfile_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut().unwrap().push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn passfile(contents: &str, mode: u32) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn passfile_matching_and_escapes() {
        let f = passfile(
            "# comment\nother:5432:*:u:nope\n*:5433:*:u:a\\:b\\\\c\n*:*:*:u:fallback\n",
            0o600,
        );
        let c = Conninfo::parse("host=db port=5433 user=u").unwrap();
        assert_eq!(
            lookup_passfile(f.path(), &c).unwrap().unwrap().expose(),
            "a:b\\c"
        );
        let c = Conninfo::parse("host=db port=1 user=u").unwrap();
        assert_eq!(
            lookup_passfile(f.path(), &c).unwrap().unwrap().expose(),
            "fallback"
        );
        let c = Conninfo::parse("host=db user=nobody").unwrap();
        assert!(lookup_passfile(f.path(), &c).unwrap().is_none());
    }

    #[test]
    fn passfile_readable_by_others_is_refused() {
        let f = passfile("*:*:*:*:x\n", 0o644);
        let c = Conninfo::parse("host=db").unwrap();
        let err = lookup_passfile(f.path(), &c).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn secret_is_redacted() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }

    #[test]
    fn missing_env_var_names_it() {
        let c = Conninfo::parse("host=db").unwrap();
        let r = SecretRef::Env("MIGRATE_TEST_SURELY_UNSET_VAR".into());
        let err = resolve_password(Some(&r), &c).unwrap_err().to_string();
        assert!(err.contains("MIGRATE_TEST_SURELY_UNSET_VAR"), "{err}");
    }
}
