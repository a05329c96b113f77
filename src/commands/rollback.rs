//! `migrate rollback`: before a run's point of no return, undo its steps (latest first); after
//! a completed cutover, switch back: the same zero-loss switchover in the other direction.

use anyhow::{bail, Result};

use crate::cli::Global;
use crate::engine::runner::current_run;
use crate::engine::Runner;
use crate::exit::Exit;
use crate::plans::{self, cutover};
use crate::ui::Ui;

pub async fn run(g: &Global, ui: &Ui) -> Result<Exit> {
    let s = super::run::open(g, "rollback", ui).await?;
    let Some((state, _)) = current_run(&s.inv.state_dir)? else {
        bail!(
            "there is no run to roll back in {}",
            s.inv.state_dir.display()
        );
    };
    // A finished run: if the target serves as primary (a completed cutover, or a switchback
    // that was aborted), going back is a switchback.
    let target_is_primary = match state.finished() {
        Some(_) => match crate::pg::connect(&s.spec.target().endpoint()).await {
            Ok(c) => !c
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await?
                .get::<_, bool>(0),
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
            return super::cutover::execute_with_abort(ui, plan, s.inv.clone(), None, true).await;
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
    super::run::drive(ui, |events| async move {
        let mut runner = Runner::resume(plan, s.inv.clone(), events)?;
        runner.rollback().await
    })
    .await
}
