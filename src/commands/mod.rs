//! One module per subcommand.

pub mod lab;
pub mod validate;

use std::path::PathBuf;

use anyhow::{anyhow, Result};

use crate::cli::Global;

/// The spec path from `-f/--spec` (or `MIGRATE_SPEC`), required by most commands.
pub fn spec_path(g: &Global) -> Result<PathBuf> {
    g.spec
        .clone()
        .ok_or_else(|| anyhow!("no spec given: pass -f/--spec FILE (or set MIGRATE_SPEC)"))
}
