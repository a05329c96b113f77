//! Fault rehearsal: one named fault, injected from outside into the real commands (which run
//! as child processes), at an instant read off their journal. What the tool then did is read
//! back from the same journal, so the report states it rather than assumes it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::engine::journal::{Event, JOURNAL_FILE};
use crate::engine::replay::{load, load_bytes};
use crate::engine::Outcome;
use crate::steps::StepId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The target crashes while `replicate` waits for the chain to catch up.
    KillTargetDuringCatchup,
    /// The target stops as the old primary is fenced (clients held, the stop next): the
    /// proof cannot come, the time box must abort and undo the cutover.
    StopTargetAfterFence,
    /// The tool itself is killed right after the promotion: `resume` must finish the cutover.
    CrashToolAfterPromote,
    /// The traffic API fails when the cutover holds clients (before the point of no return):
    /// abort and undo.
    RouteFailure,
    /// A client sits idle in a transaction through PgBouncer: the hold cannot complete, times
    /// out, clients resume on the old primary and the cutover aborts naming the session.
    IdleInTransactionClient,
    /// The target's postmaster is stopped (SIGSTOP) as the old primary is fenced: it takes
    /// connections and answers nothing. The proof's time box aborts; nothing hangs.
    HangTarget,
    /// The old primary is started again by hand after the proof (the cutover paused before
    /// `stage`, as an operator might): it must not be staged or doubled; the cutover aborts.
    RestartOldAfterProof,
    /// After the promotion the old primary cannot start as a standby: clients are released
    /// to the new primary all the same, the run stops naming the repair, and `resume`
    /// finishes it once repaired.
    OldCannotFollow,
    /// The target dies while the old primary is being staged as its standby (after the
    /// proof, before the promotion): the abort restores the old primary and releases clients.
    KillTargetDuringStage,
    /// The target is promoted by someone else (an HA manager, an operator) while the cutover
    /// waits before its own promotion: the tool must neither promote nor restart the old
    /// primary as a primary; it stops for the operator with one primary. Played last, after
    /// the measured cutover and rollback, because what follows is the operator's call.
    PromoteTargetExternally,
    /// The link between the old and the new datacenter is cut while `replicate` waits for
    /// the chain to catch up (ssh lab): the gate waits, the monitor says why, `status` shows
    /// the WAL the slot retains; restored, the run finishes.
    CutLinkDuringCatchup,
    /// The same link is cut as the old primary is fenced: the target never receives the old
    /// primary's last WAL, the proof's time box aborts and undoes the cutover.
    CutLinkBeforeProof,
    /// The tool loses the old datacenter right after the hold: nothing can be proven, so
    /// nothing is promoted; the run aborts or stops for the operator, and once the link is
    /// back `resume` finishes the undo.
    CutToolFromOldDc,
    /// The link between the datacenters is cut right after the promotion: the old primary
    /// cannot follow; routing and release complete from the tool's side, `reverse` reports,
    /// and once the link is back `resume` completes the run.
    CutLinkAfterPromote,
}

impl Fault {
    pub const ALL: [Fault; 14] = [
        Fault::KillTargetDuringCatchup,
        Fault::StopTargetAfterFence,
        Fault::CrashToolAfterPromote,
        Fault::RouteFailure,
        Fault::IdleInTransactionClient,
        Fault::HangTarget,
        Fault::RestartOldAfterProof,
        Fault::OldCannotFollow,
        Fault::KillTargetDuringStage,
        Fault::PromoteTargetExternally,
        Fault::CutLinkDuringCatchup,
        Fault::CutLinkBeforeProof,
        Fault::CutToolFromOldDc,
        Fault::CutLinkAfterPromote,
    ];

    /// The WAN link a fault cuts (two places of the ssh lab), if it is one of those.
    pub fn cut_link(self) -> Option<(&'static str, &'static str)> {
        match self {
            Fault::CutLinkDuringCatchup
            | Fault::CutLinkBeforeProof
            | Fault::CutLinkAfterPromote => Some(("olddc", "newdc")),
            Fault::CutToolFromOldDc => Some(("bastion", "olddc")),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillTargetDuringCatchup => "kill-target-during-catchup",
            Fault::StopTargetAfterFence => "stop-target-after-fence",
            Fault::CrashToolAfterPromote => "crash-tool-after-promote",
            Fault::RouteFailure => "route-failure",
            Fault::IdleInTransactionClient => "idle-in-transaction-client",
            Fault::HangTarget => "hang-target",
            Fault::RestartOldAfterProof => "restart-old-after-proof",
            Fault::OldCannotFollow => "old-cannot-follow",
            Fault::KillTargetDuringStage => "kill-target-during-stage",
            Fault::PromoteTargetExternally => "promote-target-externally",
            Fault::CutLinkDuringCatchup => "cut-link-during-catchup",
            Fault::CutLinkBeforeProof => "cut-link-before-proof",
            Fault::CutToolFromOldDc => "cut-tool-from-old-dc",
            Fault::CutLinkAfterPromote => "cut-link-after-promote",
        }
    }

    pub fn parse(s: &str) -> Result<Fault, String> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!(
                    "no fault named {s:?}; the faults are: {}",
                    Fault::ALL.map(|f| f.name()).join(", ")
                )
            })
    }

    /// What the tool must do, in the report's words.
    pub fn expected(self) -> &'static str {
        match self {
            Fault::KillTargetDuringCatchup => {
                "replicate keeps waiting at the catch-up gate while the target is down and \
                 finishes once it is back"
            }
            Fault::StopTargetAfterFence => {
                "the proof's time box runs out, the cutover is undone (old primary restarted, \
                 unfenced, clients released) and nothing is promoted"
            }
            Fault::CrashToolAfterPromote => "`migrate resume` finishes the cutover",
            Fault::RouteFailure => {
                "the cutover aborts at the hold, before the point of no return, and is undone \
                 (clients released, old primary keeps taking writes)"
            }
            Fault::IdleInTransactionClient => {
                "the hold times out, clients resume on the old primary, the cutover aborts \
                 naming the idle session; nothing is fenced or promoted"
            }
            Fault::HangTarget => {
                "the proof's time box aborts the cutover within its limit plus a few seconds, \
                 the old primary serves again unfenced, nothing is promoted"
            }
            Fault::RestartOldAfterProof => {
                "the resumed cutover refuses to stage a running old primary and aborts: one \
                 primary (old), unfenced, clients released, nothing promoted"
            }
            Fault::OldCannotFollow => {
                "clients are released to the new primary, the run stops (exit 3) saying there \
                 is no rollback path and naming the repair; after it `resume` completes the run"
            }
            Fault::KillTargetDuringStage => {
                "the stage fails, the cutover is undone (old primary unstaged, restarted, \
                 unfenced, clients released) and nothing is promoted"
            }
            Fault::PromoteTargetExternally => {
                "`resume` refuses to promote a target that is already a primary and stops for \
                 the operator (exit 3); `rollback` refuses to restart the old primary beside \
                 it; at no instant do two nodes take writes"
            }
            Fault::CutLinkDuringCatchup => {
                "replicate keeps waiting at the catch-up gate while the link is cut (the hop \
                 reported down), `status` shows the WAL the old primary's slot retains, and \
                 replicate finishes once the link is restored"
            }
            Fault::CutLinkBeforeProof => {
                "the time box runs out (the stop, whose shutdown waits for the standby to \
                 confirm the last WAL, or the proof), the cutover is undone (old primary \
                 restarted, unfenced, clients released) and nothing is promoted"
            }
            Fault::CutToolFromOldDc => {
                "nothing is promoted: the cutover aborts or stops for the operator naming what \
                 it cannot reach; once the link is back `migrate resume` finishes the undo and \
                 the old primary takes writes again"
            }
            Fault::CutLinkAfterPromote => {
                "clients are released to the new primary, `reverse` reports that the old \
                 primary does not follow, the run stops (exit 3) naming it; once the link is \
                 back `resume` completes the run"
            }
        }
    }
}

/// What one fault did to the rehearsal, and what the tool did about it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FaultReport {
    pub name: String,
    /// What was done, to what, at which instant.
    pub injected: String,
    /// The interrupted command's exit code (None: killed by a signal).
    pub exit_code: Option<i32>,
    /// The run as its journal tells it.
    pub run: RunSummary,
    /// What the rehearsal did next, as an operator would.
    pub recovery: Vec<String>,
    pub expected: String,
    pub as_expected: bool,
    /// Writes while the fault played out: longest gap between acknowledged commits, client
    /// errors.
    pub write_pause_ms: f64,
    pub errors: usize,
}

/// A run's outcome as its journal records it.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct RunSummary {
    pub operation: String,
    pub failed_step: Option<String>,
    pub error: Option<String>,
    /// Steps compensated, in the order they were undone.
    pub undone: Vec<String>,
    pub point_of_no_return: Option<String>,
    /// None while the run is unfinished.
    pub outcome: Option<Outcome>,
}

impl RunSummary {
    /// The current run in `state_dir` (its journal is archived only when the next run starts).
    pub fn read(state_dir: &Path) -> Result<RunSummary> {
        let Some(run) = load(state_dir)? else {
            bail!("no run in {}", state_dir.display());
        };
        let s = run.state;
        let (failed_step, error) = match s.failure() {
            Some((step, error)) => (Some(step.to_string()), Some(error.to_string())),
            None => (None, None),
        };
        Ok(RunSummary {
            operation: s.operation.clone(),
            failed_step,
            error,
            undone: s.undone().into_iter().map(str::to_string).collect(),
            point_of_no_return: s.point_of_no_return.clone(),
            outcome: s.finished(),
        })
    }
}

/// Watches the journal in a state directory for an event of the run a given process works on.
pub struct JournalWatch {
    path: PathBuf,
}

impl JournalWatch {
    pub fn new(state_dir: &Path) -> JournalWatch {
        JournalWatch {
            path: state_dir.join(JOURNAL_FILE),
        }
    }

    /// Whether process `pid` has begun work on the current run and, since then, the journal
    /// holds an event `wanted` accepts.
    pub fn seen(&self, pid: u32, wanted: &dyn Fn(&Event) -> bool) -> bool {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return false;
        };
        load_bytes(&bytes, &self.path).is_some_and(|run| run.since_process(pid).any(wanted))
    }

    /// Poll every few ms until [`Self::seen`], or until `child` exits first (false).
    pub async fn wait(
        &self,
        child: &mut tokio::process::Child,
        limit: Duration,
        wanted: &dyn Fn(&Event) -> bool,
    ) -> Result<bool> {
        let pid = child.id().context("the command has already exited")?;
        let t = Instant::now();
        loop {
            if self.seen(pid, wanted) {
                return Ok(true);
            }
            if child.try_wait()?.is_some() {
                return Ok(false);
            }
            if t.elapsed() > limit {
                bail!(
                    "the instant to inject the fault did not come within {limit:?} ({})",
                    self.path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
}

pub fn step_started(id: StepId) -> impl Fn(&Event) -> bool {
    let id = id.to_string();
    move |e| matches!(e, Event::StepStarted { step, .. } if *step == id)
}

pub fn step_succeeded(id: StepId) -> impl Fn(&Event) -> bool {
    let id = id.to_string();
    move |e| matches!(e, Event::StepSucceeded { step, .. } if *step == id)
}

/// Bring a server down at once, as a crash would: SIGQUIT to the postmaster (an immediate
/// shutdown: connections cut, no checkpoint, crash recovery at the next start). Signalled
/// directly rather than through `pg_ctl` so that it lands within milliseconds. Returns the
/// postmaster's pid.
///
/// Not SIGKILL: a killed postmaster leaves its pid file behind, and where nothing reaps
/// orphans (as in some containers) the zombie keeps that pid alive, so the server could not
/// be started again, unlike after a real crash.
pub async fn crash_server(data_dir: &Path) -> Result<i32> {
    let pid_file = data_dir.join("postmaster.pid");
    let pid = postmaster_pid(data_dir)?;
    kill(Pid::from_raw(pid), Signal::SIGQUIT)
        .with_context(|| format!("signal postmaster {pid}"))?;
    let t = Instant::now();
    while pid_file.exists() {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("postmaster {pid} has not exited 30 s after SIGQUIT");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(pid)
}

fn postmaster_pid(data_dir: &Path) -> Result<i32> {
    let pid_file = data_dir.join("postmaster.pid");
    std::fs::read_to_string(&pid_file)
        .with_context(|| format!("read {} (is the server running?)", pid_file.display()))?
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", pid_file.display()))
}

/// Freeze a server as a hung host would: SIGSTOP to its postmaster, which then takes TCP
/// connections (the kernel's backlog) and answers nothing. Returns the pid for
/// [`resume_server`].
pub fn stop_server(data_dir: &Path) -> Result<i32> {
    let pid = postmaster_pid(data_dir)?;
    kill(Pid::from_raw(pid), Signal::SIGSTOP)
        .with_context(|| format!("SIGSTOP postmaster {pid}"))?;
    Ok(pid)
}

pub fn resume_server(pid: i32) -> Result<()> {
    kill(Pid::from_raw(pid), Signal::SIGCONT).with_context(|| format!("SIGCONT postmaster {pid}"))
}

/// A stand-in for an external traffic switch (a load balancer's API), as an exec route
/// plugin: it keeps the node it points at in `points_at` next to itself, and is down for an
/// action while a file `outage-<action>` exists there. POSIX sh, so a rehearsal needs nothing
/// more than the lab.
pub const TRAFFIC_SWITCH_PLUGIN: &str = r#"#!/bin/sh
# migrate rehearse: stand-in for a traffic switch's API (exec route protocol v1).
dir=$(dirname "$0")
req=$(cat)
action=$(printf '%s' "$req" | sed -n 's/.*"action":"\([a-z]*\)".*/\1/p')
node=$(printf '%s' "$req" | sed -n 's/.*"endpoint":{[^}]*"node":"\([^"]*\)".*/\1/p')
current=$(cat "$dir/points_at" 2>/dev/null)
if [ -e "$dir/outage-$action" ]; then
  echo '{"ok": false, "error": "the traffic switch API is unavailable (rehearsal fault route-failure)"}'
  exit 0
fi
case "$action" in
  current) echo "{\"ok\": true, \"node\": \"$current\"}" ;;
  point) printf '%s\n' "$node" > "$dir/points_at.tmp" && mv "$dir/points_at.tmp" "$dir/points_at" &&
    echo "{\"ok\": true, \"node\": \"$node\"}" ;;
  verify) if [ "$current" = "$node" ]; then echo '{"ok": true}';
    else echo "{\"ok\": false, \"error\": \"points at $current, not $node\"}"; fi ;;
  hold|release) echo '{"ok": true}' ;;
  *) echo "{\"ok\": false, \"error\": \"unknown action $action\"}" ;;
esac
"#;

/// Install the traffic switch in `dir`, pointing at `node`; returns the plugin's path.
pub fn install_traffic_switch(dir: &Path, node: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let plugin = dir.join("migrate-route-traffic-switch");
    std::fs::write(&plugin, TRAFFIC_SWITCH_PLUGIN)?;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(dir.join("points_at"), format!("{node}\n"))?;
    Ok(plugin)
}

/// The spec's lines for that route.
pub fn traffic_switch_route(plugin: &Path) -> String {
    format!(
        "\n[[route]]\nkind = \"exec\"\nname = \"traffic-switch\"\ncommand = [{:?}]\n",
        plugin.display().to_string()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_faults() {
        for f in Fault::ALL {
            assert_eq!(Fault::parse(f.name()), Ok(f));
        }
        let e = Fault::parse("unplug-the-dc").unwrap_err();
        assert!(
            e.contains("route-failure") && e.contains("unplug-the-dc"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod names {
    use super::Fault;

    #[test]
    fn every_fault_is_named_in_the_cli_help_and_parses_back() {
        let help = include_str!("../cli.rs");
        for f in Fault::ALL {
            assert_eq!(Fault::parse(f.name()), Ok(f));
            assert!(
                help.contains(f.name()),
                "{} missing from --fault's help",
                f.name()
            );
        }
    }
}
