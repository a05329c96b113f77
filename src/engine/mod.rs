//! The step engine: a checkpointed state machine whose journal is the single source of truth.
//! It knows nothing of PostgreSQL, replication or routes: steps bring those.
//!
//! Layers inside (each imports only those above it):
//! - [`model`]: `Kind`, `Outcome`, the serde label helper (a leaf);
//! - [`journal`]: the records on disk; [`error`]: the typed stop of a run;
//! - [`events`]: what the UI is told (journal events as they are written, progress);
//! - [`step`]: the typed step contract and its type-erased form; [`replay`]: records folded
//!   into a [`replay::RunState`] through one transition function, and the one journal reader;
//! - [`runner`]: executes, resumes and undoes plans; [`lock`]: the state directory's lock file.

pub mod error;
pub mod events;
pub mod failpoint;
pub mod journal;
pub mod lock;
pub mod model;
pub mod replay;
pub mod runner;
pub mod state_dir;
pub mod step;

pub use error::{Next, RunError, Stop};
pub use model::{label, Kind, Outcome};
pub use runner::{Interrupts, Invocation, OnFailure, Plan, Runner};
pub use step::{Cx, Description, Probe, Step};
