//! `hold`: hold clients at every route that can (PgBouncer PAUSE): they wait instead of
//! failing. What each route points at is journaled first.

use anyhow::{Context, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Direction;
use crate::engine::{Cx, Description, Kind, Step};
use crate::steps::id::StepId;

pub struct Hold(pub Direction);

/// Where one route pointed before the switch, in its provider's own terms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutePoint {
    pub route: String,
    pub points_at: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldOut {
    /// The write pause starts here.
    pub held_at: DateTime<Utc>,
    pub previous: Vec<RoutePoint>,
}

#[async_trait]
impl Step for Hold {
    type Output = HoldOut;
    fn id(&self) -> String {
        StepId::Hold.to_string()
    }
    fn describe(&self) -> Description {
        let routers = self.0.routers().unwrap_or_default();
        Description {
            host: if routers.is_empty() {
                "-".into()
            } else {
                routers
                    .iter()
                    .map(|r| r.describe())
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            action: if routers.is_empty() {
                "no route: nothing to hold".into()
            } else {
                "record where each route points, then hold its clients (PgBouncer: PAUSE db)".into()
            },
            proof: "the hold command returned (PAUSE returns once no query runs)".into(),
            undo: "release the clients (RESUME db)".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn apply(&self, _: &Cx) -> Result<HoldOut> {
        let held_at = Utc::now();
        let mut previous = Vec::new();
        for r in self.0.routers()? {
            previous.push(RoutePoint {
                route: r.describe(),
                points_at: r.current().await?,
            });
            r.hold()
                .await
                .with_context(|| format!("hold clients at {}", r.describe()))?;
        }
        Ok(HoldOut { held_at, previous })
    }
    async fn compensate(&self, _: &Cx, _: Option<HoldOut>) -> Result<()> {
        for r in self.0.routers()? {
            r.release()
                .await
                .with_context(|| format!("release clients at {}", r.describe()))?;
        }
        Ok(())
    }
}
