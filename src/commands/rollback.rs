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
    let target = s.spec.target();
    let reached = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let c = crate::pg::connect(&target.endpoint()).await?;
        crate::pg::sql::in_recovery(&c).await
    })
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 10 s")));
    let target_is_primary = matches!(reached, Ok(false));
    // The cutover promoted the target: finished, or past its point of no return.
    let switched = state.operation == cutover::CUTOVER
        && (state.finished() == Some(crate::engine::Outcome::Completed)
            || state.point_of_no_return.is_some() && state.finished().is_none());
    if let (true, Err(e)) = (switched, &reached) {
        bail!(
            "{}",
            lost_new_primary(&target.name, &s.spec.primary().name, &format!("{e:#}"))
        );
    }
    if state.operation.starts_with(crate::plans::failover::PREFIX) {
        if state.point_of_no_return.is_some()
            || state.finished() == Some(crate::engine::Outcome::Completed)
        {
            bail!(
                "run {} was a failover past its promotion: there is no way back to a primary that was lost. Re-sync the lost node (`migrate resync -f SPEC NODE`); moving back to it later is a new, planned migration; nothing was changed",
                state.run_id
            );
        }
        if state.finished().is_some() {
            bail!(
                "run {} ({}) already ended before its promotion; nothing to roll back (the lost primary stays fenced)",
                state.run_id, state.operation
            );
        }
    }
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
    super::run::drive(ui, &s.spec, |events, _| async move {
        Runner::resume(plan, inv, events)?.rollback().await
    })
    .await
}

/// Pure: the answer when the run switched to the target and the target does not answer. A
/// switchback needs it (it is fenced, stopped and proven to have handed over every byte), so
/// this is the emergency, not a rollback.
fn lost_new_primary(target: &str, old: &str, why: &str) -> String {
    let why = why.lines().next().unwrap_or_default();
    format!(
        "{target}, the new primary, cannot be reached ({why}); a switchback fences, stops and proves it, so it cannot run. If {target} is lost, this is an emergency failover, not a rollback: `migrate failover --to {old}` promotes {old} and shows what it can lose before you confirm (runbooks/dr-activation.md). Nothing was changed"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_lost_new_primary_is_named_with_the_way_out() {
        let m = super::lost_new_primary("new", "old", "connection refused\nmore");
        assert!(
            m.contains("new, the new primary, cannot be reached (connection refused)"),
            "{m}"
        );
        assert!(m.contains("migrate failover --to old"), "{m}");
        assert!(!m.contains("more"), "{m}");
    }
}
