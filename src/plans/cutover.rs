//! `cutover` (old primary → target) and `switchback` (the same switchover back: the rollback
//! after the point of no return).
//!
//! A cutover is one plan: the chain (built, or verified and adopted), then the switchover. A
//! failure while building the chain stops for the operator (the clones are worth keeping); a
//! failure in the switchover before the promotion is undone at once, down to the chain, so the
//! old primary serves again and the next attempt finds the chain in place.

use std::sync::Arc;

use anyhow::Result;

use crate::engine::Plan;
use crate::spec::{Role, Spec};
use crate::steps::member::Member;
use crate::steps::switchover::{
    Certificate, Direction, Fence, Followers, HaPause, HaResume, Hold, Others, Promote, Proof,
    Release, Reverse, Stage, StopPrimary, VerifyPrimary, WaitForWindow,
};
use crate::steps::StepId;

pub const CUTOVER: &str = "cutover";
pub const SWITCHBACK: &str = "switchback";
pub const COMPLETE: &str = "complete";

pub fn complete(spec: &Arc<Spec>) -> Result<Plan> {
    use crate::steps::complete::{CheckCutOver, DropStaleSlots, RetireOld};
    let mut plan = Plan::new(COMPLETE);
    plan.push(CheckCutOver {
        new_primary: Member::new(spec, &spec.target().name)?,
    });
    plan.push(RetireOld {
        old: Member::new(spec, &spec.primary().name)?,
        retire: spec.cutover.retire,
    });
    plan.push(DropStaleSlots::for_spec(spec)?);
    Ok(plan)
}

pub fn direction(spec: &Spec, operation: &str) -> Result<Direction> {
    let (from, to) = if operation == CUTOVER {
        (spec.primary().name.clone(), spec.target().name.clone())
    } else {
        (spec.target().name.clone(), spec.primary().name.clone())
    };
    let followers = spec
        .nodes
        .iter()
        .filter(|n| n.role == Role::Replica)
        .map(|n| Member::new(spec, &n.name))
        .collect::<Result<Vec<_>>>()?;
    Ok(Direction {
        from: Member::new(spec, &from)?,
        to: Member::new(spec, &to)?,
        followers,
        routes: spec.routes.clone(),
        // The proof's time box bounds every single call as well: nothing inside the pause may
        // wait longer for one answer than the whole proof may take.
        limit: spec.cutover.proof_timeout,
    })
}

pub fn plan(spec: &Arc<Spec>, operation: &str, force_window: bool) -> Result<Plan> {
    let d = direction(spec, operation)?;
    let cutover = operation == CUTOVER;
    let mut plan = Plan::new(operation);
    if cutover {
        plan.steps = super::replicate::chain_steps(spec)?;
    }
    plan.abort_from_here();
    plan.push(WaitForWindow {
        window: if cutover { spec.cutover.window } else { None },
        force: force_window,
    });
    if cutover {
        plan.push(super::replicate::catch_up(spec, StepId::Gate));
    }
    let gates: Vec<_> = spec.hooks.iter().filter(|h| h.gate).cloned().collect();
    if !gates.is_empty() {
        plan.push(crate::steps::approve::Approve {
            hooks: gates,
            spec: spec.name.clone(),
            operation: operation.into(),
            from: d.from.name().into(),
            to: d.to.name().into(),
        });
    }
    // Outside the write pause: no manager may act on the fenced, stopped primary.
    if d.has_ha() {
        plan.push(HaPause(d.clone()));
    }
    plan.push(Hold {
        d: d.clone(),
        timeout: spec.cutover.hold_timeout,
        policy: spec.cutover.hold,
    });
    // The soft fence's own step of earlier versions, for their journals only.
    plan.retire(Fence(d.clone()));
    plan.push(StopPrimary(d.clone()));
    plan.push(Proof {
        d: d.clone(),
        timeout: spec.cutover.proof_timeout,
    });
    plan.push(Stage(d.clone()));
    plan.push(Promote {
        d: d.clone(),
        timeout: spec.cutover.promote_timeout,
        others: Others::Staged,
    });
    plan.push(VerifyPrimary(d.clone()));
    plan.push(Release(d.clone()));
    // After the release, outside the write pause: the rollback path is in place before the
    // first write lands on the new primary (stage's slot there keeps every byte from the
    // fork, the old primary can only ever start as its standby), and its proof, the old
    // primary streaming on the new timeline, needs no client held. Inside the pause it cost
    // the old primary's start and its first stream: 330-920 ms at 30 ms RTT (issue 19).
    plan.push(Reverse(d.clone()));
    plan.push(Followers(d.clone()));
    if spec.cutover.resync == crate::spec::ResyncMode::Auto {
        // After the release: an old primary that cannot follow is re-synced before the
        // certificate checks the rollback path again.
        use crate::steps::resync::{KeepSettings, Reclone, Rejoin, Resync, Rewind};
        let r = Resync {
            m: d.demoted(),
            primary: d.to.clone(),
        };
        plan.push(KeepSettings(r.clone()));
        plan.push(Rewind(r.clone()));
        plan.push(Reclone(r.clone()));
        plan.push(Rejoin(r));
    }
    if d.has_ha() {
        // After any re-sync, so repmgr registers the old primary once it streams.
        plan.push(HaResume(d.clone()));
    }
    plan.push(Certificate {
        d,
        state_dir: spec.state_dir.clone(),
        operation: operation.into(),
    });
    Ok(plan)
}
