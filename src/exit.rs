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

    /// A plan whose second step fails its probe on resume: anything after the first side
    /// effect is "operator needed", never "bad input".
    mod a_run {
        use anyhow::{bail, Result};
        use async_trait::async_trait;
        use serde_json::Value;

        use super::super::Exit;
        use crate::engine::{events, Cx, Description, Invocation, Kind, Plan, Probe, Runner, Step};

        struct Effect;
        struct FailingProbe;

        #[async_trait]
        impl Step for Effect {
            type Output = Value;
            fn id(&self) -> String {
                "effect".into()
            }
            fn describe(&self) -> Description {
                Description::default()
            }
            fn kind(&self) -> Kind {
                Kind::Reversible
            }
            async fn apply(&self, _: &Cx) -> Result<Value> {
                Ok(Value::Null)
            }
        }

        #[async_trait]
        impl Step for FailingProbe {
            type Output = Value;
            fn id(&self) -> String {
                "probed".into()
            }
            fn describe(&self) -> Description {
                Description::default()
            }
            fn kind(&self) -> Kind {
                Kind::Reversible
            }
            async fn probe(&self, _: &Cx) -> Result<Probe<Value>> {
                bail!("connection refused")
            }
            async fn apply(&self, _: &Cx) -> Result<Value> {
                Ok(Value::Null)
            }
        }

        fn plan() -> Plan {
            let mut p = Plan::new("test");
            p.push(Effect);
            p.push(FailingProbe);
            p
        }

        #[tokio::test]
        async fn a_probe_error_mid_run_exits_3_with_the_continuing_command() {
            let dir = tempfile::tempdir().unwrap();
            let inv = Invocation {
                state_dir: dir.path().join("state"),
                spec_hash: "h".into(),
                spec_arg: "spec.toml".into(),
                command: "test".into(),
            };
            let (tx, _rx) = events::channel();
            // The probe runs only for a step that may have run before: stop before it, then
            // mark it in doubt as a crash would, by resuming after its start was journaled.
            let mut r = Runner::start(plan(), inv.clone(), tx.clone()).unwrap();
            r.pause_before(Some("probed".into())).unwrap();
            let paused = r.run(None).await.unwrap_err();
            assert_eq!(Exit::for_error(&paused), Exit::OperatorNeeded);
            drop(r);
            let mut r = Runner::resume(plan(), inv, tx).unwrap();
            let err = r.run(None).await.unwrap_err();
            // A probe error on a pending step is still after the first side effect (step
            // `effect` changed something).
            assert_eq!(Exit::for_error(&err), Exit::OperatorNeeded, "{err:#}");
            let text = format!("{err:#}");
            assert!(text.contains("probe step probed"), "{text}");
            assert!(text.contains("migrate resume -f spec.toml"), "{text}");
        }
    }
}
