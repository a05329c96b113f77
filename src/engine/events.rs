//! What the runner reports as it goes. The UI renders these; the engine never prints.

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::journal::Outcome;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    RunStarted {
        run_id: String,
        operation: String,
        resumed: bool,
    },
    Notice {
        message: String,
    },
    StepSkipped {
        step: String,
    },
    StepProbing {
        step: String,
    },
    StepStarted {
        step: String,
        action: String,
        host: String,
    },
    StepProgress {
        step: String,
        message: String,
    },
    StepSucceeded {
        step: String,
        elapsed_ms: u64,
        output: Value,
    },
    StepFailed {
        step: String,
        elapsed_ms: u64,
        error: String,
    },
    PointOfNoReturn {
        step: String,
    },
    CompensationStarted {
        step: String,
    },
    CompensationFinished {
        step: String,
        elapsed_ms: u64,
    },
    CompensationFailed {
        step: String,
        error: String,
    },
    RunFinished {
        outcome: Outcome,
    },
    /// A lag sample of the whole chain (catch-up).
    Lag {
        step: String,
        sample: crate::replication::lag::ChainSample,
    },
}

pub type EventSink = mpsc::UnboundedSender<RunEvent>;
pub type EventStream = mpsc::UnboundedReceiver<RunEvent>;

pub fn channel() -> (EventSink, EventStream) {
    mpsc::unbounded_channel()
}
