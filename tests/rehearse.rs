//! `migrate rehearse`, the README's main job, as a user runs it.

use migrate::lab::ports::PortBlock;
use migrate::lab::PORT_SPAN;
use migrate::steps::StepId;

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

/// Loads a page in headless Chromium (Debian's `chromium`): its DOM after loading, and every
/// console message it logged.
fn render_in_chromium(page: &std::path::Path) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium is installed (scripts/test installs it)");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let console = text(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    (text(&out.stdout), console)
}

/// The check sees a page's errors (so its silence on the report means something).
#[test]
fn headless_chromium_reports_a_pages_console_errors() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.html");
    std::fs::write(
        &page,
        "<html><body><script>throw new Error('bad page')</script></body></html>",
    )
    .unwrap();
    let (_, console) = render_in_chromium(&page);
    assert!(
        console.iter().any(|l| l.contains("bad page")),
        "{console:?}"
    );
}

#[test]
fn a_rehearsal_reports_pauses_and_loses_no_commit() {
    let report = tempfile::Builder::new().suffix(".html").tempfile().unwrap();
    let path = report.path().display().to_string();
    let (out, dir) = rehearse(&["--report", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for switch in ["cutover", "rollback"] {
        let s = &r[switch];
        assert!(s["acked"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["errors"], 0, "PgBouncer holds clients: {s}");
        let pause = s["write_pause_ms"].as_f64().unwrap();
        assert!(pause > 0.0, "a switchover pauses writes: {s}");
        assert!(s["certificate_pause_ms"].as_i64().unwrap() > 0, "{s}");
        // The commit that ends the pause comes after the release, within the pause.
        let after = s["after_release_ms"].as_f64().unwrap();
        assert!(after < pause, "{s}");
        for node in ["old", "new", "new_replica", "dr"] {
            assert_eq!(s["missing"][node], 0, "{switch} on {node}: {s}");
        }
        for phase in StepId::pause() {
            let phase = phase.to_string();
            assert!(s["phases_ms"][&phase].is_u64(), "{phase}: {s}");
        }
    }
    for phase in ["clone", "catchup"] {
        assert!(
            r["replicate_phases_ms"][phase].as_u64().unwrap() > 0,
            "{phase}: {r}"
        );
    }
    assert!(r["acked_total"].as_u64().unwrap() > 0);
    // The lab was taken down, and its data removed: logs and the report stay.
    let lab = migrate::lab::Lab::open(&dir.path().join("lab")).unwrap();
    for node in ["old", "new", "new_replica", "dr"] {
        assert_eq!(crate::support::postmaster_pid(&lab.data_dir(node)), None);
        assert!(!lab.data_dir(node).exists(), "{node}'s data is left behind");
    }
    let left = migrate::files::tree_size(dir.path());
    assert!(left < 50 << 20, "the rehearsal left {left} bytes behind");
    assert!(dir.path().join("lab/logs").read_dir().unwrap().count() > 0);

    // The HTML report: loads without a console message, draws both switchovers, and its
    // commit histogram shows a gap the length of the measured pause.
    let (dom, console) = render_in_chromium(report.path());
    assert!(console.is_empty(), "console: {console:?}");
    for switch in ["cutover", "rollback"] {
        assert!(
            dom.contains(&format!("<section id=\"{switch}\">")),
            "{switch}"
        );
        let start = dom.find(&format!("id=\"timeline-{switch}\">")).unwrap();
        let json = &dom[dom[start..].find('>').unwrap() + start + 1..];
        let json = &json[..json.find("</script>").unwrap()];
        let t: serde_json::Value = serde_json::from_str(json).unwrap();
        let measured = r[switch]["write_pause_ms"].as_f64().unwrap();
        assert!(
            (t["pause_ms"].as_f64().unwrap() - measured).abs() < 1.0,
            "{switch}: {} vs {measured}",
            t["pause_ms"]
        );
        let bins: Vec<u32> = serde_json::from_value(t["bins"].clone()).unwrap();
        // The empty bins around the middle of the pause: a stall elsewhere within the
        // chart's margin (a neighbouring test busy on a two-core host) is a second gap.
        let start = t["start_ms"].as_f64().unwrap();
        let gap = migrate::rehearse::html::empty_run_at_ms(&bins, start, measured / 2.0);
        assert!(
            (gap - measured).abs() <= 2.0 * migrate::rehearse::html::BIN_MS,
            "{switch}: the chart's gap {gap} ms, the pause {measured} ms"
        );
        assert!(t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "promote"));
    }
    assert!(dom.matches("<svg").count() >= 2);
}

/// Runs `rehearse --fault <name>`; checks what every fault rehearsal must show (exit 0, the
/// tool did as expected, no client error, every acknowledged commit on every node after the
/// cutover, after the rollback and at the end), and returns the fault's report.
fn rehearse_fault(name: &str) -> serde_json::Value {
    rehearse_fault_with(name, &[])
}

fn rehearse_fault_with(name: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--fault", name];
    args.extend_from_slice(extra);
    let (out, _dir) = rehearse(&args);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", crate::support::output_text(&out)));
    assert_eq!(out.status.code(), Some(0), "{r:#}\n{}", text(&out.stderr));
    let f = r["fault"].clone();
    assert_eq!(f["name"], name, "{f:#}");
    assert_eq!(f["as_expected"], true, "{f:#}");
    assert_eq!(
        f["errors"], 0,
        "PgBouncer holds clients through the fault: {f:#}"
    );
    for node in ["old", "new", "new_replica", "dr"] {
        for switch in ["cutover", "rollback"] {
            assert_eq!(r[switch]["missing"][node], 0, "{switch} on {node}: {r:#}");
        }
        assert_eq!(r["missing_at_end"][node], 0, "{node}: {r:#}");
    }
    // Whatever the fault, the migration then went through, both ways.
    for switch in ["cutover", "rollback"] {
        assert!(
            r[switch]["phases_ms"][StepId::Promote.to_string()].is_u64(),
            "{switch}: {r:#}"
        );
        assert_eq!(r[switch]["errors"], 0, "{switch}: {r:#}");
    }
    f
}

/// Stopped for the operator (exit 3) past the promotion, then completed by `resume`.
#[track_caller]
fn assert_stopped_past_the_promotion_then_completed(f: &serde_json::Value) {
    assert_eq!(f["exit_code"], 3, "{f:#}");
    assert_eq!(
        f["run"]["point_of_no_return"],
        StepId::Promote.to_string(),
        "{f:#}"
    );
    assert_eq!(f["run"]["outcome"], "completed", "{f:#}");
}

/// Aborted before the point of no return, with the stop (the fence) and the hold undone.
#[track_caller]
fn assert_undone_before_the_promotion(f: &serde_json::Value) {
    assert!(f["run"]["point_of_no_return"].is_null(), "{f:#}");
    assert_eq!(f["run"]["outcome"], "aborted", "{f:#}");
    assert_eq!(
        undone(f),
        [StepId::Stop, StepId::Hold].map(|s| s.to_string()),
        "{f:#}"
    );
}

fn undone(f: &serde_json::Value) -> Vec<String> {
    f["run"]["undone"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_target_crashed_during_catch_up_is_waited_for() {
    let f = rehearse_fault("kill-target-during-catchup");
    assert_eq!(f["exit_code"], 0, "{f:#}");
    assert_eq!(f["run"]["operation"], "replicate", "{f:#}");
    assert_eq!(f["run"]["outcome"], "completed", "{f:#}");
    assert!(f["run"]["failed_step"].is_null(), "{f:#}");
    let recovery = f["recovery"].to_string();
    assert!(
        recovery.contains("still waiting at the catch-up gate"),
        "{f:#}"
    );
}

#[test]
fn a_target_stopped_after_the_fence_makes_the_time_box_undo_the_cutover() {
    let f = rehearse_fault("stop-target-after-fence");
    assert_eq!(f["exit_code"], 1, "{f:#}");
    assert_eq!(f["run"]["operation"], "cutover", "{f:#}");
    assert_eq!(f["run"]["failed_step"], StepId::Proof.to_string(), "{f:#}");
    assert!(
        f["run"]["error"]
            .as_str()
            .unwrap()
            .contains("no proof within 10s"),
        "{f:#}"
    );
    assert_undone_before_the_promotion(&f);
}

#[test]
fn a_tool_crash_after_the_promotion_is_finished_by_resume() {
    let f = rehearse_fault("crash-tool-after-promote");
    assert!(f["exit_code"].is_null(), "killed by a signal: {f:#}");
    assert_eq!(
        f["run"]["point_of_no_return"],
        StepId::Promote.to_string(),
        "{f:#}"
    );
    assert_eq!(f["run"]["outcome"], "completed", "{f:#}");
    assert!(undone(&f).is_empty(), "{f:#}");
}

#[test]
fn a_route_failure_before_the_point_of_no_return_aborts_and_undoes() {
    let f = rehearse_fault("route-failure");
    assert_eq!(f["exit_code"], 1, "{f:#}");
    assert_eq!(f["run"]["failed_step"], StepId::Hold.to_string(), "{f:#}");
    assert!(
        f["run"]["error"]
            .as_str()
            .unwrap()
            .contains("traffic switch API is unavailable"),
        "{f:#}"
    );
    assert!(f["run"]["point_of_no_return"].is_null(), "{f:#}");
    assert_eq!(f["run"]["outcome"], "aborted", "{f:#}");
    assert_eq!(undone(&f), [StepId::Hold.to_string()], "{f:#}");
}

#[test]
fn a_client_idle_in_a_transaction_times_the_hold_out_and_is_named() {
    let f = rehearse_fault("idle-in-transaction-client");
    assert_eq!(f["exit_code"], 1, "{f:#}");
    assert_eq!(f["run"]["failed_step"], StepId::Hold.to_string(), "{f:#}");
    let error = f["run"]["error"].as_str().unwrap();
    assert!(
        error.contains("within 2s") && error.contains("idle in transaction"),
        "{f:#}"
    );
    assert_eq!(f["run"]["outcome"], "aborted", "{f:#}");
    assert_eq!(undone(&f), [StepId::Hold.to_string()], "{f:#}");
}

#[test]
fn a_hung_target_after_the_fence_makes_the_time_box_undo_the_cutover() {
    let f = rehearse_fault("hang-target");
    assert_eq!(f["exit_code"], 1, "{f:#}");
    assert_eq!(f["run"]["failed_step"], StepId::Proof.to_string(), "{f:#}");
    assert_undone_before_the_promotion(&f);
}

#[test]
fn an_old_primary_restarted_after_the_proof_is_never_doubled() {
    let f = rehearse_fault("restart-old-after-proof");
    assert_eq!(f["exit_code"], 1, "{f:#}");
    assert_eq!(f["run"]["failed_step"], StepId::Stage.to_string(), "{f:#}");
    assert!(
        f["run"]["error"]
            .as_str()
            .unwrap()
            .contains("runs again after the proof"),
        "{f:#}"
    );
    assert!(f["run"]["point_of_no_return"].is_null(), "{f:#}");
    assert_eq!(f["run"]["outcome"], "aborted", "{f:#}");
}

#[test]
fn a_target_killed_while_the_old_primary_is_staged_is_undone() {
    let f = rehearse_fault("kill-target-during-stage");
    assert_eq!(f["exit_code"], 1, "{f:#}");
    assert_eq!(f["run"]["failed_step"], StepId::Stage.to_string(), "{f:#}");
    assert!(f["run"]["point_of_no_return"].is_null(), "{f:#}");
    assert_eq!(f["run"]["outcome"], "aborted", "{f:#}");
    let undone = undone(&f);
    for step in [StepId::Stop, StepId::Hold] {
        assert!(
            undone.contains(&step.to_string()),
            "{step} not undone: {f:#}"
        );
    }
}

#[test]
fn a_target_promoted_from_outside_is_neither_promoted_again_nor_doubled() {
    let f = rehearse_fault("promote-target-externally");
    assert_eq!(f["exit_code"], 3, "resume stops for the operator: {f:#}");
    let recovery = f["recovery"].to_string();
    assert!(recovery.contains("already a writable primary"), "{f:#}");
    assert!(recovery.contains("at most 1 node"), "{f:#}");
    assert!(recovery.contains("old stays down"), "{f:#}");
}

#[test]
fn an_old_primary_that_cannot_follow_releases_clients_and_is_repaired() {
    let f = rehearse_fault("old-cannot-follow");
    assert_stopped_past_the_promotion_then_completed(&f);
}

#[test]
fn an_unknown_fault_is_refused_before_anything_starts() {
    let (out, dir) = rehearse(&["--fault", "unplug-the-dc"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("unplug-the-dc") && err.contains("route-failure"),
        "{err}"
    );
    assert!(!dir.path().join("lab").exists(), "no lab was made");
}

/// The WAN faults play on the lab of separate hosts, its link between the old and the new
/// datacenter (or between the bastion and the old one) cut by dropping every packet at both
/// ends, with a 10 ms round trip on every link.
fn wan_fault(name: &str) -> serde_json::Value {
    let f = rehearse_fault_with(name, &["--hosts", "ssh", "--rtt", "10ms"]);
    assert!(
        f["recovery"]
            .to_string()
            .contains("at most 1 writable node(s) at once"),
        "never two primaries: {f:#}"
    );
    f
}

#[test]
fn a_link_cut_during_catch_up_is_waited_for_and_its_wal_retained() {
    let f = wan_fault("cut-link-during-catchup");
    assert_eq!(f["run"]["operation"], "replicate", "{f:#}");
    assert_eq!(f["run"]["outcome"], "completed", "{f:#}");
    let recovery = f["recovery"].to_string();
    assert!(
        recovery.contains("still waiting at the catch-up gate"),
        "{f:#}"
    );
    assert!(
        recovery.contains("may be cut"),
        "the hop is reported down: {f:#}"
    );
    assert!(recovery.contains("retained by the slots"), "{f:#}");
}

#[test]
fn a_link_cut_before_the_proof_makes_the_time_box_undo_the_cutover() {
    let f = wan_fault("cut-link-before-proof");
    assert_eq!(f["exit_code"], 1, "{f:#}");
    // The old primary's fast shutdown waits for the standby to confirm its last WAL: the
    // stop's time box runs out first (or the proof's, had the shutdown finished).
    let failed = f["run"]["failed_step"].as_str().unwrap().to_string();
    assert!(
        [StepId::Stop, StepId::Proof]
            .map(|s| s.to_string())
            .contains(&failed),
        "{f:#}"
    );
    assert!(
        f["write_pause_ms"].as_f64().unwrap() < 40_000.0,
        "clients are not held for the walsender's minute: {f:#}"
    );
    assert_undone_before_the_promotion(&f);
}

#[test]
fn a_tool_cut_from_the_old_datacenter_promotes_nothing() {
    let f = wan_fault("cut-tool-from-old-dc");
    assert_ne!(f["exit_code"], 0, "{f:#}");
    assert!(f["run"]["point_of_no_return"].is_null(), "{f:#}");
    assert_eq!(f["run"]["outcome"], "aborted", "{f:#}");
    assert!(undone(&f).contains(&StepId::Hold.to_string()), "{f:#}");
}

#[test]
fn a_link_cut_after_the_promotion_still_releases_clients_and_resume_completes() {
    let f = wan_fault("cut-link-after-promote");
    assert_stopped_past_the_promotion_then_completed(&f);
    assert!(
        f["recovery"]
            .to_string()
            .contains("writes through PgBouncer go on"),
        "{f:#}"
    );
}
