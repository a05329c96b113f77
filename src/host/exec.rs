//! Running a process on this machine with a time limit, optionally as another user.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::io::AsyncWriteExt;

use super::quote::shell_join;

/// A command for a host: an argv (never a shell string), optional stdin, a time limit and
/// extra environment. Environment variables are only honoured by local hosts.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    pub env: Vec<(String, String)>,
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

pub async fn run_process(cmd: &Cmd, run_as: Option<&RunAs>) -> Result<Output> {
    let (prog, args) = cmd
        .argv
        .split_first()
        .ok_or_else(|| anyhow!("empty command"))?;
    let mut c = tokio::process::Command::new(prog);
    c.args(args)
        .stdin(if cmd.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    if let Some(u) = run_as {
        // Switching users only works from root; as that user already, run as is.
        if nix::unistd::geteuid().as_raw() != u.uid {
            c.uid(u.uid).gid(u.gid);
        }
        c.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name)
            .current_dir("/");
    }
    let mut child = c
        .spawn()
        .with_context(|| format!("run `{}`", cmd.display()))?;
    if let Some(data) = &cmd.stdin {
        let mut stdin = child.stdin.take().expect("piped");
        let data = data.clone();
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
            let _ = stdin.shutdown().await;
        });
    }
    match tokio::time::timeout(cmd.timeout, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.with_context(|| format!("wait for `{}`", cmd.display()))?;
            Ok(Output {
                code: out.status.code(),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        }
        Err(_) => Err(anyhow!(
            "`{}` did not finish within {:?}; it was killed",
            cmd.display(),
            cmd.timeout
        )),
    }
}
