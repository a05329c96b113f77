//! This machine, optionally running commands as another OS user (root → `postgres`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;

use super::exec::{run_process, RunAs};
use super::{Cmd, Host, Output};

#[derive(Debug, Clone)]
pub struct LocalHost {
    run_as: Option<RunAs>,
}

impl LocalHost {
    pub fn new(run_as: Option<&str>) -> Result<LocalHost> {
        Ok(LocalHost {
            run_as: run_as.map(RunAs::lookup).transpose()?,
        })
    }

    pub fn run_as(&self) -> Option<&RunAs> {
        self.run_as.as_ref()
    }
}

#[async_trait]
impl Host for LocalHost {
    fn describe(&self) -> String {
        match &self.run_as {
            Some(u) => format!("local (as {})", u.name),
            None => "local".into(),
        }
    }

    async fn run(&self, cmd: &Cmd) -> Result<Output> {
        run_process(cmd, self.run_as.as_ref()).await
    }

    async fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        tokio::fs::read(path)
            .await
            .with_context(|| format!("read {} on {}", path.display(), self.describe()))
    }

    async fn write_file(
        &self,
        path: &Path,
        contents: &[u8],
        mode: u32,
        owner: Option<&str>,
    ) -> Result<()> {
        let owner = match owner {
            Some(name) => Some(RunAs::lookup(name)?),
            None => self.run_as.clone(),
        };
        let path = path.to_path_buf();
        let contents = contents.to_vec();
        tokio::task::spawn_blocking(move || write_atomic(&path, &contents, mode, owner.as_ref()))
            .await
            .map_err(|e| anyhow!("file writer panicked: {e}"))?
    }

    async fn exists(&self, path: &Path) -> Result<bool> {
        tokio::fs::try_exists(path)
            .await
            .with_context(|| format!("check {}", path.display()))
    }

    async fn remove_file(&self, path: &Path) -> Result<()> {
        match tokio::fs::remove_file(path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("remove {} on {}", path.display(), self.describe()))
            }
            _ => Ok(()),
        }
    }
}

/// Temporary file in the same directory, fsync, chown/chmod, rename, fsync the directory.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32, owner: Option<&RunAs>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.migrate-tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(contents)
            .with_context(|| format!("write {}", tmp.display()))?;
        if let Some(u) = owner {
            if nix::unistd::geteuid().is_root() {
                std::os::unix::fs::fchown(&f, Some(u.uid), Some(u.gid))
                    .with_context(|| format!("chown {} to {}", tmp.display(), u.name))?;
            }
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename into {}", path.display()))?;
        std::fs::File::open(dir)?
            .sync_all()
            .with_context(|| format!("fsync {}", dir.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
