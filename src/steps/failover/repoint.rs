//! `repoint`: every other standby streams from the new primary, on its new timeline. A
//! standby that is down, cannot be reached or cannot follow (it received WAL the new primary
//! never had) is reported, not waited for: the new primary serves without it, and it needs a
//! re-sync.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::loss::position;
use super::Failover;
use crate::engine::{Cx, Description, Kind, Step};
use crate::pg::service::StopMode;
use crate::pg::{connect, sql};
use crate::steps::id::StepId;
use crate::steps::member::{Member, Port};
use crate::steps::switchover::follow::wait_following;
use crate::steps::switchover::reverse::new_timeline;

pub struct Repoint(pub Failover);

/// A standby left behind, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Behind {
    pub node: String,
    pub why: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepointOut {
    pub timeline: i64,
    /// The standbys that stream from the new primary on its timeline.
    pub following: Vec<String>,
    pub not_following: Vec<Behind>,
}

/// The most one standby's repointing may take, its restart included.
const PER_NODE: Duration = Duration::from_secs(180);

/// How long a reloaded standby gets to follow before it is restarted, and after.
const AFTER_RELOAD: Duration = Duration::from_secs(20);
const AFTER_RESTART: Duration = Duration::from_secs(60);

impl Repoint {
    /// Make `m` stream from the new primary on `tli`.
    async fn repoint(&self, m: &Member, tli: i32, cx: &Cx) -> Result<()> {
        let to = &self.0.d.to;
        let (in_recovery, _) = position(m).await.context("it does not answer")?;
        if !in_recovery {
            bail!("it answers as a primary");
        }
        let moved = m.with_upstream(&to.node);
        let c = connect(&to.endpoint()).await?;
        sql::create_physical_slot(&c, &moved.slot()).await?;
        let auto = m.node.data_dir.join("postgresql.auto.conf");
        let current = m.host.read_file(&auto).await?;
        m.host
            .write_files(&moved.standby_files(&current, Port::Keep)?)
            .await?;
        // primary_conninfo and primary_slot_name take a reload since PostgreSQL 13 (the
        // walreceiver restarts); a restart covers older servers and a stuck receiver.
        connect(&m.endpoint())
            .await?
            .batch_execute("SELECT pg_reload_conf()")
            .await?;
        let step = StepId::Repoint;
        if wait_following(&moved, to, tli, AFTER_RELOAD, cx, &step)
            .await
            .is_ok()
        {
            return Ok(());
        }
        cx.progress(
            &step,
            format!("{} does not follow after a reload: restarting it", m.name()),
        );
        let server = m.server()?;
        server.stop(StopMode::Fast, Duration::from_secs(60)).await?;
        server.launch_unless_running(&m.node.log_file).await?;
        wait_following(&moved, to, tli, AFTER_RESTART, cx, &step).await
    }
}

#[async_trait]
impl Step for Repoint {
    type Output = RepointOut;
    fn id(&self) -> String {
        StepId::Repoint.to_string()
    }
    fn describe(&self) -> Description {
        let f = &self.0;
        Description {
            host: f
                .d
                .followers
                .iter()
                .map(|m| m.name().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            action: format!(
                "on {to}: a slot for each standby; on each: primary_conninfo and primary_slot_name pointing at {to}, reload (restart if it does not follow)",
                to = f.d.to.name()
            ),
            proof: "pg_stat_wal_receiver streaming on the new timeline, and a streaming row on the new primary".into(),
            undo: "nothing".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::NothingToUndo
    }
    async fn apply(&self, cx: &Cx) -> Result<RepointOut> {
        let tli = new_timeline(cx)?;
        let (mut following, mut not_following) = (Vec::new(), Vec::new());
        for m in &self.0.d.followers {
            let done = tokio::time::timeout(PER_NODE, self.repoint(m, tli, cx))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no end within {PER_NODE:?}")));
            match done {
                Ok(()) => following.push(m.name().to_string()),
                Err(e) => {
                    let why = format!("{e:#}");
                    cx.progress(&StepId::Repoint, format!("{} left behind: {why}", m.name()));
                    not_following.push(Behind {
                        node: m.name().into(),
                        why,
                    });
                }
            }
        }
        Ok(RepointOut {
            timeline: i64::from(tli),
            following,
            not_following,
        })
    }
}
