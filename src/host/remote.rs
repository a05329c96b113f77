//! Hosts reached through a command wrapper: the system `ssh` client or `docker exec`.
//! Commands are argvs; for ssh they are joined with POSIX quoting, because the remote side
//! hands the command line to the login shell.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;

use super::exec::run_process;
use super::quote::shell_join;
use super::{Cmd, FileWrite, Host, Output};

#[derive(Debug, Clone)]
enum Transport {
    Ssh {
        prefix: Vec<String>,
        dest: String,
        /// The multiplexing master's control socket (see [`super::mux`]).
        socket: Option<std::path::PathBuf>,
    },
    Docker {
        prefix: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct RemoteHost {
    transport: Transport,
    label: String,
}

/// Atomic write on the far side: a fresh temporary file (`mktemp`: random name, created
/// exclusively, never a planted file or link), chmod/chown, fsync, rename, fsync the
/// directory. `sync FILE` needs coreutils 8.24; where it takes no file, a full `sync` runs.
const WRITE_SCRIPT: &str = r#"set -e
dest=$1; mode=$2; owner=$3
dir=$(dirname -- "$dest")
umask 077
tmp=$(mktemp "$dir/.migrate-tmp.XXXXXXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
chmod "$mode" "$tmp"
case $owner in
  *:*) chown "$owner" "$tmp" ;;
  ?*) chown "$owner:" "$tmp" ;;
esac
sync -- "$tmp" 2>/dev/null || sync
mv -f -- "$tmp" "$dest"
trap - EXIT
sync -- "$dir" 2>/dev/null || sync
"#;

/// `rewrite_file(_if)` on a remote host: the mode and owner read and the file written in one
/// call, contents on stdin. With `sha256`, first the file's digest is compared on the host
/// (exit 3 when it changed since it was read; a host without sha256sum fails the script and
/// the caller reads the file again).
fn rewrite_cmd(path: &Path, sha256: Option<&str>, contents: &[u8]) -> Cmd {
    let guard = if sha256.is_some() {
        "have=$(sha256sum < \"$1\")\n[ \"${have%% *}\" = \"$2\" ] || exit 3\n"
    } else {
        ""
    };
    let script = format!(
        "set -e\n{guard}mode=$(stat -L -c %a -- \"$1\")\nowner=$(stat -L -c %u:%g -- \"$1\")\nset -- \"$1\" \"$mode\" \"$owner\"\n{WRITE_SCRIPT}"
    );
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        script,
        "migrate-rewrite".into(),
        path.display().to_string(),
    ];
    argv.extend(sha256.map(str::to_string));
    Cmd::new(argv).stdin(contents.to_vec())
}

/// `write_files` on a remote host: arguments in pairs (destination, octal mode); the contents
/// on stdin, one base64 line per file (never on the command line, which any user of the host
/// can read in `ps`: a passfile is among them). `read` and `printf` are shell builtins, so
/// the contents reach no other process's argv either. Each file is written as WRITE_SCRIPT
/// writes one, but the fsyncs are batched (one `sync` for the new files, one for their
/// folders) and a 0600 file needs no chmod (mktemp makes it so): each process costs a
/// millisecond or two, and `stage` writes three files inside the pause. The lists are kept
/// in numbered variables and "$@", never split on spaces.
const WRITE_MANY_SCRIPT: &str = r#"set -e
umask 077
n=0
cleanup() { k=1; while [ $k -le $n ]; do eval "t=\$tmp_$k"; [ -z "$t" ] || rm -f -- "$t"; k=$((k + 1)); done; }
trap cleanup EXIT
dir_of() { case $1 in */*) dir=${1%/*}; [ -n "$dir" ] || dir=/ ;; *) dir=. ;; esac; }
i=1
while [ $i -lt $# ]; do
  eval "dest=\${$i}; mode=\${$((i + 1))}"
  IFS= read -r data || [ -n "$data" ]
  dir_of "$dest"
  tmp=$(mktemp "$dir/.migrate-tmp.XXXXXXXXXX")
  n=$((n + 1)); eval "dest_$n=\$dest; tmp_$n=\$tmp"
  if [ -n "$data" ]; then printf '%s' "$data" | base64 -d > "$tmp"; fi
  [ "$mode" = 600 ] || chmod "$mode" "$tmp"
  i=$((i + 2))
done
set --
k=1; while [ $k -le $n ]; do eval "set -- \"\$@\" \"\$tmp_$k\""; k=$((k + 1)); done
[ $# -eq 0 ] || sync -- "$@" 2>/dev/null || sync
set --
k=1
while [ $k -le $n ]; do
  eval "dest=\$dest_$k; tmp=\$tmp_$k"
  mv -f -- "$tmp" "$dest"
  eval "tmp_$k="
  dir_of "$dest"
  seen=0; for d in "$@"; do [ "$d" != "$dir" ] || seen=1; done
  [ $seen = 1 ] || set -- "$@" "$dir"
  k=$((k + 1))
done
[ $# -eq 0 ] || sync -- "$@" 2>/dev/null || sync
"#;

/// Above this much content a batch goes file by file (on stdin), not on the command line.
const BATCH_MAX: usize = 64 * 1024;

/// One batched write: the command (names and modes) and its stdin (the contents).
fn write_many_cmd(files: &[FileWrite]) -> Cmd {
    use base64::Engine;
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        WRITE_MANY_SCRIPT.into(),
        "migrate-write".into(),
    ];
    let mut stdin = Vec::new();
    for f in files {
        argv.push(f.path.display().to_string());
        argv.push(format!("{:o}", f.mode));
        stdin.extend(
            base64::engine::general_purpose::STANDARD
                .encode(&f.contents)
                .into_bytes(),
        );
        stdin.push(b'\n');
    }
    Cmd::new(argv).stdin(stdin)
}

/// What [`write_many_then_cmd`]'s script prints once every file is written and synced.
const WRITTEN: &str = "migrate-files-written";

/// [`write_many_cmd`], then `then` in the same script (its status is the script's; it reads
/// no stdin, which carried the files).
fn write_many_then_cmd(files: &[FileWrite], then: &Cmd) -> Cmd {
    let mut cmd = write_many_cmd(files);
    cmd.argv[2] = format!(
        "{WRITE_MANY_SCRIPT}echo {WRITTEN}\nset +e\n{} </dev/null\n",
        shell_join(&then.argv)
    );
    cmd.timeout = cmd.timeout.max(then.timeout);
    cmd
}

/// Pure: `then`'s own output from [`write_many_then_cmd`]'s, or None when the files were not
/// all written (the marker never printed: `then` did not run).
fn after_written(out: &Output) -> Option<Output> {
    let marker = format!("{WRITTEN}\n");
    let rest = out.stdout.strip_prefix(marker.as_bytes())?;
    Some(Output {
        code: out.code,
        stdout: rest.to_vec(),
        stderr: out.stderr.clone(),
    })
}

impl RemoteHost {
    pub fn ssh(
        host: &str,
        port: Option<u16>,
        user: Option<&str>,
        identity: Option<&Path>,
        options: &[String],
    ) -> RemoteHost {
        let mut prefix: Vec<String> = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ServerAliveInterval=15",
        ]
        .map(String::from)
        .to_vec();
        if let Some(p) = port {
            prefix.extend(["-p".into(), p.to_string()]);
        }
        if let Some(u) = user {
            prefix.extend(["-l".into(), u.to_string()]);
        }
        if let Some(i) = identity {
            prefix.extend([
                "-i".into(),
                i.display().to_string(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
            ]);
        }
        for o in options {
            prefix.extend(["-o".into(), o.clone()]);
        }
        // `--` ends ssh's options, so the destination can never be read as one.
        prefix.push("--".into());
        let label = format!(
            "ssh {}{}:{}",
            user.map(|u| format!("{u}@")).unwrap_or_default(),
            host,
            port.unwrap_or(22)
        );
        let socket = super::mux::socket_for(&prefix, host);
        RemoteHost {
            transport: Transport::Ssh {
                prefix,
                dest: host.to_string(),
                socket,
            },
            label,
        }
    }

    pub fn docker(container: &str, user: Option<&str>, docker: Option<&Path>) -> RemoteHost {
        let bin = docker
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("docker"));
        let mut prefix = vec![bin.display().to_string(), "exec".into(), "-i".into()];
        if let Some(u) = user {
            prefix.extend(["-u".into(), u.to_string()]);
        }
        prefix.push(container.to_string());
        RemoteHost {
            transport: Transport::Docker { prefix },
            label: format!("docker container {container}"),
        }
    }

    /// The ssh master's control socket, when this host multiplexes (see [`super::mux`]).
    pub fn control_socket(&self) -> Option<&Path> {
        match &self.transport {
            Transport::Ssh { socket, .. } => socket.as_deref(),
            Transport::Docker { .. } => None,
        }
    }

    /// The local argv that runs `argv` on the far side.
    pub fn wrap(&self, argv: &[String]) -> Vec<String> {
        match &self.transport {
            Transport::Ssh {
                prefix,
                dest,
                socket,
            } => {
                let mut v = prefix.clone();
                if let Some(s) = socket {
                    // Before the `--` that ends ssh's options.
                    let at = v.len() - 1;
                    v.splice(at..at, super::mux::client_options(s));
                }
                v.push(dest.clone());
                v.push(shell_join(argv));
                v
            }
            Transport::Docker { prefix } => {
                let mut v = prefix.clone();
                v.extend(argv.iter().cloned());
                v
            }
        }
    }
}

#[async_trait]
impl Host for RemoteHost {
    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn run(&self, cmd: &Cmd) -> Result<Output> {
        // Variables travel as `env K=V argv…` (POSIX env): they are visible in the far side's
        // process list, so `Cmd::env` carries settings (LC_ALL=C), never secrets.
        let argv = if cmd.env.is_empty() {
            cmd.argv.clone()
        } else {
            let mut v = vec!["env".to_string()];
            v.extend(cmd.env.iter().map(|(k, val)| format!("{k}={val}")));
            v.extend(cmd.argv.iter().cloned());
            v
        };
        let wrapped = Cmd {
            argv: self.wrap(&argv),
            stdin: cmd.stdin.clone(),
            timeout: cmd.timeout,
            env: Vec::new(),
            output_limit: cmd.output_limit,
        };
        let socket = match &self.transport {
            Transport::Ssh { socket, .. } => socket.as_deref(),
            Transport::Docker { .. } => None,
        };
        let mut master = false;
        if let Some(s) = socket {
            master = super::mux::ensure(s).await;
        }
        let started = std::time::Instant::now();
        if let (Some(s), true) = (
            socket,
            master && super::shell::fits(cmd) && socket.is_some_and(super::shell::usable),
        ) {
            let shell = self.wrap(&["perl".into(), "-e".into(), super::shell::AGENT.into()]);
            match super::shell::run(s, &shell, &shell_join(&argv), cmd).await {
                Ok(out) => {
                    tracing::debug!(
                        host = %self.label,
                        ms = started.elapsed().as_millis() as u64,
                        "ran (kept shell) {}",
                        argv.iter().take(3).map(String::as_str).collect::<Vec<_>>().join(" ")
                    );
                    return Ok(out);
                }
                Err(super::shell::Failed::NoAnswer(e)) => {
                    return Err(e.context(format!("cannot reach {}", self.label)))
                }
                // Nothing ran: a session of its own, as without a master.
                Err(super::shell::Failed::NotSent(e)) => {
                    tracing::debug!(host = %self.label, "kept shell unusable: {e:#}");
                }
            }
        }
        let mut out = run_process(&wrapped, None)
            .await
            .with_context(|| format!("on {}", self.label))?;
        // What each remote command costs (MIGRATE_LOG=migrate::host=debug): the pause is
        // counted in round trips.
        tracing::debug!(
            host = %self.label,
            ms = started.elapsed().as_millis() as u64,
            "ran {}",
            argv.iter().take(3).map(String::as_str).collect::<Vec<_>>().join(" ")
        );
        if let Some(s) = socket {
            if super::mux::stale(&out.stderr) {
                // It ran over a direct connection; the next command gets a new master.
                super::mux::forget(s);
                out.stderr = super::mux::without_chatter(&out.stderr);
            }
        }
        // ssh reports its own failures (unreachable, auth) with status 255.
        if matches!(self.transport, Transport::Ssh { .. }) && out.code == Some(255) {
            bail!("cannot reach {}: {}", self.label, out.stderr_tail());
        }
        // docker's own failures end with status 1 like a command's: told apart by what the
        // client says, so a missing container is never read as "the file does not exist".
        if matches!(self.transport, Transport::Docker { .. }) {
            if let Some(why) = docker_failure(out.code, &String::from_utf8_lossy(&out.stderr)) {
                bail!("cannot reach {}: {why}", self.label);
            }
        }
        Ok(out)
    }

    async fn prepare(&self) {
        if let Transport::Ssh {
            socket: Some(s), ..
        } = &self.transport
        {
            if super::mux::ensure(s).await {
                let shell = self.wrap(&["perl".into(), "-e".into(), super::shell::AGENT.into()]);
                super::shell::open(s, &shell);
            }
        }
    }

    async fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        let out = self
            .run_ok(&Cmd::new(["cat", "--", &path.display().to_string()]))
            .await?;
        Ok(out.stdout)
    }

    async fn write_file(
        &self,
        path: &Path,
        contents: &[u8],
        mode: u32,
        owner: Option<&str>,
    ) -> Result<()> {
        let cmd = Cmd::new([
            "sh".to_string(),
            "-c".into(),
            WRITE_SCRIPT.into(),
            "migrate-write".into(),
            path.display().to_string(),
            format!("{mode:o}"),
            owner.unwrap_or("").to_string(),
        ])
        .stdin(contents.to_vec());
        self.run_ok(&cmd).await.map(|_| ())
    }

    /// One round trip: the mode and owner are read in the same call that writes (a route's
    /// config edit is inside the write pause).
    async fn rewrite_file(&self, path: &Path, contents: &[u8]) -> Result<()> {
        self.run_ok(&rewrite_cmd(path, None, contents))
            .await
            .map(|_| ())
    }

    async fn rewrite_file_if(&self, path: &Path, expected: &[u8], contents: &[u8]) -> Result<bool> {
        use sha2::Digest;
        let want = hex::encode(sha2::Sha256::digest(expected));
        let out = self.run(&rewrite_cmd(path, Some(&want), contents)).await?;
        match out.code {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => bail!(
                "on {}: rewriting {} failed ({}): {}",
                self.label,
                path.display(),
                out.status_text(),
                out.stderr_tail()
            ),
        }
    }

    async fn write_files(&self, files: &[FileWrite]) -> Result<()> {
        if files.iter().map(|f| f.contents.len()).sum::<usize>() > BATCH_MAX {
            for f in files {
                self.write_file(&f.path, &f.contents, f.mode, None).await?;
            }
            return Ok(());
        }
        if files.is_empty() {
            return Ok(());
        }
        self.run_ok(&write_many_cmd(files)).await.map(|_| ())
    }

    async fn write_files_then(&self, files: &[FileWrite], then: &Cmd) -> Result<Output> {
        let small = files.iter().map(|f| f.contents.len()).sum::<usize>() <= BATCH_MAX;
        // What the script cannot carry (an environment, stdin of its own) goes in two calls.
        if files.is_empty() || !small || !then.env.is_empty() || then.stdin.is_some() {
            self.write_files(files).await?;
            return self.run(then).await;
        }
        let out = self.run(&write_many_then_cmd(files, then)).await?;
        after_written(&out).ok_or_else(|| {
            anyhow::anyhow!(
                "on {}: writing {} failed ({}): {}",
                self.label,
                files
                    .iter()
                    .map(|f| f.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                out.status_text(),
                out.stderr_tail()
            )
        })
    }

    async fn exists(&self, path: &Path) -> Result<bool> {
        let out = self
            .run(&Cmd::new(["test", "-e", &path.display().to_string()]))
            .await?;
        match out.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => bail!(
                "on {}: cannot check {}: {}",
                self.label,
                path.display(),
                out.stderr_tail()
            ),
        }
    }

    async fn remove_file(&self, path: &Path) -> Result<()> {
        self.run_ok(&Cmd::new(["rm", "-f", "--", &path.display().to_string()]))
            .await
            .map(|_| ())
    }
}

/// Pure: what went wrong when `docker exec` itself failed (status 1 and the client's or the
/// daemon's own message), with the fix; None when the command inside ran.
pub fn docker_failure(code: Option<i32>, stderr: &str) -> Option<String> {
    if code != Some(1) {
        return None;
    }
    let said = stderr.trim();
    if said.starts_with("Cannot connect to the Docker daemon")
        || said.contains("Is the docker daemon running?")
    {
        return Some(format!(
            "the Docker engine does not answer ({said}); start it (systemctl start docker, or dockerd) and try again"
        ));
    }
    // The client's own wording varies by version: 20.10 says "Error: No such container: x",
    // later ones "Error response from daemon: No such container: x".
    let daemon = said
        .strip_prefix("Error response from daemon: ")
        .or_else(|| {
            said.strip_prefix("Error: ")
                .filter(|d| d.starts_with("No such container"))
        })?;
    Some(if daemon.starts_with("No such container") {
        format!("{daemon}: the container does not exist; check the spec's container name against `docker ps -a`")
    } else if daemon.contains("is not running") || daemon.contains("is paused") {
        format!("{daemon}; start it (docker start <container>) and try again")
    } else {
        daemon.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_after_a_write_is_read_only_once_the_files_are_written() {
        let out = |code, stdout: &str| Output {
            code,
            stdout: stdout.as_bytes().to_vec(),
            stderr: b"e".to_vec(),
        };
        let after = after_written(&out(Some(3), "migrate-files-written\nstate\n")).unwrap();
        assert_eq!(
            (after.code, after.stdout_text()),
            (Some(3), "state\n".into())
        );
        // The write failed (set -e): the marker never came, whatever the status.
        assert!(after_written(&out(Some(0), "")).is_none());
        assert!(after_written(&out(Some(1), "migrate-files-written")).is_none());
        let cmd = write_many_then_cmd(
            &[FileWrite::new("/d/standby.signal", Vec::new(), 0o600)],
            &Cmd::new(["pg_ctl", "status", "-D", "/d ir"]),
        );
        assert!(cmd.argv[2].ends_with("set +e\npg_ctl status -D '/d ir' </dev/null\n"));
    }

    #[test]
    fn docker_exec_failures_are_told_apart_from_the_commands_own() {
        let gone = docker_failure(
            Some(1),
            "Error response from daemon: No such container: pg-dr",
        );
        assert!(gone.unwrap().contains("docker ps -a"));
        // docker.io 20.10's client.
        let gone = docker_failure(Some(1), "Error: No such container: pg-dr");
        assert!(gone.unwrap().contains("docker ps -a"));
        assert_eq!(
            docker_failure(Some(1), "Error: something of the command's own"),
            None
        );
        let stopped = docker_failure(
            Some(1),
            "Error response from daemon: Container 1edc67 is not running",
        );
        assert!(stopped.unwrap().contains("docker start"));
        let engine = docker_failure(
            Some(1),
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?",
        );
        assert!(engine.unwrap().contains("start it"));
        // The command's own failure: `test -e` saying no, cat's message.
        assert_eq!(docker_failure(Some(1), ""), None);
        assert_eq!(
            docker_failure(Some(1), "cat: /x: No such file or directory"),
            None
        );
        assert_eq!(docker_failure(Some(126), "OCI runtime exec failed"), None);
    }

    #[test]
    fn ssh_argv_quotes_the_remote_command_and_ends_options() {
        let h = RemoteHost::ssh(
            "db1",
            Some(2222),
            Some("postgres"),
            Some(Path::new("/k/id")),
            &["StrictHostKeyChecking=yes".into()],
        );
        let argv = h.wrap(&["psql".into(), "-c".into(), "SELECT 'x'".into()]);
        let dash = argv.iter().position(|a| a == "--").unwrap();
        assert_eq!(argv[dash + 1], "db1");
        assert_eq!(argv[dash + 2], r#"psql -c 'SELECT '\''x'\'''"#);
        assert!(argv.windows(2).any(|w| w == ["-o", "BatchMode=yes"]));
        assert!(argv.windows(2).any(|w| w == ["-p", "2222"]));
    }

    /// A batch's contents (a passfile among them) travel on stdin, never in an argv that
    /// `ps` shows to every user of the host.
    #[test]
    fn batched_contents_stay_off_the_command_line() {
        use base64::Engine;
        let secret = b"*:*:*:repl:s3cret-password\n";
        let cmd = write_many_cmd(&[
            FileWrite::new("/d/migrate-pgpass", secret.to_vec(), 0o600),
            FileWrite::new("/d/standby.signal", Vec::new(), 0o600),
        ]);
        let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
        assert!(cmd
            .argv
            .iter()
            .all(|a| !a.contains("s3cret") && !a.contains(&encoded)));
        assert_eq!(
            &cmd.argv[4..],
            ["/d/migrate-pgpass", "600", "/d/standby.signal", "600"]
        );
        assert_eq!(
            cmd.stdin.as_deref(),
            Some(format!("{encoded}\n\n").as_bytes())
        );
    }
}
