//! Running a process on this machine with a time limit, optionally as another user.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::AsyncWriteExt;

use super::quote::shell_join;

/// A command for a host: an argv (never a shell string), optional stdin, a time limit and
/// extra environment. Remote hosts pass the environment as `env K=V …` in the command line,
/// so it is for settings only; a secret goes on stdin (see
/// `steps::member::Member::run_with_replication_password`).
#[derive(Debug, Clone)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    pub env: Vec<(String, String)>,
    /// The most of stdout kept; more is an error (a plugin or a host gone wrong).
    pub output_limit: usize,
}

impl Cmd {
    pub fn new<I, S>(argv: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cmd {
            argv: argv.into_iter().map(Into::into).collect(),
            stdin: None,
            timeout: super::QUICK,
            env: Vec::new(),
            output_limit: OUTPUT_LIMIT,
        }
    }
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(data.into());
        self
    }
    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Cmd {
        self.env.push((key.into(), value.into()));
        self
    }
    pub fn output_limit(mut self, bytes: usize) -> Cmd {
        self.output_limit = bytes;
        self
    }
    /// The command as a shell would read it (for messages; environment values are not shown).
    pub fn display(&self) -> String {
        shell_join(&self.argv)
    }
}

#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn status_text(&self) -> String {
        match self.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".into(),
        }
    }
    /// The last few lines of stderr (or stdout when stderr is empty), for error messages.
    pub fn stderr_tail(&self) -> String {
        let text = if self.stderr.iter().all(u8::is_ascii_whitespace) {
            &self.stdout
        } else {
            &self.stderr
        };
        let text = String::from_utf8_lossy(text);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = &lines[lines.len().saturating_sub(6)..];
        if tail.is_empty() {
            "(no output)".into()
        } else {
            tail.join(" | ")
        }
    }
}

/// The OS identity a local command runs as.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: std::path::PathBuf,
}

impl RunAs {
    pub fn lookup(name: &str) -> Result<RunAs> {
        let u = nix::unistd::User::from_name(name)
            .with_context(|| format!("look up OS user {name}"))?
            .ok_or_else(|| anyhow!("no OS user {name:?} on this machine"))?;
        Ok(RunAs {
            name: name.into(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        })
    }
}

/// What a child inherits from migrate's environment: enough to find programs, speak the
/// operator's language and reach an ssh agent or a Docker daemon. Nothing else: no
/// `PGPASSWORD`, no API key, no variable a spec names as a secret (a child that needs one gets
/// it through [`Cmd::env`]).
const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TERM",
    "SSH_AUTH_SOCK",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CONTEXT",
];

fn inherited(key: &str) -> bool {
    INHERITED_ENV.contains(&key) || key.starts_with("LC_")
}

/// A child's environment: only the inherited allowlist (see `INHERITED_ENV`).
pub fn clean_env(c: &mut tokio::process::Command) {
    c.env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(inherited)));
}

/// The most of a child's stdout (and of its stderr) kept in memory.
pub const OUTPUT_LIMIT: usize = 16 << 20;

/// Kills the child's whole process group unless disarmed: on a time-out and when the call is
/// abandoned (Ctrl-C, an outer time box), so no grandchild (a plugin's helper, a shell's
/// background job) outlives the command and acts late.
struct GroupKiller(Option<nix::unistd::Pid>);

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Read a pipe to its end, keeping at most `limit` bytes (the rest is drained so the child
/// never blocks); `true` when something was dropped.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(
    pipe: Option<R>,
    limit: usize,
) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let mut out = Vec::new();
    let mut over = false;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
                over |= n > room;
            }
        }
    }
    (out, over)
}

/// util-linux's setpriv (Debian: always installed).
const SETPRIV: &str = "/usr/bin/setpriv";

/// Where a program is, as exec would find it with our PATH.
fn find_program(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        return Path::new(prog).is_file().then(|| PathBuf::from(prog));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

pub async fn run_process(cmd: &Cmd, run_as: Option<&RunAs>) -> Result<Output> {
    let (prog, args) = cmd
        .argv
        .split_first()
        .ok_or_else(|| anyhow!("empty command"))?;
    let switch = run_as.filter(|u| nix::unistd::geteuid().as_raw() != u.uid);
    let mut c = match switch {
        // std's uid()/gid() drop the user's supplementary groups (Debian's postgres user
        // reads the TLS key through `ssl-cert`); setpriv keeps them, and execs the program.
        Some(u) if Path::new(SETPRIV).is_file() => {
            // A missing program must stay a spawn error (callers name the package to
            // install), not setpriv's exit 127.
            let found = find_program(prog).ok_or_else(|| {
                anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound))
                    .context(format!("run `{}`", cmd.display()))
            })?;
            let mut c = tokio::process::Command::new(SETPRIV);
            c.args([
                format!("--reuid={}", u.uid),
                format!("--regid={}", u.gid),
                "--init-groups".into(),
                "--".into(),
            ])
            .arg(found);
            c
        }
        Some(u) => {
            let mut c = tokio::process::Command::new(prog);
            c.uid(u.uid).gid(u.gid);
            c
        }
        None => tokio::process::Command::new(prog),
    };
    c.args(args)
        .stdin(if cmd.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a time-out can kill everything it started.
        .process_group(0)
        .kill_on_drop(true);
    clean_env(&mut c);
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    if let Some(u) = run_as {
        // Switching users (above) only works from root; as that user already, run as is.
        c.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name)
            .current_dir("/");
    }
    let mut child = c
        .spawn()
        .with_context(|| format!("run `{}`", cmd.display()))?;
    let mut group = GroupKiller(child.id().map(|p| nix::unistd::Pid::from_raw(p as i32)));
    if let Some(data) = &cmd.stdin {
        let mut stdin = child.stdin.take().expect("piped");
        let data = data.clone();
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
            let _ = stdin.shutdown().await;
        });
    }
    let limit = cmd.output_limit;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let ((out, out_over), (err, _), status) = tokio::join!(
            read_capped(stdout, limit),
            read_capped(stderr, limit),
            child.wait()
        );
        (out, out_over, err, status)
    };
    match tokio::time::timeout(cmd.timeout, run).await {
        Ok((stdout, over, stderr, status)) => {
            let status = status.with_context(|| format!("wait for `{}`", cmd.display()))?;
            // The leader is gone; what it left running in its group stays (a server started
            // with pg_ctl has its own session). Only a time-out or an abandoned call kills it.
            group.0 = None;
            if over {
                bail!(
                    "`{}` printed more than {} KiB; refusing to read it",
                    cmd.display(),
                    limit >> 10
                );
            }
            Ok(Output {
                code: status.code(),
                stdout,
                stderr,
            })
        }
        Err(_) => {
            group.kill();
            Err(anyhow!(
                "`{}` did not finish within {:?}; it was killed with everything it started",
                cmd.display(),
                cmd.timeout
            ))
        }
    }
}
