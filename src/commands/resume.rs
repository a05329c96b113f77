//! `migrate resume`: continue an interrupted run from its journal.

use anyhow::{bail, Result};

use crate::cli::{Global, ResumeArgs};
use crate::engine::replay::Phase;
use crate::engine::runner::current_run;
use crate::engine::Runner;
use crate::exit::Exit;
use crate::plans::{self, cutover};
use crate::ui::Ui;

pub async fn run(g: &Global, args: &ResumeArgs, ui: &Ui) -> Result<Exit> {
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
    let plan = plans::build_with(&state.operation, &s.spec, args.force_window)?;
    if state.operation == cutover::CUTOVER || state.operation == cutover::SWITCHBACK {
        return super::cutover::execute_with_abort(ui, plan, s.inv.clone(), None, false).await;
    }
    super::run::drive(ui, |events| async move {
        let mut runner = Runner::resume(plan, s.inv.clone(), events)?;
        runner.execute().await
    })
    .await
}
