//! `migrate lab up|status|down`.

use anyhow::{Context, Result};

use crate::cli::{LabAction, LinkAction};
use crate::exit::Exit;
use crate::lab::{Lab, LabStatus};
use crate::ui::Ui;

pub async fn run(action: &LabAction, ui: &Ui) -> Result<Exit> {
    match action {
        LabAction::Up(args) => {
            if args.wan.wan().is_some() && args.hosts != crate::lab::Hosts::Ssh {
                anyhow::bail!("--rtt, --bandwidth and --loss shape the links between the sites of --hosts ssh; add --hosts ssh");
            }
            let lab = Lab::new_with_major(
                &args.dir.dir,
                args.base_port,
                args.layout,
                args.hosts,
                args.pg,
            )?;
            let status = lab.up().await?;
            for n in &status.notes {
                ui.line(n);
            }
            if let Some(w) = args.wan.wan() {
                lab.shape(&w).await?;
                ui.line(describe(&w));
            }
            if args.pgbackrest {
                lab.seed_pgbackrest().await?;
                ui.line(format!(
                    "pgBackRest repository: stanza {} in {} (the spec clones from it)",
                    crate::lab::pgbackrest::STANZA,
                    crate::lab::pgbackrest::config_path(&lab).display()
                ));
            }
            show(ui, &status);
            if !ui.json() {
                ui.line("");
                ui.line(format!(
                    "application endpoint (PgBouncer): PGPASSFILE={} psql -h {} -p {} -U postgres app",
                    status.passfile.display(),
                    status.pgbouncer_host,
                    status.pgbouncer_port
                ));
                ui.line(format!("spec for this lab: {}", status.spec.display()));
            }
            Ok(Exit::Done)
        }
        LabAction::Image(args) => {
            for major in &args.pg {
                crate::lab::compose::release_of(*major)?;
            }
            crate::lab::compose::engine_running().await?;
            let context = tempfile::tempdir().context("a folder for the build context")?;
            crate::lab::compose::write_build_context(context.path())?;
            // Side by side: most of the time is debootstrap and apt downloading.
            let mut builds = tokio::task::JoinSet::new();
            for major in args.pg.clone() {
                let dir = context.path().to_path_buf();
                builds.spawn(async move { crate::lab::compose::ensure_image(major, &dir).await });
            }
            while let Some(notes) = builds.join_next().await {
                for n in notes?? {
                    ui.line(n);
                }
            }
            Ok(Exit::Done)
        }
        LabAction::Link(args) => {
            let lab = Lab::open(&args.dir.dir)?;
            let w = match (args.action, args.places.as_slice()) {
                (LinkAction::Show, []) => lab.wan()?,
                (LinkAction::Cut | LinkAction::Restore, [a, b]) => {
                    lab.set_link(a, b, args.action == LinkAction::Cut).await?
                }
                (LinkAction::Show, _) => anyhow::bail!("`lab link show` takes no place"),
                _ => anyhow::bail!(
                    "name the link's two places: {}",
                    crate::lab::wan::PLACES.join(", ")
                ),
            };
            if ui.json() {
                ui.emit_json(&w);
            } else {
                ui.line(describe(&w));
            }
            Ok(Exit::Done)
        }
        LabAction::Delayer(a) => {
            crate::lab::wan::delay_packets(
                a.queue,
                std::time::Duration::from_micros(a.delay_us),
                &a.ready,
            )?;
            Ok(Exit::Done)
        }
        LabAction::Status(d) => {
            let status = Lab::open(&d.dir)?.status().await?;
            show(ui, &status);
            Ok(Exit::Done)
        }
        LabAction::Down(args) => {
            let d = &args.dir;
            let lab = match Lab::open(&d.dir) {
                Ok(lab) => lab,
                // Nothing was ever started there.
                Err(_) if !d.dir.join("lab-state.json").exists() => {
                    ui.line(format!("no lab in {}; nothing to stop", d.dir.display()));
                    return Ok(Exit::Done);
                }
                Err(e) => return Err(e),
            };
            lab.down().await?;
            ui.line(format!("lab in {} stopped", lab.dir.display()));
            if args.unregister && lab.debian.is_some() {
                lab.unregister()?;
                ui.line("its clusters are removed from /etc/postgresql");
            }
            Ok(Exit::Done)
        }
    }
}

/// One line on the WAN in force.
fn describe(w: &crate::lab::wan::Wan) -> String {
    let mut parts = vec![format!("rtt {} ms", w.rtt_us as f64 / 1000.0)];
    if let Some(b) = &w.bandwidth {
        parts.push(format!("uplinks {b}"));
    }
    if w.loss_pct > 0.0 {
        parts.push(format!("loss {}%", w.loss_pct));
    }
    let cuts: Vec<String> = w.cuts.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    parts.push(if cuts.is_empty() {
        "no link cut".into()
    } else {
        format!("cut: {}", cuts.join(", "))
    });
    format!("WAN between the lab's places: {}", parts.join(", "))
}

fn show(ui: &Ui, s: &LabStatus) {
    if ui.json() {
        ui.emit_json(s);
        return;
    }
    let mut rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                format!("{:?}", n.role).to_lowercase(),
                n.port.to_string(),
                n.state.clone(),
                n.serving_as.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    rows.push(vec![
        "pgbouncer".into(),
        "app endpoint".into(),
        s.pgbouncer_port.to_string(),
        if s.pgbouncer_running {
            "running"
        } else {
            "stopped"
        }
        .into(),
        "-".into(),
    ]);
    ui.table(&["node", "role", "port", "state", "serving as"], &rows);
}
