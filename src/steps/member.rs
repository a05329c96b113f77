//! A spec node as steps see it: its endpoint, host control, server, and how it reaches its
//! upstream for replication.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};

use crate::host::{Cmd, Host, HostSpec};
use crate::pg::secret::resolve_password;
use crate::pg::server::{find_local_bin_dir, Server};
use crate::pg::{Conninfo, Endpoint, Secret};
use crate::replication::slot_name;
use crate::spec::{Node, Spec};

/// Conninfo keys a replication connection inherits from the upstream's conninfo (connection
/// and TLS settings; never user, dbname or application_name).
const INHERITED: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "channel_binding",
];

/// The replication passfile a standby's primary_conninfo points at, in its data directory.
pub const PASSFILE: &str = "migrate.pgpass";

#[derive(Clone)]
pub struct Member {
    pub node: Node,
    pub upstream: Option<Node>,
    pub repl_user: String,
    pub repl_password: Option<crate::pg::SecretRef>,
    pub host: Arc<dyn Host>,
}

impl Member {
    pub fn new(spec: &Spec, name: &str) -> Result<Member> {
        let node = spec
            .node(name)
            .ok_or_else(|| anyhow!("no node {name}"))?
            .clone();
        let upstream = node.upstream.as_deref().and_then(|u| spec.node(u)).cloned();
        let host = node.host.open()?;
        Ok(Member {
            node,
            upstream,
            repl_user: spec.replication.user.clone(),
            repl_password: spec.replication.password.clone(),
            host,
        })
    }

    pub fn name(&self) -> &str {
        &self.node.name
    }

    pub fn endpoint(&self) -> Endpoint {
        self.node.endpoint()
    }

    pub fn upstream(&self) -> Result<&Node> {
        self.upstream
            .as_ref()
            .ok_or_else(|| anyhow!("{} has no upstream", self.node.name))
    }

    pub fn slot(&self) -> String {
        slot_name(&self.node.name)
    }

    /// The PostgreSQL bin directory on the node's host.
    pub fn bin_dir(&self) -> Result<PathBuf> {
        match (&self.node.bin_dir, &self.node.host) {
            (Some(d), _) => Ok(d.clone()),
            (None, HostSpec::Local { .. }) => find_local_bin_dir(),
            (None, _) => Err(anyhow!(
                "nodes.{}.bin_dir is needed for a remote host (e.g. \"/usr/lib/postgresql/15/bin\")",
                self.node.name
            )),
        }
    }

    pub fn server(&self) -> Result<Server> {
        Ok(Server::new(
            self.host.clone(),
            self.bin_dir()?,
            &self.node.data_dir,
        ))
    }

    pub fn host_label(&self) -> String {
        format!("{} ({})", self.node.name, self.host.describe())
    }

    /// The OS user files on the node's host should belong to (local `run_as`).
    pub fn file_owner(&self) -> Option<String> {
        match &self.node.host {
            HostSpec::Local { run_as } => run_as.clone(),
            _ => None,
        }
    }

    /// How this node connects to its upstream for streaming: the upstream's address and TLS
    /// settings, the replication user, this node's name, and a passfile on this node's host.
    pub fn replication_conninfo(&self, passfile: Option<&str>) -> Result<Conninfo> {
        let up = self.upstream()?;
        let mut c = Conninfo::parse("").expect("empty");
        for (k, v) in up.conninfo.params() {
            if INHERITED.contains(&k) {
                c.set(k, v);
            }
        }
        c.set("user", &self.repl_user);
        c.set("application_name", &self.node.name);
        if let Some(p) = passfile {
            c.set("passfile", p);
        }
        Ok(c)
    }

    /// The replication password, resolved on this machine from the spec's reference.
    pub fn replication_password(&self) -> Result<Option<Secret>> {
        let c = self
            .replication_conninfo(None)?
            .with("dbname", "replication");
        resolve_password(self.repl_password.as_ref(), &c)
            .context("resolve the replication password")
    }

    /// A libpq passfile line granting the replication user everywhere.
    pub fn passfile_line(&self, password: &Secret) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
        format!(
            "*:*:*:{}:{}\n",
            esc(&self.repl_user),
            esc(password.expose())
        )
    }

    /// postgresql.auto.conf for this node as a standby of its upstream: `existing` minus what
    /// we set (and minus a soft fence, which must not survive into the new role), plus the
    /// node-local port and cluster_name and how it streams.
    pub fn standby_settings(&self, existing: &str, with_passfile: bool) -> Result<String> {
        const OURS: &[&str] = &[
            "port",
            "cluster_name",
            "primary_conninfo",
            "primary_slot_name",
            "recovery_target_timeline",
            "default_transaction_read_only",
        ];
        let mut out: String = existing
            .lines()
            .filter(|l| {
                let key = l.split('=').next().unwrap_or("").trim();
                !OURS.contains(&key) && !l.starts_with("# migrate:")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let passfile =
            with_passfile.then(|| self.node.data_dir.join(PASSFILE).display().to_string());
        let conninfo = self
            .replication_conninfo(passfile.as_deref())?
            .to_libpq_string();
        let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
        out.push_str(&format!(
            "# migrate: node-local settings for {name}\nport = {port}\ncluster_name = {cn}\nprimary_conninfo = {pc}\nprimary_slot_name = {slot}\nrecovery_target_timeline = 'latest'\n",
            name = self.node.name,
            port = self.node.conninfo.port(),
            cn = q(&self.node.name),
            pc = q(&conninfo),
            slot = q(&self.slot()),
        ));
        Ok(out)
    }

    /// Make this member's (stopped) data directory a standby of its upstream: the replication
    /// passfile (when the spec has a password), `postgresql.auto.conf` from `existing` with
    /// [`Member::standby_settings`], and `standby.signal`, in that order, so the signal file
    /// is only ever beside settings that stream from the right place. Used after a clone and
    /// when the old primary is staged as the new primary's standby.
    pub async fn make_standby(&self, existing: &[u8]) -> Result<()> {
        let data = &self.node.data_dir;
        let password = self.replication_password()?;
        if let Some(pw) = &password {
            self.host
                .write_file(
                    &data.join(PASSFILE),
                    self.passfile_line(pw).as_bytes(),
                    0o600,
                    None,
                )
                .await?;
        }
        let settings =
            self.standby_settings(&String::from_utf8_lossy(existing), password.is_some())?;
        self.host
            .write_file(
                &data.join("postgresql.auto.conf"),
                settings.as_bytes(),
                0o600,
                None,
            )
            .await?;
        self.host
            .write_file(&data.join("standby.signal"), b"", 0o600, None)
            .await
    }

    /// The same member, streaming from `upstream` instead of its spec upstream (the old primary
    /// becoming a standby of the new one, and back).
    pub fn with_upstream(&self, upstream: &Node) -> Member {
        Member {
            upstream: Some(upstream.clone()),
            ..self.clone()
        }
    }

    pub async fn dir_state(&self) -> Result<DirState> {
        let d = self.node.data_dir.display().to_string();
        let out = self
            .host
            .run(&Cmd::new([
                "sh",
                "-c",
                "if [ ! -e \"$1\" ]; then echo absent; elif [ -z \"$(ls -A -- \"$1\")\" ]; then echo empty; \
                 elif [ -f \"$1/PG_VERSION\" ]; then echo cluster; else echo other; fi",
                "sh",
                &d,
            ]))
            .await?;
        Ok(match out.stdout_text().trim() {
            "absent" => DirState::Absent,
            "empty" => DirState::Empty,
            "cluster" => DirState::Cluster,
            "other" => DirState::Other,
            _ => anyhow::bail!(
                "on {}: cannot inspect {d}: {}",
                self.host.describe(),
                out.stderr_tail()
            ),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    Absent,
    Empty,
    Cluster,
    Other,
}
