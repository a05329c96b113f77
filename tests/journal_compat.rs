//! A journal written by an earlier version (fixtures/journal/v1-cutover, format 1, before step
//! outputs were typed and before a cutover was one run with its chain) is read, its outputs
//! decode into today's types, and the open run is resumed to its end by today's runner.

use std::path::{Path, PathBuf};

use migrate::engine::replay::{load, load_file, StepStatus};
use migrate::engine::step::Cx;
use migrate::engine::{events, Invocation, Outcome, Runner};
use migrate::plans::{self, cutover};
use migrate::steps::chain::{CloneOut, Mode, NodeOut};
use migrate::steps::switchover::certificate::CertificateOut;
use migrate::steps::switchover::reverse::{ReverseOut, TimelineOut};
use migrate::steps::switchover::stage::StageOut;
use migrate::steps::switchover::stop::StopOut;
use migrate::steps::switchover::window::WindowOut;
use migrate::steps::switchover::{
    CertificateDoc, FenceOut, HoldOut, PromoteOut, ProofOut, ReleaseOut, RouteOut,
};
use migrate::steps::StepId;
use serde::de::DeserializeOwned;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/journal/v1-cutover")
        .join(name)
}

fn decodes<T: DeserializeOwned>(cx: &Cx, id: &StepId) {
    if let Err(e) = cx.get::<T>(id) {
        panic!("{id}: {e:#}");
    }
}

#[test]
fn every_output_of_a_format_1_journal_decodes_into_its_type() {
    let run = load_file(&fixture("journal-finished.jsonl")).unwrap().state;
    assert_eq!(run.finished(), Some(Outcome::Completed));
    let cx = Cx::new(run.run_id.clone(), run.outputs(), run.elapsed(), None);
    decodes::<WindowOut>(&cx, &StepId::Window);
    decodes::<migrate::replication::lag::ChainSample>(&cx, &StepId::Gate);
    decodes::<HoldOut>(&cx, &StepId::Hold);
    decodes::<FenceOut>(&cx, &StepId::Fence);
    decodes::<StopOut>(&cx, &StepId::Stop);
    decodes::<ProofOut>(&cx, &StepId::Proof);
    decodes::<StageOut>(&cx, &StepId::Stage);
    decodes::<PromoteOut>(&cx, &StepId::Promote);
    decodes::<ReverseOut>(&cx, &StepId::Reverse);
    decodes::<RouteOut>(&cx, &StepId::Route);
    decodes::<ReleaseOut>(&cx, &StepId::Release);
    decodes::<TimelineOut>(&cx, &StepId::Followers);
    decodes::<CertificateOut>(&cx, &StepId::Certificate);
    // The release's share of the pause was `ms` in format 1.
    assert!(
        cx.get::<ReleaseOut>(&StepId::Release)
            .unwrap()
            .until_released_ms
            > 0
    );

    let replicate = load_file(&fixture("replicate-journal.jsonl"))
        .unwrap()
        .state;
    let cx = Cx::new(
        replicate.run_id.clone(),
        replicate.outputs(),
        Default::default(),
        None,
    );
    for node in ["new", "new_replica", "dr"] {
        assert_eq!(
            cx.get::<Mode>(&StepId::Prepare(node.into())).unwrap(),
            Mode::Clone { existed: true },
            "{node}"
        );
        decodes::<NodeOut>(&cx, &StepId::Slot(node.into()));
        assert!(matches!(
            cx.get::<CloneOut>(&StepId::Clone(node.into())).unwrap(),
            CloneOut::Cloned(m) if m.node == node
        ));
        decodes::<NodeOut>(&cx, &StepId::Start(node.into()));
    }
}

/// The fixture's spec without the checks of this machine (its passfile was on the lab that
/// wrote the journals).
fn pure_spec(path: &std::path::Path) -> migrate::spec::Spec {
    migrate::spec::parse(path, &std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_certificate_is_rebuilt_typed_from_a_format_1_journal() {
    let spec = std::sync::Arc::new(pure_spec(&fixture("spec.toml")));
    let run = load_file(&fixture("journal-finished.jsonl")).unwrap().state;
    let cx = Cx::new(run.run_id.clone(), run.outputs(), run.elapsed(), None);
    let d = cutover::direction(&spec, cutover::CUTOVER).unwrap();
    let cert = CertificateDoc::from_run(&cx, &d, cutover::CUTOVER).unwrap();
    assert_eq!((cert.old_timeline, cert.new_timeline), (1, 2));
    assert!(
        cert.rollback_path,
        "format 1 had no reverse problem to record"
    );
    // Format 1 recorded the pause in the certificate step's output: the same figure.
    let out: CertificateOut = cx.get(&StepId::Certificate).unwrap();
    assert_eq!(cert.write_pause_ms, out.write_pause_ms);
    // Steps timed by themselves in format 1 have no runner timing; the release's share is
    // its own measurement and survives.
    assert!(cert.phases_ms[&StepId::Release].is_some());
    assert_eq!(cert.phases_ms[&StepId::Hold], None);
}

#[tokio::test]
async fn an_open_format_1_cutover_journal_is_resumed_to_its_end() {
    let spec_path = fixture("spec.toml");
    let spec = std::sync::Arc::new(pure_spec(&spec_path));
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).unwrap();
    std::fs::copy(fixture("journal.jsonl"), state_dir.join("journal.jsonl")).unwrap();
    let inv = Invocation {
        state_dir: state_dir.clone(),
        spec_hash: migrate::commands::run::spec_hash(&spec_path).unwrap(),
        spec_arg: spec_path.display().to_string(),
        command: "migrate resume (journal_compat test)".into(),
    };
    // Today's cutover plan starts with the chain; the format-1 run did not hold it, and the
    // runner fits the plan to the recorded steps.
    let plan = plans::build(cutover::CUTOVER, &spec).unwrap();
    let ids = plan.ids();
    assert_eq!(ids[0], StepId::Prepare("new".into()).to_string());
    let tail: Vec<String> = StepId::SWITCHOVER.iter().map(|s| s.to_string()).collect();
    assert_eq!(ids[ids.len() - tail.len()..], tail[..]);
    let (tx, _rx) = events::channel();
    let mut runner = Runner::resume(plan, inv, tx).unwrap();
    assert_eq!(runner.run(None).await.unwrap(), Outcome::Completed);
    let run = load(&state_dir).unwrap().unwrap().state;
    assert_eq!(run.finished(), Some(Outcome::Completed));
    assert!(run.steps.iter().all(|s| s.status == StepStatus::Succeeded));
    assert_eq!(run.point_of_no_return.as_deref(), Some("promote"));
}
