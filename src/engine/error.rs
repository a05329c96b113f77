//! How a run stops short of its end, typed: the kind decides the exit code (in `crate::exit`);
//! the text is built from the parts (what happened, then the command that continues), so no
//! advice is ever written into a message and stripped out again.

use std::fmt;

/// What the operator does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Fix the cause, then `resume` or `rollback`.
    ResumeOrRollback,
    /// Continue with `resume`.
    Resume,
    /// Run `rollback` (again).
    Rollback,
}

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Refused before anything changed: bad input, or a state that does not allow the command.
    Refused,
    /// Failed before the point of no return and undone automatically: it can be tried again.
    Aborted,
    /// A person must act; the state is journaled.
    OperatorNeeded(Next),
    /// Stopped before a step as asked (`--pause-before`).
    Paused,
}

/// The error a run returns.
#[derive(Debug, thiserror::Error)]
pub struct RunError {
    pub stop: Stop,
    /// What happened, without advice.
    pub message: String,
    /// The spec path as the operator gave it, for the command that continues.
    pub spec_arg: String,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.spec_arg;
        match self.stop {
            Stop::Refused => write!(f, "{}", self.message),
            Stop::Aborted => write!(
                f,
                "aborted before the point of no return, and undone: {}. Nothing the run changed is left changed; run the command again when the cause is fixed",
                self.message
            ),
            Stop::Paused => write!(f, "{}; continue with `migrate resume -f {s}`", self.message),
            Stop::OperatorNeeded(Next::ResumeOrRollback) => write!(
                f,
                "{}; fix the cause, then continue with `migrate resume -f {s}` or undo with `migrate rollback -f {s}`",
                self.message
            ),
            Stop::OperatorNeeded(Next::Resume) => {
                write!(f, "{}; continue with `migrate resume -f {s}`", self.message)
            }
            Stop::OperatorNeeded(Next::Rollback) => write!(
                f,
                "{}; fix the cause and run `migrate rollback -f {s}` again",
                self.message
            ),
        }
    }
}

impl RunError {
    /// The `RunError` anywhere in an error's chain (a context layer or a source).
    pub fn find(err: &anyhow::Error) -> Option<&RunError> {
        err.downcast_ref::<RunError>()
            .or_else(|| err.chain().find_map(|e| e.downcast_ref::<RunError>()))
    }
}
