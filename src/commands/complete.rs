//! `migrate complete`: after the bake period, retire the rollback path (keep the old primary
//! as a standby or stop it, as the spec says), drop stale slots, close the migration.

use anyhow::{bail, Result};

use crate::cli::Global;
use crate::engine::journal::Outcome;
use crate::engine::runner::current_run;
use crate::engine::Runner;
use crate::exit::Exit;
use crate::plans::{self, cutover};
use crate::ui::Ui;

pub async fn run(g: &Global, ui: &Ui) -> Result<Exit> {
    let s = super::run::open(g, cutover::COMPLETE, ui).await?;
    match current_run(&s.inv.state_dir)? {
        Some((state, _))
            if state.operation == cutover::CUTOVER
                && state.finished() == Some(Outcome::Completed) => {}
        Some((state, _)) => bail!(
            "`migrate complete` follows a completed cutover; the current run is {} ({}, {})",
            state.run_id,
            state.operation,
            state
                .finished()
                .map(|o| format!("{o:?}"))
                .unwrap_or_else(|| "not finished".into())
        ),
        None => bail!("there is no cutover to complete"),
    }
    let plan = plans::build(cutover::COMPLETE, &s.spec)?;
    super::run::drive(ui, |events| async move {
        Runner::start(plan, s.inv.clone(), events)?.execute().await
    })
    .await
}
