//! `migrate failover --to NODE`: the emergency promotion when the primary is lost. The loss
//! is measured and shown before anything changes; the operator confirms with that figure on
//! screen, or gives `--accept-loss` with `--yes`. The run measures again after the fence and
//! holds the figure to what was accepted.

use anyhow::{bail, Result};

use crate::cli::{FailoverArgs, Global};
use crate::engine::replay::{load, RunState};
use crate::exit::Exit;
use crate::plans::failover::{self, current_primary, FailoverOp};
use crate::steps::failover::{failover_certificate_path, loss_verdict, FailoverDoc, Seen};
use crate::steps::switchover::guard::{self, Writable};
use crate::steps::StepId;
use crate::ui::Ui;

pub async fn run(g: &Global, args: &FailoverArgs, ui: &Ui) -> Result<Exit> {
    if !g.yes && (!ui.is_terminal() || ui.json()) {
        bail!("a failover needs a confirmation: run it on a terminal, or pass --yes (with --accept-loss unless it is proven lossless); nothing was changed");
    }
    let s = super::run::open(g, "failover", ui).await?;
    // An open run cannot go on without its primary: the failover abandons it (its journal is
    // kept; nothing of it is undone) and says so before anything changes.
    let last = load(&s.inv.state_dir)?.map(|l| l.state);
    let abandons = last
        .as_ref()
        .filter(|st| st.finished().is_none())
        .map(|st| {
            format!(
                "run {} ({}) is open and will be abandoned (its journal kept)",
                st.run_id, st.operation
            )
        });
    let lost = current_primary(last.as_ref(), &s.spec);
    let mut op = FailoverOp {
        lost: lost.clone(),
        to: args.to.clone(),
        accept_loss: args.accept_loss,
        no_fence: args.no_fence,
    };
    let last_known = last.as_ref().and_then(|st| promoted_at(st, &lost));
    let f = failover::context(&s.spec, &op, last_known.clone())?;
    // Before anything changes: a primary that answers is not lost.
    if let Writable::Yes = guard::writable(&f.d.from).await {
        bail!(
            "{lost} answers as a writable primary: it is not lost. A planned switch that loses nothing is `migrate rollback` (or `migrate cutover`); nothing was changed"
        );
    }
    let preview = crate::steps::failover::measure(&f, last_known.clone()).await?;
    let words = crate::steps::failover::describe_loss(&preview, &lost, &op.to);
    let exact = preview.evidence.exact();
    ui.line(format!("Failover from {lost} (lost) to {}: {words}", op.to));
    if let Some(a) = &abandons {
        ui.warn(a);
    }
    match (args.accept_loss, g.yes) {
        (Some(a), _) => {
            if let Err(why) = loss_verdict(preview.loss_bytes, exact, Some(a)) {
                bail!("{why}; nothing was changed");
            }
        }
        (None, true) => {
            if let Err(why) = loss_verdict(preview.loss_bytes, exact, None) {
                bail!("{why}; nothing was changed");
            }
        }
        (None, false) => {
            let loss = if exact && preview.loss_bytes == 0 {
                "nothing acknowledged is lost".to_string()
            } else if exact {
                format!(
                    "up to {} bytes of acknowledged WAL are LOST",
                    preview.loss_bytes
                )
            } else {
                format!(
                    "at least {} bytes of WAL are LOST, maybe more",
                    preview.loss_bytes
                )
            };
            let ok = dialoguer::Confirm::new()
                .with_prompt(format!(
                    "Fail over: fence {lost}, promote {to}; {loss}. Proceed?",
                    to = op.to
                ))
                .default(false)
                .interact()?;
            if !ok {
                bail!("not confirmed; nothing was changed");
            }
            if !(exact && preview.loss_bytes == 0) {
                op.accept_loss = Some(preview.loss_bytes);
            }
        }
    }
    let plan = failover::plan(&s.spec, &op, last_known)?;
    let exit = super::run::start_with(ui, &s, plan, None, abandons.is_some()).await?;
    let Some(st) = load(&s.inv.state_dir)?.map(|l| l.state) else {
        return Ok(exit);
    };
    let path = failover_certificate_path(&s.inv.state_dir, &st.run_id);
    let doc = std::fs::read(&path)
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(serde_json::from_slice::<FailoverDoc>(&b)?))?;
    report(ui, &doc, &path);
    resync_left_behind(ui, &s, &doc).await?;
    Ok(exit)
}

/// The nodes a failover left unable to follow the new primary: the standbys it could not
/// repoint, then the lost primary (unless its host did not answer). Each becomes a re-sync,
/// its own journaled run, as `cutover.resync` says.
async fn resync_left_behind(ui: &Ui, s: &super::run::Session, doc: &FailoverDoc) -> Result<()> {
    use crate::spec::ResyncMode;
    let mut nodes: Vec<String> = doc.not_following.iter().map(|b| b.node.clone()).collect();
    if !doc.fenced.trusted_without_proof() {
        nodes.push(doc.lost.clone());
    }
    let interactive = ui.is_terminal() && !ui.json();
    for node in nodes {
        let command = format!("migrate resync -f {} {node}", s.inv.spec_arg);
        let go = match s.spec.cutover.resync {
            ResyncMode::Auto => true,
            ResyncMode::Ask if interactive => dialoguer::Confirm::new()
                .with_prompt(format!(
                    "Re-sync {node} as a standby of {} now (pg_rewind, else a re-clone)?",
                    doc.to
                ))
                .default(true)
                .interact()?,
            ResyncMode::Ask | ResyncMode::Never => false,
        };
        if !go {
            ui.line(format!("to re-sync {node} later: {command}"));
            continue;
        }
        ui.line(format!("re-syncing {node} as a standby of {}", doc.to));
        let plan = crate::plans::resync::plan(&s.spec, &node, &doc.to)?;
        if let Err(e) = super::run::start(ui, s, plan, None).await {
            bail!(
                "{to} serves, but re-syncing {node} stopped: {e:#}",
                to = doc.to
            );
        }
    }
    Ok(())
}

/// The promotion of `node` by the run `st`, if it made it the primary: the newest position it
/// is known to have had (its WAL just after leaving recovery).
fn promoted_at(st: &RunState, node: &str) -> Option<Seen> {
    let promote = st.step(&StepId::Promote.to_string())?;
    let lsn = promote
        .output
        .as_ref()?
        .get("lsn")?
        .as_str()?
        .parse()
        .ok()?;
    Some(Seen {
        node: node.into(),
        lsn,
        at: promote.finished_at?,
        source: format!("the promotion of {node} in run {}", st.run_id),
    })
}

fn report(ui: &Ui, doc: &FailoverDoc, path: &std::path::Path) {
    ui.line(format!(
        "{to} is the primary (timeline {tli}); loss window: {q} {n} bytes; certificate {p}",
        to = doc.to,
        tli = doc.new_timeline,
        q = if doc.loss_exact {
            "at most"
        } else {
            "at least"
        },
        n = doc.loss_bytes,
        p = path.display()
    ));
    for b in &doc.not_following {
        ui.warn(format!("{} does not follow {}: {}", b.node, doc.to, b.why));
    }
    ui.warn(format!(
        "{} is fenced ({}); it is no rollback path until it is re-synced as a standby of {}",
        doc.lost, doc.fence_detail, doc.to
    ));
}
