//! Chained streaming replication: slot names, recovery settings, the lag monitor and the
//! catch-up gate.

pub mod gate;
pub mod lag;
pub mod retention;
pub mod topology;

/// The physical slot a node streams through, on its upstream.
pub fn slot_name(node: &str) -> String {
    format!("migrate_{node}")
}
