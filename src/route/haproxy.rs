//! HAProxy (TCP mode): the backend's server is re-addressed through the runtime API on the
//! admin stats socket (docs/pitfalls.md, traffic §5.2): `disable server` → `shutdown sessions server` →
//! `set server … addr … port …` → `enable server`. HAProxy cannot hold clients: connections
//! during the switch fail and the application reconnects. The `server` line in haproxy.cfg is
//! rewritten too, so a reload or restart keeps the new address.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Router;
use crate::host::{Cmd, Host, HostSpec};
use crate::spec::{HaProxyRoute, Node, Target};

pub struct HaProxy {
    cfg: HaProxyRoute,
    host: Arc<dyn Host>,
}

/// One row of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerState {
    addr: String,
    port: u16,
    /// 0 = ready; bit 0x01 = maintenance forced by the admin.
    admin_state: u32,
    op_state: u32,
}

impl HaProxy {
    pub fn new(cfg: HaProxyRoute) -> Result<HaProxy> {
        let host = cfg.host.open()?;
        Ok(HaProxy { cfg, host })
    }

    fn id(&self) -> String {
        format!("{}/{}", self.cfg.backend, self.cfg.server)
    }

    /// One runtime API command; the socket answers and closes (non-interactive mode).
    async fn command(&self, cmd: &str) -> Result<String> {
        let answer = match &self.cfg.host {
            HostSpec::Local { .. } => {
                let mut s = tokio::net::UnixStream::connect(&self.cfg.socket)
                    .await
                    .with_context(|| {
                        format!(
                            "connect to the HAProxy stats socket {} (is `stats socket … level admin` in haproxy.cfg?)",
                            self.cfg.socket.display()
                        )
                    })?;
                s.write_all(format!("{cmd}\n").as_bytes()).await?;
                let mut out = String::new();
                tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    s.read_to_string(&mut out),
                )
                .await
                .map_err(|_| anyhow!("HAProxy did not answer `{cmd}` within 10 s"))??;
                out
            }
            _ => {
                let socket = format!("UNIX-CONNECT:{}", self.cfg.socket.display());
                self.host
                    .run_ok(
                        &Cmd::new(["socat", "STDIO", socket.as_str()]).stdin(format!("{cmd}\n")),
                    )
                    .await
                    .context("talk to the HAProxy stats socket through socat on the proxy's host")?
                    .stdout_text()
            }
        };
        let t = answer.trim();
        let lower = t.to_ascii_lowercase();
        if lower.starts_with("unknown command")
            || lower.contains("permission denied")
            || lower.starts_with("no such")
            || lower.contains("require")
            || lower.starts_with("invalid")
        {
            bail!("HAProxy refused `{cmd}`: {t}");
        }
        Ok(answer)
    }

    async fn state(&self) -> Result<ServerState> {
        let text = self
            .command(&format!("show servers state {}", self.cfg.backend))
            .await?;
        parse_state(&text, &self.cfg.server).ok_or_else(|| {
            anyhow!(
                "HAProxy has no server {} (show servers state: {})",
                self.id(),
                text.lines().next().unwrap_or("").trim()
            )
        })
    }

    /// haproxy.cfg with the server line of our backend re-addressed, or an error naming what
    /// is missing.
    fn rewritten(&self, cfg: &str, to: &Target) -> Result<String> {
        let mut section = String::new();
        let mut found = false;
        let mut out = String::with_capacity(cfg.len());
        for line in cfg.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if !line.starts_with(char::is_whitespace) && !words.is_empty() {
                section = words[..words.len().min(2)].join(" ");
            }
            let ours = section == format!("backend {}", self.cfg.backend)
                || section == format!("listen {}", self.cfg.backend);
            if ours && words.len() >= 3 && words[0] == "server" && words[1] == self.cfg.server {
                found = true;
                let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
                let mut w: Vec<String> = words.iter().map(|s| s.to_string()).collect();
                w[2] = to.to_string();
                out.push_str(&indent);
                out.push_str(&w.join(" "));
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        if !found {
            bail!(
                "{} has no `server {}` line in backend {}",
                self.cfg.config.display(),
                self.cfg.server,
                self.cfg.backend
            );
        }
        Ok(out)
    }

    async fn persist(&self, to: &Target) -> Result<bool> {
        let old =
            String::from_utf8_lossy(&self.host.read_file(&self.cfg.config).await?).into_owned();
        let new = self.rewritten(&old, to)?;
        if new == old {
            return Ok(false);
        }
        self.host
            .rewrite_file(&self.cfg.config, new.as_bytes())
            .await
            .with_context(|| format!("rewrite {}", self.cfg.config.display()))?;
        Ok(true)
    }
}

fn parse_state(text: &str, server: &str) -> Option<ServerState> {
    let mut columns: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix('#') {
            columns = h.split_whitespace().collect();
            continue;
        }
        let values: Vec<&str> = line.split_whitespace().collect();
        if columns.is_empty() || values.len() < columns.len().min(5) {
            continue;
        }
        let row: BTreeMap<&str, &str> = columns.iter().copied().zip(values).collect();
        if row.get("srv_name") == Some(&server) {
            return Some(ServerState {
                addr: row.get("srv_addr")?.to_string(),
                port: row.get("srv_port")?.parse().ok()?,
                admin_state: row.get("srv_admin_state")?.parse().ok()?,
                op_state: row.get("srv_op_state")?.parse().ok()?,
            });
        }
    }
    None
}

#[async_trait]
impl Router for HaProxy {
    fn describe(&self) -> String {
        format!("haproxy {} ({})", self.id(), self.cfg.socket.display())
    }

    async fn current(&self) -> Result<Value> {
        let s = self.state().await?;
        Ok(json!({
            "server": self.id(), "addr": s.addr, "port": s.port,
            "admin_state": s.admin_state, "op_state": s.op_state,
        }))
    }

    async fn point(&self, _from: &Node, to: &Node) -> Result<Value> {
        let target = self.cfg.targets.of(to);
        let ip = self.cfg.targets.ip_of(to)?;
        let now = self.state().await?;
        let moved = now.addr != ip.to_string() || now.port != target.port;
        if moved || now.admin_state & 0x01 != 0 {
            let id = self.id();
            self.command(&format!("disable server {id}")).await?;
            if moved {
                self.command(&format!("shutdown sessions server {id}"))
                    .await?;
                self.command(&format!("set server {id} addr {ip} port {}", target.port))
                    .await?;
            }
            self.command(&format!("enable server {id}")).await?;
        }
        let after = self.state().await?;
        if after.addr != ip.to_string() || after.port != target.port {
            bail!(
                "HAProxy {} still has {}:{} after `set server`, not {target}",
                self.id(),
                after.addr,
                after.port
            );
        }
        let persisted = self.persist(&target).await?;
        Ok(json!({
            "server": self.id(), "addr": after.addr, "port": after.port,
            "config_rewritten": persisted,
        }))
    }

    async fn verify(&self, to: &Node) -> Result<Value> {
        let target = self.cfg.targets.of(to);
        let s = self.state().await?;
        if s.addr != target.host || s.port != target.port {
            bail!(
                "HAProxy {} points at {}:{}, not {target} ({})",
                self.id(),
                s.addr,
                s.port,
                to.name
            );
        }
        if s.admin_state & 0x01 != 0 {
            bail!("HAProxy {} is still in maintenance (disabled)", self.id());
        }
        super::reaches(&self.cfg.connect, "HAProxy", to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 pg_primary 1 pg1 127.0.0.1 2 0 1 1 12 6 3 4 6 0 0 0 - 55432 - 0 0 - - 0\n";

    #[test]
    fn reads_the_server_row() {
        let s = parse_state(STATE, "pg1").unwrap();
        assert_eq!(
            s,
            ServerState {
                addr: "127.0.0.1".into(),
                port: 55432,
                admin_state: 0,
                op_state: 2
            }
        );
        assert!(parse_state(STATE, "pg2").is_none());
    }
}
