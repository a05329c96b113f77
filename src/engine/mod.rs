//! The step engine: a checkpointed state machine whose journal is the single source of truth.
//!
//! [`journal`] writes and reads the records, [`replay`] folds them into a [`replay::RunState`]
//! through one transition function, [`runner`] executes, resumes and rolls back plans of
//! [`step::Step`]s, [`lock`] keeps runs exclusive, and [`events`] tells the UI what happens.

pub mod events;
pub mod failpoint;
pub mod journal;
pub mod lock;
pub mod replay;
pub mod runner;
pub mod step;

pub use runner::{Invocation, Plan, Runner};
pub use step::{Cx, Description, Kind, Probe, Step};
