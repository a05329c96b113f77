//! The failover's certificate: what was lost (at most, or at least), on what evidence, how
//! the lost primary was fenced, and which standbys follow the new primary.

use std::path::{Path, PathBuf};

use anyhow::Result;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::repoint::Behind;
use super::{Evidence, Failover, Fenced, IsolateOut, LossOut, RepointOut};
use crate::engine::{Cx, Description, Kind, Step};
use crate::pg::Lsn;
use crate::steps::id::StepId;
use crate::steps::switchover::{PromoteOut, ReleaseOut};

pub struct FailoverCertificate(pub Failover);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverDoc {
    pub run_id: String,
    pub lost: String,
    pub to: String,
    pub fenced: Fenced,
    pub fence_detail: String,
    pub evidence: Evidence,
    /// What the promoted node had received.
    pub received_lsn: Lsn,
    /// With exact evidence at most this many bytes of acknowledged WAL are lost; otherwise at
    /// least this many.
    pub loss_bytes: u64,
    pub loss_exact: bool,
    pub accepted_loss: Option<u64>,
    pub measured_at: DateTime<Utc>,
    pub new_timeline: i64,
    /// The promoted node's WAL position just after it left recovery.
    pub promoted_lsn: String,
    pub released_at: DateTime<Utc>,
    pub following: Vec<String>,
    pub not_following: Vec<Behind>,
}

pub fn failover_certificate_path(state_dir: &Path, run_id: &str) -> PathBuf {
    state_dir.join(format!("failover-{run_id}.json"))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverCertificateOut {
    pub path: PathBuf,
    pub loss_bytes: u64,
    pub not_following: Vec<String>,
}

#[async_trait]
impl Step for FailoverCertificate {
    type Output = FailoverCertificateOut;
    fn id(&self) -> String {
        StepId::Certificate.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: "local".into(),
            action: format!(
                "write {}",
                failover_certificate_path(&self.0.state_dir, "<run id>").display()
            ),
            proof: "the file exists".into(),
            undo: "nothing".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::NothingToUndo
    }
    async fn apply(&self, cx: &Cx) -> Result<FailoverCertificateOut> {
        let isolated: IsolateOut = cx.get(&StepId::Isolate)?;
        let loss: LossOut = cx.get(&StepId::Loss)?;
        let promote: PromoteOut = cx.get(&StepId::Promote)?;
        let release: ReleaseOut = cx.get(&StepId::Release)?;
        let repoint: RepointOut = cx.get(&StepId::Repoint)?;
        let doc = FailoverDoc {
            run_id: cx.run_id.clone(),
            lost: self.0.d.from.name().into(),
            to: self.0.d.to.name().into(),
            fenced: isolated.fenced,
            fence_detail: isolated.detail,
            loss_exact: loss.evidence.exact(),
            evidence: loss.evidence,
            received_lsn: loss.received,
            loss_bytes: loss.loss_bytes,
            accepted_loss: loss.accepted,
            measured_at: loss.measured_at,
            new_timeline: promote.timeline,
            promoted_lsn: promote.lsn,
            released_at: release.released_at,
            following: repoint.following,
            not_following: repoint.not_following,
        };
        let path = failover_certificate_path(&self.0.state_dir, &cx.run_id);
        crate::host::local::write_atomic(
            &path,
            serde_json::to_string_pretty(&doc)?.as_bytes(),
            0o600,
            None,
        )?;
        Ok(FailoverCertificateOut {
            path,
            loss_bytes: doc.loss_bytes,
            not_following: doc.not_following.iter().map(|b| b.node.clone()).collect(),
        })
    }
}
