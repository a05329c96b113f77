//! What the runner reports as it goes. The UI renders these; the engine never prints.
//!
//! Everything the runner journals is reported as that very journal event
//! ([`RunEvent::Journaled`]), so the journal and the live view cannot disagree; the other
//! variants are for the live view only.

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::journal::Event;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// A process began (or resumed) work on a run.
    RunOpened {
        run_id: String,
        operation: String,
        resumed: bool,
    },
    /// Just journaled (fsynced).
    Journaled {
        record: Event,
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
    StepProgress {
        step: String,
        message: String,
    },
    /// Structured progress of the step's own domain (a lag sample, …); the UI decodes the
    /// shapes it knows.
    StepData {
        step: String,
        data: Value,
    },
}

pub type EventSink = mpsc::UnboundedSender<RunEvent>;
pub type EventStream = mpsc::UnboundedReceiver<RunEvent>;

pub fn channel() -> (EventSink, EventStream) {
    mpsc::unbounded_channel()
}
