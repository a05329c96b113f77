//! HA managers: real repmgr (Debian's postgresql-15-repmgr) with repmgrd running on the old
//! primary and the target, and Patroni's REST API (a local server speaking its documented
//! shape: Patroni itself needs a DCS this machine does not run).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use migrate::exit::Exit;
use migrate::lab::workload::Writer;
use migrate::pg::connect;
use migrate::steps::StepId;

use crate::cutover::{all_nodes, writes_survived};
use crate::replication::Chain;
use crate::support::{assert_exit_at, output_text, text, PrimarySampler};

/// repmgr on the lab's `old` and `new`: repmgr preloaded, one repmgr.conf each, old registered
/// as primary and new as its standby, repmgrd running on both with automatic failover. The
/// daemons are killed on drop.
struct Repmgr {
    dir: PathBuf,
    bin: PathBuf,
}

fn as_postgres(argv: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(argv)
        .output()
        .expect("runuser")
}

impl Repmgr {
    async fn start(chain: &Chain) -> Repmgr {
        let lab = &chain.lab.lab;
        let dir = lab.dir.join("repmgr");
        std::fs::create_dir_all(&dir).unwrap();
        let bin = PathBuf::from("/usr/lib/postgresql/15/bin");
        assert!(
            bin.join("repmgrd").exists(),
            "repmgr is not installed: apt-get install postgresql-15-repmgr (scripts/test does)"
        );
        // The lab's pgpass is root's; repmgr runs as postgres and needs its own copy.
        let pgpass = dir.join("pgpass");
        std::fs::copy(lab.dir.join("pgpass"), &pgpass).unwrap();
        for (id, node) in [(1, "old"), (2, "new")] {
            let conf = dir.join(format!("{node}.conf"));
            let d = dir.display();
            std::fs::write(
                &conf,
                format!(
                    "node_id={id}\nnode_name='{node}'\n\
                     conninfo='host=127.0.0.1 port={port} user=postgres dbname=postgres passfile={d}/pgpass connect_timeout=2'\n\
                     data_directory='{data}'\npg_bindir='{bin}'\n\
                     failover='automatic'\n\
                     promote_command='{bin}/repmgr standby promote -f {conf}'\n\
                     follow_command='{bin}/repmgr standby follow -f {conf} --upstream-node-id=%n'\n\
                     monitor_interval_secs=1\nreconnect_attempts=2\nreconnect_interval=1\n\
                     log_file='{d}/{node}.log'\nrepmgrd_pid_file='{d}/{node}.pid'\n\
                     repmgrd_service_start_command='{bin}/repmgrd -f {conf}'\n",
                    port = lab.port(node),
                    data = lab.data_dir(node).display(),
                    bin = bin.display(),
                    conf = conf.display(),
                ),
            )
            .unwrap();
            // repmgrd needs the library in shared memory.
            connect(&chain.ep(node))
                .await
                .unwrap()
                .batch_execute("ALTER SYSTEM SET shared_preload_libraries = 'repmgr'")
                .await
                .unwrap();
            let server = lab.server(node);
            server
                .stop(migrate::pg::server::StopMode::Fast, Duration::from_secs(30))
                .await
                .unwrap();
            server
                .start(&lab.server_log(node), Duration::from_secs(30))
                .await
                .unwrap();
        }
        Command::new("chown")
            .args(["-R", "postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let r = Repmgr { dir, bin };
        r.ok(&["-f", &r.conf("old"), "primary", "register"]);
        // `standby register` reads repmgr's node records on the standby itself: wait until
        // it has replayed all `primary register` wrote (CI once lost that race).
        let written: String = connect(&chain.ep("old"))
            .await
            .unwrap()
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let standby = connect(&chain.ep("new")).await.unwrap();
        let t = Instant::now();
        while !standby
            .query_one(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                &[&written],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
        {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "new has not replayed up to {written} in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        r.ok(&[
            "-f",
            &r.conf("new"),
            "standby",
            "register",
            "--upstream-node-id=1",
        ]);
        for node in ["old", "new"] {
            r.ok(&["-f", &r.conf(node), "daemon", "start"]);
        }
        r.wait_daemons(false, "repmgrd started");
        r
    }

    fn conf(&self, node: &str) -> String {
        self.dir.join(format!("{node}.conf")).display().to_string()
    }

    fn ok(&self, args: &[&str]) -> String {
        let repmgr = self.bin.join("repmgr");
        let mut argv = vec![repmgr.to_str().unwrap()];
        argv.extend(args);
        let out = as_postgres(&argv);
        assert!(
            out.status.success(),
            "repmgr {args:?}: {}",
            output_text(&out)
        );
        text(&out.stdout)
    }

    /// (name, role, repmgrd running, paused) per node.
    fn daemons(&self) -> Vec<(String, String, bool, bool)> {
        self.ok(&["-f", &self.conf("old"), "service", "status", "--csv"])
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[1].into(), f[2].into(), f[4] == "1", f[6] == "1")
            })
            .collect()
    }

    /// Both repmgrd running, each paused or not.
    fn wait_daemons(&self, paused: bool, ctx: &str) {
        self.wait_daemon(&["old", "new"], paused, ctx)
    }

    /// These nodes' repmgrd running, each paused or not.
    fn wait_daemon(&self, nodes: &[&str], paused: bool, ctx: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = self.daemons();
            let ok = nodes.iter().all(|n| {
                d.iter()
                    .any(|(name, _, run, p)| name == n && *run && *p == paused)
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{ctx}: repmgrd {d:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The last lines of each repmgrd's log, for a failure's message.
    fn logs(&self) -> String {
        ["old", "new"]
            .iter()
            .map(|n| {
                let log =
                    std::fs::read_to_string(self.dir.join(format!("{n}.log"))).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "{n}.log:\n{}",
                    lines[lines.len().saturating_sub(15)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// repmgr's own view: node → (role, upstream name).
    fn topology(&self) -> Vec<(String, String, String)> {
        let out = self.ok(&["-f", &self.conf("old"), "cluster", "show"]);
        out.lines()
            .skip(2)
            .map(|l| {
                let f: Vec<String> = l.split('|').map(|s| s.trim().to_string()).collect();
                (f[1].clone(), f[2].clone(), f[4].clone())
            })
            .collect()
    }
}

impl Drop for Repmgr {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-f", &format!("repmgrd -f {}", self.dir.display())])
            .status();
    }
}

fn declare_repmgr(chain: &Chain, r: &Repmgr) {
    let mut spec = std::fs::read_to_string(&chain.spec).unwrap();
    for node in ["old", "new"] {
        let table = format!("[nodes.{node}]\n");
        spec = spec.replacen(
            &table,
            &format!(
                "{table}ha = {{ kind = \"repmgr\", config = \"{}\" }}\n",
                r.conf(node)
            ),
            1,
        );
    }
    std::fs::write(&chain.spec, spec).unwrap();
}

/// Writes through PgBouncer, and a watch that no two nodes are ever writable at once.
fn writer_and_sampler(chain: &Chain) -> (Writer, PrimarySampler) {
    let w = Writer::start(
        vec![chain.lab.lab.app_endpoint()],
        4,
        Duration::from_millis(5),
    );
    (w, PrimarySampler::start(all_nodes(chain)))
}

fn step_output(status: &serde_json::Value, id: &StepId) -> serde_json::Value {
    status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.to_string())
        .unwrap_or_else(|| panic!("no {id} in {status}"))["output"]
        .clone()
}

/// repmgrd runs on old and new with automatic failover. plan refuses until the spec declares
/// it; a cutover that aborts (the target lost after the fence) unpauses it again; the cutover
/// pauses it before the hold (seen from repmgr itself while the run waits there), registers the
/// new topology and unpauses it; the rollback does the same the other way. Every
/// acknowledged commit survives and no two nodes are ever writable at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repmgrd_is_paused_around_each_switch_and_told_the_new_topology() {
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    let r = Repmgr::start(&chain).await;

    let out = chain.run(&["plan"], None).await;
    assert_exit_at(&out, Exit::NotReady, "plan with an undeclared repmgrd");
    let said = output_text(&out);
    assert!(
        said.contains("ha:old") && said.contains("repmgrd runs"),
        "{said}"
    );
    declare_repmgr(&chain, &r);
    chain.plan_ok().await;

    let (w, sampler) = writer_and_sampler(&chain);

    // An aborted cutover leaves repmgrd as it found it.
    let out = run_stopped_before(
        &chain,
        "cutover",
        &["cutover", "--yes", "--force-window"],
        &StepId::Stop,
        &StepId::Hold,
        async || {
            r.wait_daemons(true, "paused while the cutover fences");
            chain.kill_server("new").await;
        },
    )
    .await;
    assert_exit_at(&out, Exit::NotReady, "cutover without its target");
    // new's server is down: its repmgrd can be neither asked nor unpaused, and the abort
    // says so rather than failing.
    r.wait_daemon(&["old"], false, "unpaused after the abort");
    let said = output_text(&out);
    assert!(said.contains("undone ha_pause"), "{said}");
    let lab = &chain.lab.lab;
    lab.server("new")
        .start(&lab.server_log("new"), Duration::from_secs(30))
        .await
        .unwrap();

    // The cutover: paused before the hold, then the new topology.
    let out = run_stopped_before(
        &chain,
        "cutover",
        &["cutover", "--yes", "--force-window"],
        &StepId::Hold,
        &StepId::HaPause,
        async || r.wait_daemons(true, "paused before the hold"),
    )
    .await;
    assert_exit_at(&out, Exit::Done, "cutover with repmgr");
    let status: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    let paused = step_output(&status, &StepId::HaPause);
    assert!(
        paused["repmgr"]["daemons"]
            .as_array()
            .is_some_and(|d| d.len() == 2 && d.iter().all(|x| x["paused"] == true)),
        "ha_pause journals both repmgrd paused: {paused}"
    );
    assert_eq!(
        step_output(&status, &StepId::HaResume)["repmgr"]["decision"],
        "register"
    );
    r.wait_daemons(false, "unpaused after the cutover");
    assert_eq!(
        r.topology(),
        [
            ("old".into(), "standby".into(), "new".into()),
            ("new".into(), "primary".into(), String::new())
        ],
        "repmgr knows the new topology"
    );

    let out = chain.run(&["rollback", "--yes"], None).await;
    assert_exit_at(&out, Exit::Done, "rollback with repmgr");
    r.wait_daemons(false, "unpaused after the rollback");
    assert_eq!(
        r.topology(),
        [
            ("old".into(), "primary".into(), String::new()),
            ("new".into(), "standby".into(), "old".into())
        ],
        "repmgr knows the topology after the rollback"
    );
    writes_survived(&chain, w, sampler, "cutover and rollback under repmgrd").await;
}

/// Run `args` with the binary against the chain's spec (a run of `operation`), stopped
/// before `step` starts until `check` has looked at the world.
async fn run_stopped_before(
    chain: &Chain,
    operation: &str,
    args: &[&str],
    step: &StepId,
    wait_for: &StepId,
    check: impl AsyncFnOnce(),
) -> std::process::Output {
    let wait_file = chain
        .lab
        .lab
        .dir
        .join(format!("go-{step}-{}", rand_suffix()));
    let run = tokio::spawn(
        tokio::process::Command::new(crate::support::migrate_bin())
            .args(args)
            .args(["-f", chain.spec()])
            .env("MIGRATE_WAIT_AT", format!("{step}:before"))
            .env("MIGRATE_WAIT_FILE", &wait_file)
            .output(),
    );
    chain.wait_for_step(operation, wait_for, "succeeded").await;
    check().await;
    std::fs::write(&wait_file, "").unwrap();
    run.await.unwrap().unwrap()
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Patroni manages the old primary (its REST API, a local server of the documented shape).
/// A wrong REST password makes the pause fail and the cutover abort with nothing changed; with
/// the right one the cutover (killed right after the pause and resumed) pauses the cluster
/// (every member reports it before the hold),
/// then makes it a standby cluster of the new primary through the slot the old primary
/// streams from, and unpauses it; the rollback pauses it again and makes it lead again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_is_paused_around_each_switch_and_follows_the_new_primary() {
    let chain = Chain::new().await;
    let fake = crate::support::patroni::FakePatroni::start(
        "main",
        "old",
        "primary",
        Some(("admin", "s3cret-api")),
    );
    let secret = chain.lab.lab.dir.join("patroni-password");
    std::fs::write(&secret, "not-the-api-password-7Q").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let spec = std::fs::read_to_string(&chain.spec).unwrap().replacen(
        "[nodes.old]\n",
        &format!(
            "[nodes.old]\nha = {{ kind = \"patroni\", url = \"{}\", cluster = \"main\", username = \"admin\", password = {{ file = \"{}\" }} }}\n",
            fake.url(),
            secret.display()
        ),
        1,
    );
    std::fs::write(&chain.spec, spec).unwrap();
    chain.replicate_ok().await;
    let out = chain.run(&["plan"], None).await;
    assert_exit_at(&out, Exit::Done, "plan with a declared Patroni");
    assert!(
        output_text(&out).contains("Patroni member old: primary running"),
        "{}",
        output_text(&out)
    );

    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    assert_exit_at(
        &out,
        Exit::NotReady,
        "cutover with a wrong Patroni password",
    );
    let said = output_text(&out);
    assert!(said.contains("401"), "{said}");
    assert!(
        !said.contains("not-the-api-password-7Q"),
        "the password is never shown: {said}"
    );
    assert!(fake.patches().is_empty(), "{:?}", fake.patches());
    assert!(
        !migrate::pg::sql::in_recovery(&connect(&chain.ep("old")).await.unwrap())
            .await
            .unwrap(),
        "old still serves"
    );

    std::fs::write(&secret, "s3cret-api").unwrap();
    let (w, sampler) = writer_and_sampler(&chain);
    // Killed right after pausing, before the pause is journaled: `resume` pauses again.
    let at = format!("{}:after", StepId::HaPause);
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], Some(&at))
        .await;
    crate::support::crash::assert_killed(&out, &at);
    let out = run_stopped_before(
        &chain,
        "cutover",
        &["resume"],
        &StepId::Hold,
        &StepId::HaPause,
        async || {
            assert!(
                fake.shows_paused(),
                "Patroni reports the pause before the hold"
            )
        },
    )
    .await;
    assert_exit_at(&out, Exit::Done, "cutover with Patroni, resumed");
    assert_eq!(
        fake.patches(),
        [
            serde_json::json!({"pause": true}),
            serde_json::json!({"pause": true}),
            serde_json::json!({"standby_cluster": {"host": "127.0.0.1", "port": chain.lab.lab.port("new"),
                "primary_slot_name": migrate::replication::slot_name("old"),
                "create_replica_methods": ["basebackup"]}, "pause": false}),
        ]
    );
    assert!(
        !fake.shows_paused(),
        "ha_resume waited for the member to resume"
    );

    // The tool killed just before it hands Patroni the topology back: `resume` does it.
    let at = format!("{}:before", StepId::HaResume);
    let out = chain.run(&["rollback", "--yes"], Some(&at)).await;
    crate::support::crash::assert_killed(&out, &at);
    assert!(
        fake.shows_paused(),
        "still paused while the run waits for resume"
    );
    let out = chain.run(&["resume"], None).await;
    assert_exit_at(&out, Exit::Done, "rollback with Patroni, resumed");
    assert_eq!(
        fake.patches()[3..],
        [
            serde_json::json!({"pause": true}),
            serde_json::json!({"standby_cluster": null, "pause": false}),
        ]
    );
    writes_survived(&chain, w, sampler, "cutover and rollback under Patroni").await;
}
