//! `migrate cutover`: build or verify the chain (a `replicate` run), confirm, then the
//! journaled switchover. A failure before the point of no return is undone at once (the old
//! primary serves again, unfenced); after it, the run stops for the operator.

use anyhow::{anyhow, bail, Result};

use crate::cli::{CutoverArgs, Global};
use crate::engine::events::RunEvent;
use crate::engine::journal::Outcome;
use crate::engine::runner::{current_run, Paused};
use crate::engine::{Plan, Runner};
use crate::exit::{Aborted, Exit};
use crate::pg::connect;
use crate::plans::{self, cutover::CUTOVER};
use crate::ui::Ui;

pub async fn run(g: &Global, args: &CutoverArgs, ui: &Ui) -> Result<Exit> {
    if !g.yes && (!ui.is_terminal() || ui.json()) {
        bail!("the cutover needs a confirmation: run it on a terminal, or pass --yes for automation; nothing was changed");
    }
    let s = super::run::open(g, CUTOVER, ui).await?;
    if let Some((state, _)) = current_run(&s.inv.state_dir)? {
        if state.finished().is_none() {
            bail!(
                "run {} ({}) is not finished: continue it with `migrate resume -f {a}` or undo it with `migrate rollback -f {a}`",
                state.run_id,
                state.operation,
                a = s.inv.spec_arg
            );
        }
    }
    let target = s.spec.target();
    if let Ok(c) = connect(&target.endpoint()).await {
        if !c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await?
            .get::<_, bool>(0)
        {
            bail!(
                "{} is already a primary: the cutover has been done (`migrate rollback` goes back)",
                target.name
            );
        }
    }
    let now = crate::preflight::observe(&s.spec).await;
    crate::preflight::record::require_current(
        &s.inv.state_dir,
        &s.inv.spec_hash,
        &now,
        &s.inv.spec_arg,
    )?;
    // The chain first, as its own run: an aborted cutover never tears it down.
    let chain = plans::build(plans::replicate::OPERATION, &s.spec)?;
    let inv = s.inv.clone();
    super::run::drive(ui, |events| async move {
        Runner::start(chain, inv, events)?.execute().await
    })
    .await?;

    confirm(g, ui, &s.spec)?;
    let plan = plans::build_with(CUTOVER, &s.spec, args.force_window)?;
    execute_with_abort(ui, plan, s.inv.clone(), args.pause_before.clone(), true).await
}

fn confirm(g: &Global, ui: &Ui, spec: &crate::spec::Spec) -> Result<()> {
    if g.yes {
        return Ok(());
    }
    if !ui.is_terminal() || ui.json() {
        bail!(
            "the cutover needs a confirmation: run it on a terminal, or pass --yes for automation"
        );
    }
    let window = match &spec.cutover.window {
        Some(w) => format!("{} – {}", w.start.to_rfc3339(), w.end.to_rfc3339()),
        None => "none set".into(),
    };
    let prompt = format!(
        "Cut over: fence and stop {from}, promote {to} once it provably has every byte, make {from} its standby.\n  window: {window}\n  routes: {routes}\nProceed?",
        from = spec.primary().name,
        to = spec.target().name,
        routes = if spec.routes.is_empty() { "none".to_string() } else { format!("{} configured", spec.routes.len()) },
    );
    let yes = dialoguer::Confirm::new()
        .with_prompt(prompt)
        .default(false)
        .interact()
        .map_err(|e| anyhow!("confirmation: {e}"))?;
    if !yes {
        bail!("not confirmed; nothing was changed");
    }
    Ok(())
}

/// Execute a run; if it fails before its point of no return (and was not just paused), roll
/// it back at once and report the abort.
pub async fn execute_with_abort(
    ui: &Ui,
    plan: Plan,
    inv: crate::engine::Invocation,
    pause_before: Option<String>,
    fresh: bool,
) -> Result<Exit> {
    super::run::drive(ui, |events| async move {
        let mut runner = if fresh { Runner::start(plan, inv, events)? } else { Runner::resume(plan, inv, events)? };
        runner.pause_before(pause_before)?;
        let past = runner.point_of_no_return_flag();
        let notices = runner.events();
        // Ctrl-C before the point of no return aborts (the step in flight is left in doubt and
        // compensated like every other); after it, it is ignored until the run is safe.
        let result = {
            let exec = runner.execute();
            tokio::pin!(exec);
            loop {
                tokio::select! {
                    r = &mut exec => break r,
                    _ = tokio::signal::ctrl_c() => {
                        if past.load(std::sync::atomic::Ordering::SeqCst) {
                            let _ = notices.send(RunEvent::Notice {
                                message: "interrupt ignored: past the point of no return, the run goes on until it is safe".into(),
                            });
                        } else {
                            break Err(anyhow!("interrupted by the operator"));
                        }
                    }
                }
            }
        };
        match result {
            Ok(o) => Ok(o),
            Err(e) if e.chain().any(|c| c.is::<Paused>()) => Err(e),
            Err(e) if runner.state().point_of_no_return.is_some() => Err(e),
            Err(e) => match runner.rollback().await {
                Ok(Outcome::RolledBack) => {
                    // The run is undone already: the "resume or roll back" advice no longer applies.
                    let cause = format!("{e:#}").replace(&format!("; {}", runner.continue_hint()), "");
                    Err(anyhow!(Aborted(format!(
                        "aborted before the point of no return, and undone: {cause}. The old primary serves again; run the command again when the cause is fixed"
                    ))))
                }
                Ok(_) => Err(e),
                Err(undo) => Err(e.context(format!("aborting also failed: {undo:#}"))),
            },
        }
    })
    .await
}
