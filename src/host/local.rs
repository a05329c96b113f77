//! This machine, optionally running commands as another OS user (root → `postgres`).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
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
            Some(name) => Some(numeric_owner(name).map_or_else(|| RunAs::lookup(name), Ok)?),
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

/// An owner given as `uid:gid` (as [`super::parse_stat`] reads it).
fn numeric_owner(owner: &str) -> Option<RunAs> {
    let (u, g) = owner.split_once(':')?;
    Some(RunAs {
        name: owner.to_string(),
        uid: u.parse().ok()?,
        gid: g.parse().ok()?,
        home: "/".into(),
    })
}

/// Temporary file in the same directory (random name, `O_EXCL`, never a planted link: the
/// `tempfile` crate), write, fsync, chown/chmod on the open file, rename over the target
/// (which replaces a link rather than following it), fsync the directory.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32, owner: Option<&RunAs>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(
            "{}.{}.",
            crate::files::TEMP_PREFIX,
            name.to_string_lossy()
        ))
        .tempfile_in(dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    let f = tmp.as_file_mut();
    f.write_all(contents)
        .with_context(|| format!("write {}", tmp.path().display()))?;
    if let Some(u) = owner {
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::fchown(tmp.as_file(), Some(u.uid), Some(u.gid))
                .with_context(|| format!("chown {} to {}", tmp.path().display(), u.name))?;
        }
    }
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("fsync {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow!("rename into {}: {}", path.display(), e.error))?;
    std::fs::File::open(dir)?
        .sync_all()
        .with_context(|| format!("fsync {}", dir.display()))?;
    Ok(())
}
