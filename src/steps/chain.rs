//! Building the chain: for each standby, `prepare` (adopt an existing standby or claim an
//! empty location), `slot` on its upstream, `clone` with pg_basebackup, `start` and verify it
//! streams; then `catchup` until the whole chain is within the lag threshold.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::id::StepId;
use super::member::{DirState, Member};
use crate::engine::{failpoint, Cx, Description, Kind, Probe, Step};
use crate::host::Cmd;
use crate::pg::server::{RunState, StopMode};
use crate::pg::{connect, sql, Endpoint};
use crate::replication::gate::{catch_up_gate, Decision};
use crate::replication::lag::{sample_chain, sample_hop, ChainSample, Hop, HopState};
use crate::spec::CloneMethod;
use crate::units::format_bytes;

const MARKER: &str = "migrate-clone.json";

/// How long prepare waits for a standby of this cluster to stream again before refusing it.
const ADOPT_WAIT: Duration = Duration::from_secs(7);

/// What `prepare:<node>` decided, read back from the journal by the node's other steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Mode {
    /// Already a streaming standby of the right upstream: verified and kept.
    Adopt,
    /// Cloned by this run into a location that was empty (`existed`) or absent.
    Clone {
        #[serde(default)]
        existed: bool,
    },
}

fn mode(cx: &Cx, node: &str) -> Result<Mode> {
    cx.get(&StepId::Prepare(node.into()))
}

/// What `slot:<node>` and `start:<node>` record: an adopted node, or what was done.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeOut {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub streaming: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_behind_bytes: Option<u64>,
}

impl NodeOut {
    fn adopted() -> NodeOut {
        NodeOut {
            adopted: true,
            ..NodeOut::default()
        }
    }
}

/// The marker a finished clone leaves in its data directory, and `clone:<node>`'s output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloneMarker {
    pub node: String,
    pub run_id: String,
    pub upstream: String,
    pub slot: String,
    pub bytes: u64,
    pub seconds: f64,
}

/// `clone:<node>`'s output: the marker, or an adopted node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CloneOut {
    Cloned(CloneMarker),
    Adopted { adopted: bool },
}

fn hop(m: &Member) -> Result<Hop> {
    Ok(Hop {
        upstream: m.upstream()?.endpoint(),
        node: m.endpoint(),
        application_name: m.name().to_string(),
    })
}

async fn system_identifier(ep: &Endpoint) -> Result<String> {
    let c = connect(ep).await?;
    Ok(c.query_one(
        "SELECT system_identifier::text FROM pg_control_system()",
        &[],
    )
    .await?
    .get(0))
}

// ---------------------------------------------------------------------------------------------

pub struct Prepare {
    pub m: Member,
    pub primary: Endpoint,
}

#[async_trait]
impl Step for Prepare {
    type Output = Mode;
    fn id(&self) -> String {
        StepId::Prepare(self.m.name().into()).to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.m.host_label(),
            action: format!(
                "check {}: a streaming standby of {} is adopted; otherwise {} must be empty or absent",
                self.m.name(),
                self.m.node.upstream.as_deref().unwrap_or("-"),
                self.m.node.data_dir.display()
            ),
            proof: "the decision (adopt or clone) is journaled".into(),
            undo: "nothing (read-only)".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, _: &Cx) -> Result<Mode> {
        let name = self.m.name();
        let up = self.m.upstream()?;
        let addr = format!(
            "{}:{}",
            self.m.node.conninfo.host(),
            self.m.node.conninfo.port()
        );
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_secs(10), connect(&self.m.endpoint())).await
        {
            let row = c
                .query_one(
                    "SELECT pg_is_in_recovery(), system_identifier::text FROM pg_control_system()",
                    &[],
                )
                .await?;
            let (recovery, sysid): (bool, String) = (row.get(0), row.get(1));
            if !recovery {
                bail!("{name} at {addr} is a running primary, not a standby; refusing to touch it");
            }
            let primary_sysid = system_identifier(&self.primary)
                .await
                .context("read the primary's system identifier")?;
            if sysid != primary_sysid {
                bail!(
                    "{name} at {addr} belongs to another cluster (system identifier {sysid}; the primary's is {primary_sysid}); stop it and empty {} to have it cloned",
                    self.m.node.data_dir.display()
                );
            }
            // A standby of this cluster whose stream is down may be reconnecting (its upstream
            // was just restarted: it retries every wal_retrieve_retry_interval, 5 s by
            // default): give it that long and a little more before refusing.
            let deadline = Instant::now() + ADOPT_WAIT;
            loop {
                if matches!(
                    sample_hop(&hop(&self.m)?).await.state,
                    HopState::Streaming { .. }
                ) {
                    return Ok(Mode::Adopt);
                }
                if Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bail!(
                "{name} at {addr} is a standby of this cluster but is not streaming from {} as application_name {name}; fix its primary_conninfo, or stop it and empty {} to have it cloned",
                up.name,
                self.m.node.data_dir.display()
            );
        }
        let where_ = format!(
            "{} on {}",
            self.m.node.data_dir.display(),
            self.m.host.describe()
        );
        match self.m.dir_state().await? {
            DirState::Absent => Ok(Mode::Clone { existed: false }),
            DirState::Empty => Ok(Mode::Clone { existed: true }),
            DirState::Cluster => bail!(
                "{where_} holds a cluster whose server does not answer at {addr}; start it as a standby of {} to adopt it, or empty the directory to have it cloned",
                up.name
            ),
            DirState::Other => bail!("{where_} is not empty and is not a PostgreSQL data directory; empty it or choose another data_dir"),
        }
    }
}

// ---------------------------------------------------------------------------------------------

pub struct Slot(pub Member);

impl Slot {
    async fn exists(&self) -> Result<bool> {
        let c = connect(&self.0.upstream()?.endpoint()).await?;
        sql::slot_exists(&c, &self.0.slot()).await
    }

    fn made(&self) -> NodeOut {
        NodeOut {
            slot: Some(self.0.slot()),
            ..NodeOut::default()
        }
    }
}

#[async_trait]
impl Step for Slot {
    type Output = NodeOut;
    fn id(&self) -> String {
        StepId::Slot(self.0.name().into()).to_string()
    }
    fn describe(&self) -> Description {
        let up = self.0.node.upstream.clone().unwrap_or_default();
        Description {
            host: up.clone(),
            action: format!(
                "SELECT pg_create_physical_replication_slot('{}', true)",
                self.0.slot()
            ),
            proof: format!("the slot is listed in pg_replication_slots on {up}"),
            undo: format!("SELECT pg_drop_replication_slot('{}')", self.0.slot()),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn probe(&self, cx: &Cx) -> Result<Probe<NodeOut>> {
        if mode(cx, self.0.name())? == Mode::Adopt {
            return Ok(Probe::Done(NodeOut::adopted()));
        }
        Ok(if self.exists().await? {
            Probe::Done(self.made())
        } else {
            Probe::NotDone
        })
    }
    async fn apply(&self, _: &Cx) -> Result<NodeOut> {
        let c = connect(&self.0.upstream()?.endpoint()).await?;
        sql::create_physical_slot(&c, &self.0.slot()).await?;
        Ok(self.made())
    }
    async fn compensate(&self, cx: &Cx, _: Option<NodeOut>) -> Result<()> {
        if mode(cx, self.0.name())? == Mode::Adopt {
            return Ok(());
        }
        let up = self.0.upstream()?.endpoint();
        let c = connect(&up).await.context("drop the slot")?;
        let slot = self.0.slot();
        for _ in 0..100 {
            let row = c
                .query_opt(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await?;
            match row.map(|r| r.get::<_, bool>(0)) {
                None => return Ok(()),
                Some(false) => {
                    c.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                        .await?;
                    return Ok(());
                }
                Some(true) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        bail!(
            "slot {slot} on {} is still in use; stop the standby using it, then roll back again",
            up.name
        )
    }
}

// ---------------------------------------------------------------------------------------------

pub struct Clone(pub Member);

/// pg_basebackup of `m`'s upstream into its data directory, streaming WAL through its slot.
pub fn basebackup_cmd(
    m: &Member,
    server: &crate::pg::server::Server,
    conninfo: &crate::pg::Conninfo,
) -> Cmd {
    Cmd::new(
        [
            server.tool("pg_basebackup"),
            "-d".into(),
            conninfo.to_libpq_string(),
            "-D".into(),
            m.node.data_dir.display().to_string(),
            "-X".into(),
            "stream".into(),
            "-S".into(),
            m.slot(),
            "-c".into(),
            "fast".into(),
            "-w".into(),
        ]
        .into_iter()
        .chain(m.clone_settings.basebackup_args()),
    )
    .timeout(Duration::from_secs(24 * 3600))
}

impl Clone {
    fn data(&self) -> String {
        self.0.node.data_dir.display().to_string()
    }

    async fn marker(&self) -> Option<CloneMarker> {
        let bytes = self
            .0
            .host
            .read_file(&self.0.node.data_dir.join(MARKER))
            .await
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Remove what an earlier, interrupted attempt left (prepare proved the location was ours).
    async fn clean(&self, keep_dir: bool) -> Result<()> {
        let d = self.data();
        if self.0.node.data_dir.components().count() < 3 {
            bail!("refusing to clean {d}: the path is too short to be a data directory");
        }
        self.kill_stray_backup().await?;
        if let Ok(server) = self.0.server() {
            if server.state().await? == RunState::Running {
                server.stop(StopMode::Fast, Duration::from_secs(60)).await?;
            }
        }
        let cmd = if keep_dir {
            Cmd::new(["find", &d, "-mindepth", "1", "-delete"])
        } else {
            Cmd::new(["rm", "-rf", "--", &d])
        };
        if self.0.host.exists(&self.0.node.data_dir).await? {
            self.0
                .host
                .run_ok(&cmd.timeout(Duration::from_secs(3600)))
                .await?;
        }
        Ok(())
    }

    /// A pg_basebackup or restore from an interrupted attempt may still write into the
    /// directory (on a remote host nothing kills it when we die): stop it before cleaning or
    /// resuming.
    async fn kill_stray_backup(&self) -> Result<()> {
        let escaped: String = self
            .data()
            .chars()
            .map(|c| {
                if ".[]()*+?^$\\|{}".contains(c) {
                    format!("\\{c}")
                } else {
                    c.to_string()
                }
            })
            .collect();
        // Either copier: pg_basebackup, or a pgBackRest restore (and its worker processes,
        // which carry the same --pg1-path).
        let pattern =
            format!("(pg_basebackup.* -D {escaped}|pgbackrest.* --pg1-path={escaped})( |$)");
        // SIGKILL lands when the process's current system call returns: a pg_basebackup in its
        // final fsync of a large directory on a busy disk can take many seconds. Wait up to 60 s.
        let script = "u=$(id -u); pkill -KILL -u \"$u\" -f -- \"$1\"; i=0; while pgrep -u \"$u\" -f -- \"$1\" >/dev/null; do \
                      i=$((i+1)); [ $i -gt 600 ] && exit 1; sleep 0.1; done; exit 0";
        let out = self
            .0
            .host
            .run(&Cmd::new(["sh", "-c", script, "sh", &pattern]).timeout(Duration::from_secs(90)))
            .await?;
        if !out.success() {
            bail!(
                "a pg_basebackup or pgBackRest restore into {} on {} does not stop; stop it by hand and retry",
                self.data(),
                self.0.host.describe()
            );
        }
        Ok(())
    }

    async fn upstream_size(&self) -> Option<u64> {
        let c = connect(&self.0.upstream().ok()?.endpoint()).await.ok()?;
        let n: i64 = c
            .query_one(
                "SELECT sum(pg_database_size(oid))::bigint FROM pg_database",
                &[],
            )
            .await
            .ok()?
            .get(0);
        Some(n as u64)
    }

    async fn bytes_on_disk(&self) -> Option<u64> {
        self.copied().await.map(|c| c.data + c.wal)
    }

    /// What the clone has on disk so far, in one call: the data directory, and its `pg_wal`
    /// (WAL streamed while the copy runs, which the upstream's size at the start cannot count).
    async fn copied(&self) -> Option<Copied> {
        let out = self
            .0
            .host
            .run(&Cmd::new([
                "sh",
                "-c",
                r#"du -sb -- "$1"; du -sb -- "$1/pg_wal" 2>/dev/null || true"#,
                "sh",
                &self.data(),
            ]))
            .await
            .ok()?;
        parse_copied(&out.stdout_text())
    }
}

/// Bytes of a clone in progress: its files without `pg_wal`, and `pg_wal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Copied {
    data: u64,
    wal: u64,
}

/// Pure: two `du -sb` lines (the data directory, then its `pg_wal`, which may be missing yet).
fn parse_copied(text: &str) -> Option<Copied> {
    let mut sizes = text
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok());
    let all = sizes.next()?;
    let wal = sizes.next().unwrap_or(0).min(all);
    Some(Copied {
        data: all - wal,
        wal,
    })
}

/// Pure: the clone's progress line. `total` is the upstream's size when the clone began; the
/// data copied is measured against it, the WAL streamed meanwhile is shown on its own (it is
/// not part of that total), and the ETA counts the data only.
fn clone_progress(c: Copied, total: Option<u64>, secs: f64) -> String {
    let secs = secs.max(0.001);
    let rate = (c.data + c.wal) as f64 / secs;
    let wal = if c.wal > 0 {
        format!(" + {} WAL streamed", format_bytes(c.wal))
    } else {
        String::new()
    };
    match total {
        Some(t) if t > 0 => {
            let data_rate = c.data as f64 / secs;
            let eta = if data_rate > 0.0 {
                t.saturating_sub(c.data) as f64 / data_rate
            } else {
                0.0
            };
            format!(
                "{} / {} ({:.0}%){wal}, {}/s, ETA {:.0}s",
                format_bytes(c.data),
                format_bytes(t),
                (c.data as f64 * 100.0 / t as f64).min(100.0),
                format_bytes(rate as u64),
                eta
            )
        }
        _ => format!(
            "{} copied{wal}, {}/s",
            format_bytes(c.data),
            format_bytes(rate as u64)
        ),
    }
}

#[async_trait]
impl Step for Clone {
    type Output = CloneOut;
    fn id(&self) -> String {
        StepId::Clone(self.0.name().into()).to_string()
    }
    fn describe(&self) -> Description {
        let conninfo = self
            .0
            .replication_conninfo(None)
            .map(|c| c.to_libpq_string())
            .unwrap_or_default();
        if let Some(argv) = self
            .0
            .clone_settings
            .method
            .pgbackrest_restore(&self.0.node.data_dir, false)
        {
            return Description {
                host: self.0.host_label(),
                action: format!(
                    "{} (an interrupted restore is resumed with --delta); then primary_conninfo, primary_slot_name, port and cluster_name in postgresql.auto.conf (pgBackRest's restore_command kept: the WAL since the backup comes from the repository, the rest streams through slot {})",
                    argv.join(" "),
                    self.0.slot()
                ),
                proof: format!("{MARKER} written in the data directory after a complete restore"),
                undo: format!("stop the server and remove {} (only if this run created its contents)", self.data()),
            };
        }
        Description {
            host: self.0.host_label(),
            action: format!(
                "pg_basebackup -d '{conninfo}' -D {} -X stream -S {} -c fast -w{}; then standby.signal, primary_conninfo, primary_slot_name, port and cluster_name in postgresql.auto.conf",
                self.data(),
                self.0.slot(),
                self.0
                    .clone_settings
                    .basebackup_args()
                    .iter()
                    .map(|a| format!(" {a}"))
                    .collect::<String>()
            ),
            proof: format!("{MARKER} written in the data directory after a complete backup"),
            undo: format!("stop the server and remove {} (only if this run created its contents)", self.data()),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn probe(&self, cx: &Cx) -> Result<Probe<CloneOut>> {
        if mode(cx, self.0.name())? == Mode::Adopt {
            return Ok(Probe::Done(CloneOut::Adopted { adopted: true }));
        }
        Ok(match self.marker().await {
            Some(m) if m.node == self.0.name() && m.run_id == cx.run_id => {
                Probe::Done(CloneOut::Cloned(m))
            }
            _ => Probe::NotDone,
        })
    }
    async fn apply(&self, cx: &Cx) -> Result<CloneOut> {
        let Mode::Clone { existed } = mode(cx, self.0.name())? else {
            return Ok(CloneOut::Adopted { adopted: true });
        };
        let id = self.id();
        let server = self.0.server()?;
        let data = &self.0.node.data_dir;
        let leftovers = !matches!(
            self.0.dir_state().await?,
            DirState::Absent | DirState::Empty
        );
        // pgBackRest keeps its manifest in the directory until a restore is done: one that
        // was interrupted is resumed with --delta (what is there is checked, not copied again).
        let resume_restore = leftovers
            && matches!(self.0.clone_settings.method, CloneMethod::PgBackRest { .. })
            && self.0.host.exists(&data.join("backup.manifest")).await?;
        if resume_restore {
            cx.progress(&id, "resuming the interrupted pgBackRest restore (--delta)");
            self.kill_stray_backup().await?;
        } else if leftovers {
            cx.progress(&id, "removing what an interrupted clone left");
            self.clean(existed).await?;
        }
        let conninfo = self.0.replication_conninfo(None)?;
        let total = self.upstream_size().await;
        let started = Instant::now();
        let monitor = {
            let me = Clone(self.0.clone());
            let cx = cx.clone();
            let id = id.clone();
            tokio::spawn(async move {
                // du walks the growing directory: often enough for progress, rare enough not to
                // slow the copy down.
                let mut interval = Duration::from_millis(200);
                loop {
                    tokio::time::sleep(interval).await;
                    interval = Duration::from_secs(1);
                    let Some(copied) = me.copied().await else {
                        continue;
                    };
                    if copied.data + copied.wal > 0 {
                        failpoint::point(&id, "during").await;
                    }
                    let msg = clone_progress(copied, total, started.elapsed().as_secs_f64());
                    cx.progress(&id, msg);
                }
            })
        };
        let result = match self
            .0
            .clone_settings
            .method
            .pgbackrest_restore(data, resume_restore)
        {
            // Read from the repository, as the node's host user: the upstream is not asked.
            Some(argv) => self
                .0
                .host
                .run_ok(&Cmd::new(argv).timeout(Duration::from_secs(24 * 3600)))
                .await
                .map(|_| ())
                .context("clone with a pgBackRest restore"),
            None => {
                let backup = basebackup_cmd(&self.0, &server, &conninfo);
                self.0
                    .run_with_replication_password(backup, true)
                    .await
                    .map(|_| ())
                    .context("clone with pg_basebackup")
            }
        };
        monitor.abort();
        result?;
        let secs = started.elapsed().as_secs_f64();

        let copied = self
            .0
            .host
            .read_file(&data.join("postgresql.auto.conf"))
            .await
            .unwrap_or_default();
        self.0
            .make_standby(&copied, super::member::Port::FromConninfo)
            .await?;
        let marker = CloneMarker {
            node: self.0.name().into(),
            run_id: cx.run_id.clone(),
            upstream: self.0.upstream()?.name.clone(),
            slot: self.0.slot(),
            bytes: self.bytes_on_disk().await.unwrap_or(0),
            seconds: (secs * 1000.0).round() / 1000.0,
        };
        self.0
            .host
            .write_file(
                &data.join(MARKER),
                serde_json::to_string(&marker)?.as_bytes(),
                0o600,
                None,
            )
            .await?;
        Ok(CloneOut::Cloned(marker))
    }
    async fn compensate(&self, cx: &Cx, _: Option<CloneOut>) -> Result<()> {
        match mode(cx, self.0.name())? {
            Mode::Adopt => Ok(()),
            Mode::Clone { existed } => self.clean(existed).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------

pub struct Start(pub Member);

#[async_trait]
impl Step for Start {
    type Output = NodeOut;
    fn id(&self) -> String {
        StepId::Start(self.0.name().into()).to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.0.host_label(),
            action: format!("{} (server log {})", self.0.server_words("start"), self.0.node.log_file.display()),
            proof: format!(
                "pg_stat_wal_receiver.status = 'streaming' on {} and a streaming row for it in pg_stat_replication on {}",
                self.0.name(),
                self.0.node.upstream.as_deref().unwrap_or("-")
            ),
            undo: format!("{} (fast)", self.0.server_words("stop")),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn probe(&self, cx: &Cx) -> Result<Probe<NodeOut>> {
        if mode(cx, self.0.name())? == Mode::Adopt {
            return Ok(Probe::Done(NodeOut::adopted()));
        }
        if self.0.server()?.state().await? != RunState::Running {
            return Ok(Probe::NotDone);
        }
        Ok(match sample_hop(&hop(&self.0)?).await.state {
            HopState::Streaming { .. } => Probe::Done(NodeOut {
                streaming: true,
                ..NodeOut::default()
            }),
            HopState::Down { .. } => Probe::NotDone,
        })
    }
    async fn apply(&self, cx: &Cx) -> Result<NodeOut> {
        let server = self.0.server()?;
        if server.state().await? != RunState::Running {
            server
                .start(&self.0.node.log_file, Duration::from_secs(300))
                .await?;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match sample_hop(&hop(&self.0)?).await.state {
                HopState::Streaming {
                    replay_behind_bytes,
                    ..
                } => {
                    return Ok(NodeOut {
                        streaming: true,
                        replay_behind_bytes: Some(replay_behind_bytes),
                        ..NodeOut::default()
                    })
                }
                HopState::Down { reason } => {
                    if Instant::now() > deadline {
                        bail!(
                            "{} started but does not stream: {reason}; see {}",
                            self.0.name(),
                            self.0.node.log_file.display()
                        );
                    }
                    cx.progress(
                        &StepId::Start(self.0.name().into()),
                        format!("waiting to stream: {reason}"),
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    async fn compensate(&self, cx: &Cx, _: Option<NodeOut>) -> Result<()> {
        if mode(cx, self.0.name())? == Mode::Adopt {
            return Ok(());
        }
        self.0
            .server()?
            .stop(StopMode::Fast, Duration::from_secs(120))
            .await
    }
}

// ---------------------------------------------------------------------------------------------

pub struct CatchUp {
    /// `catchup` when building the chain, `gate` right before a cutover's hold.
    pub id: StepId,
    pub primary: Endpoint,
    pub hops: Vec<Hop>,
    pub threshold: u64,
    pub stable_for: Duration,
    pub timeout: Duration,
}

#[async_trait]
impl Step for CatchUp {
    type Output = ChainSample;
    fn id(&self) -> String {
        self.id.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: "every node".into(),
            action: format!(
                "sample pg_stat_replication and pg_stat_wal_receiver on every hop until all stream within {} for {:?}",
                format_bytes(self.threshold),
                self.stable_for
            ),
            proof: "the catch-up gate says go (journaled with the last sample)".into(),
            undo: "nothing (read-only)".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, cx: &Cx) -> Result<ChainSample> {
        let started = Instant::now();
        let mut samples: Vec<ChainSample> = Vec::new();
        loop {
            let s = sample_chain(&self.primary, &self.hops).await;
            cx.data(&self.id, &s);
            samples.push(s);
            let keep_from = chrono::Utc::now()
                - chrono::Duration::from_std(self.stable_for + Duration::from_secs(2))
                    .unwrap_or_default();
            if samples.len() > 2 {
                let first_kept = samples
                    .iter()
                    .position(|x| x.at >= keep_from)
                    .unwrap_or(0)
                    .saturating_sub(1);
                samples.drain(..first_kept);
            }
            match catch_up_gate(
                &samples,
                self.threshold,
                self.stable_for,
                chrono::Utc::now(),
            ) {
                Decision::Go => return Ok(samples.pop().expect("sampled")),
                Decision::Wait(why) => {
                    if started.elapsed() > self.timeout {
                        bail!(
                            "the chain did not catch up within {:?}: {why}",
                            self.timeout
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wal_streamed_during_a_clone_is_counted_apart_from_its_total() {
        let c = parse_copied("67633152\t/d\n33554432\t/d/pg_wal\n").unwrap();
        assert_eq!(
            c,
            Copied {
                data: 34078720,
                wal: 33554432
            }
        );
        // Before pg_wal exists, all of it is data; nonsense gives nothing.
        assert_eq!(
            parse_copied("100\t/d\n").unwrap(),
            Copied { data: 100, wal: 0 }
        );
        assert_eq!(parse_copied("du: cannot access\n"), None);
        // The issue's case: 64.5 MiB on disk against a 31.7 MiB upstream was shown as done.
        let line = clone_progress(c, Some(33_240_000), 2.0);
        assert!(
            line.starts_with("32.5 MiB / 31.7 MiB (100%) + 32.0 MiB WAL streamed"),
            "{line}"
        );
        let half = clone_progress(Copied { data: 50, wal: 0 }, Some(100), 1.0);
        assert!(half.contains("(50%)") && half.contains("ETA 1s"), "{half}");
        assert!(!half.contains("WAL"), "{half}");
        let unknown = clone_progress(
            Copied {
                data: 1 << 20,
                wal: 1 << 20,
            },
            None,
            1.0,
        );
        assert!(
            unknown.starts_with("1.0 MiB copied + 1.0 MiB WAL streamed"),
            "{unknown}"
        );
    }
}
