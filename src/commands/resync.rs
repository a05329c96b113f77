//! `migrate resync -f SPEC NODE`: make NODE the serving primary's standby again (pg_rewind,
//! else a re-clone), as its own journaled, resumable run.

use anyhow::{bail, Result};

use crate::cli::{Global, ResyncArgs};
use crate::exit::Exit;
use crate::plans::failover::current_primary;
use crate::ui::Ui;

pub async fn run(g: &Global, args: &ResyncArgs, ui: &Ui) -> Result<Exit> {
    if !g.yes && (!ui.is_terminal() || ui.json()) {
        bail!("a re-sync discards what the node wrote on its own: run it on a terminal, or pass --yes; nothing was changed");
    }
    let s = super::run::open(g, "resync", ui).await?;
    let last = super::run::last_finished_run(&s, "a re-sync")?;
    let primary = current_primary(last.as_ref(), &s.spec);
    let plan = crate::plans::resync::plan(&s.spec, &args.node, &primary)?;
    if !g.yes {
        let ok = dialoguer::Confirm::new()
            .with_prompt(format!(
                "Re-sync {node} as a standby of {primary}: pg_rewind (a re-clone if that is impossible); what {node} wrote on its own is discarded. Proceed?",
                node = args.node
            ))
            .default(false)
            .interact()?;
        if !ok {
            bail!("not confirmed; nothing was changed");
        }
    }
    super::run::start(ui, &s, plan, None).await
}
