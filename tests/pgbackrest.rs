//! `[clone] method = "pgbackrest"` on the lab's own repository (Debian's pgbackrest): the
//! standbys are restored from a full backup (the old primary is not read for the bulk copy),
//! fetch the WAL since it from the archive, then stream from their slots.

use std::time::Duration;

use migrate::exit::Exit;
use migrate::lab::workload::{grow_app, Writer};
use migrate::steps::StepId;

use crate::cutover::{all_nodes, writes_survived};
use crate::replication::Chain;
use crate::support::crash::assert_killed;
use crate::support::text;

/// A restore killed midway (with the tool) is resumed with `--delta` by `migrate resume`, the
/// chain streams, and a cutover and rollback under a writer keep every acknowledged commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgbackrest_seeded_chain_resumes_a_killed_restore_and_loses_no_commit() {
    let chain = Chain::new().await;
    grow_app(&chain.ep("old"), 150).await.unwrap();
    chain.lab.lab.seed_pgbackrest().await.unwrap();
    // Seeding rewrote the lab's spec: the chain's shorter gate window again.
    let spec = std::fs::read_to_string(&chain.spec)
        .unwrap()
        .replace("lag_stable_for = \"2s\"", "lag_stable_for = \"300ms\"");
    assert!(spec.contains("method = \"pgbackrest\""), "{spec}");
    std::fs::write(&chain.spec, spec).unwrap();
    let w = Writer::start(
        vec![chain.lab.lab.app_endpoint()],
        4,
        Duration::from_millis(5),
    );
    let sampler = crate::support::PrimarySampler::start(all_nodes(&chain));

    let crash_at = format!("{}:during", StepId::Clone("new".into()));
    assert_killed(&chain.run(&["replicate"], Some(&crash_at)).await, &crash_at);
    let data = chain.lab.lab.data_dir("new");
    assert!(
        data.join("backup.manifest").exists(),
        "the killed restore left pgBackRest's manifest in {}",
        data.display()
    );
    let out = chain.run(&["resume"], None).await;
    crate::support::assert_exit_at(&out, Exit::Done, "resume after the killed restore");
    let said = text(&out.stdout);
    assert!(
        said.contains("resuming the interrupted pgBackRest restore (--delta)"),
        "{said}"
    );
    assert!(
        !data.join("backup.manifest").exists(),
        "the restore finished"
    );
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("archive-get") && auto.contains("primary_slot_name = 'migrate_new'"),
        "WAL since the backup from the repository, the rest through the slot: {auto}"
    );
    chain.assert_chain("seeded from pgBackRest").await;

    let out = chain.run(&["plan"], None).await;
    crate::support::assert_exit_at(&out, Exit::Done, "plan");
    let out = chain
        .run(&["cutover", "--yes", "--force-window"], None)
        .await;
    crate::support::assert_exit_at(&out, Exit::Done, "cutover from a pgBackRest-seeded chain");
    let out = chain.run(&["rollback", "--yes"], None).await;
    crate::support::assert_exit_at(&out, Exit::Done, "rollback");
    writes_survived(&chain, w, sampler, "a pgBackRest-seeded chain").await;
}
