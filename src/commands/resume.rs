//! `migrate resume`: continue an interrupted run from its journal, to the end of what the
//! operator asked for (a killed `cutover` is resumed to the end of the cutover, chain included),
//! under the same failure policy as the command that started it.

use anyhow::{bail, Result};

use crate::cli::{Global, ResumeArgs};
use crate::engine::replay::{load, Phase};
use crate::engine::Runner;
use crate::exit::Exit;
use crate::plans;
use crate::ui::Ui;

pub async fn run(g: &Global, args: &ResumeArgs, ui: &Ui) -> Result<Exit> {
    let s = super::run::open(g, "resume", ui).await?;
    let Some(state) = load(&s.inv.state_dir)?.map(|l| l.state) else {
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
    let inv = s.inv.clone();
    super::run::drive(ui, &s.spec, |events, mut signals| async move {
        let mut runner = Runner::resume(plan, inv, events)?;
        runner.run(Some(&mut signals)).await
    })
    .await
}
