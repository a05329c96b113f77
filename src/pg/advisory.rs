//! A session-level PostgreSQL advisory lock on the old primary while it is reachable: a second
//! `migrate` run against the same cluster from another machine fails before changing anything.

use anyhow::{bail, Result};
use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::{connect, Endpoint};

/// How long a lock held by another session is tried again before the run is refused.
const HOLDER_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

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
        // A run killed a moment ago (SIGKILL, a crashed bastion) still holds the lock until
        // its backend notices the closed socket and exits, which on a loaded server takes a
        // moment; a live run holds it for good. So try for a short while before refusing.
        let deadline = std::time::Instant::now() + HOLDER_GRACE;
        let got = loop {
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await?
                .get(0);
            if got || std::time::Instant::now() >= deadline {
                break got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
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
