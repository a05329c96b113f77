//! Folding journal records into the run's state, through one transition function that rejects
//! every illegal sequence and names the record.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::journal::{Event, PlannedStep, Record};
use super::model::{Kind, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    /// Started, no end recorded: a crash may have happened anywhere in it.
    InDoubt,
    Succeeded,
    Failed,
    Compensating,
    Compensated,
    CompensationFailed,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepState {
    pub id: String,
    pub kind: Kind,
    pub status: StepStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub output: Option<Value>,
    /// How long its last successful apply took, as the runner measured it.
    pub elapsed_ms: Option<u64>,
    pub error: Option<String>,
    /// How many times it was started (more than once after a crash or a retry).
    pub attempts: u32,
}

impl StepState {
    /// Started and possibly left an effect that rollback must undo.
    pub fn needs_compensation(&self) -> bool {
        self.kind.compensated()
            && matches!(
                self.status,
                StepStatus::InDoubt
                    | StepStatus::Succeeded
                    | StepStatus::Failed
                    | StepStatus::Compensating
                    | StepStatus::CompensationFailed
            )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Forward,
    RollingBack,
    Finished(Outcome),
}

#[derive(Debug, Clone, Serialize)]
pub struct RunState {
    pub run_id: String,
    pub operation: String,
    pub spec_hash: String,
    pub tool_version: String,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub phase: Phase,
    /// The step at which the run passed the point of no return, if it did.
    pub point_of_no_return: Option<String>,
    /// The first `keep` steps survive an automatic abort (see the journal header).
    pub keep: usize,
    pub steps: Vec<StepState>,
    /// Every process that worked on the run: (pid, command line), in order.
    pub processes: Vec<(u32, String)>,
}

impl RunState {
    /// Pure: where an operator's rollback stops, and what it finishes the run as. Finishing an
    /// automatic abort that stopped halfway (an undo that could not reach a server, after which
    /// the run says "run `migrate rollback` again") undoes what the abort would have, never the
    /// first `keep` steps the abort keeps (a cutover's chain: hours of cloning across a WAN); a
    /// rollback asked for afresh undoes every step.
    pub fn rollback_floor(&self) -> (usize, Outcome) {
        let state = self;
        let undone = |s: &&StepState| {
            matches!(
                s.status,
                StepStatus::Compensating | StepStatus::Compensated | StepStatus::CompensationFailed
            )
        };
        let keep = state.keep.min(state.steps.len());
        let aborting = state.phase == Phase::RollingBack
            && keep > 0
            && !state.steps[..keep].iter().any(|s| undone(&s))
            && state.steps[keep..].iter().any(|s| undone(&s));
        if aborting {
            (keep, Outcome::Aborted)
        } else {
            (0, Outcome::RolledBack)
        }
    }

    pub fn step(&self, id: &str) -> Option<&StepState> {
        self.steps.iter().find(|s| s.id == id)
    }

    pub fn outputs(&self) -> BTreeMap<String, Value> {
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Succeeded)
            .filter_map(|s| s.output.clone().map(|o| (s.id.clone(), o)))
            .collect()
    }

    pub fn elapsed(&self) -> BTreeMap<String, u64> {
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Succeeded)
            .filter_map(|s| s.elapsed_ms.map(|ms| (s.id.clone(), ms)))
            .collect()
    }

    /// The step whose failure stopped the run going forward, with its error (kept after it
    /// was undone). Undoing goes latest first from it, so it is the last step with an error.
    pub fn failure(&self) -> Option<(&str, &str)> {
        self.steps
            .iter()
            .rev()
            .find_map(|s| Some((s.id.as_str(), s.error.as_deref()?)))
    }

    /// The steps an undo reached, in the order it undid them.
    pub fn undone(&self) -> Vec<&str> {
        self.steps
            .iter()
            .rev()
            .filter(|s| s.status == StepStatus::Compensated)
            .map(|s| s.id.as_str())
            .collect()
    }

    pub fn finished(&self) -> Option<Outcome> {
        match self.phase {
            Phase::Finished(o) => Some(o),
            _ => None,
        }
    }

    fn index(&self, id: &str) -> Result<usize, String> {
        self.steps
            .iter()
            .position(|s| s.id == id)
            .ok_or_else(|| format!("step {id:?} is not in the run's plan"))
    }

    /// The one transition function. `Err` names what is illegal.
    fn apply(&mut self, ts: DateTime<Utc>, event: &Event) -> Result<(), String> {
        self.updated_at = ts;
        if let Phase::Finished(o) = self.phase {
            return Err(format!("the run already finished ({o:?})"));
        }
        match event {
            Event::Header { .. } => return Err("a second header".into()),
            Event::RunStarted { pid, command } => self.processes.push((*pid, command.clone())),
            Event::PointOfNoReturn { step } => {
                let i = self.index(step)?;
                if self.phase != Phase::Forward {
                    return Err("point of no return while rolling back".into());
                }
                if self.steps[i].kind != Kind::PointOfNoReturn {
                    return Err(format!("step {step:?} is not a point of no return"));
                }
                if let Some(p) = self.steps[..i]
                    .iter()
                    .find(|s| s.status != StepStatus::Succeeded)
                {
                    return Err(format!(
                        "point of no return at {step:?} before step {:?} succeeded",
                        p.id
                    ));
                }
                self.point_of_no_return.get_or_insert_with(|| step.clone());
            }
            Event::StepStarted { step, .. } => {
                let i = self.index(step)?;
                if self.phase != Phase::Forward {
                    return Err(format!("step {step:?} started while rolling back"));
                }
                if let Some(p) = self.steps[..i]
                    .iter()
                    .find(|s| s.status != StepStatus::Succeeded)
                {
                    return Err(format!(
                        "step {step:?} started before step {:?} succeeded",
                        p.id
                    ));
                }
                let s = &mut self.steps[i];
                if s.kind == Kind::PointOfNoReturn && self.point_of_no_return.is_none() {
                    return Err(format!(
                        "step {step:?} started without recording the point of no return"
                    ));
                }
                match s.status {
                    StepStatus::Pending | StepStatus::InDoubt | StepStatus::Failed => {}
                    other => return Err(format!("step {step:?} started while {other:?}")),
                }
                s.status = StepStatus::InDoubt;
                s.started_at = Some(ts);
                s.finished_at = None;
                s.error = None;
                s.attempts += 1;
            }
            Event::StepSucceeded {
                step,
                output,
                elapsed_ms,
            } => {
                let i = self.index(step)?;
                let s = &mut self.steps[i];
                if s.status != StepStatus::InDoubt {
                    return Err(format!("step {step:?} succeeded while {:?}", s.status));
                }
                s.status = StepStatus::Succeeded;
                s.finished_at = Some(ts);
                s.output = Some(output.clone());
                s.elapsed_ms = *elapsed_ms;
            }
            Event::StepFailed { step, error, .. } => {
                let i = self.index(step)?;
                let s = &mut self.steps[i];
                if s.status != StepStatus::InDoubt {
                    return Err(format!("step {step:?} failed while {:?}", s.status));
                }
                s.status = StepStatus::Failed;
                s.finished_at = Some(ts);
                s.error = Some(error.clone());
            }
            Event::CompensationStarted { step } => {
                if let Some(p) = &self.point_of_no_return {
                    return Err(format!("compensation after the point of no return ({p})"));
                }
                let i = self.index(step)?;
                if !self.steps[i].needs_compensation() {
                    return Err(format!(
                        "compensation of step {step:?}, which is {:?}",
                        self.steps[i].status
                    ));
                }
                if let Some(later) = self.steps[i + 1..].iter().find(|s| s.needs_compensation()) {
                    return Err(format!(
                        "compensation of {step:?} before the later step {:?}",
                        later.id
                    ));
                }
                self.phase = Phase::RollingBack;
                let s = &mut self.steps[i];
                s.status = StepStatus::Compensating;
                s.started_at = Some(ts);
                s.finished_at = None;
            }
            Event::CompensationFinished { step, .. } | Event::CompensationFailed { step, .. } => {
                let i = self.index(step)?;
                let s = &mut self.steps[i];
                if s.status != StepStatus::Compensating {
                    return Err(format!(
                        "compensation of {step:?} ended while {:?}",
                        s.status
                    ));
                }
                s.finished_at = Some(ts);
                if let Event::CompensationFailed { error, .. } = event {
                    s.status = StepStatus::CompensationFailed;
                    s.error = Some(error.clone());
                } else {
                    s.status = StepStatus::Compensated;
                    s.output = None;
                }
            }
            Event::RunFinished { outcome } => match outcome {
                Outcome::Completed => {
                    if let Some(s) = self
                        .steps
                        .iter()
                        .find(|s| s.status != StepStatus::Succeeded)
                    {
                        return Err(format!("completed while step {:?} is {:?}", s.id, s.status));
                    }
                    self.phase = Phase::Finished(Outcome::Completed);
                }
                Outcome::RolledBack => {
                    if let Some(s) = self.steps.iter().find(|s| s.needs_compensation()) {
                        return Err(format!(
                            "rolled back while step {:?} is {:?}",
                            s.id, s.status
                        ));
                    }
                    self.phase = Phase::Finished(Outcome::RolledBack);
                }
                Outcome::Aborted => {
                    if self.point_of_no_return.is_some() {
                        return Err("aborted after the point of no return".into());
                    }
                    if let Some(s) = self.steps[self.keep..]
                        .iter()
                        .find(|s| s.needs_compensation())
                    {
                        return Err(format!("aborted while step {:?} is {:?}", s.id, s.status));
                    }
                    self.phase = Phase::Finished(Outcome::Aborted);
                }
            },
        }
        Ok(())
    }
}

/// Replay a journal's records into the run state.
pub fn replay(records: &[Record]) -> Result<RunState> {
    let Some(first) = records.first() else {
        bail!("the journal is empty (no header)")
    };
    let Event::Header {
        format,
        run_id,
        operation,
        spec_hash,
        tool_version,
        steps,
        keep,
    } = &first.event
    else {
        bail!("journal record 0 is {}, not the header", first.event.name());
    };
    if *format != super::journal::FORMAT_VERSION {
        bail!(
            "journal format {format} is not supported by this version (it reads format {})",
            super::journal::FORMAT_VERSION
        );
    }
    let mut state = RunState {
        run_id: run_id.clone(),
        operation: operation.clone(),
        spec_hash: spec_hash.clone(),
        tool_version: tool_version.clone(),
        started_at: first.ts,
        updated_at: first.ts,
        phase: Phase::Forward,
        point_of_no_return: None,
        keep: (*keep).min(steps.len()),
        steps: steps.iter().map(new_step).collect(),
        processes: Vec::new(),
    };
    for r in &records[1..] {
        if let Err(why) = state.apply(r.ts, &r.event) {
            bail!(
                "journal record {} ({}) is illegal here: {why}",
                r.seq,
                r.event.name()
            );
        }
    }
    Ok(state)
}

/// Check that one more event is legal, without changing the state (the runner calls this
/// before journaling anything).
pub fn check(state: &RunState, event: &Event) -> Result<RunState> {
    let mut next = state.clone();
    next.apply(Utc::now(), event)
        .map_err(|why| anyhow::anyhow!("illegal {}: {why}", event.name()))?;
    Ok(next)
}

fn new_step(p: &PlannedStep) -> StepState {
    StepState {
        id: p.id.clone(),
        kind: p.kind,
        status: StepStatus::Pending,
        started_at: None,
        finished_at: None,
        output: None,
        elapsed_ms: None,
        error: None,
        attempts: 0,
    }
}

/// A run as its journal tells it: the one reader, used by the runner, `status`, `resume`,
/// `rollback`, the rehearsal's fault watch and its report.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub state: RunState,
    /// A torn last line was found and ignored (1-based line number).
    pub torn_tail: Option<usize>,
    /// The records the state was folded from, in order.
    pub records: Vec<Record>,
}

impl Loaded {
    /// The events journaled since process `pid` last began work on the run (empty if it never
    /// did): what a watcher of that process waits for.
    pub fn since_process(&self, pid: u32) -> impl Iterator<Item = &Event> {
        let from = self
            .records
            .iter()
            .rposition(|r| matches!(r.event, Event::RunStarted { pid: p, .. } if p == pid))
            .map_or(self.records.len(), |i| i + 1);
        self.records[from..].iter().map(|r| &r.event)
    }
}

/// The current run in `state_dir`, if there is one.
pub fn load(state_dir: &std::path::Path) -> Result<Option<Loaded>> {
    let path = state_dir.join(super::journal::JOURNAL_FILE);
    if !path.exists() {
        return Ok(None);
    }
    load_file(&path).map(Some)
}

/// A journal file (a current or an archived run).
pub fn load_file(path: &std::path::Path) -> Result<Loaded> {
    let contents = super::journal::read(path)?;
    Ok(Loaded {
        state: replay(&contents.records)?,
        torn_tail: contents.torn_tail,
        records: contents.records,
    })
}

/// The same from bytes being written by another process: `None` while it is not yet a
/// readable journal (a fault watch polls it as it grows).
pub fn load_bytes(bytes: &[u8], path: &std::path::Path) -> Option<Loaded> {
    let contents = super::journal::parse(bytes, path).ok()?;
    Some(Loaded {
        state: replay(&contents.records).ok()?,
        torn_tail: contents.torn_tail,
        records: contents.records,
    })
}

#[cfg(test)]
mod tests;
