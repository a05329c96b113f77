//! `followers`: every other standby follows the new timeline (cascades through the new primary
//! reconnect after its promotion).

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;

use super::follow::wait_following;
use super::reverse::{new_timeline, TimelineOut};
use super::Direction;
use crate::engine::{Cx, Description, Kind, Step};
use crate::pg::connect;
use crate::steps::id::StepId;

pub struct Followers(pub Direction);

#[async_trait]
impl Step for Followers {
    type Output = TimelineOut;
    fn id(&self) -> String {
        StepId::Followers.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: self
                .0
                .followers
                .iter()
                .map(|m| m.name().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            action: format!(
                "CHECKPOINT on the new primary (P6/P7); wait until each standby streams on the new timeline; on {}: drop the stale slot {} (unused since the promotion)",
                self.0.from.name(),
                self.0.to.slot()
            ),
            proof: "pg_stat_wal_receiver.received_tli = the new timeline, streaming".into(),
            undo: "nothing".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, cx: &Cx) -> Result<TimelineOut> {
        let tli = new_timeline(cx)?;
        // Kept out of the promotion, which is inside the write pause: the control file shows
        // the new timeline only after a checkpoint (P6), and pg_rewind against this primary
        // needs it (P7).
        connect(&self.0.to.endpoint())
            .await?
            .batch_execute("CHECKPOINT")
            .await
            .context("CHECKPOINT on the new primary")?;
        for f in &self.0.followers {
            let upstream_name = f.node.upstream.clone().unwrap_or_default();
            let upstream = if upstream_name == self.0.from.name() {
                self.0.demoted()
            } else if upstream_name == self.0.to.name() {
                self.0.to.clone()
            } else {
                self.0
                    .followers
                    .iter()
                    .find(|m| m.name() == upstream_name)
                    .cloned()
                    .ok_or_else(|| anyhow!("no upstream {upstream_name}"))?
            };
            wait_following(
                f,
                &upstream,
                tli,
                Duration::from_secs(120),
                cx,
                &StepId::Followers,
            )
            .await?;
        }
        // The slot `to` streamed from on `from` has been stale since the promotion: its
        // restart_lsn is frozen there, so it would keep every WAL segment on the old primary
        // for the whole bake. Nothing uses it again, whether `from` follows `to` now or waits
        // for a re-sync; a switchback creates the slot it needs before its hold.
        let stale = self.0.to.slot();
        let dropped = async {
            let c = connect(&self.0.from.endpoint()).await?;
            crate::pg::sql::drop_inactive_slot(&c, &stale).await
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(10), dropped)
            .await
            .map_err(|_| anyhow!("no answer within 10 s"))
            .and_then(|r| r)
        {
            cx.progress(
                &StepId::Followers,
                format!(
                    "could not drop the stale slot {stale} on {} ({e:#}); `migrate complete` drops it, and `migrate status` shows what it retains",
                    self.0.from.name()
                ),
            );
        }
        Ok(TimelineOut {
            timeline: i64::from(tli),
        })
    }
}
