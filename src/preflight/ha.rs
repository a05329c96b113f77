//! `ha:<node>`: an HA manager that migrate does not know about would act on the fenced,
//! stopped primary (repmgrd promotes a standby, Patroni restarts or fails over), so plan
//! looks for one on every node and fails unless the node declares it (`ha = …`), which makes
//! the cutover pause it. A declared manager must answer.
//!
//! Signs, strongest first: `repmgr.repmgrd_is_running()` on the server (the repmgr extension
//! reports its own daemon), a Patroni REST API answering on the node's host (port 8008 unless
//! declared), a `repmgrd` or `patroni` process on the node's host (shared by every server of
//! that host, so only a warning), `repmgr` in `shared_preload_libraries`.

use std::time::Duration;

use tokio_postgres::Client;

use super::Check;
use crate::ha::patroni::Api;
use crate::ha::repmgr::Repmgr;
use crate::host::Cmd;
use crate::spec::{Ha, Node, Spec};

/// What plan found on one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    /// `repmgr.repmgrd_is_running()`, when the repmgr extension is in the spec's database.
    pub repmgrd_running: Option<bool>,
    pub repmgr_preloaded: bool,
    /// `repmgrd` / `patroni` processes on the node's host.
    pub processes: Vec<String>,
    /// A Patroni REST API's answer for this node (the declared URL, else port 8008 of the
    /// node's host): `Ok(role and state)`, or why the declared one did not answer.
    pub patroni: Option<Result<String, String>>,
    /// For a declared repmgr: `service status`'s answer, or its error.
    pub repmgr: Option<Result<String, String>>,
    /// The server answered (else the node waits for its clone).
    pub running: bool,
}

fn declare(kind: &str) -> &'static str {
    match kind {
        "repmgr" => "declare it on the node: ha = { kind = \"repmgr\", config = \"/etc/repmgr.conf\" }, so the cutover pauses repmgrd and registers the new topology",
        _ => "declare it on the node: ha = { kind = \"patroni\", url = \"http://HOST:8008\", cluster = \"SCOPE\" }, so the cutover pauses Patroni and hands it the new topology",
    }
}

/// Pure: the verdict for one node.
pub fn verdict(node: &str, declared: Option<&Ha>, seen: &Seen) -> Check {
    let id = format!("ha:{node}");
    let repmgrd = seen.repmgrd_running == Some(true);
    let patroni_answers = matches!(seen.patroni, Some(Ok(_)));
    match declared.map(Ha::kind) {
        None if repmgrd => Check::fail(
            id,
            format!("repmgrd runs for {node}'s server (repmgr.repmgrd_is_running()); unpaused, it would promote a standby when the cutover stops the primary"),
            declare("repmgr"),
        ),
        None if patroni_answers => Check::fail(
            id,
            format!(
                "Patroni manages {node} ({}); unpaused, it would restart or fail over the stopped primary",
                seen.patroni.clone().and_then(Result::ok).unwrap_or_default()
            ),
            declare("patroni"),
        ),
        None if !seen.processes.is_empty() => Check::warn(
            id,
            format!(
                "{} running on {node}'s host; migrate cannot tell which server it manages",
                seen.processes.join(" and ")
            ),
            format!("if it manages {node}, {}", declare(if seen.processes.iter().any(|p| p == "repmgrd") { "repmgr" } else { "patroni" })),
        ),
        None if seen.repmgr_preloaded && seen.repmgrd_running.is_none() => Check::warn(
            id,
            format!("repmgr is in {node}'s shared_preload_libraries, but its extension is not in this database, so whether repmgrd runs is unknown"),
            format!("if repmgrd runs for {node}, {}", declare("repmgr")),
        ),
        None => Check::pass(id, format!("no HA manager seen on {node} (repmgrd, Patroni)")),
        Some("repmgr") if patroni_answers => Check::fail(
            id,
            format!("{node} declares repmgr, but Patroni answers for it"),
            declare("patroni"),
        ),
        Some("repmgr") => match &seen.repmgr {
            Some(Ok(status)) => Check::pass(id, format!("repmgr on {node}: {status}")),
            Some(Err(e)) if !seen.running => Check::warn(
                id,
                format!("repmgr on {node} cannot answer before its server runs: {e}"),
                "run plan again once the chain is built (before the cutover)",
            ),
            Some(Err(e)) => Check::fail(
                id,
                format!("repmgr on {node} does not answer: {e}"),
                "check ha.config (repmgr.conf on that host), that repmgr is installed there (postgresql-<major>-repmgr) and that it reaches every repmgr node",
            ),
            None => Check::fail(id, format!("repmgr on {node} was not asked"), "run plan again"),
        },
        Some(_) if repmgrd => Check::fail(
            id,
            format!("{node} declares Patroni, but repmgrd runs for its server"),
            declare("repmgr"),
        ),
        Some(_) => match &seen.patroni {
            Some(Ok(m)) => Check::pass(id, format!("Patroni member {node}: {m}")),
            Some(Err(e)) => Check::fail(
                id,
                format!("Patroni's REST API for {node} does not answer: {e}"),
                "check ha.url (restapi.listen in patroni.yml), ha.username/password and ha.ca_file",
            ),
            None => Check::fail(id, format!("Patroni for {node} was not asked"), "run plan again"),
        },
    }
}

const PROBE: Duration = Duration::from_secs(5);

/// Separate calls, so that a failing `repmgrd_is_running()` (the extension without its
/// library) still leaves the preload seen, which warns, rather than nothing, which passes.
async fn sql_seen(client: &Client, seen: &mut Seen) {
    let first = client.query_one(
        "SELECT current_setting('shared_preload_libraries'), EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'repmgr')",
        &[],
    );
    let Ok(Ok(r)) = tokio::time::timeout(PROBE, first).await else {
        return;
    };
    seen.repmgr_preloaded = r
        .get::<_, String>(0)
        .split(',')
        .any(|l| l.trim() == "repmgr");
    if r.get::<_, bool>(1) {
        let running = client.query_one("SELECT repmgr.repmgrd_is_running()", &[]);
        if let Ok(Ok(r)) = tokio::time::timeout(PROBE, running).await {
            seen.repmgrd_running = r.get::<_, Option<bool>>(0);
        }
    }
}

/// Pure: the HA managers among `ps -eo comm=` lines.
pub fn managers_in(ps: &str) -> Vec<String> {
    let mut found: Vec<String> = ps
        .lines()
        .map(str::trim)
        .filter(|c| *c == "repmgrd" || *c == "patroni")
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    found
}

async fn patroni_seen(node: &Node) -> Option<Result<String, String>> {
    let probe = |api: Api| async move {
        api.member()
            .await
            .map(|m| {
                format!(
                    "{} {}{}",
                    m.role,
                    m.state,
                    if m.paused { ", paused" } else { "" }
                )
            })
            .map_err(|e| format!("{e:#}"))
    };
    match &node.ha {
        Some(Ha::Patroni(p)) => Some(match Api::new(p) {
            Ok(api) => probe(api).await,
            Err(e) => Err(format!("{e:#}")),
        }),
        _ => {
            // Patroni's default REST port on the node's host; a socket path has none.
            let host = node.conninfo.host();
            if host.starts_with('/') || host.is_empty() {
                return None;
            }
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_string()
            };
            let cfg = crate::spec::Patroni {
                url: format!("http://{host}:8008"),
                cluster: String::new(),
                username: None,
                password: None,
                ca_file: None,
            };
            let api = Api::new(&cfg)
                .ok()?
                .with_timeout(Duration::from_secs(2))
                .ok()?;
            probe(api).await.ok().map(Ok)
        }
    }
}

/// What the node's host and HA API show (no database call: run for every node at once).
async fn host_seen(node: &Node) -> Seen {
    let mut seen = Seen::default();
    let host = node.host.open();
    if let Ok(host) = &host {
        let ps = Cmd::new(["ps", "-eo", "comm="]).timeout(PROBE);
        if let Ok(out) = host.run(&ps).await {
            seen.processes = managers_in(&out.stdout_text());
        }
    }
    seen.patroni = patroni_seen(node).await;
    if let Some(Ha::Repmgr { config }) = &node.ha {
        let r = Repmgr {
            node: node.name.clone(),
            program: crate::ha::repmgr::program(node.bin_dir.as_deref()),
            config: config.clone(),
        };
        seen.repmgr = Some(match &host {
            Ok(h) => r
                .status(h.as_ref())
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|d| {
                            format!(
                                "{} {} repmgrd {}",
                                d.name,
                                d.role,
                                match (d.running, d.paused) {
                                    (false, _) => "not running",
                                    (true, true) => "paused",
                                    (true, false) => "running",
                                }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("{e:#}")),
        });
    }
    seen
}

/// One `ha:<node>` check per node; `clients` are the servers that answered.
pub async fn check(
    checks: &mut Vec<Check>,
    spec: &Spec,
    clients: &std::collections::BTreeMap<String, &Client>,
) {
    // Every node's host at once: an undeclared node's REST probe may wait out its limit.
    let mut probes = tokio::task::JoinSet::new();
    for (i, node) in spec.nodes.iter().enumerate() {
        let node = node.clone();
        probes.spawn(async move { (i, host_seen(&node).await) });
    }
    let mut seen: Vec<Option<Seen>> = vec![None; spec.nodes.len()];
    while let Some(done) = probes.join_next().await {
        if let Ok((i, s)) = done {
            seen[i] = Some(s);
        }
    }
    for (node, seen) in spec.nodes.iter().zip(seen) {
        let Some(mut seen) = seen else {
            checks.push(Check::fail(
                format!("ha:{}", node.name),
                format!("could not look for an HA manager on {}", node.name),
                "run plan again",
            ));
            continue;
        };
        if let Some(c) = clients.get(&node.name) {
            seen.running = true;
            sql_seen(c, &mut seen).await;
        }
        checks.push(verdict(&node.name, node.ha.as_ref(), &seen));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Status;

    fn repmgr() -> Ha {
        Ha::Repmgr {
            config: "/etc/repmgr.conf".into(),
        }
    }

    #[test]
    fn an_undeclared_running_manager_fails_and_a_host_process_only_warns() {
        let running = Seen {
            repmgrd_running: Some(true),
            running: true,
            ..Seen::default()
        };
        let c = verdict("old", None, &running);
        assert_eq!(c.status, Status::Fail);
        assert!(c.remedy.contains("kind = \"repmgr\""), "{}", c.remedy);
        let patroni = Seen {
            patroni: Some(Ok("primary running".into())),
            ..Seen::default()
        };
        let c = verdict("old", None, &patroni);
        assert_eq!(c.status, Status::Fail);
        assert!(c.remedy.contains("kind = \"patroni\""));
        let host = Seen {
            processes: vec!["repmgrd".into()],
            repmgrd_running: Some(false),
            ..Seen::default()
        };
        assert_eq!(verdict("dr", None, &host).status, Status::Warn);
        assert_eq!(verdict("dr", None, &Seen::default()).status, Status::Pass);
        let preloaded = Seen {
            repmgr_preloaded: true,
            ..Seen::default()
        };
        assert_eq!(verdict("dr", None, &preloaded).status, Status::Warn);
    }

    #[test]
    fn a_declared_manager_must_answer_and_match() {
        let ok = Seen {
            repmgrd_running: Some(true),
            repmgr: Some(Ok("old primary repmgrd running".into())),
            running: true,
            ..Seen::default()
        };
        assert_eq!(verdict("old", Some(&repmgr()), &ok).status, Status::Pass);
        let broken = Seen {
            repmgr: Some(Err("config not found".into())),
            running: true,
            ..Seen::default()
        };
        assert_eq!(
            verdict("old", Some(&repmgr()), &broken).status,
            Status::Fail
        );
        let before_clone = Seen {
            running: false,
            ..broken.clone()
        };
        assert_eq!(
            verdict("new", Some(&repmgr()), &before_clone).status,
            Status::Warn
        );
        let other = Seen {
            patroni: Some(Ok("replica running".into())),
            repmgr: Some(Ok("x".into())),
            ..Seen::default()
        };
        assert_eq!(verdict("old", Some(&repmgr()), &other).status, Status::Fail);
        let patroni = Ha::Patroni(crate::spec::Patroni {
            url: "http://127.0.0.1:8008".into(),
            cluster: "main".into(),
            username: None,
            password: None,
            ca_file: None,
        });
        let down = Seen {
            patroni: Some(Err("connection refused".into())),
            ..Seen::default()
        };
        assert_eq!(verdict("old", Some(&patroni), &down).status, Status::Fail);
        let up = Seen {
            patroni: Some(Ok("primary running".into())),
            ..Seen::default()
        };
        assert_eq!(verdict("old", Some(&patroni), &up).status, Status::Pass);
    }

    #[test]
    fn only_manager_processes_are_picked_from_ps() {
        assert_eq!(
            managers_in("systemd\npostgres\nrepmgrd\npatroni\nrepmgrd\nrepmgr\n"),
            ["patroni", "repmgrd"]
        );
        assert!(managers_in("postgres\nbash\n").is_empty());
    }
}
