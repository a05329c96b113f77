//! repmgr: the `repmgr` program on a node's host, run as the server's user with the node's
//! `repmgr.conf`. `service pause` pauses every repmgrd of the repmgr cluster at once (it
//! writes the flag into each node's shared memory through the repmgr extension);
//! `service status --csv` reads them all back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::host::{Cmd, Host};

/// How long one repmgr call may take (it connects to every node of its cluster).
pub const CALL_LIMIT: Duration = Duration::from_secs(30);

/// One row of `repmgr service status --csv` (repmgr 5): node id, name, role, server running,
/// repmgrd running, repmgrd's pid, paused, priority, seconds since its upstream was last
/// seen, location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repmgrd {
    pub node_id: u32,
    pub name: String,
    pub role: String,
    pub running: bool,
    pub paused: bool,
}

/// Pure: the rows of `repmgr service status --csv`; a line that is not a row is an error (a
/// repmgr whose format we do not know must not be read as "nothing runs").
pub fn parse_status(csv: &str) -> Result<Vec<Repmgrd>> {
    csv.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let flag = |i: usize| match f.get(i).map(|s| s.trim()) {
                Some("1") => Ok(true),
                Some("0") => Ok(false),
                other => bail!("field {} is {other:?}, not 0 or 1", i + 1),
            };
            let row = (|| {
                if f.len() < 7 {
                    bail!("{} fields, expected at least 7", f.len());
                }
                Ok(Repmgrd {
                    node_id: f[0].trim().parse().context("node id")?,
                    name: f[1].trim().to_string(),
                    role: f[2].trim().to_string(),
                    running: flag(4)?,
                    paused: flag(6)?,
                })
            })();
            row.with_context(|| format!("repmgr service status --csv: cannot read {line:?}"))
        })
        .collect()
}

/// Pure: a setting of a repmgr.conf (`key=value`, `key = 'value'`, comments with `#`).
pub fn setting(conf: &str, key: &str) -> Option<String> {
    conf.lines().find_map(|line| {
        let line = line.trim_start();
        if line.starts_with('#') {
            return None;
        }
        let (k, value) = line.split_once('=')?;
        if k.trim() != key {
            return None;
        }
        let value = value.trim();
        Some(match value.strip_prefix('\'') {
            // Quoted: up to the closing quote ('' is a quote inside).
            Some(rest) => {
                let mut out = String::new();
                let mut chars = rest.chars().peekable();
                while let Some(c) = chars.next() {
                    if c == '\'' {
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    out.push(c);
                }
                out
            }
            None => value.split('#').next().unwrap_or("").trim().to_string(),
        })
    })
}

/// Pure: `node_id` from a repmgr.conf.
pub fn node_id(conf: &str) -> Option<u32> {
    setting(conf, "node_id")?.parse().ok()
}

/// The `repmgr` program for a node: its `bin_dir`'s (Debian installs it there), else `PATH`'s.
pub fn program(bin_dir: Option<&Path>) -> String {
    match bin_dir {
        Some(d) => d.join("repmgr").display().to_string(),
        None => "repmgr".into(),
    }
}

/// One node's repmgr: its host, program and configuration.
#[derive(Clone, Debug)]
pub struct Repmgr {
    pub node: String,
    pub program: String,
    pub config: PathBuf,
}

impl Repmgr {
    /// Pure: the argv of `repmgr -f CONFIG <args>`.
    pub fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec![
            self.program.clone(),
            "-f".into(),
            self.config.display().to_string(),
        ];
        v.extend(args.iter().map(|a| a.to_string()));
        v
    }

    async fn run(&self, host: &dyn Host, args: &[&str]) -> Result<String> {
        let out = host
            .run_ok(&Cmd::new(self.argv(args)).timeout(CALL_LIMIT))
            .await
            .with_context(|| format!("repmgr {} for {}", args.join(" "), self.node))?;
        Ok(out.stdout_text())
    }

    pub async fn status(&self, host: &dyn Host) -> Result<Vec<Repmgrd>> {
        parse_status(&self.run(host, &["service", "status", "--csv"]).await?)
    }

    /// `service pause` / `service unpause`: every repmgrd of the cluster.
    pub async fn pause(&self, host: &dyn Host, pause: bool) -> Result<()> {
        let verb = if pause { "pause" } else { "unpause" };
        self.run(host, &["service", verb]).await.map(drop)
    }

    /// The configuration file's text.
    pub async fn conf(&self, host: &dyn Host) -> Result<String> {
        let text = host
            .read_file(&self.config)
            .await
            .with_context(|| format!("read {} on {}", self.config.display(), self.node))?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    pub async fn node_id(&self, host: &dyn Host) -> Result<u32> {
        node_id(&self.conf(host).await?).with_context(|| {
            format!(
                "{} on {} has no node_id = N",
                self.config.display(),
                self.node
            )
        })
    }

    /// Record this node as the primary in repmgr's metadata (after its promotion).
    pub async fn register_primary(&self, host: &dyn Host) -> Result<()> {
        self.run(host, &["primary", "register", "--force"])
            .await
            .map(drop)
    }

    /// Record this node as a standby of `upstream_id`.
    pub async fn register_standby(&self, host: &dyn Host, upstream_id: u32) -> Result<()> {
        let up = format!("--upstream-node-id={upstream_id}");
        self.run(host, &["standby", "register", "--force", &up])
            .await
            .map(drop)
    }

    /// `daemon start`: repmgrd by the command repmgr.conf names
    /// (`repmgrd_service_start_command`).
    pub async fn start_daemon(&self, host: &dyn Host) -> Result<()> {
        self.run(host, &["daemon", "start"]).await.map(drop)
    }

    /// Bring back a repmgrd that `service status` does not see. Two cases: it ended itself
    /// (during the switch it reconnected, found no primary it knew, and exited), or it still
    /// runs but its server restarted, which forgets the daemon's registration (repmgrd does
    /// not register again when it reconnects). The second is stopped (SIGTERM, by the pid
    /// file repmgr.conf names) and both are started by `daemon start` — only when repmgr.conf
    /// names a start command, else nothing is stopped and the error says why.
    pub async fn restart_daemon(&self, host: &dyn Host) -> Result<()> {
        let conf = self.conf(host).await?;
        if setting(&conf, "repmgrd_service_start_command").is_none() {
            bail!(
                "{} names no repmgrd_service_start_command, so migrate cannot start repmgrd there",
                self.config.display()
            );
        }
        if let Some(pid_file) = setting(&conf, "repmgrd_pid_file") {
            let pid = host
                .read_file(Path::new(&pid_file))
                .await
                .ok()
                .and_then(|t| String::from_utf8_lossy(&t).trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                let alive = |sig: &'static str| {
                    Cmd::new(["kill", sig, &pid.to_string()]).timeout(Duration::from_secs(5))
                };
                if host.run(&alive("-0")).await.is_ok_and(|o| o.success()) {
                    host.run_ok(&alive("-TERM")).await?;
                    let deadline = std::time::Instant::now() + Duration::from_secs(15);
                    while host.run(&alive("-0")).await.is_ok_and(|o| o.success()) {
                        if std::time::Instant::now() > deadline {
                            bail!(
                                "repmgrd (pid {pid}) on {} did not stop within 15 s of SIGTERM",
                                self.node
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        self.start_daemon(host).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rows_are_read_and_unknown_formats_refused() {
        let rows = parse_status(
            "1,old,primary,1,1,28409,1,100,-1,default\n2,new,standby,1,0,-1,0,100,0,default\n",
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![
                Repmgrd {
                    node_id: 1,
                    name: "old".into(),
                    role: "primary".into(),
                    running: true,
                    paused: true
                },
                Repmgrd {
                    node_id: 2,
                    name: "new".into(),
                    role: "standby".into(),
                    running: false,
                    paused: false
                }
            ]
        );
        assert!(parse_status("1,old,primary").is_err());
        assert!(parse_status(" ID | Name | Role\n").is_err());
        assert!(parse_status("1,old,primary,1,yes,1,0,100,0,x").is_err());
        assert!(parse_status("").unwrap().is_empty());
    }

    #[test]
    fn settings_are_read_quoted_or_not() {
        let conf = "# repmgrd_pid_file='/x'\nrepmgrd_pid_file = '/run/repmgr/it''s.pid'\nlog_level=INFO # comment\n";
        assert_eq!(
            setting(conf, "repmgrd_pid_file").as_deref(),
            Some("/run/repmgr/it's.pid")
        );
        assert_eq!(setting(conf, "log_level").as_deref(), Some("INFO"));
        assert_eq!(setting(conf, "repmgrd_service_start_command"), None);
    }

    #[test]
    fn node_id_is_read_from_the_config() {
        assert_eq!(node_id("node_id=2\nnode_name='b'"), Some(2));
        assert_eq!(node_id("# node_id=9\n  node_id = 3  # this one"), Some(3));
        assert_eq!(node_id("node_name='a'"), None);
        assert_eq!(node_id("node_id=x"), None);
    }

    #[test]
    fn argv_names_the_config() {
        let r = Repmgr {
            node: "old".into(),
            program: program(Some(Path::new("/usr/lib/postgresql/15/bin"))),
            config: "/etc/repmgr.conf".into(),
        };
        assert_eq!(
            r.argv(&["service", "pause"]),
            [
                "/usr/lib/postgresql/15/bin/repmgr",
                "-f",
                "/etc/repmgr.conf",
                "service",
                "pause"
            ]
        );
        assert_eq!(program(None), "repmgr");
    }
}
