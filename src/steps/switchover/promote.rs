//! `promote`, the point of no return.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::guard::{self, IfSilent, Writable};
use super::memo::Memo;
use super::Direction;
use crate::engine::{Cx, Description, Kind, Probe, Step};
use crate::pg::{session, sql};
use crate::steps::id::StepId;

/// Whether the target left recovery, and then its current WAL file and position. The WAL
/// functions are only called outside recovery (they fail during it): a CASE, not a WHERE.
/// Then, where this role may read files in the data directory, the new timeline's history
/// file, written before recovery ended (for `reverse`, see there); NULL where it may not.
const PROMOTED_YET: &str = "SELECT pg_is_in_recovery(),
        CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
        CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
        CASE WHEN pg_is_in_recovery()
               OR NOT has_function_privilege('pg_read_file(text, bigint, bigint, boolean)', 'EXECUTE')
             THEN NULL
             ELSE pg_read_file('pg_wal/' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) || '.history', 0, 65536, true) END";

/// Wait on the server, in 5 ms steps and at most until the next request is due, while the
/// target is still in recovery: sent between the request and the poll, it spares the poll's
/// round trip across a WAN when the promotion takes longer than the request's (locally it
/// only replaces the client's 5 ms polling). `pg_is_in_recovery()` and `pg_sleep()` are
/// volatile, so each step asks again.
const UNTIL_PROMOTED: &str = "WITH RECURSIVE step(n) AS (
        SELECT 0
        UNION ALL
        SELECT n + 1 FROM step
         WHERE n < 48 AND pg_is_in_recovery() AND pg_sleep(0.005) IS NOT NULL)
      SELECT count(*) FROM step";

/// The new timeline's history file as the promotion wrote it, for the old primary's start in
/// `reverse` by this same process (see [`super::memo`]), by run and by the node it is for.
pub(super) static NEW_HISTORY: Memo = Memo::new();

/// How long a promotion request may go unanswered before it is sent again (P13).
const PROMOTE_RESIGNAL: Duration = Duration::from_millis(250);

pub struct Promote {
    pub d: Direction,
    pub timeout: Duration,
    pub others: Others,
}

/// Which nodes must be shown not writable before the promotion, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Others {
    /// A switchover: the old primary, stopped and staged as the target's standby.
    Staged,
    /// A failover: the lost primary as its fence left it (see
    /// [`crate::steps::failover::before_promotion`]), and no other node a primary.
    Failover,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromoteOut {
    /// The new timeline.
    pub timeline: i64,
    /// The new primary's WAL position just after it left recovery.
    pub lsn: String,
    /// From the first request until `pg_is_in_recovery()` said false.
    pub promote_ms: u64,
    /// How many promotion requests were sent (more than one: P13).
    pub signals: u32,
}

/// SQLSTATE 55000 (object_not_in_prerequisite_state) with this text: promoted meanwhile.
fn already_promoted(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == tokio_postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE
            && d.message().contains("not in progress")
    })
}

#[async_trait]
impl Step for Promote {
    type Output = PromoteOut;
    fn id(&self) -> String {
        StepId::Promote.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.d.to.host_label(),
            action: format!(
                "SELECT pg_promote(false), repeated every {} ms while pg_is_in_recovery(), within {:?}",
                PROMOTE_RESIGNAL.as_millis(),
                self.timeout
            ),
            proof: "pg_is_in_recovery() = false; the new timeline from pg_walfile_name(pg_current_wal_lsn())".into(),
            undo: "none: going back is a switchover in the other direction (migrate rollback)".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::PointOfNoReturn
    }
    /// The last look before the point of no return: the target must still be a standby (or
    /// promoted by this very step before a crash), and the old primary must not be writable.
    async fn probe(&self, cx: &Cx) -> Result<Probe<PromoteOut>> {
        let (from, to) = (self.d.from.name(), self.d.to.name());
        let before = format!("promoting {to}");
        // Both asked at once: this runs inside the write pause.
        // In a switchover, seen in recovery by stage, after the proof, a moment ago in this
        // process: not asked again.
        let seen = match self.others {
            Others::Staged => super::stage::recovering_since_staged(cx, &self.d),
            Others::Failover => None,
        };
        let target = async {
            match seen {
                Some(seen) => {
                    tracing::debug!(node = self.d.to.name(), seen, "not asked again");
                    Writable::No(seen)
                }
                None => guard::writable(&self.d.to).await,
            }
        };
        let (target, checked) = tokio::join!(target, async {
            match self.others {
                // Seen down by stage, after its standby.signal was durable, a moment ago in
                // this process: no start can make it writable since. Else asked now.
                Others::Staged => match super::stage::down_since_staged(cx, &self.d) {
                    Some(seen) => {
                        tracing::debug!(node = self.d.from.name(), seen, "not asked again");
                        Ok(())
                    }
                    None => {
                        guard::none_writable(&[&self.d.demoted()], &before, IfSilent::Refuse).await
                    }
                },
                Others::Failover => crate::steps::failover::before_promotion(&self.d, cx).await,
            }
        });
        if let Writable::Yes = target {
            if !cx.in_doubt() {
                return Ok(Probe::Unsafe(format!(
                    "{to} is already a writable primary although this run has not promoted it (promoted from outside: an HA manager, an operator?); {from} is staged as its standby and stays down; find out which node clients wrote to before anything else"
                )));
            }
        }
        if let Err(why) = checked {
            return Ok(Probe::Unsafe(format!("{why}; nothing was promoted")));
        }
        Ok(Probe::NotDone)
    }
    async fn apply(&self, cx: &Cx) -> Result<PromoteOut> {
        let t = Instant::now();
        // Past the point of no return (journaled before this runs): the routes' preparation
        // runs beside the promotion, on other hosts. In a switchover `hold` holds the clients
        // of every route that can (see prepare_ahead).
        super::route::prepare_ahead(cx, &self.d, self.others == Others::Staged);
        let c = self
            .d
            .bounded("connect to the target", session(&self.d.to.endpoint()))
            .await?;
        let mut signals = 0;
        let mut last_signal = None::<Instant>;
        // pg_promote(wait => true) checks every 100 ms, inside the write pause; this polls every
        // 5 ms. A request that lands just as the walreceiver lost the stopped primary can sit
        // out wal_retrieve_retry_interval (P13), so an unanswered request is repeated. The
        // poll reads the new timeline in the same query once recovery has ended (one round
        // trip less): the control file shows it only after the asynchronous end-of-recovery
        // checkpoint (P6); the current WAL file's name has it now.
        let (walfile, lsn, history) = loop {
            // The request (when due) and the poll go out together on the one connection, which
            // runs them in order: the first poll does not wait a round trip for the request.
            let signal = last_signal.is_none_or(|at| at.elapsed() >= PROMOTE_RESIGNAL);
            let (sent, polled) = self
                .d
                .bounded(
                    "pg_promote() and pg_is_in_recovery() on the target",
                    async {
                        let (sent, _, polled) = tokio::join!(
                            async {
                                if signal {
                                    Some(c.batch_execute("SELECT pg_promote(false)").await)
                                } else {
                                    None
                                }
                            },
                            c.batch_execute(UNTIL_PROMOTED),
                            sql::one(&c, PROMOTED_YET)
                        );
                        Ok((sent, polled))
                    },
                )
                .await?;
            if let Some(sent) = sent {
                if let Err(e) = sent {
                    if !already_promoted(&e) {
                        return Err(e.into());
                    }
                }
                signals += 1;
                last_signal = Some(Instant::now());
            }
            let r = polled?;
            if let (false, Some(walfile), Some(lsn)) = (
                r.get::<_, bool>(0),
                r.get::<_, Option<String>>(1),
                r.get::<_, Option<String>>(2),
            ) {
                break (walfile, lsn, r.get::<_, Option<String>>(3));
            }
            if t.elapsed() > self.timeout {
                bail!(
                    "{} did not finish promotion within {:?}",
                    self.d.to.name(),
                    self.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let promote_ms = t.elapsed().as_millis() as u64;
        c.keep();
        let timeline = i64::from_str_radix(walfile.get(..8).unwrap_or_default(), 16)
            .with_context(|| format!("timeline from WAL file name {walfile:?}"))?;
        if let Some(text) = history {
            NEW_HISTORY.remember(&cx.run_id, self.d.from.name(), text);
        }
        Ok(PromoteOut {
            timeline,
            lsn,
            promote_ms,
            signals,
        })
    }
    async fn compensate(&self, _: &Cx, _: Option<PromoteOut>) -> Result<()> {
        bail!("a promotion cannot be undone")
    }
}
