//! The emergency promotion (`migrate failover`): the primary is lost, so nothing can prove
//! that the standby has every byte. The steps fence what can be fenced (`isolate`), measure
//! what the promotion can lose and hold it to what the operator accepted (`loss`), then reuse
//! the switchover's promotion, routing and release, repoint every other standby
//! (`repoint`), and write a certificate with the loss window.
//!
//! The lost primary is `d.from`, the node promoted `d.to`; `d.followers` are all the others.

mod certificate;
mod isolate;
mod loss;
mod repoint;
pub mod wal_end;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::switchover::guard::{self, IfSilent, Writable};
use super::switchover::Direction;
use crate::engine::Cx;
use crate::pg::Lsn;
use crate::spec::Plugin;
use crate::steps::id::StepId;

pub use certificate::{failover_certificate_path, FailoverCertificate, FailoverDoc};
pub use isolate::{Fenced, Isolate, IsolateOut};
pub use loss::{describe_loss, loss_verdict, measure, Evidence, Loss, LossOut};
pub use repoint::{Repoint, RepointOut};

/// Everything a failover's steps share.
#[derive(Clone)]
pub struct Failover {
    pub d: Direction,
    pub fence: Option<Plugin>,
    pub no_fence: bool,
    pub accept_loss: Option<u64>,
    /// The newest WAL position the lost primary was known to have before this run (from the
    /// previous run's journal), kept by `isolate` for `loss`.
    pub last_known: Option<Seen>,
    pub state_dir: PathBuf,
}

/// A WAL position a node was seen at, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub node: String,
    pub lsn: Lsn,
    pub at: DateTime<Utc>,
    /// Where the figure comes from ("the promotion of run X", "new_replica's receive LSN").
    pub source: String,
}

/// The one-writable-node check before a failover's promotion: the lost primary must be shown
/// not writable, unless the fence plugin fenced it or the operator said `--no-fence` (its host
/// does not answer, so nothing can be shown); no other node may answer as a primary.
pub async fn before_promotion(d: &Direction, cx: &Cx) -> Result<(), String> {
    let to = d.to.name();
    let isolated: IsolateOut = cx
        .get(&StepId::Isolate)
        .map_err(|e| format!("the lost primary's fence is not recorded ({e:#})"))?;
    let before = format!("promoting {to}");
    if !isolated.fenced.trusted_without_proof() {
        guard::none_writable(&[&d.from], &before, IfSilent::Refuse).await?;
    }
    for m in &d.followers {
        // A standby that cannot be asked is not a primary: only a promotion makes it one.
        if let Writable::Yes = guard::writable(m).await {
            return Err(format!(
                "{} answers as a writable primary, so {before} would make two primaries",
                m.name()
            ));
        }
    }
    Ok(())
}
