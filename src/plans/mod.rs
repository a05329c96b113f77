//! Plans: the ordered steps of each operation, built from the spec. `resume` and `rollback`
//! rebuild a run's plan from the operation name in its journal header.

#[cfg(feature = "failpoints")]
pub mod drill;
pub mod replicate;

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::engine::Plan;
use crate::spec::Spec;

pub fn build(operation: &str, spec: &Arc<Spec>) -> Result<Plan> {
    match operation {
        #[cfg(feature = "failpoints")]
        drill::OPERATION => drill::plan(spec),
        replicate::OPERATION => replicate::plan(spec),
        other => {
            let _ = spec;
            bail!("this build of migrate does not know the operation {other:?} recorded in the journal")
        }
    }
}
