//! The lag monitor: per hop and end to end, in bytes. It must not lie: an idle but connected
//! chain is 0 bytes behind (not "61 s behind"), and a dead or disconnected receiver is down,
//! never "0 lag".

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::pg::{session, Endpoint, Lsn};

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

/// The upstream's own WAL position: current on a primary, last received on a standby.
const UPSTREAM_LSN: &str = "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END)::text";

pub async fn sample_hop(hop: &Hop) -> HopSample {
    let down = |reason: String| HopSample {
        upstream: hop.upstream.name.clone(),
        node: hop.node.name.clone(),
        state: HopState::Down { reason },
    };
    // Kept connections (see `pg::session`): a sample every few hundred ms would otherwise
    // set up a connection per node and hop each time (four round trips each across a WAN).
    // A connection is kept only once its questions were answered; any error or time-out
    // drops it, and the next sample connects afresh.
    let node = match with_timeout(session(&hop.node)).await {
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
        Ok(Some(status)) if status == "streaming" => node.keep(),
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
    let up = match with_timeout(session(&hop.upstream)).await {
        Ok(c) => c,
        Err(e) => {
            return down(format!(
                "{} is unreachable: {}",
                hop.upstream.name,
                first_line(&format!("{e:#}"))
            ))
        }
    };
    let first = match read_walsender(&up, &hop.application_name).await {
        Ok(Some(w)) => w,
        Ok(None) => {
            return down(format!(
                "{} is not connected to {}",
                hop.node.name, hop.upstream.name
            ))
        }
        Err(e) => {
            return down(format!(
                "cannot read pg_stat_replication on {}: {e:#}",
                hop.upstream.name
            ))
        }
    };
    if first.state != "streaming" {
        return down(format!(
            "{} reports the connection from {} as {}",
            hop.upstream.name, hop.node.name, first.state
        ));
    }
    let mut look = first;
    if let Some(reason) = look.stall() {
        // A quiet hop's last reply is old by nature; WAL sent a moment ago shows as sent and
        // unconfirmed until the reply comes back. Look once more before calling it cut.
        tokio::time::sleep(STALL_SECOND_LOOK).await;
        match read_walsender(&up, &hop.application_name).await {
            Ok(Some(again)) if !again.confirmed_since(&look) => {
                return down(format!(
                    "{} {reason} from {}: the link between them may be cut",
                    hop.node.name, hop.upstream.name
                ))
            }
            Ok(Some(again)) => look = again,
            _ => {
                return down(format!(
                    "{} {reason} from {}: the link between them may be cut",
                    hop.node.name, hop.upstream.name
                ))
            }
        }
    }
    let (Some(upstream_lsn), Some(flush), Some(replay)) =
        (look.upstream_lsn, look.flush, look.replay)
    else {
        return down(format!(
            "{} reports no positions for {} yet",
            hop.upstream.name, hop.node.name
        ));
    };
    up.keep();
    HopSample {
        upstream: hop.upstream.name.clone(),
        node: hop.node.name.clone(),
        state: HopState::Streaming {
            receive_behind_bytes: upstream_lsn.bytes_after(flush),
            replay_behind_bytes: upstream_lsn.bytes_after(replay),
            reply_age_ms: look.reply_age_ms,
        },
    }
}

/// One look at a standby's walsender on its upstream.
struct WalSender {
    state: String,
    /// The upstream's own position: current on a primary, last received on a standby.
    upstream_lsn: Option<Lsn>,
    sent: Option<Lsn>,
    flush: Option<Lsn>,
    replay: Option<Lsn>,
    reply_age_ms: Option<i64>,
}

impl WalSender {
    /// Judged on what the walsender has sent, not on the upstream's current position: WAL
    /// written but not yet flushed there (a quiet primary's background records) is not sent
    /// and draws no reply, which once made a healthy hop look cut.
    fn stall(&self) -> Option<String> {
        let unconfirmed = match (self.sent, self.flush) {
            (Some(sent), Some(flush)) => sent.bytes_after(flush),
            _ => 0,
        };
        stalled(unconfirmed, self.reply_age_ms)
    }

    /// Whether the standby confirmed what `before` had sent, or replied since.
    fn confirmed_since(&self, before: &WalSender) -> bool {
        let caught_up = matches!((self.flush, before.sent), (Some(f), Some(s)) if f >= s);
        let replied = matches!((self.reply_age_ms, before.reply_age_ms), (Some(now), Some(then)) if now < then);
        caught_up || replied
    }
}

async fn read_walsender(up: &Client, application_name: &str) -> anyhow::Result<Option<WalSender>> {
    with_timeout(async {
        // Both questions in one round trip: pipelined on the connection, and the walsender's
        // row asked with its parameter's type given (`query_typed`: no separate prepare).
        let walsender = async {
            let rows = up
                .query_typed(
                    "SELECT state, sent_lsn::text, flush_lsn::text, replay_lsn::text,
                            (extract(epoch FROM clock_timestamp() - reply_time) * 1000)::bigint
                       FROM pg_stat_replication WHERE application_name = $1 ORDER BY backend_start DESC LIMIT 1",
                    &[(&application_name, tokio_postgres::types::Type::TEXT)],
                )
                .await?;
            anyhow::Ok(rows.into_iter().next())
        };
        let (upstream_lsn, row) =
            tokio::join!(crate::pg::sql::lsn(up, UPSTREAM_LSN), walsender);
        let (upstream_lsn, row) = (upstream_lsn?, row?);
        Ok(row.map(|row| {
            let lsn = |i: usize| {
                row.get::<_, Option<String>>(i)
                    .and_then(|s| s.parse::<Lsn>().ok())
            };
            WalSender {
                state: row.get(0),
                upstream_lsn,
                sent: lsn(1),
                flush: lsn(2),
                replay: lsn(3),
                reply_age_ms: row.get(4),
            }
        }))
    })
    .await
}

/// How long to wait before the second look at a hop that seems stalled: well past a round
/// trip on any WAN, well inside [`STALL`].
const STALL_SECOND_LOOK: Duration = Duration::from_millis(400);

/// How long a standby may leave WAL waiting unconfirmed before its hop counts as down.
pub const STALL: Duration = Duration::from_secs(1);

/// Pure: whether a hop that `pg_stat_replication` still shows as streaming has in fact
/// stalled. A standby confirms each write it receives at once, so WAL sent and unconfirmed
/// (`behind` > 0: `sent_lsn` past `flush_lsn`) with its last reply older than [`STALL`] means
/// nothing arrives: a cut link keeps the row
/// "streaming" until `wal_sender_timeout` (a minute), with a stale position. An idle hop has
/// nothing waiting and is never stalled, however old its reply (replies then come every
/// `wal_receiver_status_interval`).
pub fn stalled(behind: u64, reply_age_ms: Option<i64>) -> Option<String> {
    let age = reply_age_ms?;
    (behind > 0 && age > STALL.as_millis() as i64).then(|| {
        format!(
            "has confirmed nothing for {:.1} s of {} sent",
            age as f64 / 1000.0,
            crate::units::format_bytes(behind)
        )
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// One position asked of `ep` on its kept connection (dropped on an error or a time-out).
async fn lsn_on(ep: &Endpoint, sql: &str) -> Option<Lsn> {
    let c = with_timeout(session(ep)).await.ok()?;
    let lsn = with_timeout(crate::pg::sql::lsn(&c, sql)).await.ok()?;
    c.keep();
    lsn
}

/// Sample every hop, and every node's replay position against the primary's current position.
pub async fn sample_chain(primary: &Endpoint, hops: &[Hop]) -> ChainSample {
    let primary_lsn = lsn_on(primary, "SELECT pg_current_wal_lsn()::text").await;
    let mut samples = Vec::new();
    let mut nodes = Vec::new();
    for hop in hops {
        samples.push(sample_hop(hop).await);
        let replay = lsn_on(&hop.node, "SELECT pg_last_wal_replay_lsn()::text").await;
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

    fn look(sent: u64, flush: u64, reply_age_ms: i64) -> WalSender {
        WalSender {
            state: "streaming".into(),
            upstream_lsn: Some(Lsn(sent)),
            sent: Some(Lsn(sent)),
            flush: Some(Lsn(flush)),
            replay: Some(Lsn(flush)),
            reply_age_ms: Some(reply_age_ms),
        }
    }

    #[test]
    fn a_quiet_hop_just_sent_wal_is_cleared_by_the_second_look() {
        // WAL written but not sent yet (upstream ahead of sent) is never a stall.
        let mut quiet = look(100, 100, 9_000);
        quiet.upstream_lsn = Some(Lsn(196));
        assert_eq!(quiet.stall(), None);
        let first = look(200, 100, 9_000);
        assert!(first.stall().is_some());
        // The reply came: confirmed up to what was sent, or a fresher reply.
        assert!(look(200, 200, 20).confirmed_since(&first));
        assert!(look(300, 150, 50).confirmed_since(&first));
        // A cut link: nothing confirmed, the reply only older.
        assert!(!look(300, 100, 9_400).confirmed_since(&first));
    }
}
