//! `migrate plan` against healthy and deliberately broken labs.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use migrate::pg::connect;
use migrate::steps::StepId;
use serde_json::Value;

use crate::replication::Chain;
use crate::support::text;

async fn plan(chain: &Chain) -> (Option<i32>, Value, String) {
    let out = chain.run(&["plan", "--json"], None).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "plan --json: {e}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out.status.code(), v, text(&out.stderr))
}

fn check<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {}", v["checks"]))
}

/// Restart the old primary with some settings changed (ALTER SYSTEM, then restart).
async fn restart_old_with(chain: &Chain, settings: &[(&str, &str)]) {
    let c = connect(&chain.ep("old")).await.unwrap();
    for (k, v) in settings {
        c.batch_execute(&format!("ALTER SYSTEM SET {k} = '{v}'"))
            .await
            .unwrap();
    }
    drop(c);
    chain.restart_server("old").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_lab_is_ready_and_the_plan_has_every_step() {
    let chain = Chain::new().await;
    let (code, v, err) = plan(&chain).await;
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["ready"], true);
    let route = check(&v, "route:0");
    assert_eq!(route["status"], "pass");
    assert!(
        route["message"]
            .as_str()
            .unwrap()
            .contains("reaches old as a writable primary"),
        "{route}"
    );
    for c in v["checks"].as_array().unwrap() {
        assert!(
            c["id"].is_string() && c["message"].is_string() && c["remedy"].is_string(),
            "{c}"
        );
        assert_ne!(c["status"], "fail", "{c}");
    }
    let steps = v["steps"].as_array().unwrap();
    let ids: Vec<&str> = steps.iter().map(|s| s["id"].as_str().unwrap()).collect();
    // The cutover's one plan: every chain step, then every switchover step, each once.
    let mut want = vec![StepId::Clone("new".into()).to_string()];
    want.extend(StepId::SWITCHOVER.iter().map(|s| s.to_string()));
    for id in &want {
        assert_eq!(
            ids.iter().filter(|i| *i == id).count(),
            1,
            "{id} once in {ids:?}"
        );
    }
    let promote = steps
        .iter()
        .find(|s| s["id"] == StepId::Promote.to_string())
        .unwrap();
    assert_eq!(promote["kind"], "point_of_no_return");
    for s in steps {
        for k in ["host", "action", "proof", "undo"] {
            assert!(s[k].is_string(), "{s}");
        }
    }
    // The runbook for this spec: every step, the go/no-go points, rollback, contacts.
    let runbook = chain.lab.lab.dir.join("runbook.md");
    let out = chain
        .run(&["plan", "--runbook", runbook.to_str().unwrap()], None)
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let md = std::fs::read_to_string(&runbook).unwrap();
    for section in [
        "## Preconditions",
        "## Go / no-go points",
        "## The window",
        "## Rollback after the cutover",
        "## Contacts and notes",
        "point of no return",
    ] {
        assert!(md.contains(section), "runbook lacks {section:?}");
    }
    for id in &ids {
        assert!(md.contains(&format!("`{id}`")), "runbook lacks step {id}");
    }
    // No secret in the plan or the runbook.
    let pw = std::fs::read_to_string(chain.lab.lab.passfile()).unwrap();
    for p in pw.lines().map(|l| l.rsplit(':').next().unwrap()) {
        assert!(!v.to_string().contains(p) && !md.contains(p));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlogged_tables_prepared_transactions_and_logical_slots_are_found() {
    let chain = Chain::new().await;
    restart_old_with(
        &chain,
        &[("wal_level", "logical"), ("max_prepared_transactions", "5")],
    )
    .await;
    let c = connect(&chain.ep("old")).await.unwrap();
    c.batch_execute("CREATE UNLOGGED TABLE scratch_cache (k int)")
        .await
        .unwrap();
    // The slot first: creating a logical slot waits for every open transaction, prepared ones too.
    c.batch_execute("SELECT pg_create_logical_replication_slot('cdc_feed', 'test_decoding')")
        .await
        .unwrap();
    c.batch_execute("BEGIN; INSERT INTO ledger VALUES (7, 7); PREPARE TRANSACTION 'stuck_xact'")
        .await
        .unwrap();
    let (code, v, _) = plan(&chain).await;
    assert_eq!(code, Some(1), "a prepared transaction fails the plan");
    assert_eq!(v["ready"], false);
    let u = check(&v, "unlogged");
    assert_eq!(u["status"], "warn");
    assert!(
        u["message"].as_str().unwrap().contains("app.scratch_cache"),
        "{u}"
    );
    let p = check(&v, "prepared_xacts");
    assert_eq!(p["status"], "fail");
    assert!(
        p["message"].as_str().unwrap().contains("stuck_xact")
            && p["remedy"].as_str().unwrap().contains("COMMIT PREPARED"),
        "{p}"
    );
    let l = check(&v, "logical_slots");
    assert_eq!(l["status"], "warn");
    assert!(l["message"].as_str().unwrap().contains("cdc_feed"), "{l}");
    c.batch_execute("ROLLBACK PREPARED 'stuck_xact'")
        .await
        .unwrap();
    c.batch_execute("SELECT pg_drop_replication_slot('cdc_feed')")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_minimal_is_refused() {
    let chain = Chain::new().await;
    restart_old_with(
        &chain,
        &[("wal_level", "minimal"), ("max_wal_senders", "0")],
    )
    .await;
    let (code, v, _) = plan(&chain).await;
    assert_eq!(code, Some(1));
    let w = check(&v, "wal_level");
    assert_eq!(w["status"], "fail");
    assert!(
        w["remedy"]
            .as_str()
            .unwrap()
            .contains("wal_level = replica"),
        "{w}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_senders_after_promotion_and_no_rewind_are_reported() {
    let chain = Chain::new().await;
    // 3 senders are enough on old now (new + a base backup), not on new after promotion
    // (new_replica, dr, the old primary's reverse stream, a base backup).
    restart_old_with(
        &chain,
        &[("max_wal_senders", "3"), ("wal_log_hints", "off")],
    )
    .await;
    let (code, v, _) = plan(&chain).await;
    assert_eq!(code, Some(1));
    assert_eq!(check(&v, "capacity:old")["status"], "pass");
    let n = check(&v, "capacity:new");
    assert_eq!(n["status"], "fail");
    assert!(
        n["message"].as_str().unwrap().contains("after promotion")
            && n["remedy"].as_str().unwrap().contains("max_wal_senders"),
        "{n}"
    );
    let r = check(&v, "rewind");
    assert_eq!(r["status"], "warn");
    assert!(
        r["remedy"].as_str().unwrap().contains("wal_log_hints"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_from_another_cluster_is_refused() {
    let chain = Chain::new().await;
    let lab = &chain.lab.lab;
    let data = lab.data_dir("new");
    let host = lab.host();
    let init = migrate::host::Cmd::new([
        lab.bin_dir.join("initdb").display().to_string(),
        "-D".into(),
        data.display().to_string(),
        "-U".into(),
        "postgres".into(),
        "--auth-local=trust".into(),
        "--auth-host=scram-sha-256".into(),
        "--no-sync".into(),
    ])
    .timeout(Duration::from_secs(120));
    host.run_ok(&init).await.unwrap();
    let conf = data.join("postgresql.conf");
    let mut text_conf = std::fs::read_to_string(&conf).unwrap();
    text_conf.push_str(&format!(
        "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n",
        lab.port("new"),
        lab.socket_dir().display()
    ));
    host.write_file(&conf, text_conf.as_bytes(), 0o600, None)
        .await
        .unwrap();
    lab.server("new")
        .start(&lab.server_log("new"), Duration::from_secs(60))
        .await
        .unwrap();
    // Same password as the lab's, so that only the cluster identity differs.
    let pw = std::fs::read_to_string(lab.passfile()).unwrap();
    let postgres_pw = pw
        .lines()
        .find_map(|l| l.strip_prefix("*:*:*:postgres:"))
        .unwrap()
        .to_string();
    let sock = migrate::pg::Conninfo::parse(&format!(
        "host={} port={} user=postgres sslmode=disable",
        lab.socket_dir().display(),
        lab.port("new")
    ))
    .unwrap();
    let c = connect(&migrate::pg::Endpoint::new("new", sock, None))
        .await
        .unwrap();
    c.batch_execute(&format!("ALTER ROLE postgres PASSWORD '{postgres_pw}'"))
        .await
        .unwrap();
    c.batch_execute("SELECT pg_promote()").await.ok();

    let (code, v, _) = plan(&chain).await;
    assert_eq!(code, Some(1));
    let s = check(&v, "same_cluster:new");
    assert_eq!(s["status"], "fail");
    assert!(
        s["message"].as_str().unwrap().contains("another cluster"),
        "{s}"
    );
    // And it is a second primary.
    assert_eq!(check(&v, "one_primary")["status"], "fail");
}

/// Remove the replication lines from a node's pg_hba.conf and reload; returns the original.
async fn drop_replication_hba(chain: &Chain, node: &str) -> String {
    let lab = &chain.lab.lab;
    let hba = lab.data_dir(node).join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap();
    let without: String = original
        .lines()
        .filter(|l| !l.contains("replication"))
        .map(|l| format!("{l}\n"))
        .collect();
    lab.host()
        .write_file(&hba, without.as_bytes(), 0o600, None)
        .await
        .unwrap();
    connect(&chain.ep(node))
        .await
        .unwrap()
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    original
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_hba_unreachable_host_and_wrong_password_are_explained() {
    let chain = Chain::new().await;
    let lab = &chain.lab.lab;
    // Replication entries removed from the old primary's pg_hba.conf.
    let original = drop_replication_hba(&chain, "old").await;
    let hba = lab.data_dir("old").join("pg_hba.conf");
    let (code, v, _) = plan(&chain).await;
    assert_eq!(code, Some(1));
    let r = check(&v, "replication_auth:new");
    assert_eq!(r["status"], "fail", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("pg_hba.conf")
            && r["remedy"]
                .as_str()
                .unwrap()
                .contains("host replication repl"),
        "{r}"
    );
    lab.host()
        .write_file(&hba, original.as_bytes(), 0o600, None)
        .await
        .unwrap();
    connect(&chain.ep("old"))
        .await
        .unwrap()
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();

    // Wrong password: named, never printed.
    let spec_text = std::fs::read_to_string(&chain.spec).unwrap();
    let bad_pass = lab.dir.join("bad.pgpass");
    std::fs::write(&bad_pass, "*:*:*:postgres:Not-The-Password-42\n").unwrap();
    std::fs::set_permissions(&bad_pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let first_node_pass = format!(
        "password = {{ passfile = {:?} }}",
        lab.passfile().display().to_string()
    );
    let old_section = spec_text.find("[nodes.old]").unwrap();
    let at = old_section + spec_text[old_section..].find(&first_node_pass).unwrap();
    let mut broken = spec_text.clone();
    broken.replace_range(
        at..at + first_node_pass.len(),
        &format!(
            "password = {{ passfile = {:?} }}",
            bad_pass.display().to_string()
        ),
    );
    std::fs::write(&chain.spec, &broken).unwrap();
    let out = chain.run(&["plan", "--json"], None).await;
    assert_eq!(out.status.code(), Some(1));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(
        !all.contains("Not-The-Password-42"),
        "the password was printed"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = check(&v, "connect:old");
    assert_eq!(c["status"], "fail");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("password authentication failed"),
        "{c}"
    );
    assert!(c["remedy"].as_str().unwrap().contains("password"), "{c}");

    // Unreachable: nothing listens at the primary's address.
    let port = lab.port("old").to_string();
    // The lab listens on 127.0.0.1 only: 127.0.0.2 at the same port refuses connections.
    let unreachable = spec_text.replacen(
        &format!("host=127.0.0.1 port={port} "),
        &format!("host=127.0.0.2 port={port} "),
        1,
    );
    std::fs::write(&chain.spec, unreachable).unwrap();
    let (code, v, _) = plan(&chain).await;
    assert_eq!(code, Some(1));
    let c = check(&v, "connect:old");
    assert_eq!(c["status"], "fail");
    assert!(
        c["remedy"].as_str().unwrap().contains("nothing listens"),
        "{c}"
    );
    std::fs::write(&chain.spec, spec_text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_chain_running_the_build_and_the_reverse_path_are_checked() {
    let chain = Chain::new().await;
    let (_, v, _) = plan(&chain).await;
    assert_eq!(check(&v, "disk:new")["status"], "pass");
    assert_eq!(
        check(&v, "reverse_path")["status"],
        "pass",
        "not running yet: checked later"
    );
    chain.replicate_ok().await;
    let (code, v, err) = plan(&chain).await;
    assert_eq!(code, Some(0), "{v} {err}");
    let c = check(&v, "control");
    assert_eq!(c["status"], "pass");
    assert!(
        c["message"].as_str().unwrap().contains("segment 16777216"),
        "{c}"
    );
    let r = check(&v, "reverse_path");
    assert_eq!(r["status"], "pass");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("old can replicate from new"),
        "{r}"
    );
    assert_eq!(check(&v, "replication_auth:dr")["status"], "pass");
    assert_eq!(check(&v, "same_cluster:dr")["status"], "pass");
    // pg_rewind's source after the cutover (new) and after a switchback (old).
    for node in ["new", "old"] {
        let c = check(&v, &format!("rewind_role:{node}"));
        assert_eq!(c["status"], "pass", "{c}");
    }
    assert_eq!(
        check(&v, "clocks")["status"],
        "pass",
        "one machine, one clock"
    );

    // A database whose indexes were built under another collation library version (as when
    // the new hosts run another OS release): recorded on the primary, replicated, and
    // compared on every node with the library that node's host has.
    let c = connect(&chain.ep("old")).await.unwrap();
    c.batch_execute(
        "CREATE DATABASE sorted LOCALE_PROVIDER icu ICU_LOCALE 'und' LOCALE 'C.UTF-8' TEMPLATE template0",
    )
    .await
    .unwrap();
    let (_, v, _) = plan(&chain).await;
    for node in ["old", "new", "new_replica", "dr"] {
        let c = check(&v, &format!("collation:{node}"));
        assert_eq!(c["status"], "pass", "{c}");
    }
    c.batch_execute("UPDATE pg_database SET datcollversion = '1.0' WHERE datname = 'sorted'")
        .await
        .unwrap();
    chain.wait_caught_up().await;
    let (code, v, _) = plan(&chain).await;
    assert_eq!(code, Some(1), "{v}");
    let old = check(&v, "collation:old");
    assert_eq!(old["status"], "warn", "the primary's own: {old}");
    let new = check(&v, "collation:new");
    assert_eq!(new["status"], "fail", "{new}");
    let msg = new["message"].as_str().unwrap();
    assert!(msg.contains("sorted (built with 1.0, new has"), "{new}");
    assert!(new["remedy"].as_str().unwrap().contains("REINDEX"), "{new}");
    c.batch_execute("DROP DATABASE sorted").await.unwrap();
    chain.wait_caught_up().await;

    // The target stops admitting replication: the rollback path is gone, and plan says so.
    drop_replication_hba(&chain, "new").await;
    let (code, v, _) = plan(&chain).await;
    assert_eq!(code, Some(1));
    let r = check(&v, "reverse_path");
    assert_eq!(r["status"], "fail", "{r}");
    assert!(
        r["remedy"].as_str().unwrap().contains("rollback path"),
        "{r}"
    );
}

/// P9: a synchronous_standby_names that only the old topology satisfies would make every
/// commit on the new primary wait for ever: plan fails naming it; one the new topology meets
/// passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_standby_names_that_would_hang_the_new_primary_fails_the_plan() {
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    let set = |value: &'static str| {
        let ep = chain.ep("old");
        async move {
            let c = connect(&ep).await.unwrap();
            c.batch_execute(&format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{value}'"
            ))
            .await
            .unwrap();
            c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
        }
    };
    // Satisfied now (the target confirms), never after the cutover (the target is the
    // primary then, and nothing called "new" streams from it).
    set("new").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, v, _) = plan(&chain).await;
    assert_eq!(code, Some(1), "{v}");
    let s = check(&v, "synchronous_standby_names");
    assert_eq!(s["status"], "fail", "{s}");
    assert!(
        s["message"].as_str().unwrap().contains("wait for ever"),
        "{s}"
    );
    assert!(s["remedy"].as_str().unwrap().contains("old"), "{s}");

    set("ANY 1 (new, old)").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, v, _) = plan(&chain).await;
    assert_eq!(check(&v, "synchronous_standby_names")["status"], "pass");
    set("").await;
}
