//! The target watched while the old primary stops, for the proof: its positions sampled on
//! the kept connection, several samples in flight, the newest kept; and beside that a probe
//! showing the target's postmaster still forks (see [`crate::pg::alive`]), begun after the
//! fence.
//!
//! Why: the proof's evidence is one sample showing the target received and replayed past the
//! old primary's shutdown checkpoint. No sample can show that before the checkpoint exists, so
//! a sample taken while the stop's answer is still on its way back is as good as one asked for
//! after it; across a WAN the newest such sample is at hand when the stop returns, where
//! asking afresh costs the pause a round trip. The probe is what a new connection showed
//! before (a frozen postmaster keeps its old backends answering, and would never carry out
//! the promotion), in two round trips instead of four, well within the stop's.

use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::proof::{position_on, Position};
use crate::pg::{alive, session, Endpoint};

/// How often a sample is sent (without waiting for the last one's answer).
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// At most this many samples unanswered: a target slow to answer is not flooded.
const MAX_IN_FLIGHT: usize = 4;

/// One sample, or why there is none (the watch then ends).
pub type Sample = Result<Position, String>;

/// A watch on the target. Dropping it ends the sampling (which sees its receiver gone and
/// leaves the kept connection kept: aborting it mid-query would drop the connection, and the
/// next step would pay a new one's set-up) and the probe.
pub struct Watch {
    samples: watch::Receiver<Option<Sample>>,
    /// The probe, until it has shown the postmaster forks.
    probe: Option<JoinHandle<Result<(), String>>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(p) = &self.probe {
            p.abort();
        }
    }
}

impl Watch {
    /// Start watching `ep` for at most `limit`.
    pub fn start(ep: Endpoint, limit: Duration) -> Watch {
        let (tx, samples) = watch::channel(None);
        let conninfo = ep.conninfo.clone();
        let probe = tokio::spawn(async move {
            match tokio::time::timeout(limit, alive::forks(&conninfo)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err(format!("no new connection accepted within {limit:?}")),
            }
        });
        tokio::spawn(async move {
            let deadline = Instant::now() + limit;
            match tokio::time::timeout_at(deadline, session(&ep)).await {
                Ok(Ok(s)) => {
                    if sample(&s, &tx, deadline).await {
                        s.keep();
                    }
                }
                Ok(Err(e)) => {
                    tx.send_replace(Some(Err(format!("{e:#}"))));
                }
                Err(_) => {
                    tx.send_replace(Some(Err(format!("no answer within {limit:?}"))));
                }
            }
        });
        Watch {
            samples,
            probe: Some(probe),
        }
    }

    /// Whether the postmaster has been seen to fork since the watch began, waiting up to
    /// `limit` for the probe.
    pub async fn forks(&mut self, limit: Duration) -> Result<(), String> {
        let Some(probe) = self.probe.as_mut() else {
            return Ok(());
        };
        match tokio::time::timeout(limit, probe).await {
            Ok(Ok(Ok(()))) => {
                self.probe = None;
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(e)) => Err(format!("the probe ended: {e}")),
            Err(_) => Err(format!("no new connection accepted within {limit:?}")),
        }
    }

    /// The newest sample not taken yet, waiting up to `limit` for one. `None`: the watch has
    /// ended (its time limit) with nothing new.
    pub async fn next(&mut self, limit: Duration) -> Option<Sample> {
        let fresh = match tokio::time::timeout(limit, self.samples.changed()).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => self.samples.has_changed().unwrap_or(false),
            Err(_) => return Some(Err(format!("no answer within {limit:?}"))),
        };
        if !fresh {
            return None;
        }
        self.samples.borrow_and_update().clone()
    }
}

/// Sample on `c` until the receiver is gone or `deadline` (true: the connection is fine), or
/// a sample fails (false).
async fn sample(
    c: &tokio_postgres::Client,
    tx: &watch::Sender<Option<Sample>>,
    deadline: Instant,
) -> bool {
    let mut in_flight = FuturesUnordered::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut sent, mut newest) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = tick.tick(), if in_flight.len() < MAX_IN_FLIGHT => {
                sent += 1;
                let n = sent;
                in_flight.push(async move { (n, position_on(c).await) });
            }
            Some((n, at)) = in_flight.next() => {
                // One connection answers in order, but answers ready together may be
                // yielded in any order: an older one never replaces a newer.
                if n <= newest {
                    continue;
                }
                newest = n;
                let failed = at.is_err();
                tx.send_replace(Some(at.map_err(|e| format!("{e:#}"))));
                if failed {
                    return false;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return true,
            _ = tx.closed() => return true,
        }
    }
}
