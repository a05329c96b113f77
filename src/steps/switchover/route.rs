//! `route`: point every route at the new primary and verify the routes that do not hold
//! clients through their application-facing endpoint (a holding route, PgBouncer, is verified
//! through after the release: while paused it would block). Without a route: verify the new
//! primary directly.

use std::time::Duration;

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

/// What was done ahead for each route, beside the promotion, by run and target (see
/// [`prepare_ahead`]): for a route that holds clients, where it points once pointed (None: not
/// pointed ahead, or that failed); for any other, its preparation only (always None).
static PREPARED: Memo<JoinHandle<Vec<Option<Value>>>> = Memo::new();

/// Start, beside the promotion, once its point of no return is journaled, the part of each
/// route's switch that no client sees before the release: past that point the only way is
/// forward, and across a WAN each round trip taken out of `route` is one less inside the
/// pause.
/// - A route whose clients this run holds (PgBouncer, paused by `hold`, `clients_held`) is
///   pointed outright: its RELOAD changes nothing any client sees until the release's RESUME,
///   which runs only after the promotion is proven. Not in a failover: nothing holds clients
///   there, and a pooler pointed at a target still in recovery would send them to a
///   read-only server.
/// - Any other route only prepares (PgBouncer: pgbouncer.ini written, not loaded): DNS, NAT or
///   HAProxy take effect at once.
///
/// A failure is left to `route`, which then does the whole of it with its retries; a resumed
/// run does nothing ahead.
pub(super) fn prepare_ahead(cx: &Cx, d: &Direction, clients_held: bool) {
    let Ok(routers) = d.routers() else { return };
    if routers.is_empty() {
        return;
    }
    let (from, to, limit) = (d.from.node.clone(), d.to.node.clone(), d.limit);
    let preparing = tokio::spawn(async move {
        let mut pointed = Vec::new();
        for r in &routers {
            if ahead(clients_held, r.holds()) == Ahead::Point {
                let bound = try_limit(limit, r.own_limit());
                let done = tokio::time::timeout(bound, r.point(&from, &to)).await;
                pointed.push(match done {
                    Ok(Ok(v)) => Some(v),
                    Ok(Err(e)) => {
                        tracing::debug!(route = r.describe(), "pointing ahead failed: {e:#}");
                        None
                    }
                    Err(_) => None,
                });
            } else {
                let _ = tokio::time::timeout(limit, r.prepare_point(&from, &to)).await;
                pointed.push(None);
            }
        }
        pointed
    });
    PREPARED.remember(&cx.run_id, d.to.name(), preparing);
}

/// Write, inside `stage` (before the point of no return, clients held), what pointing each
/// route that holds clients writes without loading it (PgBouncer: pgbouncer.ini repointed,
/// not RELOADed), so that beside the promotion only the load is left: one round trip there
/// instead of two. No client sees it: PgBouncer reads the file on RELOAD or a restart only
/// (restarted in between, it would send clients to a standby, which refuses their writes).
/// Best effort, each write bounded: `point` writes the file itself when this did not. The
/// staging's undo writes it back ([`unstage_ahead`]).
pub(super) async fn stage_ahead(d: &Direction) {
    let Ok(routers) = d.routers() else { return };
    let (from, to) = (&d.from.node, &d.to.node);
    let writes = routers
        .iter()
        .filter(|r| ahead(true, r.holds()) == Ahead::Point)
        .map(|r| async move {
            let bound = try_limit(d.limit, r.own_limit());
            match tokio::time::timeout(bound, r.prepare_point(from, to)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(route = r.describe(), "staging the repoint failed: {e:#}")
                }
                Err(_) => tracing::debug!(route = r.describe(), "staging the repoint timed out"),
            }
        });
    futures_util::future::join_all(writes).await;
}

/// The undo of [`stage_ahead`]: each holding route's file pointing at the old primary again
/// (a no-op where it still does). Never loaded in between, so nothing else is to undo.
pub(super) async fn unstage_ahead(d: &Direction) -> Result<()> {
    let (from, to) = (&d.from.node, &d.to.node);
    for r in d.routers()? {
        if ahead(true, r.holds()) == Ahead::Point {
            let bound = try_limit(d.limit, r.own_limit());
            tokio::time::timeout(bound, r.prepare_point(to, from))
                .await
                .map_err(|_| anyhow::anyhow!("{}: no answer within {bound:?}", r.describe()))?
                .map_err(|e| {
                    e.context(format!("point {} back at {}", r.describe(), d.from.name()))
                })?;
        }
    }
    Ok(())
}

/// What is done ahead, beside the promotion, for one route.
#[derive(Debug, PartialEq, Eq)]
enum Ahead {
    /// Pointed outright: its clients are held until the release.
    Point,
    /// Only what no client sees (a file written, not loaded).
    Prepare,
}

/// Pure: a route is pointed beside the promotion only where this run holds its clients and the
/// route really holds them (a pooler's PAUSE); anything else would send clients to a server
/// still in recovery.
fn ahead(clients_held: bool, route_holds: bool) -> Ahead {
    if clients_held && route_holds {
        Ahead::Point
    } else {
        Ahead::Prepare
    }
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
                "point each route at {} (retried with backoff), then verify it; a route whose clients are held is pointed beside the promotion, past its point of no return (they stay held until the release)",
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
        let routers = self.0.routers()?;
        // Done by now as a rule (it ran beside the promotion); one still under way is waited
        // for, as long as its calls may take one after the other, rather than raced by a
        // second call to the same provider; past that it is stopped before `route` calls.
        let ahead = match PREPARED.take(&cx.run_id, self.0.to.name()) {
            Some(mut preparing) => {
                let longest: Duration = routers
                    .iter()
                    .map(|r| try_limit(self.0.limit, r.own_limit()))
                    .sum();
                match tokio::time::timeout(longest, &mut preparing).await {
                    Ok(Ok(pointed)) => pointed,
                    _ => {
                        preparing.abort();
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        let primary = self.0.to.name().to_string();
        if !routers.is_empty() {
            let (from, to) = (&self.0.from.node, &self.0.to.node);
            let limit = self.0.limit;
            let mut routes = Vec::new();
            for (i, r) in routers.iter().enumerate() {
                let what = format!("point {} at {}", r.describe(), to.name);
                let bound = try_limit(limit, r.own_limit());
                let points_at = match ahead.get(i).cloned().flatten() {
                    // Pointed beside the promotion; what it loaded was checked then.
                    Some(v) => v,
                    None => {
                        match with_retries(cx, &StepId::Route, &what, bound, || r.point(from, to))
                            .await
                        {
                            Ok(v) => v,
                            Err(e) => bail!("{e:#}. {}", where_it_points(r.as_ref()).await),
                        }
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a holding route whose clients this run holds is pointed before the promotion is
    /// proven: not in a failover (nothing held), never DNS, NAT or HAProxy (live at once).
    #[test]
    fn only_a_route_whose_clients_are_held_is_pointed_beside_the_promotion() {
        assert_eq!(ahead(true, true), Ahead::Point);
        assert_eq!(ahead(true, false), Ahead::Prepare);
        assert_eq!(ahead(false, true), Ahead::Prepare);
        assert_eq!(ahead(false, false), Ahead::Prepare);
    }
}
