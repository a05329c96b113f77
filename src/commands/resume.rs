//! `migrate resume`: continue an interrupted run from its journal.

use anyhow::{bail, Result};

use crate::cli::Global;
use crate::engine::replay::Phase;
use crate::engine::runner::current_run;
use crate::engine::Runner;
use crate::exit::Exit;
use crate::plans;
use crate::ui::Ui;

pub async fn run(g: &Global, ui: &Ui) -> Result<Exit> {
    let s = super::run::open(g, "resume", ui).await?;
    let Some((state, _)) = current_run(&s.inv.state_dir)? else {
        bail!("there is no run to resume in {}", s.inv.state_dir.display());
    };
    if state.phase == Phase::RollingBack {
        bail!(
            "run {} is rolling back; finish it with `migrate rollback -f {}`",
            state.run_id,
            s.inv.spec_arg
        );
    }
    let plan = plans::build(&state.operation, &s.spec)?;
    super::run::drive(ui, |events| async move {
        let mut runner = Runner::resume(plan, s.inv.clone(), events)?;
        runner.execute().await
    })
    .await
}
