//! `replicate`: build the chain (old → target → cascades) and wait until it has caught up.

use std::sync::Arc;

use anyhow::Result;

use crate::engine::{Plan, Step};
use crate::replication::lag::Hop;
use crate::spec::{Role, Spec};
use crate::steps::chain::{CatchUp, Clone, Prepare, Slot, Start};
use crate::steps::member::Member;

pub const OPERATION: &str = "replicate";

/// The chain-building steps, reused by the cutover plan.
pub fn chain_steps(spec: &Spec) -> Result<Vec<Box<dyn Step>>> {
    let primary = spec.primary().endpoint();
    let mut steps: Vec<Box<dyn Step>> = Vec::new();
    for node in spec.nodes.iter().filter(|n| n.role != Role::Primary) {
        let m = Member::new(spec, &node.name)?;
        steps.push(Box::new(Prepare {
            m: m.clone(),
            primary: primary.clone(),
        }));
        steps.push(Box::new(Slot(m.clone())));
        steps.push(Box::new(Clone(m.clone())));
        steps.push(Box::new(Start(m)));
    }
    steps.push(Box::new(catch_up(spec, "catchup")));
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

pub fn catch_up(spec: &Spec, id: &'static str) -> CatchUp {
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
    Ok(Plan {
        operation: OPERATION.into(),
        steps: chain_steps(spec)?,
    })
}
