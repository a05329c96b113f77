//! `migrate rehearse`: progress while it runs, then the report (a table, or JSON).

use std::time::Instant;

use anyhow::{Context, Result};

use crate::cli::RehearseArgs;
use crate::exit::Exit;
use crate::rehearse::fault::FaultReport;
use crate::rehearse::report::{Report, Switch};
use crate::rehearse::{self, Options};
use crate::ui::Ui;

pub async fn run(args: &RehearseArgs, ui: &Ui) -> Result<Exit> {
    let opts = Options {
        dir: match &args.dir {
            Some(d) => d.clone(),
            None => rehearse::default_dir()?,
        },
        base_port: args.base_port,
        layout: args.layout,
        hosts: if args.compose {
            crate::lab::Hosts::Compose
        } else {
            args.hosts
        },
        pg_major: args.pg,
        scale_mb: args.scale,
        clients: args.clients,
        pace: std::time::Duration::from_millis(args.pace_ms),
        keep: args.keep,
        exe: std::env::current_exe().context("find this binary")?,
        fault: args.fault,
        wan: args.wan.wan(),
        pgbackrest: args.pgbackrest,
    };
    let started = Instant::now();
    let spinner = ui.spinner();
    let note = |m: &str| spinner.note(m, started.elapsed());
    let report = rehearse::run(&opts, &note).await;
    spinner.finish();
    let report = report?;
    if let Some(path) = &args.report {
        let page = rehearse::html::render(&report, &report.timelines)?;
        std::fs::write(path, page).with_context(|| format!("write {}", path.display()))?;
        if !ui.json() {
            ui.line(format!("report: {}", path.display()));
        }
    }
    if ui.json() {
        ui.emit_json(&report);
    } else {
        show(ui, &report);
    }
    Ok(if report.passed() {
        Exit::Done
    } else {
        Exit::NotReady
    })
}

fn show(ui: &Ui, r: &Report) {
    ui.line("");
    ui.line(format!(
        "rehearsal in {}: {} clients through PgBouncer, app grown to ~{} MB",
        r.dir, r.clients, r.scale_mb
    ));
    ui.line(format!(
        "replicate {:.1} s (clone {:.1} s, catch-up {:.1} s), plan {:.1} s",
        r.replicate_ms as f64 / 1000.0,
        r.replicate_phases_ms.get("clone").copied().unwrap_or(0) as f64 / 1000.0,
        r.replicate_phases_ms.get("catchup").copied().unwrap_or(0) as f64 / 1000.0,
        r.plan_ms as f64 / 1000.0
    ));
    ui.line("");
    let row = |name: &str, f: &dyn Fn(&Switch) -> String| {
        vec![name.to_string(), f(&r.cutover), f(&r.rollback)]
    };
    let phase = |k: &'static str| {
        move |s: &Switch| {
            s.phases_ms
                .get(k)
                .map(|v| format!("{v} ms"))
                .unwrap_or_else(|| "-".into())
        }
    };
    let mut rows = vec![
        row("write pause (longest gap, all clients)", &|s| {
            format!("{:.0} ms", s.write_pause_ms)
        }),
        row("per-client pause p50 / p99 / max", &|s| {
            format!(
                "{:.0} / {:.0} / {:.0} ms",
                s.client_pause_p50_ms, s.client_pause_p99_ms, s.client_pause_max_ms
            )
        }),
        row("pause in the certificate (held → released)", &|s| {
            s.certificate_pause_ms
                .map(|v| format!("{v} ms"))
                .unwrap_or_else(|| "-".into())
        }),
        row("first commit after the release", &|s| {
            s.after_release_ms
                .map(|v| format!("{v:.0} ms"))
                .unwrap_or_else(|| "-".into())
        }),
        row("client errors", &|s| {
            if s.errors == 0 {
                "0".into()
            } else {
                format!(
                    "{} ({})",
                    s.errors,
                    s.error_kinds
                        .iter()
                        .map(|(k, n)| format!("{k}: {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        }),
        row("acknowledged commits during it", &|s| s.acked.to_string()),
        row("missing commits (per node)", &|s| per_node(&s.missing)),
        row("command duration", &|s| format!("{} ms", s.duration_ms)),
    ];
    for k in [
        "hold",
        "stop",
        "proof",
        "stage",
        "promote",
        "route",
        "release",
        "reverse",
        "followers",
    ] {
        rows.push(row(&format!("  {k}"), &phase(k)));
    }
    ui.table(&["", "cutover", "rollback"], &rows);
    ui.line("");
    ui.line(format!(
        "{} acknowledged commits in all; missing at the end: {}",
        r.acked_total,
        per_node(&r.missing_at_end)
    ));
    ui.line(if r.zero_loss() {
        "zero data loss: every acknowledged commit is on every node"
    } else {
        "DATA LOSS: acknowledged commits are missing (see above)"
    });
    if let Some(f) = &r.fault {
        show_fault(ui, f);
    }
}

fn show_fault(ui: &Ui, f: &FaultReport) {
    ui.line("");
    ui.line(format!("fault {}", f.name));
    ui.line(format!("  injected: {}", f.injected));
    let run = &f.run;
    let mut did = vec![format!(
        "exit {}",
        f.exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "by signal".into())
    )];
    if let Some(step) = &run.failed_step {
        did.push(format!(
            "step {step} failed: {}",
            run.error.as_deref().unwrap_or_default()
        ));
    }
    if !run.undone.is_empty() {
        did.push(format!("undid {}", run.undone.join(", ")));
    }
    did.push(format!(
        "run {} {}",
        run.operation,
        run.outcome
            .map_or_else(|| "unfinished".into(), |o| crate::engine::label(&o))
    ));
    ui.line(format!("  the tool: {}", did.join("; ")));
    for r in &f.recovery {
        ui.line(format!("  then: {r}"));
    }
    ui.line(format!(
        "  writes meanwhile: longest pause {:.0} ms, {} client errors",
        f.write_pause_ms, f.errors
    ));
    ui.line(format!("  expected: {}", f.expected));
    ui.line(if f.as_expected {
        "  as expected"
    } else {
        "  NOT AS EXPECTED (see the logs in the rehearsal directory)"
    });
}

fn per_node(missing: &std::collections::BTreeMap<String, usize>) -> String {
    missing
        .iter()
        .map(|(n, m)| format!("{n} {m}"))
        .collect::<Vec<_>>()
        .join(", ")
}
