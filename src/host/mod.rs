//! Host control: run commands and handle files on the machine that holds a node.
//!
//! One trait, [`Host`], with three implementations: [`local::LocalHost`] (optionally running
//! commands as another OS user), [`remote::RemoteHost`] over the system `ssh` client, and the
//! same over `docker exec`. Remote file operations are small POSIX `sh` scripts; every argument
//! is quoted by [`quote::shell_quote`].

pub mod exec;
pub mod local;
pub mod mux;
pub mod quote;
pub mod remote;
pub mod shell;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use async_trait::async_trait;
use serde::Serialize;

pub use exec::{Cmd, Output};

/// How to reach a node's host, as the spec says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HostSpec {
    Local {
        run_as: Option<String>,
    },
    Ssh {
        host: String,
        port: Option<u16>,
        user: Option<String>,
        identity_file: Option<PathBuf>,
        options: Vec<String>,
    },
    Docker {
        container: String,
        user: Option<String>,
        docker: Option<PathBuf>,
    },
}

impl HostSpec {
    /// A key that is equal for two nodes on the same machine.
    pub fn identity(&self) -> String {
        match self {
            HostSpec::Local { .. } => "local".into(),
            HostSpec::Ssh { host, port, .. } => format!("ssh:{host}:{}", port.unwrap_or(22)),
            HostSpec::Docker { container, .. } => format!("docker:{container}"),
        }
    }

    pub fn open(&self) -> Result<Arc<dyn Host>> {
        Ok(match self {
            HostSpec::Local { run_as } => Arc::new(local::LocalHost::new(run_as.as_deref())?),
            HostSpec::Ssh {
                host,
                port,
                user,
                identity_file,
                options,
            } => Arc::new(remote::RemoteHost::ssh(
                host,
                *port,
                user.as_deref(),
                identity_file.as_deref(),
                options,
            )),
            HostSpec::Docker {
                container,
                user,
                docker,
            } => Arc::new(remote::RemoteHost::docker(
                container,
                user.as_deref(),
                docker.as_deref(),
            )),
        })
    }
}

#[async_trait]
pub trait Host: Send + Sync + std::fmt::Debug {
    /// For messages: `local (as postgres)`, `ssh postgres@db1:22`, `docker container pg-old`.
    fn describe(&self) -> String;

    /// Get ready for quick commands (an ssh host opens its master connection); before the
    /// cutover's pause, so that nothing inside it pays a connection setup. Best effort.
    async fn prepare(&self) {}

    /// Run an argv; fails only if it could not be run or timed out. See [`Host::run_ok`].
    async fn run(&self, cmd: &Cmd) -> Result<Output>;

    async fn read_file(&self, path: &Path) -> Result<Vec<u8>>;

    /// Replace `path` atomically (temporary file, fsync, rename, fsync of the directory) with
    /// the given mode. The owner is `owner` if given; a local host with `run_as` defaults to
    /// that user.
    async fn write_file(
        &self,
        path: &Path,
        contents: &[u8],
        mode: u32,
        owner: Option<&str>,
    ) -> Result<()>;

    async fn exists(&self, path: &Path) -> Result<bool>;

    /// Several small files, in order, each replaced atomically as by `write_file` (no owner
    /// given). A remote host writes them in one round trip: inside the write pause each
    /// round trip over ssh costs a network round trip or more.
    async fn write_files(&self, files: &[FileWrite]) -> Result<()> {
        for f in files {
            self.write_file(&f.path, &f.contents, f.mode, None).await?;
        }
        Ok(())
    }

    /// [`Host::write_files`], then `then` once every file is durable, and its output: a check
    /// that must see the host as it is *after* the write (the stopped old primary still stopped
    /// once `standby.signal` is in place). A remote host does both in one round trip; `then`
    /// does not run when a write fails.
    async fn write_files_then(&self, files: &[FileWrite], then: &Cmd) -> Result<Output> {
        self.write_files(files).await?;
        self.run(then).await
    }

    /// Remove a file; a missing file is not an error.
    async fn remove_file(&self, path: &Path) -> Result<()>;

    /// Replace an existing file's contents keeping its mode and owner (a config file the
    /// operator owns: pgbouncer.ini, haproxy.cfg).
    async fn rewrite_file(&self, path: &Path, contents: &[u8]) -> Result<()> {
        let shown = path.display().to_string();
        let out = self
            .run_ok(&Cmd::new(["stat", "-L", "-c", "%a %u %g", "--", &shown]))
            .await?;
        let text = out.stdout_text();
        let (mode, owner) = parse_stat(&text).ok_or_else(|| {
            anyhow::anyhow!(
                "on {}: cannot read the mode of {shown}: {text:?}",
                self.describe()
            )
        })?;
        self.write_file(path, contents, mode, Some(&owner)).await
    }

    /// [`Host::rewrite_file`], only if the file still holds `expected` (read earlier, before
    /// a time-critical stretch): `Ok(false)`, and nothing written, when it changed meanwhile.
    /// A remote host checks and writes in one round trip.
    async fn rewrite_file_if(&self, path: &Path, expected: &[u8], contents: &[u8]) -> Result<bool> {
        if self.read_file(path).await? != expected {
            return Ok(false);
        }
        self.rewrite_file(path, contents).await?;
        Ok(true)
    }

    /// Run and require exit status 0; the error names the host, the command and its stderr.
    async fn run_ok(&self, cmd: &Cmd) -> Result<Output> {
        let out = self.run(cmd).await?;
        if !out.success() {
            bail!(
                "on {}: `{}` failed ({}): {}",
                self.describe(),
                cmd.display(),
                out.status_text(),
                out.stderr_tail()
            );
        }
        Ok(out)
    }
}

/// One file of [`Host::write_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileWrite {
    pub path: std::path::PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl FileWrite {
    pub fn new(
        path: impl Into<std::path::PathBuf>,
        contents: impl Into<Vec<u8>>,
        mode: u32,
    ) -> FileWrite {
        FileWrite {
            path: path.into(),
            contents: contents.into(),
            mode,
        }
    }
}

/// `stat -c '%a %u %g'` → (mode, "uid:gid").
pub fn parse_stat(text: &str) -> Option<(u32, String)> {
    let mut it = text.split_whitespace();
    let mode = u32::from_str_radix(it.next()?, 8).ok()?;
    let uid: u32 = it.next()?.parse().ok()?;
    let gid: u32 = it.next()?.parse().ok()?;
    Some((mode, format!("{uid}:{gid}")))
}

/// The default time limit for host commands that should be quick.
pub const QUICK: Duration = Duration::from_secs(60);
