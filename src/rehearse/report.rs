//! What a rehearsal measured: write pauses from the writer's acknowledgments, client errors by
//! kind, missing commits, and each phase's duration.

use std::collections::BTreeMap;

use super::fault::FaultReport;
use crate::engine::replay::RunState;
use crate::lab::workload::Ack;
use crate::steps::StepId;
use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dir: String,
    pub clients: i32,
    pub scale_mb: u64,
    /// Clone and catch-up (the `replicate` run) in ms.
    pub replicate_ms: u64,
    /// Inside it, from its journal: `clone` (every clone step together) and `catchup`.
    pub replicate_phases_ms: BTreeMap<String, u64>,
    pub plan_ms: u64,
    pub cutover: Switch,
    pub rollback: Switch,
    /// Every acknowledged commit is on every node at the end.
    pub acked_total: usize,
    pub missing_at_end: BTreeMap<String, usize>,
    /// The injected fault (`--fault`), if any, and what the tool did.
    pub fault: Option<FaultReport>,
    /// Each switchover on a time axis, for `--report FILE.html`.
    #[serde(skip)]
    pub timelines: Vec<super::html::Timeline>,
}

impl Report {
    pub fn zero_loss(&self) -> bool {
        self.cutover.missing.values().all(|m| *m == 0)
            && self.rollback.missing.values().all(|m| *m == 0)
            && self.missing_at_end.values().all(|m| *m == 0)
    }

    /// Zero loss, and the tool handled the fault (if any) as it must.
    pub fn passed(&self) -> bool {
        self.zero_loss() && self.fault.as_ref().is_none_or(|f| f.as_expected)
    }
}

/// One switchover (the cutover, or the rollback's switchback).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Switch {
    /// Wall time of the command.
    pub duration_ms: u64,
    /// The longest gap between consecutive acknowledged commits of all clients.
    pub write_pause_ms: f64,
    /// Per client, the longest gap; their median, 99th percentile and maximum.
    pub client_pause_p50_ms: f64,
    pub client_pause_p99_ms: f64,
    pub client_pause_max_ms: f64,
    /// From the certificate: held (or fenced) to released, as the tool measured it.
    pub certificate_pause_ms: Option<i64>,
    /// From the release (the certificate's `released_at`) to the commit that ended the
    /// pause: the clients' way back, through the route's new server connections (across a
    /// WAN several round trips of connection set-up). `None` without a certificate.
    pub after_release_ms: Option<f64>,
    pub acked: usize,
    pub errors: usize,
    pub error_kinds: BTreeMap<String, usize>,
    /// Acknowledged commits missing on each node once caught up.
    pub missing: BTreeMap<String, usize>,
    /// Step durations inside the pause and around it (hold, fence, stop, proof, stage,
    /// promote, reverse, route, followers), from the certificate; and release.
    pub phases_ms: BTreeMap<String, u64>,
}

/// The longest gap between consecutive acknowledgments (of all clients together) that
/// overlaps `[from, to]`, in ms.
pub fn longest_gap(acks: &[Ack], from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let mut times: Vec<DateTime<Utc>> = acks.iter().map(|a| a.at).collect();
    times.sort();
    let mut worst = 0.0f64;
    for w in times.windows(2) {
        if w[1] >= from && w[0] <= to {
            worst = worst.max(ms(w[1] - w[0]));
        }
    }
    worst
}

/// From `released_at` to the first acknowledged commit after it, in ms (the commit that
/// ends the pause); `None` when none came.
pub fn after_release(acks: &[Ack], released_at: DateTime<Utc>) -> Option<f64> {
    acks.iter()
        .map(|a| a.at)
        .filter(|&at| at >= released_at)
        .min()
        .map(|first| ms(first - released_at))
}

/// Each client's longest gap overlapping `[from, to]`.
pub fn client_gaps(acks: &[Ack], from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<f64> {
    let mut by_client: BTreeMap<i32, Vec<DateTime<Utc>>> = BTreeMap::new();
    for a in acks {
        by_client.entry(a.client).or_default().push(a.at);
    }
    by_client
        .into_values()
        .map(|mut t| {
            t.sort();
            t.windows(2)
                .filter(|w| w[1] >= from && w[0] <= to)
                .map(|w| ms(w[1] - w[0]))
                .fold(0.0, f64::max)
        })
        .collect()
}

/// The `q` quantile (0..=1) by nearest rank.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

/// A client error's kind, for counting: the part that names what happened.
pub fn error_kind(e: &str) -> String {
    let lower = e.to_ascii_lowercase();
    for (needle, kind) in [
        ("query_wait_timeout", "query_wait_timeout"),
        ("read-only", "read-only transaction"),
        ("recovery", "server in recovery"),
        ("connection refused", "connection refused"),
        (
            "terminating connection",
            "connection terminated by the server",
        ),
        ("closed", "connection closed"),
        ("timed out", "timeout"),
        ("password", "authentication"),
    ] {
        if lower.contains(needle) {
            return kind.to_string();
        }
    }
    "other".to_string()
}

pub fn error_kinds(errors: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in errors {
        *out.entry(error_kind(e)).or_insert(0) += 1;
    }
    out
}

/// From a finished `replicate` run: the clone steps' time together (`clone`) and the
/// catch-up step's (`catchup`), in ms, as the runner timed them.
pub fn replicate_phases(run: &RunState) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for s in &run.steps {
        let Ok(id) = s.id.parse::<StepId>() else {
            continue;
        };
        let phase = match id {
            StepId::Clone(_) => "clone",
            StepId::Catchup => "catchup",
            _ => continue,
        };
        let ms = s
            .elapsed_ms
            .or_else(|| match (s.started_at, s.finished_at) {
                (Some(a), Some(b)) => Some((b - a).num_milliseconds().max(0) as u64),
                _ => None,
            });
        if let Some(ms) = ms {
            *out.entry(phase.to_string()).or_insert(0) += ms;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(client: i32, ms_after: i64) -> Ack {
        let t0: DateTime<Utc> = "2026-11-22T00:00:00Z".parse().unwrap();
        Ack {
            client,
            seq: ms_after,
            at: t0 + chrono::TimeDelta::milliseconds(ms_after),
        }
    }

    #[test]
    fn pauses_are_gaps_between_acknowledgments_in_the_window() {
        let acks = vec![
            ack(0, 0),
            ack(1, 10),
            ack(0, 20),
            ack(1, 400),
            ack(0, 410),
            ack(1, 1500),
        ];
        let t0: DateTime<Utc> = "2026-11-22T00:00:00Z".parse().unwrap();
        let at = |ms| t0 + chrono::TimeDelta::milliseconds(ms);
        // All clients together: 20 → 400 is the longest gap overlapping [0, 405].
        assert_eq!(longest_gap(&acks, at(0), at(405)), 380.0);
        // 410 → 1500 overlaps a window that ends at 1000.
        assert_eq!(longest_gap(&acks, at(0), at(1000)), 1090.0);
        let mut per = client_gaps(&acks, at(0), at(405));
        per.sort_by(|a, b| a.total_cmp(b));
        assert_eq!(per, vec![390.0, 1100.0]);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
        // Released at 300: the pause (20 → 400) ended 100 ms later.
        assert_eq!(after_release(&acks, at(300)), Some(100.0));
        assert_eq!(after_release(&acks, at(1600)), None);
    }

    #[test]
    fn replicate_phases_add_up_the_clones_and_the_catch_up() {
        use crate::engine::journal::{Event, PlannedStep, Record};
        use crate::engine::Kind;
        let t0: DateTime<Utc> = "2026-11-22T00:00:00Z".parse().unwrap();
        let timed = [
            (StepId::Clone("new".into()), 0, Some(1000)),
            (StepId::Start("new".into()), 1000, Some(200)),
            (StepId::Clone("dr".into()), 1200, None),
            (StepId::Catchup, 1700, Some(2300)),
        ];
        let mut events = vec![(
            0,
            Event::Header {
                format: crate::engine::journal::FORMAT_VERSION,
                run_id: "r".into(),
                operation: "replicate".into(),
                spec_hash: "h".into(),
                tool_version: "0".into(),
                steps: timed
                    .iter()
                    .map(|(id, _, _)| PlannedStep {
                        id: id.to_string(),
                        kind: Kind::Reversible,
                    })
                    .collect(),
                keep: 0,
            },
        )];
        // (step, started at, took): the runner's timing wins; a format-1 record without it
        // falls back to the journal's timestamps.
        for (id, at, took) in timed {
            events.push((
                at,
                Event::StepStarted {
                    step: id.to_string(),
                    host: String::new(),
                    action: String::new(),
                },
            ));
            events.push((
                at + took.unwrap_or(500),
                Event::StepSucceeded {
                    step: id.to_string(),
                    output: serde_json::Value::Null,
                    elapsed_ms: took.map(|t| t as u64),
                },
            ));
        }
        let records: Vec<Record> = events
            .into_iter()
            .enumerate()
            .map(|(seq, (ms, event))| Record {
                seq: seq as u64,
                ts: t0 + chrono::TimeDelta::milliseconds(ms),
                event,
            })
            .collect();
        let p = replicate_phases(&crate::engine::replay::replay(&records).unwrap());
        assert_eq!(p["clone"], 1500);
        assert_eq!(p["catchup"], 2300);
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let k = error_kinds(&[
            "client 1: db error: FATAL: query_wait_timeout".into(),
            "client 2: error connecting to server: Connection refused (os error 111)".into(),
            "client 3: connection closed".into(),
        ]);
        assert_eq!(k["query_wait_timeout"], 1);
        assert_eq!(k["connection refused"], 1);
        assert_eq!(k["connection closed"], 1);
    }
}
