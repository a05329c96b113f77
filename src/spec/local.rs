//! The checks of a spec that look at this machine (the one migrate runs on): every secret file
//! exists, is a regular file owned by the running user (or root) and readable by nobody else;
//! every plugin command resolves to an executable; every trust file exists. They run at load
//! time, so `validate` and `plan` report them before anything touches a server.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Route, Spec, SpecError};
use crate::host::HostSpec;
use crate::pg::{Conninfo, SecretRef};

/// A file the spec points at on this machine, and how it must look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    pub field: String,
    pub path: PathBuf,
    pub kind: FileKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A password, key or TSIG secret: mode 0600 (or stricter), owned by us or root.
    Secret,
    /// A CA certificate or known_hosts file: it must exist.
    Trust,
    /// A plugin's program: it must resolve to an executable.
    Program,
}

/// Every local file the spec names, with the field that names it.
pub fn files(spec: &Spec) -> Vec<LocalFile> {
    let mut out = Vec::new();
    let mut push = |field: String, path: PathBuf, kind| out.push(LocalFile { field, path, kind });
    let secret =
        |field: String, r: &Option<SecretRef>, push: &mut dyn FnMut(String, PathBuf, FileKind)| {
            if let Some(SecretRef::Passfile(p) | SecretRef::File(p)) = r {
                push(field, p.clone(), FileKind::Secret);
            }
        };
    secret(
        "replication.password".into(),
        &spec.replication.password,
        &mut push,
    );
    for n in &spec.nodes {
        let f = format!("nodes.{}", n.name);
        secret(format!("{f}.password"), &n.password, &mut push);
        conninfo_files(&format!("{f}.conninfo"), &n.conninfo, &mut push);
        host_files(&format!("{f}.host"), &n.host, &mut push);
        if let Some(super::Ha::Patroni(p)) = &n.ha {
            secret(format!("{f}.ha.password"), &p.password, &mut push);
            if let Some(ca) = &p.ca_file {
                push(format!("{f}.ha.ca_file"), ca.clone(), FileKind::Trust);
            }
        }
    }
    for (i, h) in spec.hooks.iter().enumerate() {
        if let super::HookTarget::Command(c) = &h.target {
            push(
                format!("hook[{i}].command[0]"),
                PathBuf::from(&c[0]),
                FileKind::Program,
            );
        }
    }
    if let Some(fence) = &spec.failover.fence {
        push(
            "failover.fence.command[0]".into(),
            PathBuf::from(&fence.command[0]),
            FileKind::Program,
        );
    }
    for (i, r) in spec.routes.iter().enumerate() {
        let f = format!("route[{i}]");
        let through = |t: &Option<super::Through>,
                       push: &mut dyn FnMut(String, PathBuf, FileKind)| {
            if let Some(t) = t {
                if let Some(SecretRef::Passfile(p) | SecretRef::File(p)) = &t.password {
                    push(format!("{f}.password"), p.clone(), FileKind::Secret);
                }
                conninfo_files(&format!("{f}.connect"), &t.conninfo, push);
            }
        };
        match r {
            Route::None => {}
            Route::PgBouncer(p) => {
                secret(format!("{f}.password"), &p.password, &mut push);
                conninfo_files(&format!("{f}.admin"), &p.admin, &mut push);
                host_files(&format!("{f}.host"), &p.host, &mut push);
            }
            Route::HaProxy(h) => {
                through(&Some(h.connect.clone()), &mut push);
                host_files(&format!("{f}.host"), &h.host, &mut push);
            }
            Route::Dns(d) => {
                push(
                    format!("{f}.key_file"),
                    d.key_file.clone(),
                    FileKind::Secret,
                );
                through(&d.connect, &mut push);
            }
            Route::PowerDns(p) => {
                secret(format!("{f}.api_key"), &Some(p.api_key.clone()), &mut push);
                if let Some(ca) = &p.ca_file {
                    push(format!("{f}.ca_file"), ca.clone(), FileKind::Trust);
                }
                through(&p.connect, &mut push);
            }
            Route::Nat(n) => {
                through(&Some(n.connect.clone()), &mut push);
                host_files(&format!("{f}.host"), &n.host, &mut push);
            }
            Route::Exec(e) => {
                push(
                    format!("{f}.command[0]"),
                    PathBuf::from(&e.command[0]),
                    FileKind::Program,
                );
                through(&e.connect, &mut push);
            }
        }
    }
    out
}

fn conninfo_files(field: &str, c: &Conninfo, push: &mut dyn FnMut(String, PathBuf, FileKind)) {
    for (key, kind) in [
        ("passfile", FileKind::Secret),
        ("sslkey", FileKind::Secret),
        ("sslrootcert", FileKind::Trust),
        ("sslcert", FileKind::Trust),
    ] {
        // `system` is libpq's word for the system's CA store, not a file.
        if let Some(p) = c.get(key).filter(|p| *p != "system") {
            push(format!("{field}.{key}"), PathBuf::from(p), kind);
        }
    }
}

fn host_files(field: &str, h: &HostSpec, push: &mut dyn FnMut(String, PathBuf, FileKind)) {
    if let HostSpec::Ssh {
        identity_file,
        options,
        ..
    } = h
    {
        if let Some(i) = identity_file {
            push(
                format!("{field}.identity_file"),
                i.clone(),
                FileKind::Secret,
            );
        }
        for o in options {
            if let Some((k, v)) = o.split_once('=') {
                if k.trim().eq_ignore_ascii_case("UserKnownHostsFile") {
                    push(
                        format!("{field}.known_hosts"),
                        PathBuf::from(v.trim()),
                        FileKind::Trust,
                    );
                }
            }
        }
    }
}

/// Remember (for redaction) every secret value the spec references that can be read now:
/// variables that are set, secret files, every password in a referenced passfile, and the
/// variables handed to plugins. Best effort: what cannot be read is reported when it is used.
pub fn remember_secrets(spec: &Spec) {
    let mut refs: Vec<SecretRef> = Vec::new();
    refs.extend(spec.replication.password.clone());
    refs.extend(spec.nodes.iter().filter_map(|n| n.password.clone()));
    refs.extend(spec.nodes.iter().filter_map(|n| match &n.ha {
        Some(super::Ha::Patroni(p)) => p.password.clone(),
        _ => None,
    }));
    if let Some(fence) = &spec.failover.fence {
        refs.extend(fence.env.iter().map(|v| SecretRef::Env(v.clone())));
    }
    for h in &spec.hooks {
        refs.extend(h.env.iter().map(|v| SecretRef::Env(v.clone())));
    }
    for r in &spec.routes {
        match r {
            Route::PgBouncer(p) => refs.extend(p.password.clone()),
            Route::HaProxy(h) => refs.extend(h.connect.password.clone()),
            Route::Dns(d) => refs.extend(d.connect.as_ref().and_then(|t| t.password.clone())),
            Route::PowerDns(p) => {
                refs.push(p.api_key.clone());
                refs.extend(p.connect.as_ref().and_then(|t| t.password.clone()));
            }
            Route::Nat(n) => refs.extend(n.connect.password.clone()),
            Route::Exec(e) => {
                refs.extend(e.env.iter().map(|v| SecretRef::Env(v.clone())));
                refs.extend(e.connect.as_ref().and_then(|t| t.password.clone()));
            }
            Route::None => {}
        }
    }
    for r in refs {
        match r {
            SecretRef::Env(var) => {
                if let Ok(v) = std::env::var(var) {
                    crate::redact::remember(&v);
                }
            }
            SecretRef::File(p) => {
                if let Ok(v) = std::fs::read_to_string(p) {
                    crate::redact::remember(v.trim());
                }
            }
            SecretRef::Passfile(p) => {
                for line in std::fs::read_to_string(p).unwrap_or_default().lines() {
                    if let Some(pw) = passfile_password(line) {
                        crate::redact::remember(&pw);
                    }
                }
            }
        }
    }
}

/// The password field of a libpq passfile line (`host:port:db:user:password`, `\:` escapes).
fn passfile_password(line: &str) -> Option<String> {
    if line.trim_start().starts_with('#') {
        return None;
    }
    let mut fields = 0;
    let mut chars = line.chars();
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let n = chars.next()?;
                if fields == 4 {
                    out.push(n);
                }
            }
            ':' if fields < 4 => fields += 1,
            c if fields == 4 => out.push(c),
            _ => {}
        }
    }
    (fields == 4 && !out.is_empty()).then_some(out)
}

/// Check every file; the first problem is the error.
pub fn check(spec: &Spec) -> Result<(), SpecError> {
    let euid = nix::unistd::geteuid().as_raw();
    for f in files(spec) {
        let problem = match f.kind {
            FileKind::Secret => secret_problem(&f.path, euid),
            FileKind::Trust => match std::fs::metadata(&f.path) {
                Err(e) => Some((
                    format!("{} cannot be read: {e}", f.path.display()),
                    "create it or correct the path".to_string(),
                )),
                // A pipe or a device would block whoever reads it (a TLS set-up inside the
                // pause, ssh): only a file (or a link to one) is taken.
                Ok(m) if !m.is_file() => Some((
                    format!("{} is not a regular file", f.path.display()),
                    "point at the certificate or known_hosts file itself".to_string(),
                )),
                Ok(_) => None,
            },
            FileKind::Program => program_problem(&f.path),
        };
        if let Some((problem, fix)) = problem {
            return Err(SpecError {
                file: spec.path.clone(),
                field: super::values::shown(&f.field, super::values::QUOTE_MAX),
                problem: super::values::shown(&problem, 4 * super::values::QUOTE_MAX),
                fix,
            });
        }
    }
    Ok(())
}

/// What is wrong with a secret file, if anything (pure but for the `lstat`).
fn secret_problem(path: &Path, euid: u32) -> Option<(String, String)> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) => {
            return Some((
                format!("the secret file {shown} cannot be read: {e}"),
                "create it (mode 0600) or correct the path".into(),
            ))
        }
        // A link is followed once; its target must pass the same checks.
        Ok(m) if m.file_type().is_symlink() => match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                return Some((
                    format!("the secret file {shown} is a dangling link: {e}"),
                    "point it at the real file".into(),
                ))
            }
        },
        Ok(m) => m,
    };
    secret_verdict(
        &shown.to_string(),
        meta.is_file(),
        meta.permissions().mode(),
        meta.uid(),
        euid,
    )
}

/// The rule for a secret file, as a pure function of its type, mode and owner.
pub fn secret_verdict(
    shown: &str,
    is_file: bool,
    mode: u32,
    owner: u32,
    euid: u32,
) -> Option<(String, String)> {
    if !is_file {
        return Some((
            format!("the secret file {shown} is not a regular file"),
            "point at the file that holds the secret".into(),
        ));
    }
    if mode & 0o077 != 0 {
        return Some((
            format!(
                "the secret file {shown} is readable or writable by group or others (mode {:04o})",
                mode & 0o7777
            ),
            format!("chmod 600 {shown}"),
        ));
    }
    if owner != euid && owner != 0 {
        return Some((
            format!("the secret file {shown} belongs to uid {owner}, not to the user running migrate (uid {euid})"),
            format!("chown it to the user that runs migrate: chown {euid} {shown}"),
        ));
    }
    None
}

fn program_problem(program: &Path) -> Option<(String, String)> {
    let exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let has_dir = program.components().count() > 1 || program.is_absolute();
    let found = if has_dir {
        exec(program)
    } else {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| exec(&d.join(program))))
    };
    (!found).then(|| {
        (
            format!(
                "the plugin {} is not an executable file{}",
                program.display(),
                if has_dir { "" } else { " on PATH" }
            ),
            "install the plugin (chmod +x), or give command = [\"/absolute/path\", …]".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{passfile_password, secret_verdict};

    #[test]
    fn passfile_passwords_are_found_for_redaction() {
        assert_eq!(
            passfile_password("*:*:*:repl:s3cr\\:et").as_deref(),
            Some("s3cr:et")
        );
        assert_eq!(passfile_password("# h:p:d:u:pw"), None);
        assert_eq!(passfile_password("h:p:d:u"), None);
    }

    #[test]
    fn secret_files_are_private_regular_files_of_ours() {
        assert_eq!(secret_verdict("/k", true, 0o100600, 1000, 1000), None);
        assert_eq!(
            secret_verdict("/k", true, 0o100400, 0, 1000),
            None,
            "root's file is fine"
        );
        let (p, fix) = secret_verdict("/k", true, 0o100644, 1000, 1000).unwrap();
        assert!(p.contains("0644") && fix == "chmod 600 /k", "{p} / {fix}");
        let (p, _) = secret_verdict("/k", true, 0o100600, 65534, 1000).unwrap();
        assert!(p.contains("uid 65534"), "{p}");
        assert!(secret_verdict("/k", false, 0o040700, 1000, 1000).is_some());
    }
}
