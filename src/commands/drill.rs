//! `migrate drill` (feature `failpoints`, hidden): run the engine drill plan.

use anyhow::Result;

use crate::cli::Global;
use crate::exit::Exit;
use crate::plans;
use crate::ui::Ui;

pub async fn run(g: &Global, ui: &Ui) -> Result<Exit> {
    let s = super::run::open(g, "drill", ui).await?;
    let plan = plans::build(plans::drill::OPERATION, &s.spec)?;
    super::run::start(ui, &s, plan, None).await
}
