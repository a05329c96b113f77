//! Exclusivity: a lock file in the state directory (non-blocking, holding the holder's pid) and
//! a PostgreSQL advisory lock on the old primary while it is reachable.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use chrono::{Local, Utc};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::journal::ensure_state_dir;
use crate::pg::{connect, Endpoint};

/// Held for the whole run; released by the OS when the process ends, however it ends.
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    pub fn acquire(state_dir: &Path, command: &str) -> Result<StateLock> {
        ensure_state_dir(state_dir)?;
        let path = state_dir.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
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

/// A session-level advisory lock held on a dedicated connection for the whole run.
pub struct AdvisoryLock {
    _client: Client,
    pub key: i64,
}

/// The advisory-lock key for a run name: the first 8 bytes of SHA-256("migrate:" + name).
pub fn advisory_key(run_name: &str) -> i64 {
    let d = Sha256::digest(format!("migrate:{run_name}").as_bytes());
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

#[derive(Debug)]
pub enum AdvisoryOutcome {
    Held(AdvisoryLock),
    /// The node could not be reached; the run goes on with the lock file alone.
    Unreachable(String),
}

impl AdvisoryLock {
    pub async fn acquire(ep: &Endpoint, run_name: &str) -> Result<AdvisoryOutcome> {
        let client = match connect(ep).await {
            Ok(c) => c,
            Err(e) => return Ok(AdvisoryOutcome::Unreachable(format!("{e:#}"))),
        };
        let key = advisory_key(run_name);
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?
            .get(0);
        if !got {
            let holder = client
                .query_opt(
                    "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.client_addr::text, 'local'), a.backend_start
                       FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                      WHERE l.locktype = 'advisory' AND l.granted
                        AND l.classid::bigint = (($1::bigint >> 32) & 4294967295) AND l.objid::bigint = ($1::bigint & 4294967295) AND l.objsubid = 1",
                    &[&key],
                )
                .await?
                .map(|r| {
                    let started: chrono::DateTime<Utc> = r.get(3);
                    format!(
                        "backend pid {}, application {:?}, from {}, since {}",
                        r.get::<_, i32>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                        started.format("%Y-%m-%d %H:%M:%S UTC")
                    )
                })
                .unwrap_or_else(|| "holder unknown".into());
            bail!(
                "another migrate run for {run_name:?} holds the advisory lock on {} ({holder}); only one run at a time may work on this cluster; nothing was changed",
                ep.name
            );
        }
        Ok(AdvisoryOutcome::Held(AdvisoryLock {
            _client: client,
            key,
        }))
    }
}

impl std::fmt::Debug for AdvisoryLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdvisoryLock({})", self.key)
    }
}
