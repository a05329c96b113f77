//! Exclusivity: a lock file in the state directory (non-blocking, holding the holder's pid).
//! The PostgreSQL advisory lock on the old primary is `crate::pg::advisory`.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use chrono::Local;
use nix::fcntl::{Flock, FlockArg};

use super::journal::ensure_state_dir;

/// Held for the whole run; released by the OS when the process ends, however it ends.
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    pub fn acquire(state_dir: &Path, command: &str) -> Result<StateLock> {
        ensure_state_dir(state_dir)?;
        let path = state_dir.join("lock");
        let file = super::state_dir::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("open lock file {}", path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                bail!(
                    "another run holds the lock ({}); wait for it to finish (`migrate status` shows its progress); nothing was changed",
                    if holder.is_empty() { "holder unknown".to_string() } else { holder.to_string() }
                );
            }
        };
        let info = format!(
            "pid {}, started {}, `{command}`",
            std::process::id(),
            Local::now().format("%Y-%m-%d %H:%M:%S")
        );
        lock.set_len(0)?;
        lock.rewind()?;
        lock.write_all(info.as_bytes())?;
        lock.sync_all()?;
        Ok(StateLock { _lock: lock })
    }
}
