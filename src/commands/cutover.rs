//! `migrate cutover`: one run that builds or verifies the chain, then switches over. The
//! operator confirms first; a failure before the point of no return is undone at once (the old
//! primary serves again, unfenced; the chain stays), after it the run stops for the operator.

use anyhow::{anyhow, bail, Result};

use crate::cli::{CutoverArgs, Global};
use crate::engine::replay::load;
use crate::exit::Exit;
use crate::pg::{connect, sql};
use crate::plans::{self, cutover::CUTOVER};
use crate::steps::StepId;
use crate::ui::Ui;

pub async fn run(g: &Global, args: &CutoverArgs, ui: &Ui) -> Result<Exit> {
    if !g.yes && (!ui.is_terminal() || ui.json()) {
        bail!("the cutover needs a confirmation: run it on a terminal, or pass --yes for automation; nothing was changed");
    }
    if let Some(step) = &args.pause_before {
        if let Some(why) = pause_inside_the_hold(step, args.keep_clients_held) {
            bail!("{why}; nothing was changed");
        }
    }
    let s = super::run::open(g, CUTOVER, ui).await?;
    if let Some(state) = load(&s.inv.state_dir)?.map(|l| l.state) {
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
        if !sql::in_recovery(&c).await? {
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
    confirm(g, ui, &s.spec)?;
    if args.keep_clients_held && args.pause_before.is_some() {
        ui.warn(format!(
            "--pause-before {} --keep-clients-held: the run stops with every client held and writes stopped until `migrate resume -f {}`",
            args.pause_before.as_deref().unwrap_or_default(),
            s.inv.spec_arg
        ));
    }
    let plan = plans::build_with(CUTOVER, &s.spec, args.force_window)?;
    super::run::start(ui, &s, plan, args.pause_before.clone()).await
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

/// Pure: why a pause before `step` is refused (it would stop with clients held), unless the
/// operator said `--keep-clients-held`.
fn pause_inside_the_hold(step: &str, keep_clients_held: bool) -> Option<String> {
    let inside = StepId::pause()
        .iter()
        .skip(1) // before `hold` nothing is held yet
        .any(|s| s.to_string() == step);
    (inside && !keep_clients_held).then(|| {
        format!(
            "--pause-before {step} stops inside the write pause: every client stays held and no write is possible until `migrate resume`; add --keep-clients-held if that is what you want"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_inside_the_hold_needs_keep_clients_held() {
        assert!(pause_inside_the_hold("hold", false).is_none());
        assert!(pause_inside_the_hold("window", false).is_none());
        assert!(pause_inside_the_hold("followers", false).is_none());
        assert!(pause_inside_the_hold("reverse", false).is_none());
        for step in ["stop", "proof", "stage", "promote", "route", "release"] {
            assert!(pause_inside_the_hold(step, false).is_some(), "{step}");
            assert!(pause_inside_the_hold(step, true).is_none(), "{step}");
        }
    }
}
