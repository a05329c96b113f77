//! The plan record: what `migrate plan` saw, in the state directory. `cutover` refuses to run
//! when there is none, when the last plan was not ready, or when the spec or the topology
//! changed since (a node rebuilt, a timeline moved on, a version changed).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Seen;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanRecord {
    pub spec_hash: String,
    pub taken_at: DateTime<Utc>,
    pub ready: bool,
    pub nodes: Vec<Seen>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("plan.json")
}

pub fn write(state_dir: &Path, record: &PlanRecord) -> Result<()> {
    crate::engine::journal::ensure_state_dir(state_dir)?;
    crate::host::local::write_atomic(
        &path(state_dir),
        &serde_json::to_vec_pretty(record)?,
        0o600,
        None,
    )
}

pub fn read(state_dir: &Path) -> Result<Option<PlanRecord>> {
    match crate::engine::state_dir::read(&path(state_dir)) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).context("read the plan record")?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("read the plan record"),
    }
}

/// Why `now` differs from what the plan saw, if it does. Nodes that did not answer at plan
/// time (to be cloned) are not compared; a node seen then must answer the same now.
pub fn drift(record: &PlanRecord, spec_hash: &str, now: &[Seen]) -> Vec<String> {
    let mut why = Vec::new();
    if record.spec_hash != spec_hash {
        why.push("the spec file changed".to_string());
    }
    for then in &record.nodes {
        match now.iter().find(|n| n.node == then.node) {
            None => why.push(format!(
                "{} answered at plan time and does not now",
                then.node
            )),
            Some(n) => {
                if n.system_identifier != then.system_identifier {
                    why.push(format!(
                        "{} was rebuilt (system identifier {} → {})",
                        n.node, then.system_identifier, n.system_identifier
                    ));
                }
                if n.version_num != then.version_num {
                    why.push(format!(
                        "{} changed version ({} → {})",
                        n.node, then.version_num, n.version_num
                    ));
                }
                if then.timeline.is_some() && n.timeline != then.timeline {
                    why.push(format!(
                        "{}'s timeline moved ({:?} → {:?})",
                        n.node, then.timeline, n.timeline
                    ));
                }
            }
        }
    }
    why
}

/// The gate `cutover` passes before anything changes.
pub fn require_current(
    state_dir: &Path,
    spec_hash: &str,
    now: &[Seen],
    spec_arg: &str,
) -> Result<()> {
    let Some(record) = read(state_dir)? else {
        bail!("no plan on record: run `migrate plan -f {spec_arg}` first (the cutover re-checks what it saw); nothing was changed");
    };
    if !record.ready {
        bail!("the last plan ({}) found failing checks: fix them and run `migrate plan -f {spec_arg}` again; nothing was changed", record.taken_at.format("%Y-%m-%d %H:%M UTC"));
    }
    let why = drift(&record, spec_hash, now);
    if !why.is_empty() {
        bail!(
            "the topology drifted since `migrate plan` ({}): {}; run `migrate plan -f {spec_arg}` again; nothing was changed",
            record.taken_at.format("%Y-%m-%d %H:%M UTC"),
            why.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(node: &str, sysid: &str, tli: Option<i64>) -> Seen {
        Seen {
            node: node.into(),
            system_identifier: sysid.into(),
            version_num: 150018,
            timeline: tli,
        }
    }

    #[test]
    fn drift_is_named() {
        let rec = PlanRecord {
            spec_hash: "h".into(),
            taken_at: Utc::now(),
            ready: true,
            nodes: vec![seen("old", "1", Some(1)), seen("new", "1", None)],
        };
        assert!(drift(
            &rec,
            "h",
            &[
                seen("old", "1", Some(1)),
                seen("new", "1", None),
                seen("dr", "1", None)
            ]
        )
        .is_empty());
        let d = drift(
            &rec,
            "h2",
            &[seen("old", "1", Some(2)), seen("new", "9", None)],
        );
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(
            d[0].contains("spec") && d[1].contains("timeline") && d[2].contains("rebuilt"),
            "{d:?}"
        );
        assert!(drift(&rec, "h", &[seen("old", "1", Some(1))])[0].contains("does not now"));
    }
}
