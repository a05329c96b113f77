//! Does each node's declared `service` match what its host has? A postgresql-common cluster
//! must be listed by `pg_lsclusters` with this data directory and port; a server managed by
//! plain `pg_ctl` must keep its configuration in its data directory (else `pg_ctl start`
//! finds no postgresql.conf, and a clone of it has none); a systemd unit must be loaded.
//!
//! The verdicts are pure functions of what was read; `check` reads it.

use std::path::Path;

use serde::Deserialize;

use super::Check;
use crate::host::Cmd;
use crate::pg::service::{debian_cluster_of, Service};
use crate::spec::values::normal_path;
use crate::spec::{Node, Spec};
use crate::steps::member::Member;

/// One entry of `pg_lsclusters --json` (postgresql-common 230 and later).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Listed {
    pub version: serde_json::Value,
    pub cluster: String,
    pub pgdata: Option<String>,
    pub port: Option<serde_json::Value>,
    pub logfile: Option<String>,
    #[serde(default)]
    pub running: serde_json::Value,
}

impl Listed {
    fn version_is(&self, v: u32) -> bool {
        match &self.version {
            serde_json::Value::Number(n) => n.as_u64() == Some(u64::from(v)),
            serde_json::Value::String(s) => s == &v.to_string(),
            _ => false,
        }
    }
    fn port(&self) -> Option<u16> {
        match self.port.as_ref()? {
            serde_json::Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }
}

fn same_path(a: &str, b: &Path) -> bool {
    normal_path(Path::new(a)) == normal_path(b)
}

fn id(node: &Node) -> String {
    format!("service:{}", node.name)
}

fn suggestion(version: u32, cluster: &str) -> String {
    format!("say service = {{ kind = \"pg_ctlcluster\", version = {version}, cluster = \"{cluster}\" }} for this node")
}

/// A node run by plain `pg_ctl`. `config_file` is the running server's setting (None when it
/// does not run); `primary_config` the primary's, which every clone inherits.
pub fn pg_ctl_verdict(
    node: &Node,
    config_file: Option<&str>,
    primary: &Node,
    primary_config: Option<&str>,
) -> Check {
    let inside = |conf: &str, data: &Path| same_path(conf, &data.join("postgresql.conf"));
    match config_file {
        Some(conf) if !inside(conf, &node.data_dir) => Check::fail(
            id(node),
            format!(
                "{} reads its configuration from {conf}, outside its data directory: `pg_ctl start -D {}` would find none",
                node.name,
                node.data_dir.display()
            ),
            match debian_cluster_of(conf) {
                Some((v, c)) => suggestion(v, &c),
                None => "name the manager that starts it with service = { kind = \"systemd\", unit = \"…\" }, or keep postgresql.conf in the data directory".into(),
            },
        ),
        Some(_) => Check::pass(id(node), format!("{} is started with pg_ctl -D {}", node.name, node.data_dir.display())),
        None => match primary_config {
            Some(conf) if node.name != primary.name && !inside(conf, &primary.data_dir) => Check::fail(
                id(node),
                format!(
                    "{} will be a copy of {}'s data directory, which holds no postgresql.conf ({} reads {conf}): `pg_ctl start -D {}` would find none",
                    node.name, primary.name, primary.name, node.data_dir.display()
                ),
                "create the node as a postgresql-common cluster (pg_createcluster, then empty its data directory) and say service = { kind = \"pg_ctlcluster\", … }, or give it another manager that brings its configuration",
            ),
            _ => Check::pass(id(node), format!("{} will be started with pg_ctl -D {}", node.name, node.data_dir.display())),
        },
    }
}

/// A postgresql-common node: `listed` is what `pg_lsclusters --json` says on its host.
pub fn pg_ctlcluster_verdict(
    node: &Node,
    version: u32,
    cluster: &str,
    listed: &[Listed],
    config_file: Option<&str>,
) -> Vec<Check> {
    let name = &node.name;
    let Some(entry) = listed
        .iter()
        .find(|l| l.version_is(version) && l.cluster == cluster)
    else {
        let known: Vec<String> = listed
            .iter()
            .map(|l| format!("{}/{}", l.version, l.cluster))
            .collect();
        return vec![Check::fail(
            id(node),
            format!(
                "pg_lsclusters on {name}'s host lists no cluster {version}/{cluster} (it lists: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ),
            format!("create it with pg_createcluster {version} {cluster} -d {} (then empty the data directory if migrate is to clone it), or correct the service", node.data_dir.display()),
        )];
    };
    let mut out = Vec::new();
    match entry.pgdata.as_deref() {
        Some(d) if same_path(d, &node.data_dir) => {}
        other => out.push(Check::fail(
            id(node),
            format!(
                "cluster {version}/{cluster} keeps its data in {}, the spec says {}",
                other.unwrap_or("(none)"),
                node.data_dir.display()
            ),
            "make data_dir the cluster's data directory (pg_lsclusters shows it)",
        )),
    }
    let port = node.conninfo.port();
    if entry.port() != Some(port) {
        out.push(Check::fail(
            id(node),
            format!(
                "cluster {version}/{cluster} is set to port {} in /etc/postgresql/{version}/{cluster}/postgresql.conf, the conninfo says {port}: pg_ctlcluster waits for the server on its own port",
                entry.port().map(|p| p.to_string()).unwrap_or_else(|| "(none)".into())
            ),
            format!("set port = {port} in /etc/postgresql/{version}/{cluster}/postgresql.conf, or the conninfo's port to the cluster's"),
        ));
    }
    let expected = format!("/etc/postgresql/{version}/{cluster}/postgresql.conf");
    if let Some(conf) = config_file {
        if !same_path(conf, Path::new(&expected)) {
            out.push(Check::fail(
                id(node),
                format!("{name} runs with the configuration {conf}, not {expected}: it was not started by pg_ctlcluster {version} {cluster}"),
                match debian_cluster_of(conf) {
                    Some((v, c)) => suggestion(v, &c),
                    None => "say service = \"pg_ctl\" (the default) for this node, or restart it with pg_ctlcluster".into(),
                },
            ));
        }
    }
    if let Some(log) = entry.logfile.as_deref() {
        if !same_path(log, &node.log_file) {
            out.push(Check::warn(
                id(node),
                format!("pg_ctlcluster {version} {cluster} logs to {log}; a failed start would be explained from {}", node.log_file.display()),
                format!("set log_file = \"{log}\" for {name}"),
            ));
        }
    }
    if out.is_empty() {
        out.push(Check::pass(
            id(node),
            format!(
                "{name} is cluster {version}/{cluster} (pg_lsclusters: {}, port {port})",
                node.data_dir.display()
            ),
        ));
    }
    out
}

/// `pg_lsclusters --json` output, or a message for the check.
pub fn parse_listing(text: &str) -> Result<Vec<Listed>, String> {
    serde_json::from_str(text.trim())
        .map_err(|e| format!("pg_lsclusters --json printed something unexpected ({e})"))
}

/// Reads what each node's host says and checks it. `config_files` holds the running servers'
/// `config_file` settings by node name.
pub async fn check(
    checks: &mut Vec<Check>,
    spec: &Spec,
    config_files: &std::collections::BTreeMap<String, String>,
) {
    let primary = spec.primary();
    let primary_config = config_files.get(&primary.name).map(String::as_str);
    for node in &spec.nodes {
        let conf = config_files.get(&node.name).map(String::as_str);
        match &node.service {
            Service::PgCtl => checks.push(pg_ctl_verdict(node, conf, primary, primary_config)),
            Service::PgCtlCluster { version, cluster } => {
                let listing = match Member::new(spec, &node.name) {
                    Ok(m) => m
                        .host
                        .run(&Cmd::new(["pg_lsclusters", "--json"]))
                        .await
                        .map_err(|e| format!("{e:#}"))
                        .and_then(|o| {
                            if o.success() {
                                parse_listing(&o.stdout_text())
                            } else {
                                Err(format!("pg_lsclusters --json failed: {}", o.stderr_tail()))
                            }
                        }),
                    Err(e) => Err(format!("{e:#}")),
                };
                match listing {
                    Ok(listed) => checks.extend(pg_ctlcluster_verdict(node, *version, cluster, &listed, conf)),
                    Err(e) => checks.push(Check::fail(
                        id(node),
                        format!("{} is declared a postgresql-common cluster, but its host cannot list clusters: {e}", node.name),
                        "install postgresql-common on that host, or correct the service",
                    )),
                }
            }
            Service::Systemd { unit } => {
                let loaded = match Member::new(spec, &node.name) {
                    Ok(m) => m
                        .host
                        .run(&Cmd::new([
                            "systemctl",
                            "show",
                            "--property=LoadState",
                            "--value",
                            unit,
                        ]))
                        .await
                        .map_err(|e| format!("{e:#}"))
                        .map(|o| {
                            (
                                o.success(),
                                o.stdout_text().trim().to_string(),
                                o.stderr_tail(),
                            )
                        }),
                    Err(e) => Err(format!("{e:#}")),
                };
                checks.push(match loaded {
                    Ok((true, state, _)) if state == "loaded" => Check::pass(id(node), format!("{} is the systemd unit {unit}", node.name)),
                    Ok((_, state, err)) => Check::fail(
                        id(node),
                        format!("systemd on {}'s host does not have the unit {unit} (LoadState {state:?}{})", node.name, if err.is_empty() { String::new() } else { format!("; {err}") }),
                        "name the unit systemctl list-units shows for this server",
                    ),
                    Err(e) => Check::fail(id(node), format!("systemctl on {}'s host: {e}", node.name), "this host has no systemd: say service = \"pg_ctl\" or a pg_ctlcluster cluster"),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Status;

    fn node(name: &str, data: &str, port: u16) -> Node {
        let text = format!(
            "name = \"t\"\n[replication]\nuser = \"repl\"\n\
             [nodes.{name}]\nrole = \"primary\"\nconninfo = \"host=10.0.0.1 port={port}\"\ndata_dir = \"{data}\"\n\
             service = {{ kind = \"pg_ctlcluster\", version = 15, cluster = \"main\" }}\n\
             [nodes.other]\nrole = \"target\"\nupstream = \"{name}\"\nconninfo = \"host=10.0.0.2\"\ndata_dir = \"/b\"\n"
        );
        let spec = crate::spec::parse(Path::new("t.toml"), &text).expect("parses");
        spec.nodes.into_iter().find(|n| n.name == name).unwrap()
    }

    fn listed(json: &str) -> Vec<Listed> {
        parse_listing(json).unwrap()
    }

    const MAIN: &str = r#"[{"version":15,"cluster":"main","pgdata":"/var/lib/postgresql/15/main","port":"5432","logfile":"/var/log/postgresql/postgresql-15-main.log","running":1}]"#;

    #[test]
    fn a_listed_cluster_with_this_data_directory_and_port_passes() {
        let n = node("old", "/var/lib/postgresql/15/main", 5432);
        let c = pg_ctlcluster_verdict(
            &n,
            15,
            "main",
            &listed(MAIN),
            Some("/etc/postgresql/15/main/postgresql.conf"),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, Status::Pass, "{c:?}");
    }

    #[test]
    fn a_missing_cluster_a_moved_directory_or_another_port_fails_with_the_fix() {
        let n = node("old", "/var/lib/postgresql/15/main", 5432);
        let c = pg_ctlcluster_verdict(&n, 15, "other", &listed(MAIN), None);
        assert_eq!(c[0].status, Status::Fail);
        assert!(
            c[0].message.contains("15/main") && c[0].remedy.contains("pg_createcluster"),
            "{c:?}"
        );

        let n = node("old", "/srv/pg", 5433);
        let c = pg_ctlcluster_verdict(&n, 15, "main", &listed(MAIN), None);
        let fails: Vec<_> = c.iter().filter(|c| c.status == Status::Fail).collect();
        assert_eq!(fails.len(), 2, "{c:?}");
        assert!(fails[0].message.contains("/srv/pg"));
        assert!(fails[1].remedy.contains("port = 5433"));
    }

    #[test]
    fn a_cluster_running_with_another_configuration_was_not_started_by_its_manager() {
        let n = node("old", "/var/lib/postgresql/15/main", 5432);
        let c = pg_ctlcluster_verdict(
            &n,
            15,
            "main",
            &listed(MAIN),
            Some("/var/lib/postgresql/15/main/postgresql.conf"),
        );
        assert!(
            c.iter()
                .any(|c| c.status == Status::Fail
                    && c.message.contains("not started by pg_ctlcluster")),
            "{c:?}"
        );
    }

    #[test]
    fn pg_ctl_needs_the_configuration_in_the_data_directory_now_and_after_a_clone() {
        let mut n = node("old", "/var/lib/postgresql/15/main", 5432);
        n.service = Service::PgCtl;
        let debian = "/etc/postgresql/15/main/postgresql.conf";
        let c = pg_ctl_verdict(&n, Some(debian), &n, Some(debian));
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.remedy.contains("version = 15, cluster = \"main\""),
            "{c:?}"
        );
        let inside = "/var/lib/postgresql/15/main/./postgresql.conf";
        assert_eq!(
            pg_ctl_verdict(&n, Some(inside), &n, Some(inside)).status,
            Status::Pass
        );

        let mut target = node("old", "/c", 5432);
        target.name = "new".into();
        target.service = Service::PgCtl;
        let c = pg_ctl_verdict(&target, None, &n, Some(debian));
        assert_eq!(c.status, Status::Fail);
        assert!(c.message.contains("holds no postgresql.conf"), "{c:?}");
        assert_eq!(
            pg_ctl_verdict(&target, None, &n, Some(inside)).status,
            Status::Pass
        );
        assert_eq!(pg_ctl_verdict(&target, None, &n, None).status, Status::Pass);
    }

    #[test]
    fn listings_of_older_and_newer_postgresql_common_parse() {
        let l = listed(r#"[{"version":"13","cluster":"a","pgdata":"/d","port":5433}]"#);
        assert!(l[0].version_is(13));
        assert_eq!(l[0].port(), Some(5433));
        assert!(parse_listing("Ver Cluster Port").is_err());
    }
}
