//! Plans: the ordered steps of each operation, built from the spec. `resume` and `rollback`
//! rebuild a run's plan from the operation name in its journal header.

pub mod cutover;
#[cfg(feature = "failpoints")]
pub mod drill;
pub mod failover;
pub mod replicate;
pub mod resync;

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::engine::Plan;
use crate::spec::Spec;

pub fn build(operation: &str, spec: &Arc<Spec>) -> Result<Plan> {
    build_with(operation, spec, false)
}

/// `force_window`: go even outside the maintenance window (`--force-window`).
pub fn build_with(operation: &str, spec: &Arc<Spec>, force_window: bool) -> Result<Plan> {
    match operation {
        cutover::CUTOVER | cutover::SWITCHBACK => cutover::plan(spec, operation, force_window),
        cutover::COMPLETE => cutover::complete(spec),
        #[cfg(feature = "failpoints")]
        drill::OPERATION => drill::plan(spec),
        replicate::OPERATION => replicate::plan(spec),
        op if op.starts_with(resync::PREFIX) => {
            let (node, primary) = resync::parse(op)?;
            resync::plan(spec, &node, &primary)
        }
        op if op.starts_with(failover::PREFIX) => {
            let op = op
                .parse::<failover::FailoverOp>()
                .map_err(anyhow::Error::msg)?;
            failover::plan(spec, &op, None)
        }
        other => {
            let _ = spec;
            bail!("this build of migrate does not know the operation {other:?} recorded in the journal")
        }
    }
}
