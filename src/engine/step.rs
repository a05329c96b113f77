//! The step contract. A step declares the type of what it records (`Step::Output`); the
//! runner and the journal see that output only as JSON, erased at the boundary by [`Typed`].
//! A step reads another step's output typed, with [`Cx::get`].

use std::collections::BTreeMap;
use std::fmt::Display;

use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::events::{EventSink, RunEvent};
pub use super::model::Kind;

/// What `probe` found: whether the step's effect is already in place.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe<T> {
    /// Already done; the output to record.
    Done(T),
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

/// What a step sees of the run: the recorded outputs of the steps before it and how long each
/// took. Steps pass data to each other only this way, so a resumed process sees exactly what
/// the first one did.
#[derive(Debug, Clone, Default)]
pub struct Cx {
    pub run_id: String,
    outputs: BTreeMap<String, Value>,
    elapsed_ms: BTreeMap<String, u64>,
    events: Option<EventSink>,
    in_doubt: bool,
}

impl Cx {
    pub fn new(
        run_id: String,
        outputs: BTreeMap<String, Value>,
        elapsed_ms: BTreeMap<String, u64>,
        events: Option<EventSink>,
    ) -> Cx {
        Cx {
            run_id,
            outputs,
            elapsed_ms,
            events,
            in_doubt: false,
        }
    }

    /// Whether the step being run was started before, by this run (a crash or a failure may
    /// have left part of its effect): its probe and apply must expect their own traces.
    pub fn in_doubt(&self) -> bool {
        self.in_doubt
    }

    pub(crate) fn set_in_doubt(&mut self, in_doubt: bool) {
        self.in_doubt = in_doubt;
    }

    /// The output step `step` recorded, as its declared type.
    pub fn get<T: DeserializeOwned>(&self, step: &impl Display) -> Result<T> {
        self.find(step)?
            .ok_or_else(|| anyhow!("step {step} recorded nothing in this run"))
    }

    /// Like [`Cx::get`], but `None` when the step recorded nothing (not in the plan, or not
    /// done yet).
    pub fn find<T: DeserializeOwned>(&self, step: &impl Display) -> Result<Option<T>> {
        let key = step.to_string();
        match self.outputs.get(&key) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .with_context(|| format!("the journaled output of step {key} does not decode")),
        }
    }

    /// How long step `step` took, as the runner journaled it (`None` before it succeeded, or
    /// when a resumed run found it done by an earlier process).
    pub fn elapsed_ms(&self, step: &impl Display) -> Option<u64> {
        self.elapsed_ms.get(&step.to_string()).copied()
    }

    /// A line of progress for the operator while the step works.
    pub fn progress(&self, step: &impl Display, message: impl Into<String>) {
        self.send(RunEvent::StepProgress {
            step: step.to_string(),
            message: message.into(),
        });
    }

    /// Structured progress (a lag sample, …): typed data of the step's own domain, which the UI
    /// decodes when it knows the shape. The engine only carries it.
    pub fn data<T: Serialize>(&self, step: &impl Display, data: &T) {
        if let Ok(data) = serde_json::to_value(data) {
            self.send(RunEvent::StepData {
                step: step.to_string(),
                data,
            });
        }
    }

    fn send(&self, e: RunEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }
}

/// One step of a plan.
#[async_trait]
pub trait Step: Send + Sync {
    /// What the step records when it succeeds; what later steps read with [`Cx::get`].
    type Output: Serialize + DeserializeOwned + Send + Sync;

    /// Stable key, journaled.
    fn id(&self) -> String;
    fn describe(&self) -> Description;
    fn kind(&self) -> Kind;
    /// Is the effect already in place? Must not change anything. By default: not known, so
    /// an interrupted step is applied again (fine for read-only and idempotent steps).
    async fn probe(&self, _cx: &Cx) -> Result<Probe<Self::Output>> {
        Ok(Probe::NotDone)
    }
    /// Make the effect happen. Idempotent: may run again after a crash at any instant.
    async fn apply(&self, cx: &Cx) -> Result<Self::Output>;
    /// Undo the effect; `output` is `None` when the step never recorded success (it may have
    /// done part of its work). Idempotent. By default nothing to undo.
    async fn compensate(&self, _cx: &Cx, _output: Option<Self::Output>) -> Result<()> {
        Ok(())
    }
}

/// A step as the runner drives it: its output erased to JSON.
#[async_trait]
pub trait DynStep: Send + Sync {
    fn id(&self) -> String;
    fn describe(&self) -> Description;
    fn kind(&self) -> Kind;
    async fn probe(&self, cx: &Cx) -> Result<Probe<Value>>;
    async fn apply(&self, cx: &Cx) -> Result<Value>;
    async fn compensate(&self, cx: &Cx, output: Option<&Value>) -> Result<()>;
}

/// The adapter from a typed [`Step`] to a [`DynStep`]: the only place outputs are encoded and
/// decoded.
pub struct Typed<S>(pub S);

#[async_trait]
impl<S: Step> DynStep for Typed<S> {
    fn id(&self) -> String {
        self.0.id()
    }
    fn describe(&self) -> Description {
        self.0.describe()
    }
    fn kind(&self) -> Kind {
        self.0.kind()
    }
    async fn probe(&self, cx: &Cx) -> Result<Probe<Value>> {
        Ok(match self.0.probe(cx).await? {
            Probe::Done(out) => Probe::Done(serde_json::to_value(out)?),
            Probe::NotDone => Probe::NotDone,
            Probe::Unsafe(why) => Probe::Unsafe(why),
        })
    }
    async fn apply(&self, cx: &Cx) -> Result<Value> {
        Ok(serde_json::to_value(self.0.apply(cx).await?)?)
    }
    async fn compensate(&self, cx: &Cx, output: Option<&Value>) -> Result<()> {
        // An output that no longer decodes (written by another version) is treated like a step
        // that never recorded success: compensations handle "may have done part of its work",
        // and an undo must always be able to finish.
        let output = output.and_then(|v| serde_json::from_value(v.clone()).ok());
        self.0.compensate(cx, output).await
    }
}

/// Box a typed step for a plan.
pub fn boxed<S: Step + 'static>(step: S) -> Box<dyn DynStep> {
    Box::new(Typed(step))
}
