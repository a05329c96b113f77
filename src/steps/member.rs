//! A spec node as steps see it: its endpoint, host control, server, and how it reaches its
//! upstream for replication.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use crate::host::{Cmd, FileWrite, Host, HostSpec, Output};
use crate::pg::secret::resolve_password;
use crate::pg::server::{find_local_bin_dir, Server};
use crate::pg::service::Service;
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

/// A standby's `connect_timeout` to its upstream unless the upstream's conninfo sets one.
pub const STREAM_CONNECT_TIMEOUT_S: &str = "5";

/// Whether a standby's settings set its `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// A fresh clone carries its upstream's port setting: give it the one in its conninfo.
    FromConninfo,
    /// A server that ran before (the old primary, staged) keeps the port it listens on, which
    /// behind NAT or a tunnel is not the conninfo's.
    Keep,
}

/// The replication passfile a standby's primary_conninfo points at, in its data directory.
pub const PASSFILE: &str = "migrate.pgpass";

#[derive(Clone)]
pub struct Member {
    pub node: Node,
    pub upstream: Option<Node>,
    pub repl_user: String,
    pub repl_password: Option<crate::pg::SecretRef>,
    pub host: Arc<dyn Host>,
    /// How its base backup is taken (`[clone]`).
    pub clone_settings: crate::spec::CloneSettings,
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
            clone_settings: spec.clone.clone(),
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
        // Debian keeps each major's binaries in one place.
        if let (None, Service::PgCtlCluster { version, .. }) =
            (&self.node.bin_dir, &self.node.service)
        {
            return Ok(PathBuf::from(format!("/usr/lib/postgresql/{version}/bin")));
        }
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
        Ok(
            Server::new(self.host.clone(), self.bin_dir()?, &self.node.data_dir)
                .managed_by(self.node.service.clone()),
        )
    }

    /// A step description's words for an action on this node's server.
    pub fn server_words(&self, verb: &str) -> String {
        self.node.service.words(verb, &self.node.data_dir)
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
        // Without a limit the walreceiver's connection attempt across a cut link waits out
        // the kernel's SYN retries (over two minutes) and goes on waiting after the link is
        // back; with one it gives up and tries again (wal_retrieve_retry_interval, 5 s).
        if c.get("connect_timeout").is_none() {
            c.set("connect_timeout", STREAM_CONNECT_TIMEOUT_S);
        }
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

    /// Run `cmd` (a replication client: pg_basebackup, psql) on this node's host with the
    /// replication password in a private `mktemp -d` folder (0700, random name) named by
    /// `PGPASSFILE`, removed when the command ends. The password travels on stdin, never in an
    /// argv or an environment; the command stays the direct child (a stray copy of a killed
    /// run can then be found and stopped). A crash between the two leaves the 0700 folder.
    pub async fn run_with_replication_password(
        &self,
        cmd: Cmd,
        require_success: bool,
    ) -> Result<Output> {
        let line = self
            .replication_password()?
            .map(|pw| self.passfile_line(&pw));
        self.run_with_passfile(cmd, line.as_deref(), require_success)
            .await
    }

    /// Run `cmd` on this node's host with `passfile` (libpq passfile lines) in a private
    /// folder named by `PGPASSFILE`, as [`Member::run_with_replication_password`] does.
    pub async fn run_with_passfile(
        &self,
        cmd: Cmd,
        passfile: Option<&str>,
        require_success: bool,
    ) -> Result<Output> {
        let dir = match passfile {
            Some(lines) => Some(self.private_passfile(lines).await?),
            None => None,
        };
        let cmd = match &dir {
            Some(d) => cmd.env("PGPASSFILE", format!("{d}/pgpass")),
            None => cmd,
        };
        let out = if require_success {
            self.host.run_ok(&cmd).await
        } else {
            self.host.run(&cmd).await
        };
        if let Some(d) = &dir {
            let _ = self.host.run(&Cmd::new(["rm", "-rf", "--", d])).await;
        }
        out
    }

    /// A fresh private folder on the node's host holding `passfile` as `pgpass`; its path.
    async fn private_passfile(&self, passfile: &str) -> Result<String> {
        let script = "set -e; umask 077; d=$(mktemp -d \"${TMPDIR:-/tmp}/migrate-pass.XXXXXXXXXX\"); cat > \"$d/pgpass\"; printf %s \"$d\"";
        let out = self
            .host
            .run_ok(&Cmd::new(["sh", "-c", script]).stdin(passfile.as_bytes().to_vec()))
            .await
            .context("make a private folder for the replication passfile")?;
        let dir = out.stdout_text();
        if !dir.starts_with('/') || dir.contains('\n') {
            bail!("mktemp gave {dir:?}, not a folder");
        }
        Ok(dir)
    }

    /// A libpq passfile line granting the replication user everywhere.
    pub fn passfile_line(&self, password: &Secret) -> String {
        passfile_line(&self.repl_user, password)
    }

    /// postgresql.auto.conf for this node as a standby of its upstream: `existing` minus what
    /// we set (and minus a soft fence, which must not survive into the new role), plus the
    /// node-local cluster_name, the port when `port` says so, and how it streams.
    pub fn standby_settings(
        &self,
        existing: &str,
        with_passfile: bool,
        port: Port,
    ) -> Result<String> {
        let set_port = port == Port::FromConninfo;
        const OURS: &[&str] = &[
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
                let ours = OURS.contains(&key) || (set_port && key == "port");
                !(ours || l.starts_with("# migrate:"))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let passfile =
            with_passfile.then(|| self.node.data_dir.join(PASSFILE).display().to_string());
        let conninfo = self
            .replication_conninfo(passfile.as_deref())?
            .to_libpq_string();
        let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let port = if set_port {
            format!("port = {}\n", self.node.conninfo.port())
        } else {
            String::new()
        };
        out.push_str(&format!(
            "# migrate: node-local settings for {name}\n{port}cluster_name = {cn}\nprimary_conninfo = {pc}\nprimary_slot_name = {slot}\nrecovery_target_timeline = 'latest'\n",
            name = self.node.name,
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
    pub async fn make_standby(&self, existing: &[u8], port: Port) -> Result<()> {
        self.host
            .write_files(&self.standby_files(existing, port)?)
            .await
    }

    /// What makes this node a standby of its upstream: the passfile (with a password),
    /// postgresql.auto.conf (`existing` with the standby settings) and standby.signal, in
    /// that order, for one `write_files`.
    pub fn standby_files(&self, existing: &[u8], port: Port) -> Result<Vec<FileWrite>> {
        let data = &self.node.data_dir;
        let password = self.replication_password()?;
        let mut files = Vec::new();
        if let Some(pw) = &password {
            files.push(FileWrite::new(
                data.join(PASSFILE),
                self.passfile_line(pw).into_bytes(),
                0o600,
            ));
        }
        let settings =
            self.standby_settings(&String::from_utf8_lossy(existing), password.is_some(), port)?;
        files.push(FileWrite::new(
            data.join("postgresql.auto.conf"),
            settings.into_bytes(),
            0o600,
        ));
        files.push(FileWrite::new(
            data.join("standby.signal"),
            Vec::new(),
            0o600,
        ));
        Ok(files)
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

/// A libpq passfile line granting `user` everywhere.
pub fn passfile_line(user: &str, password: &Secret) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:{}:{}\n", esc(user), esc(password.expose()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    Absent,
    Empty,
    Cluster,
    Other,
}

#[cfg(test)]
mod tests {
    use super::{Member, Port};

    fn member() -> Member {
        let text = "name = \"t\"\n[replication]\nuser = \"repl\"\n\
            [nodes.old]\nrole = \"primary\"\nconninfo = \"host=10.0.0.1 port=15432\"\ndata_dir = \"/a\"\n\
            [nodes.new]\nrole = \"target\"\nupstream = \"old\"\nconninfo = \"host=10.0.0.2 port=6432\"\ndata_dir = \"/b\"\n";
        let spec = crate::spec::parse(std::path::Path::new("/x.toml"), text).unwrap();
        Member::new(&spec, "new").unwrap()
    }

    #[test]
    fn a_clone_gets_its_conninfo_port_and_a_staged_server_keeps_its_own() {
        let existing = "port = 5432\nwork_mem = '64MB'\ndefault_transaction_read_only = on\n";
        let clone = member()
            .standby_settings(existing, false, Port::FromConninfo)
            .unwrap();
        assert!(
            clone.contains("port = 6432\n") && !clone.contains("port = 5432"),
            "{clone}"
        );
        let staged = member()
            .standby_settings(existing, false, Port::Keep)
            .unwrap();
        assert!(
            staged.contains("port = 5432\n") && !staged.contains("6432\n"),
            "{staged}"
        );
        for s in [&clone, &staged] {
            assert!(
                s.contains("work_mem = '64MB'"),
                "the operator's settings stay: {s}"
            );
            assert!(
                !s.contains("default_transaction_read_only"),
                "the fence must not survive: {s}"
            );
            assert!(
                s.contains("primary_conninfo = '") && s.contains("port=15432"),
                "{s}"
            );
        }
    }
}
