//! WAL retained by replication slots, and the WAL disk's free space: what a long bake has to
//! watch (a slot whose consumer is down keeps every segment from its `restart_lsn` on;
//! without `max_slot_wal_keep_size` nothing bounds it).

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::host::Cmd;
use crate::pg::connect;
use crate::spec::{Node, Retention};

const ASK: Duration = Duration::from_secs(5);

/// The node's own WAL position: current on a primary, the furthest received or replayed on a
/// standby (what its slots' `restart_lsn` trail).
const SLOTS_SQL: &str = "
SELECT slot_name::text, active, wal_status,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery()
                            THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
                            ELSE pg_current_wal_lsn() END, restart_lsn)::bigint
  FROM pg_replication_slots ORDER BY slot_name";

#[derive(Debug, Clone, Serialize)]
pub struct SlotRetention {
    pub slot: String,
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
    /// WAL kept for it, from its `restart_lsn` to the node's position; `None` when it has
    /// reserved none.
    pub retained_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRetention {
    pub node: String,
    pub slots: Vec<SlotRetention>,
    /// Free space on the file system of the node's `pg_wal`.
    pub free_wal_bytes: Option<u64>,
    /// Whether the slots' WAL is past `bake.max_retained` (`None`: not known).
    pub over_limit: Option<bool>,
    /// Why something above is missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl NodeRetention {
    /// The most WAL any one slot keeps (slots share segments, so this is what they hold).
    pub fn retained(&self) -> u64 {
        self.slots
            .iter()
            .filter_map(|s| s.retained_bytes)
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RetentionSample {
    pub at: DateTime<Utc>,
    pub limit: String,
    pub nodes: Vec<NodeRetention>,
}

impl RetentionSample {
    pub fn over_limit(&self) -> Vec<&NodeRetention> {
        self.nodes
            .iter()
            .filter(|n| n.over_limit == Some(true))
            .collect()
    }
}

/// Every node's slots and free WAL disk, each call under a time limit (a node down is a
/// problem in its row, not an error).
pub async fn sample(nodes: &[Node], limit: Retention) -> RetentionSample {
    let mut out = Vec::new();
    for node in nodes {
        let mut problems = Vec::new();
        let slots = match tokio::time::timeout(ASK, slots(node)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                problems.push(first_line(&format!("slots: {e:#}")));
                Vec::new()
            }
            Err(_) => {
                problems.push(format!("slots: no answer within {ASK:?}"));
                Vec::new()
            }
        };
        let free_wal_bytes = match tokio::time::timeout(ASK, free_wal(node)).await {
            Ok(Ok(b)) => Some(b),
            Ok(Err(e)) => {
                problems.push(first_line(&format!("free WAL disk: {e:#}")));
                None
            }
            Err(_) => {
                problems.push(format!("free WAL disk: no answer within {ASK:?}"));
                None
            }
        };
        let mut row = NodeRetention {
            node: node.name.clone(),
            slots,
            free_wal_bytes,
            over_limit: None,
            problems,
        };
        row.over_limit = if row.slots.is_empty() {
            Some(false)
        } else {
            limit.exceeded(row.retained(), row.free_wal_bytes)
        };
        out.push(row);
    }
    RetentionSample {
        at: Utc::now(),
        limit: limit.to_string(),
        nodes: out,
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

async fn slots(node: &Node) -> Result<Vec<SlotRetention>> {
    let c = connect(&node.endpoint()).await?;
    let rows = c.query(SLOTS_SQL, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| SlotRetention {
            slot: r.get(0),
            active: r.get(1),
            wal_status: r.get(2),
            retained_bytes: r.get::<_, Option<i64>>(3).map(|b| b.max(0) as u64),
        })
        .collect())
}

pub async fn free_wal(node: &Node) -> Result<u64> {
    let wal = node.data_dir.join("pg_wal");
    let shown = wal.display().to_string();
    let host = node.host.open()?;
    let out = host
        .run_ok(&Cmd::new(["df", "-P", "-k", "--", &shown]))
        .await
        .with_context(|| format!("df {shown}"))?;
    parse_df(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| anyhow!("df {shown}: unexpected output"))
}

/// Pure: the available bytes in `df -P -k` output (header, then one line; a long device name
/// never wraps with -P).
pub fn parse_df(text: &str) -> Option<u64> {
    let line = text.lines().nth(1)?;
    let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_from_df() {
        let text = "Filesystem     1024-blocks      Used Available Capacity Mounted on\n/dev/sda1        102400000  51200000  46080000      53% /\n";
        assert_eq!(parse_df(text), Some(46_080_000 * 1024));
        assert_eq!(parse_df("Filesystem\n"), None);
        assert_eq!(parse_df(""), None);
        assert_eq!(parse_df("h\n/dev/x 1 2 lots 3% /\n"), None);
    }

    #[test]
    fn a_node_holds_what_its_largest_slot_holds() {
        let slot = |b| SlotRetention {
            slot: "s".into(),
            active: false,
            wal_status: None,
            retained_bytes: b,
        };
        let row = NodeRetention {
            node: "old".into(),
            slots: vec![slot(Some(10)), slot(None), slot(Some(30))],
            free_wal_bytes: None,
            over_limit: None,
            problems: vec![],
        };
        assert_eq!(row.retained(), 30);
    }
}
