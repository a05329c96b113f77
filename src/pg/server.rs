//! A PostgreSQL server on some host, driven with `pg_ctl` and `pg_controldata` through host
//! control.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::host::{Cmd, Host};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Stopped,
    /// No data directory (or not a PostgreSQL one) there.
    NoCluster,
}

#[derive(Debug, Clone, Copy)]
pub enum StopMode {
    Fast,
    Immediate,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub host: Arc<dyn Host>,
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
}

impl Server {
    pub fn new(
        host: Arc<dyn Host>,
        bin_dir: impl Into<PathBuf>,
        data_dir: impl Into<PathBuf>,
    ) -> Server {
        Server {
            host,
            bin_dir: bin_dir.into(),
            data_dir: data_dir.into(),
        }
    }

    pub fn tool(&self, name: &str) -> String {
        self.bin_dir.join(name).display().to_string()
    }

    fn data(&self) -> String {
        self.data_dir.display().to_string()
    }

    pub async fn state(&self) -> Result<RunState> {
        let out = self
            .host
            .run(&Cmd::new([
                self.tool("pg_ctl"),
                "status".into(),
                "-D".into(),
                self.data(),
            ]))
            .await?;
        Ok(match out.code {
            Some(0) => RunState::Running,
            Some(3) => RunState::Stopped,
            Some(4) => RunState::NoCluster,
            _ => bail!(
                "on {}: pg_ctl status -D {} failed: {}",
                self.host.describe(),
                self.data(),
                out.stderr_tail()
            ),
        })
    }

    /// Start and wait until it accepts connections (`pg_ctl -w`). Server output goes to `log`.
    pub async fn start(&self, log: &Path, timeout: Duration) -> Result<()> {
        let secs = timeout.as_secs().max(5);
        let cmd = Cmd::new([
            self.tool("pg_ctl"),
            "start".into(),
            "-D".into(),
            self.data(),
            "-l".into(),
            log.display().to_string(),
            "-w".into(),
            "-t".into(),
            secs.to_string(),
        ])
        .timeout(timeout + Duration::from_secs(10));
        let out = self.host.run(&cmd).await?;
        if !out.success() {
            let log_tail = self
                .host
                .read_file(log)
                .await
                .map(|b| {
                    let t = String::from_utf8_lossy(&b).into_owned();
                    t.lines()
                        .rev()
                        .take(5)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join(" | ")
                })
                .unwrap_or_default();
            bail!(
                "on {}: the server in {} did not start: {}; server log {}: {}",
                self.host.describe(),
                self.data(),
                out.stderr_tail(),
                log.display(),
                log_tail
            );
        }
        Ok(())
    }

    /// Start without waiting (`pg_ctl start -W`): for callers that wait for a stronger
    /// condition themselves (a standby streaming), sooner than `pg_ctl`'s 100 ms polling.
    pub async fn launch(&self, log: &Path) -> Result<()> {
        let cmd = Cmd::new([
            self.tool("pg_ctl"),
            "start".into(),
            "-D".into(),
            self.data(),
            "-l".into(),
            log.display().to_string(),
            "-W".into(),
        ]);
        let out = self.host.run(&cmd).await?;
        if !out.success() {
            bail!(
                "on {}: pg_ctl start -D {} failed: {}; server log {}",
                self.host.describe(),
                self.data(),
                out.stderr_tail(),
                log.display()
            );
        }
        Ok(())
    }

    /// Stop and wait. Stopping a stopped server is not an error.
    ///
    /// `pg_ctl stop -w` checks every 100 ms, and a fast shutdown of a fenced primary takes a
    /// fraction of that, inside the write pause. So `pg_ctl` only signals (`-W`) and a shell
    /// loop on the server's host waits in 10 ms steps for what `pg_ctl` waits for: the pid
    /// file gone or the postmaster gone.
    pub async fn stop(&self, mode: StopMode, timeout: Duration) -> Result<()> {
        if self.state().await? != RunState::Running {
            return Ok(());
        }
        let m = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let steps = (timeout.as_millis() / 10).max(100).to_string();
        let cmd = Cmd::new([
            "sh".into(),
            "-c".into(),
            STOP_AND_WAIT.into(),
            "migrate-stop".into(),
            self.tool("pg_ctl"),
            self.data(),
            m.into(),
            steps,
        ])
        .timeout(timeout + Duration::from_secs(10));
        let out = self.host.run(&cmd).await?;
        if !out.success() && self.state().await? == RunState::Running {
            bail!(
                "on {}: pg_ctl stop -D {} -m {m} failed: {}",
                self.host.describe(),
                self.data(),
                out.stderr_tail()
            );
        }
        Ok(())
    }
}

/// `sh -c` script: $1 pg_ctl, $2 data directory, $3 mode, $4 how many 10 ms waits at most.
/// A `sleep` without fractions (some busybox builds) falls back to whole seconds.
const STOP_AND_WAIT: &str = r#"pid=$(head -n 1 "$2/postmaster.pid" 2>/dev/null)
"$1" stop -D "$2" -m "$3" -W -s || exit $?
[ -n "$pid" ] || exit 0
i=0
while [ -e "$2/postmaster.pid" ] && kill -0 "$pid" 2>/dev/null; do
  i=$((i + 1))
  if [ "$i" -gt "$4" ]; then echo "the server did not stop in time" >&2; exit 1; fi
  sleep 0.01 2>/dev/null || sleep 1
done"#;

/// Where the PostgreSQL server binaries are on this machine: `PG_BIN`, else
/// `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_local_bin_dir() -> Result<PathBuf> {
    let has_initdb = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let d = PathBuf::from(dir);
        if has_initdb(&d) {
            return Ok(d);
        }
        bail!(
            "PG_BIN={} has no initdb and pg_ctl; point it at the PostgreSQL bin directory",
            d.display()
        );
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&d) {
            return Ok(d);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_initdb(&bin).then_some((v, bin))
        })
        .collect();
    candidates.sort();
    match candidates.pop() {
        Some((_, d)) => Ok(d),
        None => bail!(
            "no PostgreSQL server binaries found; install the server package (e.g. postgresql-15) or set PG_BIN"
        ),
    }
}
