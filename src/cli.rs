//! Command-line arguments (clap derive). Converted once into validated values by the commands.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "migrate",
    version,
    about = "Move a live PostgreSQL cluster to new hosts by chained streaming replication",
    long_about = None
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand understands.
#[derive(Debug, Args)]
pub struct Global {
    /// The migration spec (TOML).
    #[arg(
        short = 'f',
        long = "spec",
        global = true,
        value_name = "FILE",
        env = "MIGRATE_SPEC"
    )]
    pub spec: Option<PathBuf>,
    /// Machine-readable JSON on stdout; logs stay on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// Answer yes to confirmations (for automation).
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short = 'v', long = "verbose", global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// While the command runs (replicate, cutover, watch, …), serve `status --metrics` at
    /// http://ADDR/metrics for Prometheus to scrape (e.g. 127.0.0.1:9187).
    #[arg(long, global = true, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a spec file and print the topology it describes.
    Validate,
    /// Preflight checks and the exact ordered steps of the cutover; exit 1 if a check fails.
    Plan(PlanArgs),
    /// Build the chain: the target streams from the old primary, the cascaded replicas from the
    /// target (slots, pg_basebackup, start, verify), then wait until every hop has caught up.
    Replicate,
    /// The switchover: wait for the window, confirm, fence and stop the old primary, prove the
    /// target has every byte, promote it, make the old primary its standby, verify.
    Cutover(CutoverArgs),
    /// After the bake period: retire the rollback path (keep the old primary as a standby or
    /// stop it, as `cutover.retire` says) and drop stale replication slots.
    Complete,
    /// The current run's state from its journal: each step, its times and outputs, and the
    /// command that continues it, live lag, and the WAL each node's slots retain against its
    /// free WAL disk. Safe while another process runs.
    Status(StatusArgs),
    /// A live view of the run and the chain: redrawn on a terminal, a line per step change
    /// otherwise (`--json`: one object per change). Reads like `status`; takes no lock.
    Watch(WatchArgs),
    /// Continue an interrupted run from its journal.
    Resume(ResumeArgs),
    /// Go back: undo a run that has not passed its point of no return (latest step first), or,
    /// after a completed cutover, switch back the same zero-loss way.
    Rollback,
    /// The emergency: the primary is lost. Fence it as far as it can be reached, measure what
    /// the promotion can lose (shown before you confirm), promote NODE, route and release
    /// clients to it, repoint the other standbys, and write a certificate with the loss window.
    Failover(FailoverArgs),
    /// Make NODE the serving primary's standby again when it cannot follow the new timeline:
    /// pg_rewind (node-local settings kept), or a re-clone when a rewind is impossible.
    Resync(ResyncArgs),
    /// Run the engine drill plan (test builds only).
    #[cfg(feature = "failpoints")]
    #[command(hide = true)]
    Drill,
    /// A full rehearsal on the embedded lab under a writer (replicate, plan, cutover, rollback),
    /// with a report of write pauses, client errors and missing commits.
    Rehearse(RehearseArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout: `migrate man > migrate.1; man -l migrate.1`.
    Man,
    /// The embedded local lab: real PostgreSQL and PgBouncer on loopback for rehearsals.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Also write a Markdown runbook for this spec to FILE.
    #[arg(long, value_name = "FILE")]
    pub runbook: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CutoverArgs {
    /// Go even outside the spec's maintenance window.
    #[arg(long)]
    pub force_window: bool,
    /// Stop cleanly before this step (e.g. `fence`); continue later with `migrate resume`.
    #[arg(long, value_name = "STEP")]
    pub pause_before: Option<String>,
    /// Allow --pause-before a step inside the write pause (after `hold`, up to `release`):
    /// clients stay held and writes stay stopped until `migrate resume`.
    #[arg(long)]
    pub keep_clients_held: bool,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The standby to promote (`old` while it streams from the new primary, `dr`, …).
    #[arg(long, value_name = "NODE")]
    pub to: String,
    /// Accept losing up to BYTES of acknowledged WAL (needed with --yes unless the failover
    /// is proven to lose nothing).
    #[arg(long, value_name = "BYTES")]
    pub accept_loss: Option<u64>,
    /// Promote although the lost primary's host does not answer and no fence plugin is
    /// configured: you vouch that it is off.
    #[arg(long)]
    pub no_fence: bool,
}

#[derive(Debug, Args)]
pub struct ResyncArgs {
    /// The node to re-sync.
    #[arg(value_name = "NODE")]
    pub node: String,
}

#[derive(Debug, Args)]
pub struct RehearseArgs {
    /// Where the lab lives (a new or empty directory; default: a new one under $TMPDIR).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Grow the `app` database to about N MB before replicating.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub scale: u64,
    /// Concurrent writer clients (through PgBouncer).
    #[arg(long, value_name = "C", default_value_t = 8)]
    pub clients: i32,
    /// Pause between one client's commits, in ms.
    #[arg(long, value_name = "MS", default_value_t = 2)]
    pub pace_ms: u64,
    /// Keep the lab running afterwards (`migrate lab down --dir DIR` stops it).
    #[arg(long)]
    pub keep: bool,
    /// First of the lab's five ports.
    #[arg(long, default_value_t = crate::lab::DEFAULT_BASE_PORT)]
    pub base_port: u16,
    /// plain: pg_ctl and data directories; debian: postgresql-common clusters driven with
    /// pg_ctlcluster (needs root; the clusters are unregistered afterwards unless --keep).
    #[arg(long, value_enum, default_value_t)]
    pub layout: crate::lab::Layout,
    /// local: everything on loopback; ssh: each site in its own network namespace with its
    /// own sshd, driven over ssh as from a bastion (needs root); compose: the containers of
    /// docker-compose.yml on this machine's Docker engine, driven with docker exec.
    #[arg(long, value_enum, default_value_t)]
    pub hosts: crate::lab::Hosts,
    /// The same as --hosts compose.
    #[arg(long, conflicts_with = "hosts")]
    pub compose: bool,
    /// Also write the report as one self-contained HTML page: commits per 10 ms across each
    /// switchover with the pause as a gap, the steps on the same axis, the certificate.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// A compose lab's PostgreSQL major: 13, 15 (default) or 17.
    #[arg(long, value_name = "MAJOR")]
    pub pg: Option<u32>,
    /// Inject a fault and report what the tool did: kill-target-during-catchup,
    /// stop-target-after-fence, crash-tool-after-promote, route-failure,
    /// idle-in-transaction-client, hang-target, restart-old-after-proof, old-cannot-follow,
    /// kill-target-during-stage, promote-target-externally; with --hosts ssh, a WAN link cut:
    /// cut-link-during-catchup, cut-link-before-proof, cut-tool-from-old-dc,
    /// cut-link-after-promote.
    #[arg(long, value_name = "NAME", value_parser = crate::rehearse::fault::Fault::parse)]
    pub fault: Option<crate::rehearse::fault::Fault>,
    #[command(flatten)]
    pub wan: WanArgs,
    /// Clone the standbys from a pgBackRest repository the lab makes (see `lab up`).
    #[arg(long)]
    pub pgbackrest: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Exit 1 when the WAL a node's slots retain is past `bake.max_retained` (for a cron job
    /// or a monitor during the bake).
    #[arg(long)]
    pub check: bool,
    /// Print the report in the Prometheus text format instead (for a node_exporter textfile
    /// collector): hop lag, slot retention, free WAL disk, step states, the last write pause.
    #[arg(long, conflicts_with = "check")]
    pub metrics: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// How often to look (e.g. 500ms, 2s).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: std::time::Duration,
    /// Exit once the run (or the next one, if none is open) has finished.
    #[arg(long)]
    pub until_done: bool,
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let d = crate::units::parse_duration(text)?;
    if d < std::time::Duration::from_millis(100) {
        return Err("at least 100ms".into());
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Go even outside the spec's maintenance window.
    #[arg(long)]
    pub force_window: bool,
}

#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Create (if needed) and start the lab; writes DIR/lab.toml, a spec for it.
    Up(LabArgs),
    /// Show each lab node's port, role and whether it is up.
    Status(LabDir),
    /// Stop every process the lab started (a compose lab: remove its containers and
    /// network). Safe to run twice.
    Down(LabDownArgs),
    /// Build the compose lab's image for each major (migrate-lab-pg:<major>) unless present:
    /// the Debian base image is pulled, or made with debootstrap where it cannot be.
    Image(LabImageArgs),
    /// Cut or restore the link between two places of the lab of separate hosts (bastion,
    /// olddc, newdc, dr, app), as a WAN outage would; `show` prints the links' state.
    Link(LabLinkArgs),
    /// Hold the packets of an NFQUEUE for a while (the WAN links' latency; run by `lab up`).
    #[command(hide = true)]
    Delayer(DelayerArgs),
}

#[derive(Debug, Args)]
pub struct LabLinkArgs {
    #[command(flatten)]
    pub dir: LabDir,
    #[arg(value_enum)]
    pub action: LinkAction,
    /// The two places the link joins (none for `show`).
    #[arg(value_name = "PLACE", num_args = 0..=2)]
    pub places: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LinkAction {
    Cut,
    Restore,
    Show,
}

#[derive(Debug, Args)]
pub struct DelayerArgs {
    #[arg(long)]
    pub queue: u16,
    #[arg(long)]
    pub delay_us: u64,
    #[arg(long)]
    pub ready: PathBuf,
}

/// The WAN between the ssh lab's places.
#[derive(Debug, Args, Clone, Default)]
pub struct WanArgs {
    /// With --hosts ssh: round-trip time added to every link between two places (the
    /// bastion, the old datacenter, the new one, DR, the application's site), e.g. 30ms.
    #[arg(long, value_name = "DURATION", value_parser = crate::lab::wan::parse_rtt)]
    pub rtt: Option<std::time::Duration>,
    /// With --hosts ssh: each place's uplink rate, e.g. 100mbit.
    #[arg(long, value_name = "RATE", value_parser = crate::lab::wan::parse_bandwidth)]
    pub bandwidth: Option<String>,
    /// With --hosts ssh: packets lost at random on every link, e.g. 0.5%.
    #[arg(long, value_name = "PERCENT", value_parser = crate::lab::wan::parse_loss)]
    pub loss: Option<f64>,
}

impl WanArgs {
    /// The WAN these flags ask for; None when none is given (a lab keeps its own).
    pub fn wan(&self) -> Option<crate::lab::wan::Wan> {
        if self.rtt.is_none() && self.bandwidth.is_none() && self.loss.is_none() {
            return None;
        }
        Some(crate::lab::wan::Wan {
            rtt_us: self.rtt.map_or(0, |d| d.as_micros() as u64),
            bandwidth: self.bandwidth.clone(),
            loss_pct: self.loss.unwrap_or(0.0),
            cuts: Vec::new(),
        })
    }
}

#[derive(Debug, Args)]
pub struct LabImageArgs {
    /// PostgreSQL majors (13, 15, 17); default 15.
    #[arg(long, value_name = "MAJOR", num_args = 1.., default_values_t = [crate::lab::compose::DEFAULT_MAJOR])]
    pub pg: Vec<u32>,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(flatten)]
    pub dir: LabDir,
    /// First of the lab's ports: old primary = N, new = N+1, new_replica = N+2, dr = N+3,
    /// PgBouncer = N+4.
    #[arg(long, default_value_t = crate::lab::DEFAULT_BASE_PORT)]
    pub base_port: u16,
    /// plain: pg_ctl and data directories; debian: every node a postgresql-common cluster
    /// (pg_createcluster, /etc/postgresql, pg_ctlcluster); needs root.
    #[arg(long, value_enum, default_value_t)]
    pub layout: crate::lab::Layout,
    /// local: everything on loopback; ssh: each site (old datacenter, new datacenter, DR,
    /// application) in its own network namespace with its own sshd; needs root. compose:
    /// the containers of docker-compose.yml, driven with docker exec.
    #[arg(long, value_enum, default_value_t)]
    pub hosts: crate::lab::Hosts,
    /// A compose lab's PostgreSQL major: 13, 15 (default) or 17.
    #[arg(long, value_name = "MAJOR")]
    pub pg: Option<u32>,
    #[command(flatten)]
    pub wan: WanArgs,
    /// Also make a pgBackRest repository (stanza `lab`, WAL archived from the old primary, one
    /// full backup) and clone the standbys from it (`[clone] method = "pgbackrest"`).
    #[arg(long)]
    pub pgbackrest: bool,
}

#[derive(Debug, Args)]
pub struct LabDownArgs {
    #[command(flatten)]
    pub dir: LabDir,
    /// In the debian layout, also remove the lab's clusters from /etc/postgresql (the data
    /// stays in DIR; the lab cannot be started again).
    #[arg(long)]
    pub unregister: bool,
}

#[derive(Debug, Args)]
pub struct LabDir {
    /// The lab's directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}
