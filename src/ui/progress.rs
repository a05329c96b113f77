//! Rendering run events: indicatif spinners on a terminal, timestamped lines otherwise, JSON
//! lines with `--json`.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::engine::events::{EventStream, RunEvent};
use crate::engine::journal::Event;
use crate::engine::label;
use crate::replication::lag::{ChainSample, HopState};
use crate::units::format_bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Json,
    Terminal,
    Plain,
}

pub fn spawn(mode: Mode, mut rx: EventStream) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut r = Renderer {
            mode,
            multi: MultiProgress::new(),
            bars: HashMap::new(),
        };
        while let Some(e) = rx.recv().await {
            r.render(&e);
        }
    })
}

struct Renderer {
    mode: Mode,
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

impl Renderer {
    fn line(&self, text: String) {
        let text = crate::redact::for_terminal(&text);
        match self.mode {
            Mode::Terminal => {
                let _ = self.multi.println(text);
            }
            _ => {
                let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{ts} {text}");
            }
        }
    }

    fn spinner(&mut self, key: &str, msg: String) {
        let pb = self.multi.add(ProgressBar::new_spinner());
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("template"),
        );
        pb.set_message(crate::redact::for_terminal(&msg));
        pb.enable_steady_tick(Duration::from_millis(120));
        self.bars.insert(key.to_string(), pb);
    }

    fn finish(&mut self, key: &str, msg: String) {
        match self.bars.remove(key) {
            Some(pb) => {
                pb.set_style(ProgressStyle::with_template("{msg}").expect("template"));
                pb.finish_with_message(crate::redact::for_terminal(&msg));
            }
            None => self.line(msg),
        }
    }

    fn finish_lag_bars(&mut self) {
        let keys: Vec<String> = self
            .bars
            .keys()
            .filter(|k| k.starts_with("lag:"))
            .cloned()
            .collect();
        for k in keys {
            if let Some(pb) = self.bars.remove(&k) {
                pb.finish();
            }
        }
    }

    fn render(&mut self, e: &RunEvent) {
        if self.mode == Mode::Json {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            v["ts"] = Utc::now()
                .to_rfc3339_opts(SecondsFormat::Millis, true)
                .into();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", crate::redact::redact(&v.to_string()));
            return;
        }
        let terminal = self.mode == Mode::Terminal;
        match e {
            RunEvent::RunOpened {
                run_id,
                operation,
                resumed,
            } => self.line(format!(
                "{} {operation} run {run_id}",
                if *resumed { "resuming" } else { "starting" }
            )),
            RunEvent::Journaled { record } => self.journaled(record, terminal),
            RunEvent::Notice { message } => self.line(format!("note: {message}")),
            RunEvent::StepSkipped { step } => self.line(format!("· {step}: already done")),
            RunEvent::StepProbing { step } => self.line(format!(
                "? {step}: was interrupted; checking whether it took effect"
            )),
            RunEvent::StepProgress { step, message } => match self.bars.get(step) {
                Some(pb) => pb.set_message(format!("{step}: {message}")),
                None => self.line(format!("  {step}: {message}")),
            },
            RunEvent::StepData { data, .. } => {
                // The one shape of step data there is today: a lag sample of the chain.
                if let Ok(sample) = serde_json::from_value::<ChainSample>(data.clone()) {
                    self.lag(&sample, terminal);
                }
            }
        }
    }

    /// A journal event, as it was written.
    fn journaled(&mut self, e: &Event, terminal: bool) {
        let took = |ms: &Option<u64>| ms.map_or_else(|| "done earlier".into(), secs);
        match e {
            Event::Header { .. } | Event::RunStarted { .. } => {}
            Event::StepStarted { step, action, host } => {
                if action.is_empty() {
                    return; // a probe found it done; its success follows at once
                }
                let msg = format!("{step}: {action} on {host}");
                if terminal {
                    self.spinner(step, msg);
                } else {
                    self.line(format!("▶ {msg}"));
                }
            }
            Event::StepSucceeded {
                step, elapsed_ms, ..
            } => {
                self.finish_lag_bars();
                self.finish(step, format!("✓ {step} ({})", took(elapsed_ms)))
            }
            Event::StepFailed {
                step,
                elapsed_ms,
                error,
            } => self.finish(step, format!("✗ {step} ({}): {error}", took(elapsed_ms))),
            Event::PointOfNoReturn { step } => self.line(format!("! point of no return: {step}")),
            Event::CompensationStarted { step } => {
                let key = format!("undo:{step}");
                if terminal {
                    self.spinner(&key, format!("undo {step}"));
                } else {
                    self.line(format!("↶ undo {step}"));
                }
            }
            Event::CompensationFinished { step, elapsed_ms } => self.finish(
                &format!("undo:{step}"),
                format!("✓ undone {step} ({})", took(elapsed_ms)),
            ),
            Event::CompensationFailed { step, error } => {
                self.finish(&format!("undo:{step}"), format!("✗ undo {step}: {error}"))
            }
            Event::RunFinished { outcome } => {
                self.line(format!("run finished: {}", label(outcome)))
            }
        }
    }

    fn lag(&mut self, sample: &ChainSample, terminal: bool) {
        let hop_text = |h: &crate::replication::lag::HopSample| match &h.state {
            HopState::Streaming {
                receive_behind_bytes,
                replay_behind_bytes,
                ..
            } => format!(
                "{} → {}: streaming, {} to receive, {} to replay",
                h.upstream,
                h.node,
                format_bytes(*receive_behind_bytes),
                format_bytes(*replay_behind_bytes)
            ),
            HopState::Down { reason } => {
                format!("{} → {}: DOWN ({reason})", h.upstream, h.node)
            }
        };
        if terminal {
            for h in &sample.hops {
                let key = format!("lag:{}", h.node);
                if !self.bars.contains_key(&key) {
                    self.spinner(&key, String::new());
                }
                self.bars[&key].set_message(hop_text(h));
            }
        } else {
            self.line(format!(
                "lag: {}",
                sample
                    .hops
                    .iter()
                    .map(hop_text)
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }
}
