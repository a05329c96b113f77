//! HA managers in the migrated cluster (repmgr's repmgrd, Patroni). A manager that is not
//! paused sees the fenced, stopped primary as a failure: Patroni restarts or fails it over,
//! repmgrd promotes one of its standbys. migrate pauses every declared manager before the
//! hold and hands the new topology back to it after the release.
//!
//! The decisions (who registers as what, which cluster follows which primary) are pure
//! functions here; `repmgr.rs` and `patroni.rs` speak to each manager.

pub mod patroni;
pub mod repmgr;

use serde::{Deserialize, Serialize};

/// Where a node streams from after the switchover; `upstream = None` is the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub node: String,
    pub upstream: Option<String>,
}

fn primary(placements: &[Placement]) -> Option<&str> {
    placements
        .iter()
        .find(|p| p.upstream.is_none())
        .map(|p| p.node.as_str())
}

/// What repmgr is told once the switchover is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum RepmgrAfter {
    /// Record the new primary, then each declared standby under its upstream, then unpause.
    Register {
        primary: String,
        /// (node, its upstream)
        standbys: Vec<(String, String)>,
    },
    /// repmgr cannot describe the new topology; its daemons stay paused (unpaused, a repmgrd
    /// that finds no primary it knows would promote one of its own standbys).
    LeavePaused { reason: String },
}

/// Pure: how repmgr learns the new topology. `declared` are the nodes with
/// `ha = { kind = "repmgr" }`.
pub fn repmgr_after(declared: &[String], placements: &[Placement]) -> RepmgrAfter {
    let is_declared = |n: &str| declared.iter().any(|d| d == n);
    let Some(primary) = primary(placements) else {
        return RepmgrAfter::LeavePaused {
            reason: "no node is the primary".into(),
        };
    };
    if !is_declared(primary) {
        return RepmgrAfter::LeavePaused {
            reason: format!(
                "the new primary {primary} is not a repmgr node (no ha = {{ kind = \"repmgr\" }}): repmgr cannot manage a cluster whose primary it does not know; stop repmgrd on {} or register {primary} with repmgr, then `repmgr service unpause`",
                declared.join(", ")
            ),
        };
    }
    let mut standbys = Vec::new();
    for p in placements.iter().filter(|p| is_declared(&p.node)) {
        let Some(up) = &p.upstream else { continue };
        if !is_declared(up) {
            return RepmgrAfter::LeavePaused {
                reason: format!(
                    "{} now streams from {up}, which is not a repmgr node: register {up} with repmgr, then `repmgr standby register --force` on {} and `repmgr service unpause`",
                    p.node, p.node
                ),
            };
        }
        standbys.push((p.node.clone(), up.clone()));
    }
    RepmgrAfter::Register {
        primary: primary.to_string(),
        standbys,
    }
}

/// Pure: whom a Patroni cluster with these members follows after the switchover. `slot_of`
/// names the slot a node streams through from its upstream.
pub fn patroni_leader(
    members: &[String],
    placements: &[Placement],
    primary_address: (&str, u16),
    slot_of: impl Fn(&str) -> String,
) -> patroni::Leader {
    let Some(primary) = primary(placements) else {
        return patroni::Leader::Own;
    };
    if members.iter().any(|m| m == primary) {
        return patroni::Leader::Own;
    }
    // The member that streams straight from the primary leads the standby cluster.
    let slot = placements
        .iter()
        .find(|p| members.contains(&p.node) && p.upstream.as_deref() == Some(primary))
        .map(|p| slot_of(&p.node));
    patroni::Leader::Remote {
        host: primary_address.0.to_string(),
        port: primary_address.1,
        slot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(node: &str, upstream: Option<&str>) -> Placement {
        Placement {
            node: node.into(),
            upstream: upstream.map(Into::into),
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn repmgr_registers_the_new_topology_when_it_knows_every_node_it_must_name() {
        let after = [
            at("new", None),
            at("old", Some("new")),
            at("dr", Some("new")),
        ];
        assert_eq!(
            repmgr_after(&names(&["old", "new"]), &after),
            RepmgrAfter::Register {
                primary: "new".into(),
                standbys: vec![("old".into(), "new".into())]
            }
        );
    }

    #[test]
    fn repmgr_stays_paused_when_the_new_primary_or_an_upstream_is_not_its_node() {
        let after = [at("new", None), at("old", Some("new"))];
        match repmgr_after(&names(&["old"]), &after) {
            RepmgrAfter::LeavePaused { reason } => {
                assert!(
                    reason.contains("new primary new is not a repmgr node"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        let cascade = [
            at("new", None),
            at("replica", Some("new")),
            at("dr", Some("replica")),
        ];
        match repmgr_after(&names(&["new", "dr"]), &cascade) {
            RepmgrAfter::LeavePaused { reason } => {
                assert!(reason.contains("dr now streams from replica"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_patroni_cluster_without_the_primary_follows_it_as_a_standby_cluster() {
        let after = [
            at("new", None),
            at("old", Some("new")),
            at("old2", Some("old")),
        ];
        let slot = |n: &str| format!("migrate_{n}");
        assert_eq!(
            patroni_leader(&names(&["old", "old2"]), &after, ("10.0.0.2", 5432), slot),
            patroni::Leader::Remote {
                host: "10.0.0.2".into(),
                port: 5432,
                slot: Some("migrate_old".into())
            }
        );
        // After the rollback the primary is one of its own again.
        let back = [at("old", None), at("new", Some("old"))];
        assert_eq!(
            patroni_leader(&names(&["old", "old2"]), &back, ("10.0.0.1", 5432), slot),
            patroni::Leader::Own
        );
    }
}
