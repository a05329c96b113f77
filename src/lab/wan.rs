//! WAN links for the lab of separate hosts: round-trip time, bandwidth and loss on every link
//! between two places (the bastion, the old datacenter, the new one, DR, the application's
//! site), and any link cut and restored on command.
//!
//! This kernel has no `sch_netem`, so latency comes from userspace: in each place's network
//! namespace an iptables chain sends every packet that *arrives* from another place to an
//! NFQUEUE, where a small delayer (`migrate lab delayer`, [`delay_packets`]) holds it for half
//! the round trip and lets it through. Delaying on arrival, not on departure, matters: a packet
//! held below the sender's TCP stack counts against TCP Small Queues and throttles the
//! sender to a trickle (measured: 0.35 MB/s at 30 ms on egress, 75 MB/s on ingress).
//!
//! Traffic between two members of the same place (new and new_replica) goes over the
//! namespace's loopback and is never delayed. Loss is an iptables `statistic` match in the
//! same chain; a cut link is a DROP of the other place's addresses at both ends; bandwidth is
//! a `tbf` qdisc on each place's uplink (a site's veth, the bastion's side of the bridge), so
//! it caps what a place sends in total, not each link separately.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::host::local::LocalHost;
use crate::host::{Cmd, Host};

/// The places a link joins: the bastion (root namespace: migrate, the rehearsal's writer) and
/// the sites of [`super::netns::SITES`].
pub const PLACES: [&str; 5] = ["bastion", "olddc", "newdc", "dr", "app"];

/// What every link between two places is like, and which links are cut.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Wan {
    /// Round-trip time added to every link (half on arrival at each end), in microseconds.
    pub rtt_us: u64,
    /// Each place's uplink rate as tc writes it (`100mbit`); None: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<String>,
    /// Packets dropped at random on arrival from another place, in percent.
    #[serde(default)]
    pub loss_pct: f64,
    /// Links cut, each as two places in [`PLACES`] order.
    #[serde(default)]
    pub cuts: Vec<(String, String)>,
}

impl Wan {
    /// Whether anything is shaped at all (a lab without WAN flags has no chain, no delayer).
    pub fn shapes(&self) -> bool {
        self.rtt_us > 0 || self.bandwidth.is_some() || self.loss_pct > 0.0 || !self.cuts.is_empty()
    }

    /// Cut (or, with `cut = false`, restore) the link between two places.
    pub fn set_cut(&mut self, a: &str, b: &str, cut: bool) -> Result<()> {
        let link = link(a, b)?;
        self.cuts.retain(|l| *l != link);
        if cut {
            self.cuts.push(link);
        }
        Ok(())
    }

    /// The places `place` cannot hear from.
    pub fn cut_from(&self, place: &str) -> Vec<&str> {
        self.cuts
            .iter()
            .filter_map(|(a, b)| {
                if a == place {
                    Some(b.as_str())
                } else if b == place {
                    Some(a.as_str())
                } else {
                    None
                }
            })
            .collect()
    }
}

/// A link as two known, distinct places in a fixed order.
pub fn link(a: &str, b: &str) -> Result<(String, String)> {
    let pos = |p: &str| {
        PLACES
            .iter()
            .position(|q| *q == p)
            .with_context(|| format!("no place named {p:?}; the places are {}", PLACES.join(", ")))
    };
    let (i, j) = (pos(a)?, pos(b)?);
    if i == j {
        bail!("a link joins two different places, not {a} and itself");
    }
    let (i, j) = (i.min(j), i.max(j));
    Ok((PLACES[i].to_string(), PLACES[j].to_string()))
}

/// `--rtt 30ms`: a round trip of at most 10 s.
pub fn parse_rtt(text: &str) -> Result<Duration, String> {
    let d = crate::units::parse_duration(text)?;
    if d > Duration::from_secs(10) {
        return Err(format!("{text:?}: a round trip of at most 10s"));
    }
    Ok(d)
}

/// `--bandwidth 100mbit`: a rate tc understands, from 64kbit to 100gbit.
pub fn parse_bandwidth(text: &str) -> Result<String, String> {
    let bad =
        || format!("{text:?} is not a rate; write e.g. \"100mbit\", \"512kbit\" or \"1gbit\"");
    bits_per_second(text).ok_or_else(bad).and_then(|bps| {
        if (64_000..=100_000_000_000).contains(&bps) {
            Ok(text.trim().to_string())
        } else {
            Err(format!("{text:?}: a rate from 64kbit to 100gbit"))
        }
    })
}

fn bits_per_second(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = t[..split].parse().ok()?;
    let mult = match &t[split..] {
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `--loss 0.5%` (or `0.5`): percent of packets dropped, below 50.
pub fn parse_loss(text: &str) -> Result<f64, String> {
    let t = text.trim().trim_end_matches('%');
    match t.parse::<f64>() {
        Ok(p) if (0.0..50.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "{text:?}: a percentage from 0 to below 50, e.g. \"0.5%\""
        )),
    }
}

/// The rules of a place's chain, in order: what a cut drops, what loss drops, the rest to the
/// delayer's queue. Each rule is the arguments after `iptables -A <chain>`.
pub fn chain_rules(wan: &Wan, cut_addrs: &[Ipv4Addr], queue: u16) -> Vec<Vec<String>> {
    let mut rules: Vec<Vec<String>> = cut_addrs
        .iter()
        .map(|a| vec!["-s".into(), format!("{a}/32"), "-j".into(), "DROP".into()])
        .collect();
    if wan.loss_pct > 0.0 {
        rules.push(
            [
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &format!("{:.6}", wan.loss_pct / 100.0),
                "-j",
                "DROP",
            ]
            .map(String::from)
            .to_vec(),
        );
    }
    if wan.rtt_us > 0 {
        rules.push(
            ["-j", "NFQUEUE", "--queue-num", &queue.to_string()]
                .map(String::from)
                .to_vec(),
        );
    }
    rules
}

/// `tbf` arguments for a rate: a burst of 10 ms of it (at least 32 KiB, so one timer tick at
/// HZ=250 never starves the link), and packets queued at most 500 ms before tbf drops them.
pub fn tbf_args(rate: &str) -> Vec<String> {
    let bytes_per_10ms = bits_per_second(rate).unwrap_or(0) / 8 / 100;
    let burst = bytes_per_10ms.max(32 * 1024);
    [
        "tbf",
        "rate",
        rate,
        "burst",
        &burst.to_string(),
        "latency",
        "500ms",
    ]
    .map(String::from)
    .to_vec()
}

/// One place as the shaping sees it: where its commands run, its uplink, its addresses.
pub struct Place {
    pub name: &'static str,
    /// `ip netns exec <ns>` for a site; empty for the bastion.
    pub prefix: Vec<String>,
    /// The device packets from other places arrive on (and leave by).
    pub dev: String,
    pub addrs: Vec<Ipv4Addr>,
}

impl Place {
    fn cmd(&self, args: &[&str]) -> Cmd {
        let mut v = self.prefix.clone();
        v.extend(args.iter().map(|s| s.to_string()));
        Cmd::new(v)
    }
}

/// Applies a [`Wan`] to the lab's places; keeps it in `<dir>/wan.json` and the delayers' pid
/// files and logs in `<dir>`.
pub struct Shaper {
    pub dir: PathBuf,
    /// The NFQUEUE number (queues are per namespace; the bastion's is shared with the host,
    /// so the lab's base port keeps parallel labs apart) and the chain's name.
    pub queue: u16,
    pub places: Vec<Place>,
}

impl Shaper {
    pub fn chain(&self) -> String {
        format!("MIGWAN{}", self.queue)
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("wan.json")
    }

    /// The WAN in force (none: every link as fast as the machine).
    pub fn current(&self) -> Result<Wan> {
        match std::fs::read(self.state_file()) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("read {}", self.state_file().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Wan::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", self.state_file().display())),
        }
    }

    /// Put `wan` in force on every place: delayers first (a queue nobody reads drops its
    /// packets), then the chains, then the qdiscs; then record it.
    pub async fn apply(&self, wan: &Wan, delayer: &Path) -> Result<()> {
        let root = LocalHost::new(None)?;
        for p in &self.places {
            self.delayer(p, wan, delayer).await?;
            let chain = self.chain();
            if wan.shapes() {
                // -N fails when the chain is there already: fine.
                root.run(&p.cmd(&["iptables", "-N", &chain])).await?;
                let jump = ["INPUT", "-i", &p.dev, "-j", &chain];
                let present = root
                    .run(&p.cmd(&[&["iptables", "-C"][..], &jump[..]].concat()))
                    .await?
                    .success();
                if !present {
                    root.run_ok(&p.cmd(&[&["iptables", "-I"][..], &jump[..]].concat()))
                        .await
                        .with_context(|| format!("iptables in {}", p.name))?;
                }
                root.run_ok(&p.cmd(&["iptables", "-F", &chain])).await?;
                let cut: Vec<Ipv4Addr> = wan
                    .cut_from(p.name)
                    .into_iter()
                    .flat_map(|other| self.addrs_of(other))
                    .collect();
                for rule in chain_rules(wan, &cut, self.queue) {
                    let mut args = vec!["iptables", "-A", &chain];
                    args.extend(rule.iter().map(String::as_str));
                    root.run_ok(&p.cmd(&args))
                        .await
                        .with_context(|| format!("iptables in {}", p.name))?;
                }
            } else {
                self.unchain(p).await?;
            }
            match &wan.bandwidth {
                Some(rate) => {
                    let mut args = vec!["tc", "qdisc", "replace", "dev", &p.dev, "root"];
                    let tbf = tbf_args(rate);
                    args.extend(tbf.iter().map(String::as_str));
                    root.run_ok(&p.cmd(&args))
                        .await
                        .with_context(|| format!("tc in {}", p.name))?;
                }
                // No root qdisc of ours: nothing to delete, and the error says so.
                None => {
                    root.run(&p.cmd(&["tc", "qdisc", "del", "dev", &p.dev, "root"]))
                        .await?;
                }
            }
        }
        let tmp = self.state_file().with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(wan)?)?;
        std::fs::rename(&tmp, self.state_file())?;
        Ok(())
    }

    fn addrs_of(&self, place: &str) -> Vec<Ipv4Addr> {
        self.places
            .iter()
            .filter(|p| p.name == place)
            .flat_map(|p| p.addrs.iter().copied())
            .collect()
    }

    async fn unchain(&self, p: &Place) -> Result<()> {
        let root = LocalHost::new(None)?;
        let chain = self.chain();
        root.run(&p.cmd(&["iptables", "-D", "INPUT", "-i", &p.dev, "-j", &chain]))
            .await?;
        root.run(&p.cmd(&["iptables", "-F", &chain])).await?;
        root.run(&p.cmd(&["iptables", "-X", &chain])).await?;
        Ok(())
    }

    /// Take everything away from the bastion (the sites' namespaces go with the lab).
    pub async fn remove(&self) -> Result<()> {
        for p in &self.places {
            stop_pid_file(&self.pid_file(p.name));
            if p.prefix.is_empty() {
                self.unchain(p).await?;
            }
        }
        let _ = std::fs::remove_file(self.state_file());
        Ok(())
    }

    fn pid_file(&self, place: &str) -> PathBuf {
        self.dir.join(format!("delayer-{place}.pid"))
    }

    /// Start (or restart with a new delay, or stop) a place's delayer.
    async fn delayer(&self, p: &Place, wan: &Wan, bin: &Path) -> Result<()> {
        let pid_file = self.pid_file(p.name);
        let ready = self.dir.join(format!("delayer-{}.ready", p.name));
        let wanted = wan.rtt_us / 2;
        let running = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        if running == Some(wanted) && alive(&pid_file) {
            return Ok(());
        }
        stop_pid_file(&pid_file);
        let _ = std::fs::remove_file(&ready);
        if wanted == 0 {
            return Ok(());
        }
        let log = std::fs::File::create(self.dir.join(format!("delayer-{}.log", p.name)))?;
        let mut argv = p.prefix.clone();
        argv.extend([
            bin.display().to_string(),
            "lab".into(),
            "delayer".into(),
            "--queue".into(),
            self.queue.to_string(),
            "--delay-us".into(),
            wanted.to_string(),
            "--ready".into(),
            ready.display().to_string(),
        ]);
        let child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .process_group(0)
            .spawn()
            .with_context(|| format!("start the delayer {}", bin.display()))?;
        std::fs::write(&pid_file, child.id().to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            if Instant::now() > deadline || !alive(&pid_file) {
                bail!(
                    "the delayer in {} did not start; see {}",
                    p.name,
                    self.dir.join(format!("delayer-{}.log", p.name)).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

fn alive(pid_file: &Path) -> bool {
    let Some(pid) = read_pid(pid_file) else {
        return false;
    };
    // A zombie (nothing reaps it where PID 1 does not) is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

fn read_pid(pid_file: &Path) -> Option<i32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

fn stop_pid_file(pid_file: &Path) {
    if alive(pid_file) {
        if let Some(pid) = read_pid(pid_file) {
            // Only a delayer, never a pid reused by something else.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("delayer") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// The binary that runs the delayers: this one when it is migrate, else the `migrate` next to
/// the test harness that runs (cargo puts tests in target/<profile>/deps, binaries one up).
pub fn delayer_binary() -> Result<PathBuf> {
    let me = std::env::current_exe().context("find this program")?;
    // A binary replaced while it runs (a rebuild) reads as "<path> (deleted)": its successor
    // at the same path runs the delayers as well.
    let me = match me.to_str().and_then(|t| t.strip_suffix(" (deleted)")) {
        Some(t) => PathBuf::from(t),
        None => me,
    };
    if me.file_name().is_some_and(|n| n == "migrate") {
        return Ok(me);
    }
    let beside = me
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("migrate"))
        .filter(|p| p.is_file());
    beside.with_context(|| {
        format!(
            "{} is not migrate and there is no migrate binary beside it to run the WAN delayers",
            me.display()
        )
    })
}

/// The delayer: hold every packet of NFQUEUE `queue` for `delay`, then let it through, in
/// arrival order. Writes the delay in µs to `ready` once bound. Runs until killed.
///
/// The queue's socket is not exposed by the `nfq` crate, so the loop polls it without
/// blocking and sleeps at most 1 ms in between: each packet is held `delay` plus at most a
/// millisecond.
pub fn delay_packets(queue: u16, delay: Duration, ready: &Path) -> Result<()> {
    let mut q = nfq::Queue::open().context("open an NFQUEUE socket (root, nfnetlink_queue)")?;
    q.bind(queue)
        .with_context(|| format!("bind NFQUEUE {queue}"))?;
    // Metadata only: the packet stays in the kernel until the verdict.
    q.set_copy_range(queue, 0)?;
    q.set_queue_max_len(queue, 65_536)?;
    q.set_nonblocking(true);
    std::fs::write(ready, delay.as_micros().to_string())?;
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        loop {
            match q.recv() {
                Ok(m) => held.push_back((Instant::now() + delay, m)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("read NFQUEUE"),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, mut m)) = held.pop_front() {
                m.set_verdict(nfq::Verdict::Accept);
                q.verdict(m).context("NFQUEUE verdict")?;
            }
        }
        let next = held
            .front()
            .map(|(due, _)| due.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(1));
        std::thread::sleep(next.min(Duration::from_millis(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_two_known_places_in_one_order() {
        assert_eq!(
            link("newdc", "olddc").unwrap(),
            ("olddc".to_string(), "newdc".to_string())
        );
        assert!(link("olddc", "olddc").is_err());
        let e = link("olddc", "moon").unwrap_err().to_string();
        assert!(e.contains("moon") && e.contains("bastion"), "{e}");
    }

    #[test]
    fn cuts_are_seen_from_both_ends_and_restored() {
        let mut w = Wan::default();
        assert!(!w.shapes());
        w.set_cut("newdc", "olddc", true).unwrap();
        w.set_cut("olddc", "newdc", true).unwrap();
        assert_eq!(w.cuts.len(), 1, "cutting twice is one cut");
        assert_eq!(w.cut_from("olddc"), vec!["newdc"]);
        assert_eq!(w.cut_from("newdc"), vec!["olddc"]);
        assert!(w.cut_from("dr").is_empty());
        assert!(w.shapes());
        w.set_cut("olddc", "newdc", false).unwrap();
        assert!(w.cuts.is_empty());
    }

    #[test]
    fn chain_drops_cut_peers_then_loses_then_delays() {
        let w = Wan {
            rtt_us: 30_000,
            loss_pct: 1.0,
            ..Wan::default()
        };
        let rules = chain_rules(&w, &[Ipv4Addr::new(10, 1, 2, 10)], 25430);
        assert_eq!(rules[0].join(" "), "-s 10.1.2.10/32 -j DROP");
        assert_eq!(
            rules[1].join(" "),
            "-m statistic --mode random --probability 0.010000 -j DROP"
        );
        assert_eq!(rules[2].join(" "), "-j NFQUEUE --queue-num 25430");
        assert!(chain_rules(&Wan::default(), &[], 1).is_empty());
    }

    #[test]
    fn rates_and_losses_are_checked() {
        assert_eq!(parse_bandwidth("100mbit").unwrap(), "100mbit");
        assert!(parse_bandwidth("100").is_err());
        assert!(parse_bandwidth("100MB").is_err());
        assert!(parse_bandwidth("1kbit").is_err());
        assert_eq!(parse_loss("0.5%").unwrap(), 0.5);
        assert!(parse_loss("50").is_err());
        assert!(parse_loss("-1").is_err());
        assert!(parse_rtt("30ms").is_ok());
        assert!(parse_rtt("1m").is_err());
        assert_eq!(tbf_args("100mbit")[4], (125_000).to_string());
        assert_eq!(tbf_args("1mbit")[4], (32 * 1024).to_string());
    }
}
