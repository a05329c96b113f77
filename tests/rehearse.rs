//! `migrate rehearse`, the README's main job, as a user runs it.

use migrate::lab::ports::PortBlock;
use migrate::lab::PORT_SPAN;

use crate::support::{migrate_bin, text};

pub fn rehearse(extra: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("migrate-rehearse-")
        .tempdir()
        .unwrap();
    let ports = PortBlock::reserve(PORT_SPAN).unwrap();
    let lab = dir.path().join("lab");
    let base = ports.base.to_string();
    let out = std::process::Command::new(migrate_bin())
        .args(["rehearse", "--json", "--scale", "5", "--clients", "4"])
        .arg("--dir")
        .arg(&lab)
        .args(["--base-port", &base])
        .args(extra)
        .env_remove("MIGRATE_SPEC")
        .output()
        .unwrap();
    (out, dir)
}

#[test]
fn a_rehearsal_reports_pauses_and_loses_no_commit() {
    let (out, dir) = rehearse(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for switch in ["cutover", "rollback"] {
        let s = &r[switch];
        assert!(s["acked"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["errors"], 0, "PgBouncer holds clients: {s}");
        let pause = s["write_pause_ms"].as_f64().unwrap();
        assert!(pause > 0.0, "a switchover pauses writes: {s}");
        assert!(s["certificate_pause_ms"].as_i64().unwrap() > 0, "{s}");
        for node in ["old", "new", "new_replica", "dr"] {
            assert_eq!(s["missing"][node], 0, "{switch} on {node}: {s}");
        }
        for phase in ["fence", "stop", "proof", "promote", "reverse", "route"] {
            assert!(s["phases_ms"][phase].is_u64(), "{phase}: {s}");
        }
    }
    assert!(r["acked_total"].as_u64().unwrap() > 0);
    // The lab was taken down.
    let lab = migrate::lab::Lab::open(&dir.path().join("lab")).unwrap();
    for node in ["old", "new", "new_replica", "dr"] {
        assert_eq!(crate::support::postmaster_pid(&lab.data_dir(node)), None);
    }
}
