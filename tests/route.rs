//! The PgBouncer route against the lab's real PgBouncer: clients held, not failed.

use std::time::Duration;

use migrate::lab::workload::{missing_acks, Writer};
use migrate::pg::connect;

use crate::replication::Chain;
use crate::support::text;

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
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        pgbouncer_points_at(&chain).contains(&format!("port={}", chain.lab.lab.port("new"))),
        "{}",
        pgbouncer_points_at(&chain)
    );
    let at_cutover = w.acked();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        w.acked() > at_cutover,
        "writes go on through PgBouncer to the new primary"
    );

    let out = chain.run(&["rollback", "--yes"], None).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        pgbouncer_points_at(&chain).contains(&format!("port={}", chain.lab.lab.port("old"))),
        "{}",
        pgbouncer_points_at(&chain)
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
        .find(|s| s["id"] == "hold")
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
        .find(|s| s["id"] == "release")
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
        .env("MIGRATE_WAIT_AT", "fence:before")
        .env("MIGRATE_WAIT_FILE", chain.lab.lab.dir.join("go"));
    let run = child.output();
    let fault = async {
        // The fence is up: now the target's server goes away.
        chain.wait_for_step("cutover", "fence", "in_doubt").await;
        chain.kill_server("new").await;
        std::fs::write(chain.lab.lab.dir.join("go"), "").unwrap();
    };
    let (out, ()) = tokio::join!(run, fault);
    let out = out.unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
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

async fn pgbouncer_setting(lab: &migrate::lab::Lab, key: &str) -> String {
    let mut ep = lab.app_endpoint();
    ep.conninfo = ep.conninfo.with("dbname", "pgbouncer");
    let c = connect(&ep).await.unwrap();
    c.simple_query("SHOW CONFIG")
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some(key) => {
                r.get(1).map(str::to_string)
            }
            _ => None,
        })
        .unwrap()
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
    r.hold().await.unwrap();
    assert_eq!(
        pgbouncer_setting(&lab.lab, "query_wait_timeout").await,
        (budget + 1).to_string()
    );
    r.point(old, old).await.unwrap();
    assert_eq!(
        pgbouncer_setting(&lab.lab, "query_wait_timeout").await,
        (budget + 1).to_string(),
        "still raised after the RELOAD"
    );
    r.release().await.unwrap();
    assert_eq!(
        pgbouncer_setting(&lab.lab, "query_wait_timeout").await,
        "120"
    );
    r.verify(old).await.unwrap();
}
