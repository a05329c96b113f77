//! `proof`, the evidence: the stopped primary's control file says "shut down" at checkpoint L
//! on timeline T, and the new node has received and replayed past L on T. Time-boxed: without
//! the proof in time there is no promotion, and the cutover is undone.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::fence::FenceOut;
use super::hold::HoldOut;
use super::memo::Memo;
use super::stop::FRESH_CONTROL;
use super::watch::{Sample, Watch};
use super::Direction;
use crate::engine::{Cx, Description, Kind, Step};
use crate::host::Cmd;
use crate::pg::{connect, session, sql, Lsn};
use crate::steps::id::StepId;
use crate::steps::member::Member;
use tokio_postgres::Client;

pub struct Proof {
    pub d: Direction,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProofOut {
    /// L: the stopped primary's shutdown checkpoint.
    pub checkpoint_lsn: Lsn,
    /// T: the timeline it shut down on.
    pub timeline: i64,
    pub receive_lsn: Lsn,
    pub replay_lsn: Lsn,
}

/// What `pg_controldata` says of the stopped primary.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub state: String,
    pub checkpoint: Lsn,
    pub timeline: i64,
}

/// One sample of the target.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub receive: Option<Lsn>,
    pub replay: Option<Lsn>,
    /// The timeline from the target's control file (lags on a standby, P6).
    pub timeline: i64,
    pub in_recovery: bool,
}

/// The proof's verdict on one sample.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Proven(ProofOut),
    /// Not yet: sample again until the time box.
    Wait,
    /// Never: no promotion, whatever comes later.
    Refuse(String),
}

/// Pure: does this sample prove the target has every byte? `journaled_tli` is the target's
/// timeline read while it still streamed (`hold`'s record), preferred to the control
/// file's.
pub fn verdict(
    from: &str,
    to: &str,
    ctl: &Control,
    at: &Position,
    journaled_tli: Option<i64>,
) -> Verdict {
    if ctl.state != "shut down" {
        return Verdict::Refuse(format!(
            "{from} is not cleanly shut down (pg_controldata says {:?}); no promotion",
            ctl.state
        ));
    }
    if !at.in_recovery {
        return Verdict::Refuse(format!(
            "{to} is not in recovery: it must be a standby to be promoted"
        ));
    }
    let (Some(rc), Some(rp)) = (at.receive, at.replay) else {
        return Verdict::Wait;
    };
    if rc <= ctl.checkpoint || rp <= ctl.checkpoint {
        return Verdict::Wait;
    }
    let tli = journaled_tli.unwrap_or(at.timeline);
    if tli != ctl.timeline {
        return Verdict::Refuse(format!(
            "{to} is on timeline {tli}, {from} shut down on timeline {}; no promotion",
            ctl.timeline
        ));
    }
    Verdict::Proven(ProofOut {
        checkpoint_lsn: ctl.checkpoint,
        timeline: ctl.timeline,
        receive_lsn: rc,
        replay_lsn: rp,
    })
}

/// The control file of a member's (stopped) server, read in the C locale: the field names
/// are translated in other locales.
pub(crate) async fn controldata(m: &Member) -> Result<Control> {
    let server = m.server()?;
    let out = m
        .host
        .run_ok(
            &Cmd::new([
                server.tool("pg_controldata"),
                "-D".into(),
                m.node.data_dir.display().to_string(),
            ])
            .env("LC_ALL", "C"),
        )
        .await?;
    parse_controldata(&out.stdout_text(), m.name())
}

pub(crate) fn parse_controldata(text: &str, node: &str) -> Result<Control> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .ok_or_else(|| anyhow!("pg_controldata of {node} has no {name:?}"))
    };
    Ok(Control {
        state: field("Database cluster state:")?,
        checkpoint: field("Latest checkpoint location:")?
            .parse()
            .map_err(|e: String| anyhow!(e))?,
        timeline: field("Latest checkpoint's TimeLineID:")?.parse()?,
    })
}

/// The target's received and replayed positions, timeline and recovery state, on `c`.
pub(super) async fn position_on(c: &Client) -> Result<Position> {
    let r = sql::one(
        c,
        "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, timeline_id::bigint, pg_is_in_recovery()
           FROM pg_control_checkpoint()",
    )
    .await?;
    let lsn = |i: usize| {
        r.get::<_, Option<String>>(i)
            .and_then(|s| s.parse::<Lsn>().ok())
    };
    Ok(Position {
        receive: lsn(0),
        replay: lsn(1),
        timeline: r.get(2),
        in_recovery: r.get(3),
    })
}

/// The target watched from the start of `stop` (see [`Watch`]), by run and target.
static AHEAD: Memo<Watch> = Memo::new();

/// Watch the target while the old primary stops (clients are held already): the liveness
/// probe and the first sample past the shutdown checkpoint then cost the pause nothing.
/// Bounded by `limit`: a frozen postmaster never answers the probe, and the proof then waits
/// for it only as long as its time box.
pub(super) fn open_ahead(run_id: &str, to: &Member, limit: Duration) {
    AHEAD.remember(run_id, to.name(), Watch::start(to.endpoint(), limit));
}

/// End the watch `open_ahead` started (the stop failed: no proof will take it).
pub(super) fn close_ahead(run_id: &str, to: &Member) {
    drop(AHEAD.take(run_id, to.name()));
}

/// The watch's next sample or one asked now on the kept connection, whichever comes first.
/// The connection stays kept when the watch wins (the ask is only cut short): dropping it
/// would make the next step pay a new connection's set-up.
async fn next_or_ask(w: &mut Watch, ep: &crate::pg::Endpoint, left: Duration) -> Option<Sample> {
    let s = match tokio::time::timeout(left, session(ep)).await {
        Ok(Ok(s)) => s,
        _ => return w.next(left).await,
    };
    let (got, asked_ok) = tokio::select! {
        n = w.next(left) => (n, true),
        a = tokio::time::timeout(left, position_on(&s)) => match a {
            Ok(Ok(at)) => (Some(Ok(at)), true),
            Ok(Err(e)) => (Some(Err(format!("{e:#}"))), false),
            Err(_) => (Some(Err(format!("no answer within {left:?}"))), false),
        },
    };
    if asked_ok {
        s.keep();
    }
    got
}

/// One sample of the target without a watch (a resumed run, or the watch ended). The first
/// is taken on a kept connection while a new one is opened: the postmaster must fork a
/// backend for it, which shows the target alive as a whole since the stop began (a frozen
/// postmaster still has its old backends and walreceiver answering, and would then never
/// carry out the promotion; the hang-target rehearsal freezes it right after the hold).
/// Later samples ask the new connection. A postmaster that freezes after that is caught by
/// the promotion's own time limit, past the point of no return: the old primary stays down
/// and staged, and the run stops for the operator.
async fn position(to: &Member, fresh: &mut Option<Client>) -> Result<Position> {
    if let Some(c) = fresh.take().filter(|c| !c.is_closed()) {
        let at = position_on(&c).await;
        if at.is_ok() {
            *fresh = Some(c);
        }
        return at;
    }
    let ep = to.endpoint();
    let (opened, kept) = tokio::join!(connect(&ep), async {
        let s = session(&ep).await?;
        let at = position_on(&s).await?;
        s.keep();
        anyhow::Ok(at)
    });
    let c = opened?;
    let at = match kept {
        Ok(at) => at,
        Err(_) => position_on(&c).await?,
    };
    *fresh = Some(c);
    Ok(at)
}

#[async_trait]
impl Step for Proof {
    type Output = ProofOut;
    fn id(&self) -> String {
        StepId::Proof.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: format!("{} and {}", self.d.from.name(), self.d.to.name()),
            action: format!(
                "pg_controldata {} (must say \"shut down\"; read checkpoint L and timeline T); on {}: pg_last_wal_receive_lsn() > L and pg_last_wal_replay_lsn() > L on T, within {:?}",
                self.d.from.node.data_dir.display(),
                self.d.to.name(),
                self.timeout
            ),
            proof: "both LSNs strictly past L, journaled".into(),
            undo: "nothing (read-only); if it does not come in time the cutover is aborted".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, cx: &Cx) -> Result<ProofOut> {
        let t = Instant::now();
        let journaled_tli = match cx
            .find::<HoldOut>(&StepId::Hold)?
            .and_then(|h| h.to_timeline)
        {
            Some(tli) => Some(tli),
            // A journal of an earlier version, whose fence step read it.
            None => cx
                .find::<FenceOut>(&StepId::Fence)?
                .and_then(|f| f.to_timeline),
        };
        let (from, to) = (self.d.from.name(), self.d.to.name());
        // Read by the stop's own call when this process stopped it; else read now.
        let ctl = match FRESH_CONTROL.take(&cx.run_id, from) {
            Some(text) => parse_controldata(&text, from)?,
            None => controldata(&self.d.from).await?,
        };
        let mut last: Option<Position> = None;
        let mut fresh: Option<Client> = None;
        // Watched since the stop began, in this process: its newest sample first, then each
        // newer one. Without a watch (a resumed run), or once it ends, samples asked here.
        let mut watch = AHEAD.take(&cx.run_id, to);
        let mut asked = false;
        loop {
            // The target may be briefly unreachable; that is "not yet", until the time box.
            // A hung target (frozen host, cut link) must not outlast the time box either.
            let left = self
                .timeout
                .saturating_sub(t.elapsed())
                .max(Duration::from_millis(200));
            let watched = match watch.as_mut() {
                Some(w) => match w.forks(left).await {
                    Err(e) => Some(Err(e)),
                    // The newest sample (taken before the stop's answer came back, or the
                    // first one after).
                    Ok(()) if last.is_none() => w.next(left).await,
                    // Not yet, once: the watch's next sample or one asked now, whichever
                    // comes first (on a LAN asking beats the watch's next tick).
                    Ok(()) if !asked => {
                        asked = true;
                        next_or_ask(w, &self.d.to.endpoint(), left).await
                    }
                    Ok(()) => w.next(left).await,
                },
                None => None,
            };
            let sample = match watched {
                Some(Ok(at)) => Ok(at),
                Some(Err(e)) => {
                    watch = None;
                    Err(anyhow!(e))
                }
                None => {
                    watch = None;
                    match tokio::time::timeout(left, position(&self.d.to, &mut fresh)).await {
                        Ok(r) => r,
                        Err(_) => Err(anyhow!("no answer within {left:?}")),
                    }
                }
            };
            match sample {
                Ok(at) => {
                    match verdict(from, to, &ctl, &at, journaled_tli) {
                        Verdict::Proven(out) => return Ok(out),
                        Verdict::Refuse(why) => bail!(why),
                        Verdict::Wait => {}
                    }
                    last = Some(at);
                }
                Err(e) if t.elapsed() > self.timeout => {
                    let text = format!("{e:#}");
                    bail!(
                        "no proof within {:?}: {to} is unreachable ({}); not promoting",
                        self.timeout,
                        text.lines().next().unwrap_or_default()
                    );
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            if t.elapsed() > self.timeout {
                let shown = |l: Option<Lsn>| l.map_or_else(|| "nothing".into(), |l| l.to_string());
                let (rc, rp) = last
                    .as_ref()
                    .map_or((None, None), |p| (p.receive, p.replay));
                bail!(
                    "{to} did not receive and replay past {from}'s shutdown checkpoint {} within {:?} (received {}, replayed {}); not promoting",
                    ctl.checkpoint,
                    self.timeout,
                    shown(rc),
                    shown(rp)
                );
            }
            if watch.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    fn ctl(state: &str) -> Control {
        Control {
            state: state.into(),
            checkpoint: lsn("0/3000028"),
            timeline: 1,
        }
    }

    fn at(receive: Option<&str>, replay: Option<&str>, timeline: i64) -> Position {
        Position {
            receive: receive.map(lsn),
            replay: replay.map(lsn),
            timeline,
            in_recovery: true,
        }
    }

    #[test]
    fn both_positions_strictly_past_the_checkpoint_on_the_same_timeline_prove_it() {
        let v = verdict(
            "old",
            "new",
            &ctl("shut down"),
            &at(Some("0/30000A0"), Some("0/30000A0"), 1),
            None,
        );
        assert_eq!(
            v,
            Verdict::Proven(ProofOut {
                checkpoint_lsn: lsn("0/3000028"),
                timeline: 1,
                receive_lsn: lsn("0/30000A0"),
                replay_lsn: lsn("0/30000A0"),
            })
        );
    }

    #[test]
    fn equal_to_the_checkpoint_or_nothing_received_is_not_yet() {
        let c = ctl("shut down");
        for sample in [
            at(Some("0/3000028"), Some("0/30000A0"), 1),
            at(Some("0/30000A0"), Some("0/3000028"), 1),
            at(None, Some("0/30000A0"), 1),
            at(Some("0/30000A0"), None, 1),
        ] {
            assert_eq!(verdict("old", "new", &c, &sample, None), Verdict::Wait);
        }
    }

    #[test]
    fn a_dirty_shutdown_a_primary_target_or_another_timeline_is_never_a_proof() {
        let past = at(Some("0/30000A0"), Some("0/30000A0"), 1);
        assert!(matches!(
            verdict("old", "new", &ctl("in production"), &past, None),
            Verdict::Refuse(w) if w.contains("not cleanly shut down")
        ));
        let mut primary = past.clone();
        primary.in_recovery = false;
        assert!(matches!(
            verdict("old", "new", &ctl("shut down"), &primary, None),
            Verdict::Refuse(w) if w.contains("not in recovery")
        ));
        assert!(matches!(
            verdict("old", "new", &ctl("shut down"), &at(Some("0/30000A0"), Some("0/30000A0"), 2), None),
            Verdict::Refuse(w) if w.contains("timeline 2")
        ));
        // The journaled timeline (read while streaming) wins over the lagging control file.
        assert!(matches!(
            verdict(
                "old",
                "new",
                &ctl("shut down"),
                &at(Some("0/30000A0"), Some("0/30000A0"), 2),
                Some(1)
            ),
            Verdict::Proven(_)
        ));
    }

    #[test]
    fn controldata_fields_are_read_from_c_locale_output() {
        let text = "pg_control version number:            1300\nDatabase cluster state:               shut down\nLatest checkpoint location:           0/3000028\nLatest checkpoint's TimeLineID:       1\n";
        assert_eq!(parse_controldata(text, "old").unwrap(), ctl("shut down"));
        assert!(parse_controldata("Datenbank-Cluster-Status: heruntergefahren", "old").is_err());
    }
}
