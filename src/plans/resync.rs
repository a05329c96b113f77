//! `resync`: one node becomes the serving primary's standby again (rewind, else re-clone).
//! The operation's name carries the node and the primary (`resync:old:new`), so `resume`
//! rebuilds the same plan after the primary changed in the journal's eyes.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};

use crate::engine::Plan;
use crate::spec::Spec;
use crate::steps::member::Member;
use crate::steps::resync::{KeepSettings, Reclone, Rejoin, Resync, Rewind};
use crate::steps::StepId;

pub const PREFIX: &str = "resync";

/// The steps of a re-sync, in order.
pub const STEPS: [StepId; 4] = [
    StepId::Settings,
    StepId::Rewind,
    StepId::Reclone,
    StepId::Rejoin,
];

/// Pure: the operation name, and back.
pub fn operation(node: &str, primary: &str) -> String {
    format!("{PREFIX}:{node}:{primary}")
}

pub fn parse(op: &str) -> Result<(String, String)> {
    match op.split(':').collect::<Vec<_>>()[..] {
        [PREFIX, node, primary] => Ok((node.into(), primary.into())),
        _ => bail!("{op:?} is not a re-sync"),
    }
}

pub fn plan(spec: &Arc<Spec>, node: &str, primary: &str) -> Result<Plan> {
    if node == primary {
        bail!("{node} is the serving primary; re-sync one of its standbys");
    }
    let member =
        |name: &str| Member::new(spec, name).map_err(|_| anyhow!("the spec has no node {name:?}"));
    let primary = member(primary)?;
    let r = Resync {
        m: member(node)?.with_upstream(&primary.node),
        primary,
    };
    let mut plan = Plan::new(operation(node, r.primary.name()));
    plan.push(KeepSettings(r.clone()));
    plan.push(Rewind(r.clone()));
    plan.push(Reclone(r.clone()));
    plan.push(Rejoin(r));
    Ok(plan)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_operation_name_carries_node_and_primary() {
        let op = super::operation("old", "new");
        assert_eq!(super::parse(&op).unwrap(), ("old".into(), "new".into()));
        assert!(super::parse("resync:old").is_err());
        assert!(super::parse("failover:new:old").is_err());
    }
}
