//! The step contract (see DESIGN.md §3).

use std::collections::BTreeMap;

use anyhow::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Observes only; nothing to undo.
    ReadOnly,
    /// Has a compensation that restores the state from before it.
    Reversible,
    /// Cannot be undone (promotion). Rollback after it is a procedure of its own.
    PointOfNoReturn,
}

/// What `probe` found: whether the step's effect is already in place.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// Already done; the output to record.
    Done(Value),
    NotDone,
    /// Neither done nor safe to (re)apply; the reason, for the operator.
    Unsafe(String),
}

/// What `plan` shows for a step: where it runs, what exactly it does, what proves it worked,
/// and how it is undone. No secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    pub host: String,
    pub action: String,
    pub proof: String,
    pub undo: String,
}

/// What a step sees of the run: the recorded outputs of the steps before it. Steps pass data
/// to each other only this way, so a resumed process sees exactly what the first one did.
#[derive(Debug, Clone, Default)]
pub struct Cx {
    pub run_id: String,
    pub outputs: BTreeMap<String, Value>,
    /// For progress reports while a step works (base-backup bytes, lag).
    pub events: Option<super::events::EventSink>,
}

impl Cx {
    pub fn output(&self, step: &str) -> Option<&Value> {
        self.outputs.get(step)
    }

    pub fn progress(&self, step: &str, message: impl Into<String>) {
        if let Some(tx) = &self.events {
            let _ = tx.send(super::events::RunEvent::StepProgress {
                step: step.into(),
                message: message.into(),
            });
        }
    }
}

#[async_trait]
pub trait Step: Send + Sync {
    /// Stable key, journaled.
    fn id(&self) -> String;
    fn describe(&self) -> Description;
    fn kind(&self) -> Kind;
    /// Is the effect already in place? Must not change anything. By default: not known, so
    /// an interrupted step is applied again (fine for read-only and idempotent steps).
    async fn probe(&self, _cx: &Cx) -> Result<Probe> {
        Ok(Probe::NotDone)
    }
    /// Make the effect happen. Idempotent: may run again after a crash at any instant.
    async fn apply(&self, cx: &Cx) -> Result<Value>;
    /// Undo the effect; `output` is `None` when the step never recorded success (it may have
    /// done part of its work). Idempotent. By default nothing to undo (read-only steps).
    async fn compensate(&self, _cx: &Cx, _output: Option<&Value>) -> Result<()> {
        Ok(())
    }
}
