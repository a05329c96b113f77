//! The lab of separate hosts (`lab up --hosts ssh`): each site in its own network namespace
//! with its own addresses and its own sshd, the way an operator's bastion sees a migration:
//!
//! ```text
//!   root namespace (the bastion: migrate, the tests' writer)      bridge migbr<port>  10.A.B.1
//!   ├── mig<port>olddc   old                                     10.A.B.10
//!   ├── mig<port>newdc   new, new_replica                        10.A.B.11, 10.A.B.12
//!   ├── mig<port>dr      dr                                      10.A.B.13
//!   └── mig<port>app     PgBouncer                               10.A.B.14
//! ```
//!
//! Every namespace reaches the others and the bastion over one bridge. Servers are started
//! through ssh (so they live in their site's namespace); the files stay on the one shared
//! file system, and so do the unix sockets the lab itself uses, and pids (one pid namespace):
//! stopping and status work from the bastion as in the plain lab.
//!
//! `A.B` comes from the lab's base port, so parallel labs on distinct ports never share a
//! subnet or a name. Needs root and iproute2, openssh-server and openssh-client.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::host::local::LocalHost;
use crate::host::remote::RemoteHost;
use crate::host::{Cmd, Host};
use crate::lab::wan::{Place, Shaper};

/// The sites and who lives there.
pub const SITES: [(&str, &[&str]); 4] = [
    ("olddc", &["old"]),
    ("newdc", &["new", "new_replica"]),
    ("dr", &["dr"]),
    ("app", &["pgbouncer"]),
];

/// The lab's application endpoint's member name.
pub const BOUNCER: &str = "pgbouncer";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sites {
    base_port: u16,
    dir: PathBuf,
}

impl Sites {
    pub fn new(base_port: u16, lab_dir: &Path) -> Sites {
        Sites {
            base_port,
            dir: lab_dir.join("ssh"),
        }
    }

    fn subnet(&self) -> [u8; 2] {
        subnet_of(self.base_port)
    }

    fn ip(&self, last: u8) -> Ipv4Addr {
        let [a, b] = self.subnet();
        Ipv4Addr::new(10, a, b, last)
    }

    /// The bastion's address on the lab's bridge.
    pub fn bastion(&self) -> Ipv4Addr {
        self.ip(1)
    }

    /// The address of a lab member (a node, or `pgbouncer`).
    pub fn addr(&self, member: &str) -> Ipv4Addr {
        let last = match member {
            "old" => 10,
            "new" => 11,
            "new_replica" => 12,
            "dr" => 13,
            _ => 14,
        };
        self.ip(last)
    }

    pub fn cidr(&self) -> String {
        let [a, b] = self.subnet();
        format!("10.{a}.{b}.0/24")
    }

    /// The network namespace of a site (`olddc`, `newdc`, `dr`, `app`).
    pub fn netns(&self, site: &str) -> String {
        format!("mig{}{site}", self.base_port)
    }

    fn bridge(&self) -> String {
        format!("migbr{}", self.base_port)
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The pid file of a site's listening sshd.
    pub fn pidfile(&self, site: &str) -> PathBuf {
        self.dir.join(format!("sshd-{site}.pid"))
    }

    /// The member's host as migrate reaches it: ssh as `postgres`, host key checked.
    pub fn host(&self, member: &str) -> RemoteHost {
        RemoteHost::ssh(
            &self.addr(member).to_string(),
            None,
            Some("postgres"),
            Some(&self.key()),
            &[
                "StrictHostKeyChecking=yes".to_string(),
                format!("UserKnownHostsFile={}", self.known_hosts().display()),
            ],
        )
    }

    /// The spec's `host = { … }` for a member.
    pub fn spec_host(&self, member: &str) -> String {
        let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        format!(
            "{{ kind = \"ssh\", host = \"{}\", user = \"postgres\", identity_file = {}, known_hosts = {} }}",
            self.addr(member),
            q(&self.key()),
            q(&self.known_hosts())
        )
    }

    /// Namespaces, bridge, addresses, keys and one sshd per site. Running it twice is
    /// harmless.
    pub async fn up(&self) -> Result<()> {
        if !nix::unistd::geteuid().is_root() {
            bail!("--hosts ssh makes network namespaces: run the lab as root");
        }
        for tool in ["ip", "/usr/sbin/sshd", "ssh-keygen"] {
            let found = tool.starts_with('/') && Path::new(tool).is_file()
                || std::env::var_os("PATH")
                    .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
            if !found {
                bail!("--hosts ssh needs {tool} (apt-get install iproute2 openssh-server openssh-client)");
            }
        }
        let root = LocalHost::new(None)?;
        std::fs::create_dir_all(&self.dir)?;
        self.keys().await?;
        let br = self.bridge();
        if !link_exists(&br) {
            root.run_ok(&Cmd::new(["ip", "link", "add", &br, "type", "bridge"]))
                .await?;
        }
        root.run_ok(&Cmd::new([
            "ip".to_string(),
            "addr".into(),
            "replace".into(),
            format!("{}/24", self.bastion()),
            "dev".into(),
            br.clone(),
        ]))
        .await?;
        root.run_ok(&Cmd::new(["ip", "link", "set", &br, "up"]))
            .await?;
        allow_forwarding(&root, &br, true).await?;
        for (i, (site, members)) in SITES.iter().enumerate() {
            let ns = self.netns(site);
            let outer = format!("mv{}{i}", self.base_port);
            let inner = format!("mvp{}{i}", self.base_port);
            if !netns_exists(&ns) {
                root.run_ok(&Cmd::new(["ip", "netns", "add", &ns])).await?;
            }
            if !link_exists(&outer) {
                root.run_ok(&Cmd::new([
                    "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns",
                    &ns,
                ]))
                .await
                .with_context(|| format!("link the namespace {ns} to the bridge"))?;
                root.run_ok(&Cmd::new([
                    "ip", "link", "set", &outer, "master", &br, "up",
                ]))
                .await?;
            }
            let in_ns = |args: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", &ns];
                v.extend_from_slice(args);
                Cmd::new(v)
            };
            root.run_ok(&in_ns(&["ip", "link", "set", "lo", "up"]))
                .await?;
            for m in members.iter() {
                let a = format!("{}/24", self.addr(m));
                root.run_ok(&in_ns(&["ip", "addr", "replace", &a, "dev", &inner]))
                    .await?;
            }
            root.run_ok(&in_ns(&["ip", "link", "set", &inner, "up"]))
                .await?;
            self.sshd(site, members, &ns).await?;
        }
        Ok(())
    }

    async fn keys(&self) -> Result<()> {
        let root = LocalHost::new(None)?;
        for k in ["host_key", "id_ed25519"] {
            let path = self.dir.join(k);
            if !path.exists() {
                root.run_ok(&Cmd::new([
                    "ssh-keygen".to_string(),
                    "-q".into(),
                    "-t".into(),
                    "ed25519".into(),
                    "-N".into(),
                    String::new(),
                    "-f".into(),
                    path.display().to_string(),
                ]))
                .await?;
            }
        }
        let client = std::fs::read_to_string(self.dir.join("id_ed25519.pub"))?;
        root.write_file(
            &self.dir.join("authorized_keys"),
            client.as_bytes(),
            0o644,
            None,
        )
        .await?;
        let host = std::fs::read_to_string(self.dir.join("host_key.pub"))?;
        let known: String = SITES
            .iter()
            .flat_map(|(_, m)| m.iter())
            .map(|m| format!("{} {}", self.addr(m), host.trim()))
            .collect::<Vec<_>>()
            .join("\n");
        root.write_file(
            &self.known_hosts(),
            format!("{known}\n").as_bytes(),
            0o644,
            None,
        )
        .await
    }

    async fn sshd(&self, site: &str, members: &[&str], ns: &str) -> Result<()> {
        let d = self.dir.display();
        let listen: String = members
            .iter()
            .map(|m| format!("ListenAddress {}\n", self.addr(m)))
            .collect();
        // UsePAM: the postgres account is locked (no password), which sshd refuses without
        // PAM even for key logins; PAM's account check accepts it.
        let config = format!(
            "Port 22\n{listen}HostKey {d}/host_key\nPidFile {pid}\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM yes\nStrictModes no\n\
             AllowUsers postgres\nPermitRootLogin no\nMaxStartups 100\nMaxSessions 100\n\
             ClientAliveInterval 5\nClientAliveCountMax 3\nLogLevel ERROR\n",
            pid = self.pidfile(site).display()
        );
        let conf = self.dir.join(format!("sshd-{site}.conf"));
        let root = LocalHost::new(None)?;
        root.write_file(&conf, config.as_bytes(), 0o644, None)
            .await?;
        let first = self.addr(members[0]);
        if tcp_open(first, 22) {
            return Ok(());
        }
        std::fs::create_dir_all("/run/sshd")?;
        root.run_ok(&Cmd::new([
            "ip".to_string(),
            "netns".into(),
            "exec".into(),
            ns.into(),
            "/usr/sbin/sshd".into(),
            "-f".into(),
            conf.display().to_string(),
            "-E".into(),
            self.dir
                .join(format!("sshd-{site}.log"))
                .display()
                .to_string(),
        ]))
        .await
        .with_context(|| format!("start sshd in {ns}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !tcp_open(first, 22) {
            if Instant::now() > deadline {
                bail!(
                    "sshd in {ns} does not listen on {first}:22; see {}",
                    self.dir.join(format!("sshd-{site}.log")).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The WAN between the places: the bastion and each site, each with its uplink and
    /// addresses.
    pub fn shaper(&self) -> Shaper {
        let mut places = vec![Place {
            name: "bastion",
            prefix: Vec::new(),
            dev: self.bridge(),
            addrs: vec![self.bastion()],
        }];
        for (i, (site, members)) in SITES.iter().enumerate() {
            places.push(Place {
                name: site,
                prefix: ["ip", "netns", "exec"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([self.netns(site)])
                    .collect(),
                dev: format!("mvp{}{i}", self.base_port),
                addrs: members.iter().map(|m| self.addr(m)).collect(),
            });
        }
        Shaper {
            dir: self.dir.clone(),
            queue: self.base_port,
            places,
        }
    }

    /// Stop the sshds and remove the namespaces and the bridge. Safe to run twice.
    pub async fn down(&self) -> Result<()> {
        let root = LocalHost::new(None)?;
        self.shaper().remove().await?;
        for (i, (site, _)) in SITES.iter().enumerate() {
            if let Some(pid) = std::fs::read_to_string(self.pidfile(site))
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "sshd" {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
            let ns = self.netns(site);
            if netns_exists(&ns) {
                // A namespace lives on while a process is in it: ssh sessions whose client
                // went away with the bridge would keep it (and its link) for good.
                let pids = root.run(&Cmd::new(["ip", "netns", "pids", &ns])).await?;
                for pid in pids.stdout_text().split_whitespace() {
                    if let Ok(p) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                root.run_ok(&Cmd::new(["ip", "netns", "delete", &ns]))
                    .await?;
            }
            // Deleting one end of a veth pair deletes both.
            let outer = format!("mv{}{i}", self.base_port);
            // The namespace's end going takes this one too, a moment later.
            if link_exists(&outer) {
                let out = root
                    .run(&Cmd::new(["ip", "link", "delete", &outer]))
                    .await?;
                if !out.success() && link_exists(&outer) {
                    bail!("ip link delete {outer}: {}", out.stderr_tail());
                }
            }
        }
        let br = self.bridge();
        allow_forwarding(&root, &br, false).await?;
        if link_exists(&br) {
            root.run_ok(&Cmd::new(["ip", "link", "delete", &br]))
                .await?;
        }
        Ok(())
    }
}

/// `10.A.B.0/24` for a base port: injective for ports below 25 600 + 100 × 256 and far apart
/// enough above that for labs that run at the same time.
pub fn subnet_of(base_port: u16) -> [u8; 2] {
    [
        100 + ((base_port >> 8) % 100) as u8,
        (base_port & 0xff) as u8,
    ]
}

/// Let the sites talk across the bridge whatever the host's firewall says (`add`), or take
/// that rule away again. Docker sets the FORWARD policy to DROP and loads br_netfilter, after
/// which frames between two ports of any bridge go through iptables' FORWARD chain: without
/// this rule the sites cannot reach each other once a Docker engine has run on the machine.
/// Nothing to do where iptables is not installed (then no such policy was set by it).
async fn allow_forwarding(root: &LocalHost, bridge: &str, add: bool) -> Result<()> {
    let rule = |op: &str| {
        Cmd::new([
            "iptables", op, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT",
        ])
    };
    let present = match root.run(&rule("-C")).await {
        Ok(out) => out.success(),
        // No iptables here.
        Err(_) => return Ok(()),
    };
    // Best effort: where the rule cannot be set, the firewall most likely does not filter
    // bridged frames either; a lab that cannot connect then says so itself.
    let result = if add && !present {
        root.run_ok(&rule("-I")).await.map(|_| ())
    } else if !add && present {
        root.run_ok(&rule("-D")).await.map(|_| ())
    } else {
        Ok(())
    };
    if let Err(e) = result {
        tracing::warn!("iptables rule for the lab's bridge {bridge}: {e:#}");
    }
    Ok(())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn tcp_open(addr: Ipv4Addr, port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&(addr, port).into(), Duration::from_millis(200)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_labs_get_their_own_subnet_and_names() {
        let a = Sites::new(25430, Path::new("/l"));
        let b = Sites::new(25435, Path::new("/l"));
        assert_ne!(a.cidr(), b.cidr());
        assert_eq!(a.addr("old"), Ipv4Addr::new(10, 199, 86, 10));
        assert_eq!(a.addr(BOUNCER), Ipv4Addr::new(10, 199, 86, 14));
        assert_ne!(a.netns("newdc"), b.netns("newdc"));
        // Linux interface names are at most 15 characters.
        assert!(a.bridge().len() <= 15);
        assert!(format!("mvp{}{}", 65535, 3).len() <= 15);
    }

    #[test]
    fn every_member_has_a_site() {
        let members: Vec<&str> = SITES.iter().flat_map(|(_, m)| m.iter().copied()).collect();
        for n in super::super::NODES {
            assert!(members.contains(&n.name), "{}", n.name);
        }
        assert!(members.contains(&BOUNCER));
    }
}
