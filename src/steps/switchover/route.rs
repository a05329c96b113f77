//! `route`: point every route at the new primary and verify the routes that do not hold
//! clients through their application-facing endpoint (a holding route, PgBouncer, is verified
//! through after the release: while paused it would block). Without a route: verify the new
//! primary directly.

use anyhow::{bail, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::memo::Memo;
use super::retry::{try_limit, where_it_points, with_retries};
use super::Direction;
use crate::engine::{Cx, Description, Kind, Step};
use crate::pg::connect;
use crate::steps::id::StepId;

pub struct VerifyPrimary(pub Direction);

/// Every route's `prepare_point`, started by the promotion once its point of no return is
/// journaled, by run and target (see [`prepare_ahead`]).
static PREPARED: Memo<JoinHandle<()>> = Memo::new();

/// Start every route's preparation (PgBouncer: the repointed pgbouncer.ini written, not
/// loaded) beside the promotion: past its point of no return the only way is forward, and
/// nothing a client sees changes before `route` runs. A failure is left to `route`, which
/// then does the whole of it; a resumed run prepares nothing.
pub(super) fn prepare_ahead(cx: &Cx, d: &Direction) {
    let Ok(routers) = d.routers() else { return };
    if routers.is_empty() {
        return;
    }
    let (from, to, limit) = (d.from.node.clone(), d.to.node.clone(), d.limit);
    let preparing = tokio::spawn(async move {
        for r in &routers {
            let _ = tokio::time::timeout(limit, r.prepare_point(&from, &to)).await;
        }
    });
    PREPARED.remember(&cx.run_id, d.to.name(), preparing);
}

/// One route after the switch, in its provider's own terms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pointed {
    pub route: String,
    pub points_at: Value,
    /// What the verification through the route saw (`null` for a holding route: verified
    /// after the release).
    pub verified: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteOut {
    pub primary: String,
    #[serde(default)]
    pub routes: Vec<Pointed>,
    /// Without a route: the new primary's system identifier, from a direct connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
}

#[async_trait]
impl Step for VerifyPrimary {
    type Output = RouteOut;
    fn id(&self) -> String {
        StepId::Route.to_string()
    }
    fn describe(&self) -> Description {
        let routers = self.0.routers().unwrap_or_default();
        if routers.is_empty() {
            return Description {
                host: self.0.to.host_label(),
                action: "no route configured: connect to the new primary directly".into(),
                proof: "pg_is_in_recovery() = false; same system identifier".into(),
                undo: "nothing".into(),
            };
        }
        Description {
            host: routers
                .iter()
                .map(|r| r.describe())
                .collect::<Vec<_>>()
                .join("; "),
            action: format!(
                "point each route at {} (retried with backoff), then verify it",
                self.0.to.name()
            ),
            proof: "the provider shows the new target; a connection through the route reaches the new primary, writable"
                .into(),
            undo: format!("the switchback points each route back at {}", self.0.from.name()),
        }
    }
    fn kind(&self) -> Kind {
        Kind::NothingToUndo
    }
    async fn apply(&self, cx: &Cx) -> Result<RouteOut> {
        if let Some(preparing) = PREPARED.take(&cx.run_id, self.0.to.name()) {
            // Done by now as a rule (it ran beside the promotion); one still under way is
            // waited for rather than raced by a second write of the same file.
            let _ = tokio::time::timeout(self.0.limit, preparing).await;
        }
        let routers = self.0.routers()?;
        let primary = self.0.to.name().to_string();
        if !routers.is_empty() {
            let (from, to) = (&self.0.from.node, &self.0.to.node);
            let limit = self.0.limit;
            let mut routes = Vec::new();
            for r in &routers {
                let what = format!("point {} at {}", r.describe(), to.name);
                let bound = try_limit(limit, r.own_limit());
                let points_at = match with_retries(cx, &StepId::Route, &what, bound, || {
                    r.point(from, to)
                })
                .await
                {
                    Ok(v) => v,
                    Err(e) => bail!("{e:#}. {}", where_it_points(r.as_ref()).await),
                };
                let verified = if r.holds() {
                    Value::Null
                } else {
                    let what = format!("verify {} reaches {}", r.describe(), to.name);
                    match with_retries(cx, &StepId::Route, &what, bound, || r.verify(to)).await {
                        Ok(v) => v,
                        Err(e) => bail!("{e:#}. {}", where_it_points(r.as_ref()).await),
                    }
                };
                routes.push(Pointed {
                    route: r.describe(),
                    points_at,
                    verified,
                });
            }
            return Ok(RouteOut {
                primary,
                routes,
                system_identifier: None,
            });
        }
        let c = connect(&self.0.to.endpoint()).await?;
        let r = c
            .query_one(
                "SELECT pg_is_in_recovery(), system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await?;
        if r.get::<_, bool>(0) {
            bail!("{} is still in recovery", self.0.to.name());
        }
        Ok(RouteOut {
            primary,
            routes: Vec::new(),
            system_identifier: Some(r.get(1)),
        })
    }
}
