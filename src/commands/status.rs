//! `migrate status`: the run's state from its journal. Read-only and lock-free, so it works
//! while another process is running.

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use crate::cli::{Global, StatusArgs};
use crate::engine::replay::{load, Phase, RunState, StepStatus};
use crate::engine::{label, Kind};
use crate::exit::Exit;
use crate::replication::lag::HopState;
use crate::spec;
use crate::ui::Ui;
use crate::units::format_bytes;

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub run_id: String,
    pub operation: String,
    /// `in_progress`, `rolling_back`, or how it finished: `completed`, `rolled_back`, `aborted`.
    pub state: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub point_of_no_return: Option<String>,
    pub spec_hash: String,
    pub tool_version: String,
    /// The journal's last line was torn by a crash (it is ignored).
    pub torn_tail: bool,
    pub steps: Vec<StepReport>,
    /// The command that continues the run, if any.
    pub next: Option<String>,
    /// Live lag of every hop, sampled now (hops whose nodes are unreachable show as down).
    pub lag: Option<crate::replication::lag::ChainSample>,
    /// WAL retained by each node's slots, its free WAL disk, and whether that is past
    /// `bake.max_retained`.
    pub retention: Option<crate::replication::retention::RetentionSample>,
    /// The node that serves as primary after this run, as the journal says.
    pub serving: Option<String>,
    /// Each node as it answers now: role, the node it streams from, timeline.
    pub topology: Vec<crate::replication::topology::NodeNow>,
}

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub id: String,
    pub kind: Kind,
    pub status: StepStatus,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub duration_ms: Option<i64>,
    /// How long its apply took, as the runner measured it.
    pub elapsed_ms: Option<u64>,
    pub attempts: u32,
    pub output: Option<Value>,
    pub error: Option<String>,
}

pub fn report(state: &RunState, torn_tail: bool, spec_arg: &str) -> StatusReport {
    let (phase, next) = match state.phase {
        Phase::Finished(outcome) => (label(&outcome), None),
        Phase::RollingBack => (
            label(&state.phase),
            Some(format!("migrate rollback -f {spec_arg}")),
        ),
        Phase::Forward => (
            "in_progress".to_string(),
            Some(format!("migrate resume -f {spec_arg}")),
        ),
    };
    StatusReport {
        run_id: state.run_id.clone(),
        operation: state.operation.clone(),
        state: phase,
        started_at: state.started_at,
        updated_at: state.updated_at,
        point_of_no_return: state.point_of_no_return.clone(),
        spec_hash: state.spec_hash.clone(),
        tool_version: state.tool_version.clone(),
        torn_tail,
        steps: state
            .steps
            .iter()
            .map(|s| StepReport {
                id: s.id.clone(),
                kind: s.kind,
                status: s.status,
                started_at: s.started_at,
                finished_at: s.finished_at,
                duration_ms: match (s.started_at, s.finished_at) {
                    (Some(a), Some(b)) => Some((b - a).num_milliseconds()),
                    _ => None,
                },
                elapsed_ms: s.elapsed_ms,
                attempts: s.attempts,
                output: s.output.clone(),
                error: s.error.clone(),
            })
            .collect(),
        next,
        lag: None,
        retention: None,
        serving: None,
        topology: Vec::new(),
    }
}

/// The run's report with everything sampled live (lag, retention, who serves, each node);
/// `None` before the first run.
pub async fn gather(spec: &spec::Spec, spec_arg: &str) -> Result<Option<StatusReport>> {
    let Some(loaded) = load(&spec.state_dir)? else {
        return Ok(None);
    };
    let mut r = report(&loaded.state, loaded.torn_tail.is_some(), spec_arg);
    let hops = crate::plans::replicate::hops(spec);
    if !hops.is_empty() {
        r.lag =
            Some(crate::replication::lag::sample_chain(&spec.primary().endpoint(), &hops).await);
    }
    r.retention =
        Some(crate::replication::retention::sample(&spec.nodes, spec.bake.max_retained).await);
    r.serving = Some(crate::plans::failover::current_primary(
        Some(&loaded.state),
        spec,
    ));
    r.topology = crate::replication::topology::sample(&spec.nodes).await;
    Ok(Some(r))
}

pub async fn run(g: &Global, args: &StatusArgs, ui: &Ui) -> Result<Exit> {
    let path = super::spec_path(g)?;
    let spec = spec::load(&path)?;
    let spec_arg = path.display().to_string();
    let Some(r) = gather(&spec, &spec_arg).await? else {
        if ui.json() {
            ui.emit_json(&serde_json::json!({ "run": null }));
        } else {
            ui.line(format!(
                "no run yet for {} (state directory {})",
                spec.name,
                spec.state_dir.display()
            ));
        }
        return Ok(Exit::Done);
    };
    let exit = match &r.retention {
        Some(s) if args.check && !s.over_limit().is_empty() => Exit::NotReady,
        _ => Exit::Done,
    };
    if args.metrics {
        ui.raw(super::metrics::render(&r)?.as_bytes());
        return Ok(exit);
    }
    if ui.json() {
        ui.emit_json(&r);
        return Ok(exit);
    }
    print(ui, &r);
    Ok(exit)
}

/// The report as tables.
pub fn print(ui: &Ui, r: &StatusReport) {
    ui.line(format!(
        "run {} ({}): {}",
        r.run_id,
        r.operation,
        r.state.replace('_', " ")
    ));
    if let Some(p) = &r.point_of_no_return {
        ui.line(format!("passed the point of no return at {p}"));
    }
    if r.torn_tail {
        ui.line("note: the journal's last line was torn by a crash and is ignored");
    }
    let rows: Vec<Vec<String>> = r
        .steps
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                label(&s.status),
                s.started_at
                    .map(|t| t.format("%H:%M:%S").to_string())
                    .unwrap_or_else(|| "-".into()),
                s.finished_at
                    .map(|t| t.format("%H:%M:%S").to_string())
                    .unwrap_or_else(|| "-".into()),
                s.duration_ms
                    .map(|d| format!("{:.1}s", d as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                s.error
                    .clone()
                    .or_else(|| s.output.as_ref().map(compact))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    ui.table(
        &[
            "step",
            "status",
            "started",
            "finished",
            "took",
            "output / error",
        ],
        &rows,
    );
    ui.line("");
    ui.line(format!(
        "nodes now (serving primary after this run: {}):",
        r.serving.as_deref().unwrap_or("-")
    ));
    let rows: Vec<Vec<String>> = r
        .topology
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.state.to_uppercase(),
                n.upstream.clone().unwrap_or_else(|| "-".into()),
                n.timeline
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
                n.problem.clone().unwrap_or_default(),
            ]
        })
        .collect();
    ui.table(
        &["node", "role", "streams from", "timeline", "problem"],
        &rows,
    );
    if let Some(lag) = &r.lag {
        ui.line("");
        ui.line(format!("replication now ({}):", lag.at.format("%H:%M:%S")));
        let rows: Vec<Vec<String>> = lag
            .hops
            .iter()
            .map(|h| {
                let (state, recv, replay) = match &h.state {
                    HopState::Streaming {
                        receive_behind_bytes,
                        replay_behind_bytes,
                        ..
                    } => (
                        "streaming".to_string(),
                        format_bytes(*receive_behind_bytes),
                        format_bytes(*replay_behind_bytes),
                    ),
                    HopState::Down { reason } => {
                        (format!("DOWN: {reason}"), "-".into(), "-".into())
                    }
                };
                vec![format!("{} → {}", h.upstream, h.node), recv, replay, state]
            })
            .collect();
        ui.table(&["hop", "to receive", "to replay", "state"], &rows);
    }
    if let Some(s) = &r.retention {
        retention_table(ui, s);
    }
    if let Some(n) = &r.next {
        ui.line(format!("continue with: {n}"));
    }
}

fn retention_table(ui: &Ui, s: &crate::replication::retention::RetentionSample) {
    ui.line("");
    ui.line(format!(
        "WAL retained by slots ({}; limit bake.max_retained = {}):",
        s.at.format("%H:%M:%S"),
        s.limit
    ));
    let mut rows = Vec::new();
    for n in &s.nodes {
        let free = n
            .free_wal_bytes
            .map(format_bytes)
            .unwrap_or_else(|| "?".into());
        let verdict = match n.over_limit {
            Some(true) => "PAST THE LIMIT".to_string(),
            Some(false) => "ok".to_string(),
            None => "unknown".to_string(),
        };
        let problems = n.problems.join("; ");
        if n.slots.is_empty() {
            rows.push(vec![
                n.node.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                free,
                if problems.is_empty() {
                    verdict
                } else {
                    problems
                },
            ]);
            continue;
        }
        for slot in &n.slots {
            rows.push(vec![
                n.node.clone(),
                slot.slot.clone(),
                if slot.active { "active" } else { "inactive" }.into(),
                slot.retained_bytes
                    .map(format_bytes)
                    .unwrap_or_else(|| "-".into()),
                free.clone(),
                if problems.is_empty() {
                    verdict.clone()
                } else {
                    format!("{verdict}; {problems}")
                },
            ]);
        }
    }
    ui.table(
        &[
            "node",
            "slot",
            "state",
            "retains",
            "free WAL disk",
            "verdict",
        ],
        &rows,
    );
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 70 {
        format!("{}…", s.chars().take(69).collect::<String>())
    } else {
        s
    }
}
