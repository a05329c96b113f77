//! `cutover` (old primary → target) and `switchback` (the same switchover back: the rollback
//! after the point of no return).

use std::sync::Arc;

use anyhow::Result;

use crate::engine::{Plan, Step};
use crate::spec::{Role, Spec};
use crate::steps::member::Member;
use crate::steps::switchover::{
    Certificate, Direction, Fence, Followers, Hold, Promote, Proof, Release, Reverse, Stage,
    StopPrimary, VerifyPrimary, WaitForWindow,
};

pub const CUTOVER: &str = "cutover";
pub const SWITCHBACK: &str = "switchback";
pub const COMPLETE: &str = "complete";

pub fn complete(spec: &Arc<Spec>) -> Result<Plan> {
    use crate::steps::complete::{CheckCutOver, DropStaleSlots, RetireOld};
    let steps: Vec<Box<dyn Step>> = vec![
        Box::new(CheckCutOver {
            new_primary: Member::new(spec, &spec.target().name)?,
        }),
        Box::new(RetireOld {
            old: Member::new(spec, &spec.primary().name)?,
            retire: spec.cutover.retire,
        }),
        Box::new(DropStaleSlots::for_spec(spec)?),
    ];
    Ok(Plan {
        operation: COMPLETE.into(),
        steps,
    })
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
    })
}

pub fn plan(spec: &Arc<Spec>, operation: &str, force_window: bool) -> Result<Plan> {
    let d = direction(spec, operation)?;
    let window = if operation == CUTOVER {
        spec.cutover.window
    } else {
        None
    };
    let mut steps: Vec<Box<dyn Step>> = vec![Box::new(WaitForWindow {
        window,
        force: force_window,
    })];
    if operation == CUTOVER {
        steps.push(Box::new(super::replicate::catch_up(spec, "gate")));
    }
    steps.extend([
        Box::new(Hold(d.clone())) as Box<dyn Step>,
        Box::new(Fence(d.clone())),
        Box::new(StopPrimary(d.clone())),
        Box::new(Proof {
            d: d.clone(),
            timeout: spec.cutover.proof_timeout,
        }),
        Box::new(Stage(d.clone())),
        Box::new(Promote {
            d: d.clone(),
            timeout: spec.cutover.promote_timeout,
        }),
        Box::new(Reverse(d.clone())),
        Box::new(VerifyPrimary(d.clone())),
        Box::new(Release(d.clone())),
        Box::new(Followers(d.clone())),
        Box::new(Certificate {
            d,
            state_dir: spec.state_dir.clone(),
            operation: operation.into(),
        }),
    ]);
    Ok(Plan {
        operation: operation.into(),
        steps,
    })
}
