//! Chained replication on the lab: old → new → {new_replica, dr}, through the real binary.

use migrate::exit::Exit;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use migrate::lab::workload::{grow_app, missing_acks, Writer};
use migrate::pg::{connect, Endpoint, Lsn};
use migrate::replication::gate::{catch_up_gate, Decision};
use migrate::replication::lag::{sample_chain, ChainSample, Hop, HopState};
use migrate::steps::StepId;

use crate::support::crash::{assert_killed, boundaries};
use crate::support::{migrate_bin, text, TestLab};

const STANDBYS: [&str; 3] = ["new", "new_replica", "dr"];
/// The chain steps of one standby, in order.
fn steps_of(node: &str) -> [StepId; 4] {
    [
        StepId::Prepare(node.into()),
        StepId::Slot(node.into()),
        StepId::Clone(node.into()),
        StepId::Start(node.into()),
    ]
}

pub struct Chain {
    pub lab: TestLab,
    pub spec: PathBuf,
}

impl Chain {
    pub async fn new() -> Chain {
        Chain::new_in(migrate::lab::Layout::Plain).await
    }

    pub async fn new_in(layout: migrate::lab::Layout) -> Chain {
        Chain::new_with(layout, migrate::lab::Hosts::Local).await
    }

    pub async fn new_with(layout: migrate::lab::Layout, hosts: migrate::lab::Hosts) -> Chain {
        let lab = TestLab::up_with(layout, hosts).await;
        let spec = lab.lab.spec_path();
        // A short stability window keeps the matrix fast; the gate logic is unit-tested.
        let text = std::fs::read_to_string(&spec)
            .unwrap()
            .replace("lag_stable_for = \"2s\"", "lag_stable_for = \"300ms\"");
        std::fs::write(&spec, text).unwrap();
        Chain { lab, spec }
    }

    pub fn spec(&self) -> &str {
        self.spec.to_str().unwrap()
    }

    pub fn ep(&self, node: &str) -> Endpoint {
        self.lab.lab.endpoint(node, "app")
    }

    pub async fn run(&self, args: &[&str], crash_at: Option<&str>) -> std::process::Output {
        let env: Vec<(&str, &str)> = crash_at
            .map(|at| ("MIGRATE_CRASH_AT", at))
            .into_iter()
            .collect();
        self.run_env(args, &env).await
    }

    /// The binary against this chain's spec, with extra environment variables.
    pub async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut c = tokio::process::Command::new(migrate_bin());
        c.args(args)
            .args(["-f", self.spec()])
            .env_remove("MIGRATE_SPEC")
            .envs(env.iter().copied());
        c.output().await.unwrap()
    }

    pub async fn replicate_ok(&self) {
        let out = self.run(&["replicate"], None).await;
        crate::support::assert_exit_at(&out, Exit::Done, "replicate");
    }

    /// Wait until the current run is `operation` and its `step` has `status`.
    pub async fn wait_for_step(&self, operation: &str, step: &StepId, status: &str) {
        let step = step.to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.run(&["status", "--json"], None).await;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if v["operation"] == operation
                && v["steps"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|x| x["id"] == step && x["status"] == status))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the {operation} run never got to {step} {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop a node's server at once (a fault).
    pub async fn kill_server(&self, node: &str) {
        self.lab
            .lab
            .server(node)
            .stop(
                migrate::pg::server::StopMode::Immediate,
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }

    /// Restart a node's server by hand (fast stop, then start), as a DBA would.
    pub async fn restart_server(&self, node: &str) {
        let server = self.lab.lab.server(node);
        server
            .stop(migrate::pg::server::StopMode::Fast, Duration::from_secs(60))
            .await
            .unwrap();
        server
            .start(&self.lab.lab.server_log(node), Duration::from_secs(60))
            .await
            .unwrap();
    }

    pub async fn plan_ok(&self) {
        let out = self.run(&["plan"], None).await;
        crate::support::assert_exit_at(&out, Exit::Done, "plan");
    }

    pub fn hops(&self) -> Vec<Hop> {
        let hop = |up: &str, node: &str| Hop {
            upstream: self.ep(up),
            node: self.ep(node),
            application_name: node.into(),
        };
        vec![
            hop("old", "new"),
            hop("new", "new_replica"),
            hop("new", "dr"),
        ]
    }

    pub async fn slots(&self, node: &str) -> Vec<String> {
        let c = connect(&self.ep(node)).await.unwrap();
        c.query(
            "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    async fn running(&self, node: &str) -> bool {
        self.lab.lab.server(node).state().await.unwrap() == migrate::pg::server::RunState::Running
    }

    /// old → new → {new_replica, dr} streaming, exactly the slots it needs, no other server.
    pub async fn assert_chain(&self, ctx: &str) {
        let s = sample_chain(&self.ep("old"), &self.hops()).await;
        for h in &s.hops {
            assert!(
                matches!(h.state, HopState::Streaming { .. }),
                "{ctx}: {} → {} is {:?}",
                h.upstream,
                h.node,
                h.state
            );
        }
        assert_eq!(
            self.slots("old").await,
            ["migrate_new"],
            "{ctx}: slots on old"
        );
        assert_eq!(
            self.slots("new").await,
            ["migrate_dr", "migrate_new_replica"],
            "{ctx}: slots on new"
        );
        for n in STANDBYS {
            assert!(self.running(n).await, "{ctx}: {n} not running");
        }
    }

    /// Nothing of the chain left: no standby server, empty data directories, no slot.
    pub async fn assert_clean(&self, ctx: &str) {
        for n in STANDBYS {
            assert!(!self.running(n).await, "{ctx}: {n} still running");
            let entries = std::fs::read_dir(self.lab.lab.data_dir(n)).unwrap().count();
            assert_eq!(entries, 0, "{ctx}: data directory of {n} not empty");
        }
        assert!(
            self.slots("old").await.is_empty(),
            "{ctx}: leaked slot on old"
        );
    }

    /// Back to a lab with only the old primary (what `lab up` made), by hand.
    pub async fn reset(&self) {
        for n in STANDBYS {
            let _ = self
                .lab
                .lab
                .server(n)
                .stop(
                    migrate::pg::server::StopMode::Immediate,
                    Duration::from_secs(30),
                )
                .await;
            let d = self.lab.lab.data_dir(n);
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    std::fs::remove_dir_all(p).unwrap();
                } else {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
        let c = connect(&self.ep("old")).await.unwrap();
        c.batch_execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
            .await
            .unwrap();
        let _ = std::fs::remove_dir_all(self.lab.lab.dir.join("state"));
    }

    /// Wait until every standby has replayed the primary's current position.
    pub async fn wait_caught_up(&self) {
        self.wait_caught_up_from("old").await
    }

    pub async fn wait_caught_up_from(&self, primary: &str) {
        let c = connect(&self.ep(primary)).await.unwrap();
        let target: Lsn = c
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        for n in ["old", "new", "new_replica", "dr"]
            .into_iter()
            .filter(|n| *n != primary)
        {
            let s = connect(&self.ep(n)).await.unwrap();
            loop {
                let r: Lsn = s
                    .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
                    .await
                    .unwrap()
                    .get::<_, String>(0)
                    .parse()
                    .unwrap();
                if r >= target {
                    break;
                }
                assert!(Instant::now() < deadline, "{n} did not catch up");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn table_fingerprint(ep: &Endpoint, table: &str) -> (i64, i64) {
    let c = connect(ep).await.unwrap();
    let r = c.query_one(&format!("SELECT count(*), coalesce(sum(hashtext(t::text)::bigint), 0)::bigint FROM {table} t"), &[]).await.unwrap();
    (r.get(0), r.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_of_a_200mb_database_built_under_writes_matches_on_all_four_nodes() {
    let chain = Chain::new().await;
    grow_app(&chain.ep("old"), 200).await.unwrap();
    let c = connect(&chain.ep("old")).await.unwrap();
    let size: i64 = c
        .query_one("SELECT pg_database_size('app')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(size >= 200 << 20, "app is only {size} bytes");

    let writer = Writer::start(
        vec![chain.lab.lab.app_endpoint()],
        4,
        Duration::from_millis(2),
    );
    chain.replicate_ok().await;
    let during = writer.acked();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = writer.stop().await;
    assert!(
        during > 0,
        "the writer must have been writing while the chain was built"
    );
    assert!(
        report.errors.is_empty(),
        "writer errors: {:?}",
        report.errors
    );
    chain.assert_chain("after replicate").await;
    chain.wait_caught_up().await;

    for table in ["accounts", "orders", "ledger", "bulk"] {
        let want = table_fingerprint(&chain.ep("old"), table).await;
        for n in STANDBYS {
            assert_eq!(
                table_fingerprint(&chain.ep(n), table).await,
                want,
                "{table} differs on {n}"
            );
        }
    }
    for n in STANDBYS {
        let missing = missing_acks(&chain.ep(n), &report.acks).await.unwrap();
        assert!(
            missing.is_empty(),
            "{n} lacks acknowledged rows: {:?}",
            &missing[..missing.len().min(5)]
        );
    }

    // A crash in the middle of the base backup: resume cleans the partial copy and redoes it.
    let crash_at = format!("{}:during", StepId::Clone("new".into()));
    chain.reset().await;
    assert_killed(&chain.run(&["replicate"], Some(&crash_at)).await, &crash_at);
    // The killed run's pg_basebackup dies with it (parent-death signal); under heavy I/O the
    // kill lands when its current write returns, so allow a moment.
    let pattern = format!("pg_basebackup.*{}", chain.lab.lab.data_dir("new").display());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leftovers = std::process::Command::new("pgrep")
            .args(["-a", "-f", &pattern])
            .output()
            .unwrap();
        if leftovers.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pg_basebackup outlived the killed run: {}",
            text(&leftovers.stdout)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        std::fs::read_dir(chain.lab.lab.data_dir("new"))
            .unwrap()
            .count()
            > 0,
        "the crash left a partial copy"
    );
    let out = chain.run(&["resume"], None).await;
    crate::support::assert_exit(&out, Exit::Done);
    assert!(
        text(&out.stdout).contains("interrupted clone"),
        "{}",
        text(&out.stdout)
    );
    chain
        .assert_chain("resumed after a crash during the base backup")
        .await;

    // The same crash, then rollback: nothing left.
    chain.reset().await;
    assert_killed(&chain.run(&["replicate"], Some(&crash_at)).await, &crash_at);
    let out = chain.run(&["rollback"], None).await;
    crate::support::assert_exit(&out, Exit::Done);
    chain
        .assert_clean("rolled back after a crash during the base backup")
        .await;
}

async fn crash_matrix(nodes: &[&str], with_catchup: bool) {
    let chain = Chain::new().await;
    let mut steps: Vec<StepId> = nodes.iter().flat_map(|n| steps_of(n)).collect();
    if with_catchup {
        steps.push(StepId::Catchup);
    }
    for point in boundaries(&steps) {
        let (at, when) = (point.at(), point.when);
        chain.reset().await;
        assert_killed(&chain.run(&["replicate"], Some(&at)).await, &at);
        let out = chain.run(&["resume"], None).await;
        crate::support::assert_exit_at(&out, Exit::Done, &format!("{at}: resume"));
        chain.assert_chain(&at).await;
        if when == "after" {
            chain.reset().await;
            assert_killed(&chain.run(&["replicate"], Some(&at)).await, &at);
            let out = chain.run(&["rollback"], None).await;
            crate::support::assert_exit_at(&out, Exit::Done, &format!("{at}: rollback"));
            chain.assert_clean(&at).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_matrix_over_the_target_steps() {
    crash_matrix(&["new"], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_matrix_over_the_dr_steps_and_catchup() {
    crash_matrix(&["dr"], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_matrix_over_the_local_replica_steps() {
    crash_matrix(&["new_replica"], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_reports_idle_as_zero_and_a_stopped_target_as_down() {
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    chain.wait_caught_up().await;

    // Idle: 0 bytes on every hop (not "n seconds behind"), and the gate passes.
    let mut samples: Vec<ChainSample> = Vec::new();
    let started = Instant::now();
    let mut saw_zero = false;
    while started.elapsed() < Duration::from_secs(3) {
        let s = sample_chain(&chain.ep("old"), &chain.hops()).await;
        saw_zero |= s.hops.iter().all(|h| {
            matches!(
                h.state,
                HopState::Streaming {
                    receive_behind_bytes: 0,
                    replay_behind_bytes: 0,
                    ..
                }
            )
        });
        assert!(s.nodes.iter().all(|n| n.behind_primary_bytes.is_some()));
        samples.push(s);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        saw_zero,
        "an idle chain must show 0 bytes of lag: {:?}",
        samples.last()
    );
    assert_eq!(
        catch_up_gate(
            &samples,
            1 << 20,
            Duration::from_secs(2),
            chrono::Utc::now()
        ),
        Decision::Go
    );

    // The target stops: its hop is down (never "0 lag"), and the gate refuses.
    chain
        .lab
        .lab
        .server("new")
        .stop(migrate::pg::server::StopMode::Fast, Duration::from_secs(30))
        .await
        .unwrap();
    let s = sample_chain(&chain.ep("old"), &chain.hops()).await;
    match &s.hops[0].state {
        HopState::Down { reason } => assert!(reason.contains("new"), "{reason}"),
        other => panic!("old → new must be down, got {other:?}"),
    }
    assert!(
        s.hops
            .iter()
            .all(|h| matches!(h.state, HopState::Down { .. })),
        "the cascades lose their upstream too: {s:?}"
    );
    assert!(s
        .nodes
        .iter()
        .find(|n| n.node == "new")
        .unwrap()
        .behind_primary_bytes
        .is_none());
    samples.push(s);
    match catch_up_gate(
        &samples,
        1 << 20,
        Duration::from_secs(2),
        chrono::Utc::now(),
    ) {
        Decision::Wait(why) => assert!(why.contains("down"), "{why}"),
        Decision::Go => panic!("the gate must refuse a down hop"),
    }
    // And `migrate status` shows the run while the target is down.
    let out = chain.run(&["status", "--json"], None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "completed");
    assert_eq!(v["lag"]["hops"][0]["node"], "new");
    assert_eq!(v["lag"]["hops"][0]["state"], "down", "{}", v["lag"]);
    assert!(
        v["lag"]["hops"][0].get("replay_behind_bytes").is_none(),
        "a down hop has no lag figure"
    );
}

/// `status --metrics`, and `/metrics` served by a long-running command (`watch
/// --metrics-listen`) and scraped with a real HTTP client, are Prometheus text: a real parser
/// reads the lag of every hop, the slots and the run's steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_metrics_parse_as_prometheus_text_with_every_hop() {
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    let out = chain.run(&["status", "--metrics"], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    check_metrics(&text(&out.stdout));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut watch = tokio::process::Command::new(migrate_bin())
        .args(["watch", "-f", chain.spec(), "--metrics-listen", &addr])
        .env_remove("MIGRATE_SPEC")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{addr}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match reqwest::get(&url).await {
            Ok(r) if r.status().is_success() => {
                let ct = r.headers()["content-type"].to_str().unwrap().to_string();
                assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
                break r.text().await.unwrap();
            }
            other => {
                assert!(Instant::now() < deadline, "no /metrics: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    watch.start_kill().unwrap();
    let _ = watch.wait().await;
    check_metrics(&body);
}

fn check_metrics(body: &str) {
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |s: &prometheus_parse::Sample| match s.value {
        prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("not a gauge: {s:?}"),
    };
    for (from, to) in [("old", "new"), ("new", "new_replica"), ("new", "dr")] {
        let hop = |metric: &str| {
            scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == metric
                        && s.labels.get("from") == Some(from)
                        && s.labels.get("to") == Some(to)
                })
                .unwrap_or_else(|| panic!("no {metric} for {from} → {to}:\n{body}"))
        };
        assert_eq!(value(hop("migrate_hop_up")), 1.0, "{from} → {to}");
        assert!(value(hop("migrate_hop_replay_lag_bytes")) >= 0.0);
    }
    let slot = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "migrate_slot_active"
                && s.labels.get("node") == Some("old")
                && s.labels.get("slot") == Some("migrate_new")
        })
        .unwrap_or_else(|| panic!("no slot metric:\n{body}"));
    assert_eq!(value(slot), 1.0);
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "migrate_step_info" && s.labels.get("step") == Some("catchup")));
}

/// `[clone]` reaches pg_basebackup: a chain built with server-side lz4 compression and a rate
/// cap streams like any other, and plan shows the flags and checks the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_cloned_with_compression_and_a_rate_cap_streams() {
    let chain = Chain::new().await;
    let spec = std::fs::read_to_string(&chain.spec).unwrap();
    std::fs::write(
        &chain.spec,
        format!("{spec}\n[clone]\ncompress = \"lz4\"\nmax_rate = \"200MB\"\n"),
    )
    .unwrap();
    let out = chain.run(&["plan", "--json"], None).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "clone_compress")
        .unwrap_or_else(|| panic!("no clone_compress check: {v}"))
        .clone();
    assert_eq!(check["status"], "pass", "{check}");
    let clone = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "clone:new")
        .unwrap()
        .clone();
    let action = clone["action"].as_str().unwrap();
    assert!(
        action.contains("--compress=server-lz4") && action.contains("--max-rate=204800k"),
        "{action}"
    );
    chain.replicate_ok().await;
    chain.assert_chain("compressed clone").await;
}
