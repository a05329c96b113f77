//! `migrate complete`: after the bake period, retire the rollback path (keep the old primary
//! as a standby or stop it, as the spec says), drop stale slots, close the migration.

use anyhow::{bail, Result};

use crate::cli::Global;
use crate::engine::replay::load;
use crate::engine::Outcome;
use crate::exit::Exit;
use crate::plans::{self, cutover};
use crate::ui::Ui;

pub async fn run(g: &Global, ui: &Ui) -> Result<Exit> {
    let s = super::run::open(g, cutover::COMPLETE, ui).await?;
    match load(&s.inv.state_dir)?.map(|l| l.state) {
        Some(state)
            if state.operation == cutover::CUTOVER
                && state.finished() == Some(Outcome::Completed) => {}
        Some(state) => bail!(
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
    super::run::start(ui, &s, plan, None).await
}
