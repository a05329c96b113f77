//! Exit codes, as documented in the README.

use std::process::ExitCode;

/// How a command ended. Errors (`anyhow::Error`) map to [`Exit::BadInput`] unless they carry
/// an [`OperatorNeeded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Done,
    /// 1: checks failed or not ready.
    NotReady,
    /// 2: bad input or error; nothing changed.
    BadInput,
    /// 3: operator needed; the state is journaled and the message says which command continues.
    OperatorNeeded,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::NotReady => 1,
            Exit::BadInput => 2,
            Exit::OperatorNeeded => 3,
        }
    }

    /// The exit for a failed command.
    pub fn for_error(err: &anyhow::Error) -> Exit {
        if err.chain().any(|e| e.is::<Aborted>()) {
            Exit::NotReady
        } else if err.chain().any(|e| e.is::<OperatorNeeded>()) {
            Exit::OperatorNeeded
        } else {
            Exit::BadInput
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// An error after which a person must act; its message names the command that continues.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OperatorNeeded(pub String);

/// A cutover that was aborted and undone before its point of no return: nothing changed, it can
/// be tried again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Aborted(pub String);
