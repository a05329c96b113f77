//! The test harness: labs in temporary directories that are always torn down, the real
//! binary, and an sshd on a loopback port.

pub mod crash;
pub mod patroni;
pub mod sshd;
pub mod traffic;

use migrate::exit::Exit;
use std::path::{Path, PathBuf};
use std::process::Output;

use migrate::lab::ports::PortBlock;
use migrate::lab::{Lab, PORT_SPAN};

/// A lab in its own temporary directory on its own ports; stopped on drop, even when the test
/// panics.
pub struct TestLab {
    pub lab: Lab,
    _ports: PortBlock,
    _dir: tempfile::TempDir,
}

impl TestLab {
    pub async fn up() -> TestLab {
        TestLab::up_in(migrate::lab::Layout::Plain).await
    }

    pub async fn up_in(layout: migrate::lab::Layout) -> TestLab {
        TestLab::up_with(layout, migrate::lab::Hosts::Local).await
    }

    pub async fn up_with(layout: migrate::lab::Layout, hosts: migrate::lab::Hosts) -> TestLab {
        let dir = tempfile::Builder::new()
            .prefix("migrate-lab-")
            .tempdir()
            .expect("temp dir");
        let ports = PortBlock::reserve(PORT_SPAN).expect("free ports");
        let lab = Lab::new(dir.path(), ports.base, layout, hosts).expect("lab");
        let guard = TestLab {
            lab,
            _ports: ports,
            _dir: dir,
        };
        guard.lab.up().await.expect("lab up");
        guard
    }
}

impl Drop for TestLab {
    // The harness reports a failed teardown on stderr without failing the test.
    #[allow(clippy::print_stderr)]
    fn drop(&mut self) {
        let lab = self.lab.clone();
        // Drop may run inside a runtime: stop the lab from a thread with a runtime of its own.
        let stopped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(lab.down())?;
            lab.unregister()
        })
        .join();
        if let Ok(Err(e)) = stopped {
            eprintln!("warning: lab teardown: {e:#}");
        }
    }
}

pub fn migrate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_migrate"))
}

/// Run the real binary; no terminal, no inherited spec.
pub fn migrate(args: &[&str]) -> Output {
    std::process::Command::new(migrate_bin())
        .args(args)
        .env_remove("MIGRATE_SPEC")
        .output()
        .expect("run migrate")
}

/// The same with extra environment.
pub fn migrate_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(migrate_bin())
        .args(args)
        .env_remove("MIGRATE_SPEC")
        .envs(env.iter().copied())
        .output()
        .expect("run migrate")
}

/// The binary ended with `want`; otherwise fail showing everything it printed.
#[track_caller]
pub fn assert_exit(out: &Output, want: Exit) {
    assert_exit_at(out, want, "");
}

/// The same, saying what was run (a crash point, a step).
#[track_caller]
pub fn assert_exit_at(out: &Output, want: Exit, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(i32::from(want.code())),
        "{what}: expected {want:?}; {}",
        output_text(out)
    );
}

/// stdout then stderr of a finished command.
pub fn output_text(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Is a process with this pid alive (and not a zombie)?
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Samples every node's `pg_is_in_recovery()` every 50 ms until stopped: the most nodes seen
/// answering as writable primaries in one sample, and which. A test asserts it never exceeds
/// one.
pub struct PrimarySampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl PrimarySampler {
    pub fn start(nodes: Vec<migrate::pg::Endpoint>) -> PrimarySampler {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut worst = (0, Vec::new());
            while !flag.load(Ordering::SeqCst) {
                // Every node asked at the same moment (one after the other, the old primary's
                // last answer before its stop and the new one's first after its promotion
                // could fall into one sample).
                let answers = futures_util::future::join_all(nodes.iter().map(|ep| async move {
                    let answer = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                        let c = migrate::pg::connect(ep).await?;
                        migrate::pg::sql::in_recovery(&c).await
                    })
                    .await;
                    (ep.name.clone(), matches!(answer, Ok(Ok(false))))
                }))
                .await;
                let writable: Vec<String> = answers
                    .into_iter()
                    .filter(|(_, w)| *w)
                    .map(|(name, _)| name)
                    .collect();
                if writable.len() > worst.0 {
                    worst = (writable.len(), writable);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            worst
        });
        PrimarySampler { stop, task }
    }

    /// Stop sampling; fail if two nodes ever answered as writable primaries at once.
    pub async fn assert_never_two(self, ctx: &str) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (most, which) = self.task.await.expect("sampler");
        assert!(
            most <= 1,
            "{ctx}: two writable primaries at once: {which:?}"
        );
    }
}
