//! The step engine through the real binary: the crash matrix over the drill plan (real side
//! effects on a lab PostgreSQL and on disk), resume, rollback, and exclusivity.
//! Needs the `failpoints` feature (the README's test command enables all features).

use migrate::exit::Exit;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use migrate::pg::connect;
use serde_json::Value;

use crate::support::crash::{assert_killed, boundaries};
use crate::support::{migrate, migrate_bin, text, TestLab};

const STEPS: [&str; 5] = [
    "observe",
    "create_table",
    "insert_rows",
    "create_slot",
    "write_marker",
];

struct Drill {
    lab: TestLab,
    spec: PathBuf,
}

/// What the drill leaves behind, with the marker checked against the journal's own record.
#[derive(Debug, PartialEq)]
struct Snapshot {
    rows: Option<i64>,
    slot: bool,
    marker: Option<String>,
}

impl Drill {
    async fn new() -> Drill {
        let lab = TestLab::up().await;
        let spec = lab.lab.spec_path();
        Drill { lab, spec }
    }

    fn spec(&self) -> &str {
        self.spec.to_str().unwrap()
    }

    fn state_dir(&self) -> PathBuf {
        self.lab.lab.dir.join("state")
    }

    fn run(&self, args: &[&str], crash_at: Option<&str>) -> std::process::Output {
        let mut c = Command::new(migrate_bin());
        c.args(args)
            .args(["-f", self.spec()])
            .env_remove("MIGRATE_SPEC");
        if let Some(at) = crash_at {
            c.env("MIGRATE_CRASH_AT", at);
        }
        c.output().unwrap()
    }

    fn status(&self) -> Value {
        let out = migrate(&["status", "--json", "-f", self.spec()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    async fn snapshot(&self) -> Snapshot {
        let c = connect(&self.lab.lab.endpoint("old", "postgres"))
            .await
            .unwrap();
        let exists: bool = c
            .query_one("SELECT to_regclass('migrate_drill') IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        let rows = if exists {
            Some(
                c.query_one("SELECT count(*) FROM migrate_drill", &[])
                    .await
                    .unwrap()
                    .get(0),
            )
        } else {
            None
        };
        let slot: bool = c
            .query_one(
                "SELECT count(*) > 0 FROM pg_replication_slots WHERE slot_name = 'migrate_drill'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let marker = std::fs::read_to_string(self.state_dir().join("drill-marker")).ok();
        Snapshot { rows, slot, marker }
    }

    /// The marker must say exactly what the journal recorded: this run's id and observed LSN.
    fn expected_marker(&self) -> String {
        let s = self.status();
        let lsn = s["steps"][0]["output"]["lsn"].as_str().unwrap().to_string();
        format!("run {} observed {lsn}\n", s["run_id"].as_str().unwrap())
    }

    async fn reset(&self) {
        let c = connect(&self.lab.lab.endpoint("old", "postgres"))
            .await
            .unwrap();
        c.batch_execute("DROP TABLE IF EXISTS migrate_drill")
            .await
            .unwrap();
        c.batch_execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'migrate_drill'",
        )
        .await
        .unwrap();
        let _ = std::fs::remove_dir_all(self.state_dir());
    }
}

#[tokio::test]
async fn crash_at_every_step_boundary_then_resume_reaches_the_uninterrupted_end_state() {
    let d = Drill::new().await;
    let start = d.snapshot().await;
    assert_eq!(
        start,
        Snapshot {
            rows: None,
            slot: false,
            marker: None
        }
    );

    let out = d.run(&["drill"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let reference = d.snapshot().await;
    assert_eq!(
        reference,
        Snapshot {
            rows: Some(100),
            slot: true,
            marker: Some(d.expected_marker())
        }
    );

    for point in boundaries(STEPS) {
        let (step, at) = (point.step.as_str(), point.at());
        d.reset().await;
        assert_killed(&d.run(&["drill"], Some(&at)), &at);
        let s = d.status();
        assert_eq!(s["state"], "in_progress", "{at}");
        let st = s["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == step)
            .unwrap();
        assert_eq!(
            st["status"], "in_doubt",
            "{at}: the crashed step is in doubt"
        );
        assert_eq!(s["next"], format!("migrate resume -f {}", d.spec()));

        let out = d.run(&["resume"], None);
        crate::support::assert_exit_at(&out, Exit::Done, &format!("{at}: resume failed"));
        let s = d.status();
        assert_eq!(s["state"], "completed", "{at}");
        assert!(
            s["steps"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["status"] == "succeeded"),
            "{at}: {s}"
        );
        let after = d.snapshot().await;
        assert_eq!(
            after,
            Snapshot {
                marker: Some(d.expected_marker()),
                ..reference_without_marker(&reference)
            },
            "{at}"
        );
    }
}

fn reference_without_marker(r: &Snapshot) -> Snapshot {
    Snapshot {
        rows: r.rows,
        slot: r.slot,
        marker: None,
    }
}

#[tokio::test]
async fn crash_at_every_step_boundary_then_rollback_restores_the_start() {
    let d = Drill::new().await;
    let start = d.snapshot().await;
    for (i, step) in STEPS.iter().enumerate() {
        for when in ["before", "after"] {
            d.reset().await;
            let at = format!("{step}:{when}");
            assert_killed(&d.run(&["drill"], Some(&at)), &at);
            if i == 2 {
                // A crash mid-append leaves a torn last line; it must be dropped, not fatal.
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(d.state_dir().join("journal.jsonl"))
                    .unwrap();
                f.write_all(b"{\"seq\":99,\"ts\":\"2026-").unwrap();
                assert_eq!(d.status()["torn_tail"], true);
            }
            let out = d.run(&["rollback"], None);
            crate::support::assert_exit_at(&out, Exit::Done, &format!("{at}: rollback failed"));
            assert_eq!(
                d.snapshot().await,
                start,
                "{at}: rollback must restore the starting state"
            );
            let s = d.status();
            assert_eq!(s["state"], "rolled_back", "{at}");
            assert_eq!(s["next"], Value::Null);
            // A finished run has nothing to resume, and the journal says why.
            let again = d.run(&["resume"], None);
            assert_eq!(again.status.code(), Some(2), "{at}");
            assert!(
                text(&again.stderr).contains("already finished"),
                "{}",
                text(&again.stderr)
            );
        }
    }
    // A crash in the middle of a rollback: the rollback is itself resumable.
    d.reset().await;
    assert_killed(
        &d.run(&["drill"], Some("write_marker:after")),
        "write_marker:after",
    );
    assert_killed(
        &d.run(&["rollback"], Some("create_slot:compensate")),
        "create_slot:compensate",
    );
    assert_eq!(d.status()["state"], "rolling_back");
    let resume = d.run(&["resume"], None);
    crate::support::assert_exit_at(&resume, Exit::BadInput, "resume refuses while rolling back");
    assert!(
        text(&resume.stderr).contains("migrate rollback"),
        "{}",
        text(&resume.stderr)
    );
    let out = d.run(&["rollback"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(d.snapshot().await, start);
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_second_run_fails_at_once_naming_the_holder_and_changes_nothing() {
    let d = Drill::new().await;
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut first = Kill(
        Command::new(migrate_bin())
            .args(["drill", "-f", d.spec()])
            .env("MIGRATE_STALL_AT", "create_slot:before")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = first.0.id();
    let journal = d.state_dir().join("journal.jsonl");
    // status works while the run holds its locks.
    wait_for(
        || {
            let out = migrate(&["status", "--json", "-f", d.spec()]);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["steps"][3]["status"] == "in_doubt"
        },
        "the first run to reach create_slot",
    );
    let before = std::fs::read(&journal).unwrap();

    let t0 = Instant::now();
    for cmd in ["drill", "resume", "rollback"] {
        let out = d.run(&[cmd], None);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("another run holds the lock (pid {pid},")),
            "{cmd}: {err}"
        );
    }
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "refusals must be immediate"
    );
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        before,
        "the refused runs changed the journal"
    );

    // Another state directory for the same cluster still meets the advisory lock on the primary.
    let other = d.lab.lab.dir.join("other.toml");
    let spec_text = std::fs::read_to_string(&d.spec).unwrap();
    let state_line = spec_text
        .lines()
        .find(|l| l.starts_with("state_dir"))
        .unwrap();
    std::fs::write(
        &other,
        spec_text.replace(
            state_line,
            &format!("state_dir = {:?}", d.lab.lab.dir.join("state2")),
        ),
    )
    .unwrap();
    let out = migrate(&["drill", "-f", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("holds the advisory lock on old (backend pid "),
        "{err}"
    );
    assert!(!Path::new(&d.lab.lab.dir.join("state2/journal.jsonl")).exists());

    // Kill the holder like kill -9: the locks go with it, and the run resumes.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let out = d.run(&["resume"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(d.status()["state"], "completed");
}
