//! The lab's PgBouncer: the application endpoint in front of the primary.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::host::local::LocalHost;
use crate::host::{Cmd, Host};

pub struct Bouncer {
    pub dir: PathBuf,
    pub port: u16,
    /// Where it listens, and where the primary is.
    pub listen: IpAddr,
    pub primary: IpAddr,
}

impl Bouncer {
    pub fn ini(&self) -> PathBuf {
        self.dir.join("pgbouncer.ini")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("pgbouncer.pid")
    }

    /// Write the configuration: databases `app` and `postgres` pointing at `primary_port`.
    pub async fn configure(
        &self,
        host: &LocalHost,
        primary_port: u16,
        users: &[(&str, &str)],
    ) -> Result<()> {
        let d = self.dir.display();
        let ini = format!(
            "[databases]\n\
             app = host={primary} port={primary_port} dbname=app\n\
             postgres = host={primary} port={primary_port} dbname=postgres\n\n\
             [pgbouncer]\n\
             listen_addr = {listen}\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = {d}/userlist.txt\n\
             admin_users = postgres\n\
             pool_mode = transaction\n\
             max_client_conn = 200\n\
             default_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {d}/pgbouncer.log\n\
             pidfile = {d}/pgbouncer.pid\n",
            port = self.port,
            primary = self.primary,
            listen = self.listen,
        );
        let userlist: String = users
            .iter()
            .map(|(u, p)| format!("\"{u}\" \"{p}\"\n"))
            .collect();
        host.write_file(&self.ini(), ini.as_bytes(), 0o600, None)
            .await?;
        host.write_file(
            &self.dir.join("userlist.txt"),
            userlist.as_bytes(),
            0o600,
            None,
        )
        .await?;
        Ok(())
    }

    /// The running PgBouncer's pid, if its pidfile names a live pgbouncer process.
    pub fn running_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pidfile())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "pgbouncer").then_some(pid)
    }

    /// Start it on `host` (the lab's machine, or the application site over ssh).
    pub async fn start(&self, host: &dyn Host) -> Result<()> {
        if self.running_pid().is_some() {
            return Ok(());
        }
        let _ = std::fs::remove_file(self.pidfile());
        host.run_ok(&Cmd::new([
            &program(),
            "-d",
            "-q",
            &self.ini().display().to_string(),
        ]))
        .await
        .context("start PgBouncer (is the pgbouncer package installed?)")?;
        wait_for_port(self.listen, self.port, Duration::from_secs(10))
            .await
            .with_context(|| {
                format!(
                    "PgBouncer did not open port {}; see {}",
                    self.port,
                    self.dir.join("pgbouncer.log").display()
                )
            })
    }

    pub async fn stop(&self) -> Result<()> {
        let Some(pid) = self.running_pid() else {
            return Ok(());
        };
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGTERM);
        for _ in 0..100 {
            if self.running_pid().is_none() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = kill(pid, Signal::SIGKILL);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if self.running_pid().is_some() {
            bail!("PgBouncer (pid {pid}) did not stop");
        }
        Ok(())
    }
}

/// PgBouncer's path, found here: the same file system serves the lab's ssh sites, whose login
/// PATH (a non-root user's) has no /usr/sbin.
fn program() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "pgbouncer".into())
}

pub async fn wait_for_port(addr: IpAddr, port: u16, limit: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if tokio::net::TcpStream::connect((addr, port)).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("nothing listens on {addr}:{port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("pgbouncer.log")
}
