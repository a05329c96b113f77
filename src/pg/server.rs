//! A PostgreSQL server on some host, started and stopped through its service manager
//! (`service.rs`) by host control.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};

use super::service::Service;
use crate::host::{Cmd, Host};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Stopped,
    /// No data directory (or not a PostgreSQL one) there.
    NoCluster,
}

pub use super::service::StopMode;

#[derive(Debug, Clone)]
pub struct Server {
    pub host: Arc<dyn Host>,
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub service: Service,
}

impl Server {
    /// A server driven with `pg_ctl -D` (the lab's, and the default of a spec's node).
    pub fn new(
        host: Arc<dyn Host>,
        bin_dir: impl Into<PathBuf>,
        data_dir: impl Into<PathBuf>,
    ) -> Server {
        Server {
            host,
            bin_dir: bin_dir.into(),
            data_dir: data_dir.into(),
            service: Service::PgCtl,
        }
    }

    pub fn managed_by(mut self, service: Service) -> Server {
        self.service = service;
        self
    }

    pub fn tool(&self, name: &str) -> String {
        self.bin_dir.join(name).display().to_string()
    }

    fn data(&self) -> String {
        self.data_dir.display().to_string()
    }

    fn label(&self) -> String {
        format!("{} ({})", self.data(), self.service.describe())
    }

    /// The status command (exit 0 running, 3 stopped, 4 no cluster): for callers that fold
    /// it into one remote call with other work.
    pub fn status_argv(&self) -> Vec<String> {
        self.service
            .status_argv(&self.tool("pg_ctl"), &self.data_dir)
    }

    /// The status, once a postmaster whose control file says `shut down` has exited (waited
    /// for up to `wait`); see [`STATUS_ONCE_DOWN`].
    pub fn status_once_down_argv(&self, wait: Duration) -> Vec<String> {
        let mut argv = vec![
            "sh".to_string(),
            "-c".into(),
            STATUS_ONCE_DOWN.into(),
            "migrate-status".into(),
            self.data(),
            (wait.as_millis() / 10).to_string(),
            self.tool("pg_controldata"),
        ];
        argv.extend(self.status_argv());
        argv
    }

    pub async fn state(&self) -> Result<RunState> {
        let out = self.host.run(&Cmd::new(self.status_argv())).await?;
        Ok(match RunState::from_status(out.code) {
            Some(s) => s,
            // pg_ctlcluster refuses (exit 1) where pg_ctl says 4: the directory is gone.
            None if !self.host.exists(&self.data_dir).await? => RunState::NoCluster,
            None => bail!(
                "on {}: the status of the server in {} failed: {}",
                self.host.describe(),
                self.label(),
                out.stderr_tail()
            ),
        })
    }

    /// Start and wait until it accepts connections. Server output goes to `log` (for
    /// `pg_ctl`; a managed cluster logs where its manager says, which `log` should name).
    pub async fn start(&self, log: &Path, timeout: Duration) -> Result<()> {
        let secs = timeout.as_secs().max(5);
        let argv = self
            .service
            .start_argv(&self.tool("pg_ctl"), &self.data_dir, log, secs);
        let cmd = Cmd::new(argv).timeout(timeout + Duration::from_secs(10));
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
                self.label(),
                out.stderr_tail(),
                log.display(),
                log_tail
            );
        }
        Ok(())
    }

    /// Start without waiting, unless a postmaster already runs on the data directory, in one
    /// round trip to the host: for callers that wait for a stronger condition themselves (a
    /// standby streaming, inside the write pause), sooner than `pg_ctl`'s 100 ms polling.
    pub async fn launch_unless_running(&self, log: &Path) -> Result<()> {
        self.launch_unless_running_with(log, None).await
    }

    /// [`Self::launch_unless_running`], first placing a timeline history file in `pg_wal`
    /// (when it starts the server and the file is not there yet), in the same round trip.
    pub async fn launch_unless_running_with(
        &self,
        log: &Path,
        history: Option<&TimelineHistory>,
    ) -> Result<()> {
        let mut argv = vec![
            "sh".to_string(),
            "-c".into(),
            LAUNCH_UNLESS_RUNNING.into(),
            "migrate-launch".into(),
            self.data(),
            history.map(|h| h.file_name()).unwrap_or_default(),
            history.map(|h| h.text.clone()).unwrap_or_default(),
        ];
        argv.extend(
            self.service
                .launch_argv(&self.tool("pg_ctl"), &self.data_dir, log),
        );
        let out = self.host.run(&Cmd::new(argv)).await?;
        if !out.success() {
            bail!(
                "on {}: starting the server in {} failed: {}; server log {}",
                self.host.describe(),
                self.label(),
                out.stderr_tail(),
                log.display()
            );
        }
        Ok(())
    }

    /// Stop and wait. Stopping a stopped server is not an error.
    ///
    /// `pg_ctl stop -w` checks every 100 ms, and a fast shutdown of a fenced primary takes a
    /// fraction of that, inside the write pause. So the manager only signals and a shell
    /// loop on the server's host waits in 10 ms steps for what `pg_ctl` waits for: the pid
    /// file gone or the postmaster gone. The same call first looks whether a postmaster runs
    /// at all, so a stop costs one round trip to the host.
    pub async fn stop(&self, mode: StopMode, timeout: Duration) -> Result<()> {
        self.stop_then(mode, timeout, None, false).await.map(|_| ())
    }

    /// The switchover's fence, in one round trip inside the pause: stop and wait (the fast
    /// shutdown ends every client session), write the soft fence into the stopped server's
    /// `postgresql.auto.conf` (`default_transaction_read_only = 'on'`, as `ALTER SYSTEM` would:
    /// a start by hand before the staging comes up read-only by default, P4), then read the
    /// control file (`pg_controldata` in the C locale), which the proof needs right after.
    /// `None` when the control file could not be read (the caller reads it itself). The soft
    /// fence is best effort: it is not the guarantee (P1), the stop is.
    ///
    /// It answers once the shutdown checkpoint is written, before the postmaster has exited:
    /// the walsenders' last round trip to their standbys is left, which the proof waits for
    /// anyway by looking at the target (see [`STOP_AND_WAIT`]).
    pub async fn fence_stop_and_read_control(
        &self,
        mode: StopMode,
        timeout: Duration,
    ) -> Result<Option<String>> {
        let out = self
            .stop_then(mode, timeout, Some(self.tool("pg_controldata")), true)
            .await?;
        Ok(out.filter(|t| t.contains("Database cluster state:")))
    }

    async fn stop_then(
        &self,
        mode: StopMode,
        timeout: Duration,
        controldata: Option<String>,
        soft_fence: bool,
    ) -> Result<Option<String>> {
        let steps = (timeout.as_millis() / 10).max(100).to_string();
        let mut argv = vec![
            "sh".to_string(),
            "-c".into(),
            STOP_AND_WAIT.into(),
            "migrate-stop".into(),
            self.data(),
            steps,
            controldata.clone().unwrap_or_default(),
            if soft_fence { "fence" } else { "" }.into(),
        ];
        argv.extend(
            self.service
                .signal_stop_argv(&self.tool("pg_ctl"), &self.data_dir, mode),
        );
        let cmd = Cmd::new(argv).timeout(timeout + Duration::from_secs(10));
        let out = self.host.run(&cmd).await?;
        if !out.success() && self.state().await? == RunState::Running {
            bail!(
                "on {}: stopping the server in {} (-m {}) failed: {}",
                self.host.describe(),
                self.label(),
                mode.word(),
                out.stderr_tail()
            );
        }
        Ok(controldata.and(out.success().then(|| out.stdout_text())))
    }
}

impl RunState {
    /// What a status command's exit code says (`pg_ctl status`: 0, 3, 4); None for anything
    /// else.
    pub fn from_status(code: Option<i32>) -> Option<RunState> {
        match code {
            Some(0) => Some(RunState::Running),
            Some(3) => Some(RunState::Stopped),
            Some(4) => Some(RunState::NoCluster),
            _ => None,
        }
    }
}

/// `sh -c` script: $1 data directory, $2 the name of a timeline history file to place in
/// `pg_wal` and $3 its text (empty: none; an existing one is kept), then the command that
/// starts the server; run only when no postmaster runs there (the same test as
/// STOP_AND_WAIT's). The file is written beside its place and renamed, as the walreceiver
/// itself would write it. Its text comes as an argument, not on stdin: a caller killed while
/// sending stdin would leave a short file, and a server that reads a wrong history for the
/// new timeline never follows it (positions and timelines only: nothing secret in `ps`).
const LAUNCH_UNLESS_RUNNING: &str = r#"data=$1; history=$2; text=$3; shift 3
pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null)
alive() { kill -0 "$1" 2>/dev/null || [ -d "/proc/$1" ]; }
if [ -n "$pid" ] && alive "$pid"; then exit 0; fi
if [ -n "$history" ] && [ -n "$text" ] && [ ! -e "$data/pg_wal/$history" ]; then
  printf '%s' "$text" > "$data/pg_wal/$history.migrate" && mv -f "$data/pg_wal/$history.migrate" "$data/pg_wal/$history" || exit 1
fi
exec "$@""#;

/// A timeline's history file, as the new primary wrote it at its promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    pub timeline: u32,
    pub text: String,
}

impl TimelineHistory {
    /// Pure: a history file's text for `timeline`, if it reads like one: one line per earlier
    /// timeline, `<parent tli> <switch LSN> <reason>`, tab-separated, the last parent being
    /// `timeline - 1` or less. Anything else is not placed in a data directory.
    pub fn parse(timeline: u32, text: &str) -> Option<TimelineHistory> {
        let mut last = 0u32;
        let mut lines = 0;
        for line in text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let mut f = line.split('\t');
            let tli: u32 = f.next()?.trim().parse().ok()?;
            f.next()?.trim().parse::<crate::pg::Lsn>().ok()?;
            if tli <= last || tli >= timeline {
                return None;
            }
            last = tli;
            lines += 1;
        }
        (lines > 0 && text.len() <= 64 * 1024).then(|| TimelineHistory {
            timeline,
            text: text.to_string(),
        })
    }

    /// `00000002.history`.
    pub fn file_name(&self) -> String {
        format!("{:08X}.history", self.timeline)
    }
}

/// `sh -c` script: $1 data directory, $2 how many 10 ms waits at most, $3 pg_controldata to
/// run once stopped (empty: none), $4 `fence` to write the soft fence once stopped (empty:
/// not), then the command that asks the server to stop. No postmaster (no pid file, or its
/// process gone: /proc also answers for another user's process) means nothing to stop. A
/// `sleep` without fractions (some busybox builds) falls back to whole seconds.
///
/// With the soft fence (the switchover's stop) the wait also ends once the control file says
/// `shut down`: the shutdown checkpoint is written, and what is left of the shutdown is the
/// walsenders' wait for their standbys to confirm it, one round trip to the target that the
/// proof's own look at the target covers (a later start cannot begin before the postmaster
/// has exited, and the staging waits for that on the host: [`STATUS_ONCE_DOWN`]).
///
/// The soft fence is written only once the shutdown checkpoint is (no backend is left to
/// run `ALTER SYSTEM`: a running server's file is its own), into a copy made with `cp -p` (the owner and mode stay the server's
/// when this runs as root for a service manager) that replaces the file by a rename; any
/// earlier `default_transaction_read_only` line goes. A failure is said on stderr and is not
/// the stop's.
const STOP_AND_WAIT: &str = r#"data=$1; steps=$2; ctl=$3; fence=$4; shift 4
pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null)
alive() { kill -0 "$1" 2>/dev/null || [ -d "/proc/$1" ]; }
written() { [ -n "$fence" ] && [ -n "$ctl" ] && LC_ALL=C "$ctl" -D "$data" 2>/dev/null | grep -q '^Database cluster state: *shut down$'; }
if [ -n "$pid" ] && alive "$pid"; then
  "$@" || exit $?
  i=0
  while [ -e "$data/postmaster.pid" ] && alive "$pid" && ! written; do
    i=$((i + 1))
    if [ "$i" -gt "$steps" ]; then echo "the server did not stop in time" >&2; exit 1; fi
    sleep 0.01 2>/dev/null || sleep 1
  done
fi
auto="$data/postgresql.auto.conf"
if [ -n "$fence" ] && [ -f "$auto" ]; then
  t="$auto.migrate-fence"
  if cp -p "$auto" "$t" && { grep -v '^[[:space:]]*default_transaction_read_only[[:space:]]*=' "$auto"; echo "default_transaction_read_only = 'on'"; } > "$t" && mv -f "$t" "$auto"; then :
  else rm -f "$t"; echo "the soft fence was not written into $auto" >&2; fi
fi
if [ -n "$ctl" ]; then LC_ALL=C "$ctl" -D "$data"; fi"#;

/// `sh -c` script: $1 data directory, $2 how many 10 ms waits at most, $3 pg_controldata,
/// then the status command, run once the postmaster named by the pid file has exited if its
/// control file says `shut down` (a postmaster that wrote its shutdown checkpoint is on its
/// way out; one that runs on, a server started anew, is not waited for). The staging's look
/// at the old primary after `standby.signal` is durable: see [`STOP_AND_WAIT`].
const STATUS_ONCE_DOWN: &str = r#"data=$1; steps=$2; ctl=$3; shift 3
pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null)
alive() { kill -0 "$1" 2>/dev/null || [ -d "/proc/$1" ]; }
written() { LC_ALL=C "$ctl" -D "$data" 2>/dev/null | grep -q '^Database cluster state: *shut down$'; }
i=0
while [ -n "$pid" ] && [ "$i" -lt "$steps" ] && [ -e "$data/postmaster.pid" ] && alive "$pid" && written; do
  i=$((i + 1)); sleep 0.01 2>/dev/null || sleep 1
done
exec "$@""#;

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

#[cfg(test)]
mod tests {
    use super::TimelineHistory;

    #[test]
    fn a_history_file_is_taken_only_when_it_reads_like_one() {
        let two = "1\t0/A100AC8\tno recovery target specified\n";
        let h = TimelineHistory::parse(2, two).unwrap();
        assert_eq!(h.file_name(), "00000002.history");
        assert_eq!(h.text, two);
        let three = "1\t0/A100AC8\tno recovery target specified\n\n2\t0/B011208\tno recovery target specified\n";
        assert_eq!(
            TimelineHistory::parse(3, three).unwrap().file_name(),
            "00000003.history"
        );
        for bad in [
            "",
            "1\tnot-an-lsn\treason\n",
            "2\t0/A100AC8\treason\n", // a parent not before the timeline itself
            "1\t0/A\tr\n1\t0/B\tr\n", // parents not ascending
            "<html>proxy error</html>\n", // anything else
        ] {
            assert_eq!(TimelineHistory::parse(2, bad), None, "{bad:?}");
        }
    }
}
