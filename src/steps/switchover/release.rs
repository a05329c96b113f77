//! `release`: let clients write again (with a holding route, the release; without one, the
//! instant the new primary was verified), then verify each holding route through itself.

use std::time::Instant;

use anyhow::{bail, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::retry::{try_limit, where_it_points, with_retries};
use super::Direction;
use crate::engine::{Cx, Description, Kind, Step};
use crate::steps::id::StepId;

pub struct Release(pub Direction);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verified {
    pub route: String,
    pub verified: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseOut {
    /// The write pause ends here.
    pub released_at: DateTime<Utc>,
    pub verified: Vec<Verified>,
    /// The release's share of the write pause: from the step's start until the last route
    /// released its clients (the verification after that is outside the pause). Format-1
    /// journals called it `ms`.
    #[serde(alias = "ms")]
    pub until_released_ms: u64,
}

#[async_trait]
impl Step for Release {
    type Output = ReleaseOut;
    fn id(&self) -> String {
        StepId::Release.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: "every route".into(),
            action: "release held clients (PgBouncer: RESUME db), settle each route (PgBouncer: server_login_retry back), then connect through each holding route"
                .into(),
            proof: "through the route: pg_is_in_recovery() = false on the new primary's port"
                .into(),
            undo: "nothing".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::NothingToUndo
    }
    async fn apply(&self, cx: &Cx) -> Result<ReleaseOut> {
        let t = Instant::now();
        let routers = self.0.routers()?;
        let bounds: Vec<_> = routers
            .iter()
            .map(|r| try_limit(self.0.limit, r.own_limit()))
            .collect();
        for (r, &bound) in routers.iter().zip(&bounds) {
            let what = format!("release clients at {}", r.describe());
            with_retries(cx, &StepId::Release, &what, bound, || r.release()).await?;
        }
        let released_at = Utc::now();
        let until_released_ms = t.elapsed().as_millis() as u64;
        for (r, &bound) in routers.iter().zip(&bounds) {
            let what = format!("settle {} after the release", r.describe());
            with_retries(cx, &StepId::Release, &what, bound, || r.settle()).await?;
        }
        let mut verified = Vec::new();
        for (r, &bound) in routers.iter().zip(&bounds).filter(|(r, _)| r.holds()) {
            let to = &self.0.to.node;
            let what = format!("verify {} reaches {}", r.describe(), to.name);
            let v = match with_retries(cx, &StepId::Release, &what, bound, || r.verify(to)).await {
                Ok(v) => v,
                Err(e) => bail!("{e:#}. {}", where_it_points(r.as_ref()).await),
            };
            verified.push(Verified {
                route: r.describe(),
                verified: v,
            });
        }
        Ok(ReleaseOut {
            released_at,
            verified,
            until_released_ms,
        })
    }
}
