//! `stage`: before promoting, make the stopped primary a standby of the new one
//! (standby.signal, primary_conninfo, slot), so that no restart can ever bring it up as a
//! second primary.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::guard::{self, IfSilent, Writable};
use super::memo::Memo;
use super::Direction;
use crate::engine::{Cx, Description, Kind, Step};
use crate::host::{Cmd, FileWrite};
use crate::pg::server::{RunState, StopMode};
use crate::pg::{connect, session, sql};
use crate::steps::id::StepId;
use crate::steps::member::{Member, PASSFILE};
use tokio::task::JoinHandle;

pub struct Stage(pub Direction);

/// How long the undo lets the old primary, started as a standby, take to stop.
const STANDBY_STOP: Duration = Duration::from_secs(60);

/// How long the undo tries to drop the staged slot on the target.
const SLOT_DROP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageOut {
    /// The slot the old primary will stream from.
    pub slot: String,
    /// The node that holds it (the new primary).
    pub on: String,
}

/// What stage reads on the old primary's host, in one remote call: whether the server runs,
/// whether an earlier attempt left the backup, and postgresql.auto.conf.
#[derive(Debug, PartialEq)]
struct Seen {
    state: Option<RunState>,
    /// Its postmaster still runs but has written its shutdown checkpoint (the control file
    /// says `shut down`): it is on its way out, waiting for its walsenders' last confirmation,
    /// and no server can start there before it has exited.
    stopping: bool,
    backup: bool,
    /// None: the file exists and cannot be read.
    auto: Option<Vec<u8>>,
}

/// `sh -c` script: $1 postgresql.auto.conf, $2 the backup, $3 the data directory, $4 how many
/// 10 ms steps to wait for a running postmaster (its pid file's) to exit or to have written
/// its shutdown checkpoint first, $5 pg_controldata, then the status command. Prints
/// `state=<code>`, `stopping=0|1` (still running, its control file saying `shut down`),
/// `backup=0|1`, `auto=absent|unreadable|<base64 lines follow>`.
const INSPECT: &str = r#"auto=$1; backup=$2; data=$3; steps=$4; ctl=$5; shift 5
pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null)
alive() { kill -0 "$1" 2>/dev/null || [ -d "/proc/$1" ]; }
written() { LC_ALL=C "$ctl" -D "$data" 2>/dev/null | grep -q '^Database cluster state: *shut down$'; }
i=0
while [ -n "$pid" ] && [ "$i" -lt "$steps" ] && [ -e "$data/postmaster.pid" ] && alive "$pid" && ! written; do
  i=$((i + 1)); sleep 0.01 2>/dev/null || sleep 1
done
"$@" >/dev/null 2>&1; echo "state=$?"
if [ -n "$pid" ] && alive "$pid" && written; then echo stopping=1; else echo stopping=0; fi
if [ -e "$backup" ]; then echo backup=1; else echo backup=0; fi
if [ ! -e "$auto" ]; then echo auto=absent
elif [ ! -r "$auto" ]; then echo auto=unreadable
else echo auto=; base64 < "$auto" || echo unreadable; fi"#;

/// Pure: whether what the inspection saw lets the staging go on: the server stopped (or no
/// cluster at all), or its postmaster on its way out with the shutdown checkpoint written
/// (nothing can start there before it exits; the status after the write waits for that).
/// Whether it stays down is read again after the write, in the write's own call.
fn down_for_staging(seen: &Seen) -> bool {
    match seen.state {
        Some(RunState::Stopped) | Some(RunState::NoCluster) => true,
        Some(RunState::Running) => seen.stopping,
        None => false,
    }
}

/// Read INSPECT's output (a pure function, unit-tested).
fn parse_seen(text: &str) -> Option<Seen> {
    use base64::Engine;
    let mut lines = text.lines();
    let state = RunState::from_status(lines.next()?.strip_prefix("state=")?.parse().ok());
    let stopping = lines.next()?.strip_prefix("stopping=")? == "1";
    let backup = lines.next()? == "backup=1";
    let auto = match lines.next()?.strip_prefix("auto=")? {
        "absent" => Some(Vec::new()),
        "unreadable" => None,
        "" => {
            let rest: Vec<&str> = lines.collect();
            if rest.last() == Some(&"unreadable") {
                None
            } else {
                Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(rest.concat())
                        .ok()?,
                )
            }
        }
        _ => return None,
    };
    Some(Seen {
        state,
        stopping,
        backup,
        auto,
    })
}

/// One round trip to the old primary's host (inside the write pause every one counts), taken
/// once its postmaster has exited (waited for up to `wait`).
async fn inspect(m: &Member, backup: &Path, wait: Duration) -> Result<Seen> {
    let auto = m.node.data_dir.join("postgresql.auto.conf");
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        INSPECT.into(),
        "migrate-stage".into(),
        auto.display().to_string(),
        backup.display().to_string(),
        m.node.data_dir.display().to_string(),
        (wait.as_millis() / 10).to_string(),
        m.server()?.tool("pg_controldata"),
    ];
    argv.extend(m.server()?.status_argv());
    let out = m.host.run(&Cmd::new(argv)).await?;
    parse_seen(&out.stdout_text()).ok_or_else(|| {
        anyhow!(
            "on {}: cannot inspect {}: {}",
            m.host.describe(),
            m.node.data_dir.display(),
            out.stderr_tail()
        )
    })
}

/// What the status read right after the staging says.
#[derive(Debug, PartialEq, Eq)]
enum Staged {
    /// Down once standby.signal was durable: from then on every start is a standby's.
    Down,
    /// Running, or no status: only the server's own answer tells a primary started by hand
    /// before the files landed from a standby started after.
    AskIt,
}

/// Pure: what the status after the write means.
fn staged_while(after: Option<RunState>) -> Staged {
    match after {
        Some(RunState::Stopped) | Some(RunState::NoCluster) => Staged::Down,
        Some(RunState::Running) | None => Staged::AskIt,
    }
}

/// When this process saw the old primary down with its staging durable, by run and node:
/// the promotion's guard takes it instead of asking the old primary's host again inside the
/// pause (see [`down_since_staged`]).
static STAGED_DOWN: Memo<Instant> = Memo::new();

/// How old stage's sighting may be for the promotion to use it.
const STAGED_FRESH: Duration = Duration::from_secs(2);

/// Whether `stage` in this process saw `d.from` down after its standby.signal was durable,
/// within [`STAGED_FRESH`]: a start since then, by hand or by a service manager, brings it up
/// as the target's standby, never writable. A resumed run has no sighting and asks.
pub(super) fn down_since_staged(cx: &Cx, d: &Direction) -> Option<String> {
    fresh(
        STAGED_DOWN.take(&cx.run_id, d.from.name())?,
        "down with standby.signal in place",
    )
}

/// When this process saw the target in recovery, after the proof, in the round trip that made
/// its slot for the old primary, by run and node (see [`recovering_since_staged`]).
static TARGET_RECOVERING: Memo<Instant> = Memo::new();

/// Whether `stage` in this process saw `d.to` still in recovery within [`STAGED_FRESH`]: the
/// promotion's guard takes it for "not promoted from outside" instead of asking again inside
/// the pause (a promotion from outside since then is taken by `pg_promote` as already done,
/// as it would be in the moment between the guard's own look and the request). A resumed run
/// has no sighting and asks.
pub(super) fn recovering_since_staged(cx: &Cx, d: &Direction) -> Option<String> {
    fresh(
        TARGET_RECOVERING.take(&cx.run_id, d.to.name())?,
        "in recovery",
    )
}

/// A sighting of stage's, described, if it is at most [`STAGED_FRESH`] old.
fn fresh(seen: Instant, what: &str) -> Option<String> {
    (seen.elapsed() <= STAGED_FRESH).then(|| {
        format!(
            "{what}, seen by stage {} ms ago",
            seen.elapsed().as_millis()
        )
    })
}

/// The longest a staging call waits on the old primary's host for its postmaster: within a
/// quick command's limit (a longer one would open an ssh session of its own).
const AHEAD_WAIT_MAX: Duration = crate::host::QUICK.saturating_sub(Duration::from_secs(10));

/// The inspection `stop` started as the old primary began to stop, by run and node.
static INSPECTED: Memo<JoinHandle<Result<Seen>>> = Memo::new();

/// Start stage's inspection of the old primary's host now, as its stop begins: the call waits
/// on that host (up to `wait`) for the postmaster to exit or to have written its shutdown
/// checkpoint (as the stop's own call does), then looks, so its answer comes
/// back with the stop's and its round trip costs the pause nothing. What it saw is as good as
/// a look taken just before the write for what the write needs (the settings, the backup);
/// whether the server still stays down is read again after the write, in its call.
pub(super) fn inspect_ahead(cx: &Cx, d: &Direction, wait: Duration) {
    let wait = wait.min(AHEAD_WAIT_MAX);
    let (m, backup) = (d.from.clone(), Stage::backup(d, cx));
    let looking = tokio::spawn(async move { inspect(&m, &backup, wait).await });
    INSPECTED.remember(&cx.run_id, d.from.name(), looking);
}

/// Stop waiting for the inspection `inspect_ahead` started (the stop failed: no staging will
/// take it). Its remote call ends by its own wait.
pub(super) fn close_ahead(cx: &Cx, d: &Direction) {
    if let Some(looking) = INSPECTED.take(&cx.run_id, d.from.name()) {
        looking.abort();
    }
}

impl Stage {
    /// What the inspection started ahead saw when it saw the server down, else (none, it
    /// failed, or its wait ran out before a slow shutdown ended) a look now: only a look taken
    /// now may call the old primary running again.
    async fn inspect(&self, cx: &Cx) -> Result<Seen> {
        if let Some(looking) = INSPECTED.take(&cx.run_id, self.0.from.name()) {
            if let Ok(Ok(seen)) = looking.await {
                if down_for_staging(&seen) {
                    return Ok(seen);
                }
            }
        }
        inspect(&self.0.from, &Self::backup(&self.0, cx), Duration::ZERO).await
    }

    fn backup(d: &Direction, cx: &Cx) -> PathBuf {
        d.from
            .node
            .data_dir
            .join(format!("postgresql.auto.conf.migrate-{}", cx.run_id))
    }
}

#[async_trait]
impl Step for Stage {
    type Output = StageOut;
    fn id(&self) -> String {
        StepId::Stage.to_string()
    }
    fn describe(&self) -> Description {
        let m = self.0.demoted();
        Description {
            host: format!("{} and {}", self.0.from.host_label(), self.0.to.name()),
            action: format!(
                "on {to}: pg_create_physical_replication_slot('{slot}', true); on {from}: standby.signal, and in postgresql.auto.conf primary_conninfo = '{ci}', primary_slot_name = '{slot}', without the soft fence; each route that holds clients: its file repointed at {to}, not loaded (PgBouncer: pgbouncer.ini, RELOADed beside the promotion)",
                to = self.0.to.name(),
                from = self.0.from.name(),
                slot = m.slot(),
                ci = m.replication_conninfo(Some(&m.node.data_dir.join(PASSFILE).display().to_string())).map(|c| c.to_string()).unwrap_or_default(),
            ),
            proof: "standby.signal exists on the stopped node".into(),
            undo: "stop it if it runs as a standby, restore postgresql.auto.conf, remove standby.signal, write each holding route's file back (PgBouncer: pgbouncer.ini, never loaded), drop the slot".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn apply(&self, cx: &Cx) -> Result<StageOut> {
        self.0.bounded("stage the old primary as a standby", async {
            let m = self.0.demoted();
            let seen = self.inspect(cx).await?;
            // Staged only while stopped: a server started again by hand (or by a service manager)
            // after the proof is a primary taking writes that the target never saw. A status
            // that cannot be read is not "stopped".
            if !down_for_staging(&seen) {
                match guard::writable(&self.0.from).await {
                    // Staged by an earlier attempt and restarted since: it came up as a standby.
                    Writable::No(_) if cx.in_doubt() => {}
                    w => bail!(
                        "{from} runs again after the proof ({w:?}): it was started by someone after it was stopped, so it may hold writes {to} never received; nothing is staged and nothing is promoted",
                        from = self.0.from.name(),
                        to = self.0.to.name()
                    ),
                }
            }
            // A missing file is an empty one; a file that cannot be read is an error: staging
            // over it would lose the old primary's ALTER SYSTEM settings, and the undo would
            // "restore" an empty backup.
            let Some(current) = seen.auto else {
                bail!(
                    "cannot read {} on {} to keep its settings; nothing is staged",
                    m.node.data_dir.join("postgresql.auto.conf").display(),
                    m.host.describe()
                );
            };
            // The backup first (an earlier attempt's is the original: kept), then the standby
            // files, all in one call.
            let mut files = Vec::new();
            if !seen.backup {
                files.push(FileWrite::new(Self::backup(&self.0, cx), current.clone(), 0o600));
            }
            files.extend(m.standby_files(&current, crate::steps::member::Port::Keep)?);
            // The slot on the target and the files on the old primary's host at the same
            // time: two hosts, two round trips that need not wait for each other.
            let slot = async {
                let c = session(&self.0.to.endpoint()).await?;
                // Whether the target is still a standby rides in the same round trip, sent
                // after the slot's statement on the one connection (the promotion's guard
                // then need not ask: see recovering_since_staged).
                let name = m.slot();
                let (made, recovering) = tokio::join!(
                    sql::create_physical_slot(&c, &name),
                    sql::one(&c, "SELECT pg_is_in_recovery()")
                );
                made?;
                if recovering.is_ok_and(|r| r.get::<_, bool>(0)) {
                    TARGET_RECOVERING.remember(&cx.run_id, self.0.to.name(), Instant::now());
                }
                c.keep();
                anyhow::Ok(())
            };
            // The server's status is read by the write's own call, after the files are
            // durable: the look above is as old as the proof, and a server started by hand
            // since then must not be taken for a stopped one. A postmaster that has written
            // its shutdown checkpoint (the stop answers then) is waited for there until it
            // has exited.
            let status = Cmd::new(self.0.from.server()?.status_once_down_argv(AHEAD_WAIT_MAX));
            // And, on a third host, the repointed pgbouncer.ini (written, not loaded): beside
            // the promotion only its RELOAD is then left.
            let (slot, written, ()) = tokio::join!(
                slot,
                m.host.write_files_then(&files, &status),
                super::route::stage_ahead(&self.0)
            );
            slot?;
            let after = RunState::from_status(written?.code);
            match staged_while(after) {
                Staged::Down => {
                    STAGED_DOWN.remember(&cx.run_id, self.0.from.name(), Instant::now())
                }
                Staged::AskIt => match guard::writable(&self.0.from).await {
                    // Started by hand once standby.signal was in place, or staged by an
                    // earlier attempt and restarted since: it runs as a standby.
                    Writable::No(_) => {}
                    w => bail!(
                        "{from} runs again after the proof ({w:?}): it was started by someone after it was stopped, so it may hold writes {to} never received; nothing is promoted and the staging is undone",
                        from = self.0.from.name(),
                        to = self.0.to.name()
                    ),
                },
            }
            Ok(StageOut {
                slot: m.slot(),
                on: self.0.to.name().to_string(),
            })
        })
        .await
    }
    async fn compensate(&self, cx: &Cx, _: Option<StageOut>) -> Result<()> {
        self.0
            .bounded("undo the staging", async {
                // Without standby.signal the old primary comes back writable at its next start: only
                // while the target is shown not to be a primary.
                let before = format!("removing standby.signal from {}", self.0.from.name());
                if let Err(why) =
                    guard::none_writable(&[&self.0.to], &before, IfSilent::Accept).await
                {
                    bail!("{why}; {} stays staged as its standby", self.0.from.name());
                }
                let m = &self.0.from;
                // Started meanwhile (by hand, a service manager): with standby.signal in
                // place it came up a standby; it is stopped before its standby.signal goes, so
                // that the stop's undo starts it as the primary again (a running standby
                // would stay one, and clients would be released to a read-only server). A
                // server that answers as a primary is left as it is.
                if let Writable::No(_) = guard::writable(m).await {
                    let server = m.server()?;
                    if server.state().await? == RunState::Running {
                        server.stop(StopMode::Fast, STANDBY_STOP).await?;
                    }
                }
                let data = &m.node.data_dir;
                let backup = Self::backup(&self.0, cx);
                if m.host.exists(&backup).await? {
                    let original = m.host.read_file(&backup).await?;
                    m.host
                        .write_file(&data.join("postgresql.auto.conf"), &original, 0o600, None)
                        .await?;
                    m.host.remove_file(&backup).await?;
                }
                m.host.remove_file(&data.join("standby.signal")).await?;
                // Best effort: the slot is on the target, which may be what failed. Left behind it
                // only retains WAL on a standby that is not promoted; `plan` lists migrate_* slots.
                let slot = self.0.demoted().slot();
                let _ = tokio::time::timeout(SLOT_DROP, async {
                    let c = connect(&self.0.to.endpoint()).await?;
                    sql::drop_inactive_slot(&c, &slot).await
                })
                .await;
                // Last, so that a route's provider that does not answer leaves nothing else
                // undone: the routes' files written by the staging, back to the old primary
                // (never loaded: PgBouncer still points there).
                super::route::unstage_ahead(&self.0).await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a status that says stopped (or no cluster at all) after the write spares asking
    /// the server; running or unreadable, the server itself must answer.
    #[test]
    fn only_a_server_seen_down_after_the_staging_is_taken_as_down() {
        assert_eq!(staged_while(Some(RunState::Stopped)), Staged::Down);
        assert_eq!(staged_while(Some(RunState::NoCluster)), Staged::Down);
        assert_eq!(staged_while(Some(RunState::Running)), Staged::AskIt);
        assert_eq!(staged_while(None), Staged::AskIt);
    }

    /// A running postmaster is down for the staging only while it is on its way out (its
    /// shutdown checkpoint written); a status that could not be read never is.
    #[test]
    fn only_a_stopped_or_stopping_server_is_staged() {
        let seen = |state, stopping| Seen {
            state,
            stopping,
            backup: false,
            auto: Some(Vec::new()),
        };
        assert!(down_for_staging(&seen(Some(RunState::Stopped), false)));
        assert!(down_for_staging(&seen(Some(RunState::NoCluster), false)));
        assert!(down_for_staging(&seen(Some(RunState::Running), true)));
        assert!(!down_for_staging(&seen(Some(RunState::Running), false)));
        assert!(!down_for_staging(&seen(None, true)));
        assert_eq!(
            parse_seen("state=0\nstopping=1\nbackup=0\nauto=absent\n")
                .map(|s| (s.state, s.stopping)),
            Some((Some(RunState::Running), true))
        );
    }

    #[test]
    fn the_inspection_reads_state_backup_and_settings() {
        // "port = 5432\nprimary_slot_name = 'x'\n" in base64, wrapped as base64(1) wraps.
        let text = "state=3\nstopping=0\nbackup=0\nauto=\ncG9ydCA9IDU0MzIKcHJpbWFyeV9zbG90X25h\nbWUgPSAneCcK\n";
        assert_eq!(
            parse_seen(text),
            Some(Seen {
                state: Some(RunState::Stopped),
                stopping: false,
                backup: false,
                auto: Some(b"port = 5432\nprimary_slot_name = 'x'\n".to_vec()),
            })
        );
        let running = parse_seen("state=0\nstopping=0\nbackup=1\nauto=absent\n").unwrap();
        assert_eq!(running.state, Some(RunState::Running));
        assert!(running.backup);
        assert_eq!(running.auto, Some(Vec::new()));
        // A status that fails is no state at all (never "stopped").
        assert_eq!(
            parse_seen("state=1\nstopping=0\nbackup=0\nauto=absent\n")
                .unwrap()
                .state,
            None
        );
        assert_eq!(
            parse_seen("state=3\nstopping=0\nbackup=0\nauto=unreadable\n")
                .unwrap()
                .auto,
            None
        );
        assert_eq!(
            parse_seen("state=3\nstopping=0\nbackup=0\nauto=\nunreadable\n")
                .unwrap()
                .auto,
            None
        );
        assert_eq!(parse_seen("ssh: connect refused"), None);
        assert_eq!(parse_seen("state=3\nstopping=0\nbackup=0\n"), None);
    }
}
