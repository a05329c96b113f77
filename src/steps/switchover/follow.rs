//! Waiting until a standby streams on a timeline: used by `reverse` (inside the write pause)
//! and `followers`.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio_postgres::Client;

use crate::engine::Cx;
use crate::pg::server::RunState;
use crate::pg::{connect, sql, Endpoint, Lsn};
use crate::steps::id::StepId;
use crate::steps::member::Member;

/// Wait until `m` streams from `upstream` on timeline `tli` (P5: its walreceiver streaming on
/// that timeline, and a streaming row for it on the upstream). Polled every 10 ms, inside the
/// write pause for the reverse step, on kept connections: a new connection per poll (a
/// backend fork on each side) would slow the start it waits for.
pub async fn wait_following(
    m: &Member,
    upstream: &Member,
    tli: i32,
    limit: Duration,
    cx: &Cx,
    step: &StepId,
) -> Result<()> {
    wait_following_unless_diverged(m, upstream, tli, limit, None, cx, step).await
}

/// How long a node must stay past the fork without streaming before it counts as diverged: a
/// node that follows passes the fork only after it streams on the new timeline, and the
/// moment between is a few milliseconds.
const DIVERGED_FOR: Duration = Duration::from_secs(2);

/// Pure: a node that replayed past `fork` (where the new timeline begins) on its own timeline
/// holds WAL the new primary never had: it cannot follow.
pub fn past_the_fork(replayed: Lsn, fork: Lsn) -> bool {
    replayed > fork
}

/// [`wait_following`], but with `fork` (where the upstream's timeline `tli` begins) it gives up
/// early when `m` stays past the fork without streaming: a diverged node never follows, and
/// inside the write pause every second counts.
pub async fn wait_following_unless_diverged(
    m: &Member,
    upstream: &Member,
    tli: i32,
    limit: Duration,
    fork: Option<Lsn>,
    cx: &Cx,
    step: &StepId,
) -> Result<()> {
    let mut past_fork_since: Option<Instant> = None;
    let deadline = Instant::now() + limit;
    let mut node: Option<Client> = None;
    let mut up: Option<Client> = None;
    let mut checks = 0u32;
    loop {
        let sample = tokio::time::timeout(
            Duration::from_secs(5),
            follow_state(m, upstream, &mut node, &mut up),
        )
        .await;
        let why = match sample {
            Ok(Ok((Some((status, got)), Some(state))))
                if status == "streaming" && got == tli && state == "streaming" =>
            {
                return Ok(())
            }
            Ok(Ok((Some((status, got)), state))) => format!(
                "walreceiver {status} on timeline {got}; on {}: {}",
                upstream.name(),
                state.unwrap_or_else(|| "no replication row".into())
            ),
            Ok(Ok((None, _))) => "no walreceiver".into(),
            Ok(Err(e)) => {
                let text = format!("{e:#}");
                text.lines().next().unwrap_or_default().to_string()
            }
            Err(_) => {
                (node, up) = (None, None);
                "no answer within 5 s".into()
            }
        };
        if let (Some(fork), Some(c)) = (fork, node.as_ref()) {
            let replayed = c
                .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
                .await
                .ok()
                .and_then(|r| r.get::<_, Option<String>>(0))
                .and_then(|t| t.parse::<Lsn>().ok());
            match replayed {
                Some(r) if past_the_fork(r, fork) => {
                    let since = *past_fork_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= DIVERGED_FOR {
                        bail!(
                            "{} has diverged: it replayed up to {r} on its own timeline, past {fork} where timeline {tli} of {} begins ({why})",
                            m.name(),
                            upstream.name()
                        );
                    }
                }
                _ => past_fork_since = None,
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} does not stream from {} on timeline {tli}: {why}",
                m.name(),
                upstream.name()
            );
        }
        cx.progress(
            step,
            format!("waiting for {} to follow timeline {tli}: {why}", m.name()),
        );
        // A server that died while starting never streams: say so now, with its log.
        if checks % 25 == 24 && m.server()?.state().await? != RunState::Running {
            bail!(
                "{} is not running ({why}); see its server log {}",
                m.name(),
                m.node.log_file.display()
            );
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// (walreceiver status and timeline on `m`, state of its row on `upstream`), (re)connecting
/// where a kept connection is missing or broke.
async fn follow_state(
    m: &Member,
    upstream: &Member,
    node: &mut Option<Client>,
    up: &mut Option<Client>,
) -> Result<(Option<(String, i32)>, Option<String>)> {
    async fn kept<'a>(slot: &'a mut Option<Client>, ep: &Endpoint) -> Result<&'a Client> {
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = Some(connect(ep).await?);
        }
        Ok(slot.as_ref().expect("connected"))
    }
    // Both sides at once (each a round trip across the WAN, inside the write pause).
    let (receiver, row) = tokio::join!(
        async {
            let c = kept(node, &m.endpoint()).await?;
            sql::walreceiver(c).await
        },
        async {
            let c = kept(up, &upstream.endpoint()).await?;
            sql::replication_state(c, m.name()).await
        }
    );
    let receiver = receiver.inspect_err(|_| *node = None)?;
    let row = row.inspect_err(|_| *up = None)?;
    if receiver.is_none() {
        return Ok((None, None));
    }
    Ok((receiver, row))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_node_past_the_fork_has_diverged() {
        let fork = crate::pg::Lsn(0x300_0148);
        assert!(!super::past_the_fork(fork, fork));
        assert!(!super::past_the_fork(crate::pg::Lsn(0x300_0100), fork));
        assert!(super::past_the_fork(crate::pg::Lsn(0x300_0150), fork));
    }
}
