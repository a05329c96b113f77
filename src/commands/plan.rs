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
use crate::ui::Ui;

/// Pure: after a failover (or a re-sync that followed one) the spec's roles describe the
/// migration before it. With another node serving, a cutover from this spec is wrong: fail,
/// naming who serves; with the spec's primary serving again, warn that the lost node needs a
/// re-sync.
fn after_failover(
    operation: &str,
    run_id: &str,
    serving: &str,
    spec: &spec::Spec,
) -> Option<preflight::Check> {
    let failover = operation.parse::<crate::plans::failover::FailoverOp>().ok();
    if failover.is_none() && !operation.starts_with(crate::plans::resync::PREFIX) {
        return None;
    }
    let lost = failover
        .map(|f| format!("; {} was lost", f.lost))
        .unwrap_or_default();
    let message = format!("after run {run_id} ({operation}) {serving} serves{lost}");
    Some(if serving == spec.primary().name {
        preflight::Check::warn(
            "topology",
            message,
            "re-sync the lost node (`migrate resync`) before a new cutover rebuilds the chain",
        )
    } else {
        preflight::Check::fail(
            "topology",
            message,
            format!(
                "this spec's roles (primary {}, target {}) describe the migration before the failover: write a spec whose primary is {serving}, matching `migrate status`",
                spec.primary().name,
                spec.target().name
            ),
        )
    })
}

pub async fn run(g: &Global, args: &PlanArgs, ui: &Ui) -> Result<Exit> {
    let path = super::spec_path(g)?;
    let spec = Arc::new(spec::load(&path)?);
    // Before any server is asked anything: a state directory that cannot be used is refused.
    crate::engine::state_dir::check(&spec.state_dir)?;
    let mut checks = preflight::run(&spec).await;
    let last = crate::engine::replay::load(&spec.state_dir)?.map(|l| l.state);
    if let Some(c) = last.as_ref().and_then(|st| {
        after_failover(
            &st.operation,
            &st.run_id,
            &crate::plans::failover::current_primary(Some(st), &spec),
            &spec,
        )
    }) {
        checks.push(c);
    }
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
    let switchover = steps.split_off(plans::replicate::chain_steps(&spec)?.len());
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

#[cfg(test)]
mod tests {
    use super::after_failover;
    use crate::preflight::Status;

    #[test]
    fn a_failover_that_left_another_node_serving_fails_the_plan() {
        let text = "name = \"t\"\n[replication]\nuser = \"repl\"\n\
            [nodes.old]\nrole = \"primary\"\nconninfo = \"host=10.0.0.1\"\ndata_dir = \"/a\"\n\
            [nodes.new]\nrole = \"target\"\nupstream = \"old\"\nconninfo = \"host=10.0.0.2\"\ndata_dir = \"/b\"\n\
            [nodes.dr]\nrole = \"replica\"\nupstream = \"new\"\nconninfo = \"host=10.0.0.3\"\ndata_dir = \"/c\"\n";
        let spec = crate::spec::parse(std::path::Path::new("/x.toml"), text).unwrap();
        assert!(after_failover("cutover", "r1", "new", &spec).is_none());
        let c = after_failover("failover:new:dr", "r2", "dr", &spec).unwrap();
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.message.contains("dr serves; new was lost"),
            "{}",
            c.message
        );
        let c = after_failover("failover:new:old:accept=10", "r3", "old", &spec).unwrap();
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            after_failover("resync:new:dr", "r4", "dr", &spec)
                .unwrap()
                .status,
            Status::Fail
        );
    }
}
