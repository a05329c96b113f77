//! The catch-up gate: a pure decision over lag samples.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::lag::{ChainSample, HopState};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Go,
    /// Why not yet.
    Wait(String),
}

/// Go when, for at least `stable_for` up to the newest sample, every sample shows every hop
/// streaming with both byte lags at or under `threshold`. One bad sample in the window (a hop
/// down, a lag spike) means wait.
pub fn catch_up_gate(
    samples: &[ChainSample],
    threshold: u64,
    stable_for: Duration,
    now: DateTime<Utc>,
) -> Decision {
    let Some(newest) = samples.last() else {
        return Decision::Wait("no lag sample yet".into());
    };
    if newest.hops.is_empty() {
        return Decision::Wait("the chain has no hops".into());
    }
    let window_start = now - chrono::Duration::from_std(stable_for).unwrap_or_default();
    for s in samples.iter().rev() {
        for h in &s.hops {
            match &h.state {
                HopState::Down { reason } => {
                    return Decision::Wait(format!("{} → {} is down: {reason}", h.upstream, h.node))
                }
                HopState::Streaming {
                    receive_behind_bytes,
                    replay_behind_bytes,
                    ..
                } => {
                    let worst = (*receive_behind_bytes).max(*replay_behind_bytes);
                    if worst > threshold {
                        return Decision::Wait(format!(
                            "{} → {} is {} behind (threshold {})",
                            h.upstream,
                            h.node,
                            crate::units::format_bytes(worst),
                            crate::units::format_bytes(threshold)
                        ));
                    }
                }
            }
        }
        if s.at <= window_start {
            return Decision::Go;
        }
    }
    Decision::Wait(format!(
        "lag must stay under the threshold for {stable_for:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::lag::HopSample;

    fn sample(secs_ago: i64, now: DateTime<Utc>, hops: Vec<HopState>) -> ChainSample {
        ChainSample {
            at: now - chrono::Duration::seconds(secs_ago),
            primary_lsn: None,
            hops: hops
                .into_iter()
                .enumerate()
                .map(|(i, state)| HopSample {
                    upstream: "old".into(),
                    node: format!("n{i}"),
                    state,
                })
                .collect(),
            nodes: vec![],
        }
    }

    fn streaming(bytes: u64) -> HopState {
        HopState::Streaming {
            receive_behind_bytes: bytes,
            replay_behind_bytes: bytes,
            reply_age_ms: Some(10),
        }
    }

    const MB: u64 = 1 << 20;
    const STABLE: Duration = Duration::from_secs(5);

    #[test]
    fn go_when_every_hop_streams_under_threshold_for_the_whole_window() {
        let now = Utc::now();
        let s: Vec<_> = (0..=6)
            .rev()
            .map(|ago| sample(ago, now, vec![streaming(0), streaming(MB)]))
            .collect();
        assert_eq!(catch_up_gate(&s, 16 * MB, STABLE, now), Decision::Go);
    }

    #[test]
    fn an_idle_chain_at_zero_bytes_is_caught_up() {
        let now = Utc::now();
        let s: Vec<_> = (0..=6)
            .rev()
            .map(|ago| sample(ago, now, vec![streaming(0)]))
            .collect();
        assert_eq!(catch_up_gate(&s, 0, STABLE, now), Decision::Go);
    }

    #[test]
    fn wait_until_the_window_is_covered() {
        let now = Utc::now();
        let s: Vec<_> = (0..=2)
            .rev()
            .map(|ago| sample(ago, now, vec![streaming(0)]))
            .collect();
        assert!(
            matches!(catch_up_gate(&s, MB, STABLE, now), Decision::Wait(w) if w.contains("stay under"))
        );
        assert!(matches!(
            catch_up_gate(&[], MB, STABLE, now),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn a_down_hop_anywhere_in_the_window_refuses() {
        let now = Utc::now();
        let mut s: Vec<_> = (0..=6)
            .rev()
            .map(|ago| sample(ago, now, vec![streaming(0), streaming(0)]))
            .collect();
        s[4].hops[1].state = HopState::Down {
            reason: "no walreceiver runs on n1".into(),
        };
        match catch_up_gate(&s, MB, STABLE, now) {
            Decision::Wait(w) => assert!(w.contains("n1 is down"), "{w}"),
            Decision::Go => panic!("a down hop must refuse"),
        }
        // A hop that was down 5 s ago: outside a 2 s window (go), inside a 6 s one (wait).
        let mut old_outage: Vec<_> = (0..=6)
            .rev()
            .map(|ago| sample(ago, now, vec![streaming(0), streaming(0)]))
            .collect();
        old_outage[1].hops[1].state = HopState::Down {
            reason: "restarting".into(),
        };
        assert_eq!(
            catch_up_gate(&old_outage, MB, Duration::from_secs(2), now),
            Decision::Go
        );
        assert!(matches!(
            catch_up_gate(&old_outage, MB, Duration::from_secs(6), now),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn a_lag_spike_in_the_window_refuses() {
        let now = Utc::now();
        let mut s: Vec<_> = (0..=6)
            .rev()
            .map(|ago| sample(ago, now, vec![streaming(0)]))
            .collect();
        s[5].hops[0].state = streaming(64 * MB);
        assert!(
            matches!(catch_up_gate(&s, 16 * MB, STABLE, now), Decision::Wait(w) if w.contains("64.0 MiB behind"))
        );
    }
}
