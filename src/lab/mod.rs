//! The embedded lab: real PostgreSQL servers and a PgBouncer on loopback, for rehearsals and
//! as the integration-test harness.
//!
//! Layout of a lab directory:
//! ```text
//! DIR/lab-state.json      base port and binaries of this lab
//! DIR/lab.toml            a complete migration spec for the lab's topology
//! DIR/pgpass              passwords (libpq passfile, 0600)
//! DIR/run/                unix sockets
//! DIR/nodes/<name>/data   data directories (only `old` exists until the migration clones)
//! DIR/nodes/<name>/server.log
//! DIR/pgbouncer/          PgBouncer config, log, pidfile
//! ```
//! As root, servers and PgBouncer run as the `postgres` OS user (both refuse root).

pub mod compose;
pub mod debian;
pub mod netns;
pub mod pgbackrest;
pub mod pgbouncer;
pub mod ports;
pub mod template;
pub mod wan;
pub mod workload;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};

use crate::host::exec::RunAs;
use crate::host::local::LocalHost;
use crate::host::Host;
use crate::pg::server::{find_local_bin_dir, RunState, Server, StopMode};
use crate::pg::service::Service;
use crate::pg::{connect, Conninfo, Endpoint, SecretRef};
use crate::spec::Role;
use compose::{Compose, ComposeState};
use debian::Debian;
use netns::Sites;
use pgbouncer::Bouncer;

pub const DEFAULT_BASE_PORT: u16 = 25430;
pub const PGBOUNCER_OFFSET: u16 = 4;
/// How many ports a lab uses from its base port.
/// The lab spec's `cutover.proof_timeout`.
pub const PROOF_TIMEOUT_S: u64 = 30;
pub const PORT_SPAN: u16 = 5;

/// The lab's topology: the old primary, the target, and two replicas cascaded from it.
pub const NODES: [LabNode; 4] = [
    LabNode {
        name: "old",
        role: Role::Primary,
        upstream: None,
        offset: 0,
    },
    LabNode {
        name: "new",
        role: Role::Target,
        upstream: Some("old"),
        offset: 1,
    },
    LabNode {
        name: "new_replica",
        role: Role::Replica,
        upstream: Some("new"),
        offset: 2,
    },
    LabNode {
        name: "dr",
        role: Role::Replica,
        upstream: Some("new"),
        offset: 3,
    },
];

#[derive(Debug, Clone, Copy)]
pub struct LabNode {
    pub name: &'static str,
    pub role: Role,
    pub upstream: Option<&'static str>,
    pub offset: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LabState {
    base_port: u16,
    bin_dir: PathBuf,
    /// Set in the debian layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    debian: Option<Debian>,
    /// Each site in its own network namespace, reached over ssh.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    ssh_sites: bool,
    /// The containers of docker-compose.yml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compose: Option<ComposeState>,
}

/// Where the lab's servers run and how migrate reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Hosts {
    /// Everything on this machine's loopback, driven locally.
    #[default]
    Local,
    /// Each site (old datacenter, new datacenter, DR, application) in its own network
    /// namespace with its own sshd and addresses; migrate drives them over ssh (needs root).
    Ssh,
    /// The containers of docker-compose.yml on this machine's Docker engine, driven with
    /// `docker exec` (images of Debian's packages; `--pg` picks the major).
    Compose,
}

impl Hosts {
    fn word(self) -> &'static str {
        match self {
            Hosts::Local => "local",
            Hosts::Ssh => "ssh",
            Hosts::Compose => "compose",
        }
    }
}

/// How the lab's servers are laid out and managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Layout {
    /// Data and configuration in DIR/nodes/<name>/data, servers driven with pg_ctl.
    #[default]
    Plain,
    /// postgresql-common clusters (pg_createcluster, /etc/postgresql, pg_ctlcluster); as root.
    Debian,
}

#[derive(Debug, Clone)]
pub struct Lab {
    pub dir: PathBuf,
    pub base_port: u16,
    pub bin_dir: PathBuf,
    /// The debian layout's cluster names and version; None in the plain layout.
    pub debian: Option<Debian>,
    /// The separate sites of `--hosts ssh`; None when everything is local.
    pub sites: Option<Sites>,
    /// The containers of `--hosts compose`.
    pub compose: Option<Compose>,
    host: LocalHost,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: Role,
    pub port: u16,
    pub data_dir: PathBuf,
    /// `running`, `stopped` or `absent` (no data directory yet).
    pub state: String,
    /// For a running server: `primary` or `standby`.
    pub serving_as: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub dir: PathBuf,
    pub spec: PathBuf,
    pub passfile: PathBuf,
    pub nodes: Vec<NodeStatus>,
    pub pgbouncer_host: String,
    pub pgbouncer_port: u16,
    pub pgbouncer_running: bool,
    /// What bringing the lab up did beyond the usual (a compose lab's images).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Pure: `path` and every folder above it, from the root down (`/a/b` → `/`, `/a`, `/a/b`).
fn top_down(path: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = path.ancestors().map(Path::to_path_buf).collect();
    all.reverse();
    all
}

/// Create a directory (if missing) with a mode, owned by the host's run-as user.
pub(crate) fn make_dir(path: &Path, mode: u32, host: &LocalHost) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let (Some(u), true) = (host.run_as(), nix::unistd::geteuid().is_root()) {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

impl Lab {
    /// A lab in `dir` on `base_port`. An existing lab keeps its recorded port; asking for
    /// another one is refused.
    pub fn new(dir: &Path, base_port: u16, layout: Layout, hosts: Hosts) -> Result<Lab> {
        Lab::new_with_major(dir, base_port, layout, hosts, None)
    }

    /// As [`Lab::new`]; `pg_major` picks a compose lab's PostgreSQL major (default 15).
    pub fn new_with_major(
        dir: &Path,
        base_port: u16,
        layout: Layout,
        hosts: Hosts,
        pg_major: Option<u32>,
    ) -> Result<Lab> {
        let dir = absolute(dir)?;
        if pg_major.is_some() && hosts != Hosts::Compose {
            bail!("--pg picks the major of a compose lab's images; add --hosts compose (the other labs run this machine's PostgreSQL)");
        }
        if base_port.checked_add(PORT_SPAN).is_none() || base_port < 1024 {
            bail!(
                "--base-port {base_port} is out of range; choose one between 1024 and {}",
                u16::MAX - PORT_SPAN
            );
        }
        let existing = read_state(&dir)?;
        if let Some(state) = &existing {
            if state.base_port != base_port {
                bail!(
                    "the lab in {} already uses base port {}; run `migrate lab down --dir {}` and remove the directory to change it, or pass --base-port {}",
                    dir.display(), state.base_port, dir.display(), state.base_port
                );
            }
            let was = if state.debian.is_some() {
                Layout::Debian
            } else {
                Layout::Plain
            };
            let was_hosts = state_hosts(state);
            if was_hosts != hosts {
                let was = was_hosts.word();
                bail!(
                    "the lab in {} was made with --hosts {was}; pass --hosts {was} or remove the directory",
                    dir.display()
                );
            }
            if was != layout {
                bail!(
                    "the lab in {} was made in the {} layout; pass --layout {} or remove the directory",
                    dir.display(),
                    layout_word(was),
                    layout_word(was)
                );
            }
        }
        if layout == Layout::Debian && hosts != Hosts::Local {
            bail!(
                "--layout debian and --hosts {} cannot be combined yet; choose one",
                hosts.word()
            );
        }
        if let (Some(state), Some(m)) = (&existing, pg_major) {
            if let Some(c) = state.compose.as_ref().filter(|c| c.major != m) {
                bail!(
                    "the lab in {} runs PostgreSQL {}; pass --pg {} or remove the directory",
                    dir.display(),
                    c.major,
                    c.major
                );
            }
        }
        let compose = match hosts {
            Hosts::Compose => {
                let major = existing
                    .as_ref()
                    .and_then(|s| s.compose.as_ref().map(|c| c.major))
                    .or(pg_major)
                    .unwrap_or(compose::DEFAULT_MAJOR);
                Some(Compose::new(base_port, major, &dir)?)
            }
            _ => None,
        };
        if let Some(c) = &compose {
            return Ok(Lab {
                bin_dir: c.bin_dir(),
                dir,
                base_port,
                debian: None,
                sites: None,
                compose,
                host: LocalHost::new(None)?,
            });
        }
        let bin_dir = find_local_bin_dir()?;
        let debian = match (existing.and_then(|s| s.debian), layout) {
            (Some(d), _) => Some(d),
            (None, Layout::Debian) => Some(Debian::new(&bin_dir)?),
            (None, Layout::Plain) => None,
        };
        let sites = (hosts == Hosts::Ssh).then(|| Sites::new(base_port, &dir));
        Ok(Lab {
            dir,
            base_port,
            bin_dir,
            debian,
            sites,
            compose: None,
            host: lab_host()?,
        })
    }

    /// An existing lab.
    pub fn open(dir: &Path) -> Result<Lab> {
        let dir = absolute(dir)?;
        let state = read_state(&dir)?.with_context(|| {
            format!(
                "no lab in {}: run `migrate lab up --dir {}` first",
                dir.display(),
                dir.display()
            )
        })?;
        let compose = match &state.compose {
            Some(c) => Some(Compose::new(state.base_port, c.major, &dir)?),
            None => None,
        };
        Ok(Lab {
            sites: state.ssh_sites.then(|| Sites::new(state.base_port, &dir)),
            host: if compose.is_some() {
                LocalHost::new(None)?
            } else {
                lab_host()?
            },
            compose,
            dir,
            base_port: state.base_port,
            bin_dir: state.bin_dir,
            debian: state.debian,
        })
    }

    pub fn port(&self, node: &str) -> u16 {
        if self.compose.is_some() {
            return compose::PORT;
        }
        let n = NODES.iter().find(|n| n.name == node).expect("a lab node");
        self.base_port + n.offset
    }
    pub fn pgbouncer_port(&self) -> u16 {
        if self.compose.is_some() {
            return compose::PGBOUNCER_PORT;
        }
        self.base_port + PGBOUNCER_OFFSET
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }
    /// On the node's host (in a compose lab: inside its container).
    pub fn data_dir(&self, node: &str) -> PathBuf {
        if self.compose.is_some() {
            return PathBuf::from(compose::DATA_DIR);
        }
        self.node_dir(node).join("data")
    }
    /// Remove every node's data directory (the lab must be down); the bytes removed. Logs,
    /// the spec and the state directory stay.
    pub fn remove_data(&self) -> Result<u64> {
        if self.compose.is_some() {
            // The containers held the data; `down` removed them.
            return Ok(0);
        }
        let mut bytes = 0;
        for n in NODES {
            let d = self.data_dir(n.name);
            if d.exists() {
                bytes += crate::files::tree_size(&d);
                std::fs::remove_dir_all(&d).with_context(|| format!("remove {}", d.display()))?;
            }
        }
        Ok(bytes)
    }

    pub fn server_log(&self, node: &str) -> PathBuf {
        if self.compose.is_some() {
            return PathBuf::from(compose::SERVER_LOG);
        }
        self.node_dir(node).join("server.log")
    }
    pub fn spec_path(&self) -> PathBuf {
        self.dir.join("lab.toml")
    }
    pub fn passfile(&self) -> PathBuf {
        self.dir.join("pgpass")
    }
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    pub fn host(&self) -> Arc<dyn Host> {
        Arc::new(self.host.clone())
    }
    /// A node's server as the lab reaches it: locally, or over ssh in its own site (so that
    /// a start puts it in the site's network namespace).
    pub fn server(&self, node: &str) -> Server {
        Server::new(self.node_host(node), &self.bin_dir, self.data_dir(node))
            .managed_by(self.service(node))
    }

    /// How a node's server is managed: pg_ctl, or its cluster in the debian layout.
    pub fn service(&self, node: &str) -> Service {
        match &self.debian {
            Some(d) => d.service(node),
            None => Service::PgCtl,
        }
    }

    /// Remove the debian layout's registrations in /etc/postgresql (after `down`).
    pub fn unregister(&self) -> Result<()> {
        match &self.debian {
            Some(d) => d.unregister(&NODES.map(|n| n.name)),
            None => Ok(()),
        }
    }
    fn bouncer(&self) -> Bouncer {
        Bouncer {
            dir: self.dir.join("pgbouncer"),
            port: self.pgbouncer_port(),
            listen: self.addr(netns::BOUNCER),
            primary: self.addr("old"),
        }
    }

    /// The address a member (a node, or `pgbouncer`) answers at.
    pub fn addr(&self, member: &str) -> std::net::IpAddr {
        if let Some(c) = &self.compose {
            return c.addr(member).into();
        }
        match &self.sites {
            Some(s) => s.addr(member).into(),
            None => std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }

    /// The host a member (a node, or `pgbouncer`) runs on, as migrate reaches it: this
    /// machine, its site over ssh (so that what starts runs in the site's network namespace),
    /// or its container.
    pub fn node_host(&self, member: &str) -> Arc<dyn Host> {
        if let Some(c) = &self.compose {
            return Arc::new(c.host(member));
        }
        match &self.sites {
            Some(s) => Arc::new(s.host(member)),
            None => self.host(),
        }
    }

    /// The superuser endpoint of a node, over TCP with the lab's passfile.
    pub fn endpoint(&self, node: &str, dbname: &str) -> Endpoint {
        let c = Conninfo::parse(&format!(
            "host={} port={} user=postgres dbname={dbname} sslmode=disable",
            self.addr(node),
            self.port(node)
        ))
        .expect("well-formed");
        Endpoint::new(node, c, Some(SecretRef::Passfile(self.passfile())))
    }

    /// The application endpoint: the `app` database through PgBouncer.
    pub fn app_endpoint(&self) -> Endpoint {
        let c = Conninfo::parse(&format!(
            "host={} port={} user=postgres dbname=app sslmode=disable",
            self.addr(netns::BOUNCER),
            self.pgbouncer_port()
        ))
        .expect("well-formed");
        Endpoint::new("pgbouncer", c, Some(SecretRef::Passfile(self.passfile())))
    }

    /// The servers run as the lab's user (`postgres` when run as root): every folder above
    /// the lab's must let that user pass, or a server cannot reach its socket directory and
    /// the lab fails later with a bare "No such file or directory".
    async fn check_reachable(&self) -> Result<()> {
        let Some(user) = self.host.run_as() else {
            return Ok(());
        };
        let mut argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            r#"for d in "$@"; do [ -x "$d" ] || { printf '%s' "$d"; exit 1; }; done"#.to_string(),
            "sh".to_string(),
        ];
        argv.extend(top_down(&self.dir).iter().map(|d| d.display().to_string()));
        let out = self.host.run(&crate::host::Cmd::new(argv)).await?;
        if out.success() {
            return Ok(());
        }
        let blocked = String::from_utf8_lossy(&out.stdout).to_string();
        let how = std::fs::metadata(&blocked)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                format!(" (mode {:04o}, owner uid {})", m.mode() & 0o7777, m.uid())
            })
            .unwrap_or_default();
        bail!(
            "the lab directory {} cannot be reached by {}, the user its servers run as: {} cannot be entered{how}; choose a directory that user can reach (e.g. under /var/tmp), or allow it through with chmod o+x {}",
            self.dir.display(),
            user.name,
            if blocked.is_empty() { "a folder above it" } else { &blocked },
            if blocked.is_empty() { "<that folder>" } else { &blocked },
        )
    }

    /// Create what is missing and start what is stopped. Running it twice is harmless.
    pub async fn up(&self) -> Result<LabStatus> {
        if let Some(c) = &self.compose {
            return self.up_compose(c).await;
        }
        if let Some(s) = &self.sites {
            // The ports are the namespaces' own; only the subnet must be free.
            s.up()
                .await
                .context("the lab's sites (network namespaces and sshd)")?;
            // A lab brought up again keeps its WAN (its delayers may have gone).
            let w = s.shaper().current()?;
            if w.shapes() {
                self.shape(&w).await?;
            }
        } else {
            self.check_ports().await?;
        }
        make_dir(&self.dir, 0o755, &LocalHost::new(None)?)?;
        self.check_reachable().await?;
        make_dir(&self.socket_dir(), 0o755, &self.host)?;
        make_dir(&self.dir.join("nodes"), 0o755, &self.host)?;
        for n in NODES {
            make_dir(&self.node_dir(n.name), 0o755, &self.host)?;
        }
        make_dir(&self.dir.join("pgbouncer"), 0o755, &self.host)?;
        write_state(
            &self.dir,
            &LabState {
                base_port: self.base_port,
                bin_dir: self.bin_dir.clone(),
                debian: self.debian.clone(),
                ssh_sites: self.sites.is_some(),
                compose: None,
            },
        )?;

        let old = self.data_dir("old");
        let fresh = !old.join("PG_VERSION").exists();
        if let (Some(d), false) = (&self.debian, fresh) {
            d.check_registered(&NODES.map(|n| n.name), &self.dir)?;
        }
        if fresh {
            let template = template::ensure(&self.host, &self.bin_dir).await?;
            let _ = std::fs::remove_dir_all(&old);
            let out = std::process::Command::new("cp")
                .arg("-a")
                .arg(&template)
                .arg(&old)
                .output()
                .context("copy the template cluster")?;
            if !out.status.success() {
                bail!(
                    "cp -a {} {} failed: {}",
                    template.display(),
                    old.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            self.write_node_conf("old").await?;
            if let Some(s) = &self.sites {
                // Clones copy it: every node admits the lab's subnet.
                let hba = old.join("pg_hba.conf");
                let mut text = std::fs::read_to_string(&hba)?;
                text.push_str(&format!(
                    "host    all          all    {c}   scram-sha-256\nhost    replication  all    {c}   scram-sha-256\n",
                    c = s.cidr()
                ));
                self.host
                    .write_file(&hba, text.as_bytes(), 0o600, None)
                    .await?;
            }
            if let Some(d) = &self.debian {
                d.integrate(
                    "old",
                    &old,
                    self.port("old"),
                    &self.server_log("old"),
                    &self.node_settings("old"),
                    &self.host,
                )
                .await?;
            }
        }
        // Empty locations for the nodes the migration will clone.
        for n in NODES.iter().filter(|n| n.role != Role::Primary) {
            if !self.data_dir(n.name).exists() {
                make_dir(&self.data_dir(n.name), 0o700, &self.host)?;
            }
            if let Some(d) = &self.debian {
                d.create_empty(
                    n.name,
                    &self.data_dir(n.name),
                    self.port(n.name),
                    &self.server_log(n.name),
                    &self.node_settings(n.name),
                    &self.host,
                )
                .await?;
            }
        }
        let passwords = self.passwords(fresh).await?;
        for n in NODES {
            if self.server(n.name).state().await? == RunState::Stopped {
                self.server(n.name)
                    .start(&self.server_log(n.name), Duration::from_secs(60))
                    .await?;
            }
        }
        if fresh {
            self.set_passwords(&passwords).await?;
        }
        let bouncer = self.bouncer();
        bouncer
            .configure(
                &self.host,
                self.port("old"),
                &[
                    ("postgres", passwords[0].1.as_str()),
                    ("repl", passwords[1].1.as_str()),
                ],
            )
            .await?;
        bouncer.start(&*self.node_host(netns::BOUNCER)).await?;
        self.write_spec().await?;
        self.status().await
    }

    /// Put a WAN between the places of the lab of separate hosts (replacing the one in
    /// force, cuts included).
    pub async fn shape(&self, wan: &wan::Wan) -> Result<()> {
        let s = self.sites.as_ref().context(
            "WAN links (--rtt, --bandwidth, --loss, cut links) need the lab of separate hosts: --hosts ssh",
        )?;
        s.shaper()
            .apply(wan, &wan::delayer_binary()?)
            .await
            .context("the WAN links between the lab's places")
    }

    /// The WAN in force (nothing shaped outside the ssh lab).
    pub fn wan(&self) -> Result<wan::Wan> {
        match &self.sites {
            Some(s) => s.shaper().current(),
            None => Ok(wan::Wan::default()),
        }
    }

    /// Cut (`cut = true`) or restore the link between two places; the rest of the WAN stays.
    pub async fn set_link(&self, a: &str, b: &str, cut: bool) -> Result<wan::Wan> {
        let mut w = self.wan()?;
        w.set_cut(a, b, cut)?;
        self.shape(&w).await?;
        Ok(w)
    }

    /// Stop every process the lab started (servers by their data directories, PgBouncer by
    /// its pidfile). Safe to run twice, and on a half-created lab.
    pub async fn down(&self) -> Result<()> {
        if let Some(c) = &self.compose {
            return c.down().await;
        }
        self.bouncer().stop().await?;
        let mut errors = Vec::new();
        for n in NODES {
            let server = self.server(n.name);
            if self.data_dir(n.name).join("postmaster.pid").exists() {
                if let Err(e) = server.stop(StopMode::Fast, Duration::from_secs(60)).await {
                    tracing::warn!(
                        "fast stop of {} failed ({e:#}); stopping immediately",
                        n.name
                    );
                    if let Err(e) = server
                        .stop(StopMode::Immediate, Duration::from_secs(30))
                        .await
                    {
                        errors.push(format!("{}: {e:#}", n.name));
                    }
                }
            }
        }
        if !errors.is_empty() {
            bail!("could not stop: {}", errors.join("; "));
        }
        if let Some(s) = &self.sites {
            s.down().await?;
        }
        Ok(())
    }

    pub async fn status(&self) -> Result<LabStatus> {
        let mut nodes = Vec::new();
        for n in NODES {
            let state = self.server(n.name).state().await?;
            let serving_as = if state == RunState::Running {
                match connect(&self.endpoint(n.name, "postgres")).await {
                    Ok(c) => {
                        let recovery: bool =
                            c.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
                        Some(if recovery { "standby" } else { "primary" }.to_string())
                    }
                    Err(e) => Some(format!("unreachable: {e:#}")),
                }
            } else {
                None
            };
            nodes.push(NodeStatus {
                name: n.name.into(),
                role: n.role,
                port: self.port(n.name),
                data_dir: self.data_dir(n.name),
                state: match state {
                    RunState::Running => "running",
                    RunState::Stopped => "stopped",
                    RunState::NoCluster => "absent",
                }
                .into(),
                serving_as,
            });
        }
        Ok(LabStatus {
            dir: self.dir.clone(),
            spec: self.spec_path(),
            passfile: self.passfile(),
            nodes,
            pgbouncer_host: self.addr(netns::BOUNCER).to_string(),
            pgbouncer_port: self.pgbouncer_port(),
            pgbouncer_running: match &self.compose {
                Some(c) => c.bouncer_running(),
                None => self.bouncer().running_pid().is_some(),
            },
            notes: Vec::new(),
        })
    }

    async fn check_ports(&self) -> Result<()> {
        for n in NODES {
            let ours = self.data_dir(n.name).join("postmaster.pid").exists()
                && self.server(n.name).state().await? == RunState::Running;
            let port = self.port(n.name);
            if !ours && !ports::is_free(port) {
                bail!("port {port} (lab node {}) is already in use on 127.0.0.1; choose another --base-port", n.name);
            }
        }
        let port = self.pgbouncer_port();
        if self.bouncer().running_pid().is_none() && !ports::is_free(port) {
            bail!("port {port} (lab PgBouncer) is already in use on 127.0.0.1; choose another --base-port");
        }
        Ok(())
    }

    /// Node-local settings appended to the node's postgresql.conf (later lines win).
    pub async fn write_node_conf(&self, node: &str) -> Result<()> {
        let conf = self.data_dir(node).join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf).with_context(|| format!("read {}", conf.display()))?;
        text.push_str(&self.node_settings(node));
        self.host
            .write_file(&conf, text.as_bytes(), 0o600, None)
            .await
    }

    fn node_settings(&self, node: &str) -> String {
        // In separate sites each namespace holds only its own addresses: '*' is those (and
        // stays right in a clone, which copies this file).
        let listen = if self.sites.is_some() {
            "listen_addresses = '*'\n"
        } else {
            ""
        };
        format!(
            "\n# --- migrate lab: node-local settings for {node:?} ---\nport = {}\ncluster_name = '{node}'\nunix_socket_directories = '{}'\n{listen}",
            self.port(node),
            self.socket_dir().display()
        )
    }

    /// The lab's passwords: new ones for a fresh lab, else those in the passfile.
    async fn passwords(&self, fresh: bool) -> Result<Vec<(String, String)>> {
        let users = ["postgres", "repl"];
        if !fresh {
            if let Ok(text) = std::fs::read_to_string(self.passfile()) {
                let found: Vec<(String, String)> = users
                    .iter()
                    .filter_map(|u| {
                        text.lines()
                            .find_map(|l| l.strip_prefix(&format!("*:*:*:{u}:")))
                            .map(|p| (u.to_string(), p.to_string()))
                    })
                    .collect();
                if found.len() == users.len() {
                    return Ok(found);
                }
            }
            bail!("the lab's passfile {} is missing or damaged; remove the lab directory and run `lab up` again", self.passfile().display());
        }
        let pw: Vec<(String, String)> = users
            .iter()
            .map(|u| {
                (
                    u.to_string(),
                    Alphanumeric.sample_string(&mut rand::rng(), 24),
                )
            })
            .collect();
        self.write_passfile(&pw).await?;
        Ok(pw)
    }

    async fn write_passfile(&self, pw: &[(String, String)]) -> Result<()> {
        let text: String = pw.iter().map(|(u, p)| format!("*:*:*:{u}:{p}\n")).collect();
        // Owned by whoever runs the lab (and so migrate): a secret file must be its user's.
        let me = format!(
            "{}:{}",
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw()
        );
        LocalHost::new(None)?
            .write_file(&self.passfile(), text.as_bytes(), 0o600, Some(&me))
            .await
    }

    /// `up` for `--hosts compose`: the files, the images, the containers; then the `app`
    /// database on the old primary (the containers' entrypoint made the cluster and roles).
    async fn up_compose(&self, c: &Compose) -> Result<LabStatus> {
        make_dir(&self.dir, 0o755, &self.host)?;
        write_state(
            &self.dir,
            &LabState {
                base_port: self.base_port,
                bin_dir: self.bin_dir.clone(),
                debian: None,
                ssh_sites: false,
                compose: Some(ComposeState { major: c.major }),
            },
        )?;
        let fresh = !self.passfile().exists();
        // One password for postgres, repl and PgBouncer: the image's entrypoint sets them all.
        let password = if fresh {
            let pw = Alphanumeric.sample_string(&mut rand::rng(), 24);
            self.write_passfile(&[("postgres".into(), pw.clone()), ("repl".into(), pw.clone())])
                .await?;
            pw
        } else {
            self.passwords(false).await?[0].1.clone()
        };
        c.write_files(&password).await?;
        let notes = c.up().await?;
        let old = self.endpoint("old", "postgres");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        let admin = loop {
            match connect(&old).await {
                Ok(conn) => break conn,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(e).context(format!(
                        "the old primary's container ({}) did not accept connections within 180 s; see `docker logs {}`",
                        c.container("old"),
                        c.container("old")
                    ))
                }
                Err(e) => {
                    if let Some(why) = c.not_running("old").await? {
                        return Err(e).context(why);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
            }
        };
        let has_app: bool = admin
            .query_one(
                "SELECT count(*) > 0 FROM pg_database WHERE datname = 'app'",
                &[],
            )
            .await?
            .get(0);
        if !has_app {
            admin.batch_execute("CREATE DATABASE app").await?;
        }
        // Looked at by itself, not inferred from the database: an `up` cut off between the
        // two left `app` without its tables. The sample is one batch, so one transaction.
        let app = connect(&self.endpoint("old", "app")).await?;
        let has_ledger: bool = app
            .query_one("SELECT to_regclass('public.ledger') IS NOT NULL", &[])
            .await?
            .get(0);
        if !has_ledger {
            app.batch_execute(template::SAMPLE_SQL).await?;
            app.batch_execute("CHECKPOINT").await?;
        }
        pgbouncer::wait_for_port(
            self.addr(compose::BOUNCER),
            compose::PGBOUNCER_PORT,
            Duration::from_secs(60),
        )
        .await
        .with_context(|| format!("PgBouncer's container {}", c.container(compose::BOUNCER)))?;
        self.write_spec().await?;
        let mut status = self.status().await?;
        status.notes = notes;
        Ok(status)
    }

    async fn set_passwords(&self, pw: &[(String, String)]) -> Result<()> {
        let sock = Conninfo::parse(&format!(
            "host={} port={} user=postgres dbname=postgres sslmode=disable",
            self.socket_dir().display(),
            self.port("old")
        ))?;
        let c = connect(&Endpoint::new("old", sock, None)).await?;
        for (user, password) in pw {
            // Alphanumeric only, so plain quoting is exact.
            c.batch_execute(&format!("ALTER ROLE {user} PASSWORD '{password}'"))
                .await?;
        }
        Ok(())
    }

    async fn write_spec(&self) -> Result<()> {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let pass = q(&self.passfile().display().to_string());
        let run_as = match self.host.run_as() {
            Some(u) => format!(", run_as = {}", q(&u.name)),
            None => String::new(),
        };
        let host_of = |member: &str| match (&self.sites, &self.compose) {
            (_, Some(c)) => c.spec_host(member),
            (Some(sites), None) => sites.spec_host(member),
            (None, None) => format!("{{ kind = \"local\"{run_as} }}"),
        };
        let bouncer_ini = match &self.compose {
            Some(_) => PathBuf::from(compose::PGBOUNCER_INI),
            None => self.bouncer().ini(),
        };
        let mut s = format!(
            "# Written by `migrate lab up`: a complete spec for the lab in {dir}.\n\
             name = \"lab\"\n\
             state_dir = {state}\n\n\
             [replication]\n\
             user = \"repl\"\n\
             password = {{ passfile = {pass} }}\n",
            dir = self.dir.display(),
            state = q(&self.dir.join("state").display().to_string()),
        );
        for n in NODES {
            s.push_str(&format!(
                "\n[nodes.{}]\nrole = \"{}\"\n",
                n.name,
                crate::engine::label(&n.role)
            ));
            if let Some(up) = n.upstream {
                s.push_str(&format!("upstream = \"{up}\"\n"));
            }
            s.push_str(&format!(
                "conninfo = \"host={} port={} user=postgres dbname=postgres sslmode=disable\"\n\
                 password = {{ passfile = {pass} }}\n\
                 data_dir = {}\n\
                 log_file = {}\n\
                 bin_dir = {}\n\
                 replication_tls = \"none\"\n\
                 host = {}\n",
                self.addr(n.name),
                self.port(n.name),
                q(&self.data_dir(n.name).display().to_string()),
                q(&self.server_log(n.name).display().to_string()),
                q(&self.bin_dir.display().to_string()),
                host_of(n.name),
            ));
            if let Service::PgCtlCluster { version, cluster } = self.service(n.name) {
                s.push_str(&format!(
                    "service = {{ kind = \"pg_ctlcluster\", version = {version}, cluster = {} }}\n",
                    q(&cluster)
                ));
            }
        }
        s.push_str(&format!("\n[cutover]\nlag_threshold = \"16MiB\"\nlag_stable_for = \"2s\"\nproof_timeout = \"{PROOF_TIMEOUT_S}s\"\n"));
        // The application endpoint is the route: clients are held there during the switch.
        s.push_str(&format!(
            "\n[[route]]\nkind = \"pgbouncer\"\nadmin = \"host={} port={} user=postgres dbname=pgbouncer sslmode=disable\"\npassword = {{ passfile = {pass} }}\nconfig = {}\ndatabases = [\"app\", \"postgres\"]\nhost = {}\n",
            self.addr(netns::BOUNCER),
            self.pgbouncer_port(),
            q(&bouncer_ini.display().to_string()),
            host_of(netns::BOUNCER),
        ));
        if let Some(clone) = pgbackrest::clone_table(self) {
            s.push_str(&clone);
        }
        LocalHost::new(None)?
            .write_file(&self.spec_path(), s.as_bytes(), 0o644, None)
            .await
    }

    /// A pgBackRest repository with a full backup of the old primary, and the lab's spec
    /// cloning from it (see [`pgbackrest`]).
    pub async fn seed_pgbackrest(&self) -> Result<()> {
        pgbackrest::seed(self).await?;
        self.write_spec().await
    }
}

/// Servers must not run as root: as root, the lab runs them as `postgres`.
fn lab_host() -> Result<LocalHost> {
    if nix::unistd::geteuid().is_root() {
        RunAs::lookup("postgres").context(
            "as root the lab runs PostgreSQL as the `postgres` OS user, which is missing",
        )?;
        LocalHost::new(Some("postgres"))
    } else {
        LocalHost::new(None)
    }
}

/// The kind of hosts a lab was made with.
fn state_hosts(s: &LabState) -> Hosts {
    if s.compose.is_some() {
        Hosts::Compose
    } else if s.ssh_sites {
        Hosts::Ssh
    } else {
        Hosts::Local
    }
}

fn layout_word(l: Layout) -> &'static str {
    match l {
        Layout::Plain => "plain",
        Layout::Debian => "debian",
    }
}

fn absolute(dir: &Path) -> Result<PathBuf> {
    if dir.is_absolute() {
        Ok(dir.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(dir))
    }
}

fn read_state(dir: &Path) -> Result<Option<LabState>> {
    let path = dir.join("lab-state.json");
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("read {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn write_state(dir: &Path, state: &LabState) -> Result<()> {
    let path = dir.join("lab-state.json");
    crate::host::local::write_atomic(&path, &serde_json::to_vec_pretty(state)?, 0o644, None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_folder_above_the_lab_from_the_root_down() {
        let all = super::top_down(std::path::Path::new("/a/b/lab"));
        let shown: Vec<String> = all.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(shown, ["/", "/a", "/a/b", "/a/b/lab"]);
    }
}
