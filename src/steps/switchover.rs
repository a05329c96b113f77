//! The zero-loss switchover (reference §1.2), in one direction: `from` is the serving primary,
//! `to` the standby that takes over; `followers` are the other standbys, which must follow the
//! new timeline. The same steps, with roles swapped, are the rollback after the point of no
//! return.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::member::{Member, PASSFILE};
use crate::engine::{Cx, Description, Kind, Probe, Step};
use crate::host::Cmd;
use crate::pg::server::{RunState, StopMode};
use crate::pg::{connect, Endpoint, Lsn};
use crate::spec::Window;

/// Who hands over to whom.
#[derive(Clone)]
pub struct Direction {
    pub from: Member,
    pub to: Member,
    pub followers: Vec<Member>,
    /// The traffic layer (`kind = "none"` routes are left out).
    pub routes: Vec<crate::spec::Route>,
}

impl Direction {
    fn routers(&self) -> Result<Vec<Box<dyn crate::route::Router>>> {
        crate::route::open(&self.routes)
    }

    /// `from` as a standby of `to`.
    fn demoted(&self) -> Member {
        self.from.with_upstream(&self.to.node)
    }
    fn ms(t: Instant) -> u64 {
        t.elapsed().as_millis() as u64
    }
}

fn out<'a>(cx: &'a Cx, step: &str) -> Result<&'a Value> {
    cx.output(step)
        .ok_or_else(|| anyhow!("{step} recorded nothing"))
}

/// (status, received_tli) of a node's walreceiver.
async fn receiver(ep: &Endpoint) -> Result<Option<(String, i32)>> {
    let c = connect(ep).await?;
    Ok(
        c.query_opt("SELECT status, received_tli FROM pg_stat_wal_receiver", &[])
            .await?
            .map(|r| (r.get(0), r.get(1))),
    )
}

// ---------------------------------------------------------------------------------------------

/// Wait for the maintenance window (visible countdown), or refuse after its end.
pub struct WaitForWindow {
    pub window: Option<Window>,
    pub force: bool,
}

#[async_trait]
impl Step for WaitForWindow {
    fn id(&self) -> String {
        "window".into()
    }
    fn describe(&self) -> Description {
        let action = match &self.window {
            Some(w) => format!(
                "wait for the window {} – {}",
                w.start.to_rfc3339(),
                w.end.to_rfc3339()
            ),
            None => "no window in the spec: go at once".into(),
        };
        Description {
            host: "-".into(),
            action,
            proof: "the clock is inside the window".into(),
            undo: "nothing".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, cx: &Cx) -> Result<Value> {
        let Some(w) = self.window else {
            return Ok(json!({ "window": null }));
        };
        loop {
            let now = Utc::now();
            if now >= w.end {
                if self.force {
                    return Ok(json!({ "forced": true, "window_end": w.end }));
                }
                bail!(
                    "the maintenance window ended at {}; pass --force-window to go anyway",
                    w.end.to_rfc3339()
                );
            }
            if now >= w.start {
                return Ok(json!({ "entered": now }));
            }
            if self.force {
                return Ok(json!({ "forced": true, "window_start": w.start }));
            }
            let left = (w.start.with_timezone(&Utc) - now).num_seconds();
            cx.progress(
                "window",
                format!(
                    "the window opens in {}h{:02}m{:02}s",
                    left / 3600,
                    left / 60 % 60,
                    left % 60
                ),
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Hold clients at every route that can (PgBouncer PAUSE): they wait instead of failing.
/// What each route points at is journaled first.
pub struct Hold(pub Direction);

#[async_trait]
impl Step for Hold {
    fn id(&self) -> String {
        "hold".into()
    }
    fn describe(&self) -> Description {
        let routers = self.0.routers().unwrap_or_default();
        Description {
            host: if routers.is_empty() {
                "-".into()
            } else {
                routers
                    .iter()
                    .map(|r| r.describe())
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            action: if routers.is_empty() {
                "no route: nothing to hold".into()
            } else {
                "record where each route points, then hold its clients (PgBouncer: PAUSE db)".into()
            },
            proof: "the hold command returned (PAUSE returns once no query runs)".into(),
            undo: "release the clients (RESUME db)".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn apply(&self, _: &Cx) -> Result<Value> {
        let t = Instant::now();
        let held_at = Utc::now();
        let mut previous = Vec::new();
        for r in self.0.routers()? {
            previous.push(json!({ "route": r.describe(), "points_at": r.current().await? }));
            r.hold()
                .await
                .with_context(|| format!("hold clients at {}", r.describe()))?;
        }
        Ok(json!({ "held_at": held_at, "previous": previous, "ms": Direction::ms(t) }))
    }
    async fn compensate(&self, _: &Cx, _: Option<&Value>) -> Result<()> {
        for r in self.0.routers()? {
            r.release()
                .await
                .with_context(|| format!("release clients at {}", r.describe()))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Soft fence: read-only by default, client sessions ended, a checkpoint so the shutdown
/// checkpoint is short. Not the guarantee (P1): stopping the server is.
pub struct Fence(pub Direction);

#[async_trait]
impl Step for Fence {
    fn id(&self) -> String {
        "fence".into()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.0.from.host_label(),
            action: "ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf(); \
                     SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' (except migrate's own); CHECKPOINT"
                .into(),
            proof: "the settings are reloaded; no client backend remains".into(),
            undo: "ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf()".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn apply(&self, _: &Cx) -> Result<Value> {
        let t = Instant::now();
        let fenced_at = Utc::now();
        // The target's timeline, read while its walreceiver still runs: once the primary is
        // down there is no receiver row, and a standby's control file lags (P6). Journaled
        // here, before the stop, so a resumed run has it too.
        let to_timeline = receiver(&self.0.to.endpoint())
            .await
            .ok()
            .flatten()
            .map(|(_, tli)| tli);
        let c = connect(&self.0.from.endpoint()).await?;
        c.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
            .await?;
        c.batch_execute("SELECT pg_reload_conf()").await?;
        let ended: i64 = c
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                    AND coalesce(application_name, '') NOT LIKE 'migrate%'",
                &[],
            )
            .await?
            .get(0);
        c.batch_execute("CHECKPOINT").await?;
        Ok(
            json!({ "fenced_at": fenced_at, "sessions_ended": ended, "to_timeline": to_timeline, "ms": Direction::ms(t) }),
        )
    }
    async fn compensate(&self, _: &Cx, _: Option<&Value>) -> Result<()> {
        let c = connect(&self.0.from.endpoint()).await.context("unfence")?;
        c.batch_execute("ALTER SYSTEM RESET default_transaction_read_only")
            .await?;
        c.batch_execute("SELECT pg_reload_conf()").await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// The hard fence: a clean fast shutdown, which waits for connected standbys to receive
/// everything, shutdown checkpoint included.
pub struct StopPrimary(pub Direction);

#[async_trait]
impl Step for StopPrimary {
    fn id(&self) -> String {
        "stop".into()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.0.from.host_label(),
            action: format!(
                "pg_ctl stop -D {} -m fast -w",
                self.0.from.node.data_dir.display()
            ),
            proof: "pg_ctl status: not running".into(),
            undo: "pg_ctl start (as primary again)".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn probe(&self, _: &Cx) -> Result<Probe> {
        Ok(match self.0.from.server()?.state().await? {
            RunState::Running => Probe::NotDone,
            _ => Probe::Done(json!({ "stopped": true })),
        })
    }
    async fn apply(&self, _: &Cx) -> Result<Value> {
        let t = Instant::now();
        self.0
            .from
            .server()?
            .stop(StopMode::Fast, Duration::from_secs(300))
            .await?;
        Ok(json!({ "stopped_at": Utc::now(), "ms": Direction::ms(t) }))
    }
    async fn compensate(&self, _: &Cx, _: Option<&Value>) -> Result<()> {
        let server = self.0.from.server()?;
        if server.state().await? != RunState::Running {
            server
                .start(&self.0.from.node.log_file, Duration::from_secs(300))
                .await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// The evidence: the stopped primary's control file says "shut down" at checkpoint L on
/// timeline T, and the new node has received and replayed past L on T.
pub struct Proof {
    pub d: Direction,
    pub timeout: Duration,
}

struct Control {
    state: String,
    checkpoint: Lsn,
    timeline: i64,
}

async fn controldata(m: &Member) -> Result<Control> {
    let server = m.server()?;
    let out = m
        .host
        .run_ok(&Cmd::new([
            server.tool("pg_controldata"),
            "-D".into(),
            m.node.data_dir.display().to_string(),
        ]))
        .await?;
    let text = out.stdout_text();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .ok_or_else(|| anyhow!("pg_controldata of {} has no {name:?}", m.name()))
    };
    Ok(Control {
        state: field("Database cluster state:")?,
        checkpoint: field("Latest checkpoint location:")?
            .parse()
            .map_err(|e: String| anyhow!(e))?,
        timeline: field("Latest checkpoint's TimeLineID:")?.parse()?,
    })
}

/// The target's received and replayed positions, timeline and recovery state.
async fn target_position(to: &Member) -> Result<tokio_postgres::Row> {
    let c = connect(&to.endpoint()).await?;
    Ok(c.query_one(
        "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, timeline_id::bigint, pg_is_in_recovery()
           FROM pg_control_checkpoint()",
        &[],
    )
    .await?)
}

#[async_trait]
impl Step for Proof {
    fn id(&self) -> String {
        "proof".into()
    }
    fn describe(&self) -> Description {
        Description {
            host: format!("{} and {}", self.d.from.name(), self.d.to.name()),
            action: format!(
                "pg_controldata {} (must say \"shut down\"; read checkpoint L and timeline T); on {}: pg_last_wal_receive_lsn() > L and pg_last_wal_replay_lsn() > L on T, within {:?}",
                self.d.from.node.data_dir.display(),
                self.d.to.name(),
                self.timeout
            ),
            proof: "both LSNs strictly past L, journaled".into(),
            undo: "nothing (read-only); if it does not come in time the cutover is aborted".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, cx: &Cx) -> Result<Value> {
        let t = Instant::now();
        let recorded_tli = cx.output("fence").and_then(|o| o["to_timeline"].as_i64());
        let ctl = controldata(&self.d.from).await?;
        if ctl.state != "shut down" {
            bail!(
                "{} is not cleanly shut down (pg_controldata says {:?}); no promotion",
                self.d.from.name(),
                ctl.state
            );
        }
        loop {
            // The target may be briefly unreachable; that is "not yet", until the time box.
            // A hung target (frozen host, cut link) must not outlast the time box either.
            let left = self
                .timeout
                .saturating_sub(t.elapsed())
                .max(Duration::from_millis(200));
            let sample = match tokio::time::timeout(left, target_position(&self.d.to)).await {
                Ok(r) => r,
                Err(_) => Err(anyhow!("no answer within {left:?}")),
            };
            let r = match sample {
                Ok(r) => r,
                Err(e) => {
                    let last_error = format!("{e:#}");
                    if t.elapsed() > self.timeout {
                        bail!(
                            "no proof within {:?}: {} is unreachable ({}); not promoting",
                            self.timeout,
                            self.d.to.name(),
                            last_error.lines().next().unwrap_or_default()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let parse = |i: usize| {
                r.get::<_, Option<String>>(i)
                    .and_then(|s| s.parse::<Lsn>().ok())
            };
            let (receive, replay, tli, recovery): (Option<Lsn>, Option<Lsn>, i64, bool) =
                (parse(0), parse(1), r.get(2), r.get(3));
            if !recovery {
                bail!(
                    "{} is not in recovery: it must be a standby to be promoted",
                    self.d.to.name()
                );
            }
            if let (Some(rc), Some(rp)) = (receive, replay) {
                if rc > ctl.checkpoint && rp > ctl.checkpoint {
                    let tli = recorded_tli.unwrap_or(tli);
                    if tli != ctl.timeline {
                        bail!(
                            "{} is on timeline {tli}, {} shut down on timeline {}; no promotion",
                            self.d.to.name(),
                            self.d.from.name(),
                            ctl.timeline
                        );
                    }
                    return Ok(json!({
                        "checkpoint_lsn": ctl.checkpoint, "timeline": ctl.timeline,
                        "receive_lsn": rc, "replay_lsn": rp, "ms": Direction::ms(t),
                    }));
                }
            }
            if t.elapsed() > self.timeout {
                bail!(
                    "{} did not receive and replay past {}'s shutdown checkpoint {} within {:?} (received {}, replayed {}); not promoting",
                    self.d.to.name(),
                    self.d.from.name(),
                    ctl.checkpoint,
                    self.timeout,
                    receive.map(|l| l.to_string()).unwrap_or_else(|| "nothing".into()),
                    replay.map(|l| l.to_string()).unwrap_or_else(|| "nothing".into())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Before promoting: make the stopped primary a standby of the new one (standby.signal,
/// primary_conninfo, slot), so that no restart can ever bring it up as a second primary.
pub struct Stage(pub Direction);

impl Stage {
    fn backup(&self, cx: &Cx) -> PathBuf {
        self.0
            .from
            .node
            .data_dir
            .join(format!("postgresql.auto.conf.migrate-{}", cx.run_id))
    }
}

#[async_trait]
impl Step for Stage {
    fn id(&self) -> String {
        "stage".into()
    }
    fn describe(&self) -> Description {
        let m = self.0.demoted();
        Description {
            host: format!("{} and {}", self.0.from.host_label(), self.0.to.name()),
            action: format!(
                "on {to}: pg_create_physical_replication_slot('{slot}', true); on {from}: standby.signal, and in postgresql.auto.conf primary_conninfo = '{ci}', primary_slot_name = '{slot}', without the soft fence",
                to = self.0.to.name(),
                from = self.0.from.name(),
                slot = m.slot(),
                ci = m.replication_conninfo(Some(&m.node.data_dir.join(PASSFILE).display().to_string())).map(|c| c.to_string()).unwrap_or_default(),
            ),
            proof: "standby.signal exists on the stopped node".into(),
            undo: "restore postgresql.auto.conf, remove standby.signal, drop the slot".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn apply(&self, cx: &Cx) -> Result<Value> {
        let t = Instant::now();
        let m = self.0.demoted();
        let c = connect(&self.0.to.endpoint()).await?;
        c.execute(
            "SELECT pg_create_physical_replication_slot($1, true)
              WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&m.slot()],
        )
        .await?;
        let data = &m.node.data_dir;
        let auto = data.join("postgresql.auto.conf");
        let current = m.host.read_file(&auto).await.unwrap_or_default();
        if !m.host.exists(&self.backup(cx)).await? {
            m.host
                .write_file(&self.backup(cx), &current, 0o600, None)
                .await?;
        }
        let password = m.replication_password()?;
        if let Some(pw) = &password {
            m.host
                .write_file(
                    &data.join(PASSFILE),
                    m.passfile_line(pw).as_bytes(),
                    0o600,
                    None,
                )
                .await?;
        }
        let settings =
            m.standby_settings(&String::from_utf8_lossy(&current), password.is_some())?;
        m.host
            .write_file(&auto, settings.as_bytes(), 0o600, None)
            .await?;
        m.host
            .write_file(&data.join("standby.signal"), b"", 0o600, None)
            .await?;
        Ok(json!({ "slot": m.slot(), "on": self.0.to.name(), "ms": Direction::ms(t) }))
    }
    async fn compensate(&self, cx: &Cx, _: Option<&Value>) -> Result<()> {
        let m = &self.0.from;
        let data = &m.node.data_dir;
        let backup = self.backup(cx);
        if m.host.exists(&backup).await? {
            let original = m.host.read_file(&backup).await?;
            m.host
                .write_file(&data.join("postgresql.auto.conf"), &original, 0o600, None)
                .await?;
            m.host.remove_file(&backup).await?;
        }
        m.host.remove_file(&data.join("standby.signal")).await?;
        let c = connect(&self.0.to.endpoint()).await?;
        c.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
            &[&self.0.demoted().slot()],
        )
        .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// How long a promotion request may go unanswered before it is sent again (P13).
const PROMOTE_RESIGNAL: Duration = Duration::from_millis(250);

/// The point of no return.
pub struct Promote {
    pub d: Direction,
    pub timeout: Duration,
}

#[async_trait]
impl Step for Promote {
    fn id(&self) -> String {
        "promote".into()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.d.to.host_label(),
            action: format!(
                "SELECT pg_promote(false), repeated every {} ms while pg_is_in_recovery(), within {:?}",
                PROMOTE_RESIGNAL.as_millis(),
                self.timeout
            ),
            proof: "pg_is_in_recovery() = false; the new timeline from pg_walfile_name(pg_current_wal_lsn())".into(),
            undo: "none: going back is a switchover in the other direction (migrate rollback)".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::PointOfNoReturn
    }
    async fn apply(&self, _: &Cx) -> Result<Value> {
        let t = Instant::now();
        let c = connect(&self.d.to.endpoint()).await?;
        let mut signals = 0;
        let mut last_signal = None::<Instant>;
        // pg_promote(wait => true) checks every 100 ms, inside the write pause; this polls every
        // 5 ms. A request that lands just as the walreceiver lost the stopped primary can sit
        // out wal_retrieve_retry_interval (P13), so an unanswered request is repeated.
        while c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await?
            .get::<_, bool>(0)
        {
            if last_signal.is_none_or(|at| at.elapsed() >= PROMOTE_RESIGNAL) {
                if let Err(e) = c.batch_execute("SELECT pg_promote(false)").await {
                    // Promoted in the meantime: "recovery is not in progress".
                    if !e.to_string().contains("not in progress")
                        && !format!("{e:?}").contains("not in progress")
                    {
                        return Err(e.into());
                    }
                }
                signals += 1;
                last_signal = Some(Instant::now());
            }
            if t.elapsed() > self.timeout {
                bail!(
                    "{} did not finish promotion within {:?}",
                    self.d.to.name(),
                    self.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let promoted_ms = Direction::ms(t);
        // The control file shows the new timeline only after the asynchronous end-of-recovery
        // checkpoint (P6); the current WAL file's name has it now.
        let r = c
            .query_one(
                "SELECT pg_walfile_name(pg_current_wal_lsn()), pg_current_wal_lsn()::text",
                &[],
            )
            .await?;
        let walfile: String = r.get(0);
        let tli = i64::from_str_radix(walfile.get(..8).unwrap_or_default(), 16)
            .with_context(|| format!("timeline from WAL file name {walfile:?}"))?;
        let lsn: String = r.get(1);
        Ok(json!({
            "timeline": tli, "lsn": lsn, "promote_ms": promoted_ms, "signals": signals,
            "ms": Direction::ms(t),
        }))
    }
    async fn compensate(&self, _: &Cx, _: Option<&Value>) -> Result<()> {
        bail!("a promotion cannot be undone")
    }
}

// ---------------------------------------------------------------------------------------------

/// Start the old primary as a standby of the new one and prove it follows the new timeline
/// (a diverged standby also starts, P5).
pub struct Reverse(pub Direction);

fn new_timeline(cx: &Cx) -> Result<i32> {
    out(cx, "promote")?["timeline"]
        .as_i64()
        .map(|t| t as i32)
        .ok_or_else(|| anyhow!("promote recorded no timeline"))
}

/// Wait until `m` streams from `upstream` on timeline `tli` (P5: its walreceiver streaming on
/// that timeline, and a streaming row for it on the upstream). Polled every 10 ms, inside the
/// write pause for the reverse step, on kept connections: a new connection per poll (a
/// backend fork on each side) would slow the start it waits for.
async fn wait_following(
    m: &Member,
    upstream: &Member,
    tli: i32,
    limit: Duration,
    cx: &Cx,
    step: &str,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut node: Option<tokio_postgres::Client> = None;
    let mut up: Option<tokio_postgres::Client> = None;
    let mut checks = 0u32;
    loop {
        let sample = tokio::time::timeout(
            Duration::from_secs(5),
            follow_state(m, upstream, &mut node, &mut up),
        )
        .await;
        let why = match sample {
            Ok(Ok((Some((status, got)), Some(state))))
                if status == "streaming" && got == tli && state == "streaming" =>
            {
                return Ok(())
            }
            Ok(Ok((Some((status, got)), state))) => format!(
                "walreceiver {status} on timeline {got}; on {}: {}",
                upstream.name(),
                state.unwrap_or_else(|| "no replication row".into())
            ),
            Ok(Ok((None, _))) => "no walreceiver".into(),
            Ok(Err(e)) => {
                let text = format!("{e:#}");
                text.lines().next().unwrap_or_default().to_string()
            }
            Err(_) => {
                (node, up) = (None, None);
                "no answer within 5 s".into()
            }
        };
        if Instant::now() > deadline {
            bail!(
                "{} does not stream from {} on timeline {tli}: {why}",
                m.name(),
                upstream.name()
            );
        }
        cx.progress(
            step,
            format!("waiting for {} to follow timeline {tli}: {why}", m.name()),
        );
        // A server that died while starting never streams: say so now, with its log.
        if checks % 25 == 24 && m.server()?.state().await? != RunState::Running {
            bail!(
                "{} is not running ({why}); see its server log {}",
                m.name(),
                m.node.log_file.display()
            );
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// (walreceiver status and timeline on `m`, state of its row on `upstream`), (re)connecting
/// where a kept connection is missing or broke.
async fn follow_state(
    m: &Member,
    upstream: &Member,
    node: &mut Option<tokio_postgres::Client>,
    up: &mut Option<tokio_postgres::Client>,
) -> Result<(Option<(String, i32)>, Option<String>)> {
    async fn kept<'a>(
        slot: &'a mut Option<tokio_postgres::Client>,
        ep: &Endpoint,
    ) -> Result<&'a tokio_postgres::Client> {
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = Some(connect(ep).await?);
        }
        Ok(slot.as_ref().expect("connected"))
    }
    let receiver = kept(node, &m.endpoint())
        .await?
        .query_opt("SELECT status, received_tli FROM pg_stat_wal_receiver", &[])
        .await
        .inspect_err(|_| *node = None)?
        .map(|r| (r.get(0), r.get(1)));
    if receiver.is_none() {
        return Ok((None, None));
    }
    let row = kept(up, &upstream.endpoint())
        .await?
        .query_opt(
            "SELECT state FROM pg_stat_replication WHERE application_name = $1
              ORDER BY backend_start DESC LIMIT 1",
            &[&m.name()],
        )
        .await
        .inspect_err(|_| *up = None)?
        .map(|r| r.get(0));
    Ok((receiver, row))
}

#[async_trait]
impl Step for Reverse {
    fn id(&self) -> String {
        "reverse".into()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.0.from.host_label(),
            action: format!("pg_ctl start -D {} (as a standby of {})", self.0.from.node.data_dir.display(), self.0.to.name()),
            proof: format!(
                "pg_stat_wal_receiver on {} streaming with received_tli = the new timeline, and a streaming row in pg_stat_replication on {}",
                self.0.from.name(),
                self.0.to.name()
            ),
            undo: "none (after the point of no return)".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn apply(&self, cx: &Cx) -> Result<Value> {
        let t = Instant::now();
        let tli = new_timeline(cx)?;
        let m = self.0.demoted();
        let server = m.server()?;
        if server.state().await? != RunState::Running {
            // Not `pg_ctl start -w`: streaming, waited for below, is the stronger proof, and
            // it comes sooner than pg_ctl's 100 ms polling notices the server is up.
            server.launch(&m.node.log_file).await?;
        }
        wait_following(&m, &self.0.to, tli, Duration::from_secs(60), cx, "reverse").await.map_err(|e| {
            anyhow!(
                "{e}; {to} is the primary and keeps serving. {from} cannot follow it: re-sync it with pg_rewind \
                 (pg_rewind -D {dir} --source-server='<conninfo of {to}>', then re-apply port, cluster_name and primary_slot_name) \
                 or re-clone it, then run `migrate resume`",
                to = self.0.to.name(),
                from = self.0.from.name(),
                dir = m.node.data_dir.display()
            )
        })?;
        Ok(json!({ "timeline": tli, "ms": Direction::ms(t) }))
    }
}

// ---------------------------------------------------------------------------------------------

/// After the point of no return a route failure cannot be undone, so each provider call is
/// retried with backoff before the run stops for the operator.
const ROUTE_BACKOFF_MS: [u64; 5] = [500, 1000, 2000, 4000, 8000];

async fn with_retries<T, F, Fut>(cx: &Cx, step: &str, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = ROUTE_BACKOFF_MS.iter();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => match tries.next() {
                Some(ms) => {
                    cx.progress(step, format!("{what} failed ({e:#}); retrying in {ms} ms"));
                    tokio::time::sleep(Duration::from_millis(*ms)).await;
                }
                None => {
                    return Err(e.context(format!(
                        "{what}: still failing after {} retries",
                        ROUTE_BACKOFF_MS.len()
                    )))
                }
            },
        }
    }
}

/// What a route points at, for a failure message (the provider may be what is failing).
async fn where_it_points(r: &dyn crate::route::Router) -> String {
    match r.current().await {
        Ok(v) => format!("{} still points at {v}", r.describe()),
        Err(e) => format!("{} cannot even be read ({e:#})", r.describe()),
    }
}

/// Point every route at the new primary and verify the routes that do not hold clients
/// through their application-facing endpoint (a holding route, PgBouncer, is verified through
/// after the release: while paused it would block). Without a route: verify the new primary
/// directly.
pub struct VerifyPrimary(pub Direction);

#[async_trait]
impl Step for VerifyPrimary {
    fn id(&self) -> String {
        "route".into()
    }
    fn describe(&self) -> Description {
        let routers = self.0.routers().unwrap_or_default();
        if routers.is_empty() {
            return Description {
                host: self.0.to.host_label(),
                action: "no route configured: connect to the new primary directly".into(),
                proof: "pg_is_in_recovery() = false; same system identifier".into(),
                undo: "nothing".into(),
            };
        }
        Description {
            host: routers
                .iter()
                .map(|r| r.describe())
                .collect::<Vec<_>>()
                .join("; "),
            action: format!(
                "point each route at {} (retried with backoff), then verify it",
                self.0.to.name()
            ),
            proof: "the provider shows the new target; a connection through the route reaches the new primary, writable"
                .into(),
            undo: format!("the switchback points each route back at {}", self.0.from.name()),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, cx: &Cx) -> Result<Value> {
        let t = Instant::now();
        let routers = self.0.routers()?;
        if !routers.is_empty() {
            let (from, to) = (&self.0.from.node, &self.0.to.node);
            let mut pointed = Vec::new();
            for r in &routers {
                let what = format!("point {} at {}", r.describe(), to.name);
                let now = match with_retries(cx, "route", &what, || r.point(from, to)).await {
                    Ok(v) => v,
                    Err(e) => bail!("{e:#}. {}", where_it_points(r.as_ref()).await),
                };
                let verified = if r.holds() {
                    Value::Null
                } else {
                    let what = format!("verify {} reaches {}", r.describe(), to.name);
                    match with_retries(cx, "route", &what, || r.verify(to)).await {
                        Ok(v) => v,
                        Err(e) => bail!("{e:#}. {}", where_it_points(r.as_ref()).await),
                    }
                };
                pointed
                    .push(json!({ "route": r.describe(), "points_at": now, "verified": verified }));
            }
            return Ok(
                json!({ "primary": self.0.to.name(), "routes": pointed, "ms": Direction::ms(t) }),
            );
        }
        let c = connect(&self.0.to.endpoint()).await?;
        let r = c
            .query_one(
                "SELECT pg_is_in_recovery(), system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await?;
        if r.get::<_, bool>(0) {
            bail!("{} is still in recovery", self.0.to.name());
        }
        Ok(
            json!({ "primary": self.0.to.name(), "system_identifier": r.get::<_, String>(1), "ms": Direction::ms(t) }),
        )
    }
}

/// Let clients write again (with a holding route, the release; without one, the instant the
/// new primary was verified), then verify each holding route through itself.
pub struct Release(pub Direction);

#[async_trait]
impl Step for Release {
    fn id(&self) -> String {
        "release".into()
    }
    fn describe(&self) -> Description {
        Description {
            host: "every route".into(),
            action: "release held clients (PgBouncer: RESUME db), then connect through each holding route"
                .into(),
            proof: "through the route: pg_is_in_recovery() = false on the new primary's port"
                .into(),
            undo: "nothing".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, cx: &Cx) -> Result<Value> {
        let t = Instant::now();
        let routers = self.0.routers()?;
        for r in &routers {
            let what = format!("release clients at {}", r.describe());
            with_retries(cx, "release", &what, || r.release()).await?;
        }
        let released_at = Utc::now();
        // Inside the pause: up to the release; the verification after it is not.
        let ms = Direction::ms(t);
        let mut verified = Vec::new();
        for r in routers.iter().filter(|r| r.holds()) {
            let to = &self.0.to.node;
            let what = format!("verify {} reaches {}", r.describe(), to.name);
            let v = match with_retries(cx, "release", &what, || r.verify(to)).await {
                Ok(v) => v,
                Err(e) => bail!("{e:#}. {}", where_it_points(r.as_ref()).await),
            };
            verified.push(json!({ "route": r.describe(), "verified": v }));
        }
        Ok(json!({ "released_at": released_at, "verified": verified, "ms": ms }))
    }
}

/// Every other standby follows the new timeline (cascades through the new primary reconnect
/// after its promotion).
pub struct Followers(pub Direction);

#[async_trait]
impl Step for Followers {
    fn id(&self) -> String {
        "followers".into()
    }
    fn describe(&self) -> Description {
        Description {
            host: self
                .0
                .followers
                .iter()
                .map(|m| m.name().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            action: "CHECKPOINT on the new primary (P6/P7); wait until each standby streams on the new timeline".into(),
            proof: "pg_stat_wal_receiver.received_tli = the new timeline, streaming".into(),
            undo: "nothing".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, cx: &Cx) -> Result<Value> {
        let t = Instant::now();
        let tli = new_timeline(cx)?;
        // Kept out of the promotion, which is inside the write pause: the control file shows
        // the new timeline only after a checkpoint (P6), and pg_rewind against this primary
        // needs it (P7).
        connect(&self.0.to.endpoint())
            .await?
            .batch_execute("CHECKPOINT")
            .await
            .context("CHECKPOINT on the new primary")?;
        for f in &self.0.followers {
            let upstream_name = f.node.upstream.clone().unwrap_or_default();
            let upstream = if upstream_name == self.0.from.name() {
                self.0.demoted()
            } else if upstream_name == self.0.to.name() {
                self.0.to.clone()
            } else {
                self.0
                    .followers
                    .iter()
                    .find(|m| m.name() == upstream_name)
                    .cloned()
                    .ok_or_else(|| anyhow!("no upstream {upstream_name}"))?
            };
            wait_following(f, &upstream, tli, Duration::from_secs(120), cx, "followers").await?;
        }
        Ok(json!({ "timeline": tli, "ms": Direction::ms(t) }))
    }
}

// ---------------------------------------------------------------------------------------------

/// The cutover certificate: the evidence and the timings, as a JSON file in the state directory.
pub struct Certificate {
    pub d: Direction,
    pub state_dir: PathBuf,
    pub operation: String,
}

pub fn certificate_path(state_dir: &std::path::Path, run_id: &str) -> PathBuf {
    state_dir.join(format!("certificate-{run_id}.json"))
}

#[async_trait]
impl Step for Certificate {
    fn id(&self) -> String {
        "certificate".into()
    }
    fn describe(&self) -> Description {
        Description {
            host: "local".into(),
            action: format!(
                "write {}",
                certificate_path(&self.state_dir, "<run id>").display()
            ),
            proof: "the file exists".into(),
            undo: "nothing".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, cx: &Cx) -> Result<Value> {
        let ms = |s: &str| cx.output(s).and_then(|o| o["ms"].as_u64());
        let at = |s: &str, k: &str| -> Result<DateTime<Utc>> {
            serde_json::from_value(out(cx, s)?[k].clone())
                .with_context(|| format!("{s} recorded no {k}"))
        };
        // The write pause starts when clients are held (or, without a route, fenced).
        let fenced = at("hold", "held_at").or_else(|_| at("fence", "fenced_at"))?;
        let released = at("release", "released_at")?;
        let proof = out(cx, "proof")?;
        let promote = out(cx, "promote")?;
        let cert = json!({
            "run_id": cx.run_id,
            "operation": self.operation,
            "from": self.d.from.name(),
            "to": self.d.to.name(),
            "shutdown_checkpoint_lsn": proof["checkpoint_lsn"],
            "old_timeline": proof["timeline"],
            "new_timeline": promote["timeline"],
            "received_lsn": proof["receive_lsn"],
            "replayed_lsn": proof["replay_lsn"],
            "fenced_at": fenced,
            "released_at": released,
            "write_pause_ms": (released - fenced).num_milliseconds(),
            "phases_ms": {
                "hold": ms("hold"), "fence": ms("fence"), "stop": ms("stop"), "proof": ms("proof"), "stage": ms("stage"),
                "promote": ms("promote"), "reverse": ms("reverse"), "route": ms("route"), "release": ms("release"),
                "followers": ms("followers"),
            },
        });
        let path = certificate_path(&self.state_dir, &cx.run_id);
        crate::host::local::write_atomic(
            &path,
            serde_json::to_string_pretty(&cert)?.as_bytes(),
            0o600,
            None,
        )?;
        Ok(json!({ "path": path, "write_pause_ms": cert["write_pause_ms"] }))
    }
}
