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
        // A context layer is found by downcast_ref, a source in the chain by is().
        if err.downcast_ref::<Aborted>().is_some() || err.chain().any(|e| e.is::<Aborted>()) {
            Exit::NotReady
        } else if err.downcast_ref::<OperatorNeeded>().is_some()
            || err.chain().any(|e| e.is::<OperatorNeeded>())
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_error_kind_wherever_it_sits() {
        let plain = anyhow::anyhow!("bad spec");
        assert_eq!(Exit::for_error(&plain), Exit::BadInput);
        let as_source =
            anyhow::Error::from(OperatorNeeded("step failed".into())).context("cutover");
        assert_eq!(Exit::for_error(&as_source), Exit::OperatorNeeded);
        let as_context = anyhow::anyhow!("paused").context(OperatorNeeded("resume later".into()));
        assert_eq!(Exit::for_error(&as_context), Exit::OperatorNeeded);
        let aborted = anyhow::Error::from(Aborted("undone".into()));
        assert_eq!(Exit::for_error(&aborted), Exit::NotReady);
    }
}
