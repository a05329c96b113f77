//! Executing a plan, resuming it after a crash, and undoing it before the point of no return.
//! Every event is checked against the replay rules, then journaled (fsynced), before anything
//! it announces happens, and reported to the UI as that same journal event.
//!
//! The runner owns the run policy: it times every step, it undoes a failure before the point
//! of no return at once when the plan says so ([`OnFailure`]), and it stops with a typed
//! [`RunError`] whose kind decides the exit code.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use chrono::Utc;
use rand::Rng;
use tokio::sync::mpsc;

use super::error::{Next, RunError, Stop};
use super::events::{EventSink, RunEvent};
use super::failpoint;
use super::journal::{Event, Journal, PlannedStep, FORMAT_VERSION, JOURNAL_FILE};
use super::model::{Kind, Outcome};
use super::replay::{check, load, replay, Phase, RunState, StepStatus};
use super::step::{boxed, Cx, DynStep, Probe, Step};

/// What a failure before the point of no return does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop for the operator, who resumes or rolls back (a `replicate` run: its clones are worth
    /// keeping while the cause is fixed).
    Stop,
    /// Undo at once every step from index `keep` on, latest first, and finish the run as
    /// [`Outcome::Aborted`]; a failure in the first `keep` steps stops for the operator (the
    /// chain a cutover builds before its window).
    Abort { keep: usize },
}

/// An ordered list of steps for one operation (`cutover`, …), and what a failure does.
pub struct Plan {
    pub operation: String,
    pub steps: Vec<Box<dyn DynStep>>,
    pub on_failure: OnFailure,
    /// Steps this version no longer plans but an earlier version's journal may hold: put
    /// back where that journal has them when its run is resumed (see `fit`).
    pub retired: Vec<Box<dyn DynStep>>,
}

impl Plan {
    pub fn new(operation: impl Into<String>) -> Plan {
        Plan {
            operation: operation.into(),
            steps: Vec::new(),
            on_failure: OnFailure::Stop,
            retired: Vec::new(),
        }
    }

    pub fn push<S: Step + 'static>(&mut self, step: S) {
        self.steps.push(boxed(step));
    }

    /// A step earlier versions planned here and this one no longer does (see `retired`).
    pub fn retire<S: Step + 'static>(&mut self, step: S) {
        self.retired.push(boxed(step));
    }

    /// Each retired step that `recorded` holds, put back into the plan after the step the
    /// journal has before it (first when none), so that the run goes on as it was planned.
    fn restore_retired(&mut self, recorded: &[PlannedStep]) {
        for (at, r) in recorded.iter().enumerate() {
            if self.steps.iter().any(|s| s.id() == r.id) {
                continue;
            }
            let Some(k) = self.retired.iter().position(|s| s.id() == r.id) else {
                continue;
            };
            let step = self.retired.remove(k);
            let before = at
                .checked_sub(1)
                .and_then(|p| self.steps.iter().position(|s| s.id() == recorded[p].id));
            let i = before.map_or(0, |i| i + 1);
            if let OnFailure::Abort { keep } = &mut self.on_failure {
                if i < *keep {
                    *keep += 1;
                }
            }
            self.steps.insert(i, step);
        }
    }

    /// From the next step on, a failure before the point of no return is undone at once; the
    /// steps pushed so far are kept.
    pub fn abort_from_here(&mut self) {
        self.on_failure = OnFailure::Abort {
            keep: self.steps.len(),
        };
    }

    pub fn ids(&self) -> Vec<String> {
        self.steps.iter().map(|s| s.id()).collect()
    }

    fn keep(&self) -> usize {
        match self.on_failure {
            OnFailure::Stop => 0,
            OnFailure::Abort { keep } => keep,
        }
    }

    pub fn planned(&self) -> Vec<PlannedStep> {
        self.steps
            .iter()
            .map(|s| PlannedStep {
                id: s.id(),
                kind: s.kind(),
            })
            .collect()
    }

    /// Make this plan the one a journal recorded: the same steps, or (a journal of an older
    /// version, whose `cutover` ran its chain as a run of its own) the same steps as this plan's
    /// tail, whose head is then dropped, with any retired step it holds put back; and in the
    /// order the journal planned them (an older
    /// version ran `reverse` before the release): a run goes on as it was planned. `false`
    /// when they differ otherwise.
    fn fit(&mut self, recorded: &[PlannedStep]) -> bool {
        self.restore_retired(recorded);
        let Some(skip) = self.steps.len().checked_sub(recorded.len()) else {
            return false;
        };
        let keep = self.keep().saturating_sub(skip);
        let Some(order) = recorded_order(&self.planned()[skip..], recorded, keep) else {
            return false;
        };
        let mut tail: Vec<Option<Box<dyn DynStep>>> = self.steps.drain(skip..).map(Some).collect();
        self.steps = order
            .into_iter()
            .map(|i| tail[i].take().expect("recorded_order is a permutation"))
            .collect();
        self.on_failure = match self.on_failure {
            OnFailure::Abort { .. } => OnFailure::Abort { keep },
            OnFailure::Stop => OnFailure::Stop,
        };
        true
    }
}

/// Pure: for each recorded step, the index of the same step (id, and a kind that resumes it)
/// among `planned`; `None` unless the two are the same steps, and the first `keep` (the part
/// a failure does not undo) in the same places.
fn recorded_order(
    planned: &[PlannedStep],
    recorded: &[PlannedStep],
    keep: usize,
) -> Option<Vec<usize>> {
    if planned.len() != recorded.len() {
        return None;
    }
    let mut used = vec![false; planned.len()];
    let mut order = Vec::with_capacity(recorded.len());
    for (at, r) in recorded.iter().enumerate() {
        let i = (0..planned.len())
            .find(|&i| !used[i] && planned[i].id == r.id && planned[i].kind.resumes(r.kind))?;
        if (at < keep || i < keep) && i != at {
            return None;
        }
        used[i] = true;
        order.push(i);
    }
    Some(order)
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

/// Interrupt requests (Ctrl-C, SIGTERM, SIGHUP), each with the signal's name.
pub type Interrupts = mpsc::UnboundedReceiver<&'static str>;

pub struct Runner {
    /// Set once the run records its point of no return.
    past_point_of_no_return: Arc<AtomicBool>,
    pause_before: Option<String>,
    plan: Plan,
    journal: Journal,
    state: RunState,
    events: EventSink,
    inv: Invocation,
}

/// Why a forward pass stopped, before the policy decides what that means.
enum Halt {
    Paused(String),
    /// A probe found the step neither done nor safe to apply: the situation needs a person,
    /// so nothing is undone automatically either (an undo could make it worse, e.g. restart
    /// a primary beside one promoted from outside).
    Unsafe(String),
    Failed(anyhow::Error),
}

impl Runner {
    fn refused(inv: &Invocation, message: String) -> anyhow::Error {
        RunError {
            stop: Stop::Refused,
            message,
            spec_arg: inv.spec_arg.clone(),
        }
        .into()
    }

    /// Begin a new run. Refuses while an unfinished run exists; a finished run's journal is
    /// kept as `journal-<run id>.jsonl`.
    pub fn start(plan: Plan, inv: Invocation, events: EventSink) -> Result<Runner> {
        Self::start_with(plan, inv, events, false)
    }

    /// Begin a new run even beside an unfinished one, which is abandoned: its journal is kept
    /// as `journal-<run id>-abandoned.jsonl` and nothing of it is undone. Only for the
    /// emergency (a failover), when the unfinished run cannot go on because its primary is lost.
    pub fn start_abandoning(plan: Plan, inv: Invocation, events: EventSink) -> Result<Runner> {
        Self::start_with(plan, inv, events, true)
    }

    fn start_with(plan: Plan, inv: Invocation, events: EventSink, abandon: bool) -> Result<Runner> {
        if let Some(old) = load(&inv.state_dir)? {
            let old = old.state;
            let name = match old.finished() {
                None if !abandon => {
                    return Err(Self::refused(&inv, format!(
                        "run {} ({}) is not finished: continue it with `migrate resume -f {a}` or undo it with `migrate rollback -f {a}`",
                        old.run_id, old.operation, a = inv.spec_arg
                    )))
                }
                None => format!("journal-{}-abandoned.jsonl", old.run_id),
                Some(_) => format!("journal-{}.jsonl", old.run_id),
            };
            let archived = inv.state_dir.join(name);
            std::fs::rename(inv.state_dir.join(JOURNAL_FILE), &archived).with_context(|| {
                format!(
                    "archive the previous run's journal as {}",
                    archived.display()
                )
            })?;
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
            keep: plan.keep(),
        };
        let journal = Journal::create(&inv.state_dir, header)?;
        let state = replay(&super::journal::read(journal.path())?.records)?;
        Self::opened(plan, inv, events, journal, state, false)
    }

    /// Continue the current run with the plan rebuilt for its operation.
    pub fn resume(mut plan: Plan, inv: Invocation, events: EventSink) -> Result<Runner> {
        if !inv.state_dir.join(JOURNAL_FILE).exists() {
            return Err(Self::refused(
                &inv,
                format!("no run to continue in {}", inv.state_dir.display()),
            ));
        }
        let (journal, contents) = Journal::open(&inv.state_dir)?;
        let state = replay(&contents.records)?;
        if state.spec_hash != inv.spec_hash {
            return Err(Self::refused(&inv, format!(
                "the spec changed since run {} started (it was {}, it is now {}); put the original spec back to continue, or roll back",
                state.run_id, short(&state.spec_hash), short(&inv.spec_hash)
            )));
        }
        let recorded: Vec<PlannedStep> = state
            .steps
            .iter()
            .map(|s| PlannedStep {
                id: s.id.clone(),
                kind: s.kind,
            })
            .collect();
        if !plan.fit(&recorded) {
            return Err(Self::refused(&inv, format!(
                "this version of migrate plans run {} differently from the one that started it; continue it with migrate {}",
                state.run_id, state.tool_version
            )));
        }
        if let Some(o) = state.finished() {
            return Err(Self::refused(
                &inv,
                format!(
                    "run {} already finished ({o:?}); there is nothing to continue",
                    state.run_id
                ),
            ));
        }
        let r = Self::opened(plan, inv, events, journal, state, true)?;
        if let Some(line) = contents.torn_tail {
            r.emit(RunEvent::Notice {
                message: format!(
                    "the journal's last line ({line}) was torn by a crash and was dropped"
                ),
            });
        }
        Ok(r)
    }

    fn opened(
        plan: Plan,
        inv: Invocation,
        events: EventSink,
        journal: Journal,
        state: RunState,
        resumed: bool,
    ) -> Result<Runner> {
        let mut r = Runner {
            past_point_of_no_return: Arc::new(AtomicBool::new(state.point_of_no_return.is_some())),
            pause_before: None,
            plan,
            journal,
            state,
            events,
            inv,
        };
        r.emit(RunEvent::RunOpened {
            run_id: r.state.run_id.clone(),
            operation: r.state.operation.clone(),
            resumed,
        });
        r.note(Event::RunStarted {
            pid: std::process::id(),
            command: r.inv.command.clone(),
        })?;
        Ok(r)
    }

    /// Stop cleanly before this step (it must be in the plan).
    pub fn pause_before(&mut self, step: Option<String>) -> Result<()> {
        if let Some(s) = &step {
            if !self.plan.steps.iter().any(|x| &x.id() == s) {
                return Err(Self::refused(
                    &self.inv,
                    format!(
                        "--pause-before {s}: no such step; the steps are {}",
                        self.plan.ids().join(", ")
                    ),
                ));
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

    /// Journal an event (checked against the replay rules first), then report it.
    fn note(&mut self, event: Event) -> Result<()> {
        let next = check(&self.state, &event)?;
        self.journal.append(event.clone())?;
        self.state = next;
        self.past_point_of_no_return
            .store(self.state.point_of_no_return.is_some(), Ordering::SeqCst);
        self.emit(RunEvent::Journaled { record: event });
        Ok(())
    }

    fn cx(&self) -> Cx {
        Cx::new(
            self.state.run_id.clone(),
            self.state.outputs(),
            self.state.elapsed(),
            Some(self.events.clone()),
        )
    }

    fn error(&self, stop: Stop, message: String) -> anyhow::Error {
        RunError {
            stop,
            message,
            spec_arg: self.inv.spec_arg.clone(),
        }
        .into()
    }

    /// Run every step not yet done, in order, under the plan's failure policy. An interrupt
    /// before the point of no return stops the step in flight (left in doubt, and undone like
    /// every other when the policy says so); after it, interrupts are ignored until the run
    /// is safe.
    pub async fn run(&mut self, mut interrupts: Option<&mut Interrupts>) -> Result<Outcome> {
        if self.state.phase != Phase::Forward {
            return Err(self.error(
                Stop::Refused,
                format!(
                    "run {} is rolling back; finish it with `migrate rollback -f {}`",
                    self.state.run_id, self.inv.spec_arg
                ),
            ));
        }
        let past = self.past_point_of_no_return.clone();
        let events = self.events.clone();
        let halt = {
            let forward = self.forward();
            tokio::pin!(forward);
            loop {
                let signal = async {
                    match interrupts.as_deref_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = &mut forward => break r,
                    Some(name) = signal => {
                        if past.load(Ordering::SeqCst) {
                            let _ = events.send(RunEvent::Notice {
                                message: format!("{name} ignored: past the point of no return, the run goes on until it is safe"),
                            });
                        } else {
                            break Err(Halt::Failed(anyhow!("interrupted by the operator ({name})")));
                        }
                    }
                }
            }
        };
        let cause = match halt {
            Ok(outcome) => return Ok(outcome),
            Err(Halt::Paused(id)) => {
                return Err(self.error(Stop::Paused, format!("paused before step {id} as asked")))
            }
            Err(Halt::Unsafe(why)) => {
                return Err(self.error(Stop::OperatorNeeded(self.next()), why))
            }
            Err(Halt::Failed(cause)) => cause,
        };
        let failed_at = self
            .state
            .steps
            .iter()
            .position(|s| s.status != StepStatus::Succeeded)
            .unwrap_or(0);
        match self.plan.on_failure {
            OnFailure::Abort { keep }
                if self.state.point_of_no_return.is_none() && failed_at >= keep =>
            {
                match self.undo(keep, Outcome::Aborted).await {
                    Ok(()) => Err(self.error(Stop::Aborted, format!("{cause:#}"))),
                    Err(undo) => Err(self.error(
                        Stop::OperatorNeeded(Next::Rollback),
                        format!("{cause:#}; aborting also failed: {undo:#}"),
                    )),
                }
            }
            _ => Err(self.error(Stop::OperatorNeeded(self.next()), format!("{cause:#}"))),
        }
    }

    /// What continues a stopped run: before the point of no return it can also be undone;
    /// after it, only going on finishes it (going back is a switchback, once it is complete).
    fn next(&self) -> Next {
        if self.state.point_of_no_return.is_some() {
            Next::Resume
        } else {
            Next::ResumeOrRollback
        }
    }

    /// The forward pass: every step not yet done, in order.
    async fn forward(&mut self) -> Result<Outcome, Halt> {
        for i in 0..self.plan.steps.len() {
            let id = self.plan.steps[i].id();
            let status = self.state.steps[i].status;
            if status == StepStatus::Succeeded {
                self.emit(RunEvent::StepSkipped { step: id });
                continue;
            }
            if status == StepStatus::Pending && self.pause_before.as_deref() == Some(id.as_str()) {
                return Err(Halt::Paused(id));
            }
            self.step(i, &id, status).await?;
        }
        self.note(Event::RunFinished {
            outcome: Outcome::Completed,
        })
        .map_err(Halt::Failed)?;
        Ok(Outcome::Completed)
    }

    /// One step: probe, then apply, timed and journaled.
    async fn step(&mut self, i: usize, id: &str, status: StepStatus) -> Result<(), Halt> {
        let failed = Halt::Failed;
        let mut cx = self.cx();
        cx.set_in_doubt(status != StepStatus::Pending);
        if status != StepStatus::Pending {
            self.emit(RunEvent::StepProbing { step: id.into() });
        }
        let probe = self.plan.steps[i]
            .probe(&cx)
            .await
            .with_context(|| format!("probe step {id}"))
            .map_err(failed)?;
        match probe {
            Probe::Done(output) => {
                if status == StepStatus::Pending {
                    self.note(Event::StepStarted {
                        step: id.into(),
                        host: String::new(),
                        action: String::new(),
                    })
                    .map_err(failed)?;
                }
                return self
                    .note(Event::StepSucceeded {
                        step: id.into(),
                        output,
                        elapsed_ms: None,
                    })
                    .map_err(failed);
            }
            Probe::Unsafe(reason) => {
                return Err(Halt::Unsafe(format!(
                    "step {id} cannot go on safely: {reason}"
                )));
            }
            Probe::NotDone => {}
        }
        if self.plan.steps[i].kind() == Kind::PointOfNoReturn
            && self.state.point_of_no_return.is_none()
        {
            self.note(Event::PointOfNoReturn { step: id.into() })
                .map_err(failed)?;
        }
        let d = self.plan.steps[i].describe();
        self.note(Event::StepStarted {
            step: id.into(),
            host: d.host,
            action: d.action,
        })
        .map_err(failed)?;
        failpoint::point(id, "before").await;
        let t0 = Instant::now();
        let result = self.plan.steps[i].apply(&cx).await;
        let elapsed_ms = Some(t0.elapsed().as_millis() as u64);
        tracing::debug!(step = %id, ms = elapsed_ms, ok = result.is_ok(), "step applied");
        match result {
            Ok(output) => {
                failpoint::point(id, "after").await;
                self.note(Event::StepSucceeded {
                    step: id.into(),
                    output,
                    elapsed_ms,
                })
                .map_err(failed)
            }
            Err(e) => {
                let error = format!("{e:#}");
                self.note(Event::StepFailed {
                    step: id.into(),
                    error: error.clone(),
                    elapsed_ms,
                })
                .map_err(failed)?;
                Err(failed(anyhow!("step {id} failed: {error}")))
            }
        }
    }

    /// The operator's rollback: undo every step that may have left an effect, latest first.
    /// Refused after the point of no return: from there, going back is a procedure of its own,
    /// never an undo.
    pub async fn rollback(&mut self) -> Result<Outcome> {
        if let Some(p) = &self.state.point_of_no_return {
            return Err(self.error(Stop::Refused, format!(
                "run {} passed the point of no return at step {p}; it cannot be undone step by step (going back is a switchover in the other direction)",
                self.state.run_id
            )));
        }
        let (floor, outcome) = self.state.rollback_floor();
        match self.undo(floor, outcome).await {
            Ok(()) => Ok(outcome),
            Err(e) => Err(self.error(Stop::OperatorNeeded(Next::Rollback), format!("{e:#}"))),
        }
    }

    /// Compensate every step from index `floor` on that may have left an effect, latest first,
    /// then finish the run with `outcome`.
    async fn undo(&mut self, floor: usize, outcome: Outcome) -> Result<()> {
        for i in (floor..self.plan.steps.len()).rev() {
            if !self.state.steps[i].needs_compensation() {
                continue;
            }
            let id = self.plan.steps[i].id();
            let output = self.state.steps[i].output.clone();
            self.note(Event::CompensationStarted { step: id.clone() })?;
            failpoint::point(&id, "compensate").await;
            let cx = self.cx();
            let t0 = Instant::now();
            match self.plan.steps[i].compensate(&cx, output.as_ref()).await {
                Ok(()) => self.note(Event::CompensationFinished {
                    step: id,
                    elapsed_ms: Some(t0.elapsed().as_millis() as u64),
                })?,
                Err(e) => {
                    let error = format!("{e:#}");
                    self.note(Event::CompensationFailed {
                        step: id.clone(),
                        error: error.clone(),
                    })?;
                    return Err(anyhow!("undoing step {id} failed: {error}"));
                }
            }
        }
        self.note(Event::RunFinished { outcome })
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_run_goes_on_in_the_order_its_journal_planned() {
        use super::recorded_order;
        let steps = |ids: &[&str]| -> Vec<PlannedStep> {
            ids.iter()
                .map(|id| PlannedStep {
                    id: id.to_string(),
                    kind: Kind::Reversible,
                })
                .collect()
        };
        let today = steps(&["hold", "promote", "route", "release", "reverse"]);
        let older = steps(&["hold", "promote", "reverse", "route", "release"]);
        assert_eq!(recorded_order(&today, &today, 1), Some(vec![0, 1, 2, 3, 4]));
        assert_eq!(recorded_order(&today, &older, 1), Some(vec![0, 1, 4, 2, 3]));
        // Not the same steps.
        let other = steps(&["hold", "promote", "reverse", "route", "verify"]);
        assert_eq!(recorded_order(&today, &other, 1), None);
        assert_eq!(recorded_order(&today, &older[..4], 1), None);
        // The part a failure does not undo stays where it was.
        let moved = steps(&["promote", "hold", "route", "release", "reverse"]);
        assert_eq!(recorded_order(&today, &moved, 2), None);
        assert!(recorded_order(&today, &moved, 0).is_some());
        // A kind that does not resume the recorded one.
        let mut kinds = today.clone();
        kinds[4].kind = Kind::NothingToUndo;
        assert_eq!(recorded_order(&kinds, &older, 1), None);
    }

    use std::path::Path;
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
        type Output = Value;
        fn id(&self) -> String {
            self.id.into()
        }
        fn describe(&self) -> Description {
            Description::default()
        }
        fn kind(&self) -> Kind {
            self.kind
        }
        async fn probe(&self, _: &Cx) -> Result<Probe<Value>> {
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
                ["fence", "promote", "reverse"]
                    .iter()
                    .filter(|s| cx.find::<Value>(s).unwrap().is_some())
                    .collect::<Vec<_>>()
            ));
            Ok(json!({ "by": self.id }))
        }
        async fn compensate(&self, _: &Cx, out: Option<Value>) -> Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(format!("undo {} {}", self.id, out.is_some()));
            Ok(())
        }
    }

    fn plan(log: &Log, unsafe_last: bool) -> Plan {
        let f = |id, kind, unsafe_probe| Fake {
            id,
            kind,
            log: log.clone(),
            unsafe_probe,
        };
        let mut p = Plan::new("test");
        p.push(f("fence", Kind::Reversible, false));
        p.push(f("promote", Kind::PointOfNoReturn, false));
        p.push(f("reverse", Kind::Reversible, unsafe_last));
        p
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
        let err = r.run(None).await.unwrap_err();
        // Past the point of no return only going on finishes the run: no rollback advice.
        assert_eq!(
            RunError::find(&err).map(|e| e.stop),
            Some(Stop::OperatorNeeded(Next::Resume)),
            "an unsafe probe needs the operator: {err:#}"
        );
        assert!(!err.to_string().contains("migrate rollback"), "{err:#}");
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
        assert_eq!(r.run(None).await.unwrap(), Outcome::Completed);
    }

    /// A run journaled by a version that planned a step this one retired resumes with that
    /// step where its journal has it, and only then; undoing it undoes that step too.
    #[tokio::test]
    async fn a_retired_step_is_put_back_for_a_journal_that_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::default();
        let (tx, _rx) = events::channel();
        let f = |id, kind| Fake {
            id,
            kind,
            log: log.clone(),
            unsafe_probe: false,
        };
        let older = || {
            let mut p = Plan::new("test");
            p.abort_from_here();
            p.push(f("hold", Kind::Reversible));
            p.push(f("fence", Kind::Reversible));
            p.push(f("stop", Kind::Reversible));
            p
        };
        let today = || {
            let mut p = Plan::new("test");
            p.abort_from_here();
            p.push(f("hold", Kind::Reversible));
            p.retire(f("fence", Kind::Reversible));
            p.push(f("stop", Kind::Reversible));
            p
        };
        // Journaled by the older plan, stopped after its fence.
        let mut r = Runner::start(older(), inv(dir.path()), tx.clone()).unwrap();
        r.pause_before(Some("stop".into())).unwrap();
        r.run(None).await.unwrap_err();
        drop(r);
        let mut r = Runner::resume(today(), inv(dir.path()), tx.clone()).unwrap();
        assert_eq!(r.plan.ids(), ["hold", "fence", "stop"]);
        r.rollback().await.unwrap();
        let undone: Vec<String> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("undo"))
            .cloned()
            .collect();
        assert_eq!(undone, ["undo fence true", "undo hold true"]);
        // A journal without it: the retired step stays out.
        let dir = tempfile::tempdir().unwrap();
        let r = Runner::start(today(), inv(dir.path()), tx.clone()).unwrap();
        drop(r);
        let r = Runner::resume(today(), inv(dir.path()), tx).unwrap();
        assert_eq!(r.plan.ids(), ["hold", "stop"]);
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
        r.run(None).await.unwrap();
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
