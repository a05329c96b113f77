//! The checks. Facts are gathered once per node; each check is a small function of them.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::Check;
use crate::host::Cmd;
use crate::pg::connect;
use crate::spec::{Role, Spec};
use crate::steps::member::{DirState, Member};

const SETTINGS: &[&str] = &[
    "server_version_num",
    "wal_level",
    "max_wal_senders",
    "max_replication_slots",
    "max_connections",
    "max_worker_processes",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "data_checksums",
    "wal_log_hints",
    "synchronous_standby_names",
    "archive_mode",
    "archive_command",
    "archive_library",
    "config_file",
    "max_slot_wal_keep_size",
];

/// Hot-standby parameters that must be equal on all nodes, in both directions (P10).
const FLOOR: &[&str] = &[
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
];

struct Facts {
    name: String,
    client: Client,
    recovery: bool,
    sysid: String,
    settings: BTreeMap<String, String>,
    senders_used: i64,
    slots_other: i64,
}

impl Facts {
    fn int(&self, key: &str) -> i64 {
        self.settings
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    fn get(&self, key: &str) -> &str {
        self.settings.get(key).map(String::as_str).unwrap_or("")
    }
}

async fn gather(node: &crate::spec::Node) -> anyhow::Result<Facts> {
    let client = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        connect(&node.endpoint()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connect to {}: no answer within 10 s", node.name))??;
    let r = client
        .query_one(
            "SELECT pg_is_in_recovery(), system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await?;
    let names: Vec<String> = SETTINGS.iter().map(|s| s.to_string()).collect();
    let settings = client
        .query(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1)",
            &[&names],
        )
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    let senders_used: i64 = client
        .query_one("SELECT count(*) FROM pg_stat_replication", &[])
        .await?
        .get(0);
    let slots_other: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name NOT LIKE 'migrate\\_%'",
            &[],
        )
        .await?
        .get(0);
    Ok(Facts {
        name: node.name.clone(),
        client,
        recovery: r.get(0),
        sysid: r.get(1),
        settings,
        senders_used,
        slots_other,
    })
}

/// `rewind_role:<node>`: a re-sync runs pg_rewind against the serving primary (the target after
/// the cutover, the old primary after a switchback) as the user of its conninfo, which must be
/// allowed to read its files; otherwise the re-sync falls back to a full re-clone.
async fn rewind_roles(checks: &mut Vec<Check>, spec: &Spec, facts: &BTreeMap<String, Facts>) {
    const SQL: &str = "SELECT rolsuper OR (has_function_privilege('pg_ls_dir(text, boolean, boolean)', 'execute')
        AND has_function_privilege('pg_stat_file(text, boolean)', 'execute')
        AND has_function_privilege('pg_read_binary_file(text)', 'execute')
        AND has_function_privilege('pg_read_binary_file(text, bigint, bigint, boolean)', 'execute')),
        current_user::text FROM pg_roles WHERE rolname = current_user";
    for node in [spec.primary(), spec.target()] {
        let Some(f) = facts.get(&node.name) else {
            continue;
        };
        let id = format!("rewind_role:{}", node.name);
        match f.client.query_one(SQL, &[]).await {
            Ok(r) if r.get::<_, bool>(0) => checks.push(Check::pass(
                id,
                format!(
                    "{} may read {}'s files for pg_rewind",
                    r.get::<_, String>(1),
                    node.name
                ),
            )),
            Ok(r) => {
                let user: String = r.get(1);
                checks.push(Check::warn(
                    id,
                    format!("{user} may not read {}'s files: a re-sync from it cannot use pg_rewind and re-clones instead", node.name),
                    format!("GRANT EXECUTE ON FUNCTION pg_ls_dir(text, boolean, boolean), pg_stat_file(text, boolean), pg_read_binary_file(text), pg_read_binary_file(text, bigint, bigint, boolean) TO {user};"),
                ));
            }
            Err(e) => checks.push(Check::warn(id, format!("could not check: {e:#}"), "")),
        }
    }
}

/// What plan saw of a node, recorded so that `cutover` can tell whether the topology drifted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    pub node: String,
    pub system_identifier: String,
    pub version_num: i64,
    /// The primary's current timeline (primaries only).
    pub timeline: Option<i64>,
}

/// The facts `plan` records and `cutover` compares, for the nodes that answer now.
pub async fn observe(spec: &Spec) -> Vec<Seen> {
    let mut seen = Vec::new();
    for node in &spec.nodes {
        let Ok(f) = gather(node).await else { continue };
        let timeline = if f.recovery {
            None
        } else {
            f.client
                .query_one("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::bigint", &[])
                .await
                .ok()
                .map(|r| r.get::<_, i64>(0))
        };
        let version_num = f.int("server_version_num");
        seen.push(Seen {
            node: node.name.clone(),
            system_identifier: f.sysid,
            version_num,
            timeline,
        });
    }
    seen
}

pub async fn run(spec: &Spec) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut facts: BTreeMap<String, Facts> = BTreeMap::new();
    // Nodes that will be cloned (empty or absent data directory, no server): not a failure.
    for node in &spec.nodes {
        match gather(node).await {
            Ok(f) => {
                checks.push(Check::pass(
                    format!("connect:{}", node.name),
                    format!(
                        "{} answers at {}:{}",
                        node.name,
                        node.conninfo.host(),
                        node.conninfo.port()
                    ),
                ));
                facts.insert(node.name.clone(), f);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let empty = if node.role == Role::Primary {
                    false
                } else {
                    match Member::new(spec, &node.name) {
                        Ok(m) => {
                            matches!(m.dir_state().await, Ok(DirState::Absent | DirState::Empty))
                        }
                        Err(_) => false,
                    }
                };
                if empty {
                    checks.push(Check::pass(
                        format!("connect:{}", node.name),
                        format!(
                            "{} is not running and {} is empty: it will be cloned",
                            node.name,
                            node.data_dir.display()
                        ),
                    ));
                } else {
                    let connect = e
                        .chain()
                        .find_map(|c| c.downcast_ref::<crate::pg::conn::ConnectError>());
                    let (first, hint) = match connect {
                        Some(c) if c.hint.is_some() => (
                            msg.split('\n').next().unwrap_or_default().to_string(),
                            c.hint.map(|h| h.fix()).unwrap_or_default().to_string(),
                        ),
                        _ => (msg.clone(), "check that the server runs, the host and port, pg_hba.conf and the password reference".into()),
                    };
                    checks.push(Check::fail(format!("connect:{}", node.name), first, hint));
                }
            }
        }
    }
    let primary = spec.primary();
    let Some(p) = facts.get(&primary.name) else {
        // Everything that does not need the primary is still reported.
        super::service::check(&mut checks, spec, &config_files(&facts)).await;
        super::ha::check(&mut checks, spec, &clients(&facts)).await;
        routes(&mut checks, spec, false).await;
        spec_checks(&mut checks, spec);
        return checks;
    };

    // Exactly one primary.
    if p.recovery {
        checks.push(Check::fail(
            "primary",
            format!("{} is in recovery, not a primary", p.name),
            "name the serving primary as role = \"primary\"",
        ));
    }
    let others: Vec<&str> = facts
        .values()
        .filter(|f| f.name != p.name && !f.recovery)
        .map(|f| f.name.as_str())
        .collect();
    if others.is_empty() {
        checks.push(Check::pass(
            "one_primary",
            format!("{} is the only primary", p.name),
        ));
    } else {
        checks.push(Check::fail(
            "one_primary",
            format!("{} also accept writes (not in recovery)", others.join(", ")),
            "only the old primary may be a primary before the cutover; stop or rebuild the others",
        ));
    }

    // Versions and cluster identity.
    let major = |f: &Facts| f.int("server_version_num") / 10000;
    if spec.clone.compress != crate::spec::Compress::None {
        // The upstreams compress: the primary's major stands for all (they must match).
        checks.push(if major(p) >= 15 {
            Check::pass(
                "clone_compress",
                format!(
                    "server-side {} compression (PostgreSQL {})",
                    crate::engine::label(&spec.clone.compress),
                    major(p)
                ),
            )
        } else {
            Check::fail(
                "clone_compress",
                format!(
                    "clone.compress needs PostgreSQL 15 or later; {} runs {}",
                    p.name,
                    major(p)
                ),
                "remove clone.compress (or set it to \"none\")",
            )
        });
    }
    for f in facts.values().filter(|f| f.name != p.name) {
        if major(f) != major(p) {
            checks.push(Check::fail(
                format!("version:{}", f.name),
                format!("{} runs PostgreSQL {}, {} runs {}", f.name, major(f), p.name, major(p)),
                "physical replication needs the same major version everywhere (logical mode is for cross-major moves)",
            ));
        } else if f.int("server_version_num") != p.int("server_version_num") {
            checks.push(Check::warn(
                format!("version:{}", f.name),
                format!("minor versions differ: {} {}, {} {}", f.name, f.get("server_version_num"), p.name, p.get("server_version_num")),
                "prefer identical minors: after the cutover the old host's binaries replay WAL from the new host (P11)",
            ));
        }
        if f.sysid != p.sysid {
            checks.push(Check::fail(
                format!("same_cluster:{}", f.name),
                format!(
                    "{} belongs to another cluster (system identifier {}; {} has {})",
                    f.name, f.sysid, p.name, p.sysid
                ),
                format!(
                    "stop it and empty its data directory so that migrate clones it from {}",
                    f.name.clone() + "'s upstream"
                ),
            ));
        } else {
            checks.push(Check::pass(
                format!("same_cluster:{}", f.name),
                format!("{} is a copy of this cluster", f.name),
            ));
        }
    }

    // WAL level.
    match p.get("wal_level") {
        "replica" | "logical" => checks.push(Check::pass("wal_level", format!("wal_level = {}", p.get("wal_level")))),
        other => checks.push(Check::fail(
            "wal_level",
            format!("wal_level = {other} on {}: no standby can replicate from it", p.name),
            "ALTER SYSTEM SET wal_level = replica (and max_wal_senders > 0), then restart the primary",
        )),
    }

    // Sender and slot capacity: on the primary now, on the target after promotion.
    let target = spec.target();
    let primary_needs = spec.downstream_of(&primary.name).count() as i64 + 1;
    capacity(
        &mut checks,
        p,
        &p.name,
        primary_needs,
        spec.downstream_of(&primary.name).count() as i64,
        "now",
    );
    let t_facts = facts.get(&target.name).unwrap_or(p);
    let after = spec.downstream_of(&target.name).count() as i64 + 1;
    capacity(
        &mut checks,
        t_facts,
        &target.name,
        after + 1,
        after,
        "after promotion (its cascades, the reverse stream, one base backup)",
    );

    // Hot-standby parameter floor, equal everywhere.
    for key in FLOOR {
        let values: BTreeMap<&str, &str> = facts
            .values()
            .map(|f| (f.name.as_str(), f.get(key)))
            .collect();
        let distinct: std::collections::BTreeSet<&&str> = values.values().collect();
        if distinct.len() > 1 {
            checks.push(Check::fail(
                format!("hot_standby:{key}"),
                format!("{key} differs: {}", values.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(", ")),
                "set it equal on all nodes: a standby below its primary's value stops replaying, and the old primary becomes a standby (P10)",
            ));
        }
    }

    // Rewind-ability.
    let rewindable = |f: &Facts| f.get("data_checksums") == "on" || f.get("wal_log_hints") == "on";
    if rewindable(p) {
        checks.push(Check::pass(
            "rewind",
            "pg_rewind is possible (checksums or wal_log_hints)",
        ));
    } else {
        checks.push(Check::warn(
            "rewind",
            format!("{} has neither data checksums nor wal_log_hints", p.name),
            "if a switchover ever fails half-way, the old primary needs a full re-clone instead of pg_rewind; set wal_log_hints = on (restart) to allow pg_rewind",
        ));
    }

    rewind_roles(&mut checks, spec, &facts).await;
    control_compatibility(&mut checks, &facts, p).await;
    collations(&mut checks, &facts, p).await;
    clocks(&mut checks, &facts).await;
    database_checks(&mut checks, spec, p).await;
    clone_targets(&mut checks, spec, p, &facts).await;
    reverse_path(&mut checks, spec, &facts).await;
    replication_auth(&mut checks, spec, &facts).await;

    stream_tls(&mut checks, spec, &facts).await;
    let bounds = facts
        .iter()
        .map(|(n, f)| (n.clone(), f.settings.get("max_slot_wal_keep_size").cloned()))
        .collect();
    super::bake::check(&mut checks, spec, &bounds, wal_per_hour(&p.client).await).await;
    let archiving = |f: &Facts| super::archive::Archiving {
        mode: f.get("archive_mode").to_string(),
        command: match f.get("archive_library") {
            "" => f.get("archive_command").to_string(),
            library => format!("archive_library = {library}"),
        },
    };
    checks.push(super::archive::verdict(
        &p.name,
        &archiving(p),
        &target.name,
        facts.get(&target.name).map(archiving).as_ref(),
    ));
    super::service::check(&mut checks, spec, &config_files(&facts)).await;
    super::ha::check(&mut checks, spec, &clients(&facts)).await;
    routes(&mut checks, spec, true).await;
    spec_checks(&mut checks, spec);
    checks
}

/// The primary's average WAL rate since its statistics were reset (PostgreSQL 14+).
async fn wal_per_hour(c: &Client) -> Option<u64> {
    let query = c.query_opt(
        "SELECT wal_bytes::float8, extract(epoch FROM now() - stats_reset)::float8 FROM pg_stat_wal",
        &[],
    );
    let row = tokio::time::timeout(std::time::Duration::from_secs(5), query)
        .await
        .ok()?
        .ok()??;
    let (bytes, secs): (Option<f64>, Option<f64>) = (row.get(0), row.get(1));
    match (bytes, secs) {
        (Some(b), Some(s)) if s > 60.0 => Some((b / s * 3600.0) as u64),
        _ => None,
    }
}

fn clients(facts: &BTreeMap<String, Facts>) -> BTreeMap<String, &Client> {
    facts.iter().map(|(n, f)| (n.clone(), &f.client)).collect()
}

fn config_files(facts: &BTreeMap<String, Facts>) -> BTreeMap<String, String> {
    facts
        .iter()
        .map(|(n, f)| (n.clone(), f.get("config_file").to_string()))
        .filter(|(_, c)| !c.is_empty())
        .collect()
}

/// What plan can tell without the primary: the spec's own findings, the window, every
/// secret file (checked when the spec was loaded), the TLS of each replication hop.
fn spec_checks(checks: &mut Vec<Check>, spec: &Spec) {
    if let Some(w) = spec.cutover.window {
        if w.end <= chrono::Utc::now() {
            checks.push(Check::fail(
                "window",
                format!("the window ended at {}", w.end.to_rfc3339()),
                "set a future window in the spec, or use --force-window",
            ));
        } else {
            checks.push(Check::pass(
                "window",
                format!("window {} – {}", w.start.to_rfc3339(), w.end.to_rfc3339()),
            ));
        }
    }
    let secrets: Vec<String> = crate::spec::local::files(spec)
        .into_iter()
        .filter(|f| f.kind == crate::spec::local::FileKind::Secret)
        .map(|f| f.path.display().to_string())
        .collect();
    checks.push(Check::pass(
        "secret_files",
        if secrets.is_empty() {
            "the spec names no secret file".to_string()
        } else {
            format!("private (0600, ours): {}", secrets.join(", "))
        },
    ));
    for n in spec.nodes.iter().filter(|n| n.upstream.is_some()) {
        let up = n
            .upstream
            .as_deref()
            .and_then(|u| spec.node(u))
            .expect("validated");
        checks.push(tls_verdict(n, up));
    }
    // After the cutover the old primary streams from the target: the rollback path.
    checks.push(tls_verdict(spec.primary(), spec.target()));
    for w in &spec.warnings {
        checks.push(Check::warn(
            "spec",
            w.clone(),
            "see the spec reference in the README",
        ));
    }
}

/// Streams that run now, as their upstream sees them (`pg_stat_ssl` of the walsender): an
/// unencrypted one where the spec wants verified TLS fails, whatever the conninfo says.
async fn stream_tls(checks: &mut Vec<Check>, spec: &Spec, facts: &BTreeMap<String, Facts>) {
    for n in spec
        .nodes
        .iter()
        .filter(|n| n.replication_tls == crate::spec::ReplicationTls::Verify)
    {
        let Some(up) = n.upstream.as_deref().and_then(|u| facts.get(u)) else {
            continue;
        };
        let row = up
            .client
            .query_opt(
                "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s ON s.pid = r.pid \
                 WHERE r.application_name = $1 ORDER BY r.backend_start DESC LIMIT 1",
                &[&n.name],
            )
            .await;
        let id = format!("stream_tls:{}", n.name);
        match row {
            Ok(Some(r)) if r.get::<_, bool>(0) => checks.push(Check::pass(id, format!("{}'s stream from {} is encrypted (pg_stat_ssl)", n.name, up.name))),
            Ok(Some(_)) => checks.push(Check::fail(
                id,
                format!("{} streams from {} without TLS right now (pg_stat_ssl.ssl = false)", n.name, up.name),
                format!("enable ssl on {} and restart {}'s stream with sslmode=verify-full, or write replication_tls = \"none\" on {} if the link is trusted", up.name, n.name, n.name),
            )),
            Ok(None) | Err(_) => {}
        }
    }
}

/// The TLS policy of one hop, from the spec alone: the stream inherits the upstream's
/// `sslmode`, which must verify the server unless the node says `replication_tls = "none"`.
fn tls_verdict(n: &crate::spec::Node, up: &crate::spec::Node) -> Check {
    let mode = up.conninfo.get("sslmode").unwrap_or("prefer");
    let id = format!("replication_tls:{}", n.name);
    let verified = matches!(mode, "verify-ca" | "verify-full");
    match (verified, n.replication_tls) {
        (true, _) => Check::pass(id, format!("{} streams from {} with sslmode={mode}", n.name, up.name)),
        (false, crate::spec::ReplicationTls::None) => Check::pass(
            id,
            format!("{} streams from {} with sslmode={mode}, unverified: the spec says replication_tls = \"none\" (a trusted link)", n.name, up.name),
        ),
        (false, crate::spec::ReplicationTls::Verify) => Check::fail(
            id,
            format!("{} would stream from {} with sslmode={mode}: the server is not authenticated, the stream (every row) can be read or redirected on the way", n.name, up.name),
            format!("set sslmode=verify-full and sslrootcert in {}'s conninfo (the stream inherits them), or write replication_tls = \"none\" on {} if the link is trusted", up.name, n.name),
        ),
    }
}

/// Every route: reachable, authenticated, and pointing at the old primary now. With the
/// primary down, what each route points at now (nothing can be connected through).
/// The most plan waits for one route to answer. A PgBouncer left holding its clients (an
/// interrupted cutover) takes the connection and answers the query only after RESUME.
const ROUTE_CHECK_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

async fn bounded_route<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(ROUTE_CHECK_LIMIT, work)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no answer within {ROUTE_CHECK_LIMIT:?} (a pooler still holding its clients after an interrupted run answers nothing until it is released: see `migrate status`)"
            ))
        })
}

async fn routes(checks: &mut Vec<Check>, spec: &Spec, primary_up: bool) {
    let primary = spec.primary();
    match crate::route::open(&spec.routes) {
        Ok(routers) => {
            for (i, r) in routers.iter().enumerate() {
                let id = format!("route:{i}");
                if !primary_up {
                    match bounded_route(r.current()).await {
                        Ok(v) => checks.push(Check::pass(
                            id,
                            format!("{} is reachable; now: {v}", r.describe()),
                        )),
                        Err(e) => checks.push(Check::fail(
                            id,
                            format!("{}: {e:#}", r.describe()),
                            "the route must be reachable with the spec's credentials",
                        )),
                    }
                    continue;
                }
                match bounded_route(r.verify(primary)).await {
                    Ok(_) => checks.push(Check::pass(id, format!("{} reaches {} as a writable primary", r.describe(), primary.name))),
                    Err(e) => checks.push(Check::fail(
                        id,
                        format!("{}: {e:#}", r.describe()),
                        format!("the route must be reachable with the spec's credentials and point at {} before the cutover", primary.name),
                    )),
                }
            }
        }
        Err(e) => checks.push(Check::fail(
            "route",
            format!("{e:#}"),
            "check the route's host control",
        )),
    }
}

fn capacity(checks: &mut Vec<Check>, f: &Facts, node: &str, senders: i64, slots: i64, when: &str) {
    let max_senders = f.int("max_wal_senders");
    let max_slots = f.int("max_replication_slots");
    let free_senders = max_senders - f.senders_used.min(max_senders);
    let id = format!("capacity:{node}");
    if senders > max_senders {
        checks.push(Check::fail(
            id,
            format!("{node} needs {senders} WAL senders {when}; max_wal_senders = {max_senders}"),
            format!("ALTER SYSTEM SET max_wal_senders = {} on every node (restart; keep it equal everywhere)", senders + 2),
        ));
    } else if slots + f.slots_other > max_slots {
        checks.push(Check::fail(
            id,
            format!("{node} needs {slots} replication slots {when} besides {} others; max_replication_slots = {max_slots}", f.slots_other),
            format!("ALTER SYSTEM SET max_replication_slots = {} (restart)", slots + f.slots_other + 2),
        ));
    } else {
        checks.push(Check::pass(
            id,
            format!(
                "{node}: {senders} senders needed {when}, {free_senders} of {max_senders} free now"
            ),
        ));
    }
}

/// P9: the new primary must be able to confirm commits with the standbys it will have. Its
/// setting is the primary's (copied by the clone, or the same configuration management).
fn synchronous_names(checks: &mut Vec<Check>, spec: &Spec, p: &Facts) {
    let ssn = p.get("synchronous_standby_names");
    if ssn.trim().is_empty() {
        checks.push(Check::pass(
            "synchronous_standby_names",
            "asynchronous replication: no commit waits for a standby",
        ));
        return;
    }
    let target = spec.target();
    let mut after: Vec<String> = spec
        .downstream_of(&target.name)
        .map(|n| n.name.clone())
        .collect();
    after.push(spec.primary().name.clone());
    match super::sync::would_hang(ssn, &after) {
        Some(why) => checks.push(Check::fail(
            "synchronous_standby_names",
            format!("after the cutover on {}: {why}; every commit there would wait for ever (P9)", target.name),
            format!(
                "name the standbys {} will have (application names {}) or use ANY/FIRST with enough of them, then reload, before the window",
                target.name,
                after.join(", ")
            ),
        )),
        None => checks.push(Check::pass(
            "synchronous_standby_names",
            format!("{ssn:?} can be met on {} after the cutover ({})", target.name, after.join(", ")),
        )),
    }
}

async fn database_checks(checks: &mut Vec<Check>, spec: &Spec, p: &Facts) {
    let c = &p.client;
    if let Ok(rows) = c
        .query("SELECT gid, database FROM pg_prepared_xacts", &[])
        .await
    {
        if rows.is_empty() {
            checks.push(Check::pass("prepared_xacts", "no prepared transactions"));
        } else {
            let list: Vec<String> = rows
                .iter()
                .map(|r| format!("{} (in {})", r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect();
            checks.push(Check::fail(
                "prepared_xacts",
                format!("prepared transactions: {}", list.join(", ")),
                "COMMIT PREPARED or ROLLBACK PREPARED them before the window: they survive promotion and keep their locks",
            ));
        }
    }
    if let Ok(rows) = c.query("SELECT slot_name::text, coalesce(plugin, '') FROM pg_replication_slots WHERE slot_type = 'logical'", &[]).await {
        if !rows.is_empty() {
            let names: Vec<String> = rows.iter().map(|r| format!("{} ({})", r.get::<_, String>(0), r.get::<_, String>(1))).collect();
            checks.push(Check::warn(
                "logical_slots",
                format!("logical slots are not carried over by physical replication: {}", names.join(", ")),
                "recreate them on the new primary after the cutover (and resync their consumers)",
            ));
        }
    }
    if let Ok(rows) = c
        .query(
            "SELECT pid, coalesce(application_name, ''), (extract(epoch FROM clock_timestamp() - xact_start))::bigint
               FROM pg_stat_activity WHERE xact_start < clock_timestamp() - interval '10 minutes' AND backend_type = 'client backend'",
            &[],
        )
        .await
    {
        if !rows.is_empty() {
            let list: Vec<String> = rows.iter().map(|r| format!("pid {} {:?} ({} s)", r.get::<_, i32>(0), r.get::<_, String>(1), r.get::<_, i64>(2))).collect();
            checks.push(Check::warn("long_xacts", format!("long transactions: {}", list.join(", ")), "they are cut by the fence; end them before the window"));
        }
    }
    synchronous_names(checks, spec, p);
    if p.get("archive_mode") != "off" {
        if let Ok(r) = c.query_one("SELECT failed_count, coalesce(last_failed_time > coalesce(last_archived_time, 'epoch'), false) FROM pg_stat_archiver", &[]).await {
            if r.get::<_, bool>(1) {
                checks.push(Check::warn(
                    "archiver",
                    format!("the archiver is failing ({} failures)", r.get::<_, i64>(0)),
                    "fix archive_command: a clean shutdown waits for the archiver backlog",
                ));
            }
        }
    }
    // Unlogged tables, in every database.
    let dbs: Vec<String> = match c
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate",
            &[],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(_) => Vec::new(),
    };
    let mut unlogged = Vec::new();
    for db in dbs {
        let ep = crate::pg::Endpoint::new(
            &spec.primary().name,
            spec.primary().conninfo.clone().with("dbname", &db),
            spec.primary().password.clone(),
        );
        if let Ok(dc) = connect(&ep).await {
            if let Ok(rows) = dc.query("SELECT oid::regclass::text FROM pg_class WHERE relpersistence = 'u' AND relkind IN ('r', 'p')", &[]).await {
                unlogged.extend(rows.iter().map(|r| format!("{db}.{}", r.get::<_, String>(0))));
            }
        }
    }
    if unlogged.is_empty() {
        checks.push(Check::pass("unlogged", "no unlogged tables"));
    } else {
        checks.push(Check::warn(
            "unlogged",
            format!(
                "unlogged tables are empty on the new primary: {}",
                unlogged.join(", ")
            ),
            "make them logged (ALTER TABLE … SET LOGGED) or accept losing their contents",
        ));
    }
}

/// A real replication connection from each node's host to its upstream (when the upstream
/// runs), with psql through host control: this is what pg_basebackup and the walreceiver need.
async fn replication_auth(checks: &mut Vec<Check>, spec: &Spec, facts: &BTreeMap<String, Facts>) {
    for node in spec.nodes.iter().filter(|n| n.role != Role::Primary) {
        let Some(up) = node.upstream.as_deref() else {
            continue;
        };
        if !facts.contains_key(up) {
            checks.push(Check::pass(
                format!("replication_auth:{}", node.name),
                format!("{up} is not running yet; checked when it is"),
            ));
            continue;
        }
        let id = format!("replication_auth:{}", node.name);
        let result = async {
            let m = Member::new(spec, &node.name)?;
            let (ok, err) = replication_probe(&m).await?;
            anyhow::Ok((ok, err, m.host.describe()))
        }
        .await;
        match result {
            Ok((true, _, _)) => checks.push(Check::pass(
                id,
                format!("{} can open a replication connection to {up}", node.name),
            )),
            Ok((false, err, host)) => {
                let remedy = if err.contains("pg_hba.conf") {
                    format!("add a line to {up}'s pg_hba.conf: host replication {} <{}'s address>/32 scram-sha-256, then SELECT pg_reload_conf()", spec.replication.user, node.name)
                } else if err.contains("password") {
                    "check the replication password reference in the spec".to_string()
                } else {
                    "check the network path and the replication user".to_string()
                };
                checks.push(Check::fail(
                    id,
                    format!(
                        "from {host}, {} cannot replicate from {up}: {err}",
                        node.name
                    ),
                    remedy,
                ));
            }
            Err(e) => checks.push(Check::fail(
                id,
                format!("{e:#}"),
                "check the node's host control and bin_dir",
            )),
        }
    }
}

/// Physical replication needs the same build: block size, WAL segment size, alignment…
async fn control_compatibility(
    checks: &mut Vec<Check>,
    facts: &BTreeMap<String, Facts>,
    p: &Facts,
) {
    const SQL: &str = "SELECT max_data_alignment, database_block_size, wal_block_size, bytes_per_wal_segment, max_identifier_length, max_index_columns, float8_pass_by_value::text FROM pg_control_init()";
    let Some(reference) = control_row(p, SQL).await else {
        return;
    };
    let mut differ = Vec::new();
    for f in facts.values().filter(|f| f.name != p.name) {
        if let Some(r) = control_row(f, SQL).await {
            if r != reference {
                differ.push(format!("{}: {r}", f.name));
            }
        }
    }
    if differ.is_empty() {
        checks.push(Check::pass(
            "control",
            format!("same build on every running node ({reference})"),
        ));
    } else {
        checks.push(Check::fail(
            "control",
            format!("{} has {reference}, but {}", p.name, differ.join("; ")),
            "physical replication needs the same architecture and build options on every node",
        ));
    }
}

/// docs/pitfalls.md, preflight #14: text indexes are ordered by the collation library of the host that built
/// them. A standby on a host whose glibc/ICU sorts differently serves (and after promotion
/// writes) corrupt indexes without an error. PG 15+ records the version per database and
/// `pg_database_collation_actual_version` reports the running host's, also on a standby.
async fn collations(checks: &mut Vec<Check>, facts: &BTreeMap<String, Facts>, p: &Facts) {
    const SQL: &str =
        "SELECT datname::text, datcollversion, pg_database_collation_actual_version(oid)
                         FROM pg_database WHERE datallowconn AND datcollversion IS NOT NULL";
    for f in facts.values() {
        if f.int("server_version_num") < 150000 {
            continue;
        }
        let Ok(rows) = f.client.query(SQL, &[]).await else {
            continue;
        };
        let differ: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                let (db, built, here): (String, String, Option<String>) =
                    (r.get(0), r.get(1), r.get(2));
                here.filter(|h| *h != built)
                    .map(|h| format!("{db} (built with {built}, {} has {h})", f.name))
            })
            .collect();
        let id = format!("collation:{}", f.name);
        if differ.is_empty() {
            checks.push(Check::pass(
                id,
                format!(
                    "{}: the collation library matches what every database was built with",
                    f.name
                ),
            ));
        } else if f.name == p.name {
            checks.push(Check::warn(
                id,
                format!("collation versions differ on the primary itself: {}", differ.join(", ")),
                "the primary's OS was upgraded under its indexes: REINDEX the text indexes, then ALTER DATABASE … REFRESH COLLATION VERSION",
            ));
        } else {
            checks.push(Check::fail(
                id,
                format!("collation versions differ: {}", differ.join(", ")),
                format!(
                    "text indexes would be silently corrupt on {}: give its host the same glibc/ICU version as {}'s (same OS release), or plan a REINDEX of text indexes right after the cutover",
                    f.name, p.name
                ),
            ));
        }
    }
}

/// docs/pitfalls.md, preflight #22: clocks. Lag in seconds, the window and DNS TSIG (300 s fudge) read them.
async fn clocks(checks: &mut Vec<Check>, facts: &BTreeMap<String, Facts>) {
    let mut skews = Vec::new();
    for f in facts.values() {
        let t0 = chrono::Utc::now();
        let Ok(r) = f.client.query_one("SELECT clock_timestamp()", &[]).await else {
            continue;
        };
        let t1 = chrono::Utc::now();
        let theirs: chrono::DateTime<chrono::Utc> = r.get(0);
        let skew = theirs - (t0 + (t1 - t0) / 2);
        skews.push((f.name.clone(), skew.num_milliseconds()));
    }
    checks.push(clock_verdict(&skews));
}

/// Within 1 s of this machine: pass; up to TSIG's 300 s: warn; beyond: fail.
pub(crate) fn clock_verdict(skews: &[(String, i64)]) -> Check {
    let worst = skews.iter().map(|(_, ms)| ms.abs()).max().unwrap_or(0);
    let list = skews
        .iter()
        .map(|(n, ms)| format!("{n} {ms:+} ms"))
        .collect::<Vec<_>>()
        .join(", ");
    let remedy = "synchronise the clocks (chrony/NTP) on every host: time-based lag, the maintenance window and signed DNS updates rely on them";
    if worst <= 1000 {
        Check::pass(
            "clocks",
            format!("clocks agree with this machine's: {list}"),
        )
    } else if worst <= 300_000 {
        Check::warn(
            "clocks",
            format!("clocks differ from this machine's: {list}"),
            remedy,
        )
    } else {
        Check::fail(
            "clocks",
            format!("clocks differ by more than 300 s from this machine's: {list}"),
            remedy,
        )
    }
}

/// For each node that will be cloned: free disk for the copy plus retained WAL, the
/// tablespace paths, and the extension files on its host.
async fn clone_targets(
    checks: &mut Vec<Check>,
    spec: &Spec,
    p: &Facts,
    facts: &BTreeMap<String, Facts>,
) {
    let size: i64 = p
        .client
        .query_one(
            "SELECT sum(pg_database_size(oid))::bigint FROM pg_database",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0);
    let wal: i64 = p
        .client
        .query_one(
            "SELECT coalesce(sum(size), 0)::bigint FROM pg_ls_waldir()",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0);
    let tablespaces: Vec<(String, String)> = p
        .client
        .query("SELECT spcname::text, pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')", &[])
        .await
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default();
    let mut extensions: Vec<String> = Vec::new();
    let dbs: Vec<String> = p
        .client
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    for db in dbs {
        let ep = crate::pg::Endpoint::new(
            &spec.primary().name,
            spec.primary().conninfo.clone().with("dbname", &db),
            spec.primary().password.clone(),
        );
        if let Ok(c) = connect(&ep).await {
            if let Ok(rows) = c
                .query(
                    "SELECT extname::text FROM pg_extension WHERE extname <> 'plpgsql'",
                    &[],
                )
                .await
            {
                for r in rows {
                    let e: String = r.get(0);
                    if !extensions.contains(&e) {
                        extensions.push(e);
                    }
                }
            }
        }
    }
    for node in spec
        .nodes
        .iter()
        .filter(|n| n.role != Role::Primary && !facts.contains_key(&n.name))
    {
        let Ok(m) = Member::new(spec, &node.name) else {
            continue;
        };
        // Disk: the closest existing ancestor of the data directory.
        let need = (size + wal) as u64;
        let df = m
            .host
            .run(&Cmd::new([
                "sh",
                "-c",
                "d=$1; while [ ! -e \"$d\" ]; do d=$(dirname -- \"$d\"); done; df -P -B1 -- \"$d\" | awk 'NR==2 {print $4}'",
                "sh",
                &node.data_dir.display().to_string(),
            ]))
            .await;
        match df.ok().and_then(|o| o.stdout_text().trim().parse::<u64>().ok()) {
            Some(free) if free >= need + need / 5 => checks.push(Check::pass(
                format!("disk:{}", node.name),
                format!("{} free for {} to clone (data and WAL, plus 20%)", crate::units::format_bytes(free), crate::units::format_bytes(need)),
            )),
            Some(free) => checks.push(Check::fail(
                format!("disk:{}", node.name),
                format!("{} has {} free at {}, the clone needs about {} (+20% for WAL retained meanwhile)", node.name, crate::units::format_bytes(free), node.data_dir.display(), crate::units::format_bytes(need)),
                "free space or give the node a data_dir on a larger volume",
            )),
            None => checks.push(Check::warn(format!("disk:{}", node.name), format!("could not measure free space on {}", m.host.describe()), "check it by hand")),
        }
        for (name, path) in &tablespaces {
            checks.push(Check::warn(
                format!("tablespace:{}:{name}", node.name),
                format!("tablespace {name} lives at {path}; pg_basebackup recreates it at the same path on {}", node.name),
                format!("make sure {path} is absent or empty and writable by postgres on {}", m.host.describe()),
            ));
        }
        if !extensions.is_empty() {
            let Ok(server) = m.server() else { continue };
            let share = m
                .host
                .run(&Cmd::new([server.tool("pg_config"), "--sharedir".into()]))
                .await
                .ok()
                .filter(|o| o.success())
                .map(|o| o.stdout_text().trim().to_string());
            let Some(share) = share else {
                checks.push(Check::warn(
                    format!("extensions:{}", node.name),
                    "pg_config is not available to check extension files",
                    "check by hand that every extension is installed there",
                ));
                continue;
            };
            let mut missing = Vec::new();
            for e in &extensions {
                let control = std::path::PathBuf::from(&share)
                    .join("extension")
                    .join(format!("{e}.control"));
                if !m.host.exists(&control).await.unwrap_or(false) {
                    missing.push(e.clone());
                }
            }
            if missing.is_empty() {
                checks.push(Check::pass(
                    format!("extensions:{}", node.name),
                    format!("{} installed", extensions.join(", ")),
                ));
            } else {
                checks.push(Check::fail(
                    format!("extensions:{}", node.name),
                    format!(
                        "{} lacks the extension files for {}",
                        node.name,
                        missing.join(", ")
                    ),
                    "install the same extension packages on that host",
                ));
            }
        }
    }
}

/// The reverse path: once the target runs, the old primary's host must be able to replicate
/// from it (it becomes its standby after the cutover).
async fn reverse_path(checks: &mut Vec<Check>, spec: &Spec, facts: &BTreeMap<String, Facts>) {
    let target = spec.target();
    if !facts.contains_key(&target.name) {
        checks.push(Check::pass(
            "reverse_path",
            format!("{} is not running yet; checked when it is", target.name),
        ));
        return;
    }
    let Ok(old) = Member::new(spec, &spec.primary().name) else {
        return;
    };
    let m = old.with_upstream(target);
    let id = "reverse_path".to_string();
    match replication_probe(&m).await {
        Ok((true, _)) => checks.push(Check::pass(id, format!("{} can replicate from {} (the rollback path)", m.name(), target.name))),
        Ok((false, err)) => checks.push(Check::fail(
            id,
            format!("{} cannot replicate from {}: {err}", m.name(), target.name),
            format!("admit {}'s address for replication in {}'s pg_hba.conf: after the cutover it is the rollback path", m.name(), target.name),
        )),
        Err(e) => checks.push(Check::fail(id, format!("{e:#}"), "check the node's host control and bin_dir")),
    }
}

/// `psql replication=true -c IDENTIFY_SYSTEM` from the member's host to its upstream.
async fn replication_probe(m: &Member) -> anyhow::Result<(bool, String)> {
    let server = m.server()?;
    let conninfo = m
        .replication_conninfo(None)?
        .with("replication", "true")
        .with("dbname", "replication")
        .with("connect_timeout", "10");
    let probe = Cmd::new([
        server.tool("psql"),
        "-X".into(),
        "-w".into(),
        "-Atc".into(),
        "IDENTIFY_SYSTEM".into(),
        conninfo.to_libpq_string(),
    ]);
    let out = m.run_with_replication_password(probe, false).await?;
    Ok((out.success(), out.stderr_tail()))
}

async fn control_row(f: &Facts, sql: &str) -> Option<String> {
    let r = f.client.query_one(sql, &[]).await.ok()?;
    Some(format!(
        "align {} block {} wal-block {} segment {} ident {} index-cols {} float8-byval {}",
        r.get::<_, i32>(0),
        r.get::<_, i32>(1),
        r.get::<_, i32>(2),
        r.get::<_, i32>(3),
        r.get::<_, i32>(4),
        r.get::<_, i32>(5),
        r.get::<_, String>(6)
    ))
}

#[cfg(test)]
mod tests {
    use super::{clock_verdict, tls_verdict};
    use crate::preflight::Status;

    #[test]
    fn a_hop_streams_verified_or_the_spec_says_the_link_is_trusted() {
        let text = |mode: &str, tls: &str| {
            format!(
                "name = \"t\"\n[replication]\nuser = \"repl\"\n\
                 [nodes.old]\nrole = \"primary\"\nconninfo = \"host=10.0.0.1 {mode}\"\ndata_dir = \"/a\"\n\
                 [nodes.new]\nrole = \"target\"\nupstream = \"old\"\nconninfo = \"host=10.0.0.2\"\ndata_dir = \"/b\"\n{tls}\n"
            )
        };
        let verdict = |mode: &str, tls: &str| {
            let spec =
                crate::spec::parse(std::path::Path::new("/x.toml"), &text(mode, tls)).unwrap();
            tls_verdict(spec.node("new").unwrap(), spec.node("old").unwrap())
        };
        assert_eq!(verdict("sslmode=verify-full", "").status, Status::Pass);
        assert_eq!(verdict("sslmode=verify-ca", "").status, Status::Pass);
        let fail = verdict("sslmode=require", "");
        assert_eq!(fail.status, Status::Fail);
        assert!(
            fail.remedy.contains("replication_tls = \"none\""),
            "{}",
            fail.remedy
        );
        assert_eq!(
            verdict("", "").status,
            Status::Fail,
            "libpq's default prefer is unauthenticated"
        );
        let trusted = verdict("sslmode=disable", "replication_tls = \"none\"");
        assert_eq!(trusted.status, Status::Pass);
        assert!(
            trusted.message.contains("unverified"),
            "{}",
            trusted.message
        );
    }

    #[test]
    fn clock_skew_passes_within_a_second_warns_to_300_s_and_fails_beyond() {
        let at = |ms: i64| clock_verdict(&[("old".into(), 3), ("new".into(), ms)]);
        assert_eq!(at(-900).status, Status::Pass);
        let warn = at(-4_000);
        assert_eq!(warn.status, Status::Warn);
        assert!(warn.message.contains("new -4000 ms"), "{}", warn.message);
        assert!(warn.remedy.contains("NTP"), "{}", warn.remedy);
        assert_eq!(at(301_000).status, Status::Fail);
    }
}
