//! `migrate cutover` and `migrate rollback` on the lab, with a writer recording every
//! acknowledged commit.

use migrate::exit::Exit;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use migrate::lab::workload::{missing_acks, Writer, WriterReport};
use migrate::pg::connect;
use migrate::steps::StepId;

use crate::replication::Chain;
use crate::support::crash::{assert_killed, boundaries};
use crate::support::{migrate_bin, text};

fn writer(chain: &Chain) -> Writer {
    Writer::start(
        vec![chain.ep("old"), chain.ep("new")],
        4,
        Duration::from_millis(5),
    )
}

async fn timeline_of_primary(chain: &Chain, node: &str) -> i32 {
    let c = connect(&chain.ep(node)).await.unwrap();
    let r = c
        .query_one(
            "SELECT pg_is_in_recovery(), substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
            &[],
        )
        .await;
    let r = r.unwrap_or_else(|e| panic!("{node} is not a primary: {e}"));
    i32::from_str_radix(&r.get::<_, String>(1), 16).unwrap()
}

/// `primary` serves; every other node streams on its timeline (old/new directly from it, the
/// cascades through new).
async fn assert_topology(chain: &Chain, primary: &str, ctx: &str) {
    let tli = timeline_of_primary(chain, primary).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in ["old", "new", "new_replica", "dr"]
        .into_iter()
        .filter(|n| *n != primary)
    {
        loop {
            let c = connect(&chain.ep(node)).await.unwrap();
            let r = c
                .query_opt("SELECT status, received_tli FROM pg_stat_wal_receiver", &[])
                .await
                .unwrap();
            let got = r.map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1)));
            if got
                .as_ref()
                .is_some_and(|(s, t)| s == "streaming" && *t == tli)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{ctx}: {node} does not stream on timeline {tli} from {primary}'s side: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn assert_no_loss(chain: &Chain, report: &WriterReport, ctx: &str) {
    assert!(
        !report.acks.is_empty(),
        "{ctx}: the writer acknowledged nothing"
    );
    chain.wait_caught_up_from(&primary_now(chain).await).await;
    for n in ["old", "new", "new_replica", "dr"] {
        let missing = missing_acks(&chain.ep(n), &report.acks).await.unwrap();
        assert!(
            missing.is_empty(),
            "{ctx}: {n} lacks {} acknowledged rows, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

async fn primary_now(chain: &Chain) -> String {
    for n in ["old", "new"] {
        let c = connect(&chain.ep(n)).await.unwrap();
        if !c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get::<_, bool>(0)
        {
            return n.into();
        }
    }
    panic!("no primary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_then_rollback_keeps_every_acknowledged_write() {
    let chain = Chain::new().await;
    let w = writer(&chain);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No replicate before: the cutover builds the chain itself.
    chain.plan_ok().await;
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    crate::support::assert_exit_at(&out, Exit::Done, "cutover");
    assert_topology(&chain, "new", "after cutover").await;
    // The old primary knew the new timeline before it started as a standby (reverse placed
    // the history file the promotion read): it never streamed the old timeline's last
    // segment from the new primary, nor fetched the history file itself.
    let log = std::fs::read_to_string(chain.lab.lab.server_log("old")).unwrap();
    let streamed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("started streaming WAL") || l.contains("fetching timeline history"))
        .collect();
    assert!(
        !streamed.is_empty() && streamed.iter().all(|l| l.contains("on timeline 2")),
        "the old primary streams only the new timeline: {streamed:?}"
    );
    let at_cutover = w.acked();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        w.acked() > at_cutover,
        "the writer must go on writing on the new primary"
    );

    let status: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    assert_eq!(status["operation"], "cutover");
    assert_eq!(status["state"], "completed");
    assert_eq!(status["point_of_no_return"], StepId::Promote.to_string());
    let cert_path = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == StepId::Certificate.to_string())
        .unwrap()["output"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let cert: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cert_path).unwrap()).unwrap();
    assert_eq!(
        (cert["old_timeline"].as_i64(), cert["new_timeline"].as_i64()),
        (Some(1), Some(2))
    );
    assert!(cert["write_pause_ms"].as_i64().unwrap() > 0);
    let l: migrate::pg::Lsn = cert["shutdown_checkpoint_lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let replayed: migrate::pg::Lsn = cert["replayed_lsn"].as_str().unwrap().parse().unwrap();
    assert!(
        replayed > l,
        "the proof: replayed {replayed} > checkpoint {l}"
    );

    let out = chain.run(&["rollback", "--yes"], None).await;
    crate::support::assert_exit_at(&out, Exit::Done, "rollback");
    assert_topology(&chain, "old", "after rollback").await;
    assert_eq!(timeline_of_primary(&chain, "old").await, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = w.stop().await;
    assert_no_loss(&chain, &report, "cutover and rollback").await;
    // The rows written on the new primary between cutover and rollback are on the old one now.
    let on_new = report
        .acks
        .iter()
        .filter(|a| {
            a.at > cert["released_at"]
                .as_str()
                .unwrap()
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
        })
        .count();
    assert!(on_new > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_box_aborts_when_the_target_cannot_catch_up_and_the_old_primary_serves_again() {
    let chain = Chain::new().await;
    shorter_proof(&chain, 3);
    chain.replicate_ok().await;
    chain.plan_ok().await;
    let out = cutover_with_fault_at(&chain, "stop:before", async {
        // Clients are held, the stop is next: now the target's server goes away.
        chain
            .wait_for_step("cutover", &StepId::Stop, "in_doubt")
            .await;
        chain.kill_server("new").await;
    })
    .await;
    crate::support::assert_exit_at(&out, Exit::NotReady, "aborted means exit 1");
    assert!(
        text(&out.stderr).contains("aborted before the point of no return"),
        "{}",
        text(&out.stderr)
    );

    // The journal says why, and that it was undone.
    let v: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    assert_eq!(v["state"], "aborted");
    assert_eq!(v["point_of_no_return"], serde_json::Value::Null);
    let proof = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == StepId::Proof.to_string())
        .unwrap();
    assert_eq!(proof["status"], "failed");
    assert!(
        proof["error"].as_str().unwrap().contains("not promoting"),
        "{proof}"
    );

    // The old primary accepts writes again (running, not read-only).
    assert_old_serves_unfenced(&chain).await;
}

const CUTOVER_STEPS: [StepId; 12] = StepId::SWITCHOVER;

/// Kill the cutover at a step boundary, resume; then kill the switchback at the same boundary,
/// resume. Each time the end state is the uninterrupted one and no acknowledged write is lost.
async fn crash_matrix(steps: &[StepId]) {
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    let w = writer(&chain);
    for point in boundaries(steps) {
        let at = point.at();
        chain.plan_ok().await;
        let out = chain
            .run(&["cutover", "--yes", "--force-window"], Some(&at))
            .await;
        assert_killed(&out, &format!("{at} (cutover)"));
        if point.step == StepId::Promote.to_string() && point.when == "before" {
            // Crashed between staging and promotion: a restart by hand brings the old
            // primary up as a standby, never as a second primary.
            let old = chain.lab.lab.server("old");
            old.start(&chain.lab.lab.server_log("old"), Duration::from_secs(60))
                .await
                .unwrap();
            let c = connect(&chain.ep("old")).await.unwrap();
            assert!(
                c.query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .unwrap()
                    .get::<_, bool>(0),
                "a second primary!"
            );
        }
        let out = chain.run(&["resume"], None).await;
        crate::support::assert_exit_at(&out, Exit::Done, &format!("{at}: resume cutover"));
        assert_topology(&chain, "new", &format!("cutover resumed after {at}")).await;

        if point.step == StepId::Gate.to_string() {
            // The switchback has no catch-up gate.
            let out = chain.run(&["rollback", "--yes"], None).await;
            crate::support::assert_exit_at(&out, Exit::Done, &format!("{at}: rollback"));
        } else {
            let out = chain.run(&["rollback", "--yes"], Some(&at)).await;
            assert_killed(&out, &format!("{at} (switchback)"));
            let out = chain.run(&["resume"], None).await;
            crate::support::assert_exit_at(&out, Exit::Done, &format!("{at}: resume switchback"));
        }
        assert_topology(&chain, "old", &format!("switchback resumed after {at}")).await;
    }
    let report = w.stop().await;
    assert_no_loss(&chain, &report, "crash matrix").await;
}

/// Run `args` and SIGKILL it after `after` (if it is still running then); its exit status.
async fn killed_after(chain: &Chain, args: &[&str], after: Duration) -> std::process::ExitStatus {
    let mut child = tokio::process::Command::new(migrate_bin())
        .args(args)
        .args(["-f", chain.spec()])
        .env_remove("MIGRATE_SPEC")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    match tokio::time::timeout(after, child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => {
            child.start_kill().unwrap();
            child.wait().await.unwrap()
        }
    }
}

/// Drive the operation `op` to completion the way an operator would after each kill: resume
/// an unfinished run (or finish an undo with rollback), start the command again when no run
/// of it is open. The first attempts are killed at random instants; the last ones are not.
/// Returns how many attempts were really killed mid-run.
async fn drive_through_kills(
    chain: &Chain,
    op: &str,
    command: &[&str],
    rng: &mut impl rand::Rng,
    window: &mut Duration,
) -> usize {
    let mut killed = 0;
    for attempt in 0..8 {
        let out = chain.run(&["status", "--json"], None).await;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let state = v["state"].as_str().unwrap_or("none");
        if v["operation"] == op && state == "completed" {
            return killed;
        }
        let args: Vec<&str> = match state {
            "in_progress" => vec!["resume"],
            "rolling_back" => vec!["rollback"],
            _ => {
                if op == "cutover" {
                    chain.plan_ok().await;
                }
                command.to_vec()
            }
        };
        if attempt < 4 {
            // A switch on the lab takes one to two seconds: kills within the window (1.2 s at
            // first) land in it. A whole switch (not a resume) that finished before its kill
            // shows this machine switches faster: the window shrinks to within that run, so
            // that later kills still land (on a fast machine a fixed window missed too often).
            let after = Duration::from_millis(rng.random_range(0..window.as_millis() as u64));
            let started = std::time::Instant::now();
            let status = killed_after(chain, &args, after).await;

            if status.signal() == Some(9) {
                killed += 1;
            } else if status.success() && args == command {
                *window = (*window)
                    .min(started.elapsed().mul_f64(0.9))
                    .max(Duration::from_millis(200));
            }
        } else {
            let out = chain.run(&args, None).await;
            crate::support::assert_exit_at(&out, Exit::Done, &format!("{args:?} after the kills"));
        }
    }
    panic!("{op} did not complete after 8 attempts");
}

/// The tool killed at random instants across its whole run (chain, window, gate, hold,
/// stop, proof, … certificate), and each `resume` killed at random too: every
/// cutover and switchback still ends switched, with every acknowledged commit on every node
/// and never two writable primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_across_cutover_and_rollback_still_end_switched_with_nothing_lost() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("MIGRATE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln_seed(seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    let w = writer(&chain);
    let sampler = crate::support::PrimarySampler::start(all_nodes(&chain));
    let mut killed = 0;
    let mut window = Duration::from_millis(1200);
    // Two rounds, and more (at most four) while fewer than four attempts died mid-run: a
    // whole switch that beats its kill leaves that drive unkilled.
    for round in 0..4 {
        if round >= 2 && killed >= 4 {
            break;
        }
        killed += drive_through_kills(
            &chain,
            "cutover",
            &["cutover", "--yes", "--force-window"],
            &mut rng,
            &mut window,
        )
        .await;
        assert_topology(
            &chain,
            "new",
            &format!("seed {seed} round {round}: cut over"),
        )
        .await;
        killed += drive_through_kills(
            &chain,
            "switchback",
            &["rollback", "--yes"],
            &mut rng,
            &mut window,
        )
        .await;
        assert_topology(
            &chain,
            "old",
            &format!("seed {seed} round {round}: switched back"),
        )
        .await;
    }
    // Each switch takes a second or two and each kill comes within 1.2 s: most attempts die.
    assert!(
        killed >= 4,
        "seed {seed}: only {killed} attempts were killed mid-run"
    );
    let report = w.stop().await;
    sampler.assert_never_two(&format!("seed {seed}")).await;
    assert_no_loss(&chain, &report, &format!("random kills, seed {seed}")).await;
}

/// The seed goes to the test's output, so that a failure can be replayed with
/// MIGRATE_TEST_SEED.
#[allow(clippy::print_stderr)]
fn eprintln_seed(seed: u64) {
    eprintln!("random kills: MIGRATE_TEST_SEED={seed}");
}

/// One plan, one run: a cutover killed while it builds the chain is resumed to the end of the
/// cutover, not to the end of the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_killed_while_it_builds_the_chain_is_resumed_to_the_end_of_the_cutover() {
    let chain = Chain::new().await;
    chain.plan_ok().await;
    let w = writer(&chain);
    let at = format!("{}:after", StepId::Clone("new_replica".into()));
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], Some(&at))
        .await;
    assert_killed(&out, &at);
    let out = chain.run(&["resume"], None).await;
    crate::support::assert_exit_at(&out, Exit::Done, "resume");
    let v: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    assert_eq!(v["operation"], "cutover");
    assert_eq!(v["state"], "completed");
    assert_eq!(v["point_of_no_return"], StepId::Promote.to_string());
    assert_topology(&chain, "new", "cutover resumed from its chain phase").await;
    let report = w.stop().await;
    assert_no_loss(&chain, &report, "cutover resumed from its chain phase").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_matrix_up_to_the_proof() {
    crash_matrix(&CUTOVER_STEPS[..5]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_matrix_around_the_promotion() {
    crash_matrix(&CUTOVER_STEPS[5..8]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_matrix_after_the_promotion() {
    crash_matrix(&CUTOVER_STEPS[8..]).await;
}

async fn assert_old_serves_unfenced(chain: &Chain) {
    let c = connect(&chain.ep("old")).await.unwrap();
    assert!(!c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get::<_, bool>(0));
    assert_eq!(
        c.query_one("SHOW default_transaction_read_only", &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        "off"
    );
    c.batch_execute("INSERT INTO ledger (client, seq) VALUES (998, 1)")
        .await
        .unwrap();
}

/// `cutover` started in the background, held at `wait_at` until `go` exists.
fn cutover_held_at(chain: &Chain, wait_at: &str, go: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(migrate_bin())
        .args(["cutover", "--yes", "--force-window", "-f", chain.spec()])
        .env("MIGRATE_WAIT_AT", wait_at)
        .env("MIGRATE_WAIT_FILE", go)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The background command's end (within `limit`) and its stderr.
async fn ended_within(
    child: &mut tokio::process::Child,
    limit: Duration,
    what: &str,
) -> (std::process::ExitStatus, String) {
    tokio::time::timeout(limit, async {
        let status = child.wait().await.unwrap();
        let mut err = String::new();
        use tokio::io::AsyncReadExt;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        (status, err)
    })
    .await
    .unwrap_or_else(|_| panic!("{what} must end within {limit:?}"))
}

/// An interrupt while the cutover is in its `stop` step: the abort finishes, the old primary
/// serves unfenced.
async fn interrupted_during_stop_aborts_and_unfences(signal: nix::sys::signal::Signal) {
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    chain.plan_ok().await;
    let mut child = cutover_held_at(&chain, "stop:before", &chain.lab.lab.dir.join("never"));
    chain
        .wait_for_step("cutover", &StepId::Stop, "in_doubt")
        .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        signal,
    )
    .unwrap();
    let out = ended_within(
        &mut child,
        Duration::from_secs(60),
        "the interrupted cutover",
    )
    .await;
    assert_eq!(out.0.code(), Some(1), "{}", out.1);
    assert!(out.1.contains("interrupted by the operator"), "{}", out.1);
    let v: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    assert_eq!(v["state"], "aborted");
    assert_old_serves_unfenced(&chain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_before_the_point_of_no_return_aborts_and_unfences() {
    interrupted_during_stop_aborts_and_unfences(nix::sys::signal::Signal::SIGINT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_stop_aborts_and_unfences_like_ctrl_c() {
    interrupted_during_stop_aborts_and_unfences(nix::sys::signal::Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_before_stops_cleanly_and_confirmation_is_required() {
    let chain = Chain::new().await;
    // No terminal and no --yes: refused before anything changes.
    let out = chain.run(&["cutover", "--force-window"], None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--yes"), "{}", text(&out.stderr));
    assert!(
        !chain.lab.lab.dir.join("state/journal.jsonl").exists(),
        "a refused cutover started a run"
    );
    assert!(
        !chain.lab.lab.data_dir("new").join("PG_VERSION").exists(),
        "a refused cutover cloned"
    );

    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no plan on record"),
        "{}",
        text(&out.stderr)
    );
    chain.plan_ok().await;
    let spec_text = std::fs::read_to_string(&chain.spec).unwrap();
    std::fs::write(&chain.spec, format!("{spec_text}# edited after the plan\n")).unwrap();
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("drifted") && err.contains("the spec file changed"),
        "{err}"
    );
    std::fs::write(&chain.spec, spec_text).unwrap();
    assert!(
        !chain.lab.lab.dir.join("state/journal.jsonl").exists(),
        "a refused cutover started a run"
    );
    chain.plan_ok().await;
    let promote = StepId::Promote.to_string();
    // Inside the write pause a pause holds every client: refused unless asked for in words.
    let out = chain
        .run(
            &[
                "cutover",
                "--yes",
                "--force-window",
                "--pause-before",
                &promote,
            ],
            None,
        )
        .await;
    crate::support::assert_exit(&out, Exit::BadInput);
    assert!(
        text(&out.stderr).contains("--keep-clients-held"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !chain.lab.lab.dir.join("state/journal.jsonl").exists(),
        "a refused pause started a run"
    );
    let out = chain
        .run(
            &[
                "cutover",
                "--yes",
                "--force-window",
                "--pause-before",
                &promote,
                "--keep-clients-held",
            ],
            None,
        )
        .await;
    crate::support::assert_exit(&out, Exit::OperatorNeeded);
    assert!(
        text(&out.stderr).contains("paused before step promote"),
        "{}",
        text(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    assert_eq!(v["state"], "in_progress");
    let st = |id: StepId| {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id.to_string())
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(st(StepId::Stage), "succeeded");
    assert_eq!(st(StepId::Promote), "pending");
    // Paused with the old primary staged: a restart by hand makes it a standby.
    let old = chain.lab.lab.server("old");
    old.start(&chain.lab.lab.server_log("old"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        in_recovery(&chain, "old").await,
        Some(true),
        "old answers as a primary"
    );
    let out = chain.run(&["resume"], None).await;
    crate::support::assert_exit(&out, Exit::Done);
    assert_topology(&chain, "new", "resumed after a pause").await;
}

/// A new client through PgBouncer commits within 10 s: clients are not held.
async fn assert_writes_through_pgbouncer(chain: &Chain, client: i32) {
    let app = chain.lab.lab.app_endpoint();
    let wrote = tokio::time::timeout(Duration::from_secs(10), async {
        let c = connect(&app).await.unwrap();
        c.execute(
            "INSERT INTO ledger (client, seq) VALUES ($1, 1)",
            &[&client],
        )
        .await
        .unwrap();
    })
    .await;
    assert!(wrote.is_ok(), "clients through PgBouncer are still held");
}

/// Add settings to the chain's `[cutover]` table.
pub(crate) fn cutover_settings(chain: &Chain, settings: &str) {
    let spec_text = std::fs::read_to_string(&chain.spec)
        .unwrap()
        .replace("[cutover]\n", &format!("[cutover]\n{settings}"));
    std::fs::write(&chain.spec, spec_text).unwrap();
}

pub(crate) fn all_nodes(chain: &Chain) -> Vec<migrate::pg::Endpoint> {
    ["old", "new", "new_replica", "dr"]
        .iter()
        .map(|n| chain.ep(n))
        .collect()
}

pub(crate) async fn in_recovery(chain: &Chain, node: &str) -> Option<bool> {
    let c = connect(&chain.ep(node)).await.ok()?;
    migrate::pg::sql::in_recovery(&c).await.ok()
}

/// Pause the cutover before `step`, with clients held, as an operator would on a bad night.
async fn cutover_paused_before(chain: &Chain, step: StepId) {
    chain.plan_ok().await;
    let step = step.to_string();
    let out = chain
        .run(
            &[
                "cutover",
                "--yes",
                "--force-window",
                "--pause-before",
                &step,
                "--keep-clients-held",
            ],
            None,
        )
        .await;
    crate::support::assert_exit_at(&out, Exit::OperatorNeeded, &format!("pause before {step}"));
}

/// The old primary started again by hand after the proof (a DBA, a service manager's
/// Restart=): it must not be staged beside its running self, nothing is promoted, and the
/// abort leaves it the one primary, unfenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_primary_restarted_by_hand_between_proof_and_promote_is_never_doubled() {
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    let w = writer(&chain);
    let sampler = crate::support::PrimarySampler::start(all_nodes(&chain));
    cutover_paused_before(&chain, StepId::Stage).await;
    start_old_by_hand(&chain).await;
    let out = chain.run(&["resume"], None).await;
    crate::support::assert_exit_at(&out, Exit::NotReady, "the resumed cutover aborts");
    assert_restarted_old_is_never_doubled(&chain, &out, w, sampler).await;
}

/// The same within one run: started by hand while the proof runs, after `stop` has started
/// stage's look at its host (so that look still says stopped). The status read in the
/// staging's own call sees it run; it is never promoted beside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_primary_restarted_by_hand_during_the_proof_in_one_run_is_never_doubled() {
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    chain.plan_ok().await;
    let w = writer(&chain);
    let sampler = crate::support::PrimarySampler::start(all_nodes(&chain));
    let out = cutover_with_fault_at(&chain, "stage:before", async {
        chain
            .wait_for_step("cutover", &StepId::Stage, "in_doubt")
            .await;
        start_old_by_hand(&chain).await;
    })
    .await;
    crate::support::assert_exit_at(&out, Exit::NotReady, "the cutover aborts");
    assert_restarted_old_is_never_doubled(&chain, &out, w, sampler).await;
}

async fn start_old_by_hand(chain: &Chain) {
    let old = chain.lab.lab.server("old");
    old.start(&chain.lab.lab.server_log("old"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        in_recovery(chain, "old").await,
        Some(false),
        "old runs as a primary again"
    );
    // The stop's call wrote the soft fence into the stopped server's postgresql.auto.conf
    // (its mode kept): started by hand, it is read-only by default.
    let c = connect(&chain.ep("old")).await.unwrap();
    let ro: String = c
        .query_one("SHOW default_transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ro, "on", "the soft fence survives a start by hand");
    let auto = chain.lab.lab.data_dir("old").join("postgresql.auto.conf");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&auto).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", auto.display());
}

/// After a run that found the old primary started again by hand before the promotion: it
/// aborted, nothing promoted, no standby.signal beside the running primary, which serves
/// unfenced; never two primaries, nothing lost.
async fn assert_restarted_old_is_never_doubled(
    chain: &Chain,
    out: &std::process::Output,
    w: Writer,
    sampler: crate::support::PrimarySampler,
) {
    assert!(
        text(&out.stderr).contains("runs again after the proof"),
        "{}",
        text(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    assert_eq!(v["state"], "aborted");
    assert_eq!(v["point_of_no_return"], serde_json::Value::Null);
    assert_eq!(
        in_recovery(chain, "new").await,
        Some(true),
        "new was not promoted"
    );
    assert!(
        !chain
            .lab
            .lab
            .data_dir("old")
            .join("standby.signal")
            .exists(),
        "standby.signal beside a running primary"
    );
    // The staging wrote the repointed pgbouncer.ini (not loaded); its undo wrote it back, so
    // the next RELOAD or restart of PgBouncer does not send clients to the standby.
    let ini = std::fs::read_to_string(chain.lab.lab.dir.join("pgbouncer/pgbouncer.ini")).unwrap();
    let app = ini.lines().find(|l| l.starts_with("app =")).unwrap();
    assert!(
        app.contains(&format!("port={}", chain.lab.lab.port("old"))),
        "pgbouncer.ini left pointing away from the old primary: {app}"
    );
    assert_old_serves_unfenced(chain).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = w.stop().await;
    sampler.assert_never_two("old restarted by hand").await;
    assert_no_loss(chain, &report, "old restarted by hand").await;
}

/// The target promoted from outside before the tool's promotion (an HA manager on the new
/// side, an operator after --pause-before promote): nothing promotes it again, and no undo
/// restarts the old primary beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_promoted_from_outside_stops_the_run_with_one_primary() {
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    let sampler = crate::support::PrimarySampler::start(all_nodes(&chain));
    cutover_paused_before(&chain, StepId::Promote).await;
    connect(&chain.ep("new"))
        .await
        .unwrap()
        .batch_execute("SELECT pg_promote(true, 30)")
        .await
        .unwrap();
    let out = chain.run(&["resume"], None).await;
    crate::support::assert_exit_at(&out, Exit::OperatorNeeded, "resume stops for the operator");
    assert!(
        text(&out.stderr).contains("already a writable primary"),
        "{}",
        text(&out.stderr)
    );
    // The operator tries to undo: the old primary must not be restarted as a primary.
    let out = chain.run(&["rollback"], None).await;
    crate::support::assert_exit_at(&out, Exit::OperatorNeeded, "rollback refuses the restart");
    assert!(
        text(&out.stderr).contains("would make two primaries"),
        "{}",
        text(&out.stderr)
    );
    assert_ne!(
        chain.lab.lab.server("old").state().await.unwrap(),
        migrate::pg::server::RunState::Running,
        "old was restarted beside the promoted target"
    );
    sampler
        .assert_never_two("target promoted from outside")
        .await;
}

/// The old primary cannot follow the new one after the promotion (here: it cannot even start):
/// clients are still released to the new primary, the certificate says there is no rollback
/// path, and the run stops (exit 3) naming the repair; once repaired, `resume` finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_that_cannot_follow_does_not_keep_clients_held() {
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    let sampler = crate::support::PrimarySampler::start(all_nodes(&chain));
    cutover_paused_before(&chain, StepId::Promote).await;
    let auto = chain.lab.lab.data_dir("old").join("postgresql.auto.conf");
    let staged = std::fs::read_to_string(&auto).unwrap();
    std::fs::write(&auto, format!("{staged}shared_buffers = 'not a size'\n")).unwrap();

    let out = chain.run(&["resume"], None).await;
    crate::support::assert_exit_at(&out, Exit::OperatorNeeded, "no rollback path");
    let err = text(&out.stderr);
    assert!(
        err.contains("NO ROLLBACK PATH") && err.contains("pg_rewind"),
        "{err}"
    );
    assert!(
        err.contains("migrate resume") && !err.contains("migrate rollback"),
        "{err}"
    );
    // Released to the new primary through PgBouncer.
    assert_writes_through_pgbouncer(&chain, 995).await;
    assert_eq!(in_recovery(&chain, "new").await, Some(false));
    let cert_path = std::fs::read_dir(chain.lab.lab.dir.join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("certificate-")
        })
        .expect("a certificate");
    let cert: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cert_path).unwrap()).unwrap();
    assert_eq!(cert["rollback_path"], false, "{cert}");

    // The repair, then resume finishes the run with the rollback path in place.
    std::fs::write(&auto, &staged).unwrap();
    let out = chain.run(&["resume"], None).await;
    crate::support::assert_exit_at(&out, Exit::Done, "resume after the repair");
    assert_topology(&chain, "new", "after the repair").await;
    sampler.assert_never_two("old cannot follow").await;
}

/// The proof reads pg_controldata's field names, which are translated: on a host whose
/// locale is German it must still find them (the tool runs it in the C locale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proof_passes_on_a_host_with_a_german_locale() {
    const DE: &str = "de_DE.UTF-8";
    let have = std::process::Command::new("locale")
        .arg("-a")
        .output()
        .unwrap();
    if !text(&have.stdout)
        .lines()
        .any(|l| l.eq_ignore_ascii_case("de_DE.utf8"))
    {
        let made = std::process::Command::new("localedef")
            .args(["-i", "de_DE", "-f", "UTF-8", DE])
            .status()
            .expect("localedef (Debian's locales package)");
        assert!(made.success(), "localedef -i de_DE -f UTF-8 failed");
    }
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    // The locale really translates pg_controldata here (else this test could not fail).
    let german = std::process::Command::new(chain.lab.lab.bin_dir.join("pg_controldata"))
        .arg("-D")
        .arg(chain.lab.lab.data_dir("old"))
        .env("LC_ALL", DE)
        .env("LANG", DE)
        .output()
        .unwrap();
    assert!(
        !text(&german.stdout).contains("Database cluster state"),
        "pg_controldata is not translated: {}",
        text(&german.stdout)
    );
    chain.plan_ok().await;
    let out = chain
        .run_env(
            &["cutover", "--yes", "--force-window"],
            &[("LANG", DE), ("LC_ALL", DE), ("LC_MESSAGES", DE)],
        )
        .await;
    crate::support::assert_exit_at(&out, Exit::Done, "cutover under LANG=de_DE.UTF-8");
    assert_topology(&chain, "new", "after a German cutover").await;
}

/// Run a cutover that stops at `wait_at` (a failpoint) until `fault` has run.
async fn cutover_with_fault_at<F: std::future::Future<Output = ()>>(
    chain: &Chain,
    wait_at: &str,
    fault: F,
) -> std::process::Output {
    let go = chain.lab.lab.dir.join("go");
    let _ = std::fs::remove_file(&go);
    let mut cutover = tokio::process::Command::new(migrate_bin());
    cutover
        .args(["cutover", "--yes", "--force-window", "-f", chain.spec()])
        .env("MIGRATE_WAIT_AT", wait_at)
        .env("MIGRATE_WAIT_FILE", &go)
        .kill_on_drop(true);
    let child = cutover.output();
    let fault = async {
        fault.await;
        std::fs::write(&go, "").unwrap();
    };
    let (out, ()) = tokio::join!(child, fault);
    out.unwrap()
}

fn shorter_proof(chain: &Chain, seconds: u32) {
    let spec_text = std::fs::read_to_string(&chain.spec).unwrap().replace(
        "proof_timeout = \"30s\"",
        &format!("proof_timeout = \"{seconds}s\""),
    );
    std::fs::write(&chain.spec, spec_text).unwrap();
}

/// The target dies while the old primary is staged as its standby: the abort restores the
/// old primary (the slot on the dead target is dropped only if it can be) and releases clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_during_stage_is_undone_and_the_old_primary_serves() {
    let chain = Chain::new().await;
    shorter_proof(&chain, 5);
    chain.replicate_ok().await;
    chain.plan_ok().await;
    let sampler = crate::support::PrimarySampler::start(all_nodes(&chain));
    let out = cutover_with_fault_at(&chain, "stage:before", async {
        chain
            .wait_for_step("cutover", &StepId::Stage, "in_doubt")
            .await;
        chain.kill_server("new").await;
    })
    .await;
    crate::support::assert_exit_at(&out, Exit::NotReady, "the stage fails and is undone");
    let v: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    assert_eq!(v["state"], "aborted", "{v}");
    assert!(
        !chain
            .lab
            .lab
            .data_dir("old")
            .join("standby.signal")
            .exists(),
        "the old primary is still staged"
    );
    assert_old_serves_unfenced(&chain).await;
    assert_writes_through_pgbouncer(&chain, 994).await;
    sampler.assert_never_two("target killed during stage").await;
}

/// A target whose postmaster is stopped (SIGSTOP: it takes TCP connections and answers
/// nothing) after the fence: every wait on it is bounded, the proof's time box aborts the
/// cutover within its limit plus a few seconds, and the old primary serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_target_after_the_fence_makes_the_time_box_abort_without_hanging() {
    let chain = Chain::new().await;
    shorter_proof(&chain, 5);
    chain.replicate_ok().await;
    chain.plan_ok().await;
    let pid = crate::support::postmaster_pid(&chain.lab.lab.data_dir("new")).expect("new runs");
    let t = Instant::now();
    let out = cutover_with_fault_at(&chain, "stop:before", async {
        chain
            .wait_for_step("cutover", &StepId::Stop, "in_doubt")
            .await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
    })
    .await;
    let took = t.elapsed();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    crate::support::assert_exit_at(&out, Exit::NotReady, "the time box aborts");
    assert!(
        took < Duration::from_secs(5 + 30),
        "the abort took {took:?} with a 5 s proof time box"
    );
    assert!(
        text(&out.stderr).contains("not promoting"),
        "{}",
        text(&out.stderr)
    );
    assert_old_serves_unfenced(&chain).await;
    assert_eq!(in_recovery(&chain, "new").await, Some(true));
}

/// One client idle in a transaction keeps PgBouncer's PAUSE from completing: the hold gives
/// up after `cutover.hold_timeout`, every client is resumed on the old primary, and the abort
/// names the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_in_a_transaction_at_hold_times_the_hold_out_and_is_named() {
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    cutover_settings(&chain, "hold_timeout = \"2s\"\n");
    chain.plan_ok().await;
    let app = chain.lab.lab.app_endpoint();
    let idle = connect(&app).await.unwrap();
    idle.batch_execute(
        "SET application_name = 'idle-test'; BEGIN; INSERT INTO ledger (client, seq) VALUES (997, 1)",
    )
    .await
    .unwrap();
    let t = Instant::now();
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    crate::support::assert_exit_at(&out, Exit::NotReady, "the hold times out and aborts");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "the hold took {:?}",
        t.elapsed()
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("could not hold its clients within 2s"),
        "{err}"
    );
    assert!(err.contains("idle in transaction"), "{err}");
    let v: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    assert_eq!(v["state"], "aborted");
    // Clients go on through PgBouncer, on the old primary; the idle one can still commit.
    assert_writes_through_pgbouncer(&chain, 996).await;
    idle.batch_execute("COMMIT").await.unwrap();
    assert_old_serves_unfenced(&chain).await;
    assert_eq!(in_recovery(&chain, "new").await, Some(true));
}

/// With `cutover.hold = "terminate"` the sessions that block the hold are ended after the
/// time limit and the cutover goes on; their uncommitted work is lost, as the setting says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_terminate_ends_the_blocking_session_and_the_cutover_goes_on() {
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    cutover_settings(&chain, "hold_timeout = \"2s\"\nhold = \"terminate\"\n");
    chain.plan_ok().await;
    let idle = connect(&chain.lab.lab.app_endpoint()).await.unwrap();
    // An application's session (the harness's own connections say application_name migrate*,
    // which the tool never ends).
    idle.batch_execute(
        "SET application_name = 'app-terminate-test'; BEGIN; INSERT INTO ledger (client, seq) VALUES (993, 1)",
    )
    .await
    .unwrap();
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    crate::support::assert_exit_at(&out, Exit::Done, "the cutover after ending the blocker");
    assert_topology(&chain, "new", "after a terminating hold").await;
    assert!(
        idle.batch_execute("COMMIT").await.is_err(),
        "the blocking session was not ended"
    );
    let c = connect(&chain.ep("new")).await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM ledger WHERE client = 993", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the ended transaction's row is not committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_retires_the_rollback_path_and_drops_stale_slots() {
    let chain = Chain::new().await;
    let spec_text = std::fs::read_to_string(&chain.spec)
        .unwrap()
        .replace("[cutover]\n", "[cutover]\nretire = \"stop\"\n");
    std::fs::write(&chain.spec, spec_text).unwrap();
    let out = chain.run(&["complete"], None).await;
    crate::support::assert_exit_at(
        &out,
        Exit::BadInput,
        "complete before any cutover is refused",
    );

    chain.plan_ok().await;
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    crate::support::assert_exit(&out, Exit::Done);
    // The cutover dropped the target's slot from the replication era on the old primary
    // (stale since the promotion, it would retain WAL there for the whole bake).
    assert_eq!(chain.slots("old").await, Vec::<String>::new());
    assert_eq!(
        chain.slots("new").await,
        ["migrate_dr", "migrate_new_replica", "migrate_old"]
    );

    let out = chain.run(&["complete"], None).await;
    crate::support::assert_exit(&out, Exit::Done);
    assert_eq!(
        chain.lab.lab.server("old").state().await.unwrap(),
        migrate::pg::server::RunState::Stopped
    );
    assert!(
        chain
            .lab
            .lab
            .data_dir("old")
            .join("standby.signal")
            .exists(),
        "a retired old primary must never start as a primary"
    );
    assert_eq!(
        chain.slots("new").await,
        ["migrate_dr", "migrate_new_replica"],
        "the stopped node's slot would retain WAL forever"
    );
    assert_topology_cascades(&chain).await;

    let out = chain.run(&["rollback", "--yes"], None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("retired by `migrate complete`"),
        "{}",
        text(&out.stderr)
    );
}

async fn assert_topology_cascades(chain: &Chain) {
    let tli = timeline_of_primary(chain, "new").await;
    for node in ["new_replica", "dr"] {
        let c = connect(&chain.ep(node)).await.unwrap();
        let r = c
            .query_one("SELECT status, received_tli FROM pg_stat_wal_receiver", &[])
            .await
            .unwrap();
        assert_eq!(
            (r.get::<_, String>(0), r.get::<_, i32>(1)),
            ("streaming".to_string(), tli),
            "{node}"
        );
    }
}

/// The old primary's checkpointer, found among the postmaster's children.
fn checkpointer_of(chain: &Chain, node: &str) -> nix::unistd::Pid {
    let postmaster = crate::support::postmaster_pid(&chain.lab.lab.data_dir(node)).unwrap();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let child = status.lines().any(|l| {
            l.split_whitespace().collect::<Vec<_>>() == ["PPid:", &postmaster.to_string()]
        });
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if child && cmdline.contains("checkpointer") {
            return nix::unistd::Pid::from_raw(pid);
        }
    }
    panic!("no checkpointer under postmaster {postmaster}");
}

/// How a shutdown that is really in progress (the checkpointer stopped with SIGSTOP, so the
/// shutdown checkpoint waits) ends the cutover.
enum SlowStop {
    /// The operator presses Ctrl-C while the old primary shuts down.
    Interrupted,
    /// The stop outlasts its time limit (the spec's proof_timeout).
    TimedOut,
}

async fn a_slow_stop_is_aborted_and_the_old_primary_serves(how: SlowStop) {
    let chain = Chain::new().await;
    shorter_proof(&chain, 4);
    chain.replicate_ok().await;
    chain.plan_ok().await;
    let w = Writer::start(
        vec![chain.lab.lab.app_endpoint()],
        4,
        Duration::from_millis(5),
    );
    let sampler = crate::support::PrimarySampler::start(all_nodes(&chain));
    let go = chain.lab.lab.dir.join("go");
    let mut child = cutover_held_at(&chain, "stop:before", &go);
    chain
        .wait_for_step("cutover", &StepId::Stop, "in_doubt")
        .await;
    let checkpointer = checkpointer_of(&chain, "old");
    nix::sys::signal::kill(checkpointer, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::fs::write(&go, "").unwrap();
    let started = Instant::now();
    // The shutdown has begun: the server refuses new connections but still runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hold_for = match how {
        SlowStop::Interrupted => {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
                nix::sys::signal::Signal::SIGINT,
            )
            .unwrap();
            Duration::from_secs(1)
        }
        // Past the stop's 4 s limit: the abort must wait for the shutdown, not give up.
        SlowStop::TimedOut => Duration::from_secs(6),
    };
    tokio::time::sleep(hold_for).await;
    nix::sys::signal::kill(checkpointer, nix::sys::signal::Signal::SIGCONT).unwrap();
    let (status, err) = ended_within(&mut child, Duration::from_secs(90), "the abort").await;
    assert_eq!(status.code(), Some(1), "{err}");
    match how {
        SlowStop::Interrupted => assert!(err.contains("interrupted by the operator"), "{err}"),
        SlowStop::TimedOut => assert!(
            err.contains("did not finish within") || err.contains("no answer within"),
            "the stop's time limit should be named: {err}"
        ),
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let v: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    assert_eq!(v["state"], "aborted", "{v}");
    assert_old_serves_unfenced(&chain).await;
    // Writes through PgBouncer go on (the writer's own, on the old primary again).
    let before = w.acked();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        w.acked() > before,
        "no write went through PgBouncer after the abort"
    );
    let report = w.stop().await;
    assert_no_loss(&chain, &report, "slow stop").await;
    sampler.assert_never_two("slow stop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_the_old_primary_is_shutting_down_aborts_and_it_serves_again() {
    a_slow_stop_is_aborted_and_the_old_primary_serves(SlowStop::Interrupted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_outlasts_its_limit_aborts_and_the_old_primary_serves_again() {
    a_slow_stop_is_aborted_and_the_old_primary_serves(SlowStop::TimedOut).await;
}

/// The lab driven the way operators run the tool: every node and the PgBouncer route reached
/// over ssh (a real sshd on loopback, as the `postgres` user, host keys checked, connections
/// multiplexed), the writer through PgBouncer. Cutover and rollback keep every acknowledged
/// commit and never show two primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_and_rollback_over_ssh_keep_every_acknowledged_write() {
    let chain = Chain::new().await;
    let sshd = crate::support::sshd::Sshd::start();
    let q = |p: &std::path::Path| toml::Value::String(p.display().to_string()).to_string();
    let ssh = format!(
        "host = {{ kind = \"ssh\", host = \"127.0.0.1\", port = {}, user = \"postgres\", identity_file = {}, known_hosts = {} }}",
        sshd.port,
        q(&sshd.key()),
        q(&sshd.dir.path().join("known_hosts"))
    );
    let spec = std::fs::read_to_string(&chain.spec).unwrap();
    let local = "host = { kind = \"local\", run_as = \"postgres\" }";
    assert_eq!(
        spec.matches(local).count(),
        5,
        "four nodes and the PgBouncer route: {spec}"
    );
    std::fs::write(&chain.spec, spec.replace(local, &ssh)).unwrap();

    let w = Writer::start(
        vec![chain.lab.lab.app_endpoint()],
        4,
        Duration::from_millis(5),
    );
    let sampler = crate::support::PrimarySampler::start(all_nodes(&chain));
    chain.replicate_ok().await;
    chain.plan_ok().await;
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    crate::support::assert_exit_at(&out, Exit::Done, "cutover over ssh");
    assert_topology(&chain, "new", "after the cutover over ssh").await;
    let at_cutover = w.acked();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        w.acked() > at_cutover,
        "writes go on through PgBouncer to the new primary"
    );
    let out = chain.run(&["rollback", "--yes"], None).await;
    crate::support::assert_exit_at(&out, Exit::Done, "rollback over ssh");
    assert_topology(&chain, "old", "after the rollback over ssh").await;
    writes_survived(&chain, w, sampler, "cutover and rollback over ssh").await;
}

/// What `pg_lsclusters --json` says of the lab's debian clusters: node → (running, recovery).
fn listed_clusters(chain: &Chain) -> std::collections::BTreeMap<String, (bool, bool)> {
    let debian = chain.lab.lab.debian.as_ref().expect("the debian layout");
    let out = std::process::Command::new("pg_lsclusters")
        .arg("--json")
        .output()
        .expect("pg_lsclusters");
    assert!(out.status.success(), "pg_lsclusters: {}", text(&out.stderr));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let flag = |v: &serde_json::Value| v.as_i64().unwrap_or(0) != 0 || v.as_bool() == Some(true);
    ["old", "new", "new_replica", "dr"]
        .iter()
        .filter_map(|n| {
            let c = all.iter().find(|c| c["cluster"] == debian.cluster(n))?;
            Some((n.to_string(), (flag(&c["running"]), flag(&c["recovery"]))))
        })
        .collect()
}

/// pg_lsclusters shows `primary` online and `standby` online in recovery.
fn assert_listed_roles(chain: &Chain, primary: &str, standby: &str) {
    let listed = listed_clusters(chain);
    assert_eq!(
        listed.get(primary),
        Some(&(true, false)),
        "{primary} online, primary: {listed:?}"
    );
    assert_eq!(
        listed.get(standby),
        Some(&(true, true)),
        "{standby} online, recovery: {listed:?}"
    );
}

/// Debian-managed servers: every node a postgresql-common cluster made by pg_createcluster,
/// its configuration in /etc/postgresql, driven through pg_ctlcluster. Cutover and rollback
/// keep every acknowledged commit and never show two primaries, and pg_lsclusters shows both
/// clusters online with the right roles after each switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_and_rollback_on_debian_clusters_keep_every_acknowledged_write() {
    let chain = Chain::new_in(migrate::lab::Layout::Debian).await;
    let spec = std::fs::read_to_string(&chain.spec).unwrap();
    assert_eq!(
        spec.matches("kind = \"pg_ctlcluster\"").count(),
        4,
        "every node is a pg_ctlcluster node: {spec}"
    );
    let w = Writer::start(
        vec![chain.lab.lab.app_endpoint()],
        4,
        Duration::from_millis(5),
    );
    let sampler = crate::support::PrimarySampler::start(all_nodes(&chain));
    // Before the clone, a Debian target's slot bound is in its own /etc config, which the
    // clone does not copy from the primary: plan says it cannot tell yet.
    let before: serde_json::Value =
        serde_json::from_slice(&chain.run(&["plan", "--json"], None).await.stdout).unwrap();
    let bound = before["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "slot_bound:new")
        .cloned()
        .unwrap_or_else(|| panic!("no slot_bound:new in {}", before["checks"]));
    assert_eq!(bound["status"], "warn", "{bound}");
    assert!(
        bound["message"]
            .as_str()
            .unwrap()
            .contains("outside its data directory"),
        "{bound}"
    );
    chain.replicate_ok().await;
    let out = chain.run(&["plan"], None).await;
    crate::support::assert_exit_at(&out, Exit::Done, "plan");
    for node in ["old", "new", "new_replica", "dr"] {
        assert!(
            text(&out.stdout).contains(&format!("service:{node}")),
            "plan checks {node}'s manager: {}",
            text(&out.stdout)
        );
    }
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    crate::support::assert_exit_at(&out, Exit::Done, "cutover on debian clusters");
    assert_topology(&chain, "new", "after the cutover on debian clusters").await;
    assert_listed_roles(&chain, "new", "old");

    let out = chain.run(&["rollback", "--yes"], None).await;
    crate::support::assert_exit_at(&out, Exit::Done, "rollback on debian clusters");
    assert_topology(&chain, "old", "after the rollback on debian clusters").await;
    assert_listed_roles(&chain, "old", "new");
    writes_survived(
        &chain,
        w,
        sampler,
        "cutover and rollback on debian clusters",
    )
    .await;
}

/// The end of a switch test with a writer through PgBouncer: let the last commits land, then
/// no client error, every acknowledged commit on every node, never two writable primaries.
pub(crate) async fn writes_survived(
    chain: &Chain,
    w: Writer,
    sampler: crate::support::PrimarySampler,
    ctx: &str,
) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = w.stop().await;
    assert!(
        report.errors.is_empty(),
        "{ctx}: client errors through PgBouncer: {:?}",
        &report.errors[..report.errors.len().min(5)]
    );
    assert_no_loss(chain, &report, ctx).await;
    sampler.assert_never_two(ctx).await;
}

/// The network namespace a lab node's postmaster runs in (`ip netns identify`).
fn netns_of(chain: &Chain, node: &str) -> String {
    let pidfile = chain.lab.lab.data_dir(node).join("postmaster.pid");
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let out = std::process::Command::new("ip")
        .args(["netns", "identify", &pid])
        .output()
        .expect("ip netns identify");
    text(&out.stdout).trim().to_string()
}

/// The lab of separate hosts: each site in its own network namespace with its own sshd and
/// addresses, migrate driving everything over ssh from the root namespace as from a bastion,
/// the writer through PgBouncer in the application's namespace. Cutover and rollback keep
/// every acknowledged commit and never show two primaries; the servers run in their sites.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_and_rollback_on_the_ssh_lab_of_separate_hosts_keep_every_acknowledged_write() {
    let chain = Chain::new_with(migrate::lab::Layout::Plain, migrate::lab::Hosts::Ssh).await;
    let spec = std::fs::read_to_string(&chain.spec).unwrap();
    assert_eq!(
        spec.matches("kind = \"ssh\"").count(),
        5,
        "four nodes and the PgBouncer route over ssh: {spec}"
    );
    assert!(
        !spec.contains("127.0.0.1"),
        "no node is on loopback: {spec}"
    );
    let w = Writer::start(
        vec![chain.lab.lab.app_endpoint()],
        4,
        Duration::from_millis(5),
    );
    let sampler = crate::support::PrimarySampler::start(all_nodes(&chain));
    chain.replicate_ok().await;
    chain.plan_ok().await;
    let sites = |chain: &Chain| ["old", "new", "new_replica", "dr"].map(|n| netns_of(chain, n));
    let before = sites(&chain);
    assert!(
        before[0].ends_with("olddc"),
        "old runs in the old site: {before:?}"
    );
    assert!(
        before[1].ends_with("newdc") && before[2].ends_with("newdc"),
        "{before:?}"
    );
    assert!(before[3].ends_with("dr"), "{before:?}");
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    crate::support::assert_exit_at(&out, Exit::Done, "cutover on the ssh lab");
    assert_topology(&chain, "new", "after the cutover on the ssh lab").await;
    assert_eq!(
        sites(&chain),
        before,
        "every server runs in its own site after the cutover"
    );
    let at_cutover = w.acked();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        w.acked() > at_cutover,
        "writes go on through PgBouncer to the new primary"
    );
    let out = chain.run(&["rollback", "--yes"], None).await;
    crate::support::assert_exit_at(&out, Exit::Done, "rollback on the ssh lab");
    assert_topology(&chain, "old", "after the rollback on the ssh lab").await;
    assert_eq!(
        sites(&chain),
        before,
        "every server runs in its own site after the rollback"
    );
    writes_survived(&chain, w, sampler, "cutover and rollback on the ssh lab").await;
}

/// Cut every ssh session into a site of the ssh lab, as a network blip or a restarted sshd
/// would: SIGKILL to each session's sshd in the namespace (the listener stays, so the next
/// connection works). Returns how many sessions were cut.
fn cut_ssh_sessions(chain: &Chain, site: &str) -> usize {
    let sites = chain.lab.lab.sites.as_ref().expect("the ssh lab");
    let listener = std::fs::read_to_string(sites.pidfile(site)).unwrap_or_default();
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", &sites.netns(site)])
        .output()
        .expect("ip netns pids");
    let mut cut = 0;
    for pid in text(&out.stdout).split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sshd" && pid != listener.trim() {
            let p = nix::unistd::Pid::from_raw(pid.parse().unwrap());
            if nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL).is_ok() {
                cut += 1;
            }
        }
    }
    cut
}

/// ssh sessions cut in the middle of a step outside the pause (the target's clone, a long
/// pg_basebackup over ssh) and again while clients are held inside the pause: the clone step
/// fails cleanly within its time and `resume` finishes the chain; the paused cutover, resumed
/// after its sessions were cut, reconnects and keeps every acknowledged commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_sessions_cut_mid_step_fail_cleanly_or_reconnect_and_lose_nothing() {
    let chain = Chain::new_with(migrate::lab::Layout::Plain, migrate::lab::Hosts::Ssh).await;
    migrate::lab::workload::grow_app(&chain.ep("old"), 200)
        .await
        .unwrap();
    let replicate = tokio::process::Command::new(migrate_bin())
        .args(["replicate", "-f", chain.spec()])
        .env_remove("MIGRATE_SPEC")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The clone is under way once the target's data directory fills.
    let base = chain.lab.lab.data_dir("new").join("base");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !base.exists() {
        assert!(Instant::now() < deadline, "the clone of new never began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cut = cut_ssh_sessions(&chain, "newdc");
    assert!(cut > 0, "the clone runs over an ssh session");
    let out = tokio::time::timeout(Duration::from_secs(180), replicate.wait_with_output())
        .await
        .expect("replicate never hangs on a cut session")
        .unwrap();
    // Retried within the step (success) is allowed: the plan below then checks the chain.
    if !out.status.success() {
        crate::support::assert_exit_at(
            &out,
            Exit::OperatorNeeded,
            "replicate with its session cut",
        );
        assert!(
            text(&out.stderr).contains("clone:new"),
            "the failure names the step: {}",
            text(&out.stderr)
        );
        let out = chain.run(&["resume"], None).await;
        crate::support::assert_exit_at(&out, Exit::Done, "resume after the cut session");
    }
    chain.plan_ok().await;

    let w = Writer::start(
        vec![chain.lab.lab.app_endpoint()],
        4,
        Duration::from_millis(5),
    );
    let sampler = crate::support::PrimarySampler::start(all_nodes(&chain));
    let out = chain
        .run(
            &[
                "cutover",
                "--yes",
                "--force-window",
                "--pause-before",
                "stage",
                "--keep-clients-held",
            ],
            None,
        )
        .await;
    crate::support::assert_exit_at(&out, Exit::OperatorNeeded, "cutover paused before stage");
    let cut = cut_ssh_sessions(&chain, "olddc") + cut_ssh_sessions(&chain, "newdc");
    assert!(cut > 0, "the paused cutover's masters were cut");
    let out = chain.run(&["resume", "--force-window"], None).await;
    crate::support::assert_exit_at(&out, Exit::Done, "resume with its sessions cut");
    assert_topology(&chain, "new", "after the resumed cutover").await;
    writes_survived(&chain, w, sampler, "cutover with ssh sessions cut").await;
}

/// The row of `slot` on `node` in `status --json`'s retention sample.
fn retention_row(status: &serde_json::Value, node: &str, slot: &str) -> Option<serde_json::Value> {
    status["retention"]["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)?["slots"]
        .as_array()?
        .iter()
        .find(|s| s["slot"] == slot)
        .cloned()
}

/// Bake safety: plan refuses a slot holder without `max_slot_wal_keep_size` unless the spec
/// accepts it; the cutover drops the old primary's stale slot; `status` shows the WAL the new
/// primary's slot for the old one retains growing while the old primary is down, and
/// `status --check` exits 1 once that passes `bake.max_retained`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bake_bounds_slots_drops_the_stale_one_and_status_watches_retention() {
    let chain = Chain::new().await;
    let old = connect(&chain.ep("old")).await.unwrap();
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = -1",
        "SELECT pg_reload_conf()",
    ] {
        old.batch_execute(sql).await.unwrap();
    }
    drop(old);
    let out = chain.run(&["plan", "--json"], None).await;
    crate::support::assert_exit_at(&out, Exit::NotReady, "plan with an unbounded slot");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bound = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "slot_bound:old")
        .cloned()
        .unwrap_or_else(|| panic!("no slot_bound:old in {}", v["checks"]));
    assert_eq!(bound["status"], "fail", "{bound}");
    assert!(
        bound["remedy"]
            .as_str()
            .unwrap()
            .contains("bake.unbounded_slots"),
        "{bound}"
    );
    let spec_text = std::fs::read_to_string(&chain.spec).unwrap();
    std::fs::write(
        &chain.spec,
        format!("{spec_text}\n[bake]\nunbounded_slots = \"accept\"\n"),
    )
    .unwrap();
    chain.plan_ok().await;

    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    crate::support::assert_exit_at(&out, Exit::Done, "cutover");
    assert!(
        !chain
            .slots("old")
            .await
            .contains(&"migrate_new".to_string()),
        "the stale slot on the old primary survived the cutover: {:?}",
        chain.slots("old").await
    );
    let status = |args: &'static [&'static str]| {
        let chain = &chain;
        async move {
            let out = chain.run(args, None).await;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("status: {e}: {}", text(&out.stderr)));
            (out.status.code(), v)
        }
    };
    let (code, before) = status(&["status", "--json", "--check"]).await;
    assert_eq!(code, Some(0), "{}", before["retention"]);
    let row = retention_row(&before, "new", "migrate_old")
        .unwrap_or_else(|| panic!("no migrate_old on new: {}", before["retention"]));
    assert_eq!(row["active"], true, "{row}");
    let retained_before = row["retained_bytes"].as_u64().unwrap_or(0);

    // The old primary (now a standby) goes down; the new primary writes on.
    chain.kill_server("old").await;
    let new = connect(&chain.ep("new")).await.unwrap();
    new.batch_execute(
        "CREATE TABLE bake_fill AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 40000) g",
    )
    .await
    .unwrap();
    let (_, after) = status(&["status", "--json"]).await;
    let row = retention_row(&after, "new", "migrate_old")
        .unwrap_or_else(|| panic!("no migrate_old on new: {}", after["retention"]));
    assert_eq!(row["active"], false, "{row}");
    let retained = row["retained_bytes"].as_u64().unwrap();
    assert!(
        retained > retained_before + (8 << 20),
        "retention did not grow from {retained_before}: {row}"
    );
    let free = after["retention"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "new")
        .unwrap()["free_wal_bytes"]
        .as_u64();
    assert!(free.is_some_and(|f| f > 0), "{}", after["retention"]);

    // Past a limit below what is retained: --check says so, plain status does not fail.
    let spec_text = std::fs::read_to_string(&chain.spec).unwrap();
    std::fs::write(
        &chain.spec,
        spec_text.replace("[bake]\n", "[bake]\nmax_retained = \"4MiB\"\n"),
    )
    .unwrap();
    let (code, v) = status(&["status", "--json", "--check"]).await;
    assert_eq!(code, Some(1), "{}", v["retention"]);
    let (code, _) = status(&["status", "--json"]).await;
    assert_eq!(code, Some(0));
    let out = chain.run(&["status", "--check"], None).await;
    assert!(
        text(&out.stdout).contains("PAST THE LIMIT"),
        "{}",
        text(&out.stdout)
    );
}

/// After a completed cutover the new primary dies: `rollback` (which needs it) says so and
/// names the emergency path instead of "nothing to roll back", and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_with_the_new_primary_lost_names_the_emergency_path() {
    let chain = Chain::new().await;
    chain.plan_ok().await;
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    crate::support::assert_exit_at(&out, Exit::Done, "cutover");
    chain.kill_server("new").await;
    let out = chain.run(&["rollback", "--yes"], None).await;
    crate::support::assert_exit_at(&out, Exit::BadInput, "rollback with new lost");
    let err = text(&out.stderr);
    assert!(
        err.contains("new, the new primary, cannot be reached"),
        "{err}"
    );
    assert!(err.contains("runbooks/dr-activation.md"), "{err}");
    // Nothing changed: the old primary is still a standby, not promoted by the refusal.
    assert_eq!(
        in_recovery(&chain, "old").await,
        Some(true),
        "old answers as a primary"
    );
}

/// `migrate watch` on a terminal (a pseudo-terminal made by script(1)) redraws while a cutover
/// runs: a frame shows a step not yet done that a later frame shows succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_on_a_terminal_shows_the_cutover_advancing() {
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    chain.plan_ok().await;
    let watch = format!(
        "{} watch -f {} --interval 200ms --until-done",
        migrate_bin().display(),
        chain.spec()
    );
    let watcher = tokio::process::Command::new("script")
        .args(["-qfec", &watch, "/dev/null"])
        .env_remove("MIGRATE_SPEC")
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .output();
    let watcher = tokio::spawn(watcher);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    crate::support::assert_exit_at(&out, Exit::Done, "cutover under watch");
    let seen = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .expect("watch --until-done ended")
        .unwrap()
        .unwrap();
    let screen = text(&seen.stdout);
    let frames: Vec<&str> = screen.split("\u{1b}[H\u{1b}[2J").collect();
    let promote_state = |frame: &str| {
        frame
            .lines()
            .find(|l| l.trim_start().starts_with("promote "))
            .map(|l| l.to_string())
    };
    let states: Vec<String> = frames.iter().filter_map(|f| promote_state(f)).collect();
    assert!(
        states.iter().any(|l| !l.contains("succeeded")),
        "no frame before the promotion: {states:?}"
    );
    assert!(
        states.last().is_some_and(|l| l.contains("succeeded")),
        "the last frame does not show the promotion: {states:?}"
    );
}

/// The switchover's stop answers once the shutdown checkpoint is written, while its
/// postmaster still waits for the standby to confirm it (here: the target's walreceiver
/// frozen), with the soft fence already in postgresql.auto.conf; the staging's status after
/// its write waits on the host until that postmaster has exited, and only then says stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_answers_at_the_shutdown_checkpoint_and_the_staging_waits_for_the_exit() {
    use migrate::host::Cmd;
    use migrate::pg::server::{RunState, StopMode};
    use nix::sys::signal::{kill, Signal};
    let chain = Chain::new().await;
    chain.replicate_ok().await;
    let new = connect(&chain.ep("new")).await.unwrap();
    let receiver: i32 = new
        .query_one("SELECT pid FROM pg_stat_wal_receiver", &[])
        .await
        .unwrap()
        .get(0);
    let receiver = nix::unistd::Pid::from_raw(receiver);
    let lab = &chain.lab.lab;
    let old = lab.server("old");
    let postmaster = crate::support::postmaster_pid(&lab.data_dir("old")).expect("old runs");
    kill(receiver, Signal::SIGSTOP).unwrap();
    let stopped = old
        .fence_stop_and_read_control(StopMode::Fast, Duration::from_secs(30))
        .await;
    let lingering = nix::sys::signal::kill(nix::unistd::Pid::from_raw(postmaster), None).is_ok();
    let auto = std::fs::read_to_string(lab.data_dir("old").join("postgresql.auto.conf"));
    // What the staging runs after its write, started while the confirmation is still held.
    let host = lab.node_host("old");
    let argv = old.status_once_down_argv(Duration::from_secs(30));
    let status = tokio::spawn(async move { host.run(&Cmd::new(argv)).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waited = !status.is_finished();
    kill(receiver, Signal::SIGCONT).unwrap();
    let status = status.await.unwrap().unwrap();
    let control = stopped
        .unwrap()
        .expect("pg_controldata read by the stop's call");
    assert!(
        control.contains("shut down"),
        "the stop's call read: {control}"
    );
    assert!(
        lingering,
        "the stop waited for the postmaster's exit, not for the shutdown checkpoint"
    );
    assert!(
        auto.unwrap()
            .contains("default_transaction_read_only = 'on'"),
        "the soft fence is written by the stop's call"
    );
    assert!(
        waited,
        "the status after the staging's write did not wait for the stopping postmaster"
    );
    assert_eq!(RunState::from_status(status.code), Some(RunState::Stopped));
}
