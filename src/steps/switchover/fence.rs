//! `fence`, the soft fence as a step of its own (read-only by default, client sessions ended
//! over SQL), as earlier versions planned it. No longer planned: `stop`'s call writes the soft
//! fence once the server is down (see `stop.rs` for why), and `hold` reads the target's
//! timeline. Kept as a retired step (`Plan::retire`) so that a run an earlier version
//! journaled with it resumes or is undone as it was planned.

use anyhow::{Context, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Direction;
use crate::engine::{Cx, Description, Kind, Step};
use crate::pg::{connect, session, sql};
use crate::steps::id::StepId;

pub struct Fence(pub Direction);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FenceOut {
    pub fenced_at: DateTime<Utc>,
    pub sessions_ended: i64,
    /// The target's timeline while it still streamed (P6), for the proof.
    pub to_timeline: Option<i64>,
}

#[async_trait]
impl Step for Fence {
    type Output = FenceOut;
    fn id(&self) -> String {
        StepId::Fence.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.0.from.host_label(),
            action: "ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf(); \
                     SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' (except migrate's own)"
                .into(),
            proof: "the settings are reloaded; no client backend remains".into(),
            undo: "ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf()".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn apply(&self, _: &Cx) -> Result<FenceOut> {
        self.0
            .bounded("fence the old primary", async {
                let fenced_at = Utc::now();
                // The target's timeline, read while its walreceiver still runs: once the primary is
                // down there is no receiver row, and a standby's control file lags (P6). Journaled
                // here, before the stop, so a resumed run has it too. Read beside the fence, not
                // before it: both are round trips inside the write pause.
                let timeline = async {
                    let c = session(&self.0.to.endpoint()).await.ok()?;
                    let tli = sql::walreceiver(&c).await.ok().flatten();
                    c.keep();
                    tli.map(|(_, tli)| i64::from(tli))
                };
                let fence = async {
                    let c = session(&self.0.from.endpoint()).await?;
                    // Sent back to back (the driver pipelines requests on one connection) and
                    // run in this order; ALTER SYSTEM cannot share one multi-statement query.
                    // No CHECKPOINT and no WAL switch here: `hold` ran both before clients were
                    // held (see there why), so the shutdown finds little left to write or ship.
                    let (set, reload, ended) = tokio::join!(
                        c.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on"),
                        c.batch_execute("SELECT pg_reload_conf()"),
                        sql::one(
                            &c,
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                          WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                            AND coalesce(application_name, '') NOT LIKE 'migrate%'",
                        ),
                    );
                    set?;
                    reload?;
                    let sessions_ended: i64 = ended?.get(0);
                    c.keep();
                    anyhow::Ok(sessions_ended)
                };
                let (to_timeline, sessions_ended) = tokio::join!(timeline, fence);
                let sessions_ended = sessions_ended?;
                Ok(FenceOut {
                    fenced_at,
                    sessions_ended,
                    to_timeline,
                })
            })
            .await
    }
    async fn compensate(&self, _: &Cx, _: Option<FenceOut>) -> Result<()> {
        unfence(&self.0).await
    }
}

/// The soft fence undone on the old primary, running again: `ALTER SYSTEM RESET
/// default_transaction_read_only` and a reload, bounded (the undo of `stop`, which writes it,
/// and of the retired step).
pub(super) async fn unfence(d: &Direction) -> Result<()> {
    d.bounded("unfence", async {
        let c = connect(&d.from.endpoint()).await.context("unfence")?;
        c.batch_execute("ALTER SYSTEM RESET default_transaction_read_only")
            .await?;
        c.batch_execute("SELECT pg_reload_conf()").await?;
        Ok(())
    })
    .await
}
