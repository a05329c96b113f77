//! Exit codes, as documented in the README.

use std::process::ExitCode;

use crate::engine::{RunError, Stop};

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Done,
    /// 1: checks failed or not ready (an aborted cutover included: nothing changed).
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

    /// The exit for a failed command: the kind of the run's typed error where there is one;
    /// an error from outside a run (loading the spec, a refused precondition) changed nothing.
    pub fn for_error(err: &anyhow::Error) -> Exit {
        match RunError::find(err).map(|e| e.stop) {
            Some(Stop::Aborted) => Exit::NotReady,
            Some(Stop::OperatorNeeded(_) | Stop::Paused) => Exit::OperatorNeeded,
            Some(Stop::Refused) | None => Exit::BadInput,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Next;

    fn run_error(stop: Stop) -> anyhow::Error {
        RunError {
            stop,
            message: "x".into(),
            spec_arg: "s.toml".into(),
        }
        .into()
    }

    #[test]
    fn exit_codes_follow_the_error_kind_wherever_it_sits() {
        let plain = anyhow::anyhow!("bad spec");
        assert_eq!(Exit::for_error(&plain), Exit::BadInput);
        let as_source = run_error(Stop::OperatorNeeded(Next::Resume)).context("cutover");
        assert_eq!(Exit::for_error(&as_source), Exit::OperatorNeeded);
        let as_context = anyhow::anyhow!("paused").context(RunError {
            stop: Stop::Paused,
            message: "resume later".into(),
            spec_arg: "s".into(),
        });
        assert_eq!(Exit::for_error(&as_context), Exit::OperatorNeeded);
        assert_eq!(Exit::for_error(&run_error(Stop::Aborted)), Exit::NotReady);
        assert_eq!(Exit::for_error(&run_error(Stop::Refused)), Exit::BadInput);
    }
}
