//! `migrate replicate`: build the chain (slots, base backups, cascades) and wait until it has
//! caught up. Journaled; `resume` continues it and `rollback` removes what it created.

use anyhow::Result;

use crate::cli::Global;
use crate::exit::Exit;
use crate::plans;
use crate::ui::Ui;

pub async fn run(g: &Global, ui: &Ui) -> Result<Exit> {
    let s = super::run::open(g, "replicate", ui).await?;
    let plan = plans::build(plans::replicate::OPERATION, &s.spec)?;
    super::run::start(ui, &s, plan, None).await
}
