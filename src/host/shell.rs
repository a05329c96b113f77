//! Kept remote shells: one `sh` per ssh host, started once on the host's multiplexed master
//! and fed one command per line, so a quick command costs one round trip and no new session.
//!
//! Over a multiplexed master each `ssh host cmd` still opens a channel, asks for the command
//! and waits for it to end: two to three round trips, plus sshd's session set-up (15-20 ms on
//! this machine's loopback). Inside the write pause that was most of what `--hosts ssh` added
//! to `--hosts local`.
//!
//! The protocol is lines of base64, so nothing needs escaping and no byte can end a frame early:
//! the tool writes `<command> <stdin or -> <seconds>`, the shell answers
//! `<exit status> <stdout> <stderr>`. The command line is the one ssh would have handed the login
//! shell; stdin reaches the command through a pipe (a passfile's contents never touch a file);
//! stdout and stderr go through files in a private `mktemp -d` folder (0700, removed when the
//! shell ends), since POSIX `sh` cannot capture both with the status otherwise. The far side
//! bounds each command itself with coreutils `timeout` (its whole process group, as a local
//! command's time-out kills its group); the tool waits a little longer for the answer and then
//! drops the shell.
//!
//! Only short commands come here ([`fits`]): a clone that runs for hours keeps a session of its
//! own. A shell that broke (its master gone, a time-out, an answer that cannot be read) is
//! dropped, never reused; the pool then starts another.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::{Cmd, Output};

/// The far side: one Perl process (Debian's `perl-base` is essential, so every Debian or
/// Ubuntu host has it) reading requests on stdin. Per command it forks once: the command runs
/// as `/bin/sh -c LINE` in a process group of its own, stdin through a pipe (fed by a forked
/// writer when it is larger than a pipe holds), stdout and stderr into anonymous temporary
/// files (unlinked at once); after `T` seconds the group gets TERM, two seconds later KILL, and
/// the status is 124, as with coreutils `timeout`. A `sh` loop doing the same needs seven
/// processes per command (measured: 16 ms a command here, against 1 ms for the command).
/// Fields are hex (`pack`/`unpack`, no module); the first line out is a greeting, so a host
/// without Perl is told from a command that failed.
pub const AGENT: &str = r#"use strict; use warnings; use POSIX ();
$| = 1; $SIG{PIPE} = "IGNORE";
print "migrate-shell 1\n";
while (defined(my $line = <STDIN>)) {
  chomp $line;
  my ($c, $i, $t, $cap) = split / /, $line;
  exit 1 unless defined $cap;
  $c = pack "H*", $c; $i = $i eq "-" ? "" : pack "H*", $i;
  open(my $out, "+>", undef) or exit 1; open(my $err, "+>", undef) or exit 1;
  pipe(my $r, my $w) or exit 1;
  my $pid = fork; exit 1 unless defined $pid;
  if (!$pid) {
    setpgrp(0, 0);
    open(STDIN, "<&", $r); open(STDOUT, ">&", $out); open(STDERR, ">&", $err);
    close $w;
    exec "/bin/sh", "-c", $c, "migrate" or POSIX::_exit(127);
  }
  close $r;
  my $writer = 0;
  if (length($i) > 0) {
    $writer = fork;
    if (defined $writer && !$writer) { print $w $i; close $w; POSIX::_exit(0); }
  }
  close $w;
  my $timed = 0;
  eval { local $SIG{ALRM} = sub { die "t\n" }; alarm $t; waitpid($pid, 0); alarm 0; };
  if ($@) {
    $timed = 1; kill "TERM", -$pid;
    eval { local $SIG{ALRM} = sub { die "t\n" }; alarm 2; waitpid($pid, 0); alarm 0; };
    if ($@) { kill "KILL", -$pid; waitpid($pid, 0); }
  }
  my $rc = $?;
  if ($writer) { kill "KILL", $writer; waitpid($writer, 0); }
  my $status = $timed ? 124 : ($rc & 127) ? 128 + ($rc & 127) : $rc >> 8;
  my ($o, $e) = ("", "");
  seek $out, 0, 0; read $out, $o, $cap + 1;
  seek $err, 0, 0; read $err, $e, $cap + 1;
  print $status, " ", unpack("H*", $o), " ", unpack("H*", $e), "\n";
}"#;

/// What a kept shell says first.
const GREETING: &[u8] = b"migrate-shell 1\n";

/// The most stdin a command may bring through a kept shell (larger ones take a session).
const STDIN_MAX: usize = 1 << 20;

/// Commands allowed longer than this take a session of their own: they are the long ones (a
/// clone, a backup), which would hold a shell for their whole run.
const LONGEST: Duration = super::QUICK;

/// How much longer than the far side's own time-out the tool waits for an answer.
const ANSWER_GRACE: Duration = Duration::from_secs(5);

/// How long a new shell may take to greet (its channel opens on a master already up).
const GREETING_WAIT: Duration = Duration::from_secs(10);

/// Exit status of the agent (as of coreutils `timeout`) when the time ran out.
const TIMED_OUT: i32 = 124;

/// Whether `cmd` goes through a kept shell.
pub fn fits(cmd: &Cmd) -> bool {
    cmd.timeout <= LONGEST && cmd.stdin.as_ref().is_none_or(|s| s.len() <= STDIN_MAX)
}

/// One request line (pure): command line, stdin (`-` for none), seconds, output cap.
pub fn request(command_line: &str, cmd: &Cmd) -> Vec<u8> {
    let input = match &cmd.stdin {
        Some(data) if !data.is_empty() => hex::encode(data),
        _ => "-".into(),
    };
    // Whole seconds, at least one (Perl's alarm).
    let seconds = cmd.timeout.as_secs_f64().ceil().max(1.0) as u64;
    format!(
        "{} {input} {seconds} {}\n",
        hex::encode(command_line),
        cmd.output_limit
    )
    .into_bytes()
}

/// One answer line (pure): the exit status, stdout and stderr.
pub fn answer(line: &[u8]) -> Result<Output> {
    let text = std::str::from_utf8(line).context("the remote shell's answer is not text")?;
    let mut fields = text.trim_end_matches('\n').splitn(3, ' ');
    let (Some(code), Some(out), Some(err)) = (fields.next(), fields.next(), fields.next()) else {
        bail!("the remote shell's answer is cut short");
    };
    let code: i32 = code
        .parse()
        .map_err(|_| anyhow!("the remote shell answered status {code:?}"))?;
    Ok(Output {
        code: Some(code),
        stdout: hex::decode(out).context("the remote shell's stdout")?,
        stderr: hex::decode(err).context("the remote shell's stderr")?,
    })
}

/// A running `ssh host perl -e AGENT`.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Whether its greeting was read (a shell opened ahead of need has not been used yet).
    greeted: bool,
}

impl Shell {
    fn spawn(argv: &[String]) -> Result<Shell> {
        let (prog, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
        let mut c = tokio::process::Command::new(prog);
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        super::exec::clean_env(&mut c);
        let mut child = c.spawn().context("start a remote shell")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Shell {
            child,
            stdin,
            stdout,
            greeted: false,
        })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

fn pool() -> &'static Mutex<HashMap<PathBuf, Vec<Shell>>> {
    static P: OnceLock<Mutex<HashMap<PathBuf, Vec<Shell>>>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(HashMap::new()))
}

/// An idle live shell for the master at `socket`, if the pool has one.
fn take(socket: &Path) -> Option<Shell> {
    let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
    let idle = p.get_mut(socket)?;
    while let Some(mut s) = idle.pop() {
        if s.alive() {
            return Some(s);
        }
    }
    None
}

/// Masters whose far side started no shell lately (no Perl there?): sessions of their own for a
/// while, rather than a failed start before every command.
fn refused() -> &'static Mutex<HashMap<PathBuf, std::time::Instant>> {
    static R: OnceLock<Mutex<HashMap<PathBuf, std::time::Instant>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Whether a kept shell is worth trying on the master at `socket`.
pub fn usable(socket: &Path) -> bool {
    let r = refused().lock().unwrap_or_else(|e| e.into_inner());
    r.get(socket).is_none_or(|t| t.elapsed() >= RETRY_AFTER)
}

fn give_back(socket: &Path, s: Shell) {
    let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
    p.entry(socket.to_path_buf()).or_default().push(s);
}

/// How many idle shells a master is given ahead of need: inside the pause two commands go to
/// one host at once (the old primary's stop, and the staging's look that waits there for it),
/// and a command that finds no idle shell pays a new session's set-up (a round trip or two).
const READY: usize = 2;

/// Start shells for the master at `socket` ahead of need, up to [`READY`] idle ones (`argv`:
/// the ssh command that runs [`AGENT`]); nothing is waited for.
pub fn open(socket: &Path, argv: &[String]) {
    let idle = {
        let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
        let idle = p.entry(socket.to_path_buf()).or_default();
        idle.retain_mut(|s| s.alive());
        idle.len()
    };
    for _ in idle..READY {
        if let Ok(s) = Shell::spawn(argv) {
            give_back(socket, s);
        }
    }
}

/// Drop every kept shell (their far sides see the end of input and exit).
pub fn close_all() {
    pool().lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// How a command through a kept shell ended without an answer.
pub enum Failed {
    /// Nothing reached the far side: the command did not run, a session of its own may.
    NotSent(anyhow::Error),
    /// The request went out and no answer came back: the command may have run.
    NoAnswer(anyhow::Error),
}

/// Run `command_line` (what ssh would hand the login shell) with `cmd`'s stdin and limits on a
/// kept shell of the master at `socket`, starting one with `argv` if none is idle.
pub async fn run(
    socket: &Path,
    argv: &[String],
    command_line: &str,
    cmd: &Cmd,
) -> Result<Output, Failed> {
    let mut shell = match take(socket) {
        Some(s) => s,
        None => Shell::spawn(argv).map_err(Failed::NotSent)?,
    };
    let line = request(command_line, cmd);
    if let Err(e) = shell.stdin.write_all(&line).await {
        return Err(Failed::NotSent(
            anyhow::Error::new(e).context("the remote shell's session has ended"),
        ));
    }
    // The request went out with no wait; a new shell's greeting comes back first. Without it
    // the far side never ran the agent (no Perl, a refused session): nothing ran.
    if !shell.greeted {
        let mut hello = Vec::new();
        let mut limited = (&mut shell.stdout).take(GREETING.len() as u64);
        let read = limited.read_until(b'\n', &mut hello);
        match tokio::time::timeout(GREETING_WAIT, read).await {
            Ok(Ok(_)) if hello == GREETING => shell.greeted = true,
            _ => {
                refused()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(socket.to_path_buf(), std::time::Instant::now());
                return Err(Failed::NotSent(anyhow!(
                    "no remote shell started (is perl installed there?)"
                )));
            }
        }
    }
    // Room for both streams in hex at the cap (one byte over it shows it was passed).
    let room = (cmd.output_limit as u64 + 1).saturating_mul(4) + 64;
    let mut got = Vec::new();
    let mut limited = (&mut shell.stdout).take(room);
    let read = limited.read_until(b'\n', &mut got);
    let answered = tokio::time::timeout(cmd.timeout + ANSWER_GRACE, read).await;
    let out = match answered {
        Ok(Ok(_)) if got.last() == Some(&b'\n') => answer(&got).map_err(Failed::NoAnswer)?,
        Ok(Ok(0)) => {
            return Err(Failed::NoAnswer(anyhow!(
                "the ssh session ended while `{}` ran",
                cmd.display()
            )))
        }
        Ok(Ok(_)) => {
            return Err(Failed::NoAnswer(anyhow!(
                "the ssh session ended while `{}` answered",
                cmd.display()
            )))
        }
        Ok(Err(e)) => return Err(Failed::NoAnswer(e.into())),
        Err(_) => {
            return Err(Failed::NoAnswer(anyhow!(
                "`{}` did not answer within {:?}; its session was dropped",
                cmd.display(),
                cmd.timeout + ANSWER_GRACE
            )))
        }
    };
    give_back(socket, shell);
    if out.stdout.len() > cmd.output_limit {
        return Err(Failed::NoAnswer(anyhow!(
            "`{}` printed more than {} KiB; refusing to read it",
            cmd.display(),
            cmd.output_limit >> 10
        )));
    }
    if out.code == Some(TIMED_OUT) {
        return Err(Failed::NoAnswer(anyhow!(
            "`{}` did not finish within {:?}; it was killed with everything it started",
            cmd.display(),
            cmd.timeout
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_one_line_of_hex_fields() {
        let cmd = Cmd::new(["cat"])
            .stdin(b"a b\nc".to_vec())
            .output_limit(100);
        let line = String::from_utf8(request("cat 'x'", &cmd)).unwrap();
        assert_eq!(line, "63617420277827 6120620a63 60 100\n");
        // No stdin is a dash (an empty field would shift the others).
        let line = request(
            "true",
            &Cmd::new(["true"])
                .timeout(Duration::from_millis(300))
                .output_limit(9),
        );
        assert_eq!(String::from_utf8(line).unwrap(), "74727565 - 1 9\n");
    }

    #[test]
    fn an_answer_gives_status_and_both_streams() {
        let out = answer(b"3 6869 6f6f7073\n").unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, b"hi");
        assert_eq!(out.stderr, b"oops");
        let quiet = answer(b"0  \n").unwrap();
        assert!(quiet.stdout.is_empty() && quiet.stderr.is_empty());
        assert!(answer(b"0 6869\n").is_err());
        assert!(answer(b"x 6869 6869\n").is_err());
        assert!(answer(b"0 zz 6869\n").is_err());
    }

    #[test]
    fn long_commands_and_large_inputs_take_a_session_of_their_own() {
        assert!(fits(&Cmd::new(["true"])));
        assert!(!fits(
            &Cmd::new(["pg_basebackup"]).timeout(Duration::from_secs(3600))
        ));
        assert!(!fits(&Cmd::new(["cat"]).stdin(vec![0u8; STDIN_MAX + 1])));
    }
}
