//! Bake safety: every node that holds a slot this run creates must bound the WAL that slot can
//! retain (`max_slot_wal_keep_size`, PostgreSQL 13+), or the spec must accept that it does
//! not (`bake.unbounded_slots = "accept"`). A slot whose consumer is down (the old primary
//! stopped during the bake, a cut link) otherwise keeps every WAL segment until the disk is
//! full and the primary stops.

use std::collections::{BTreeMap, BTreeSet};

use super::Check;
use crate::replication::retention::free_wal;
use crate::spec::{Spec, UnboundedSlots};
use crate::units::{format_bytes, parse_size};

/// Nodes that hold a `migrate_*` slot at some point of the run: every upstream of a hop, and
/// the target (the old primary's slot after the cutover).
pub fn slot_holders(spec: &Spec) -> BTreeSet<String> {
    let mut holders: BTreeSet<String> = spec
        .nodes
        .iter()
        .filter_map(|n| n.upstream.clone())
        .collect();
    holders.insert(spec.target().name.clone());
    holders
}

/// `bounds`: each running node's `max_slot_wal_keep_size` as `pg_settings` shows it (in MB),
/// `None` when the server has no such setting (before 13). `wal_per_hour`: the primary's
/// average WAL rate, when known.
pub async fn check(
    checks: &mut Vec<Check>,
    spec: &Spec,
    bounds: &BTreeMap<String, Option<String>>,
    wal_per_hour: Option<u64>,
) {
    let primary = &spec.primary().name;
    for name in slot_holders(spec) {
        let Some(node) = spec.node(&name) else {
            continue;
        };
        // A node not running yet is a clone of its upstream: judged by the primary's value,
        // which the clone copies only where the configuration lives in the data directory.
        let (setting, seen_on) = match bounds.get(&name) {
            Some(s) => (s.clone(), name.clone()),
            None if node.service != crate::pg::service::Service::PgCtl => {
                checks.push(Check::warn(
                    format!("slot_bound:{name}"),
                    format!("{name} is not running and keeps its configuration outside its data directory ({}), so the clone does not copy the primary's max_slot_wal_keep_size and its own cannot be read yet", node.service.words("start", &node.data_dir)),
                    format!("set max_slot_wal_keep_size in {name}'s own configuration, and run plan again once it streams"),
                ));
                continue;
            }
            None => (bounds.get(primary).cloned().flatten(), primary.clone()),
        };
        let free = tokio::time::timeout(std::time::Duration::from_secs(5), free_wal(node))
            .await
            .ok()
            .and_then(Result::ok);
        checks.push(verdict(
            &name,
            &seen_on,
            setting.as_deref(),
            spec.bake.unbounded_slots,
            free,
            wal_per_hour,
        ));
    }
}

/// Pure: the check for one slot holder.
pub fn verdict(
    node: &str,
    seen_on: &str,
    setting_mb: Option<&str>,
    policy: UnboundedSlots,
    free: Option<u64>,
    wal_per_hour: Option<u64>,
) -> Check {
    let id = format!("slot_bound:{node}");
    let seen = if seen_on == node {
        String::new()
    } else {
        format!(" (not running: {seen_on}'s setting, which its clone starts from)")
    };
    let mut context = Vec::new();
    if let Some(rate) = wal_per_hour {
        context.push(format!(
            "a slot whose standby is down retains about {} per hour at the primary's average WAL rate",
            format_bytes(rate)
        ));
    }
    if let Some(f) = free {
        context.push(format!("{} free on its WAL disk", format_bytes(f)));
    }
    let context = if context.is_empty() {
        String::new()
    } else {
        format!("; {}", context.join(", "))
    };
    let bound = match setting_mb {
        None => None,
        Some(s) => match s.trim().parse::<i64>() {
            Ok(mb) if mb >= 0 => Some((mb as u64).saturating_mul(1 << 20)),
            Ok(_) => None,
            Err(_) => parse_size(s).ok(),
        },
    };
    match bound {
        Some(b) => {
            let past_free = free.is_some_and(|f| b > f);
            let message = format!(
                "{node} bounds what a slot retains: max_slot_wal_keep_size = {}{seen}{context}",
                format_bytes(b)
            );
            if past_free {
                Check::warn(
                    id,
                    format!("{message}; the bound is larger than the free space"),
                    format!("lower max_slot_wal_keep_size on {node} below its free WAL disk, or make room"),
                )
            } else {
                Check::pass(id, message)
            }
        }
        None => {
            let what = match setting_mb {
                None => "has no max_slot_wal_keep_size (before PostgreSQL 13)".to_string(),
                Some(_) => "has max_slot_wal_keep_size = -1".to_string(),
            };
            let message = format!(
                "{node} {what}{seen}: a migrate slot there retains WAL without bound while its standby is down{context}"
            );
            match policy {
                UnboundedSlots::Accept => Check::warn(
                    id,
                    message,
                    "accepted by bake.unbounded_slots = \"accept\"; watch `migrate status --check` during the bake",
                ),
                UnboundedSlots::Refuse => Check::fail(
                    id,
                    message,
                    format!("ALTER SYSTEM SET max_slot_wal_keep_size = '<less than the free WAL disk>' on {node} and reload (a standby that falls further behind loses its slot and must be re-cloned), or accept it with bake.unbounded_slots = \"accept\" in the spec"),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Status;

    #[test]
    fn an_unbounded_slot_fails_unless_accepted() {
        let refuse = verdict("new", "new", Some("-1"), UnboundedSlots::Refuse, None, None);
        assert_eq!(refuse.status, Status::Fail);
        assert!(
            refuse.remedy.contains("bake.unbounded_slots"),
            "{}",
            refuse.remedy
        );
        let accept = verdict("new", "new", Some("-1"), UnboundedSlots::Accept, None, None);
        assert_eq!(accept.status, Status::Warn);
        // PostgreSQL 12: no setting at all is no bound either.
        let old = verdict("old", "old", None, UnboundedSlots::Refuse, None, None);
        assert_eq!(old.status, Status::Fail);
        assert!(old.message.contains("before PostgreSQL 13"));
    }

    #[test]
    fn a_bound_passes_and_is_weighed_against_the_free_disk() {
        let ok = verdict(
            "old",
            "old",
            Some("1024"),
            UnboundedSlots::Refuse,
            Some(10 << 30),
            Some(3 << 30),
        );
        assert_eq!(ok.status, Status::Pass, "{}", ok.message);
        assert!(ok.message.contains("1.0 GiB"), "{}", ok.message);
        assert!(ok.message.contains("per hour"), "{}", ok.message);
        let big = verdict(
            "old",
            "old",
            Some("20480"),
            UnboundedSlots::Refuse,
            Some(10 << 30),
            None,
        );
        assert_eq!(big.status, Status::Warn);
        // A clone-to-be is judged by the primary's value, and says so.
        let clone = verdict(
            "new",
            "old",
            Some("1024"),
            UnboundedSlots::Refuse,
            None,
            None,
        );
        assert!(clone.message.contains("old's setting"), "{}", clone.message);
    }
}
