use chrono::Utc;
use rand::Rng;
use serde_json::json;

use super::*;
use crate::engine::journal::{Event as E, FORMAT_VERSION};

fn plan() -> Vec<PlannedStep> {
    [
        ("look", Kind::ReadOnly),
        ("a", Kind::Reversible),
        ("b", Kind::Reversible),
        ("promote", Kind::PointOfNoReturn),
        ("c", Kind::Reversible),
    ]
    .iter()
    .map(|(id, kind)| PlannedStep {
        id: id.to_string(),
        kind: *kind,
    })
    .collect()
}

fn header() -> E {
    E::Header {
        format: FORMAT_VERSION,
        run_id: "r1".into(),
        operation: "test".into(),
        spec_hash: "h".into(),
        tool_version: "0".into(),
        steps: plan(),
        keep: 0,
    }
}

fn records(events: Vec<E>) -> Vec<Record> {
    std::iter::once(header())
        .chain(events)
        .enumerate()
        .map(|(i, event)| Record {
            seq: i as u64,
            ts: Utc::now(),
            event,
        })
        .collect()
}

fn start(s: &str) -> E {
    E::StepStarted {
        step: s.into(),
        host: String::new(),
        action: String::new(),
    }
}
fn ok(s: &str) -> E {
    E::StepSucceeded {
        step: s.into(),
        output: json!({ "step": s }),
        elapsed_ms: Some(1),
    }
}
fn fail(s: &str) -> E {
    E::StepFailed {
        step: s.into(),
        error: "boom".into(),
        elapsed_ms: None,
    }
}
fn comp(s: &str) -> E {
    E::CompensationStarted { step: s.into() }
}
fn comp_ok(s: &str) -> E {
    E::CompensationFinished {
        step: s.into(),
        elapsed_ms: None,
    }
}
fn done(o: Outcome) -> E {
    E::RunFinished { outcome: o }
}
fn ponr() -> E {
    E::PointOfNoReturn {
        step: "promote".into(),
    }
}
fn resumed() -> E {
    E::RunStarted {
        pid: 2,
        command: "resume".into(),
    }
}

fn forward_to_promote() -> Vec<E> {
    vec![
        start("look"),
        ok("look"),
        start("a"),
        ok("a"),
        start("b"),
        ok("b"),
    ]
}

#[test]
fn a_complete_run() {
    let mut ev = forward_to_promote();
    ev.extend([
        ponr(),
        start("promote"),
        ok("promote"),
        start("c"),
        ok("c"),
        done(Outcome::Completed),
    ]);
    let s = replay(&records(ev)).unwrap();
    assert_eq!(s.finished(), Some(Outcome::Completed));
    assert_eq!(s.point_of_no_return.as_deref(), Some("promote"));
    assert_eq!(s.outputs()["b"], json!({"step": "b"}));
}

#[test]
fn a_crash_leaves_the_step_in_doubt_and_resume_restarts_it() {
    let s = replay(&records(vec![start("look"), ok("look"), start("a")])).unwrap();
    assert_eq!(s.step("a").unwrap().status, StepStatus::InDoubt);
    let s = replay(&records(vec![
        start("look"),
        ok("look"),
        start("a"),
        resumed(),
        start("a"),
        ok("a"),
    ]))
    .unwrap();
    assert_eq!(s.step("a").unwrap().status, StepStatus::Succeeded);
    assert_eq!(s.step("a").unwrap().attempts, 2);
    // Probe found it done: success recorded without a second start.
    let s = replay(&records(vec![
        start("look"),
        ok("look"),
        start("a"),
        resumed(),
        ok("a"),
    ]))
    .unwrap();
    assert_eq!(s.step("a").unwrap().attempts, 1);
}

#[test]
fn a_failed_step_can_be_retried() {
    let s = replay(&records(vec![
        start("look"),
        ok("look"),
        start("a"),
        fail("a"),
        resumed(),
        start("a"),
        ok("a"),
    ]))
    .unwrap();
    assert_eq!(s.step("a").unwrap().status, StepStatus::Succeeded);
    assert_eq!(s.step("a").unwrap().error, None);
}

#[test]
fn rollback_compensates_in_reverse_and_skips_read_only_steps() {
    let mut ev = forward_to_promote();
    ev.extend([
        comp("b"),
        comp_ok("b"),
        comp("a"),
        comp_ok("a"),
        done(Outcome::RolledBack),
    ]);
    let s = replay(&records(ev)).unwrap();
    assert_eq!(s.finished(), Some(Outcome::RolledBack));
    // In-doubt and failed steps are compensated too (they may have done part of their work).
    let ev = vec![
        start("look"),
        ok("look"),
        start("a"),
        ok("a"),
        start("b"),
        comp("b"),
        comp_ok("b"),
        comp("a"),
        comp_ok("a"),
        done(Outcome::RolledBack),
    ];
    assert!(replay(&records(ev)).is_ok());
    let ev = vec![
        start("look"),
        ok("look"),
        start("a"),
        fail("a"),
        comp("a"),
        E::CompensationFailed {
            step: "a".into(),
            error: "x".into(),
        },
        resumed(),
        comp("a"),
        comp_ok("a"),
        done(Outcome::RolledBack),
    ];
    assert!(replay(&records(ev)).is_ok());
}

fn illegal(events: Vec<E>, why: &str) {
    let err = replay(&records(events)).unwrap_err().to_string();
    assert!(err.contains(why), "expected {why:?} in: {err}");
    assert!(err.contains("journal record"), "names the record: {err}");
}

#[test]
fn illegal_sequences_are_refused_naming_the_record() {
    illegal(vec![header()], "a second header");
    illegal(vec![start("zzz")], "not in the run's plan");
    illegal(vec![start("a")], "before step \"look\" succeeded");
    illegal(vec![ok("look")], "succeeded while Pending");
    illegal(
        vec![start("look"), ok("look"), ok("look")],
        "succeeded while Succeeded",
    );
    illegal(vec![start("look"), fail("a")], "failed while Pending");
    let mut ev = forward_to_promote();
    ev.push(start("promote"));
    illegal(ev, "without recording the point of no return");
    let mut ev = forward_to_promote();
    ev.extend([ponr(), start("promote"), comp("promote")]);
    illegal(ev, "after the point of no return");
    let mut ev = forward_to_promote();
    ev.push(comp("a"));
    illegal(ev, "before the later step \"b\"");
    illegal(
        vec![start("look"), ok("look"), comp("look")],
        "compensation of step \"look\"",
    );
    illegal(
        vec![start("look"), ok("look"), done(Outcome::Completed)],
        "completed while step \"a\" is Pending",
    );
    illegal(
        vec![
            start("look"),
            ok("look"),
            start("a"),
            ok("a"),
            done(Outcome::RolledBack),
        ],
        "rolled back while step \"a\"",
    );
    illegal(
        vec![
            start("look"),
            ok("look"),
            start("a"),
            ok("a"),
            comp("a"),
            start("a"),
        ],
        "started while rolling back",
    );
    illegal(
        vec![
            start("look"),
            ok("look"),
            start("a"),
            ok("a"),
            comp("a"),
            comp_ok("a"),
            done(Outcome::RolledBack),
            resumed(),
        ],
        "already finished",
    );
    illegal(vec![ponr()], "before step \"look\" succeeded");
    illegal(vec![comp_ok("a")], "ended while Pending");
    let first_not_header = vec![Record {
        seq: 0,
        ts: Utc::now(),
        event: start("a"),
    }];
    assert!(replay(&first_not_header)
        .unwrap_err()
        .to_string()
        .contains("not the header"));
}

/// A model of the runner: random crashes (a new process resumes), failures, retries and
/// rollbacks. Every history it produces must replay.
#[test]
fn every_history_the_runner_can_write_replays() {
    let mut rng = rand::rng();
    let plan = plan();
    for _ in 0..500 {
        let mut ev = Vec::new();
        let mut i = 0;
        let mut rolled_back = false;
        while i < plan.len() {
            let step = &plan[i];
            if step.kind == Kind::PointOfNoReturn && !ev.contains(&ponr()) {
                ev.push(ponr());
            }
            ev.push(start(&step.id));
            match rng.random_range(0..10) {
                0 => ev.push(resumed()), // crashed in doubt; the retry starts it again
                1 if step.kind == Kind::PointOfNoReturn => ev.push(resumed()),
                1 => {
                    ev.push(fail(&step.id));
                    if rng.random_bool(0.5) && !ev.contains(&ponr()) {
                        // Operator rolls back.
                        for s in plan[..=i].iter().rev().filter(|s| s.kind != Kind::ReadOnly) {
                            ev.push(comp(&s.id));
                            if rng.random_bool(0.2) {
                                ev.push(resumed());
                                ev.push(comp(&s.id));
                            }
                            ev.push(comp_ok(&s.id));
                        }
                        rolled_back = true;
                        break;
                    }
                }
                2 => {
                    ev.push(resumed());
                    ev.push(ok(&step.id)); // probe found it done
                    i += 1;
                }
                _ => {
                    ev.push(ok(&step.id));
                    i += 1;
                }
            }
        }
        ev.push(done(if rolled_back {
            Outcome::RolledBack
        } else {
            Outcome::Completed
        }));
        if let Err(e) = replay(&records(ev.clone())) {
            panic!("legal history refused: {e}\n{ev:#?}");
        }
    }
}

#[test]
fn an_abort_keeps_the_kept_steps_and_undoes_the_rest() {
    let mut recs = records(vec![
        start("look"),
        ok("look"),
        start("a"),
        ok("a"),
        start("b"),
        fail("b"),
        comp("b"),
        comp_ok("b"),
        done(Outcome::Aborted),
    ]);
    // Without kept steps, step a is still to be undone: an abort cannot be recorded.
    let err = replay(&recs).unwrap_err().to_string();
    assert!(err.contains("aborted while step \"a\""), "{err}");
    if let E::Header { keep, .. } = &mut recs[0].event {
        *keep = 2;
    }
    let s = replay(&recs).unwrap();
    assert_eq!(s.finished(), Some(Outcome::Aborted));
    assert_eq!(s.step("a").unwrap().status, StepStatus::Succeeded);
    assert_eq!(s.undone(), vec!["b"]);
    assert_eq!(s.failure(), Some(("b", "boom")));
}

/// An abort keeps the first `keep` steps; when its undo stopped halfway, the operator's
/// `rollback` finishes that abort and keeps them too. A rollback asked for afresh, or one
/// that already reached the kept steps, undoes everything.
#[test]
fn a_rollback_that_finishes_an_abort_keeps_what_the_abort_keeps() {
    let keeping = |events: Vec<E>| {
        let mut recs = records(events);
        if let E::Header { keep, .. } = &mut recs[0].event {
            *keep = 2;
        }
        replay(&recs).unwrap()
    };
    // look, a kept; b failed; its undo failed: the abort stopped for the operator.
    let stopped_abort = vec![
        start("look"),
        ok("look"),
        start("a"),
        ok("a"),
        start("b"),
        fail("b"),
        comp("b"),
        E::CompensationFailed {
            step: "b".into(),
            error: "unreachable".into(),
        },
    ];
    assert_eq!(
        keeping(stopped_abort.clone()).rollback_floor(),
        (2, Outcome::Aborted)
    );
    // A run stopped in its forward pass (nothing undone yet): a rollback undoes all.
    assert_eq!(
        keeping(forward_to_promote()).rollback_floor(),
        (0, Outcome::RolledBack)
    );
    // Without kept steps there is nothing to spare.
    assert_eq!(
        replay(&records(stopped_abort)).unwrap().rollback_floor(),
        (0, Outcome::RolledBack)
    );
}
