//! `stop`, the fence: a clean fast shutdown, which ends every client session and waits for
//! connected standbys to receive everything, shutdown checkpoint included (the hard fence),
//! then, in the same call, the soft fence written into the stopped server's
//! `postgresql.auto.conf` (`default_transaction_read_only`, P4).
//!
//! The call answers once the control file says `shut down`: the postmaster then has one act
//! left, its walsenders' wait for the standbys' confirmation of that checkpoint (a round trip
//! to the target), and the proof waits for the target's own positions past it anyway (P2). So
//! "stop done" means the shutdown checkpoint is written and no server can start there before
//! that postmaster exits, which the staging's call waits for on the host.
//!
//! The soft fence was a step of its own, `ALTER SYSTEM` and the sessions terminated over SQL
//! just before the stop: one round trip inside the write pause that bought nothing the stop
//! does not (clients are held, the fast shutdown terminates every session). Across a WAN each
//! round trip there costs the whole RTT (issue 19).

use std::time::Duration;

use anyhow::{bail, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::guard::{self, IfSilent, Writable};
use super::memo::Memo;
use super::Direction;
use crate::engine::{Cx, Description, Kind, Probe, Step};
use crate::pg::server::{RunState, StopMode};
use crate::steps::id::StepId;

pub struct StopPrimary(pub Direction);

/// How long an undo waits for an interrupted shutdown to finish before restarting the server.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(120);

/// How long an undo lets an interrupted fast shutdown go on before it stops the server at
/// once. A fast shutdown waits for every walsender to have its last WAL confirmed: with the
/// link to the standby cut that is `wal_sender_timeout` (a minute) while clients are held.
/// An immediate stop loses nothing committed (crash recovery replays the WAL at the start).
const FAST_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StopOut {
    /// When the stop returned; `None` when a resumed run found the server already down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<DateTime<Utc>>,
}

/// `pg_controldata` of a server this process just stopped, read by the stop's own call, by
/// run and node. Not journaled (see [`Memo`]): between a crash and the resume the server may
/// have been started by hand, written to and stopped again, and a stale checkpoint would
/// "prove" a target that lacks those writes.
pub(super) static FRESH_CONTROL: Memo = Memo::new();

#[async_trait]
impl Step for StopPrimary {
    type Output = StopOut;
    fn id(&self) -> String {
        StepId::Stop.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.0.from.host_label(),
            action: format!(
                "{} -m fast, and wait; then default_transaction_read_only = 'on' in its postgresql.auto.conf (the soft fence)",
                self.0.from.server_words("stop")
            ),
            proof: format!("{}: not running", self.0.from.server_words("status")),
            undo: format!(
                "{} (as primary again); ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf()",
                self.0.from.server_words("start")
            ),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn probe(&self, cx: &Cx) -> Result<Probe<StopOut>> {
        // Never begun in this run: apply finds out itself whether a postmaster runs (the stop
        // script's first test), one round trip less inside the pause.
        if !cx.in_doubt() {
            return Ok(Probe::NotDone);
        }
        Ok(match self.0.from.server()?.state().await? {
            RunState::Running => Probe::NotDone,
            _ => Probe::Done(StopOut::default()),
        })
    }
    async fn apply(&self, cx: &Cx) -> Result<StopOut> {
        // Under the switchover's limit: the fence's CHECKPOINT left little for the shutdown
        // checkpoint, so a stop longer than the proof's time box is a hang, not work. On the
        // limit the abort (compensate) waits for the shutdown to end, then restarts.
        let limit = self.0.limit;
        // What the next steps need, begun beside the stop: the proof's watch on the target,
        // the staging's look at this host (which waits there, as the stop does, for the
        // shutdown checkpoint to be written).
        super::proof::open_ahead(&cx.run_id, &self.0.to, limit);
        super::stage::inspect_ahead(cx, &self.0, limit);
        let stopped = self
            .0
            .bounded(
                "stopping the old primary",
                self.0
                    .from
                    .server()?
                    .fence_stop_and_read_control(StopMode::Fast, limit),
            )
            .await;
        let control = match stopped {
            Ok(control) => control,
            Err(e) => {
                // Nothing will take what was begun for the next steps: end it now.
                super::proof::close_ahead(&cx.run_id, &self.0.to);
                super::stage::close_ahead(cx, &self.0);
                return Err(e);
            }
        };
        if let Some(text) = control {
            FRESH_CONTROL.remember(&cx.run_id, self.0.from.name(), text);
        }
        Ok(StopOut {
            stopped_at: Some(Utc::now()),
        })
    }
    async fn compensate(&self, _: &Cx, _: Option<StopOut>) -> Result<()> {
        let server = self.0.from.server()?;
        // Interrupted while shutting down (Ctrl-C, the stop's own time limit): the server still
        // "runs" but takes no connection. Let the shutdown finish, then start it again below.
        if server.state().await? == RunState::Running
            && matches!(guard::writable(&self.0.from).await, Writable::Silent(_))
        {
            let deadline = std::time::Instant::now() + SHUTDOWN_WAIT;
            let grace = std::time::Instant::now() + FAST_SHUTDOWN_GRACE;
            let mut immediate = false;
            while server.state().await? == RunState::Running {
                if !immediate && std::time::Instant::now() > grace {
                    immediate = true;
                    // Best effort: where it fails, the wait below still bounds the undo.
                    let _ = server
                        .stop(StopMode::Immediate, Duration::from_secs(30))
                        .await;
                    continue;
                }
                if std::time::Instant::now() > deadline {
                    bail!(
                        "{} neither answers nor finishes shutting down within {SHUTDOWN_WAIT:?}; see its log {}",
                        self.0.from.name(),
                        self.0.from.node.log_file.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if server.state().await? != RunState::Running {
            // Restarted as a primary only while the target is shown not to be one (promoted
            // from outside: an HA manager, an operator after --pause-before promote).
            let before = format!("restarting {} as a primary", self.0.from.name());
            if let Err(why) = guard::none_writable(&[&self.0.to], &before, IfSilent::Accept).await {
                bail!("{why}; {} stays down for the operator", self.0.from.name());
            }
            server
                .start(&self.0.from.node.log_file, Duration::from_secs(300))
                .await?;
        }
        super::fence::unfence(&self.0).await
    }
}
