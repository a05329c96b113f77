//! `complete`: after the bake period, retire the rollback path and drop stale slots.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::id::StepId;
use super::member::Member;
use crate::engine::{Cx, Description, Kind, Step};
use crate::pg::server::{RunState, StopMode};
use crate::pg::{connect, sql};
use crate::replication::slot_name;
use crate::spec::{Retire, Spec};

/// The new primary must be serving.
pub struct CheckCutOver {
    pub new_primary: Member,
}

#[async_trait]
impl Step for CheckCutOver {
    type Output = PrimaryOut;
    fn id(&self) -> String {
        StepId::Check.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.new_primary.host_label(),
            action: "SELECT pg_is_in_recovery()".into(),
            proof: format!("{} is the primary", self.new_primary.name()),
            undo: "nothing".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, _: &Cx) -> Result<PrimaryOut> {
        let c = connect(&self.new_primary.endpoint()).await?;
        if sql::in_recovery(&c).await? {
            bail!("{} is not the primary: `migrate complete` retires the rollback path after a cutover", self.new_primary.name());
        }
        Ok(PrimaryOut {
            primary: self.new_primary.name().into(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrimaryOut {
    pub primary: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetireOut {
    pub retire: Retire,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DroppedOut {
    /// `node:slot` for each slot dropped.
    pub dropped: Vec<String>,
}

/// Stop the old primary for good (it keeps standby.signal, so it can never start as a
/// primary), or keep it as a standby, as the spec says.
pub struct RetireOld {
    pub old: Member,
    pub retire: Retire,
}

#[async_trait]
impl Step for RetireOld {
    type Output = RetireOut;
    fn id(&self) -> String {
        StepId::Retire.to_string()
    }
    fn describe(&self) -> Description {
        let action = match self.retire {
            Retire::Stop => format!(
                "{} -m fast (standby.signal stays)",
                self.old.server_words("stop")
            ),
            Retire::Standby => format!("keep {} as a standby of the new primary", self.old.name()),
        };
        Description {
            host: self.old.host_label(),
            action,
            proof: self.old.server_words("status"),
            undo: "none: the rollback path is retired".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::PointOfNoReturn
    }
    async fn apply(&self, _: &Cx) -> Result<RetireOut> {
        if self.retire == Retire::Stop {
            let server = self.old.server()?;
            if server.state().await? == RunState::Running {
                server
                    .stop(StopMode::Fast, Duration::from_secs(300))
                    .await?;
            }
        }
        Ok(RetireOut {
            retire: self.retire,
        })
    }
    async fn compensate(&self, _: &Cx, _: Option<RetireOut>) -> Result<()> {
        bail!("the rollback path cannot be restored by undoing `complete`")
    }
}

/// Drop every inactive `migrate_*` slot that the final topology does not use: the old
/// primary's slot for the target, and the new primary's slot for a stopped old primary.
pub struct DropStaleSlots {
    /// (node, the slots it must keep)
    pub nodes: Vec<(Member, BTreeSet<String>)>,
}

impl DropStaleSlots {
    pub fn for_spec(spec: &Spec) -> Result<DropStaleSlots> {
        let old = &spec.primary().name;
        let new = &spec.target().name;
        let mut nodes = Vec::new();
        for n in &spec.nodes {
            let mut keep: BTreeSet<String> = spec
                .downstream_of(&n.name)
                .filter(|d| &d.name != new)
                .map(|d| slot_name(&d.name))
                .collect();
            if &n.name == new && spec.cutover.retire == Retire::Standby {
                keep.insert(slot_name(old));
            }
            nodes.push((Member::new(spec, &n.name)?, keep));
        }
        Ok(DropStaleSlots { nodes })
    }
}

#[async_trait]
impl Step for DropStaleSlots {
    type Output = DroppedOut;
    fn id(&self) -> String {
        StepId::DropStaleSlots.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: "every reachable node".into(),
            action: "SELECT pg_drop_replication_slot(slot_name) for inactive migrate_* slots the final topology does not use".into(),
            proof: "no such slot remains (stale slots retain WAL, P8)".into(),
            undo: "none".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::PointOfNoReturn
    }
    async fn apply(&self, _: &Cx) -> Result<DroppedOut> {
        let mut dropped = Vec::new();
        for (m, keep) in &self.nodes {
            let Ok(c) = connect(&m.endpoint()).await else {
                continue;
            };
            let rows = c.query("SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'migrate\\_%' AND NOT active", &[]).await?;
            for r in rows {
                let slot: String = r.get(0);
                if !keep.contains(&slot) {
                    c.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                        .await?;
                    dropped.push(format!("{}:{slot}", m.name()));
                }
            }
        }
        Ok(DroppedOut { dropped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_keeps_only_the_slots_of_its_final_downstreams() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/good/minimal.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let keep = |retire: &str| {
            let spec = crate::spec::parse(
                &path,
                &format!("{text}\n[cutover]\nretire = \"{retire}\"\n"),
            )
            .unwrap();
            DropStaleSlots::for_spec(&spec)
                .unwrap()
                .nodes
                .into_iter()
                .map(|(m, k)| (m.name().to_string(), k.into_iter().collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        };
        let standby = keep("standby");
        assert_eq!(
            standby[0],
            ("old".to_string(), vec![]),
            "the old primary no longer feeds the target"
        );
        assert_eq!(
            standby[1],
            (
                "new".to_string(),
                vec![
                    "migrate_dr".to_string(),
                    "migrate_new_replica".into(),
                    "migrate_old".into()
                ]
            )
        );
        let stop = keep("stop");
        assert_eq!(
            stop[1],
            (
                "new".to_string(),
                vec!["migrate_dr".to_string(), "migrate_new_replica".into()]
            )
        );
    }
}
