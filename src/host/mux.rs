//! OpenSSH connection multiplexing: one authenticated master connection per destination for
//! the life of the process, so that a command inside the cutover's pause pays no connection
//! setup (measured on loopback: 4.75 s → 0.84 s of pause with multiplexing added by hand).
//!
//! The control sockets live in a private folder (`tempfile`: 0700, random name) removed by
//! [`close_all`]. A master is started with `ControlPersist`, so it detaches with no pipe of
//! ours, and it ends by itself 60 s after its last use even if migrate is killed. Commands use
//! `ControlMaster=no`: with no live master they connect directly, as before, so a lost master
//! costs speed, never correctness; the next command starts a new one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a master outlives its last client (and migrate, if migrate is killed).
pub const PERSIST: &str = "60";

/// The most a master may take to connect and authenticate.
const START_LIMIT: Duration = Duration::from_secs(20);

/// The most `close_all` waits for one master to acknowledge `-O exit`.
const EXIT_LIMIT: Duration = Duration::from_secs(2);

/// After a failed start, direct connections for this long before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

struct Registry {
    dir: tempfile::TempDir,
    /// destination key → (socket, the argv that reaches it without multiplexing, dest)
    masters: HashMap<String, Entry>,
}

struct Entry {
    socket: PathBuf,
    prefix: Vec<String>,
    dest: String,
    failed_at: Option<Instant>,
}

fn registry() -> &'static Mutex<Option<Registry>> {
    static R: OnceLock<Mutex<Option<Registry>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(None))
}

/// What names one master: the whole ssh argv up to and including the destination (port,
/// user, identity, options *and host*). Two hosts reached with the same options must never
/// share a master: the second one's commands would run on the first.
fn master_key(prefix: &[String], dest: &str) -> String {
    let mut k = prefix.join("\u{1f}");
    k.push('\u{1f}');
    k.push_str(dest);
    k
}

/// The control socket for a destination (`prefix` is the ssh argv before it), registering it
/// on first use. `None` when no private folder can be made: then every command connects
/// directly.
pub fn socket_for(prefix: &[String], dest: &str) -> Option<PathBuf> {
    let key = master_key(prefix, dest);
    let mut guard = registry().lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let dir = tempfile::Builder::new()
            .prefix("migrate-ssh-")
            .tempdir()
            .ok()?;
        *guard = Some(Registry {
            dir,
            masters: HashMap::new(),
        });
    }
    let r = guard.as_mut()?;
    let n = r.masters.len();
    let dir = r.dir.path().to_path_buf();
    let e = r.masters.entry(key).or_insert_with(|| Entry {
        // Short names: a unix socket path is limited to about 100 bytes.
        socket: dir.join(format!("m{n}")),
        prefix: prefix.to_vec(),
        dest: dest.to_string(),
        failed_at: None,
    });
    Some(e.socket.clone())
}

/// The options that make one ssh invocation use the master at `socket` (or connect directly
/// when there is none).
pub fn client_options(socket: &Path) -> Vec<String> {
    vec![
        "-o".into(),
        "ControlMaster=no".into(),
        "-o".into(),
        format!("ControlPath={}", socket.display()),
    ]
}

/// Make sure a master serves `socket`: nothing to do when its socket is there; otherwise start
/// one (unless a start failed recently). Returns whether a master is believed to be up.
pub async fn ensure(socket: &Path) -> bool {
    if socket.exists() {
        // A master killed outright leaves its socket behind: then start a new one (a kept
        // shell would otherwise connect directly, for good, without saying so).
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return true;
        }
        forget(socket);
    }
    let (prefix, dest) = {
        let guard = registry().lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = guard
            .as_ref()
            .and_then(|r| r.masters.values().find(|e| e.socket == socket))
        else {
            return false;
        };
        if e.failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER) {
            return false;
        }
        (e.prefix.clone(), e.dest.clone())
    };
    let started = start(&prefix, &dest, socket).await;
    let mut guard = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = guard
        .as_mut()
        .and_then(|r| r.masters.values_mut().find(|e| e.socket == socket))
    {
        e.failed_at = (!started).then(Instant::now);
    }
    started
}

/// `ssh -o ControlMaster=yes -o ControlPersist=60 … dest true`: connects, authenticates, runs
/// `true`, and leaves the master in the background with its stdio on /dev/null.
async fn start(prefix: &[String], dest: &str, socket: &Path) -> bool {
    let (prog, args) = match prefix.split_first() {
        Some(p) => p,
        None => return false,
    };
    let mut c = tokio::process::Command::new(prog);
    // The options go before the `--` that ends the prefix.
    let cut = args.iter().position(|a| a == "--").unwrap_or(args.len());
    c.args(&args[..cut])
        .args([
            "-o",
            "ControlMaster=yes",
            "-o",
            &format!("ControlPersist={PERSIST}"),
            "-o",
            &format!("ControlPath={}", socket.display()),
        ])
        .args(&args[cut..])
        .arg(dest)
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    super::exec::clean_env(&mut c);
    let Ok(mut child) = c.spawn() else {
        return false;
    };
    match tokio::time::timeout(START_LIMIT, child.wait()).await {
        Ok(Ok(st)) => st.success() && socket.exists(),
        _ => false,
    }
}

/// A client found the socket but no master behind it (killed, or its link dropped): forget
/// it, so the next command starts a new master.
pub fn forget(socket: &Path) {
    let _ = std::fs::remove_file(socket);
}

/// Whether an ssh client's stderr says it could not use its control socket.
pub fn stale(stderr: &[u8]) -> bool {
    let text = String::from_utf8_lossy(stderr);
    text.contains("Control socket connect(") || text.contains("mux_client_")
}

/// stderr without ssh's multiplexing chatter (a stale socket's warning), for messages.
pub fn without_chatter(stderr: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .filter(|l| !l.starts_with("Control socket connect(") && !l.contains("mux_client_"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Stop every master this process started (`ssh -O exit`) and remove the private folder.
/// Called when a command ends; a killed process leaves masters that end by themselves after
/// [`PERSIST`] seconds.
pub fn close_all() {
    // The kept shells first: each holds a session on its master.
    super::shell::close_all();
    let taken = registry().lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(r) = taken else { return };
    for e in r.masters.values().filter(|e| e.socket.exists()) {
        let Some((prog, args)) = e.prefix.split_first() else {
            continue;
        };
        let cut = args.iter().position(|a| a == "--").unwrap_or(args.len());
        let mut c = std::process::Command::new(prog);
        c.args(&args[..cut])
            .args([
                "-o",
                &format!("ControlPath={}", e.socket.display()),
                "-O",
                "exit",
            ])
            .args(&args[cut..])
            .arg(&e.dest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // `-O exit` only talks to the local socket, but a master stuck on a dead link must not
        // hold up the end of the command: give it a moment, then leave it to ControlPersist.
        if let Ok(mut child) = c.spawn() {
            let deadline = Instant::now() + EXIT_LIMIT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    drop(r);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_is_recognised_and_its_warning_dropped() {
        let err = b"Control socket connect(/tmp/m0): Connection refused\nreal problem\n";
        assert!(stale(err));
        assert_eq!(without_chatter(err), b"real problem\n");
        assert!(!stale(b"Permission denied (publickey)."));
    }

    /// Found by the lab of separate hosts: keyed on the options alone, every host reached
    /// with the same user and key shared the first host's master.
    #[test]
    fn hosts_with_the_same_options_get_masters_of_their_own() {
        let prefix: Vec<String> = ["ssh", "-l", "postgres", "--"].map(String::from).to_vec();
        let a = socket_for(&prefix, "10.0.0.1").expect("a private folder");
        let b = socket_for(&prefix, "10.0.0.2").expect("a private folder");
        assert_ne!(a, b);
        assert_eq!(socket_for(&prefix, "10.0.0.1").as_ref(), Some(&a));
        let other_user: Vec<String> = ["ssh", "-l", "admin", "--"].map(String::from).to_vec();
        assert_ne!(socket_for(&other_user, "10.0.0.1"), Some(a));
    }
}
