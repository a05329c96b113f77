//! `migrate watch -f SPEC`: a live view of the run and the chain. It reads only the journal
//! and the nodes, like `status`, and never takes the lock. On a terminal it redraws in place;
//! off one it prints a line per step change; with `--json`, one JSON object per change.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;

use super::status::{gather, print, StatusReport};
use crate::cli::{Global, WatchArgs};
use crate::engine::label;
use crate::exit::Exit;
use crate::spec;
use crate::ui::Ui;

/// Pure: the steps whose status differs from `before` (id, new status), in plan order.
pub fn changes(before: &BTreeMap<String, String>, r: &StatusReport) -> Vec<(String, String)> {
    r.steps
        .iter()
        .map(|s| (s.id.clone(), label(&s.status)))
        .filter(|(id, st)| before.get(id) != Some(st))
        .collect()
}

/// Pure: the write pause so far against its budget, while clients are held (from `hold`'s
/// start until `release` succeeded); `None` outside the pause.
pub fn pause_line(
    r: &StatusReport,
    budget: Duration,
    now: chrono::DateTime<Utc>,
) -> Option<String> {
    let hold = r.steps.iter().find(|s| s.id == "hold")?;
    let held = hold.started_at?;
    let released = r
        .steps
        .iter()
        .find(|s| s.id == "release")
        .is_some_and(|s| label(&s.status) == "succeeded");
    if released || r.state != "in_progress" {
        return None;
    }
    let ms = (now - held).num_milliseconds().max(0);
    Some(format!(
        "WRITE PAUSE: clients held for {:.1} s (budget {} s)",
        ms as f64 / 1000.0,
        budget.as_secs()
    ))
}

pub async fn run(g: &Global, args: &WatchArgs, ui: &Ui) -> Result<Exit> {
    let path = super::spec_path(g)?;
    let spec = spec::load(&path)?;
    let spec_arg = path.display().to_string();
    let redraw = ui.is_terminal() && !ui.json();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut run_id = String::new();
    // A run that had already finished when watch began is not the one to wait for.
    let mut finished_before: Option<String> = None;
    let mut first = true;
    loop {
        let report = gather(&spec, &spec_arg).await?;
        let now = Utc::now();
        match &report {
            None if redraw => {
                ui.raw(b"\x1b[H\x1b[2J");
                ui.line(format!(
                    "{} — no run yet for {}",
                    now.format("%H:%M:%S"),
                    spec.name
                ));
            }
            None => {}
            Some(r) => {
                if r.run_id != run_id {
                    (run_id, seen) = (r.run_id.clone(), BTreeMap::new());
                }
                let changed = changes(&seen, r);
                if redraw {
                    ui.raw(b"\x1b[H\x1b[2J");
                    ui.line(format!(
                        "migrate watch — {} (Ctrl-C to stop)",
                        now.format("%H:%M:%S")
                    ));
                    if let Some(p) = pause_line(r, spec.cutover.pause_budget(), now) {
                        ui.line(p);
                    }
                    print(ui, r);
                } else {
                    for (step, status) in &changed {
                        if ui.json() {
                            ui.emit_json_line(&serde_json::json!({
                                "at": now, "run_id": r.run_id, "operation": r.operation,
                                "step": step, "status": status,
                            }));
                        } else {
                            ui.line(format!(
                                "{} run {} ({}): {step} {}",
                                now.format("%H:%M:%S"),
                                r.run_id,
                                r.operation,
                                status.replace('_', " ")
                            ));
                        }
                    }
                }
                for (step, status) in changed {
                    seen.insert(step, status);
                }
                let finished = r.state != "in_progress" && r.state != "rolling_back";
                if first && finished {
                    finished_before = Some(r.run_id.clone());
                }
                if args.until_done && finished && finished_before.as_ref() != Some(&r.run_id) {
                    if !redraw && !ui.json() {
                        ui.line(format!("run {} {}", r.run_id, r.state.replace('_', " ")));
                    }
                    return Ok(Exit::Done);
                }
            }
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(Exit::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::status::report;
    use crate::engine::replay::RunState;

    fn state(steps: &[(&str, crate::engine::replay::StepStatus, Option<i64>)]) -> StatusReport {
        let t0 = Utc::now();
        let st = RunState {
            run_id: "r".into(),
            operation: "cutover".into(),
            spec_hash: String::new(),
            tool_version: String::new(),
            started_at: t0,
            updated_at: t0,
            phase: crate::engine::replay::Phase::Forward,
            point_of_no_return: None,
            keep: 0,
            steps: steps
                .iter()
                .map(|(id, status, started)| crate::engine::replay::StepState {
                    id: id.to_string(),
                    kind: crate::engine::Kind::ReadOnly,
                    status: *status,
                    started_at: started.map(|s| t0 - chrono::Duration::milliseconds(s)),
                    finished_at: None,
                    output: None,
                    elapsed_ms: None,
                    error: None,
                    attempts: 1,
                })
                .collect(),
            processes: Vec::new(),
        };
        report(&st, false, "spec.toml")
    }

    #[test]
    fn only_changed_steps_are_told_and_the_pause_shows_while_held() {
        use crate::engine::replay::StepStatus::*;
        let r = state(&[("hold", Succeeded, Some(1500)), ("release", Pending, None)]);
        let mut before = BTreeMap::new();
        assert_eq!(changes(&before, &r).len(), 2);
        before.insert("hold".to_string(), "succeeded".to_string());
        assert_eq!(
            changes(&before, &r),
            vec![("release".to_string(), "pending".to_string())]
        );
        let line = pause_line(&r, Duration::from_secs(100), Utc::now()).unwrap();
        assert!(
            line.contains("1.5 s") && line.contains("budget 100 s"),
            "{line}"
        );
        let done = state(&[
            ("hold", Succeeded, Some(1500)),
            ("release", Succeeded, Some(10)),
        ]);
        assert_eq!(
            pause_line(&done, Duration::from_secs(100), Utc::now()),
            None
        );
        assert_eq!(
            pause_line(
                &state(&[("window", InDoubt, Some(5))]),
                Duration::from_secs(1),
                Utc::now()
            ),
            None
        );
    }
}
