//! `migrate rehearse`: the whole migration on the embedded lab, under a writer, measured.
//!
//! The lab comes up, `app` is grown to the requested size, a writer commits numbered rows
//! through the application endpoint (PgBouncer), and the real commands run as child processes
//! of this binary, exactly as an operator runs them: `replicate`, `plan`, `cutover`,
//! `rollback`. After each switchover every acknowledged commit is looked up on every node.

pub mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use serde_json::Value;

use crate::lab::workload::{grow_app, missing_acks, Ack, Writer};
use crate::lab::Lab;
use crate::pg::{connect, Endpoint, Lsn};
use report::{client_gaps, error_kinds, longest_gap, phases, quantile, Report, Switch};

#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub base_port: u16,
    pub scale_mb: u64,
    pub clients: i32,
    /// Pause between one client's commits.
    pub pace: Duration,
    pub keep: bool,
    /// This binary, to run the commands as an operator would.
    pub exe: PathBuf,
}

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
    if opts.dir.join("lab-state.json").exists() {
        bail!(
            "{} holds a lab already; give an empty or new directory (--dir)",
            opts.dir.display()
        );
    }
    let lab = Lab::new(&opts.dir, opts.base_port)?;
    let r = Rehearsal {
        opts,
        spec: lab.spec_path(),
        logs: opts.dir.join("logs"),
        lab,
        note,
    };
    let result = r.drive().await;
    if !opts.keep {
        note("lab down");
        if let Err(e) = r.lab.down().await {
            note(&format!("warning: lab down: {e:#}"));
        }
    }
    result
}

impl Rehearsal<'_> {
    async fn drive(&self) -> Result<Report> {
        let o = self.opts;
        (self.note)(&format!("lab up in {}", o.dir.display()));
        self.lab.up().await.context("lab up")?;
        std::fs::create_dir_all(&self.logs)?;
        if o.scale_mb > 0 {
            (self.note)(&format!("grow app to about {} MB", o.scale_mb));
            grow_app(&self.lab.endpoint("old", "app"), o.scale_mb).await?;
        }
        (self.note)(&format!("writer: {} clients through PgBouncer", o.clients));
        let writer = Writer::start(vec![self.lab.app_endpoint()], o.clients, o.pace);

        let t = Instant::now();
        self.replicate().await?;
        let replicate_ms = t.elapsed().as_millis() as u64;
        let t = Instant::now();
        self.step("plan", &["plan"]).await?;
        let plan_ms = t.elapsed().as_millis() as u64;

        let (c0, c1, cutover_ms) = self.cutover().await?;
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

        let certs = self.certificates()?;
        let cert = |op: &str| certs.iter().rev().find(|c| c["operation"] == op).cloned();
        let cut_errors: Vec<String> = errors_between(&report.errors, &report.error_times, c0, c1);
        let back_errors: Vec<String> = errors_between(&report.errors, &report.error_times, r0, r1);
        let switch = |from, to, ms, missing, cert: Option<Value>, errors: Vec<String>| {
            let gaps = client_gaps(&report.acks, from, to);
            Switch {
                duration_ms: ms,
                write_pause_ms: longest_gap(&report.acks, from, to),
                client_pause_p50_ms: quantile(&gaps, 0.5),
                client_pause_p99_ms: quantile(&gaps, 0.99),
                client_pause_max_ms: gaps.iter().copied().fold(0.0, f64::max),
                certificate_pause_ms: cert.as_ref().and_then(|c| c["write_pause_ms"].as_i64()),
                acked: report
                    .acks
                    .iter()
                    .filter(|a| a.at >= from && a.at <= to)
                    .count(),
                errors: errors.len(),
                error_kinds: error_kinds(&errors),
                missing,
                phases_ms: cert.as_ref().map(phases).unwrap_or_default(),
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
        Ok(Report {
            dir: o.dir.display().to_string(),
            clients: o.clients,
            scale_mb: o.scale_mb,
            replicate_ms,
            plan_ms,
            cutover,
            rollback,
            acked_total: report.acks.len(),
            missing_at_end: rollback_missing,
        })
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
            .open(self.logs.join(format!("{name}.log")))?;
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
                self.logs.join(format!("{name}.log")).display()
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

    fn certificates(&self) -> Result<Vec<Value>> {
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
        out.sort_by_key(|c: &Value| c["fenced_at"].as_str().unwrap_or("").to_string());
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
