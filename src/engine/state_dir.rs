//! The state directory: a folder of migrate's own, owned by the running user, closed to group
//! and others, holding only migrate's files, and never reached through a symbolic link. Files
//! in it are opened with `O_NOFOLLOW`, so a link planted there makes an open fail instead of
//! writing (or chmod-ing) a file elsewhere.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Create the state directory (0700) if it is missing, else check it; see [`verdict`].
pub fn ensure(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("create {}", parent.display()))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("create state directory {}", dir.display()))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("state directory {}", dir.display())),
        Ok(_) => check(dir),
    }
}

/// Check an existing state directory without changing anything (a missing one is fine).
pub fn check(dir: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other.with_context(|| format!("state directory {}", dir.display()))?,
    };
    let mut entries = Vec::new();
    if meta.is_dir() {
        for e in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
            let e = e?;
            let kind = e.file_type()?;
            entries.push((
                e.file_name().to_string_lossy().into_owned(),
                kind.is_symlink(),
            ));
        }
    }
    let found = Found {
        is_symlink: meta.file_type().is_symlink(),
        is_dir: meta.is_dir(),
        owner: meta.uid(),
        mode: meta.permissions().mode(),
        entries,
    };
    if let Some(problem) = verdict(&found, nix::unistd::geteuid().as_raw()) {
        bail!(
            "state directory {}: {problem}; nothing was changed",
            dir.display()
        );
    }
    // Readable by group or others (but not writable): tighten, as it holds journals.
    if found.mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 700 {}", dir.display()))?;
    }
    Ok(())
}

/// What was found at the state directory's path.
#[derive(Debug, Clone)]
pub struct Found {
    pub is_symlink: bool,
    pub is_dir: bool,
    pub owner: u32,
    pub mode: u32,
    /// Name and whether it is a symbolic link.
    pub entries: Vec<(String, bool)>,
}

/// The files migrate keeps in a state directory; anything else means the folder is shared.
pub fn ours(name: &str) -> bool {
    let journal =
        name == "journal.jsonl" || (name.starts_with("journal-") && name.ends_with(".jsonl"));
    let cert = (name.starts_with("certificate-") || name.starts_with("failover-"))
        && name.ends_with(".json");
    journal
        || cert
        || matches!(name, "lock" | "plan.json" | "drill-marker")
        || name.starts_with(TEMP_PREFIX)
}

use crate::files::TEMP_PREFIX;

/// The rule, as a pure function: the problem, or `None` when the folder may be used.
pub fn verdict(f: &Found, euid: u32) -> Option<String> {
    if f.is_symlink {
        return Some("is a symbolic link; give the real folder as state_dir".into());
    }
    if !f.is_dir {
        return Some("is not a directory; give a folder of its own as state_dir".into());
    }
    if f.owner != euid {
        return Some(format!(
            "belongs to uid {}, not to the user running migrate (uid {euid}), who could then swap its plan or journal; give a folder of your own",
            f.owner
        ));
    }
    if f.mode & 0o022 != 0 {
        return Some(format!(
            "is writable by group or others (mode {:04o}); chmod 700 it",
            f.mode & 0o7777
        ));
    }
    if let Some((name, _)) = f.entries.iter().find(|(_, link)| *link) {
        return Some(format!(
            "holds a symbolic link {name:?}; remove it (migrate never follows links there)"
        ));
    }
    if let Some((name, _)) = f.entries.iter().find(|(n, _)| !ours(n)) {
        return Some(format!(
            "holds {name:?}, which is not migrate's: it is not a folder of its own; give a dedicated state_dir"
        ));
    }
    None
}

/// Open a file in the state directory for reading, refusing a symbolic link.
pub fn open_read(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Options that refuse a symbolic link, for files migrate creates in the state directory.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(nix::libc::O_NOFOLLOW).mode(0o600);
    o
}

/// Read a whole file in the state directory without following a link.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    open_read(path)?.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found() -> Found {
        Found {
            is_symlink: false,
            is_dir: true,
            owner: 1000,
            mode: 0o040700,
            entries: vec![("journal.jsonl".into(), false), ("plan.json".into(), false)],
        }
    }

    #[test]
    fn a_private_folder_of_migrates_files_is_accepted() {
        assert_eq!(verdict(&found(), 1000), None);
        let mut f = found();
        f.mode = 0o040750;
        assert_eq!(
            verdict(&f, 1000),
            None,
            "readable by group is tightened, not refused"
        );
    }

    #[test]
    fn shared_foreign_linked_or_open_folders_are_refused() {
        type Change = Box<dyn Fn(&mut Found)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|f| f.owner = 65534), "uid 65534"),
            (
                Box::new(|f| f.mode = 0o040777),
                "writable by group or others",
            ),
            (Box::new(|f| f.is_symlink = true), "symbolic link"),
            (
                Box::new(|f| f.entries.push(("plan.json.lnk".into(), true))),
                "symbolic link",
            ),
            (
                Box::new(|f| f.entries.push(("spec.toml".into(), false))),
                "not migrate's",
            ),
            (Box::new(|f| f.is_dir = false), "not a directory"),
        ];
        for (change, want) in cases {
            let mut f = found();
            change(&mut f);
            let v = verdict(&f, 1000).unwrap_or_default();
            assert!(v.contains(want), "{f:?}: {v}");
        }
    }
}
