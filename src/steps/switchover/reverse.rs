//! `reverse`: start the old primary as a standby of the new one and prove it follows the new
//! timeline (a diverged standby also starts, P5).

use std::time::Duration;

use anyhow::{anyhow, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::follow::wait_following_unless_diverged;
use super::promote::{PromoteOut, NEW_HISTORY};
use super::Direction;
use crate::engine::{Cx, Description, Kind, Step};
use crate::pg::server::TimelineHistory;
use crate::steps::id::StepId;

pub struct Reverse(pub Direction);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineOut {
    /// The timeline the node(s) now stream on.
    pub timeline: i64,
}

/// What `reverse` found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReverseOut {
    /// The new timeline.
    pub timeline: i64,
    /// Why the old primary does not stream from the new one (no rollback path), if it does
    /// not. The switchover goes on regardless: clients are released to the new primary, and
    /// the certificate step stops the run for the repair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_following: Option<String>,
}

/// The repair for an old primary that cannot follow the new one.
pub(super) fn repair(d: &Direction) -> String {
    let m = d.demoted();
    format!(
        "re-sync {from} with pg_rewind (pg_rewind -D {dir} --source-server='<conninfo of {to}>', then re-apply port, cluster_name and primary_slot_name) or re-clone it",
        to = d.to.name(),
        from = d.from.name(),
        dir = m.node.data_dir.display()
    )
}

/// Start (if needed) and wait until the old primary streams from the new one on `tli`; with
/// `fork` (the new timeline's start: what the new primary had replayed at the proof), give up
/// early on an old primary that diverged.
pub(super) async fn follow(
    d: &Direction,
    tli: i32,
    limit: Duration,
    fork: Option<crate::pg::Lsn>,
    cx: &Cx,
) -> Result<()> {
    let m = d.demoted();
    // The new timeline's history file, placed in the old primary's pg_wal before it starts
    // (when this process promoted and could read it): the old primary then knows the new
    // timeline from its first moment, replays the rest of the old timeline from its own
    // pg_wal and streams the new one at once. Without it, it first streams the old timeline's
    // last segment from the new primary, learns of the new timeline there, and streams the
    // same segment again on the new one: twice the segment and two more handshakes inside
    // the pause (at 30 ms RTT about 290 ms). The history comes from the new primary itself, so
    // an old primary that diverged from it still fails to follow, and is reported.
    let history = NEW_HISTORY
        .take(&cx.run_id, m.name())
        .and_then(|text| TimelineHistory::parse(u32::try_from(tli).ok()?, &text));
    // Not `pg_ctl start -w`: streaming, waited for below, is the stronger proof, and it
    // comes sooner than pg_ctl's 100 ms polling notices the server is up. (A server already
    // running, after a resume, is left as it is.)
    m.server()?
        .launch_unless_running_with(&m.node.log_file, history.as_ref())
        .await?;
    wait_following_unless_diverged(&m, &d.to, tli, limit, fork, cx, &StepId::Reverse).await
}

/// The timeline the promotion started.
pub(crate) fn new_timeline(cx: &Cx) -> Result<i32> {
    let p: PromoteOut = cx.get(&StepId::Promote)?;
    i32::try_from(p.timeline).map_err(|_| anyhow!("promote recorded timeline {}", p.timeline))
}

#[async_trait]
impl Step for Reverse {
    type Output = ReverseOut;
    fn id(&self) -> String {
        StepId::Reverse.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.0.from.host_label(),
            action: format!("{} (as a standby of {})", self.0.from.server_words("start"), self.0.to.name()),
            proof: format!(
                "pg_stat_wal_receiver on {} streaming with received_tli = the new timeline, and a streaming row in pg_stat_replication on {}",
                self.0.from.name(),
                self.0.to.name()
            ),
            undo: "none (after the point of no return)".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn apply(&self, cx: &Cx) -> Result<ReverseOut> {
        let tli = new_timeline(cx)?;
        // After the release: bounded by the switchover's limit all the same (a cut link must
        // not keep the run from its certificate), and cut short when the old primary has
        // diverged (it replayed past the point where the new timeline begins).
        let fork = cx
            .find::<super::proof::ProofOut>(&StepId::Proof)?
            .map(|p| p.replay_lsn);
        let limit = self.0.limit.min(Duration::from_secs(60));
        let not_following = match follow(&self.0, tli, limit, fork, cx).await {
            Ok(()) => None,
            Err(e) => Some(format!("{e:#}")),
        };
        Ok(ReverseOut {
            timeline: i64::from(tli),
            not_following,
        })
    }
}
