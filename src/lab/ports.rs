//! Port checks, and blocks of ports reserved across processes so parallel tests never clash.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use rand::Rng;

pub fn is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `width` consecutive ports that were free when reserved, held (by an advisory file lock)
/// until dropped, so that other processes using [`PortBlock::reserve`] skip them.
pub struct PortBlock {
    pub base: u16,
    _lock: Flock<File>,
}

impl PortBlock {
    pub fn reserve(width: u16) -> Result<PortBlock> {
        let dir = std::env::temp_dir().join("migrate-ports");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // Stay below the kernel's ephemeral range: an outgoing connection's local port can
        // otherwise land inside a reserved block and a server then cannot bind it.
        let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        let top = (ephemeral_start.saturating_sub(width) / 10).max(1001);
        let mut rng = rand::rng();
        for _ in 0..200 {
            let base = rng.random_range(1000u16..top) * 10;
            let path: PathBuf = dir.join(format!("{base}.lock"));
            let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            if (base..base + width).all(is_free) {
                return Ok(PortBlock { base, _lock: lock });
            }
        }
        bail!("could not find {width} free consecutive ports on 127.0.0.1")
    }
}
