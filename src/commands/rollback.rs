//! `migrate rollback`: undo a run that has not passed its point of no return.

use anyhow::{bail, Result};

use crate::cli::Global;
use crate::engine::runner::current_run;
use crate::engine::Runner;
use crate::exit::Exit;
use crate::plans;
use crate::ui::Ui;

pub async fn run(g: &Global, ui: &Ui) -> Result<Exit> {
    let s = super::run::open(g, "rollback", ui).await?;
    let Some((state, _)) = current_run(&s.inv.state_dir)? else {
        bail!(
            "there is no run to roll back in {}",
            s.inv.state_dir.display()
        );
    };
    if let Some(o) = state.finished() {
        bail!(
            "run {} already finished ({o:?}); there is nothing to roll back",
            state.run_id
        );
    }
    let plan = plans::build(&state.operation, &s.spec)?;
    super::run::drive(ui, |events| async move {
        let mut runner = Runner::resume(plan, s.inv.clone(), events)?;
        runner.rollback().await
    })
    .await
}
