//! How a node's server is started and stopped: plain `pg_ctl -D`, Debian's `pg_ctlcluster`
//! (postgresql-common: configuration in `/etc/postgresql/<version>/<cluster>/`), or a systemd
//! unit. Only the command lines live here, as pure functions; `server.rs` runs them.
//!
//! Whatever the manager, `standby.signal`, `postgresql.auto.conf` and `postmaster.pid` stay
//! in the data directory, so the steps that write those need no manager of their own.

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Service {
    /// `pg_ctl -D <data_dir>`: the configuration is in the data directory.
    #[default]
    PgCtl,
    /// `pg_ctlcluster <version> <cluster>` (postgresql-common).
    PgCtlCluster { version: u32, cluster: String },
    /// `systemctl … <unit>`.
    Systemd { unit: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Fast,
    Immediate,
}

impl StopMode {
    pub fn word(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

fn s(x: impl AsRef<str>) -> String {
    x.as_ref().to_string()
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

impl Service {
    /// What an operator reads in a step's description: "pg_ctlcluster 15 main".
    pub fn describe(&self) -> String {
        match self {
            Service::PgCtl => "pg_ctl".into(),
            Service::PgCtlCluster { version, cluster } => {
                format!("pg_ctlcluster {version} {cluster}")
            }
            Service::Systemd { unit } => format!("systemctl (unit {unit})"),
        }
    }

    /// How a step description spells an action on the server: `pg_ctl stop -D /d`,
    /// `pg_ctlcluster 15 main stop`, `systemctl stop postgresql@15-main`.
    pub fn words(&self, verb: &str, data: &Path) -> String {
        match self {
            Service::PgCtl => format!("pg_ctl {verb} -D {}", data.display()),
            Service::PgCtlCluster { version, cluster } => {
                format!("pg_ctlcluster {version} {cluster} {verb}")
            }
            Service::Systemd { unit } if verb == "status" => {
                format!("pg_ctl status -D {} (unit {unit})", data.display())
            }
            Service::Systemd { unit } => format!("systemctl {verb} {unit}"),
        }
    }

    /// Whether a server runs on the data directory. Exit 0 running, 3 stopped, 4 no cluster.
    ///
    /// A systemd unit is asked nothing: a server started by hand outside its unit (the
    /// operator's "restart by hand" of issue 14) is invisible to `systemctl is-active` and
    /// still a server. `pg_ctl status` reads the postmaster's pid file, which any start
    /// writes. `pg_ctlcluster status` is the same call after checking the cluster exists.
    pub fn status_argv(&self, pg_ctl: &str, data: &Path) -> Vec<String> {
        match self {
            Service::PgCtlCluster { version, cluster } => {
                vec![
                    s("pg_ctlcluster"),
                    version.to_string(),
                    s(cluster),
                    s("status"),
                ]
            }
            Service::PgCtl | Service::Systemd { .. } => {
                vec![s(pg_ctl), s("status"), s("-D"), p(data)]
            }
        }
    }

    /// Start and wait until the server accepts connections.
    pub fn start_argv(&self, pg_ctl: &str, data: &Path, log: &Path, secs: u64) -> Vec<String> {
        match self {
            Service::PgCtl => vec![
                s(pg_ctl),
                s("start"),
                s("-D"),
                p(data),
                s("-l"),
                p(log),
                s("-w"),
                s("-t"),
                secs.to_string(),
            ],
            // pg_ctlcluster waits by itself (socket up, then three good connections); passing
            // pg_ctl options would bypass its systemd redirection, so none are passed.
            Service::PgCtlCluster { version, cluster } => {
                vec![
                    s("pg_ctlcluster"),
                    version.to_string(),
                    s(cluster),
                    s("start"),
                ]
            }
            Service::Systemd { unit } => vec![s("systemctl"), s("start"), s(unit)],
        }
    }

    /// Start without waiting: for callers that wait for a stronger condition themselves (a
    /// standby streaming), inside the write pause.
    ///
    /// `pg_ctlcluster start` always takes two seconds or more (it probes with psql every
    /// 0.5 s until three connections in a row succeed), so it is left running detached on
    /// the host: the server still starts with its Debian options (config_file, external pid
    /// file, log), and the caller's own wait decides.
    pub fn launch_argv(&self, pg_ctl: &str, data: &Path, log: &Path) -> Vec<String> {
        match self {
            Service::PgCtl => vec![
                s(pg_ctl),
                s("start"),
                s("-D"),
                p(data),
                s("-l"),
                p(log),
                s("-W"),
            ],
            Service::PgCtlCluster { version, cluster } => vec![
                s("sh"),
                s("-c"),
                s("setsid \"$@\" </dev/null >/dev/null 2>&1 &"),
                s("migrate-launch"),
                s("pg_ctlcluster"),
                version.to_string(),
                s(cluster),
                s("start"),
            ],
            Service::Systemd { unit } => {
                vec![s("systemctl"), s("start"), s("--no-block"), s(unit)]
            }
        }
    }

    /// Ask the server to stop without waiting; `server.rs` waits for the postmaster to go in
    /// 10 ms steps (the managers' own waits poll every 100 ms or slower).
    pub fn signal_stop_argv(&self, pg_ctl: &str, data: &Path, mode: StopMode) -> Vec<String> {
        match self {
            Service::PgCtl => vec![
                s(pg_ctl),
                s("stop"),
                s("-D"),
                p(data),
                s("-m"),
                s(mode.word()),
                s("-W"),
                s("-s"),
            ],
            // pg_ctlcluster puts its own `-w` first; the `-W` after `--` comes later and wins.
            Service::PgCtlCluster { version, cluster } => vec![
                s("pg_ctlcluster"),
                version.to_string(),
                s(cluster),
                s("stop"),
                s("-m"),
                s(mode.word()),
                s("--"),
                s("-W"),
            ],
            // The unit's ExecStop is a fast shutdown; an immediate one is SIGQUIT to the
            // postmaster (the unit's main process), which is what `pg_ctl -m immediate` sends.
            Service::Systemd { unit } => match mode {
                StopMode::Fast => vec![s("systemctl"), s("stop"), s("--no-block"), s(unit)],
                StopMode::Immediate => vec![
                    s("systemctl"),
                    s("kill"),
                    s("--kill-whom=main"),
                    s("--signal=SIGQUIT"),
                    s(unit),
                ],
            },
        }
    }

    /// The log a failed start is explained from when the spec names none: Debian's
    /// `/var/log/postgresql/postgresql-<version>-<cluster>.log` for postgresql-common
    /// clusters and their `postgresql@<version>-<cluster>` units.
    pub fn default_log(&self) -> Option<String> {
        match self {
            Service::PgCtl => None,
            Service::PgCtlCluster { version, cluster } => Some(format!(
                "/var/log/postgresql/postgresql-{version}-{cluster}.log"
            )),
            Service::Systemd { unit } => {
                let inst = unit.strip_suffix(".service").unwrap_or(unit);
                let (version, cluster) = inst.strip_prefix("postgresql@")?.split_once('-')?;
                version.parse::<u32>().ok()?;
                Some(format!(
                    "/var/log/postgresql/postgresql-{version}-{cluster}.log"
                ))
            }
        }
    }

    /// The configuration directory of a postgresql-common cluster.
    pub fn debian_config_dir(&self) -> Option<String> {
        match self {
            Service::PgCtlCluster { version, cluster } => {
                Some(format!("/etc/postgresql/{version}/{cluster}"))
            }
            _ => None,
        }
    }
}

/// The postgresql-common cluster a `config_file` setting belongs to:
/// `/etc/postgresql/15/main/postgresql.conf` → (15, "main").
pub fn debian_cluster_of(config_file: &str) -> Option<(u32, String)> {
    let rest = config_file.strip_prefix("/etc/postgresql/")?;
    let mut parts = rest.split('/');
    let version = parts.next()?.parse().ok()?;
    let cluster = parts.next()?.to_string();
    (parts.next() == Some("postgresql.conf") && parts.next().is_none() && !cluster.is_empty())
        .then_some((version, cluster))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pgc() -> Service {
        Service::PgCtlCluster {
            version: 15,
            cluster: "main".into(),
        }
    }

    fn unit() -> Service {
        Service::Systemd {
            unit: "postgresql@15-main".into(),
        }
    }

    const D: &str = "/var/lib/postgresql/15/main";

    #[test]
    fn pg_ctl_commands_drive_the_data_directory() {
        let d = Path::new(D);
        let l = Path::new("/l.log");
        assert_eq!(
            Service::PgCtl.status_argv("/b/pg_ctl", d).join(" "),
            format!("/b/pg_ctl status -D {D}")
        );
        assert_eq!(
            Service::PgCtl.start_argv("/b/pg_ctl", d, l, 30).join(" "),
            format!("/b/pg_ctl start -D {D} -l /l.log -w -t 30")
        );
        assert_eq!(
            Service::PgCtl.launch_argv("/b/pg_ctl", d, l).join(" "),
            format!("/b/pg_ctl start -D {D} -l /l.log -W")
        );
        assert_eq!(
            Service::PgCtl
                .signal_stop_argv("/b/pg_ctl", d, StopMode::Immediate)
                .join(" "),
            format!("/b/pg_ctl stop -D {D} -m immediate -W -s")
        );
    }

    #[test]
    fn pg_ctlcluster_commands_name_the_cluster_not_the_directory() {
        let d = Path::new(D);
        let l = Path::new("/l.log");
        assert_eq!(
            pgc().status_argv("x", d),
            ["pg_ctlcluster", "15", "main", "status"]
        );
        assert_eq!(
            pgc().start_argv("x", d, l, 30),
            ["pg_ctlcluster", "15", "main", "start"]
        );
        assert_eq!(
            pgc().signal_stop_argv("x", d, StopMode::Fast),
            [
                "pg_ctlcluster",
                "15",
                "main",
                "stop",
                "-m",
                "fast",
                "--",
                "-W"
            ]
        );
        let launch = pgc().launch_argv("x", d, l);
        assert_eq!(&launch[..2], ["sh", "-c"]);
        assert!(launch[2].contains("setsid") && launch[2].ends_with('&'));
        assert_eq!(&launch[4..], ["pg_ctlcluster", "15", "main", "start"]);
    }

    /// systemd cannot run here (PID 1 is not systemd): its kind is tested at the argv level.
    #[test]
    fn systemd_commands_go_through_the_unit_but_status_reads_the_pid_file() {
        let d = Path::new(D);
        let l = Path::new("/l.log");
        assert_eq!(
            unit().status_argv("/b/pg_ctl", d).join(" "),
            format!("/b/pg_ctl status -D {D}")
        );
        assert_eq!(
            unit().start_argv("x", d, l, 30),
            ["systemctl", "start", "postgresql@15-main"]
        );
        assert_eq!(
            unit().launch_argv("x", d, l),
            ["systemctl", "start", "--no-block", "postgresql@15-main"]
        );
        assert_eq!(
            unit().signal_stop_argv("x", d, StopMode::Fast),
            ["systemctl", "stop", "--no-block", "postgresql@15-main"]
        );
        assert_eq!(
            unit().signal_stop_argv("x", d, StopMode::Immediate),
            [
                "systemctl",
                "kill",
                "--kill-whom=main",
                "--signal=SIGQUIT",
                "postgresql@15-main"
            ]
        );
    }

    #[test]
    fn default_logs_follow_the_debian_layout() {
        assert_eq!(Service::PgCtl.default_log(), None);
        assert_eq!(
            pgc().default_log().as_deref(),
            Some("/var/log/postgresql/postgresql-15-main.log")
        );
        assert_eq!(
            unit().default_log().as_deref(),
            Some("/var/log/postgresql/postgresql-15-main.log")
        );
        let rh = Service::Systemd {
            unit: "postgresql-15.service".into(),
        };
        assert_eq!(rh.default_log(), None);
    }

    #[test]
    fn config_files_under_etc_name_their_cluster() {
        assert_eq!(
            debian_cluster_of("/etc/postgresql/15/main/postgresql.conf"),
            Some((15, "main".into()))
        );
        assert_eq!(debian_cluster_of("/var/lib/pg/data/postgresql.conf"), None);
        assert_eq!(
            debian_cluster_of("/etc/postgresql/x/main/postgresql.conf"),
            None
        );
        assert_eq!(
            debian_cluster_of("/etc/postgresql/15/main/other.conf"),
            None
        );
        assert_eq!(
            debian_cluster_of("/etc/postgresql/15//postgresql.conf"),
            None
        );
    }
}
