//! `migrate failover` on the lab: the new primary (or the whole new datacenter) is lost after a
//! cutover, with a writer through PgBouncer recording every acknowledged commit and where in
//! the WAL it lies.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use migrate::exit::Exit;
use migrate::pg::{connect, Lsn};
use migrate::steps::failover::FailoverDoc;

use crate::cutover::{all_nodes, cutover_settings, in_recovery};
use crate::replication::Chain;
use crate::support::{assert_exit_at, text, PrimarySampler};

/// One acknowledged commit: its key, and WAL positions around it (`before` ≤ its commit
/// record's start, `after` ≥ its end).
#[derive(Debug, Clone, Copy)]
struct Commit {
    client: i32,
    seq: i64,
    before: Lsn,
    after: Lsn,
}

/// Clients writing through PgBouncer, each commit recorded with WAL positions around it.
struct LsnWriter {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    commits: Arc<Mutex<Vec<Commit>>>,
}

impl LsnWriter {
    fn start(chain: &Chain, clients: i32) -> LsnWriter {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let commits = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|client| {
                let ep = chain.lab.lab.app_endpoint();
                let (stop, commits) = (stop.clone(), commits.clone());
                tokio::spawn(async move {
                    let mut seq = 100_000i64;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let Ok(Ok(c)) =
                            tokio::time::timeout(Duration::from_secs(5), connect(&ep)).await
                        else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        loop {
                            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                                return;
                            }
                            seq += 1;
                            let lsn = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
                                rows.into_iter().find_map(|m| match m {
                                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                                        r.get(0).and_then(|v| v.parse::<Lsn>().ok())
                                    }
                                    _ => None,
                                })
                            };
                            let sql = format!("INSERT INTO ledger (client, seq) VALUES ({client}, {seq}) RETURNING pg_current_wal_insert_lsn()::text");
                            let Ok(Ok(rows)) =
                                tokio::time::timeout(Duration::from_secs(5), c.simple_query(&sql))
                                    .await
                            else {
                                break;
                            };
                            let before = lsn(rows);
                            let after = tokio::time::timeout(
                                Duration::from_secs(5),
                                c.simple_query("SELECT pg_current_wal_lsn()::text"),
                            )
                            .await;
                            // Acknowledged either way; without the second answer its end
                            // is unknown: the largest position stands for it.
                            let after = match after {
                                Ok(Ok(rows)) => lsn(rows),
                                _ => None,
                            };
                            commits.lock().unwrap().push(Commit {
                                client,
                                seq,
                                before: before.unwrap_or_default(),
                                after: after.unwrap_or(Lsn(u64::MAX)),
                            });
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                })
            })
            .collect();
        LsnWriter {
            stop,
            tasks,
            commits,
        }
    }

    fn acked(&self) -> usize {
        self.commits.lock().unwrap().len()
    }

    async fn stop(self) -> Vec<Commit> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        let c = self.commits.lock().unwrap().clone();
        c
    }
}

async fn missing(chain: &Chain, node: &str, commits: &[Commit]) -> Vec<Commit> {
    let c = connect(&chain.ep(node)).await.unwrap();
    let rows = c
        .query("SELECT client, seq FROM ledger", &[])
        .await
        .unwrap();
    let have: std::collections::HashSet<(i32, i64)> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    commits
        .iter()
        .filter(|k| !have.contains(&(k.client, k.seq)))
        .copied()
        .collect()
}

/// The failover certificate of the chain's newest run.
fn certificate(chain: &Chain) -> FailoverDoc {
    let dir = chain.lab.lab.dir.join("state");
    let newest = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("failover-")
        })
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .expect("a failover certificate");
    serde_json::from_slice(&std::fs::read(newest).unwrap()).unwrap()
}

async fn walsender_pid(chain: &Chain, on: &str, standby: &str) -> i32 {
    let c = connect(&chain.ep(on)).await.unwrap();
    c.query_one(
        "SELECT pid FROM pg_stat_replication WHERE application_name = $1",
        &[&standby],
    )
    .await
    .unwrap()
    .get(0)
}

/// Send `signal` to `node`'s postmaster and every child of it; the postmaster's pid.
fn signal_server(chain: &Chain, node: &str, signal: nix::sys::signal::Signal) -> i32 {
    use nix::unistd::Pid;
    let postmaster =
        crate::support::postmaster_pid(&chain.lab.lab.data_dir(node)).expect("the server runs");
    let children = std::process::Command::new("pgrep")
        .args(["-P", &postmaster.to_string()])
        .output()
        .unwrap();
    nix::sys::signal::kill(Pid::from_raw(postmaster), signal).unwrap();
    for pid in text(&children.stdout).split_whitespace() {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid.parse().unwrap()), signal);
    }
    postmaster
}

/// The new primary dies the hard way with old behind it: its walsenders to the cascades
/// freeze first, the one to old 300 ms later (so old has more than the cascades and they can
/// follow it), then, 300 ms of writes later, every process of the server is SIGKILLed.
async fn crash_new_with_old_behind(chain: &Chain) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let stop = |pid: i32| kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    for standby in ["dr", "new_replica"] {
        stop(walsender_pid(chain, "new", standby).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(walsender_pid(chain, "new", "old").await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let postmaster = signal_server(chain, "new", Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::support::alive(postmaster) {
        assert!(
            Instant::now() < deadline,
            "new's postmaster survived SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The figure a refusal asks for: "--accept-loss N".
fn asked_figure(err: &str) -> Option<u64> {
    err.split("--accept-loss ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

async fn cutover(chain: &Chain) {
    chain.plan_ok().await;
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    assert_exit_at(&out, Exit::Done, "cutover");
}

/// Run the failover with --yes; when it is refused for a loss it measured, run it again
/// accepting exactly that figure. The second answer.
async fn failover_accepting_what_it_measures(
    chain: &Chain,
    args: &[&str],
) -> (std::process::Output, Option<u64>) {
    let mut argv = vec!["failover", "--yes"];
    argv.extend_from_slice(args);
    let out = chain.run(&argv, None).await;
    if out.status.code() == Some(i32::from(Exit::Done.code())) {
        return (out, None);
    }
    let err = text(&out.stderr);
    assert_exit_at(&out, Exit::BadInput, "failover without --accept-loss");
    let figure = asked_figure(&err).unwrap_or_else(|| panic!("no figure asked for: {err}"));
    assert!(err.contains("nothing was changed"), "{err}");
    let figure_text = figure.to_string();
    argv.extend_from_slice(&["--accept-loss", &figure_text]);
    (chain.run(&argv, None).await, Some(figure))
}

/// After a completed cutover the new primary crashes with writes flowing and old behind it.
/// `failover --to old` refuses with the loss it measured, then, accepting that figure, makes
/// old the primary behind PgBouncer; every commit it lacks lies within the reported loss
/// window, every commit acknowledged before what it received is there, the cascades follow
/// it, and the lost primary restarted by hand comes up read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_old_after_the_new_primary_dies_reports_a_window_covering_every_lost_commit() {
    let chain = Chain::new().await;
    cutover(&chain).await;
    let sampler = PrimarySampler::start(all_nodes(&chain));
    let w = LsnWriter::start(&chain, 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(w.acked() > 20, "the writer must write on new first");
    crash_new_with_old_behind(&chain).await;

    let (out, accepted) = failover_accepting_what_it_measures(&chain, &["--to", "old"]).await;
    assert_exit_at(&out, Exit::Done, "failover --to old");
    let doc = certificate(&chain);
    assert_eq!((doc.lost.as_str(), doc.to.as_str()), ("new", "old"));
    assert!(doc.loss_exact, "new's disk is readable: {doc:?}");
    assert_eq!(doc.accepted_loss, accepted);
    assert!(
        accepted.is_some_and(|a| a > 0),
        "old was 300 ms of writes behind: the failover must have asked for a figure"
    );
    let window_end = Lsn(doc.received_lsn.0 + doc.loss_bytes);

    // Writes go on through PgBouncer, to old.
    let at_failover = w.acked();
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.acked() < at_failover + 20 {
        assert!(
            Instant::now() < deadline,
            "no writes through PgBouncer after the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let commits = w.stop().await;
    assert_eq!(in_recovery(&chain, "old").await, Some(false));
    let lost = missing(&chain, "old", &commits).await;
    for c in &lost {
        assert!(
            c.before < window_end,
            "a missing commit lies past the reported window ({window_end}): {c:?}"
        );
        assert!(
            c.after > doc.received_lsn,
            "a commit within what old received is missing: {c:?} (received {})",
            doc.received_lsn
        );
    }
    assert!(
        lost.is_empty() || doc.loss_bytes > 0,
        "{} commits missing with a reported loss of 0",
        lost.len()
    );
    // The cascades follow old on its new timeline.
    let mut following = doc.following.clone();
    following.sort();
    assert_eq!(following, ["dr", "new_replica"], "{doc:?}");
    sampler.assert_never_two("failover to old").await;

    // status shows the topology the failover left, not the spec's.
    let status: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    assert_eq!(status["serving"], "old", "{status}");
    let node = |n: &str| {
        status["topology"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["node"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(node("old")["state"], "primary");
    assert_eq!(node("new")["state"], "down");
    for n in ["dr", "new_replica"] {
        assert_eq!(node(n)["state"], "standby", "{status}");
        assert_eq!(node(n)["upstream"], "old", "{status}");
        assert_eq!(node(n)["timeline"], node("old")["timeline"], "{status}");
    }

    // The lost primary restarted by hand is a standby, never a second primary.
    let new = chain.lab.lab.server("new");
    new.start(&chain.lab.lab.server_log("new"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        in_recovery(&chain, "new").await,
        Some(true),
        "a second primary!"
    );
    // And there is no "rollback" of a failover.
    let out = chain.run(&["rollback", "--yes"], None).await;
    assert_exit_at(&out, Exit::BadInput, "rollback after a failover");
    assert!(
        text(&out.stderr).contains("was a failover"),
        "{}",
        text(&out.stderr)
    );
}

/// The new datacenter is lost (new and new_replica killed) after a cutover, with the writer
/// stopped before: `failover --to dr` needs no `--accept-loss` (new's disk proves nothing is
/// lost), promotes dr, routes PgBouncer to it and repoints old to follow it; with
/// `resync = "auto"` the two lost nodes are then re-synced as dr's standbys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_datacenter_lost_fails_over_to_dr_with_nothing_lost_and_old_following() {
    let chain = Chain::new().await;
    cutover_settings(&chain, "resync = \"auto\"\n");
    cutover(&chain).await;
    let w = LsnWriter::start(&chain, 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let commits = w.stop().await;
    assert!(!commits.is_empty());
    chain.wait_caught_up_from("new").await;
    let sampler = PrimarySampler::start(all_nodes(&chain));
    chain.kill_server("new").await;
    chain.kill_server("new_replica").await;

    let out = chain.run(&["failover", "--yes", "--to", "dr"], None).await;
    assert_exit_at(&out, Exit::Done, "failover --to dr");
    let doc = certificate(&chain);
    assert_eq!((doc.lost.as_str(), doc.to.as_str()), ("new", "dr"));
    assert!(doc.loss_exact && doc.loss_bytes == 0, "{doc:?}");
    assert_eq!(doc.accepted_loss, None);
    assert_eq!(doc.following, ["old"], "{doc:?}");
    assert_eq!(
        doc.not_following
            .iter()
            .map(|b| b.node.as_str())
            .collect::<Vec<_>>(),
        ["new_replica"],
        "the killed replica is reported, not waited for"
    );
    assert_eq!(in_recovery(&chain, "dr").await, Some(false));
    assert_eq!(in_recovery(&chain, "old").await, Some(true));
    for node in ["dr", "old"] {
        let lost = missing(&chain, node, &commits).await;
        assert!(lost.is_empty(), "{node} lacks {} commits", lost.len());
    }
    // Clients reach dr through PgBouncer, and old receives what they write.
    let c = connect(&chain.lab.lab.app_endpoint()).await.unwrap();
    c.batch_execute("INSERT INTO ledger (client, seq) VALUES (77, 1)")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = connect(&chain.ep("old"))
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM ledger WHERE client = 77", &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        if got == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "old does not follow dr");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Re-synced after the failover: the lost datacenter's nodes stream from dr.
    let status: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    assert_eq!(
        status["operation"],
        "resync:new:dr",
        "{}",
        text(&out.stdout)
    );
    for node in ["new", "new_replica"] {
        assert_eq!(in_recovery(&chain, node).await, Some(true), "{node}");
        let r = connect(&chain.ep(node))
            .await
            .unwrap()
            .query_one("SELECT status FROM pg_stat_wal_receiver", &[])
            .await
            .unwrap();
        assert_eq!(r.get::<_, String>(0), "streaming", "{node}");
    }
    sampler.assert_never_two("failover to dr").await;
    // plan says this spec no longer describes the cluster.
    let out = chain.run(&["plan", "--json"], None).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let topology = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "topology")
        .unwrap_or_else(|| panic!("no topology check: {v}"))
        .clone();
    assert_eq!(topology["status"], "fail", "{topology}");
    assert!(
        topology["message"].as_str().unwrap().contains("dr serves"),
        "{topology}"
    );
}

/// new's host is gone: the spec reaches it by ssh on a port nothing listens on.
fn make_new_unreachable(chain: &Chain) {
    let spec = std::fs::read_to_string(&chain.spec).unwrap();
    let (head, tail) = spec.split_once("[nodes.new]").unwrap();
    let (new_section, rest) = tail.split_once("\n[").unwrap();
    let new_section: String = new_section
        .lines()
        .map(|l| {
            if l.starts_with("host = ") {
                "host = { kind = \"ssh\", host = \"127.0.0.1\", port = 9, user = \"postgres\" }"
                    .to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(
        &chain.spec,
        format!("{head}[nodes.new]{new_section}\n\n[{rest}"),
    )
    .unwrap();
}

/// The lost primary's host does not answer (ssh to a closed port). Without a fence plugin the
/// failover refuses (naming --no-fence) and promotes nothing; with one, the plugin is called
/// first, and only then is old promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_lost_primary_is_fenced_by_the_plugin_before_anything_is_promoted() {
    let chain = Chain::new().await;
    cutover(&chain).await;
    chain.wait_caught_up_from("new").await;
    chain.kill_server("new").await;
    make_new_unreachable(&chain);

    // Its disk cannot be read: the loss is only a lower bound, so --yes needs a figure.
    let out = chain.run(&["failover", "--yes", "--to", "old"], None).await;
    assert_exit_at(&out, Exit::BadInput, "failover without a figure");
    let err = text(&out.stderr);
    assert!(err.contains("at least"), "{err}");
    let figure = asked_figure(&err).unwrap().to_string();
    let failover = ["failover", "--yes", "--to", "old", "--accept-loss", &figure];

    // No fence plugin, no --no-fence: refused, nothing promoted.
    let out = chain.run(&failover, None).await;
    assert_exit_at(&out, Exit::NotReady, "failover without a fence");
    let err = text(&out.stderr);
    assert!(
        err.contains("could not fence new") && err.contains("--no-fence"),
        "{err}"
    );
    assert_eq!(
        in_recovery(&chain, "old").await,
        Some(true),
        "promoted without a fence"
    );

    // With the plugin: called, then old promoted.
    let record = chain.lab.lab.dir.join("fence.log");
    let plugin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/plugins/fence-record");
    let spec = std::fs::read_to_string(&chain.spec).unwrap();
    std::fs::write(
        &chain.spec,
        format!(
            "{spec}\n[failover.fence]\ncommand = [{:?}]\nconfig = {{ record = {:?} }}\n",
            plugin.display().to_string(),
            record.display().to_string()
        ),
    )
    .unwrap();
    let out = chain.run(&failover, None).await;
    assert_exit_at(&out, Exit::Done, "failover with a fence plugin");
    let calls = std::fs::read_to_string(&record).unwrap();
    assert_eq!(calls.lines().count(), 1, "{calls}");
    let call: serde_json::Value = serde_json::from_str(calls.trim()).unwrap();
    assert_eq!(call["request"]["action"], "fence");
    assert_eq!(call["request"]["node"]["name"], "new");
    // The fence came before the promotion.
    let status: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    let promote_started = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "promote")
        .unwrap()["started_at"]
        .as_str()
        .unwrap()
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap();
    let fenced_at = call["at"].as_f64().unwrap();
    assert!(
        fenced_at < promote_started.timestamp_micros() as f64 / 1e6,
        "the plugin ran at {fenced_at}, after the promotion began ({promote_started})"
    );
    let doc = certificate(&chain);
    assert!(!doc.loss_exact, "{doc:?}");
    assert_eq!(in_recovery(&chain, "old").await, Some(false));
}

/// Kill the failover at each boundary of each of its steps, resume; each time the standby
/// serves, the others follow it and nothing written before the loss is missing. The nodes
/// take turns: after each round the lost primary comes back as a standby of the new one, and
/// the next round loses that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_matrix_of_the_failover() {
    use crate::support::crash::{assert_killed, boundaries};
    let chain = Chain::new().await;
    cutover(&chain).await;
    let sampler = PrimarySampler::start(all_nodes(&chain));
    let (mut primary, mut standby) = ("new", "old");
    for (round, point) in boundaries(migrate::plans::failover::STEPS)
        .into_iter()
        .enumerate()
    {
        let at = point.at();
        let client = 500 + round as i32;
        let c = connect(&chain.ep(primary)).await.unwrap();
        c.batch_execute(&format!(
            "INSERT INTO ledger (client, seq) SELECT {client}, g FROM generate_series(1, 10) g"
        ))
        .await
        .unwrap();
        chain.wait_caught_up_from(primary).await;
        // Lost by a fast stop, not a kill: the matrix is about the tool's crash points, and a
        // kill races the primary's own WAL (a checkpoint or a running-xacts record written
        // between the catch-up and the kill reaches one standby and not the other; the
        // failover then rightly asks for --accept-loss, as CI once saw). A fast stop waits
        // for its standbys to have everything.
        chain
            .lab
            .lab
            .server(primary)
            .stop(
                migrate::pg::server::StopMode::Fast,
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap();

        let out = chain
            .run(&["failover", "--yes", "--to", standby], Some(&at))
            .await;
        assert_killed(&out, &format!("{at} (failover to {standby})"));
        let out = chain.run(&["resume"], None).await;
        assert_exit_at(&out, Exit::Done, &format!("{at}: resume"));
        let doc = certificate(&chain);
        assert_eq!(doc.to, standby, "{at}");
        assert!(doc.loss_exact && doc.loss_bytes == 0, "{at}: {doc:?}");
        let mut following = doc.following.clone();
        following.sort();
        assert_eq!(following, ["dr", "new_replica"], "{at}: {doc:?}");
        assert_eq!(in_recovery(&chain, standby).await, Some(false), "{at}");
        let rows: i64 = connect(&chain.ep(standby))
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM ledger WHERE client = $1", &[&client])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 10, "{at}: rows written before the loss are missing");

        // The lost primary comes back as the new one's standby (it was marked with
        // standby.signal, and streams from there already): its slot, then its start.
        let up = connect(&chain.ep(standby)).await.unwrap();
        up.batch_execute(&format!(
            "SELECT pg_create_physical_replication_slot('migrate_{primary}', true) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'migrate_{primary}')"
        ))
        .await
        .unwrap();
        chain
            .lab
            .lab
            .server(primary)
            .start(&chain.lab.lab.server_log(primary), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(in_recovery(&chain, primary).await, Some(true), "{at}");
        chain.wait_caught_up_from(standby).await;
        (primary, standby) = (standby, primary);
    }
    sampler.assert_never_two("failover crash matrix").await;
}

/// How the old primary came to write on its own after the cutover.
#[derive(Clone, Copy, PartialEq)]
enum Divergence {
    /// Promoted (a timeline of its own).
    Promoted,
    /// Started without standby.signal: a primary on new's timeline, which pg_rewind cannot
    /// tell from a standby that is merely behind.
    StartedAsPrimary,
}

/// After a cutover, make old a primary of its own and write to it: it has diverged from new.
/// `extra` goes into its postgresql.auto.conf first.
async fn diverge_old(chain: &Chain, how: Divergence, extra: &str) {
    let old = chain.lab.lab.server("old");
    old.stop(migrate::pg::server::StopMode::Fast, Duration::from_secs(60))
        .await
        .unwrap();
    let data = chain.lab.lab.data_dir("old");
    if how == Divergence::StartedAsPrimary {
        std::fs::remove_file(data.join("standby.signal")).unwrap();
    }
    if !extra.is_empty() {
        let auto = data.join("postgresql.auto.conf");
        let text = std::fs::read_to_string(&auto).unwrap();
        std::fs::write(&auto, format!("{text}{extra}\n")).unwrap();
    }
    old.start(&chain.lab.lab.server_log("old"), Duration::from_secs(60))
        .await
        .unwrap();
    if how == Divergence::Promoted {
        connect(&chain.ep("old"))
            .await
            .unwrap()
            .batch_execute("SELECT pg_promote(true)")
            .await
            .unwrap();
    }
    assert_eq!(
        in_recovery(chain, "old").await,
        Some(false),
        "old did not diverge"
    );
    connect(&chain.ep("old"))
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO ledger (client, seq) SELECT 900, g FROM generate_series(1, 50) g",
        )
        .await
        .unwrap();
    connect(&chain.ep("new"))
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO ledger (client, seq) SELECT 901, g FROM generate_series(1, 50) g",
        )
        .await
        .unwrap();
}

/// `migrate resync` on the diverged old primary: it ends as new's standby, streaming on new's
/// timeline, with new's rows and without its own. Which way it got there is the journal's.
async fn resync_old_and_check(chain: &Chain) -> serde_json::Value {
    let out = chain.run(&["resync", "--yes", "old"], None).await;
    assert_exit_at(&out, Exit::Done, "resync old");
    assert_eq!(in_recovery(chain, "old").await, Some(true));
    chain.wait_caught_up_from("new").await;
    let c = connect(&chain.ep("old")).await.unwrap();
    let count = |client: i32| {
        let c = &c;
        async move {
            c.query_one("SELECT count(*) FROM ledger WHERE client = $1", &[&client])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let status: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    assert_eq!(
        count(901).await,
        50,
        "new's rows are on old: {}",
        status["steps"]
    );
    assert_eq!(count(900).await, 0, "old's own writes were discarded");
    let r = c
        .query_one("SELECT status, received_tli FROM pg_stat_wal_receiver", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "streaming");
    assert_eq!(status["operation"], "resync:old:new");
    status
}

fn output_of<'a>(status: &'a serde_json::Value, step: &str) -> &'a serde_json::Value {
    &status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == step)
        .unwrap()["output"]
}

/// A diverged old primary is rewound: pg_rewind, its own settings back, streaming from new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_old_primary_is_rewound_and_follows_the_new_timeline() {
    let chain = Chain::new().await;
    cutover(&chain).await;
    diverge_old(&chain, Divergence::Promoted, "").await;
    let status = resync_old_and_check(&chain).await;
    assert_eq!(output_of(&status, "rewind")["rewound"], true, "{status}");
    assert_eq!(output_of(&status, "reclone")["recloned"], false, "{status}");
}

/// Diverge old as `how` says, re-sync it, and check that the rewind was refused `because`
/// and a re-clone did the work.
async fn assert_re_cloned(how: Divergence, extra: &str, because: &str) {
    let chain = Chain::new().await;
    cutover(&chain).await;
    diverge_old(&chain, how, extra).await;
    let status = resync_old_and_check(&chain).await;
    let rewind = output_of(&status, "rewind");
    assert_eq!(rewind["rewound"], false, "{status}");
    assert!(
        rewind["why"].as_str().unwrap_or("").contains(because),
        "{rewind}"
    );
    assert_eq!(output_of(&status, "reclone")["recloned"], true, "{status}");
}

/// Where a rewind is impossible (no wal_log_hints, no checksums), the re-sync re-clones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_that_is_impossible_falls_back_to_a_re_clone() {
    assert_re_cloned(Divergence::Promoted, "wal_log_hints = off", "wal_log_hints").await;
}

/// A node started as a primary on the timeline it followed wrote WAL pg_rewind cannot see
/// ("no rewind required"): the re-sync does not trust that, and re-clones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_divergence_on_one_timeline_is_re_cloned_not_trusted_to_pg_rewind() {
    assert_re_cloned(Divergence::StartedAsPrimary, "", "no rewind required").await;
}

/// Kill the re-sync at each boundary of each of its steps, and right after pg_rewind, resume:
/// old ends as new's standby each time. Each round diverges old again first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_matrix_of_the_resync() {
    use crate::support::crash::{assert_killed, boundaries};
    let chain = Chain::new().await;
    cutover(&chain).await;
    let mut points = boundaries(migrate::plans::resync::STEPS);
    // Inside the rewind: pg_rewind done, the node's own settings not yet written back.
    points.push(crate::support::crash::Point {
        step: "rewind".into(),
        when: "rewound",
    });
    for point in points {
        let at = point.at();
        // Rows of earlier rounds are on new: start each round from a clean ledger.
        for client in [900, 901] {
            connect(&chain.ep("new"))
                .await
                .unwrap()
                .batch_execute(&format!("DELETE FROM ledger WHERE client = {client}"))
                .await
                .unwrap();
        }
        chain.wait_caught_up_from("new").await;
        diverge_old(&chain, Divergence::Promoted, "").await;
        let out = chain.run(&["resync", "--yes", "old"], Some(&at)).await;
        assert_killed(&out, &at);
        let out = chain.run(&["resume"], None).await;
        assert_exit_at(&out, Exit::Done, &format!("{at}: resume"));
        assert_eq!(in_recovery(&chain, "old").await, Some(true), "{at}");
        chain.wait_caught_up_from("new").await;
        let c = connect(&chain.ep("old")).await.unwrap();
        let got: i64 = c
            .query_one("SELECT count(*) FROM ledger WHERE client = 901", &[])
            .await
            .unwrap()
            .get(0);
        let own: i64 = c
            .query_one("SELECT count(*) FROM ledger WHERE client = 900", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!((got, own), (50, 0), "{at}");
    }
}

/// Without a fence plugin, `--no-fence` is the operator's word that the unreachable lost
/// primary is off: the failover goes ahead and the certificate says how it was fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fence_is_the_operators_word_for_an_unreachable_lost_primary() {
    let chain = Chain::new().await;
    cutover(&chain).await;
    chain.wait_caught_up_from("new").await;
    chain.kill_server("new").await;
    make_new_unreachable(&chain);
    let (out, accepted) =
        failover_accepting_what_it_measures(&chain, &["--to", "old", "--no-fence"]).await;
    assert_exit_at(&out, Exit::Done, "failover --no-fence");
    assert!(accepted.is_some(), "a lower bound needs a figure");
    let doc = certificate(&chain);
    assert_eq!(
        doc.fenced,
        migrate::steps::failover::Fenced::OperatorsWord,
        "{doc:?}"
    );
    assert!(!doc.loss_exact);
    assert_eq!(in_recovery(&chain, "old").await, Some(false));
}

/// With `resync = "auto"`, an old primary that wrote on its own before it rejoined (started as
/// a primary by hand while the cutover was paused after the promotion) is found diverged by
/// `reverse` at once (not after its time limit), clients are released to the new primary, and the cutover rewinds
/// it: it ends streaming from new, the rollback path in place, its own writes gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_with_resync_auto_rewinds_an_old_primary_that_diverged() {
    let chain = Chain::new().await;
    cutover_settings(&chain, "resync = \"auto\"\n");
    chain.plan_ok().await;
    let out = chain
        .run(
            &[
                "cutover",
                "--yes",
                "--force-window",
                "--pause-before",
                "reverse",
                "--keep-clients-held",
            ],
            None,
        )
        .await;
    assert_exit_at(&out, Exit::OperatorNeeded, "cutover paused before reverse");
    // old, staged as new's standby, is started as a primary by hand and written to.
    let data = chain.lab.lab.data_dir("old");
    std::fs::remove_file(data.join("standby.signal")).unwrap();
    let old = chain.lab.lab.server("old");
    old.start(&chain.lab.lab.server_log("old"), Duration::from_secs(60))
        .await
        .unwrap();
    connect(&chain.ep("old"))
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO ledger (client, seq) SELECT 900, g FROM generate_series(1, 50) g",
        )
        .await
        .unwrap();
    old.stop(migrate::pg::server::StopMode::Fast, Duration::from_secs(60))
        .await
        .unwrap();
    std::fs::write(data.join("standby.signal"), "").unwrap();
    let owner = std::process::Command::new("chown")
        .args(["postgres", data.join("standby.signal").to_str().unwrap()])
        .status()
        .unwrap();
    assert!(owner.success());

    let out = chain.run(&["resume"], None).await;
    assert_exit_at(&out, Exit::Done, "resume with resync auto");
    let status: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    // "diverged": found by the fork check, not by waiting out the switchover's time limit.
    let reverse = output_of(&status, "reverse");
    assert!(
        reverse["not_following"]
            .as_str()
            .is_some_and(|w| w.contains("diverged")),
        "{reverse}"
    );
    assert_eq!(output_of(&status, "rewind")["rewound"], true, "{status}");
    assert_eq!(status["state"], "completed");
    assert_eq!(in_recovery(&chain, "old").await, Some(true));
    let c = connect(&chain.ep("old")).await.unwrap();
    let own: i64 = c
        .query_one("SELECT count(*) FROM ledger WHERE client = 900", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(own, 0, "old's own writes were discarded");
    let r = c
        .query_one("SELECT status FROM pg_stat_wal_receiver", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "streaming");
}

/// The lost primary is frozen (every process of it SIGSTOPped: it takes connections and
/// answers nothing, and ignores an immediate shutdown): the fence kills it, marks it, and the
/// failover goes ahead with its WAL end read from its disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_lost_primary_is_killed_by_the_fence() {
    use nix::sys::signal::Signal;
    let chain = Chain::new().await;
    cutover(&chain).await;
    chain.wait_caught_up_from("new").await;
    let postmaster = signal_server(&chain, "new", Signal::SIGSTOP);
    let out = chain.run(&["failover", "--yes", "--to", "old"], None).await;
    assert_exit_at(&out, Exit::Done, "failover from a frozen primary");
    let doc = certificate(&chain);
    assert_eq!(
        doc.fenced,
        migrate::steps::failover::Fenced::Stopped,
        "{doc:?}"
    );
    assert!(doc.fence_detail.contains("SIGKILL"), "{}", doc.fence_detail);
    assert!(doc.loss_exact, "{doc:?}");
    assert!(
        !crate::support::alive(postmaster),
        "the frozen postmaster survived"
    );
    assert!(chain
        .lab
        .lab
        .data_dir("new")
        .join("standby.signal")
        .exists());
    assert_eq!(in_recovery(&chain, "old").await, Some(false));
}

/// A cutover left open after its promotion (paused before `followers`), then its new primary
/// dies: `resume` cannot go on and `rollback` needs the lost node, so the failover abandons
/// the open run (its journal kept) and promotes old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_abandons_an_open_cutover_whose_new_primary_is_lost() {
    let chain = Chain::new().await;
    chain.plan_ok().await;
    let out = chain
        .run(
            &[
                "cutover",
                "--yes",
                "--force-window",
                "--pause-before",
                "followers",
            ],
            None,
        )
        .await;
    assert_exit_at(
        &out,
        Exit::OperatorNeeded,
        "cutover paused before followers",
    );
    chain.kill_server("new").await;
    // new's own records after its promotion (a checkpoint, a snapshot) may not have reached
    // old: whatever the figure, the failover asks for it.
    let (out, _) = failover_accepting_what_it_measures(&chain, &["--to", "old"]).await;
    assert_exit_at(&out, Exit::Done, "failover beside the open cutover");
    assert!(
        text(&out.stderr).contains("will be abandoned"),
        "{}",
        text(&out.stderr)
    );
    let abandoned = std::fs::read_dir(chain.lab.lab.dir.join("state"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with("-abandoned.jsonl")
        });
    assert!(abandoned, "the open cutover's journal is kept");
    assert_eq!(certificate(&chain).lost, "new");
    assert_eq!(in_recovery(&chain, "old").await, Some(false));
}

/// Over ssh, as from a bastion (each site its own network namespace and sshd): the new
/// primary lost after a cutover, `failover --to old` reads its WAL end over ssh (exact), and
/// `resync new` brings it back as old's standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_resync_over_ssh() {
    let chain = Chain::new_with(migrate::lab::Layout::Plain, migrate::lab::Hosts::Ssh).await;
    cutover(&chain).await;
    chain.wait_caught_up_from("new").await;
    chain.kill_server("new").await;
    let (out, _) = failover_accepting_what_it_measures(&chain, &["--to", "old"]).await;
    assert_exit_at(&out, Exit::Done, "failover over ssh");
    let doc = certificate(&chain);
    assert!(doc.loss_exact, "new's disk is read over ssh: {doc:?}");
    assert_eq!(in_recovery(&chain, "old").await, Some(false));
    let out = chain.run(&["resync", "--yes", "new"], None).await;
    assert_exit_at(&out, Exit::Done, "resync over ssh");
    assert_eq!(in_recovery(&chain, "new").await, Some(true));
    let r = connect(&chain.ep("new"))
        .await
        .unwrap()
        .query_one("SELECT status FROM pg_stat_wal_receiver", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "streaming");
}
