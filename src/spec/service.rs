//! A node's `service`: how its server is started and stopped.
//!
//! ```toml
//! service = "pg_ctl"                                              # the default
//! service = { kind = "pg_ctlcluster", version = 15, cluster = "main" }
//! service = { kind = "systemd", unit = "postgresql@15-main" }
//! ```

use super::{SpecError, Validator};
use crate::pg::service::Service;

const FIX: &str = "write service = \"pg_ctl\", service = { kind = \"pg_ctlcluster\", version = 15, cluster = \"main\" } or service = { kind = \"systemd\", unit = \"postgresql@15-main\" }";

/// A postgresql-common cluster name as `pg_createcluster` accepts it and a shell needs no
/// quoting for: letters, digits, `_`, `-`, `.`, not starting with `.` or `-`.
pub fn cluster_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// A systemd unit name (systemd.unit(5)): letters, digits, `:-_.\@`, not starting with `-`,
/// with no suffix or `.service`.
pub fn unit_name_ok(unit: &str) -> bool {
    let stem = unit.strip_suffix(".service").unwrap_or(unit);
    !stem.is_empty()
        && unit.len() <= 255
        && !unit.starts_with('-')
        && stem.split('.').all(|p| !p.is_empty())
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
        && !stem.ends_with('@')
}

impl Validator {
    pub(super) fn service(
        &self,
        field: &str,
        raw: Option<toml::Value>,
    ) -> Result<Service, SpecError> {
        let Some(raw) = raw else {
            return Ok(Service::PgCtl);
        };
        let table = match raw {
            toml::Value::String(s) if s == "pg_ctl" => return Ok(Service::PgCtl),
            toml::Value::String(s) if s == "pg_ctlcluster" || s == "systemd" => {
                return Err(self.err(
                    field,
                    format!("{s:?} needs to say which cluster or unit"),
                    FIX,
                ))
            }
            toml::Value::Table(t) => t,
            other => return Err(self.err(field, format!("{other} is not a service manager"), FIX)),
        };
        let kind = table.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let allowed: &[&str] = match kind {
            "pg_ctl" => &["kind"],
            "pg_ctlcluster" => &["kind", "version", "cluster"],
            "systemd" => &["kind", "unit"],
            _ => {
                return Err(self.err(
                    format!("{field}.kind"),
                    match table.get("kind") {
                        Some(k) => format!("{k} is not a service manager"),
                        None => "missing".to_string(),
                    },
                    FIX,
                ))
            }
        };
        if let Some(extra) = table.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(self.err(
                format!("{field}.{extra}"),
                format!("unknown field for kind = {kind:?}"),
                format!("a {kind} service takes {}", allowed.join(", ")),
            ));
        }
        Ok(match kind {
            "pg_ctl" => Service::PgCtl,
            "pg_ctlcluster" => {
                let version = match table.get("version") {
                    Some(toml::Value::Integer(v)) if (9..=99).contains(v) => *v as u32,
                    Some(v) => {
                        return Err(self.err(
                            format!("{field}.version"),
                            format!("{v} is not a PostgreSQL major version"),
                            "write the major version as a number, e.g. version = 15 (the directory under /etc/postgresql)",
                        ))
                    }
                    None => {
                        return Err(self.err(
                            format!("{field}.version"),
                            "missing",
                            "write the major version, e.g. version = 15 (see pg_lsclusters)",
                        ))
                    }
                };
                let cluster = match table.get("cluster").and_then(|c| c.as_str()) {
                    Some(c) if cluster_name_ok(c) => c.to_string(),
                    Some(c) => {
                        return Err(self.err(
                            format!("{field}.cluster"),
                            format!("{c:?} is not a usable cluster name"),
                            "use the name pg_lsclusters shows (letters, digits, '_', '-', '.'), e.g. cluster = \"main\"",
                        ))
                    }
                    None => {
                        return Err(self.err(
                            format!("{field}.cluster"),
                            "missing (a text)",
                            "write the cluster name pg_lsclusters shows, e.g. cluster = \"main\"",
                        ))
                    }
                };
                Service::PgCtlCluster { version, cluster }
            }
            _ => {
                match table.get("unit").and_then(|c| c.as_str()) {
                    Some(u) if unit_name_ok(u) => Service::Systemd {
                        unit: u.to_string(),
                    },
                    Some(u) => return Err(self.err(
                        format!("{field}.unit"),
                        format!("{u:?} is not a systemd service unit name"),
                        "name the unit as systemctl shows it, e.g. unit = \"postgresql@15-main\"",
                    )),
                    None => {
                        return Err(self.err(
                            format!("{field}.unit"),
                            "missing (a text)",
                            "name the unit, e.g. unit = \"postgresql@15-main\"",
                        ))
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_what_pg_createcluster_and_a_shell_take() {
        for ok in ["main", "15-main", "lab_old.2"] {
            assert!(cluster_name_ok(ok), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a b",
            "a/b",
            "a'b",
            "x;rm",
            &"a".repeat(64),
        ] {
            assert!(!cluster_name_ok(bad), "{bad}");
        }
    }

    #[test]
    fn unit_names_follow_systemd() {
        for ok in [
            "postgresql@15-main",
            "postgresql@15-main.service",
            "postgresql-15",
        ] {
            assert!(unit_name_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "a b",
            "a/b",
            "x;y",
            "postgresql@",
            ".service",
            "a..b",
        ] {
            assert!(!unit_name_ok(bad), "{bad}");
        }
    }
}
