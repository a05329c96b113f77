//! `certificate`: the evidence and the timings of a switchover, as a JSON file in the state
//! directory ([`CertificateDoc`], which the rehearsal report reads back typed).

use std::collections::BTreeMap;
use std::path::PathBuf;

use std::time::Duration;

use anyhow::{bail, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::fence::FenceOut;
use super::hold::HoldOut;
use super::promote::PromoteOut;
use super::proof::ProofOut;
use super::release::ReleaseOut;
use super::reverse::{follow, repair, ReverseOut};
use super::Direction;
use crate::engine::{Cx, Description, Kind, Step};
use crate::pg::Lsn;
use crate::steps::id::StepId;

pub struct Certificate {
    pub d: Direction,
    pub state_dir: PathBuf,
    pub operation: String,
}

/// The certificate file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateDoc {
    pub run_id: String,
    pub operation: String,
    pub from: String,
    pub to: String,
    pub shutdown_checkpoint_lsn: Lsn,
    pub old_timeline: i64,
    pub new_timeline: i64,
    pub received_lsn: Lsn,
    pub replayed_lsn: Lsn,
    /// The write pause starts when clients are held (or, without a route, fenced)…
    pub fenced_at: DateTime<Utc>,
    /// … and ends when they are released.
    pub released_at: DateTime<Utc>,
    pub write_pause_ms: i64,
    /// Each step's share, as the runner timed it (the release: up to the last RESUME).
    pub phases_ms: BTreeMap<StepId, Option<u64>>,
    /// Whether the old primary streams from the new one (the live way back), and if not, why.
    #[serde(default = "yes")]
    pub rollback_path: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_problem: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateOut {
    pub path: PathBuf,
    pub write_pause_ms: i64,
}

/// How long the certificate step waits for a repaired old primary to follow.
const RECHECK: Duration = Duration::from_secs(10);

pub fn certificate_path(state_dir: &std::path::Path, run_id: &str) -> PathBuf {
    state_dir.join(format!("certificate-{run_id}.json"))
}

impl CertificateDoc {
    /// Built from the run's typed outputs and the runner's timings.
    pub fn from_run(cx: &Cx, d: &Direction, operation: &str) -> Result<CertificateDoc> {
        let fenced_at = match cx.find::<HoldOut>(&StepId::Hold)? {
            Some(h) => h.held_at,
            None => cx.get::<FenceOut>(&StepId::Fence)?.fenced_at,
        };
        let release: ReleaseOut = cx.get(&StepId::Release)?;
        let proof: ProofOut = cx.get(&StepId::Proof)?;
        let promote: PromoteOut = cx.get(&StepId::Promote)?;
        let mut phases_ms: BTreeMap<StepId, Option<u64>> = StepId::pause()
            .iter()
            .chain([&StepId::Reverse, &StepId::Followers])
            .map(|id| (id.clone(), cx.elapsed_ms(id)))
            .collect();
        phases_ms.insert(StepId::Release, Some(release.until_released_ms));
        let rollback_problem = cx
            .find::<ReverseOut>(&StepId::Reverse)?
            .and_then(|r| r.not_following);
        Ok(CertificateDoc {
            run_id: cx.run_id.clone(),
            operation: operation.into(),
            from: d.from.name().into(),
            to: d.to.name().into(),
            shutdown_checkpoint_lsn: proof.checkpoint_lsn,
            old_timeline: proof.timeline,
            new_timeline: promote.timeline,
            received_lsn: proof.receive_lsn,
            replayed_lsn: proof.replay_lsn,
            fenced_at,
            released_at: release.released_at,
            write_pause_ms: (release.released_at - fenced_at).num_milliseconds(),
            phases_ms,
            rollback_path: rollback_problem.is_none(),
            rollback_problem,
        })
    }

    /// The phases that were timed (`None` entries left out).
    pub fn timed_phases(&self) -> BTreeMap<String, u64> {
        self.phases_ms
            .iter()
            .filter_map(|(id, ms)| Some((id.to_string(), (*ms)?)))
            .collect()
    }
}

#[async_trait]
impl Step for Certificate {
    type Output = CertificateOut;
    fn id(&self) -> String {
        StepId::Certificate.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: "local".into(),
            action: format!(
                "write {}",
                certificate_path(&self.state_dir, "<run id>").display()
            ),
            proof: "the file exists".into(),
            undo: "nothing".into(),
        }
    }
    fn kind(&self) -> Kind {
        // Not read-only: without a rollback path it starts the old primary again to re-check.
        Kind::NothingToUndo
    }
    async fn apply(&self, cx: &Cx) -> Result<CertificateOut> {
        let mut cert = CertificateDoc::from_run(cx, &self.d, &self.operation)?;
        if !cert.rollback_path {
            // Repaired since `reverse` (an operator who re-synced it, then resumed)?
            let tli = i32::try_from(cert.new_timeline)?;
            if follow(&self.d, tli, RECHECK, None, cx).await.is_ok() {
                cert.rollback_path = true;
                cert.rollback_problem = None;
            }
        }
        let path = certificate_path(&self.state_dir, &cx.run_id);
        crate::host::local::write_atomic(
            &path,
            serde_json::to_string_pretty(&cert)?.as_bytes(),
            0o600,
            None,
        )?;
        if let Some(problem) = &cert.rollback_problem {
            bail!(
                "{to} is the primary and serves (clients were released to it), but there is NO ROLLBACK PATH: {from} does not stream from it ({problem}); {repair}, then `migrate resume` checks again and finishes the run (certificate {path})",
                to = self.d.to.name(),
                from = self.d.from.name(),
                repair = repair(&self.d),
                path = path.display()
            );
        }
        Ok(CertificateOut {
            path,
            write_pause_ms: cert.write_pause_ms,
        })
    }
}
