//! `stage`: before promoting, make the stopped primary a standby of the new one
//! (standby.signal, primary_conninfo, slot), so that no restart can ever bring it up as a
//! second primary.

use std::path::PathBuf;

use std::time::Duration;

use anyhow::{bail, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::guard::{self, IfSilent, Writable};
use super::Direction;
use crate::engine::{Cx, Description, Kind, Step};
use crate::pg::server::RunState;
use crate::pg::{connect, sql};
use crate::steps::id::StepId;
use crate::steps::member::PASSFILE;

pub struct Stage(pub Direction);

/// How long the undo tries to drop the staged slot on the target.
const SLOT_DROP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageOut {
    /// The slot the old primary will stream from.
    pub slot: String,
    /// The node that holds it (the new primary).
    pub on: String,
}

impl Stage {
    fn backup(&self, cx: &Cx) -> PathBuf {
        self.0
            .from
            .node
            .data_dir
            .join(format!("postgresql.auto.conf.migrate-{}", cx.run_id))
    }
}

#[async_trait]
impl Step for Stage {
    type Output = StageOut;
    fn id(&self) -> String {
        StepId::Stage.to_string()
    }
    fn describe(&self) -> Description {
        let m = self.0.demoted();
        Description {
            host: format!("{} and {}", self.0.from.host_label(), self.0.to.name()),
            action: format!(
                "on {to}: pg_create_physical_replication_slot('{slot}', true); on {from}: standby.signal, and in postgresql.auto.conf primary_conninfo = '{ci}', primary_slot_name = '{slot}', without the soft fence",
                to = self.0.to.name(),
                from = self.0.from.name(),
                slot = m.slot(),
                ci = m.replication_conninfo(Some(&m.node.data_dir.join(PASSFILE).display().to_string())).map(|c| c.to_string()).unwrap_or_default(),
            ),
            proof: "standby.signal exists on the stopped node".into(),
            undo: "restore postgresql.auto.conf, remove standby.signal, drop the slot".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn apply(&self, cx: &Cx) -> Result<StageOut> {
        self.0.bounded("stage the old primary as a standby", async {
            let m = self.0.demoted();
            // Staged only while stopped: a server started again by hand (or by a service manager)
            // after the proof is a primary taking writes that the target never saw.
            if self.0.from.server()?.state().await? == RunState::Running {
                match guard::writable(&self.0.from).await {
                    // Staged by an earlier attempt and restarted since: it came up as a standby.
                    Writable::No(_) if cx.in_doubt() => {}
                    w => bail!(
                        "{from} runs again after the proof ({w:?}): it was started by someone after it was stopped, so it may hold writes {to} never received; nothing is staged and nothing is promoted",
                        from = self.0.from.name(),
                        to = self.0.to.name()
                    ),
                }
            }
            let c = connect(&self.0.to.endpoint()).await?;
            sql::create_physical_slot(&c, &m.slot()).await?;
            let auto = m.node.data_dir.join("postgresql.auto.conf");
            // A missing file is an empty one; a file that cannot be read is an error: staging
            // over it would lose the old primary's ALTER SYSTEM settings, and the undo would
            // "restore" an empty backup.
            // (One remote call in the usual case: the existence check only after a failure.)
            let current = match m.host.read_file(&auto).await {
                Ok(bytes) => bytes,
                Err(_) if !m.host.exists(&auto).await? => Vec::new(),
                Err(e) => {
                    return Err(e.context(format!(
                        "read {} to keep its settings",
                        auto.display()
                    )))
                }
            };
            if !m.host.exists(&self.backup(cx)).await? {
                m.host
                    .write_file(&self.backup(cx), &current, 0o600, None)
                    .await?;
            }
            m.make_standby(&current, crate::steps::member::Port::Keep).await?;
            Ok(StageOut {
                slot: m.slot(),
                on: self.0.to.name().to_string(),
            })
        })
        .await
    }
    async fn compensate(&self, cx: &Cx, _: Option<StageOut>) -> Result<()> {
        self.0
            .bounded("undo the staging", async {
                // Without standby.signal the old primary comes back writable at its next start: only
                // while the target is shown not to be a primary.
                let before = format!("removing standby.signal from {}", self.0.from.name());
                if let Err(why) =
                    guard::none_writable(&[&self.0.to], &before, IfSilent::Accept).await
                {
                    bail!("{why}; {} stays staged as its standby", self.0.from.name());
                }
                let m = &self.0.from;
                let data = &m.node.data_dir;
                let backup = self.backup(cx);
                if m.host.exists(&backup).await? {
                    let original = m.host.read_file(&backup).await?;
                    m.host
                        .write_file(&data.join("postgresql.auto.conf"), &original, 0o600, None)
                        .await?;
                    m.host.remove_file(&backup).await?;
                }
                m.host.remove_file(&data.join("standby.signal")).await?;
                // Best effort: the slot is on the target, which may be what failed. Left behind it
                // only retains WAL on a standby that is not promoted; `plan` lists migrate_* slots.
                let slot = self.0.demoted().slot();
                let _ = tokio::time::timeout(SLOT_DROP, async {
                    let c = connect(&self.0.to.endpoint()).await?;
                    sql::drop_inactive_slot(&c, &slot).await
                })
                .await;
                Ok(())
            })
            .await
    }
}
