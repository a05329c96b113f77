//! `loss`: what the promotion can lose, measured after the fence and before the point of no
//! return, and held to what the operator accepted.
//!
//! The best evidence is the lost primary's own WAL end ([`super::wal_end`]): exact, since
//! every acknowledged commit was flushed there first. Without its disk, the newest position
//! it was known to have (the previous run's promotion, another standby's receive position) is
//! only a lower bound: the loss is at least that, plus whatever it wrote since.

use std::time::Duration;

use anyhow::{bail, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Failover, IsolateOut, Seen};
use crate::engine::{Cx, Description, Kind, Step};
use crate::pg::{connect, Lsn};
use crate::steps::id::StepId;
use crate::steps::member::Member;

pub struct Loss(pub Failover);

/// What the lost primary is known to have had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Evidence {
    /// The end of its WAL, read from its disk: nothing acknowledged lies beyond.
    Exact { lsn: Lsn, source: String },
    /// The newest position it was seen at: it had at least this, maybe more.
    AtLeast(Seen),
    /// Nothing at all is known.
    Unknown,
}

impl Evidence {
    pub fn lsn(&self) -> Option<Lsn> {
        match self {
            Evidence::Exact { lsn, .. } => Some(*lsn),
            Evidence::AtLeast(s) => Some(s.lsn),
            Evidence::Unknown => None,
        }
    }
    pub fn exact(&self) -> bool {
        matches!(self, Evidence::Exact { .. })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossOut {
    pub evidence: Evidence,
    /// What the node to promote has: its receive (or replay) position.
    pub received: Lsn,
    /// Bytes of the lost primary's WAL the node lacks (exact evidence: at most this is lost;
    /// otherwise at least this).
    pub loss_bytes: u64,
    pub measured_at: DateTime<Utc>,
    /// Other standbys that have more than the node to promote (a better candidate).
    #[serde(default)]
    pub ahead: Vec<Seen>,
    pub accepted: Option<u64>,
}

/// Pure: whether the measured loss is within what the operator accepted. A failover goes
/// ahead on its own only when it is proven to lose nothing; anything else needs
/// `accepted` (`--accept-loss`, or the figure confirmed on the terminal) at or above the
/// measured bytes.
pub fn loss_verdict(loss: u64, exact: bool, accepted: Option<u64>) -> Result<(), String> {
    match accepted {
        None if exact && loss == 0 => Ok(()),
        None if exact => Err(format!(
            "up to {loss} bytes of acknowledged WAL may be lost; accept them with --accept-loss {loss}"
        )),
        None => Err(format!(
            "at least {loss} bytes of WAL may be lost, and more if the lost primary wrote after the evidence; accept with --accept-loss {loss} (or more)"
        )),
        Some(a) if a >= loss => Ok(()),
        Some(a) => Err(format!(
            "{} {loss} bytes may be lost, more than the {a} accepted; accept with --accept-loss {loss}",
            if exact { "up to" } else { "at least" }
        )),
    }
}

/// A standby's received position (receive, else replay), and whether it is in recovery.
pub async fn position(m: &Member) -> Result<(bool, Lsn)> {
    let ask = async {
        let c = connect(&m.endpoint()).await?;
        let r = c
            .query_one(
                "SELECT pg_is_in_recovery(), greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text",
                &[],
            )
            .await?;
        let lsn: Option<String> = r.get(1);
        let lsn = match lsn {
            Some(l) => l.parse().map_err(anyhow::Error::msg)?,
            None => bail!("{} has no received WAL position (not a standby?)", m.name()),
        };
        Ok((r.get::<_, bool>(0), lsn))
    };
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .map_err(|_| anyhow::anyhow!("{}: no answer within 5 s", m.name()))?
}

/// The evidence and the loss it gives, with what was seen of the others.
pub async fn measure(f: &Failover, last_known: Option<Seen>) -> Result<LossOut> {
    let (in_recovery, received) = position(&f.d.to).await?;
    if !in_recovery {
        bail!(
            "{} is already a primary: nothing to fail over to",
            f.d.to.name()
        );
    }
    let mut seen: Vec<Seen> = last_known.into_iter().collect();
    for m in &f.d.followers {
        if let Ok((true, lsn)) = position(m).await {
            seen.push(Seen {
                node: m.name().into(),
                lsn,
                at: Utc::now(),
                source: format!("{}'s received WAL position", m.name()),
            });
        }
    }
    let ahead: Vec<Seen> = seen
        .iter()
        .filter(|s| s.node != f.d.from.name() && s.lsn > received)
        .cloned()
        .collect();
    let evidence =
        match tokio::time::timeout(Duration::from_secs(330), super::wal_end::read(&f.d.from)).await
        {
            Ok(Ok(end)) => Evidence::Exact {
                lsn: end.lsn,
                source: format!(
                    "the end of {}'s WAL on its disk (timeline {}, control file: {})",
                    f.d.from.name(),
                    end.timeline,
                    end.state
                ),
            },
            _ => match seen.into_iter().max_by_key(|s| s.lsn) {
                Some(s) => Evidence::AtLeast(s),
                None => Evidence::Unknown,
            },
        };
    let loss_bytes = evidence.lsn().map(|l| l.bytes_after(received)).unwrap_or(0);
    Ok(LossOut {
        evidence,
        received,
        loss_bytes,
        measured_at: Utc::now(),
        ahead,
        accepted: f.accept_loss,
    })
}

/// The loss in words, for the confirmation and the errors.
pub fn describe_loss(out: &LossOut, lost: &str, to: &str) -> String {
    let ahead = if out.ahead.is_empty() {
        String::new()
    } else {
        format!(
            "; note: {} received more than {to}",
            out.ahead
                .iter()
                .map(|s| format!(
                    "{} ({} bytes more)",
                    s.node,
                    s.lsn.bytes_after(out.received)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    match &out.evidence {
        Evidence::Exact { lsn, source } => format!(
            "{lost} ended at {lsn} ({source}); {to} received up to {}: {} bytes of {lost}'s WAL are not on {to}{ahead}",
            out.received, out.loss_bytes
        ),
        Evidence::AtLeast(s) => format!(
            "{lost}'s disk cannot be read; it had at least {} ({}, {} s ago); {to} received up to {}: at least {} bytes, plus whatever {lost} wrote since, are not on {to}{ahead}",
            s.lsn,
            s.source,
            (out.measured_at - s.at).num_seconds().max(0),
            out.received,
            out.loss_bytes
        ),
        Evidence::Unknown => format!(
            "nothing is known of where {lost}'s WAL ended; {to} received up to {}: the loss cannot be measured{ahead}",
            out.received
        ),
    }
}

#[async_trait]
impl Step for Loss {
    type Output = LossOut;
    fn id(&self) -> String {
        StepId::Loss.to_string()
    }
    fn describe(&self) -> Description {
        let f = &self.0;
        Description {
            host: format!("{} and {}", f.d.from.host_label(), f.d.to.name()),
            action: format!(
                "read where {lost}'s WAL ends (pg_controldata, pg_waldump) or the newest position it was seen at; {to}'s receive position",
                lost = f.d.from.name(),
                to = f.d.to.name()
            ),
            proof: match f.accept_loss {
                None => "nothing is lost: the end of the lost primary's WAL is on the standby".into(),
                Some(n) => format!("at most {n} bytes (accepted) are lost"),
            },
            undo: "nothing".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, cx: &Cx) -> Result<LossOut> {
        let isolated: IsolateOut = cx.get(&StepId::Isolate)?;
        let out = measure(&self.0, isolated.last_known).await?;
        let words = describe_loss(&out, self.0.d.from.name(), self.0.d.to.name());
        cx.progress(&StepId::Loss, words.clone());
        if let Err(why) = loss_verdict(out.loss_bytes, out.evidence.exact(), self.0.accept_loss) {
            bail!("{words}. {why}; nothing was promoted (the lost primary stays fenced)");
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::loss_verdict;

    #[test]
    fn only_a_proven_lossless_failover_goes_ahead_without_an_accepted_figure() {
        assert!(loss_verdict(0, true, None).is_ok());
        assert!(loss_verdict(1, true, None)
            .unwrap_err()
            .contains("--accept-loss 1"));
        // A lower bound of zero proves nothing.
        assert!(loss_verdict(0, false, None).is_err());
        assert!(loss_verdict(0, false, Some(0)).is_ok());
        assert!(loss_verdict(8192, true, Some(8192)).is_ok());
        assert!(loss_verdict(8192, true, Some(10_000)).is_ok());
        let e = loss_verdict(8193, true, Some(8192)).unwrap_err();
        assert!(
            e.contains("more than the 8192 accepted") && e.contains("8193"),
            "{e}"
        );
        assert!(loss_verdict(10, false, Some(9))
            .unwrap_err()
            .contains("at least 10"));
    }
}
