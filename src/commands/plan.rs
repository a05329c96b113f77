//! `migrate plan`: the preflight checks and the exact ordered steps the cutover will run.

use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::json;

use crate::cli::{Global, PlanArgs};
use crate::engine::Kind;
use crate::exit::Exit;
use crate::plans::{self, cutover};
use crate::preflight::{self, Status};
use crate::spec;
use crate::steps::StepId;
use crate::ui::Ui;

pub async fn run(g: &Global, args: &PlanArgs, ui: &Ui) -> Result<Exit> {
    let path = super::spec_path(g)?;
    let spec = Arc::new(spec::load(&path)?);
    // Before any server is asked anything: a state directory that cannot be used is refused.
    crate::engine::state_dir::check(&spec.state_dir)?;
    let checks = preflight::run(&spec).await;
    let ready = preflight::ready(&checks);
    let record = preflight::record::PlanRecord {
        spec_hash: super::run::spec_hash(&path)?,
        taken_at: chrono::Utc::now(),
        ready,
        nodes: preflight::observe(&spec).await,
    };
    preflight::record::write(&spec.state_dir, &record)?;
    // The cutover's one plan: the chain (kept by an abort), then the switchover.
    let mut steps = plans::build(cutover::CUTOVER, &spec)?.steps;
    let switchover = steps.split_off(steps.len() - StepId::SWITCHOVER.len());
    let chain = steps;
    if let Some(file) = &args.runbook {
        let back = plans::build(cutover::SWITCHBACK, &spec)?.steps;
        let md = crate::runbook::render(&spec, &checks, &chain, &switchover, &back);
        // 0600: a runbook names hosts, users and secret references.
        crate::host::local::write_atomic(file, md.as_bytes(), 0o600, None)
            .with_context(|| format!("write the runbook {}", file.display()))?;
        ui.line(format!("runbook written: {}", file.display()));
    }
    let mut steps = chain;
    steps.extend(switchover);
    if ui.json() {
        let steps: Vec<_> = steps
            .iter()
            .map(|s| {
                let d = s.describe();
                json!({ "id": s.id(), "host": d.host, "action": d.action, "proof": d.proof, "undo": d.undo, "kind": crate::engine::label(&s.kind()) })
            })
            .collect();
        ui.emit_json(&json!({ "ready": ready, "checks": checks, "steps": steps }));
        return Ok(if ready { Exit::Done } else { Exit::NotReady });
    }
    ui.line(format!("preflight for {} ({}):", spec.name, path.display()));
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            let mark = match c.status {
                Status::Pass => "pass",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            let text = if c.remedy.is_empty() {
                c.message.clone()
            } else {
                format!("{} → {}", c.message, c.remedy)
            };
            vec![mark.into(), c.id.clone(), text]
        })
        .collect();
    ui.table(&["", "check", "finding → remedy"], &rows);
    ui.line("");
    ui.line("the cutover, step by step:");
    for (i, s) in steps.iter().enumerate() {
        let d = s.describe();
        if s.kind() == Kind::PointOfNoReturn {
            ui.line("  ── point of no return ──");
        }
        ui.line(format!(
            "{:>3}. {} [{}] on {}",
            i + 1,
            s.id(),
            crate::engine::label(&s.kind()),
            d.host
        ));
        ui.line(format!("       do:    {}", d.action));
        ui.line(format!("       proof: {}", d.proof));
        ui.line(format!("       undo:  {}", d.undo));
    }
    ui.line("");
    ui.line(format!(
        "after the point of no return, `migrate rollback` switches back the same way: fence and stop {to}, prove {from} has every byte, promote {from}, make {to} its standby again.",
        to = spec.target().name,
        from = spec.primary().name
    ));
    ui.line(if ready {
        "ready: no check failed".to_string()
    } else {
        "NOT READY: fix the failed checks above".to_string()
    });
    Ok(if ready { Exit::Done } else { Exit::NotReady })
}
