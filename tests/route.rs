//! The PgBouncer route against the lab's real PgBouncer: clients held, not failed.

use migrate::exit::Exit;
use std::time::Duration;

use migrate::lab::workload::{missing_acks, Writer};
use migrate::pg::connect;
use migrate::steps::StepId;

use crate::replication::Chain;

/// The lab spec routes through its PgBouncer already; this checks that it does.
fn with_pgbouncer_route(chain: &Chain) {
    let spec = std::fs::read_to_string(&chain.spec).unwrap();
    assert!(
        spec.contains("kind = \"pgbouncer\""),
        "the lab spec should route through PgBouncer"
    );
}

fn pgbouncer_points_at(chain: &Chain) -> String {
    let ini = std::fs::read_to_string(chain.lab.lab.dir.join("pgbouncer/pgbouncer.ini")).unwrap();
    ini.lines()
        .find(|l| l.starts_with("app ="))
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_and_rollback_through_pgbouncer_hold_clients_without_errors() {
    let chain = Chain::new().await;
    with_pgbouncer_route(&chain);
    chain.replicate_ok().await;
    chain.plan_ok().await;
    // The operator's own settings in pgbouncer.ini: a token on the managed entry, a mode and an
    // owner of their choosing. The route changes host and port only.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let ini_path = chain.lab.lab.dir.join("pgbouncer/pgbouncer.ini");
    let ini = std::fs::read_to_string(&ini_path).unwrap();
    std::fs::write(
        &ini_path,
        ini.replacen("dbname=app", "dbname=app pool_size=7", 1),
    )
    .unwrap();
    std::fs::set_permissions(&ini_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let owner = std::fs::metadata(&ini_path).unwrap().uid();
    // The writer only knows the application endpoint: PgBouncer.
    let w = Writer::start(
        vec![chain.lab.lab.app_endpoint()],
        8,
        Duration::from_millis(2),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    crate::support::assert_exit(&out, Exit::Done);
    assert!(
        pgbouncer_points_at(&chain).contains(&format!("port={}", chain.lab.lab.port("new"))),
        "{}",
        pgbouncer_points_at(&chain)
    );
    assert!(
        pgbouncer_points_at(&chain).contains("pool_size=7"),
        "{}",
        pgbouncer_points_at(&chain)
    );
    let meta = std::fs::metadata(&ini_path).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid()),
        (0o640, owner),
        "pgbouncer.ini lost its mode or owner"
    );
    // The release step settled PgBouncer: its retry delay is the configured one again (the lab
    // sets none: PgBouncer's default, 15 s), not the 0 it had for the RESUMEs.
    assert_eq!(
        pgbouncer_setting(&chain.lab.lab, "server_login_retry").await,
        "15"
    );
    let at_cutover = w.acked();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        w.acked() > at_cutover,
        "writes go on through PgBouncer to the new primary"
    );

    let out = chain.run(&["rollback", "--yes"], None).await;
    crate::support::assert_exit(&out, Exit::Done);
    assert!(
        pgbouncer_points_at(&chain).contains(&format!("port={}", chain.lab.lab.port("old"))),
        "{}",
        pgbouncer_points_at(&chain)
    );
    assert_eq!(
        pgbouncer_setting(&chain.lab.lab, "server_login_retry").await,
        "15"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = w.stop().await;

    assert!(
        report.errors.is_empty(),
        "clients must be held, not failed: {} errors, e.g. {:?}",
        report.errors.len(),
        report.errors.first()
    );
    chain.wait_caught_up_from("old").await;
    for n in ["old", "new", "new_replica", "dr"] {
        let missing = missing_acks(&chain.ep(n), &report.acks).await.unwrap();
        assert!(
            missing.is_empty(),
            "{n} lacks {} acknowledged rows",
            missing.len()
        );
    }
    // The journal recorded where the route pointed before the change.
    let v: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    let hold = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == StepId::Hold.to_string())
        .unwrap();
    assert_eq!(
        hold["output"]["previous"][0]["points_at"]["app"]["port"],
        chain.lab.lab.port("new"),
        "{hold}"
    );
    let release = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == StepId::Release.to_string())
        .unwrap();
    assert_eq!(
        release["output"]["verified"][0]["verified"]["app"]["primary"], "old",
        "{release}"
    );
    let c = connect(&chain.ep("old")).await.unwrap();
    assert!(!c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get::<_, bool>(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_cutover_releases_the_held_clients() {
    let chain = Chain::new().await;
    with_pgbouncer_route(&chain);
    let spec_text = std::fs::read_to_string(&chain.spec)
        .unwrap()
        .replace("proof_timeout = \"30s\"", "proof_timeout = \"2s\"");
    std::fs::write(&chain.spec, spec_text).unwrap();
    chain.replicate_ok().await;
    chain.plan_ok().await;
    // The target is gone right after the chain was verified: the proof cannot come.
    let w = Writer::start(
        vec![chain.lab.lab.app_endpoint()],
        2,
        Duration::from_millis(5),
    );
    let mut child = tokio::process::Command::new(crate::support::migrate_bin());
    child
        .args(["cutover", "--yes", "--force-window", "-f", chain.spec()])
        .env("MIGRATE_WAIT_AT", "stop:before")
        .env("MIGRATE_WAIT_FILE", chain.lab.lab.dir.join("go"));
    let run = child.output();
    let fault = async {
        // Clients are held, the stop is next: now the target's server goes away.
        chain
            .wait_for_step("cutover", &StepId::Stop, "in_doubt")
            .await;
        chain.kill_server("new").await;
        std::fs::write(chain.lab.lab.dir.join("go"), "").unwrap();
    };
    let (out, ()) = tokio::join!(run, fault);
    let out = out.unwrap();
    crate::support::assert_exit(&out, Exit::NotReady);
    // Held clients were released and write again to the old primary, through PgBouncer.
    let before = w.acked();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        w.acked() > before,
        "clients must be released after the abort"
    );
    let report = w.stop().await;
    assert!(pgbouncer_points_at(&chain).contains(&format!("port={}", chain.lab.lab.port("old"))));
    let missing = missing_acks(&chain.ep("old"), &report.acks).await.unwrap();
    assert!(missing.is_empty());
}

/// The lab PgBouncer's admin console.
async fn pgbouncer_console(lab: &migrate::lab::Lab) -> tokio_postgres::Client {
    let mut ep = lab.app_endpoint();
    ep.conninfo = ep.conninfo.with("dbname", "pgbouncer");
    connect(&ep).await.unwrap()
}

/// Column `want` of the row of console command `show` whose column `by` is `key`.
async fn pgbouncer_shows(
    lab: &migrate::lab::Lab,
    show: &str,
    by: &str,
    key: &str,
    want: &str,
) -> String {
    pgbouncer_console(lab)
        .await
        .simple_query(show)
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(by) == Some(key) => {
                r.get(want).map(str::to_string)
            }
            _ => None,
        })
        .unwrap()
}

async fn pgbouncer_setting(lab: &migrate::lab::Lab, key: &str) -> String {
    pgbouncer_shows(lab, "SHOW CONFIG", "key", key, "value").await
}

/// Held clients are dropped after query_wait_timeout (120 s by default): it is raised above
/// the cutover's pause budget while they are held, kept across the RELOAD of the repoint, and
/// restored on release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_raises_query_wait_timeout_while_holding() {
    let lab = crate::support::TestLab::up().await;
    let spec = migrate::spec::load(&lab.lab.spec_path()).unwrap();
    let budget = spec.cutover.pause_budget().as_secs();
    assert!(
        budget > 120,
        "the lab's budget {budget} s is above the default"
    );
    let r = migrate::route::open(&spec.routes).unwrap().remove(0);
    let old = spec.node("old").unwrap();
    assert_eq!(
        pgbouncer_setting(&lab.lab, "query_wait_timeout").await,
        "120"
    );
    assert_wait_limit_raised_while_held(&lab.lab, r.as_ref(), old, budget, "120").await;
    r.verify(old).await.unwrap();
}

/// Hold, repoint (at the same node) and release through `r`: `query_wait_timeout` is above
/// the budget after the hold and after the RELOAD, and `configured` after the release.
async fn assert_wait_limit_raised_while_held(
    lab: &migrate::lab::Lab,
    r: &dyn migrate::route::Router,
    node: &migrate::spec::Node,
    budget: u64,
    configured: &str,
) {
    let raised = (budget + 1).to_string();
    r.hold().await.unwrap();
    // Each managed database paused (their PAUSEs go out at once, on consoles of their own).
    for db in ["app", "postgres"] {
        assert_eq!(
            pgbouncer_shows(lab, "SHOW DATABASES", "name", db, "paused").await,
            "1",
            "{db} is not paused"
        );
    }
    assert_eq!(pgbouncer_setting(lab, "query_wait_timeout").await, raised);
    r.point(node, node).await.unwrap();
    assert_eq!(
        pgbouncer_setting(lab, "query_wait_timeout").await,
        raised,
        "still raised after the RELOAD"
    );
    r.release().await.unwrap();
    assert_eq!(
        pgbouncer_setting(lab, "query_wait_timeout").await,
        configured
    );
    for db in ["app", "postgres"] {
        assert_eq!(
            pgbouncer_shows(lab, "SHOW DATABASES", "name", db, "paused").await,
            "0",
            "{db} is still paused"
        );
    }
}

/// A `query_wait_timeout` set in an `%include`d file (pgbouncer.ini itself does not set it) is
/// the one the release goes back to, not PgBouncer's default read from pgbouncer.ini.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_restores_a_wait_limit_set_in_an_included_file() {
    let lab = crate::support::TestLab::up().await;
    let spec = migrate::spec::load(&lab.lab.spec_path()).unwrap();
    let budget = spec.cutover.pause_budget().as_secs();
    let dir = lab.lab.dir.join("pgbouncer");
    let extra = dir.join("extra.ini");
    std::fs::write(&extra, "query_wait_timeout = 30\n").unwrap();
    let ini = dir.join("pgbouncer.ini");
    let mut text = std::fs::read_to_string(&ini).unwrap();
    assert!(!text.contains("query_wait_timeout"), "{text}");
    text.push_str(&format!("%include {}\n", extra.display()));
    std::fs::write(&ini, text).unwrap();
    pgbouncer_console(&lab.lab)
        .await
        .simple_query("RELOAD")
        .await
        .unwrap();
    assert_eq!(
        pgbouncer_setting(&lab.lab, "query_wait_timeout").await,
        "30"
    );
    let r = migrate::route::open(&spec.routes).unwrap().remove(0);
    let old = spec.node("old").unwrap();
    assert_wait_limit_raised_while_held(&lab.lab, r.as_ref(), old, budget, "30").await;
}

/// PgBouncer marks a pool as failing to log in when a PAUSE closes one of its server
/// connections still logging in (pgbouncer PR #420); after RESUME that pool then opened no
/// server connection for `server_login_retry` and its held clients waited that long (seen in
/// a rehearsal: 14 s after the release). Here a login is caught by the hold on purpose (the
/// old primary's logins wait on a lock of `pg_database`), with the retry delay set to 60 s:
/// the held client is answered once released, well inside it, and the delay is 60 s again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_catches_a_server_login_does_not_stall_the_released_clients() {
    let lab = crate::support::TestLab::up().await;
    let spec = migrate::spec::load(&lab.lab.spec_path()).unwrap();
    let ini = lab.lab.dir.join("pgbouncer/pgbouncer.ini");
    let text = std::fs::read_to_string(&ini).unwrap();
    assert!(!text.contains("server_login_retry"), "{text}");
    std::fs::write(
        &ini,
        text.replace("[pgbouncer]\n", "[pgbouncer]\nserver_login_retry = 60\n"),
    )
    .unwrap();
    let console = pgbouncer_console(&lab.lab).await;
    console.simple_query("RELOAD").await.unwrap();
    assert_eq!(
        pgbouncer_setting(&lab.lab, "server_login_retry").await,
        "60"
    );
    // As a run killed between the release and its settling would leave it: 0 in force. The
    // hold must not take that for the configured value; the release step (release, then
    // settle) sets the file's back.
    console
        .simple_query("SET server_login_retry = 0")
        .await
        .unwrap();
    let r = migrate::route::open(&spec.routes).unwrap().remove(0);
    // A hold and a release first: PgBouncer keeps no server connection after a PAUSE, so the
    // client below needs a new one.
    r.hold().await.unwrap();
    r.release().await.unwrap();
    r.settle().await.unwrap();
    assert_eq!(
        pgbouncer_setting(&lab.lab, "server_login_retry").await,
        "60",
        "a 0 left by a killed release is not taken for the configured value"
    );

    let locker = connect(&lab.lab.endpoint("old", "postgres")).await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE pg_database IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let app = lab.lab.app_endpoint();
    let client = tokio::spawn(async move {
        let c = connect(&app).await?;
        c.simple_query("SELECT 1").await?;
        anyhow::Ok(())
    });
    // Until PgBouncer has a server connection of `app` logging in (it waits on the lock).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let servers = console.simple_query("SHOW SERVERS").await.unwrap();
        let logging_in = servers.iter().any(|m| {
            matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get("database") == Some("app"))
        });
        if logging_in {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no server login began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.hold().await.unwrap();
    locker.batch_execute("COMMIT").await.unwrap();
    r.release().await.unwrap();
    r.settle().await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(30), client).await;
    assert!(
        matches!(answered, Ok(Ok(Ok(())))),
        "the held client was not answered within 30 s of the release (server_login_retry is 60 s): {answered:?}"
    );
    assert_eq!(
        pgbouncer_setting(&lab.lab, "server_login_retry").await,
        "60",
        "the configured retry delay is set back"
    );
}

/// What PgBouncer's console shows `app` pointing at (what it loaded, not what the file says).
async fn pgbouncer_app_port(lab: &migrate::lab::Lab) -> String {
    pgbouncer_shows(lab, "SHOW DATABASES", "name", "app", "port").await
}

/// The repointed pgbouncer.ini written ahead (beside the promotion) changes nothing clients
/// see: PgBouncer still points where it did until `point` RELOADs it. `point` does not take
/// the file on trust: one edited meanwhile is caught by the console's own view after the
/// RELOAD, and the next attempt writes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgbouncer_repoint_prepared_ahead_is_loaded_only_by_point_and_checked() {
    let lab = crate::support::TestLab::up().await;
    let spec = migrate::spec::load(&lab.lab.spec_path()).unwrap();
    let r = migrate::route::open(&spec.routes).unwrap().remove(0);
    let (old, new) = (spec.node("old").unwrap(), spec.node("new").unwrap());
    let ini_path = lab.lab.dir.join("pgbouncer/pgbouncer.ini");
    let (old_port, new_port) = (
        lab.lab.port("old").to_string(),
        lab.lab.port("new").to_string(),
    );
    r.prepare_point(old, new).await.unwrap();
    let ini = std::fs::read_to_string(&ini_path).unwrap();
    assert!(ini.contains(&format!("port={new_port}")), "{ini}");
    assert_eq!(
        pgbouncer_app_port(&lab.lab).await,
        old_port,
        "not loaded yet"
    );
    let pointed = r.point(old, new).await.unwrap();
    assert_eq!(pointed["app"]["port"], new_port.as_str(), "{pointed}");
    assert_eq!(pgbouncer_app_port(&lab.lab).await, new_port);

    // Prepared back to old, then the file edited by hand before `point`.
    r.prepare_point(new, old).await.unwrap();
    let prepared = std::fs::read_to_string(&ini_path).unwrap();
    std::fs::write(
        &ini_path,
        prepared.replace(&format!("port={old_port}"), &format!("port={new_port}")),
    )
    .unwrap();
    let err = r.point(new, old).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("still points at port"),
        "{err:#}"
    );
    r.point(new, old).await.unwrap();
    assert_eq!(pgbouncer_app_port(&lab.lab).await, old_port);
}

/// A route plugin whose actions fail while `fail-<action>` exists in its directory; it
/// remembers the node it points at in `points_at`.
const FLAKY_PLUGIN: &str = r#"#!/usr/bin/env python3
import json, os, sys
req = json.load(sys.stdin)
d = req["config"]["dir"]
a = req["action"]
state = os.path.join(d, "points_at")
cur = open(state).read().strip() if os.path.exists(state) else None
if os.path.exists(os.path.join(d, "fail-" + a)):
    out = {"ok": False, "error": "simulated outage of the traffic API"}
elif a == "point":
    open(state, "w").write(req["endpoint"]["node"])
    out = {"ok": True, "node": req["endpoint"]["node"]}
elif a == "verify":
    out = {"ok": cur == req["endpoint"]["node"], "error": "points at %s" % cur}
elif a == "current":
    out = {"ok": True, "node": cur}
else:
    out = {"ok": True}
print(json.dumps(out))
"#;

/// Before the point of no return a failing route aborts the cutover and unfences the old
/// primary; after it, the route is retried with backoff, then the run stops with exit 3
/// naming where the route points and how to continue; `resume` finishes once it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_route_aborts_before_the_point_of_no_return_and_stops_for_the_operator_after() {
    use std::os::unix::fs::PermissionsExt;
    let chain = Chain::new().await;
    let dir = chain.lab.lab.dir.join("flaky");
    std::fs::create_dir_all(&dir).unwrap();
    let plugin = dir.join("migrate-route-flaky");
    std::fs::write(&plugin, FLAKY_PLUGIN).unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("points_at"), "old").unwrap();
    let text = std::fs::read_to_string(&chain.spec).unwrap();
    let cut = text.find("[[route]]").unwrap();
    std::fs::write(
        &chain.spec,
        format!(
            "{}[[route]]\nkind = \"exec\"\nname = \"flaky\"\ncommand = [\"{}\"]\nconfig = {{ dir = \"{}\" }}\n",
            &text[..cut],
            plugin.display(),
            dir.display()
        ),
    )
    .unwrap();
    chain.replicate_ok().await;
    chain.plan_ok().await;

    std::fs::write(dir.join("fail-hold"), "").unwrap();
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    let err = crate::support::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("simulated outage"), "{err}");
    assert!(
        !err.contains("continue with `migrate resume"),
        "an undone run must not advise resuming: {err}"
    );
    let c = connect(&chain.ep("old")).await.unwrap();
    c.batch_execute("CREATE TABLE after_abort (i int); DROP TABLE after_abort")
        .await
        .expect("the old primary takes writes again");
    std::fs::remove_file(dir.join("fail-hold")).unwrap();

    chain.plan_ok().await;
    std::fs::write(dir.join("fail-point"), "").unwrap();
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    let err = crate::support::output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("retries"), "{err}");
    assert!(
        err.contains("exec flaky") && err.contains("still points at") && err.contains("\"old\""),
        "the message says where the route points: {err}"
    );
    assert!(err.contains("migrate resume"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("points_at")).unwrap(),
        "old"
    );

    std::fs::remove_file(dir.join("fail-point")).unwrap();
    let out = chain.run(&["resume", "--force-window"], None).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        crate::support::output_text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("points_at")).unwrap(),
        "new"
    );
    let c = connect(&chain.ep("new")).await.unwrap();
    assert!(!c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get::<_, bool>(0));
}
