//! `migrate rehearse`: the whole migration on the embedded lab, under a writer, measured.
//!
//! The lab comes up, `app` is grown to the requested size, a writer commits numbered rows
//! through the application endpoint (PgBouncer), and the real commands run as child processes
//! of this binary, exactly as an operator runs them: `replicate`, `plan`, `cutover`,
//! `rollback`. After each switchover every acknowledged commit is looked up on every node.

pub mod fault;
pub mod html;
pub mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};

use crate::engine::Outcome;
use crate::lab::workload::{grow_app, missing_acks, Ack, Writer};
use crate::lab::Lab;
use crate::pg::{connect, Endpoint, Lsn};
use crate::steps::switchover::CertificateDoc;
use crate::steps::StepId;
use fault::{
    crash_server, install_traffic_switch, resume_server, step_started, step_succeeded, stop_server,
    traffic_switch_route, Fault, FaultReport, JournalWatch, RunSummary,
};
use report::{after_release, client_gaps, error_kinds, longest_gap, quantile, Report, Switch};

#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub base_port: u16,
    pub layout: crate::lab::Layout,
    pub hosts: crate::lab::Hosts,
    /// A compose lab's PostgreSQL major.
    pub pg_major: Option<u32>,
    pub scale_mb: u64,
    pub clients: i32,
    /// Pause between one client's commits.
    pub pace: Duration,
    pub keep: bool,
    /// This binary, to run the commands as an operator would.
    pub exe: PathBuf,
    /// A fault to inject during the run.
    pub fault: Option<Fault>,
    /// The WAN between the ssh lab's places.
    pub wan: Option<crate::lab::wan::Wan>,
    /// Clone from a pgBackRest repository the lab makes.
    pub pgbackrest: bool,
}

/// The lab's target node, which the faults hit.
const TARGET: &str = "new";
const FAULT_PROOF_TIMEOUT_S: u64 = 10;
/// The hold's time limit for the idle-in-transaction fault (the default is 10 s).
const FAULT_HOLD_TIMEOUT_S: u64 = 2;
/// How long a crashed target stays down.
const CRASH_DOWNTIME_S: u64 = 3;
/// How long a WAN link stays cut during catch-up.
const CUT_S: u64 = 6;

/// Progress notes for the UI layer (the library never prints).
pub type Notes<'a> = &'a (dyn Fn(&str) + Sync);

struct Rehearsal<'a> {
    opts: &'a Options,
    lab: Lab,
    spec: PathBuf,
    logs: PathBuf,
    note: Notes<'a>,
}

pub async fn run(opts: &Options, note: Notes<'_>) -> Result<Report> {
    if let Some(f) = opts.fault {
        if f.cut_link().is_some() && opts.hosts != crate::lab::Hosts::Ssh {
            bail!(
                "--fault {} cuts a WAN link between the sites of the lab of separate hosts: add --hosts ssh",
                f.name()
            );
        }
    }
    if opts.wan.is_some() && opts.hosts != crate::lab::Hosts::Ssh {
        // Said before a lab is made: the shaping would only fail once the lab is up.
        bail!("--rtt, --bandwidth and --loss shape the links between the sites of the lab of separate hosts: add --hosts ssh");
    }
    if opts.dir.join("lab-state.json").exists() {
        bail!(
            "{} holds a lab already; give an empty or new directory (--dir)",
            opts.dir.display()
        );
    }
    let lab = Lab::new_with_major(
        &opts.dir,
        opts.base_port,
        opts.layout,
        opts.hosts,
        opts.pg_major,
    )?;
    let r = Rehearsal {
        opts,
        spec: lab.spec_path(),
        logs: opts.dir.join("logs"),
        lab,
        note,
    };
    let result = r.drive().await;
    if !opts.keep {
        if r.lab.compose.is_some() {
            // The containers go with `down`: their servers' logs stay in DIR/logs.
            r.keep_server_logs().await;
        }
        note("lab down");
        if let Err(e) = r.lab.down().await {
            note(&format!("warning: lab down: {e:#}"));
        } else if let Err(e) = r.lab.unregister() {
            note(&format!(
                "warning: removing the lab's clusters from /etc/postgresql: {e:#}"
            ));
        } else if r.lab.compose.is_some() {
            note("the lab's containers and network are removed (the data was in them)");
        } else if result.is_ok() {
            // A rehearsal that passed leaves its logs and report, not gigabytes of clusters; a
            // failed one keeps everything for the post-mortem.
            match r.lab.remove_data() {
                Ok(bytes) => note(&format!(
                    "removed the lab's data directories ({}); logs kept in {}",
                    crate::units::format_bytes(bytes),
                    r.logs.display()
                )),
                Err(e) => note(&format!("warning: removing the lab's data: {e:#}")),
            }
        }
    }
    result
}

impl Rehearsal<'_> {
    async fn drive(&self) -> Result<Report> {
        let o = self.opts;
        (self.note)(&format!("lab up in {}", o.dir.display()));
        let up = self.lab.up().await.context("lab up")?;
        for n in &up.notes {
            (self.note)(n);
        }
        if let Some(w) = &o.wan {
            (self.note)(&format!(
                "WAN: {} ms round trip on every link between places",
                w.rtt_us as f64 / 1000.0
            ));
            self.lab.shape(w).await?;
        }
        std::fs::create_dir_all(&self.logs)?;
        if o.scale_mb > 0 {
            (self.note)(&format!("grow app to about {} MB", o.scale_mb));
            grow_app(&self.lab.endpoint("old", "app"), o.scale_mb).await?;
        }
        if o.pgbackrest {
            (self.note)("pgBackRest repository: WAL archiving on old, a full backup");
            self.lab.seed_pgbackrest().await?;
        }
        // After anything that rewrites the lab's spec.
        self.prepare_fault()?;
        (self.note)(&format!("writer: {} clients through PgBouncer", o.clients));
        let writer = Writer::start(vec![self.lab.app_endpoint()], o.clients, o.pace);
        // A WAN fault is also watched for two primaries: every node asked every 50 ms from the
        // bastion (a node the bastion cannot reach counts as not writable there).
        let wan_sampler = o.fault.filter(|f| f.cut_link().is_some()).map(|_| {
            WritableSampler::start(
                crate::lab::NODES
                    .iter()
                    .map(|n| self.lab.endpoint(n.name, "postgres"))
                    .collect(),
            )
        });
        let mut fault: Option<(FaultReport, DateTime<Utc>, DateTime<Utc>)> = None;

        let t = Instant::now();
        if let Some(f @ (Fault::KillTargetDuringCatchup | Fault::CutLinkDuringCatchup)) = o.fault {
            fault = Some(self.replicate_with_fault(f).await?);
        } else {
            self.replicate().await?;
        }
        let replicate_ms = t.elapsed().as_millis() as u64;
        // The replicate run's journal stays current until the next run starts.
        let replicate_phases_ms = match crate::engine::replay::load(&self.state_dir()?)? {
            Some(run) => report::replicate_phases(&run.state),
            None => Default::default(),
        };
        let t = Instant::now();
        self.step("plan", &["plan"]).await?;
        let plan_ms = t.elapsed().as_millis() as u64;

        let (c0, c1, cutover_ms) = match o.fault {
            Some(
                f @ (Fault::StopTargetAfterFence
                | Fault::RouteFailure
                | Fault::IdleInTransactionClient
                | Fault::HangTarget
                | Fault::RestartOldAfterProof
                | Fault::KillTargetDuringStage
                | Fault::CutLinkBeforeProof
                | Fault::CutToolFromOldDc),
            ) => {
                fault = Some(self.aborted_cutover(f, &writer).await?);
                self.cutover().await?
            }
            Some(Fault::CutLinkAfterPromote) => {
                let (report, c0, c1, ms) = self.cutover_cut_after_promote(&writer).await?;
                fault = Some((report, c0, c1));
                (c0, c1, ms)
            }
            Some(Fault::OldCannotFollow) => {
                let (report, c0, c1, ms) = self.cutover_old_cannot_follow(&writer).await?;
                fault = Some((report, c0, c1));
                (c0, c1, ms)
            }
            Some(Fault::CrashToolAfterPromote) => {
                let (report, c0, c1, ms) = self.cutover_with_tool_crash().await?;
                fault = Some((report, c0, c1));
                (c0, c1, ms)
            }
            _ => self.cutover().await?,
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let acks = writer.report_so_far();
        let cutover_missing = self.missing_everywhere("new", &acks.acks).await?;
        let r0 = Utc::now();
        let t = Instant::now();
        (self.note)("rollback (switch back to old)");
        self.step("rollback", &["rollback", "--yes"]).await?;
        let rollback_ms = t.elapsed().as_millis() as u64;
        let r1 = Utc::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let report = writer.stop().await;
        (self.note)("check every acknowledged commit on every node");
        let rollback_missing = self.missing_everywhere("old", &report.acks).await?;
        if o.fault == Some(Fault::PromoteTargetExternally) {
            fault = Some(self.target_promoted_externally().await?);
        }

        if let Some(sampler) = wan_sampler {
            let most = sampler.stop().await;
            if let Some((f, _, _)) = fault.as_mut() {
                f.recovery.push(format!(
                    "sampled every 50 ms from the bastion through the whole run: at most {most} writable node(s) at once"
                ));
                f.as_expected &= most <= 1;
            }
        }
        let certs = self.certificates()?;
        let cert = |op: &str| certs.iter().rev().find(|c| c.operation == op).cloned();
        let cut_errors: Vec<String> = errors_between(&report.errors, &report.error_times, c0, c1);
        let back_errors: Vec<String> = errors_between(&report.errors, &report.error_times, r0, r1);
        let switch = |from, to, ms, missing, cert: Option<CertificateDoc>, errors: Vec<String>| {
            let gaps = client_gaps(&report.acks, from, to);
            Switch {
                duration_ms: ms,
                write_pause_ms: longest_gap(&report.acks, from, to),
                client_pause_p50_ms: quantile(&gaps, 0.5),
                client_pause_p99_ms: quantile(&gaps, 0.99),
                client_pause_max_ms: gaps.iter().copied().fold(0.0, f64::max),
                certificate_pause_ms: cert.as_ref().map(|c| c.write_pause_ms),
                after_release_ms: cert
                    .as_ref()
                    .and_then(|c| after_release(&report.acks, c.released_at)),
                acked: report
                    .acks
                    .iter()
                    .filter(|a| a.at >= from && a.at <= to)
                    .count(),
                errors: errors.len(),
                error_kinds: error_kinds(&errors),
                missing,
                phases_ms: cert
                    .as_ref()
                    .map(CertificateDoc::timed_phases)
                    .unwrap_or_default(),
            }
        };
        let cutover = switch(
            c0,
            c1,
            cutover_ms,
            cutover_missing,
            cert("cutover"),
            cut_errors,
        );
        let rollback = switch(
            r0,
            r1,
            rollback_ms,
            rollback_missing.clone(),
            cert("switchback"),
            back_errors,
        );
        let ack_times: Vec<DateTime<Utc>> = report.acks.iter().map(|a| a.at).collect();
        let mut timelines = Vec::new();
        for (name, window, sw, c) in [
            ("cutover", (c0, c1), &cutover, cert("cutover")),
            ("rollback", (r0, r1), &rollback, cert("switchback")),
        ] {
            let steps = match &c {
                Some(c) => self.step_times(&c.run_id),
                None => Vec::new(),
            };
            if let Some(mut t) = html::timeline(name, &ack_times, window, &steps) {
                t.switch = sw.clone();
                t.certificate = c;
                timelines.push(t);
            }
        }
        Ok(Report {
            dir: o.dir.display().to_string(),
            clients: o.clients,
            scale_mb: o.scale_mb,
            replicate_ms,
            replicate_phases_ms,
            plan_ms,
            cutover,
            rollback,
            acked_total: report.acks.len(),
            missing_at_end: rollback_missing,
            timelines,
            fault: fault.map(|(mut f, from, to)| {
                f.write_pause_ms = longest_gap(&report.acks, from, to);
                f.errors = errors_between(&report.errors, &report.error_times, from, to).len();
                f
            }),
        })
    }

    /// Copy each node's server log into the rehearsal's logs (`<node>-server.log`); best
    /// effort, for the post-mortem.
    async fn keep_server_logs(&self) {
        for n in crate::lab::NODES {
            let host = self.lab.node_host(n.name);
            if let Ok(text) = host.read_file(&self.lab.server_log(n.name)).await {
                let _ = std::fs::create_dir_all(&self.logs);
                let _ = std::fs::write(self.logs.join(format!("{}-server.log", n.name)), text);
            }
        }
    }

    /// SIGQUIT to the target's postmaster (an immediate shutdown: no checkpoint), waiting
    /// until it is gone; in a compose lab, inside its container.
    async fn crash_target(&self) -> Result<i32> {
        match &self.lab.compose {
            Some(c) => c.signal_postmaster(TARGET, "QUIT").await,
            None => crash_server(&self.lab.data_dir(TARGET)).await,
        }
    }

    /// SIGSTOP to the target's postmaster: it takes connections and answers nothing.
    async fn freeze_target(&self) -> Result<i32> {
        match &self.lab.compose {
            Some(c) => c.signal_postmaster(TARGET, "STOP").await,
            None => stop_server(&self.lab.data_dir(TARGET)),
        }
    }

    async fn thaw_target(&self, pid: i32) -> Result<()> {
        match &self.lab.compose {
            Some(c) => c.signal_postmaster(TARGET, "CONT").await.map(|_| ()),
            None => resume_server(pid),
        }
    }

    /// Each finished step of a run and when it ran, from its journal (kept as
    /// `journal-<run>.jsonl` once the next run starts); empty if it cannot be read.
    fn step_times(&self, run_id: &str) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
        let Ok(dir) = self.state_dir() else {
            return Vec::new();
        };
        let loaded = [format!("journal-{run_id}.jsonl"), "journal.jsonl".into()]
            .iter()
            .filter_map(|f| crate::engine::replay::load_file(&dir.join(f)).ok())
            .find(|l| l.state.run_id == run_id);
        loaded
            .map(|l| {
                l.state
                    .steps
                    .iter()
                    .filter_map(|s| Some((s.id.clone(), s.started_at?, s.finished_at?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn state_dir(&self) -> Result<PathBuf> {
        Ok(crate::spec::load(&self.spec)?.state_dir)
    }

    fn switch_dir(&self) -> PathBuf {
        self.opts.dir.join("traffic-switch")
    }

    /// Spec changes a fault needs, made before anything runs.
    fn prepare_fault(&self) -> Result<()> {
        let edit = |f: &dyn Fn(String) -> Result<String>| -> Result<()> {
            let text = std::fs::read_to_string(&self.spec)?;
            std::fs::write(&self.spec, f(text)?)?;
            Ok(())
        };
        match self.opts.fault {
            Some(Fault::IdleInTransactionClient) => edit(&|t| {
                if !t.contains("[cutover]\n") {
                    bail!("the lab spec has no [cutover] table");
                }
                Ok(t.replace(
                    "[cutover]\n",
                    &format!("[cutover]\nhold_timeout = \"{FAULT_HOLD_TIMEOUT_S}s\"\n"),
                ))
            }),
            // A shorter time box than the lab's 30 s: the same path, a quicker rehearsal.
            Some(
                Fault::StopTargetAfterFence
                | Fault::HangTarget
                | Fault::KillTargetDuringStage
                | Fault::CutLinkBeforeProof
                | Fault::CutToolFromOldDc
                | Fault::CutLinkAfterPromote,
            ) => edit(&|t| {
                let from = format!("proof_timeout = \"{}s\"", crate::lab::PROOF_TIMEOUT_S);
                if !t.contains(&from) {
                    bail!("the lab spec has no `{from}` to shorten");
                }
                Ok(t.replace(
                    &from,
                    &format!("proof_timeout = \"{FAULT_PROOF_TIMEOUT_S}s\""),
                ))
            }),
            Some(Fault::RouteFailure) => {
                let plugin = install_traffic_switch(&self.switch_dir(), "old")?;
                edit(&|t| Ok(t + &traffic_switch_route(&plugin)))
            }
            _ => Ok(()),
        }
    }

    /// `replicate`, with the target crashed (or the link to it cut) as soon as the catch-up
    /// step begins, and started again (restored) a few seconds later.
    async fn replicate_with_fault(
        &self,
        fault: Fault,
    ) -> Result<(FaultReport, DateTime<Utc>, DateTime<Utc>)> {
        let from = Utc::now();
        let state_dir = self.state_dir()?;
        (self.note)(&format!("replicate, with fault {}", fault.name()));
        let mut child = self
            .command("replicate", &["replicate", "--yes"], &[])
            .await?;
        self.wait_for_instant(
            &mut child,
            "replicate",
            "its catch-up step",
            &step_started(StepId::Catchup),
        )
        .await?;
        let mut f = match fault.cut_link() {
            Some((a, b)) => {
                self.lab.set_link(a, b, true).await?;
                (self.note)(&format!("fault: cut the link {a}-{b} during catch-up"));
                self.fault_report(
                    fault,
                    format!("cut the link between {a} and {b} (every packet dropped at both ends) as `replicate` began step catchup"),
                )
            }
            None => {
                let pid = self.crash_target().await?;
                (self.note)("fault: crashed the target (new) during catch-up");
                self.fault_report(
                    fault,
                    format!(
                        "crashed {TARGET} (SIGQUIT to postmaster {pid}: immediate shutdown, no checkpoint) as `replicate` began step catchup"
                    ),
                )
            }
        };
        let outage = if fault.cut_link().is_some() {
            CUT_S
        } else {
            CRASH_DOWNTIME_S
        };
        tokio::time::sleep(Duration::from_secs(outage)).await;
        let waited = child.try_wait()?.is_none();
        f.recovery.push(format!(
            "after {outage} s `replicate` was {}",
            if waited {
                "still waiting at the catch-up gate"
            } else {
                "no longer running"
            }
        ));
        let mut seen = true;
        if let Some((a, b)) = fault.cut_link() {
            // What an operator sees meanwhile: the hop down with its reason (the gate's
            // progress in replicate's output) and the WAL retained for the target.
            let said = std::fs::read_to_string(self.log("replicate")).unwrap_or_default();
            let down = said
                .lines()
                .rev()
                .find(|l| l.contains("may be cut"))
                .map(str::to_string);
            let status = self
                .command("status-during-cut", &["status", "--json"], &[])
                .await?
                .wait()
                .await?;
            let text = std::fs::read_to_string(self.log("status-during-cut")).unwrap_or_default();
            let retained = retained_bytes(&text);
            f.recovery.push(match &down {
                Some(l) => format!("the gate said: {}", l.trim()),
                None => "the gate never reported the hop down".into(),
            });
            f.recovery.push(match retained {
                Some(b) => format!(
                    "`migrate status` ({status}) showed {} of WAL retained by the slots",
                    crate::units::format_bytes(b)
                ),
                None => format!("`migrate status` ({status}) showed no retained WAL"),
            });
            seen = down.is_some() && status.success() && retained.is_some_and(|b| b > 0);
            self.lab.set_link(a, b, false).await?;
            f.recovery.push(format!("restored the link {a}-{b}"));
        } else {
            self.lab
                .server(TARGET)
                .start(&self.lab.server_log(TARGET), Duration::from_secs(120))
                .await
                .context("start the crashed target again")?;
            f.recovery.push(format!(
                "started {TARGET} again (crash recovery, then streaming)"
            ));
        }
        let status = child.wait().await?;
        f.exit_code = status.code();
        f.run = RunSummary::read(&state_dir)?;
        f.as_expected =
            waited && seen && status.success() && f.run.outcome == Some(Outcome::Completed);
        if !status.success() {
            f.recovery.push("`migrate resume`".into());
            self.step("resume", &["resume"]).await?;
            f.run = RunSummary::read(&state_dir)?;
        }
        Ok((f, from, Utc::now()))
    }

    /// A cutover the fault must make abort before the point of no return; then the rehearsal
    /// checks the old primary took writes again, undoes the fault and plans again.
    async fn aborted_cutover(
        &self,
        fault: Fault,
        writer: &Writer,
    ) -> Result<(FaultReport, DateTime<Utc>, DateTime<Utc>)> {
        let from = Utc::now();
        let state_dir = self.state_dir()?;
        let outage = self.switch_dir().join("outage-hold");
        if fault == Fault::RouteFailure {
            std::fs::write(&outage, "")?;
        }
        // A client through PgBouncer in an open transaction, as an application that forgot to
        // commit: PgBouncer's PAUSE waits for it.
        let idle = if fault == Fault::IdleInTransactionClient {
            let c = connect(&self.lab.app_endpoint()).await?;
            c.batch_execute("SET application_name = 'rehearsal-idle-client'")
                .await?;
            c.batch_execute("BEGIN").await?;
            c.batch_execute("INSERT INTO ledger (client, seq) VALUES (-1, 1)")
                .await?;
            Some(c)
        } else {
            None
        };
        (self.note)(&format!("cutover, with fault {}", fault.name()));
        let mut hung = None;
        let (status, injected) = if fault == Fault::RestartOldAfterProof {
            self.cutover_paused_before("cutover-fault", StepId::Stage)
                .await?;
            self.lab
                .server("old")
                .start(&self.lab.server_log("old"), Duration::from_secs(120))
                .await
                .context("start the old primary by hand")?;
            let status = self
                .command("resume-fault", &["resume"], &[])
                .await?
                .wait()
                .await?;
            (
                status,
                "paused the cutover before stage (--keep-clients-held), started old by hand with pg_ctl start (it comes up as a primary), then `migrate resume`".to_string(),
            )
        } else if let Some(before) = paused_before(fault) {
            // Injected while the cutover waits before that step (its clients held), then
            // resumed: injected "as soon as the run journaled" the step before, a quick
            // cutover outran it (the stop and the proof were done before the fault landed).
            self.cutover_paused_before("cutover-fault-paused", before.clone())
                .await?;
            let what = match fault.cut_link() {
                Some((a, b)) => {
                    self.lab.set_link(a, b, true).await?;
                    format!("cut the link between {a} and {b} (every packet dropped at both ends)")
                }
                None if fault == Fault::HangTarget => {
                    let pid = self.freeze_target().await?;
                    hung = Some(pid);
                    format!("stopped {TARGET}'s postmaster with SIGSTOP (pid {pid}: it takes connections and answers nothing)")
                }
                None => {
                    let pid = self.crash_target().await?;
                    format!("stopped {TARGET} at once (SIGQUIT to postmaster {pid})")
                }
            };
            let status = self
                .command("cutover-fault", &["resume"], &[])
                .await?
                .wait()
                .await?;
            (
                status,
                format!(
                    "paused the cutover before {before} (--keep-clients-held), {what}, then `migrate resume`; proof_timeout {FAULT_PROOF_TIMEOUT_S} s"
                ),
            )
        } else {
            let go = self.lab.dir.join("go-stage");
            let _ = std::fs::remove_file(&go);
            let held_at_stage = [
                ("MIGRATE_WAIT_AT", format!("{}:before", StepId::Stage)),
                ("MIGRATE_WAIT_FILE", go.display().to_string()),
            ];
            let env: &[(&str, String)] = if fault == Fault::KillTargetDuringStage {
                &held_at_stage
            } else {
                &[]
            };
            let mut child = self
                .command(
                    "cutover-fault",
                    &["cutover", "--yes", "--force-window"],
                    env,
                )
                .await?;
            let injected = match fault {
                Fault::KillTargetDuringStage => {
                    self.wait_for_instant(
                        &mut child,
                        "cutover-fault",
                        "it began staging",
                        &step_started(StepId::Stage),
                    )
                    .await?;
                    let pid = self.crash_target().await?;
                    std::fs::write(&go, "")?;
                    format!(
                        "stopped {TARGET} at once (SIGQUIT to postmaster {pid}) when `cutover` journaled the start of step stage (held there until the crash)"
                    )
                }
                Fault::IdleInTransactionClient => format!(
                    "a client through PgBouncer (application rehearsal-idle-client) holds a transaction open (BEGIN; INSERT; no COMMIT) as the cutover begins; hold_timeout {FAULT_HOLD_TIMEOUT_S} s"
                ),
                _ => "the traffic switch (an exec route beside PgBouncer) answers every hold with an outage".to_string(),
            };
            (child.wait().await?, injected)
        };
        let mut f = self.fault_report(fault, injected);
        f.exit_code = status.code();
        f.run = RunSummary::read(&state_dir)?;
        // What the interrupted run said, before anything repairs it.
        let stopped_with = f.run.clone();
        if let Some((a, b)) = fault.cut_link() {
            self.lab.set_link(a, b, false).await?;
            f.recovery.push(format!("restored the link {a}-{b}"));
            if f.run.outcome.is_none() {
                // Stopped for the operator (an undo that could not reach the old primary):
                // with the link back, the operator finishes it as the error says: `rollback`
                // for a run that was rolling back, else `resume`.
                let log = std::fs::read_to_string(self.log("cutover-fault")).unwrap_or_default();
                let (name, args): (&str, &[&str]) = if log.contains("migrate rollback") {
                    ("rollback-undo", &["rollback", "--yes"])
                } else {
                    ("resume-undo", &["resume"])
                };
                let done = self.command(name, args, &[]).await?.wait().await?;
                f.recovery
                    .push(format!("`migrate {}` ({done}) to finish the undo", args[0]));
                f.run = RunSummary::read(&state_dir)?;
            }
        }
        let undone = |step: StepId| f.run.undone.contains(&step.to_string());
        let failed_at = |step: StepId| f.run.failed_step == Some(step.to_string());
        let named_idle = f
            .run
            .error
            .as_deref()
            .is_some_and(|e| e.contains("rehearsal-idle-client"));
        let run_ok = f.run.outcome == Some(Outcome::Aborted)
            && f.run.point_of_no_return.is_none()
            && undone(StepId::Hold)
            && match fault {
                Fault::StopTargetAfterFence | Fault::HangTarget => {
                    failed_at(StepId::Proof) && undone(StepId::Stop)
                }
                Fault::CutLinkBeforeProof => {
                    (failed_at(StepId::Stop) || failed_at(StepId::Proof)) && undone(StepId::Stop)
                }
                // Whatever step found the old primary out of reach, nothing was promoted and
                // everything done was undone.
                Fault::CutToolFromOldDc => {
                    stopped_with.point_of_no_return.is_none() && undone(StepId::Stop)
                }
                Fault::RestartOldAfterProof => failed_at(StepId::Stage) && undone(StepId::Stop),
                Fault::KillTargetDuringStage => failed_at(StepId::Stage) && undone(StepId::Stop),
                Fault::IdleInTransactionClient => failed_at(StepId::Hold) && named_idle,
                _ => failed_at(StepId::Hold),
            };
        if let Some(pid) = hung {
            self.thaw_target(pid).await?;
            f.recovery
                .push(format!("resumed {TARGET}'s postmaster (SIGCONT)"));
        }
        if let Some(c) = idle {
            c.batch_execute("COMMIT").await?;
            f.recovery
                .push("the idle client committed (its row is on old)".into());
        }
        let writable = self.takes_writes_again("old", writer).await;
        f.recovery.push(match &writable {
            Ok(()) => {
                "checked: old is a writable primary again and writes through PgBouncer go on".into()
            }
            Err(e) => format!("old did not take writes again: {e:#}"),
        });
        f.as_expected = !status.success() && run_ok && writable.is_ok();
        match fault {
            Fault::StopTargetAfterFence | Fault::KillTargetDuringStage => {
                self.lab
                    .server(TARGET)
                    .start(&self.lab.server_log(TARGET), Duration::from_secs(120))
                    .await
                    .context("start the stopped target again")?;
                f.recovery.push(format!("started {TARGET} again"));
            }
            Fault::RouteFailure => {
                std::fs::remove_file(&outage)?;
                f.recovery.push("ended the traffic switch's outage".into());
            }
            _ => {}
        }
        self.step("plan-again", &["plan"]).await?;
        f.recovery
            .push("`migrate plan` passed; then the cutover below".into());
        Ok((f, from, Utc::now()))
    }

    /// A cutover paused before the promotion, the old primary made unable to start (an
    /// invalid setting in its postgresql.auto.conf), then `resume`: clients must be released
    /// to the new primary and the run stop naming the repair; after the repair `resume`
    /// completes it.
    async fn cutover_old_cannot_follow(
        &self,
        writer: &Writer,
    ) -> Result<(FaultReport, DateTime<Utc>, DateTime<Utc>, u64)> {
        (self.note)("cutover, with the old primary unable to follow the new one");
        let c0 = Utc::now();
        let t = Instant::now();
        self.cutover_paused_before("cutover", StepId::Promote)
            .await?;
        // Through the node's host: in a compose lab the file is inside old's container.
        let old_host = self.lab.node_host("old");
        let auto = self.lab.data_dir("old").join("postgresql.auto.conf");
        let staged = String::from_utf8(old_host.read_file(&auto).await?)?;
        old_host
            .write_file(
                &auto,
                format!("{staged}shared_buffers = 'not a size'\n").as_bytes(),
                0o600,
                None,
            )
            .await?;
        let mut f = self.fault_report(
            Fault::OldCannotFollow,
            "paused the cutover before promote (--keep-clients-held), added an invalid setting to old's postgresql.auto.conf (it cannot start), then `migrate resume`".into(),
        );
        let first = self
            .command("resume", &["resume"], &[])
            .await?
            .wait()
            .await?;
        f.exit_code = first.code();
        let log = std::fs::read_to_string(self.log("resume")).unwrap_or_default();
        let named = log.contains("NO ROLLBACK PATH");
        let released = self.takes_writes_again("new", writer).await;
        f.recovery.push(match &released {
            Ok(()) => "checked: new is the primary and writes through PgBouncer go on".into(),
            Err(e) => format!("writes did not go on on new: {e:#}"),
        });
        old_host
            .write_file(&auto, staged.as_bytes(), 0o600, None)
            .await?;
        f.recovery
            .push("repaired old's postgresql.auto.conf, then `migrate resume`".into());
        self.resume_to_completion(&mut f, first, named && released.is_ok(), 1, "the repair")
            .await?;
        Ok((f, c0, Utc::now(), t.elapsed().as_millis() as u64))
    }

    /// A cutover whose datacenters lose each other right after the promotion: the old primary
    /// cannot stream from the new one, yet clients must be released to the new primary and
    /// the run stop naming it; with the link back `resume` completes the run.
    async fn cutover_cut_after_promote(
        &self,
        writer: &Writer,
    ) -> Result<(FaultReport, DateTime<Utc>, DateTime<Utc>, u64)> {
        let fault = Fault::CutLinkAfterPromote;
        let (a, b) = fault.cut_link().unwrap_or_default();
        (self.note)(&format!("cutover, with fault {}", fault.name()));
        let c0 = Utc::now();
        let t = Instant::now();
        let mut child = self
            .command("cutover", &["cutover", "--yes", "--force-window"], &[])
            .await?;
        self.wait_for_instant(
            &mut child,
            "cutover",
            "it promoted",
            &step_succeeded(StepId::Promote),
        )
        .await?;
        self.lab.set_link(a, b, true).await?;
        let mut f = self.fault_report(
            fault,
            format!("cut the link between {a} and {b} (every packet dropped at both ends) as soon as `cutover` journaled step promote; proof_timeout {FAULT_PROOF_TIMEOUT_S} s bounds the wait for the old primary"),
        );
        let first = child.wait().await?;
        f.exit_code = first.code();
        let log = std::fs::read_to_string(self.log("cutover")).unwrap_or_default();
        let named = log.contains("NO ROLLBACK PATH");
        let released = self.takes_writes_again("new", writer).await;
        f.recovery.push(match &released {
            Ok(()) => "checked: new is the primary and writes through PgBouncer go on".into(),
            Err(e) => format!("writes did not go on on new: {e:#}"),
        });
        self.lab.set_link(a, b, false).await?;
        f.recovery.push(format!("restored the link {a}-{b}"));
        // The old primary's walreceiver may still be in a connection attempt made while the
        // link was down (it gives up after connect_timeout and tries again 5 s later): an
        // operator resumes again when `resume` still finds it not streaming.
        self.resume_to_completion(
            &mut f,
            first,
            named && released.is_ok(),
            3,
            "the link came back",
        )
        .await?;
        Ok((f, c0, Utc::now(), t.elapsed().as_millis() as u64))
    }

    /// After a cutover that stopped past the promotion (`first`: exit 3 expected) and its
    /// repair: `resume`, run again while it still stops for the operator (up to `tries`), must
    /// complete the run. Sets `as_expected` (with `seen`: what the fault had to show).
    async fn resume_to_completion(
        &self,
        f: &mut FaultReport,
        first: std::process::ExitStatus,
        seen: bool,
        tries: usize,
        after: &str,
    ) -> Result<()> {
        let mut last = None;
        for i in 0..tries.max(1) {
            let st = self
                .command("resume", &["resume"], &[])
                .await?
                .wait()
                .await?;
            f.recovery.push(format!(
                "`migrate resume`{}: {st}",
                if i > 0 { " again" } else { "" }
            ));
            let stopped_again = st.code() == Some(3);
            last = Some(st);
            if !stopped_again {
                break;
            }
        }
        let second = last.context("resume ran")?;
        f.run = RunSummary::read(&self.state_dir()?)?;
        f.as_expected = first.code() == Some(3)
            && seen
            && second.success()
            && f.run.outcome == Some(Outcome::Completed);
        if !second.success() {
            bail!(
                "`migrate resume` after {after} failed ({second}); see {}",
                self.log("resume").display()
            );
        }
        Ok(())
    }

    /// Run a command that must end with `code`.
    /// `cutover --pause-before <step> --keep-clients-held`, which stops there with exit 3.
    async fn cutover_paused_before(&self, name: &str, step: StepId) -> Result<()> {
        let step = step.to_string();
        let args = [
            "cutover",
            "--yes",
            "--force-window",
            "--pause-before",
            &step,
            "--keep-clients-held",
        ];
        self.expect_exit(name, &args, 3).await
    }

    async fn expect_exit(&self, name: &str, args: &[&str], code: i32) -> Result<()> {
        let st = self.command(name, args, &[]).await?.wait().await?;
        if st.code() != Some(code) {
            bail!(
                "`migrate {}` ended {st}, not with exit code {code}; see {}",
                args.join(" "),
                self.log(name).display()
            );
        }
        Ok(())
    }

    /// After the measured switches: a cutover paused before its promotion, the target
    /// promoted from outside (`pg_promote()`, as an HA manager would), then `resume` and
    /// `rollback` as an operator might try. Both must stop for the operator; a sampler checks
    /// every 50 ms that never more than one node takes writes.
    async fn target_promoted_externally(
        &self,
    ) -> Result<(FaultReport, DateTime<Utc>, DateTime<Utc>)> {
        let from = Utc::now();
        let state_dir = self.state_dir()?;
        (self.note)("cutover, with the target promoted from outside before the tool's promotion");
        self.step("plan-before-promote-fault", &["plan"]).await?;
        let sampler = WritableSampler::start(vec![
            self.lab.endpoint("old", "app"),
            self.lab.endpoint(TARGET, "app"),
        ]);
        self.cutover_paused_before("cutover-promote-fault", StepId::Promote)
            .await?;
        connect(&self.lab.endpoint(TARGET, "postgres"))
            .await?
            .batch_execute("SELECT pg_promote(true, 30)")
            .await
            .context("promote the target from outside")?;
        let resume = self
            .command("resume-promote-fault", &["resume"], &[])
            .await?
            .wait()
            .await?;
        let mut f = self.fault_report(
            Fault::PromoteTargetExternally,
            format!("paused the cutover before promote (--keep-clients-held), promoted {TARGET} with pg_promote() from outside, then `migrate resume` and `migrate rollback`"),
        );
        f.exit_code = resume.code();
        f.run = RunSummary::read(&state_dir)?;
        // The refusal is a probe's (nothing was started, so nothing journaled as failed):
        // read what `resume` told the operator.
        let told = std::fs::read_to_string(self.log("resume-promote-fault")).unwrap_or_default();
        let refused = told.contains("already a writable primary");
        if let Some(line) = told
            .lines()
            .find(|l| l.contains("already a writable primary"))
        {
            f.recovery
                .insert(0, format!("`migrate resume` said: {}", line.trim()));
        }
        let rollback = self
            .command("rollback-promote-fault", &["rollback", "--yes"], &[])
            .await?
            .wait()
            .await?;
        f.recovery.push(format!(
            "`migrate rollback` ended with exit code {:?} (3: it refuses to restart old beside the promoted target)",
            rollback.code()
        ));
        let old_down =
            self.lab.server("old").state().await? != crate::pg::server::RunState::Running;
        f.recovery.push(if old_down {
            "checked: old stays down (staged as a standby of the promoted target)".into()
        } else {
            "old is running: it was restarted beside the promoted target".into()
        });
        let most = sampler.stop().await;
        f.recovery.push(format!(
            "sampled every 50 ms: at most {most} node(s) answered as a writable primary"
        ));
        f.recovery.push(format!(
            "left for the operator: {TARGET} is the primary, old is stopped, PgBouncer still holds its clients; `migrate lab down` clears the lab"
        ));
        f.as_expected = resume.code() == Some(3)
            && refused
            && rollback.code() == Some(3)
            && old_down
            && most <= 1;
        Ok((f, from, Utc::now()))
    }

    /// `cutover`, killed as soon as it journals the promotion, then `resume`.
    async fn cutover_with_tool_crash(
        &self,
    ) -> Result<(FaultReport, DateTime<Utc>, DateTime<Utc>, u64)> {
        let state_dir = self.state_dir()?;
        (self.note)("cutover, with the tool killed right after the promotion");
        let c0 = Utc::now();
        let t = Instant::now();
        let mut child = self
            .command("cutover", &["cutover", "--yes", "--force-window"], &[])
            .await?;
        let pid = child.id().unwrap_or_default();
        self.wait_for_instant(
            &mut child,
            "cutover",
            "the promotion",
            &step_succeeded(StepId::Promote),
        )
        .await?;
        child.start_kill()?;
        let status = child.wait().await?;
        let mut f = self.fault_report(
            Fault::CrashToolAfterPromote,
            format!("killed `migrate cutover` (SIGKILL to pid {pid}) as soon as it journaled step promote"),
        );
        f.exit_code = status.code();
        let at_crash = RunSummary::read(&state_dir)?;
        f.recovery.push(format!(
            "the journal at the crash: point of no return {}, run {}",
            at_crash
                .point_of_no_return
                .as_deref()
                .unwrap_or("not passed"),
            at_crash
                .outcome
                .map_or_else(|| "unfinished".into(), |o| crate::engine::label(&o))
        ));
        let resumed = self
            .command("resume", &["resume"], &[])
            .await?
            .wait()
            .await?;
        f.recovery.push(format!("`migrate resume`: {resumed}"));
        f.run = RunSummary::read(&state_dir)?;
        f.as_expected = status.code().is_none()
            && at_crash.outcome.is_none()
            && resumed.success()
            && f.run.outcome == Some(Outcome::Completed);
        if !resumed.success() {
            bail!(
                "`migrate resume` after the crash failed ({resumed}); see {}",
                self.log("resume").display()
            );
        }
        Ok((f, c0, Utc::now(), t.elapsed().as_millis() as u64))
    }

    /// Wait until the command logging to `name` journals what `wanted` accepts (the instant to
    /// inject a fault); an error naming its log if it ended first.
    async fn wait_for_instant(
        &self,
        child: &mut tokio::process::Child,
        name: &str,
        instant: &str,
        wanted: &dyn Fn(&crate::engine::journal::Event) -> bool,
    ) -> Result<()> {
        let watch = JournalWatch::new(&self.state_dir()?);
        if !watch.wait(child, Duration::from_secs(1800), wanted).await? {
            bail!(
                "the command ended before {instant}: the fault was not injected; see {}",
                self.log(name).display()
            );
        }
        Ok(())
    }

    fn fault_report(&self, fault: Fault, injected: String) -> FaultReport {
        FaultReport {
            name: fault.name().into(),
            injected,
            expected: fault.expected().into(),
            ..Default::default()
        }
    }

    /// The node is a primary, not fenced, and the writer's commits (through PgBouncer) go on.
    async fn takes_writes_again(&self, node: &str, writer: &Writer) -> Result<()> {
        let c = connect(&self.lab.endpoint(node, "app")).await?;
        let r = c
            .query_one(
                "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')",
                &[],
            )
            .await?;
        if r.get::<_, bool>(0) {
            bail!("{node} is in recovery");
        }
        if r.get::<_, String>(1) != "off" {
            bail!("{node} is still fenced (default_transaction_read_only is on)");
        }
        let before = writer.acked();
        let t = Instant::now();
        while writer.acked() < before + self.opts.clients as usize {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("no new acknowledged commit through PgBouncer in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Run `migrate <args> -f <spec>`; its output goes to logs/<name>.log.
    async fn command(
        &self,
        name: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(name))?;
        let mut cmd = tokio::process::Command::new(&self.opts.exe);
        cmd.args(args)
            .arg("-f")
            .arg(&self.spec)
            .env_remove("MIGRATE_SPEC")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn()
            .with_context(|| format!("run {} {}", self.opts.exe.display(), args.join(" ")))
    }

    async fn step(&self, name: &str, args: &[&str]) -> Result<()> {
        let st = self.command(name, args, &[]).await?.wait().await?;
        if !st.success() {
            bail!(
                "`migrate {}` failed ({st}); see {}",
                args.join(" "),
                self.log(name).display()
            );
        }
        Ok(())
    }

    async fn replicate(&self) -> Result<()> {
        (self.note)("replicate: clone the chain old → new → {new_replica, dr} and catch up");
        self.step("replicate", &["replicate", "--yes"]).await
    }

    async fn cutover(&self) -> Result<(chrono::DateTime<Utc>, chrono::DateTime<Utc>, u64)> {
        (self.note)("cutover (switch over to new)");
        let c0 = Utc::now();
        let t = Instant::now();
        self.step("cutover", &["cutover", "--yes", "--force-window"])
            .await?;
        Ok((c0, Utc::now(), t.elapsed().as_millis() as u64))
    }

    fn certificates(&self) -> Result<Vec<CertificateDoc>> {
        let spec = crate::spec::load(&self.spec)?;
        let mut out = Vec::new();
        for e in std::fs::read_dir(&spec.state_dir)? {
            let p = e?.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("certificate-"))
            {
                out.push(serde_json::from_slice(&std::fs::read(&p)?)?);
            }
        }
        out.sort_by_key(|c: &CertificateDoc| c.fenced_at);
        Ok(out)
    }

    /// Every acknowledged commit on the primary and, once they replayed its current WAL, on
    /// every standby: node → missing count.
    async fn missing_everywhere(
        &self,
        primary: &str,
        acks: &[Ack],
    ) -> Result<std::collections::BTreeMap<String, usize>> {
        let nodes = ["old", "new", "new_replica", "dr"];
        let p = self.lab.endpoint(primary, "app");
        let target: Lsn = connect(&p)
            .await?
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get::<_, String>(0)
            .parse()
            .map_err(|e: String| anyhow!(e))?;
        let mut out = std::collections::BTreeMap::new();
        for n in nodes {
            let ep = self.lab.endpoint(n, "app");
            if n != primary {
                wait_replayed(&ep, target, Duration::from_secs(120)).await?;
            }
            out.insert(n.to_string(), missing_acks(&ep, acks).await?.len());
        }
        Ok(out)
    }
}

fn errors_between(
    errors: &[String],
    times: &[chrono::DateTime<Utc>],
    from: chrono::DateTime<Utc>,
    to: chrono::DateTime<Utc>,
) -> Vec<String> {
    errors
        .iter()
        .zip(times)
        .filter(|(_, t)| **t >= from && **t <= to)
        .map(|(e, _)| e.clone())
        .collect()
}

/// Wait until `ep` (a standby) has replayed `lsn`.
/// The WAL retained by slots in `migrate status --json`'s output: the largest
/// `retained_bytes` anywhere in it (None: no JSON, or no such field).
pub fn retained_bytes(text: &str) -> Option<u64> {
    fn walk(v: &serde_json::Value, best: &mut Option<u64>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if k == "retained_bytes" {
                        if let Some(b) = x.as_u64() {
                            *best = Some(best.map_or(b, |c| c.max(b)));
                        }
                    }
                    walk(x, best);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, best)),
            _ => {}
        }
    }
    let start = text.find('{')?;
    let v: serde_json::Value = serde_json::Deserializer::from_str(&text[start..])
        .into_iter()
        .next()?
        .ok()?;
    let mut best = None;
    walk(&v, &mut best);
    best
}

pub async fn wait_replayed(ep: &Endpoint, lsn: Lsn, limit: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        let replayed = match connect(ep).await {
            Ok(c) => c
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn()::text, '0/0')",
                    &[],
                )
                .await
                .ok()
                .and_then(|r| r.get::<_, String>(0).parse::<Lsn>().ok()),
            Err(_) => None,
        };
        if replayed.is_some_and(|r| r >= lsn) {
            return Ok(());
        }
        if t.elapsed() > limit {
            bail!(
                "{} has not replayed {lsn} after {limit:?} (at {:?})",
                ep.name,
                replayed.map(|r| r.to_string())
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The default rehearsal directory: a new one under the system's temporary directory.
pub fn default_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for i in 0..1000u32 {
        let d = base.join(format!("migrate-rehearsal-{}-{}", std::process::id(), i));
        if !d.exists() {
            return Ok(d);
        }
    }
    bail!("no free rehearsal directory under {}", base.display())
}

/// Pure: the step a fault's cutover is paused before, for the fault to be in place when it
/// goes on (`None`: a fault injected at another moment, or none).
fn paused_before(fault: Fault) -> Option<StepId> {
    match fault {
        Fault::StopTargetAfterFence
        | Fault::HangTarget
        | Fault::CutLinkBeforeProof
        | Fault::CutToolFromOldDc => Some(StepId::Stop),
        _ => None,
    }
}

/// How close (ms, server clock) two answers of "writable" must be to count as at once.
const AT_ONCE_MS: f64 = 50.0;

/// Pure: the most answers (their server times, ms) that fall within `window` of each other.
fn most_at_once(mut at: Vec<f64>, window: f64) -> usize {
    at.sort_by(|a, b| a.total_cmp(b));
    let mut most = 0;
    let mut first = 0;
    for last in 0..at.len() {
        while at[last] - at[first] > window {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

/// Samples the nodes' `pg_is_in_recovery()` every 50 ms until stopped; the most nodes seen
/// answering as writable primaries in one sample.
struct WritableSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl WritableSampler {
    fn start(nodes: Vec<crate::pg::Endpoint>) -> WritableSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut most = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                // Every node asked at the same moment, each answer stamped with the server's
                // clock (one clock: the lab's places are namespaces of this machine). Nodes
                // count as writable at once only when their answers are that close: on a busy
                // machine one connection of a round can come seconds after another, and an
                // old primary's last answer before its stop and the new one's first after its
                // promotion then fell into one round.
                let answers = futures_util::future::join_all(nodes.iter().map(|ep| {
                    tokio::time::timeout(Duration::from_secs(2), async {
                        let c = connect(ep).await.ok()?;
                        c.query_one(
                            "SELECT pg_is_in_recovery(), (extract(epoch FROM clock_timestamp()) * 1000)::float8",
                            &[],
                        )
                        .await
                        .ok()
                    })
                }))
                .await;
                let writable_at: Vec<f64> = answers
                    .into_iter()
                    .filter_map(|a| match a {
                        Ok(Some(r)) if !r.get::<_, bool>(0) => Some(r.get::<_, f64>(1)),
                        _ => None,
                    })
                    .collect();
                most = most.max(most_at_once(writable_at, AT_ONCE_MS));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            most
        });
        WritableSampler { stop, task }
    }

    async fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::most_at_once;

    #[test]
    fn writable_answers_count_together_only_when_close_in_time() {
        assert_eq!(most_at_once(vec![], 50.0), 0);
        assert_eq!(most_at_once(vec![1000.0], 50.0), 1);
        // Two primaries answering within the window: a split brain.
        assert_eq!(most_at_once(vec![1000.0, 1030.0], 50.0), 2);
        // The old primary's last answer and the new one's first, 400 ms apart: one at a time.
        assert_eq!(most_at_once(vec![1400.0, 1000.0], 50.0), 1);
        assert_eq!(most_at_once(vec![1000.0, 1040.0, 1090.0, 1095.0], 50.0), 2);
        assert_eq!(most_at_once(vec![1045.0, 1000.0, 1020.0], 50.0), 3);
    }
}
