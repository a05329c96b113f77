//! One module per subcommand.

pub mod complete;
pub mod cutover;
pub mod docs;
#[cfg(feature = "failpoints")]
pub mod drill;
pub mod failover;
pub mod lab;
pub mod metrics;
pub mod plan;
pub mod rehearse;
pub mod replicate;
pub mod resume;
pub mod resync;
pub mod rollback;
pub mod run;
pub mod status;
pub mod validate;
pub mod watch;

use std::path::PathBuf;

use anyhow::{anyhow, Result};

use crate::cli::Global;

/// The spec path from `-f/--spec` (or `MIGRATE_SPEC`), required by most commands.
pub fn spec_path(g: &Global) -> Result<PathBuf> {
    g.spec
        .clone()
        .ok_or_else(|| anyhow!("no spec given: pass -f/--spec FILE (or set MIGRATE_SPEC)"))
}
