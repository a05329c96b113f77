//! Folding journal records into the run's state, through one transition function that rejects
//! every illegal sequence and names the record.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::journal::{Event, Outcome, PlannedStep, Record};
use super::step::Kind;

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
    pub error: Option<String>,
    /// How many times it was started (more than once after a crash or a retry).
    pub attempts: u32,
}

impl StepState {
    /// Started and possibly left an effect that rollback must undo.
    pub fn needs_compensation(&self) -> bool {
        self.kind != Kind::ReadOnly
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
    pub steps: Vec<StepState>,
}

impl RunState {
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
            Event::RunStarted { .. } => {}
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
            Event::StepStarted { step } => {
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
            Event::StepSucceeded { step, output } => {
                let i = self.index(step)?;
                let s = &mut self.steps[i];
                if s.status != StepStatus::InDoubt {
                    return Err(format!("step {step:?} succeeded while {:?}", s.status));
                }
                s.status = StepStatus::Succeeded;
                s.finished_at = Some(ts);
                s.output = Some(output.clone());
            }
            Event::StepFailed { step, error } => {
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
            Event::CompensationFinished { step } | Event::CompensationFailed { step, .. } => {
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
        steps: steps.iter().map(new_step).collect(),
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
        error: None,
        attempts: 0,
    }
}

#[cfg(test)]
mod tests;
