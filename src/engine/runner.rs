//! Executing a plan, resuming it after a crash, and rolling it back before the point of no
//! return. Every event is checked against the replay rules, then journaled (fsynced), before
//! anything it announces happens.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use rand::Rng;

use super::events::{EventSink, RunEvent};
use super::failpoint;
use super::journal::{self, Event, Journal, Outcome, PlannedStep, FORMAT_VERSION, JOURNAL_FILE};
use super::replay::{check, replay, RunState, StepStatus};
use super::step::{Cx, Kind, Probe, Step};
use crate::exit::OperatorNeeded;

/// An ordered list of steps for one operation (`cutover`, …).
pub struct Plan {
    pub operation: String,
    pub steps: Vec<Box<dyn Step>>,
}

impl Plan {
    pub fn planned(&self) -> Vec<PlannedStep> {
        self.steps
            .iter()
            .map(|s| PlannedStep {
                id: s.id(),
                kind: s.kind(),
            })
            .collect()
    }
}

/// What the runner needs to know about the invocation, for messages and the journal.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub state_dir: PathBuf,
    pub spec_hash: String,
    /// The spec path as the operator gave it, for "run `migrate resume -f …`" messages.
    pub spec_arg: String,
    /// The command line, journaled in `run_started`.
    pub command: String,
}

/// The run stopped cleanly before a step, as asked (`--pause-before`).
#[derive(Debug, thiserror::Error)]
#[error("paused before step {0}")]
pub struct Paused(pub String);

pub struct Runner {
    /// Set once the run records its point of no return; shared so a signal handler can see it
    /// while `execute` runs.
    past_point_of_no_return: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pause_before: Option<String>,
    plan: Plan,
    journal: Journal,
    state: RunState,
    events: EventSink,
    inv: Invocation,
}

/// The journal of the current run, if any, replayed.
pub fn current_run(state_dir: &Path) -> Result<Option<(RunState, Option<usize>)>> {
    let path = state_dir.join(JOURNAL_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let contents = journal::read(&path)?;
    Ok(Some((replay(&contents.records)?, contents.torn_tail)))
}

impl Runner {
    /// Begin a new run. Refuses while an unfinished run exists; a finished run's journal is
    /// kept as `journal-<run id>.jsonl`.
    pub fn start(plan: Plan, inv: Invocation, events: EventSink) -> Result<Runner> {
        if let Some((old, _)) = current_run(&inv.state_dir)? {
            match old.finished() {
                None => bail!(
                    "run {} ({}) is not finished: continue it with `migrate resume -f {}` or undo it with `migrate rollback -f {}`",
                    old.run_id, old.operation, inv.spec_arg, inv.spec_arg
                ),
                Some(_) => {
                    let archived = inv.state_dir.join(format!("journal-{}.jsonl", old.run_id));
                    std::fs::rename(inv.state_dir.join(JOURNAL_FILE), &archived)
                        .with_context(|| format!("archive the finished run's journal as {}", archived.display()))?;
                }
            }
        }
        let run_id = format!(
            "{}-{:06x}",
            Utc::now().format("%Y%m%dT%H%M%SZ"),
            rand::rng().random_range(0..0x100_0000)
        );
        let header = Event::Header {
            format: FORMAT_VERSION,
            run_id,
            operation: plan.operation.clone(),
            spec_hash: inv.spec_hash.clone(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            steps: plan.planned(),
        };
        let journal = Journal::create(&inv.state_dir, header)?;
        let contents = journal::read(journal.path())?;
        let state = replay(&contents.records)?;
        let mut r = Runner {
            past_point_of_no_return: Default::default(),
            pause_before: None,
            plan,
            journal,
            state,
            events,
            inv,
        };
        r.record(Event::RunStarted {
            pid: std::process::id(),
            command: r.inv.command.clone(),
        })?;
        r.emit(RunEvent::RunStarted {
            run_id: r.state.run_id.clone(),
            operation: r.state.operation.clone(),
            resumed: false,
        });
        Ok(r)
    }

    /// Continue the current run with the plan rebuilt for its operation.
    pub fn resume(plan: Plan, inv: Invocation, events: EventSink) -> Result<Runner> {
        if !inv.state_dir.join(JOURNAL_FILE).exists() {
            bail!("no run to continue in {}", inv.state_dir.display());
        }
        let (journal, contents) = Journal::open(&inv.state_dir)?;
        let state = replay(&contents.records)?;
        if state.spec_hash != inv.spec_hash {
            bail!(
                "the spec changed since run {} started (it was {}, it is now {}); put the original spec back to continue, or roll back",
                state.run_id, short(&state.spec_hash), short(&inv.spec_hash)
            );
        }
        let planned: Vec<PlannedStep> = state
            .steps
            .iter()
            .map(|s| PlannedStep {
                id: s.id.clone(),
                kind: s.kind,
            })
            .collect();
        if planned != plan.planned() {
            bail!("this version of migrate plans run {} differently from the one that started it; continue it with migrate {}", state.run_id, state.tool_version);
        }
        if let Some(o) = state.finished() {
            bail!(
                "run {} already finished ({o:?}); there is nothing to continue",
                state.run_id
            );
        }
        let mut r = Runner {
            past_point_of_no_return: Default::default(),
            pause_before: None,
            plan,
            journal,
            state,
            events,
            inv,
        };
        if let Some(line) = contents.torn_tail {
            r.emit(RunEvent::Notice {
                message: format!(
                    "the journal's last line ({line}) was torn by a crash and was dropped"
                ),
            });
        }
        r.record(Event::RunStarted {
            pid: std::process::id(),
            command: r.inv.command.clone(),
        })?;
        r.emit(RunEvent::RunStarted {
            run_id: r.state.run_id.clone(),
            operation: r.state.operation.clone(),
            resumed: true,
        });
        Ok(r)
    }

    /// Stop cleanly before this step (it must be in the plan).
    pub fn pause_before(&mut self, step: Option<String>) -> Result<()> {
        if let Some(s) = &step {
            if !self.plan.steps.iter().any(|x| &x.id() == s) {
                let ids: Vec<String> = self.plan.steps.iter().map(|x| x.id()).collect();
                bail!(
                    "--pause-before {s}: no such step; the steps are {}",
                    ids.join(", ")
                );
            }
        }
        self.pause_before = step;
        Ok(())
    }

    pub fn state(&self) -> &RunState {
        &self.state
    }

    fn emit(&self, e: RunEvent) {
        let _ = self.events.send(e);
    }

    fn record(&mut self, event: Event) -> Result<()> {
        let next = check(&self.state, &event)?;
        self.journal.append(event)?;
        self.state = next;
        self.past_point_of_no_return.store(
            self.state.point_of_no_return.is_some(),
            std::sync::atomic::Ordering::SeqCst,
        );
        Ok(())
    }

    pub fn events(&self) -> EventSink {
        self.events.clone()
    }

    pub fn point_of_no_return_flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.past_point_of_no_return.clone()
    }

    fn cx(&self) -> Cx {
        Cx {
            run_id: self.state.run_id.clone(),
            outputs: self.state.outputs(),
            events: Some(self.events.clone()),
        }
    }

    /// The advice appended to a failed step's error (an automatic undo strips it again).
    pub fn continue_hint(&self) -> String {
        format!(
            "fix the cause, then continue with `migrate resume -f {s}` or undo with `migrate rollback -f {s}`",
            s = self.inv.spec_arg
        )
    }

    /// Run every step not yet done, in order.
    pub async fn execute(&mut self) -> Result<Outcome> {
        if self.state.phase != super::replay::Phase::Forward {
            bail!(
                "run {} is rolling back; finish it with `migrate rollback -f {}`",
                self.state.run_id,
                self.inv.spec_arg
            );
        }
        for i in 0..self.plan.steps.len() {
            let id = self.plan.steps[i].id();
            let status = self.state.steps[i].status;
            if status == StepStatus::Succeeded {
                self.emit(RunEvent::StepSkipped { step: id });
                continue;
            }
            if status == StepStatus::Pending && self.pause_before.as_deref() == Some(id.as_str()) {
                let msg = format!(
                    "paused before step {id} as asked; continue with `migrate resume -f {}`",
                    self.inv.spec_arg
                );
                return Err(anyhow::Error::from(Paused(id)).context(OperatorNeeded(msg)));
            }
            let cx = self.cx();
            let step = &self.plan.steps[i];
            if status != StepStatus::Pending {
                self.emit(RunEvent::StepProbing { step: id.clone() });
            }
            let probe = step
                .probe(&cx)
                .await
                .with_context(|| format!("probe step {id}"))?;
            match probe {
                Probe::Done(output) => {
                    if status == StepStatus::Pending {
                        self.record(Event::StepStarted { step: id.clone() })?;
                    }
                    self.emit(RunEvent::StepSucceeded {
                        step: id.clone(),
                        elapsed_ms: 0,
                        output: output.clone(),
                    });
                    self.record(Event::StepSucceeded { step: id, output })?;
                    continue;
                }
                Probe::Unsafe(reason) => {
                    return Err(OperatorNeeded(format!(
                        "step {id} cannot go on safely: {reason}; {}",
                        self.continue_hint()
                    ))
                    .into());
                }
                Probe::NotDone => {}
            }
            if step.kind() == Kind::PointOfNoReturn && self.state.point_of_no_return.is_none() {
                self.record(Event::PointOfNoReturn { step: id.clone() })?;
                self.emit(RunEvent::PointOfNoReturn { step: id.clone() });
            }
            let d = self.plan.steps[i].describe();
            self.record(Event::StepStarted { step: id.clone() })?;
            self.emit(RunEvent::StepStarted {
                step: id.clone(),
                action: d.action,
                host: d.host,
            });
            failpoint::point(&id, "before").await;
            let t0 = Instant::now();
            let result = self.plan.steps[i].apply(&cx).await;
            let elapsed_ms = t0.elapsed().as_millis() as u64;
            match result {
                Ok(output) => {
                    failpoint::point(&id, "after").await;
                    self.record(Event::StepSucceeded {
                        step: id.clone(),
                        output: output.clone(),
                    })?;
                    self.emit(RunEvent::StepSucceeded {
                        step: id,
                        elapsed_ms,
                        output,
                    });
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    self.record(Event::StepFailed {
                        step: id.clone(),
                        error: error.clone(),
                    })?;
                    self.emit(RunEvent::StepFailed {
                        step: id.clone(),
                        elapsed_ms,
                        error: error.clone(),
                    });
                    return Err(OperatorNeeded(format!(
                        "step {id} failed: {error}; {}",
                        self.continue_hint()
                    ))
                    .into());
                }
            }
        }
        self.record(Event::RunFinished {
            outcome: Outcome::Completed,
        })?;
        self.emit(RunEvent::RunFinished {
            outcome: Outcome::Completed,
        });
        Ok(Outcome::Completed)
    }

    /// Undo every step that may have left an effect, latest first. Refused after the point of
    /// no return: from there, going back is a procedure of its own, never an undo.
    pub async fn rollback(&mut self) -> Result<Outcome> {
        if let Some(p) = &self.state.point_of_no_return {
            bail!(
                "run {} passed the point of no return at step {p}; it cannot be undone step by step (going back is a switchover in the other direction)",
                self.state.run_id
            );
        }
        for i in (0..self.plan.steps.len()).rev() {
            if !self.state.steps[i].needs_compensation() {
                continue;
            }
            let id = self.plan.steps[i].id();
            let output = self.state.steps[i].output.clone();
            self.record(Event::CompensationStarted { step: id.clone() })?;
            self.emit(RunEvent::CompensationStarted { step: id.clone() });
            failpoint::point(&id, "compensate").await;
            let cx = self.cx();
            let t0 = Instant::now();
            match self.plan.steps[i].compensate(&cx, output.as_ref()).await {
                Ok(()) => {
                    self.record(Event::CompensationFinished { step: id.clone() })?;
                    self.emit(RunEvent::CompensationFinished {
                        step: id,
                        elapsed_ms: t0.elapsed().as_millis() as u64,
                    });
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    self.record(Event::CompensationFailed {
                        step: id.clone(),
                        error: error.clone(),
                    })?;
                    self.emit(RunEvent::CompensationFailed {
                        step: id.clone(),
                        error: error.clone(),
                    });
                    return Err(OperatorNeeded(format!(
                        "undoing step {id} failed: {error}; fix the cause and run `migrate rollback -f {}` again",
                        self.inv.spec_arg
                    ))
                    .into());
                }
            }
        }
        self.record(Event::RunFinished {
            outcome: Outcome::RolledBack,
        })?;
        self.emit(RunEvent::RunFinished {
            outcome: Outcome::RolledBack,
        });
        Ok(Outcome::RolledBack)
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use serde_json::{json, Value};

    use super::*;
    use crate::engine::events;
    use crate::engine::step::Description;

    type Log = Arc<Mutex<Vec<String>>>;

    struct Fake {
        id: &'static str,
        kind: Kind,
        log: Log,
        unsafe_probe: bool,
    }

    #[async_trait]
    impl Step for Fake {
        fn id(&self) -> String {
            self.id.into()
        }
        fn describe(&self) -> Description {
            Description::default()
        }
        fn kind(&self) -> Kind {
            self.kind
        }
        async fn probe(&self, _: &Cx) -> Result<Probe> {
            Ok(if self.unsafe_probe {
                Probe::Unsafe("the data directory belongs to another cluster".into())
            } else {
                Probe::NotDone
            })
        }
        async fn apply(&self, cx: &Cx) -> Result<Value> {
            self.log.lock().unwrap().push(format!(
                "apply {} seeing {:?}",
                self.id,
                cx.outputs.keys().collect::<Vec<_>>()
            ));
            Ok(json!({ "by": self.id }))
        }
        async fn compensate(&self, _: &Cx, out: Option<&Value>) -> Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(format!("undo {} {}", self.id, out.is_some()));
            Ok(())
        }
    }

    fn plan(log: &Log, unsafe_last: bool) -> Plan {
        let f = |id, kind, unsafe_probe| {
            Box::new(Fake {
                id,
                kind,
                log: log.clone(),
                unsafe_probe,
            }) as Box<dyn Step>
        };
        Plan {
            operation: "test".into(),
            steps: vec![
                f("fence", Kind::Reversible, false),
                f("promote", Kind::PointOfNoReturn, false),
                f("reverse", Kind::Reversible, unsafe_last),
            ],
        }
    }

    fn inv(dir: &Path) -> Invocation {
        Invocation {
            state_dir: dir.join("state"),
            spec_hash: "h".into(),
            spec_arg: "spec.toml".into(),
            command: "test".into(),
        }
    }

    #[tokio::test]
    async fn rollback_is_refused_after_the_point_of_no_return() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::default();
        let (tx, _rx) = events::channel();
        let mut r = Runner::start(plan(&log, true), inv(dir.path()), tx.clone()).unwrap();
        let err = r.execute().await.unwrap_err();
        assert!(
            err.chain().any(|e| e.is::<OperatorNeeded>()),
            "an unsafe probe needs the operator: {err:#}"
        );
        assert!(err.to_string().contains("another cluster"), "{err:#}");
        assert_eq!(r.state().point_of_no_return.as_deref(), Some("promote"));
        // Steps saw the earlier steps' outputs, from the journal.
        assert_eq!(log.lock().unwrap()[1], "apply promote seeing [\"fence\"]");
        drop(r);
        let mut r = Runner::resume(plan(&log, false), inv(dir.path()), tx).unwrap();
        let err = r.rollback().await.unwrap_err().to_string();
        assert!(err.contains("point of no return at step promote"), "{err}");
        assert!(
            !log.lock().unwrap().iter().any(|l| l.starts_with("undo")),
            "nothing may be undone"
        );
        assert_eq!(r.execute().await.unwrap(), Outcome::Completed);
    }

    #[tokio::test]
    async fn a_new_run_is_refused_while_one_is_unfinished_and_archives_a_finished_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::default();
        let (tx, _rx) = events::channel();
        let first = Runner::start(plan(&log, false), inv(dir.path()), tx.clone()).unwrap();
        let id = first.state().run_id.clone();
        drop(first);
        let err = Runner::start(plan(&log, false), inv(dir.path()), tx.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&id) && err.contains("migrate resume -f spec.toml"),
            "{err}"
        );
        let mut r = Runner::resume(plan(&log, false), inv(dir.path()), tx.clone()).unwrap();
        r.execute().await.unwrap();
        drop(r);
        let again = Runner::start(plan(&log, false), inv(dir.path()), tx).unwrap();
        assert_ne!(again.state().run_id, id);
        assert!(dir
            .path()
            .join("state")
            .join(format!("journal-{id}.jsonl"))
            .exists());
    }

    #[tokio::test]
    async fn resume_refuses_a_changed_spec() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::default();
        let (tx, _rx) = events::channel();
        drop(Runner::start(plan(&log, false), inv(dir.path()), tx.clone()).unwrap());
        let mut changed = inv(dir.path());
        changed.spec_hash = "other".into();
        let err = Runner::resume(plan(&log, false), changed, tx)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("the spec changed"), "{err}");
    }
}
