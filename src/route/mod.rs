//! The traffic layer: where clients connect, moved from the old primary to the new one.
//! One trait, one module per provider.

pub mod dns;
pub mod exec;
pub mod haproxy;
pub mod nat;
pub mod pgbouncer;
pub mod powerdns;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use serde_json::{json, Value};
use tokio_postgres::SimpleQueryMessage;

use crate::pg::connect;
use crate::spec::{Node, Route, Through};

#[async_trait]
pub trait Router: Send + Sync {
    fn describe(&self) -> String;
    /// Whether `hold` really holds clients (they wait instead of failing). Such a route can
    /// only be verified through after `release`.
    fn holds(&self) -> bool {
        false
    }
    /// The time limit the provider puts on each of its own calls, where the spec sets one (an
    /// `exec` plugin's `timeout`): a caller's bound on a try must not cut it shorter.
    fn own_limit(&self) -> Option<std::time::Duration> {
        None
    }
    /// What it points at now (journaled before any change).
    async fn current(&self) -> Result<Value>;
    /// Hold clients where the provider can. Idempotent.
    async fn hold(&self) -> Result<()> {
        Ok(())
    }
    /// Let held clients go on. Idempotent.
    async fn release(&self) -> Result<()> {
        Ok(())
    }
    /// What the release leaves to do once the clients go, outside the pause (PgBouncer: its
    /// configured `server_login_retry` back). Idempotent; run after every `release`.
    async fn settle(&self) -> Result<()> {
        Ok(())
    }
    /// The part of `point` that no client sees until `point` runs (a configuration file
    /// written, not loaded), done ahead: by `stage` for a route that holds clients (undone,
    /// by the same call towards `from`, with the staging), else beside the promotion once its
    /// point of no return is journaled, so that its round trips cost the write pause nothing. Only a
    /// shortcut: `point` does all of it itself when this did not run or failed. Default:
    /// nothing to prepare.
    async fn prepare_point(&self, _from: &Node, _to: &Node) -> Result<()> {
        Ok(())
    }
    /// Point at `to`, which replaces `from`. Idempotent: pointing again at `to` is a no-op.
    async fn point(&self, from: &Node, to: &Node) -> Result<Value>;
    /// Prove that the route reaches `to` as a writable primary: through the route itself where
    /// it has an application-facing endpoint, and in what the provider serves (DNS answers).
    async fn verify(&self, to: &Node) -> Result<Value>;
}

/// The routers of a spec (`kind = "none"` has none).
pub fn open(routes: &[Route]) -> Result<Vec<Box<dyn Router>>> {
    let mut out: Vec<Box<dyn Router>> = Vec::new();
    for r in routes {
        match r {
            Route::None => {}
            Route::PgBouncer(p) => out.push(Box::new(pgbouncer::PgBouncer::new((**p).clone())?)),
            Route::HaProxy(p) => out.push(Box::new(haproxy::HaProxy::new((**p).clone())?)),
            Route::Dns(p) => out.push(Box::new(dns::Dns::new((**p).clone())?)),
            Route::PowerDns(p) => out.push(Box::new(powerdns::PowerDns::new((**p).clone())?)),
            Route::Nat(p) => out.push(Box::new(nat::Nat::new((**p).clone())?)),
            Route::Exec(p) => out.push(Box::new(exec::Exec::new((**p).clone()))),
        }
    }
    Ok(out)
}

/// How long the verifying commit through a route may take.
const COMMIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Who answers a connection: enough to tell two servers apart even when they are copies of
/// one cluster (same system identifier) behind port-translating NAT (ports say nothing).
const IDENTITY_SQL: &str = "SELECT pg_is_in_recovery()::text, inet_server_port()::text, \
     pg_postmaster_start_time()::text, (SELECT system_identifier::text FROM pg_control_system())";

async fn identity(c: &tokio_postgres::Client, label: &str) -> Result<[String; 4]> {
    c.simple_query(IDENTITY_SQL)
        .await
        .with_context(|| format!("query through {label}"))?
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some(std::array::from_fn(|i| r.get(i).unwrap_or("").to_string()))
            }
            _ => None,
        })
        .ok_or_else(|| anyhow!("no answer through {label}"))
}

/// Connect through an application-facing endpoint and check it reaches `expected` as a
/// writable primary: not in recovery, the same server instance as a direct connection to
/// `expected` finds (system identifier and postmaster start time), and a commit returns. Simple protocol: poolers
/// in transaction mode cannot keep prepared statements.
pub async fn reaches(through: &Through, label: &str, expected: &Node) -> Result<Value> {
    let c = connect(&through.endpoint(label))
        .await
        .with_context(|| format!("connect through {label} ({})", through.conninfo))?;
    let [recovery, port, started, sysid] = identity(&c, label).await?;
    if recovery != "false" {
        bail!("through {label}, the server is in recovery: not the new primary");
    }
    let direct = connect(&expected.endpoint())
        .await
        .with_context(|| format!("connect to {} directly to compare", expected.name))?;
    let [_, _, want_started, want_sysid] = identity(&direct, &expected.name).await?;
    if (&started, &sysid) != (&want_started, &want_sysid) {
        bail!(
            "through {label}, another server answers than {} (it listens on port {port}, started {started}, system identifier {sysid}; {} started {want_started}, system identifier {want_sysid})",
            expected.name,
            expected.name
        );
    }
    // A commit, not only a SELECT: a primary whose every commit waits (synchronous standbys
    // it does not have, P9) answers queries but takes no write. txid_current() gives the
    // transaction an id, so its commit is a real one.
    match tokio::time::timeout(COMMIT_LIMIT, c.simple_query("SELECT txid_current()")).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!("through {label}, a commit fails: {e}"),
        Err(_) => bail!(
            "through {label}, a commit does not return within {COMMIT_LIMIT:?}: commits wait (synchronous_standby_names naming standbys that are not attached?)"
        ),
    }
    Ok(json!({
        "through": through.conninfo.to_string(), "primary": expected.name, "port": port,
        "postmaster_start_time": started, "system_identifier": sysid,
    }))
}
