//! `migrate rollback`: before a run's point of no return, undo its steps (latest first); after
//! a completed cutover, switch back: the same zero-loss switchover in the other direction.

use anyhow::{bail, Result};

use crate::cli::Global;
use crate::engine::replay::load;
use crate::engine::Runner;
use crate::exit::Exit;
use crate::plans::{self, cutover};
use crate::ui::Ui;

pub async fn run(g: &Global, ui: &Ui) -> Result<Exit> {
    let s = super::run::open(g, "rollback", ui).await?;
    let Some(state) = load(&s.inv.state_dir)?.map(|l| l.state) else {
        bail!(
            "there is no run to roll back in {}",
            s.inv.state_dir.display()
        );
    };
    // A finished run: if the target serves as primary (a completed cutover, or a switchback
    // that was aborted), going back is a switchback.
    let target_is_primary = match state.finished() {
        Some(_) => match crate::pg::connect(&s.spec.target().endpoint()).await {
            Ok(c) => !crate::pg::sql::in_recovery(&c).await?,
            Err(_) => false,
        },
        None => false,
    };
    if state.operation == cutover::COMPLETE {
        bail!("the rollback path was retired by `migrate complete` (run {}); going back now is a new migration", state.run_id);
    }
    match state.finished() {
        Some(_) if target_is_primary => {
            if !g.yes && (!ui.is_terminal() || ui.json()) {
                bail!("switching back needs a confirmation: run it on a terminal, or pass --yes");
            }
            if !g.yes {
                let ok = dialoguer::Confirm::new()
                    .with_prompt(format!(
                        "Switch back: fence {to}, prove {from} has every byte, promote {from}, make {to} its standby. Proceed?",
                        to = s.spec.target().name,
                        from = s.spec.primary().name
                    ))
                    .default(false)
                    .interact()?;
                if !ok {
                    bail!("not confirmed; nothing was changed");
                }
            }
            let plan = plans::build(cutover::SWITCHBACK, &s.spec)?;
            return super::run::start(ui, &s, plan, None).await;
        }
        Some(o) => bail!(
            "run {} ({}) already finished ({o:?}); there is nothing to roll back",
            state.run_id,
            state.operation
        ),
        None => {}
    }
    if let Some(p) = &state.point_of_no_return {
        bail!(
            "run {} passed its point of no return ({p}); finish it with `migrate resume -f {a}`, then `migrate rollback -f {a}` switches back",
            state.run_id,
            a = s.inv.spec_arg
        );
    }
    let plan = plans::build(&state.operation, &s.spec)?;
    let inv = s.inv.clone();
    super::run::drive(ui, |events, _| async move {
        Runner::resume(plan, inv, events)?.rollback().await
    })
    .await
}
