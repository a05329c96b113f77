//! The lab's Debian layout (`lab up --layout debian`): every node is a postgresql-common
//! cluster, made with the real `pg_createcluster`, its configuration in
//! `/etc/postgresql/<version>/<cluster>/`, its data in the lab directory, started and stopped
//! with `pg_ctlcluster`. The spec the lab writes says so with `service = { kind =
//! "pg_ctlcluster", … }`: the migration drives the servers the way a Debian host does.
//!
//! The old primary is the lab's template copied into its data directory and *integrated*
//! (pg_createcluster on an existing data directory moves its postgresql.conf, pg_hba.conf and
//! pg_ident.conf to /etc). The other nodes are created by pg_createcluster and then emptied,
//! so that the migration clones into them and their /etc configuration stays theirs.
//!
//! Writing /etc/postgresql needs root. Cluster names carry a random prefix recorded in the
//! lab's state, so several labs (parallel tests) never share one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::template::{COMMON_CONF, HBA};
use crate::host::local::LocalHost;
use crate::host::{Cmd, Host};
use crate::pg::service::Service;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Debian {
    pub version: u32,
    /// `lab<hex>`: this lab's clusters are `<prefix>_<node>`.
    pub prefix: String,
}

impl Debian {
    /// A new layout for the binaries in `bin_dir` (Debian's `/usr/lib/postgresql/<v>/bin`).
    pub fn new(bin_dir: &Path) -> Result<Debian> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the debian layout creates clusters under /etc/postgresql: run the lab as root");
        }
        let version = debian_version(bin_dir).with_context(|| {
            format!(
                "the debian layout needs Debian's PostgreSQL packages (/usr/lib/postgresql/<version>/bin); the binaries found are in {}",
                bin_dir.display()
            )
        })?;
        let on_path = std::env::var_os("PATH").is_some_and(|p| {
            std::env::split_paths(&p).any(|d| d.join("pg_createcluster").is_file())
        });
        if !on_path {
            bail!("the debian layout needs postgresql-common (pg_createcluster); install it with apt-get install postgresql-common");
        }
        Ok(Debian {
            version,
            prefix: format!("lab{:08x}", rand::random::<u32>()),
        })
    }

    pub fn cluster(&self, node: &str) -> String {
        format!("{}_{node}", self.prefix)
    }

    pub fn service(&self, node: &str) -> Service {
        Service::PgCtlCluster {
            version: self.version,
            cluster: self.cluster(node),
        }
    }

    pub fn config_dir(&self, node: &str) -> PathBuf {
        PathBuf::from(format!(
            "/etc/postgresql/{}/{}",
            self.version,
            self.cluster(node)
        ))
    }

    fn registered(&self, node: &str) -> bool {
        self.config_dir(node).join("postgresql.conf").is_file()
    }

    fn create_argv(&self, node: &str, data: &Path, port: u16, log: &Path) -> Vec<String> {
        vec![
            "pg_createcluster".into(),
            "-u".into(),
            "postgres".into(),
            "-d".into(),
            data.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-l".into(),
            log.display().to_string(),
            "--start-conf".into(),
            "manual".into(),
            self.version.to_string(),
            self.cluster(node),
        ]
    }

    /// pg_createcluster: a new cluster, or the registration of an existing data directory.
    async fn create(&self, node: &str, data: &Path, port: u16, log: &Path) -> Result<()> {
        root()?
            .run_ok(
                &Cmd::new(self.create_argv(node, data, port, log))
                    .timeout(Duration::from_secs(300)),
            )
            .await
            .with_context(|| {
                format!(
                    "pg_createcluster {} {} -d {}",
                    self.version,
                    self.cluster(node),
                    data.display()
                )
            })
            .map(|_| ())
    }

    /// Register the old primary's data directory (already the template's copy, its
    /// postgresql.conf carrying the lab's shared settings) as a cluster. pg_createcluster
    /// moves the configuration to /etc and sets port, cluster_name and the socket directory
    /// in place, so the node's own settings are appended again afterwards (later lines win).
    pub async fn integrate(
        &self,
        node: &str,
        data: &Path,
        port: u16,
        log: &Path,
        node_conf: &str,
        owner: &LocalHost,
    ) -> Result<()> {
        // Each part is redone until it shows done, so a `lab up` killed half-way can be run
        // again.
        if !self.registered(node) {
            self.create(node, data, port, log).await?;
        }
        let conf = self.config_dir(node).join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf).with_context(|| format!("read {}", conf.display()))?;
        if text.ends_with(node_conf) {
            return Ok(());
        }
        text.push_str(node_conf);
        owner.write_file(&conf, text.as_bytes(), 0o644, None).await
    }

    /// A cluster for a node the migration clones: created, given the lab's settings in its
    /// /etc directory, then its data directory emptied.
    pub async fn create_empty(
        &self,
        node: &str,
        data: &Path,
        port: u16,
        log: &Path,
        node_conf: &str,
        owner: &LocalHost,
    ) -> Result<()> {
        // The lab's settings file is written last: while it is missing, this node's part of
        // `lab up` is unfinished (and no migration can have cloned into it yet, since the
        // spec is written after), so a `lab up` killed half-way redoes it.
        let dir = self.config_dir(node);
        let settings = dir.join("conf.d").join("migrate-lab.conf");
        if settings.exists() {
            return Ok(());
        }
        if !self.registered(node) {
            self.create(node, data, port, log).await?;
        }
        owner
            .run_ok(&Cmd::new([
                "find",
                &data.display().to_string(),
                "-mindepth",
                "1",
                "-delete",
            ]))
            .await?;
        owner
            .write_file(&dir.join("pg_hba.conf"), HBA.as_bytes(), 0o640, None)
            .await?;
        owner
            .write_file(
                &settings,
                format!("{COMMON_CONF}{node_conf}").as_bytes(),
                0o644,
                None,
            )
            .await
    }

    /// Remove this lab's registrations (its /etc/postgresql directories); the data stays in
    /// the lab directory. Servers must be stopped first.
    pub fn unregister(&self, nodes: &[&str]) -> Result<()> {
        for n in nodes {
            let dir = self.config_dir(n);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("remove {}", dir.display())),
            }
        }
        Ok(())
    }

    /// After `unregister`, `lab up` cannot bring the clusters back.
    pub fn check_registered(&self, nodes: &[&str], lab_dir: &Path) -> Result<()> {
        if let Some(n) = nodes.iter().find(|n| !self.registered(n)) {
            bail!(
                "the lab in {} is in the debian layout but cluster {} is no longer registered in {}; remove the lab directory and run `migrate lab up --layout debian` again",
                lab_dir.display(),
                self.cluster(n),
                self.config_dir(n).display()
            );
        }
        Ok(())
    }
}

fn root() -> Result<LocalHost> {
    LocalHost::new(None)
}

/// `/usr/lib/postgresql/15/bin` → 15.
pub fn debian_version(bin_dir: &Path) -> Option<u32> {
    let mut parts = bin_dir.components().rev();
    (parts.next()?.as_os_str() == "bin").then_some(())?;
    let version = parts.next()?.as_os_str().to_str()?.parse().ok()?;
    (parts.next()?.as_os_str() == "postgresql").then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_debian_paths_only() {
        assert_eq!(
            debian_version(Path::new("/usr/lib/postgresql/15/bin")),
            Some(15)
        );
        assert_eq!(
            debian_version(Path::new("/usr/lib/postgresql/13/bin/")),
            Some(13)
        );
        assert_eq!(debian_version(Path::new("/opt/pg/15/bin")), None);
        assert_eq!(debian_version(Path::new("/usr/local/pgsql/bin")), None);
    }

    #[test]
    fn cluster_names_are_usable_by_pg_ctlcluster() {
        let d = Debian {
            version: 15,
            prefix: "lab0000abcd".into(),
        };
        assert!(crate::spec::values::plain_identifier(
            &d.cluster("new_replica")
        ));
        assert_eq!(
            d.config_dir("old"),
            Path::new("/etc/postgresql/15/lab0000abcd_old")
        );
    }
}
