//! `hold`: hold clients at every route that can (PgBouncer PAUSE): they wait instead of
//! failing. What each route points at is journaled first.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Direction;
use crate::engine::{Cx, Description, Kind, Step};
use crate::pg::{connect, sql};
use crate::spec::HoldPolicy;
use crate::steps::id::StepId;

/// The most the checkpoint before the hold may take.
const PRE_CHECKPOINT: Duration = Duration::from_secs(300);

/// How long reaching a server before the hold may take (an unreachable one is for the stop
/// to report, inside the time box).
const REACH: Duration = Duration::from_secs(5);

/// How long the hold waits for the target to receive the switched WAL segment's padding.
const SHIP_SWITCH: Duration = Duration::from_secs(10);

pub struct Hold {
    pub d: Direction,
    /// How long holding may take (PgBouncer's PAUSE waits for every open transaction).
    pub timeout: Duration,
    pub policy: HoldPolicy,
}

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
    /// The target's timeline while it still streamed (P6), for the proof. Journals of earlier
    /// versions have it in the fence's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_timeline: Option<i64>,
}

#[async_trait]
impl Step for Hold {
    type Output = HoldOut;
    fn id(&self) -> String {
        StepId::Hold.to_string()
    }
    fn describe(&self) -> Description {
        let routers = self.d.routers().unwrap_or_default();
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
            action: format!(
                "CHECKPOINT on {from}, beside it the timeline {to} streams on (pg_stat_wal_receiver); pg_switch_wal() and its padding shipped; then {}",
                if routers.is_empty() {
                    "no route: nothing to hold"
                } else {
                    "record where each route points, and hold its clients (PgBouncer: PAUSE db)"
                },
                from = self.d.from.name(),
                to = self.d.to.name()
            ),
            proof: format!(
                "the hold command returned within {:?} (PAUSE returns once no transaction runs); otherwise clients are resumed and the cutover aborts, naming the sessions that blocked it{}",
                self.timeout,
                if self.policy == HoldPolicy::Terminate { " (after ending them and holding once more)" } else { "" }
            ),
            undo: "release the clients (RESUME db)".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn apply(&self, _: &Cx) -> Result<HoldOut> {
        // The connections the steps inside the pause use, opened now, outside it: across a
        // WAN each new one costs three round trips.
        crate::pg::session::warm(
            &[self.d.from.endpoint(), self.d.to.endpoint()],
            Duration::from_secs(5),
        )
        .await;
        // A checkpoint now, before clients are held: the shutdown checkpoint inside the pause
        // then finds little to write (on a busy primary its dirty buffers were most of `stop`).
        // Best effort and bounded: it only moves work out of the pause. Reaching the server is
        // bounded like the kept connections above (an unreachable old primary is for the
        // stop to report), the checkpoint itself by PRE_CHECKPOINT. The target's timeline is
        // read beside it.
        let from = self.d.from.endpoint();
        let checkpoint = async {
            if let Ok(Ok(c)) = tokio::time::timeout(REACH, crate::pg::session(&from)).await {
                if let Ok(Ok(())) =
                    tokio::time::timeout(PRE_CHECKPOINT, c.batch_execute("CHECKPOINT")).await
                {
                    c.keep();
                }
            }
        };
        let (to_timeline, ()) = tokio::join!(streamed_timeline(&self.d), checkpoint);
        switch_wal_and_ship(&self.d).await;
        let held_at = Utc::now();
        let mut previous = Vec::new();
        for r in self.d.routers()? {
            let points_at = tokio::time::timeout(self.timeout, r.current())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "{} did not say where it points within {:?}",
                        r.describe(),
                        self.timeout
                    )
                })??;
            previous.push(RoutePoint {
                route: r.describe(),
                points_at,
            });
            match tokio::time::timeout(self.timeout, r.hold()).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => {
                    self.release_all().await;
                    return Err(e.context(format!("hold clients at {}", r.describe())));
                }
                Err(_) => {}
            }
            // Not held in time: let every client go again before anything else, then say who
            // was in the way.
            self.release_all().await;
            let blockers = blocking_sessions(&self.d).await;
            if self.policy == HoldPolicy::Terminate && !blockers.is_empty() {
                terminate(&self.d, &blockers).await?;
                if let Ok(Ok(())) = tokio::time::timeout(self.timeout, r.hold()).await {
                    continue;
                }
                self.release_all().await;
            }
            bail!(
                "{} could not hold its clients within {:?}{}; clients were resumed and nothing else was changed",
                r.describe(),
                self.timeout,
                if blockers.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": open transactions on {} keep it from completing: {}",
                        self.d.from.name(),
                        blockers.iter().map(|b| b.to_string()).collect::<Vec<_>>().join("; ")
                    )
                }
            );
        }
        Ok(HoldOut {
            held_at,
            previous,
            to_timeline,
        })
    }
    async fn compensate(&self, _: &Cx, _: Option<HoldOut>) -> Result<()> {
        self.release_then_settle(&self.d.routers()?).await
    }
}

/// The timeline the target receives on while its walreceiver still runs, for the proof (P6):
/// once the old primary is down there is no receiver row, and a standby's control file lags.
/// Read beside the checkpoint, before clients are held (it cannot change before the stop: it
/// is the old primary's), and journaled, so a resumed run has it too. Bounded; `None` when
/// the target does not answer or no walreceiver runs (the proof then reads it otherwise).
async fn streamed_timeline(d: &Direction) -> Option<i64> {
    let read = async {
        let c = crate::pg::session(&d.to.endpoint()).await.ok()?;
        let tli = sql::walreceiver(&c).await.ok()?;
        c.keep();
        tli.map(|(_, tli)| i64::from(tli))
    };
    tokio::time::timeout(REACH, read).await.ok().flatten()
}

/// A fresh WAL segment on the old primary, and its padding shipped to the target, before
/// clients are held. Two reasons, both about the pause:
/// - the old primary, started later as the new one's standby, streams from the start of the
///   segment that holds its shutdown checkpoint: without a switch that is up to a whole
///   segment (16 MB) fetched again inside the pause;
/// - a switch *inside* the pause (where the soft fence's step once had it) makes the walsender ship the rest of
///   the segment, zeros, before a fast shutdown may end: across a 30 ms WAN that was eight
///   round trips of `stop`.
///
/// Best effort and bounded: it only moves work out of the pause; the proof still demands every
/// byte. The wait ends when the target has received up to the flush position read right after
/// the switch (the next segment's start, or later).
async fn switch_wal_and_ship(d: &Direction) {
    // The flush position after the switch, read by the same statement.
    let switched = async {
        let c = crate::pg::session(&d.from.endpoint()).await?;
        let until = sql::lsn(
            &c,
            "SELECT pg_current_wal_flush_lsn()::text FROM (SELECT pg_switch_wal()) AS switched",
        )
        .await?;
        c.keep();
        anyhow::Ok(until)
    };
    let Ok(Ok(Some(until))) = tokio::time::timeout(REACH, switched).await else {
        return;
    };
    let shipped = async {
        loop {
            let received = async {
                let c = crate::pg::session(&d.to.endpoint()).await?;
                let lsn = sql::lsn(&c, "SELECT pg_last_wal_receive_lsn()::text").await?;
                c.keep();
                anyhow::Ok(lsn)
            };
            if let Ok(Ok(Some(at))) = tokio::time::timeout(REACH, received).await {
                if at >= until {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(SHIP_SWITCH, shipped).await;
}

impl Hold {
    /// Best effort: used when the hold itself failed.
    async fn release_all(&self) {
        let _ = self
            .release_then_settle(&self.d.routers().unwrap_or_default())
            .await;
    }

    /// Every route released, then each settled (PgBouncer: its retry delay back once the
    /// clients have gone), as the release step does; each call under the hold's time limit.
    /// Every route is tried even when one fails (its clients need not wait on another's
    /// provider); the first failure is the answer.
    async fn release_then_settle(&self, routers: &[Box<dyn crate::route::Router>]) -> Result<()> {
        let mut first_failure = None;
        for settle in [false, true] {
            for r in routers {
                let call = if settle { r.settle() } else { r.release() };
                let done = tokio::time::timeout(self.timeout, call)
                    .await
                    .map_err(|_| anyhow::anyhow!("no answer within {:?}", self.timeout))
                    .and_then(|done| done)
                    .with_context(|| match settle {
                        false => format!("release clients at {}", r.describe()),
                        true => format!("settle {} after the release", r.describe()),
                    });
                if let Err(e) = done {
                    first_failure.get_or_insert(e);
                }
            }
        }
        first_failure.map_or(Ok(()), Err)
    }
}

/// A session with an open transaction on the serving primary.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocker {
    pub pid: i32,
    pub user: String,
    pub application: String,
    pub state: String,
    pub since: DateTime<Utc>,
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} (user {}, application {:?}, {} since {})",
            self.pid,
            self.user,
            self.application,
            self.state,
            self.since.format("%H:%M:%S UTC")
        )
    }
}

/// The client sessions on `from` inside a transaction, oldest first (what PAUSE waits for).
async fn blocking_sessions(d: &Direction) -> Vec<Blocker> {
    let query = async {
        let c = connect(&d.from.endpoint()).await?;
        let rows = c
            .query(
                "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), coalesce(state, ''),
                        coalesce(xact_start, query_start, backend_start)
                   FROM pg_stat_activity
                  WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                    AND xact_start IS NOT NULL
                    AND coalesce(application_name, '') NOT LIKE 'migrate%'
                  ORDER BY xact_start",
                &[],
            )
            .await?;
        anyhow::Ok(
            rows.iter()
                .map(|r| Blocker {
                    pid: r.get(0),
                    user: r.get(1),
                    application: r.get(2),
                    state: r.get(3),
                    since: r.get(4),
                })
                .collect(),
        )
    };
    match tokio::time::timeout(Duration::from_secs(5), query).await {
        Ok(Ok(b)) => b,
        _ => Vec::new(),
    }
}

async fn terminate(d: &Direction, blockers: &[Blocker]) -> Result<()> {
    let pids: Vec<i32> = blockers.iter().map(|b| b.pid).collect();
    tokio::time::timeout(Duration::from_secs(5), async {
        let c = connect(&d.from.endpoint()).await?;
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid",
            &[&pids],
        )
        .await?;
        anyhow::Ok(())
    })
    .await
    .context("end the sessions blocking the hold: no answer")?
}
