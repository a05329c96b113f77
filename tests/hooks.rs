//! `[[hook]]`: a gate hook's "no" aborts the cutover before anything changes; an event hook is
//! told of every step of a cutover.

use std::time::Duration;

use migrate::exit::Exit;
use migrate::pg::connect;

use crate::replication::Chain;
use crate::support::{assert_exit_at, text};

fn with_hooks(chain: &Chain) -> std::path::PathBuf {
    let plugin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/plugins/hook-record");
    let spec = std::fs::read_to_string(&chain.spec).unwrap();
    let hook = |gate: bool| {
        format!(
            "\n[[hook]]\ncommand = [{:?}]\nenv = [\"HOOK_RECORD\", \"HOOK_ANSWER\"]\ngate = {gate}\n",
            plugin.display().to_string()
        )
    };
    std::fs::write(&chain.spec, format!("{spec}{}{}", hook(true), hook(false))).unwrap();
    chain.lab.lab.dir.join("hooks.jsonl")
}

fn requests(record: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_hook_saying_no_aborts_before_hold_and_an_event_hook_hears_every_step() {
    let chain = Chain::new().await;
    let record = with_hooks(&chain);
    let record_s = record.display().to_string();
    chain.replicate_ok().await;
    chain.plan_ok().await;

    // No go: the cutover aborts at `approve`, before clients are held or anything fenced.
    let out = chain
        .run_env(
            &["cutover", "--yes", "--force-window"],
            &[("HOOK_RECORD", &record_s), ("HOOK_ANSWER", "no")],
        )
        .await;
    assert_exit_at(&out, Exit::NotReady, "cutover with a gate saying no");
    let err = text(&out.stderr);
    assert!(
        err.contains("no go") && err.contains("change freeze"),
        "{err}"
    );
    let status: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    let started: Vec<&str> = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["started_at"].is_string())
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(
        !started.contains(&"hold") && !started.contains(&"stop"),
        "{started:?}"
    );
    // Nothing changed: old takes writes through PgBouncer, unfenced.
    let c = tokio::time::timeout(
        Duration::from_secs(10),
        connect(&chain.lab.lab.app_endpoint()),
    )
    .await
    .unwrap()
    .unwrap();
    c.batch_execute("INSERT INTO ledger (client, seq) VALUES (600, 1)")
        .await
        .unwrap();
    let asked = requests(&record);
    assert!(asked
        .iter()
        .any(|r| r["action"] == "approve" && r["to"] == "new"));

    // Go: the cutover runs, and the event hook is told each step's start and success.
    std::fs::remove_file(&record).unwrap();
    chain.plan_ok().await;
    let out = chain
        .run_env(
            &["cutover", "--yes", "--force-window"],
            &[("HOOK_RECORD", &record_s), ("HOOK_ANSWER", "yes")],
        )
        .await;
    assert_exit_at(&out, Exit::Done, "cutover with the gate saying yes");
    let status: serde_json::Value =
        serde_json::from_slice(&chain.run(&["status", "--json"], None).await.stdout).unwrap();
    let run_id = status["run_id"].as_str().unwrap();
    let events: Vec<serde_json::Value> = requests(&record)
        .into_iter()
        .filter(|r| r["action"] == "event" && r["run_id"] == run_id)
        .map(|r| r["event"].clone())
        .collect();
    for step in status["steps"].as_array().unwrap() {
        let id = step["id"].as_str().unwrap();
        for kind in ["step_started", "step_succeeded"] {
            if kind == "step_started" && step["started_at"].is_null() {
                continue; // found done by its probe, never started
            }
            assert!(
                events.iter().any(|e| e["type"] == kind && e["step"] == id),
                "no {kind} event for {id}"
            );
        }
    }
    assert!(events.iter().any(|e| e["type"] == "point_of_no_return"));
    // No secret in any event: the lab's passwords never appear.
    let pgpass = std::fs::read_to_string(chain.lab.lab.dir.join("pgpass")).unwrap();
    let all = std::fs::read_to_string(&record).unwrap();
    for line in pgpass.lines() {
        let password = line.rsplit(':').next().unwrap();
        assert!(
            password.len() < 8 || !all.contains(password),
            "a password in an event"
        );
    }
}
