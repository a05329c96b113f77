//! `replicate`: build the chain (old → target → cascades) and wait until it has caught up.

use std::sync::Arc;

use anyhow::Result;

use crate::engine::step::{boxed, DynStep};
use crate::engine::Plan;
use crate::replication::lag::Hop;
use crate::spec::{Role, Spec};
use crate::steps::chain::{CatchUp, Clone, Prepare, Slot, Start};
use crate::steps::member::Member;
use crate::steps::StepId;

pub const OPERATION: &str = "replicate";

/// The chain-building steps for every standby (target first, then its cascades), reused by
/// the cutover plan; without the catch-up wait, which each plan adds where it belongs.
pub fn chain_steps(spec: &Spec) -> Result<Vec<Box<dyn DynStep>>> {
    let primary = spec.primary().endpoint();
    let mut steps = Vec::new();
    for node in spec.nodes.iter().filter(|n| n.role != Role::Primary) {
        let m = Member::new(spec, &node.name)?;
        steps.push(boxed(Prepare {
            m: m.clone(),
            primary: primary.clone(),
        }));
        steps.push(boxed(Slot(m.clone())));
        steps.push(boxed(Clone(m.clone())));
        steps.push(boxed(Start(m)));
    }
    Ok(steps)
}

pub fn hops(spec: &Spec) -> Vec<Hop> {
    spec.nodes
        .iter()
        .filter_map(|n| {
            let up = spec.node(n.upstream.as_deref()?)?;
            Some(Hop {
                upstream: up.endpoint(),
                node: n.endpoint(),
                application_name: n.name.clone(),
            })
        })
        .collect()
}

pub fn catch_up(spec: &Spec, id: StepId) -> CatchUp {
    CatchUp {
        id,
        primary: spec.primary().endpoint(),
        hops: hops(spec),
        threshold: spec.cutover.lag_threshold,
        stable_for: spec.cutover.lag_stable_for,
        timeout: spec.cutover.catchup_timeout,
    }
}

pub fn plan(spec: &Arc<Spec>) -> Result<Plan> {
    let mut plan = Plan::new(OPERATION);
    plan.steps = chain_steps(spec)?;
    plan.push(catch_up(spec, StepId::Catchup));
    Ok(plan)
}
