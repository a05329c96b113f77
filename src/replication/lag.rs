//! The lag monitor: per hop and end to end, in bytes. It must not lie: an idle but connected
//! chain is 0 bytes behind (not "61 s behind"), and a dead or disconnected receiver is down,
//! never "0 lag".

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::pg::{connect, Endpoint, Lsn};

/// One replication hop, upstream → node.
#[derive(Debug, Clone)]
pub struct Hop {
    pub upstream: Endpoint,
    pub node: Endpoint,
    /// The name the node's walreceiver reports (`application_name`).
    pub application_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HopState {
    Streaming {
        /// Upstream's WAL position minus what the node has flushed.
        receive_behind_bytes: u64,
        /// Upstream's WAL position minus what the node has replayed.
        replay_behind_bytes: u64,
        /// Age of the node's last status reply to the upstream.
        reply_age_ms: Option<i64>,
    },
    Down {
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HopSample {
    pub upstream: String,
    pub node: String,
    #[serde(flatten)]
    pub state: HopState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeLag {
    pub node: String,
    pub replay_lsn: Option<Lsn>,
    /// The primary's current position minus this node's replay position; `None` if unknown.
    pub behind_primary_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainSample {
    pub at: DateTime<Utc>,
    pub primary_lsn: Option<Lsn>,
    pub hops: Vec<HopSample>,
    pub nodes: Vec<NodeLag>,
}

async fn with_timeout<T>(
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 5 s"))?
}

async fn lsn_of(c: &Client, sql: &str) -> anyhow::Result<Option<Lsn>> {
    let v: Option<String> = c.query_one(sql, &[]).await?.get(0);
    Ok(v.and_then(|s| s.parse().ok()))
}

/// The upstream's own WAL position: current on a primary, last received on a standby.
const UPSTREAM_LSN: &str = "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END)::text";

pub async fn sample_hop(hop: &Hop) -> HopSample {
    let down = |reason: String| HopSample {
        upstream: hop.upstream.name.clone(),
        node: hop.node.name.clone(),
        state: HopState::Down { reason },
    };
    let node = match with_timeout(connect(&hop.node)).await {
        Ok(c) => c,
        Err(e) => {
            return down(format!(
                "{} is unreachable: {}",
                hop.node.name,
                first_line(&format!("{e:#}"))
            ))
        }
    };
    let receiver = with_timeout(async {
        Ok(node
            .query_opt("SELECT status FROM pg_stat_wal_receiver", &[])
            .await?
            .map(|r| r.get::<_, String>(0)))
    })
    .await;
    match receiver {
        Ok(Some(status)) if status == "streaming" => {}
        Ok(Some(status)) => {
            return down(format!("the walreceiver on {} is {status}", hop.node.name))
        }
        Ok(None) => return down(format!("no walreceiver runs on {}", hop.node.name)),
        Err(e) => {
            return down(format!(
                "cannot read pg_stat_wal_receiver on {}: {e:#}",
                hop.node.name
            ))
        }
    }
    let up = match with_timeout(connect(&hop.upstream)).await {
        Ok(c) => c,
        Err(e) => {
            return down(format!(
                "{} is unreachable: {}",
                hop.upstream.name,
                first_line(&format!("{e:#}"))
            ))
        }
    };
    let row = with_timeout(async {
        let upstream_lsn = lsn_of(&up, UPSTREAM_LSN).await?;
        let row = up
            .query_opt(
                "SELECT state, flush_lsn::text, replay_lsn::text,
                        (extract(epoch FROM clock_timestamp() - reply_time) * 1000)::bigint
                   FROM pg_stat_replication WHERE application_name = $1 ORDER BY backend_start DESC LIMIT 1",
                &[&hop.application_name],
            )
            .await?;
        Ok((upstream_lsn, row))
    })
    .await;
    let (upstream_lsn, row) = match row {
        Ok(v) => v,
        Err(e) => {
            return down(format!(
                "cannot read pg_stat_replication on {}: {e:#}",
                hop.upstream.name
            ))
        }
    };
    let Some(row) = row else {
        return down(format!(
            "{} is not connected to {}",
            hop.node.name, hop.upstream.name
        ));
    };
    let state: String = row.get(0);
    if state != "streaming" {
        return down(format!(
            "{} reports the connection from {} as {state}",
            hop.upstream.name, hop.node.name
        ));
    }
    let parse = |i: usize| {
        row.get::<_, Option<String>>(i)
            .and_then(|s| s.parse::<Lsn>().ok())
    };
    let (Some(upstream_lsn), Some(flush), Some(replay)) = (upstream_lsn, parse(1), parse(2)) else {
        return down(format!(
            "{} reports no positions for {} yet",
            hop.upstream.name, hop.node.name
        ));
    };
    let receive_behind_bytes = upstream_lsn.bytes_after(flush);
    let reply_age_ms: Option<i64> = row.get(3);
    if let Some(reason) = stalled(receive_behind_bytes, reply_age_ms) {
        return down(format!(
            "{} {reason} from {}: the link between them may be cut",
            hop.node.name, hop.upstream.name
        ));
    }
    HopSample {
        upstream: hop.upstream.name.clone(),
        node: hop.node.name.clone(),
        state: HopState::Streaming {
            receive_behind_bytes,
            replay_behind_bytes: upstream_lsn.bytes_after(replay),
            reply_age_ms,
        },
    }
}

/// How long a standby may leave WAL waiting unconfirmed before its hop counts as down.
pub const STALL: Duration = Duration::from_secs(1);

/// Pure: whether a hop that `pg_stat_replication` still shows as streaming has in fact
/// stalled. A standby confirms each write it receives at once, so WAL waiting (`behind` > 0)
/// with its last reply older than [`STALL`] means nothing arrives: a cut link keeps the row
/// "streaming" until `wal_sender_timeout` (a minute), with a stale position. An idle hop has
/// nothing waiting and is never stalled, however old its reply (replies then come every
/// `wal_receiver_status_interval`).
pub fn stalled(behind: u64, reply_age_ms: Option<i64>) -> Option<String> {
    let age = reply_age_ms?;
    (behind > 0 && age > STALL.as_millis() as i64).then(|| {
        format!(
            "has confirmed nothing for {:.1} s while {} wait",
            age as f64 / 1000.0,
            crate::units::format_bytes(behind)
        )
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// Sample every hop, and every node's replay position against the primary's current position.
pub async fn sample_chain(primary: &Endpoint, hops: &[Hop]) -> ChainSample {
    let primary_lsn = match with_timeout(connect(primary)).await {
        Ok(c) => lsn_of(&c, "SELECT pg_current_wal_lsn()::text")
            .await
            .ok()
            .flatten(),
        Err(_) => None,
    };
    let mut samples = Vec::new();
    let mut nodes = Vec::new();
    for hop in hops {
        samples.push(sample_hop(hop).await);
        let replay = match with_timeout(connect(&hop.node)).await {
            Ok(c) => lsn_of(&c, "SELECT pg_last_wal_replay_lsn()::text")
                .await
                .ok()
                .flatten(),
            Err(_) => None,
        };
        nodes.push(NodeLag {
            node: hop.node.name.clone(),
            replay_lsn: replay,
            behind_primary_bytes: match (primary_lsn, replay) {
                (Some(p), Some(r)) => Some(p.bytes_after(r)),
                _ => None,
            },
        });
    }
    ChainSample {
        at: Utc::now(),
        primary_lsn,
        hops: samples,
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hop_with_wal_waiting_and_no_recent_reply_has_stalled() {
        assert!(stalled(8192, Some(4_000)).unwrap().contains("4.0 s"));
        // Idle: nothing waits, the reply may be old.
        assert_eq!(stalled(0, Some(9_000)), None);
        // Busy and confirming.
        assert_eq!(stalled(1 << 20, Some(20)), None);
        // No reply yet: not judged.
        assert_eq!(stalled(8192, None), None);
    }
}
