//! NAT: one nftables DNAT rule, `listen` → a node, in a table of its own on the NAT host
//! (docs/pitfalls.md, traffic §5.5). The swap is one `nft -f` transaction (flush the chain, add the rule), so
//! there is no instant without a rule. NAT cannot hold clients; established connections keep
//! their conntrack binding, which is harmless because the old primary is stopped and restarted
//! as a standby (every old connection is gone).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use serde_json::{json, Value};

use super::Router;
use crate::host::{Cmd, Host};
use crate::spec::{NatHook, NatRoute, Node};

pub struct Nat {
    cfg: NatRoute,
    host: Arc<dyn Host>,
}

impl Nat {
    pub fn new(cfg: NatRoute) -> Result<Nat> {
        let host = cfg.host.open()?;
        Ok(Nat { cfg, host })
    }

    fn family(&self) -> &'static str {
        if self.cfg.listen.is_ipv4() {
            "ip"
        } else {
            "ip6"
        }
    }

    fn chain(&self) -> &'static str {
        match self.cfg.hook {
            NatHook::Prerouting => "prerouting",
            NatHook::Output => "output",
        }
    }

    /// The whole change as one nftables transaction.
    fn script(&self, to: SocketAddr) -> String {
        let (fam, table, chain) = (self.family(), &self.cfg.table, self.chain());
        let dest = match to {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        format!(
            "table {fam} {table} {{\n  chain {chain} {{ type nat hook {chain} priority -100; policy accept; }}\n}}\n\
             flush chain {fam} {table} {chain}\n\
             add rule {fam} {table} {chain} {fam} daddr {} tcp dport {} dnat to {dest}\n",
            self.cfg.listen.ip(),
            self.cfg.listen.port()
        )
    }

    /// Where the DNAT rule for `listen` sends traffic now (`None`: no rule, or no table yet).
    async fn rule(&self) -> Result<Option<SocketAddr>> {
        let out = self
            .host
            .run(&Cmd::new([
                "nft",
                "-j",
                "list",
                "chain",
                self.family(),
                &self.cfg.table,
                self.chain(),
            ]))
            .await
            .context("run nft on the NAT host")?;
        if !out.success() {
            let err = out.stderr_tail();
            if err.contains("No such file or directory") {
                return Ok(None);
            }
            bail!("nft list chain: {err} (migrate needs root or CAP_NET_ADMIN on the NAT host)");
        }
        let doc: Value = serde_json::from_str(&out.stdout_text()).context("nft -j output")?;
        let listen_ip = self.cfg.listen.ip().to_string();
        for item in doc["nftables"].as_array().into_iter().flatten() {
            let Some(exprs) = item["rule"]["expr"].as_array() else {
                continue;
            };
            let matches = |field: &str, want: &Value| {
                exprs.iter().any(|e| {
                    e["match"]["left"]["payload"]["field"] == field && &e["match"]["right"] == want
                })
            };
            if !matches("daddr", &json!(listen_ip))
                || !matches("dport", &json!(self.cfg.listen.port()))
            {
                continue;
            }
            if let Some(d) = exprs.iter().find_map(|e| e.get("dnat")) {
                let ip: IpAddr = d["addr"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| anyhow!("nft rule with an unreadable dnat address: {d}"))?;
                let port = d["port"]
                    .as_u64()
                    .unwrap_or(u64::from(self.cfg.listen.port())) as u16;
                return Ok(Some(SocketAddr::new(ip, port)));
            }
        }
        Ok(None)
    }

    fn target(&self, node: &Node) -> Result<SocketAddr> {
        let port = self.cfg.targets.of(node).port;
        let ip = self.cfg.targets.ip_of(node)?;
        if ip.is_ipv4() != self.cfg.listen.is_ipv4() {
            bail!(
                "{} ({ip}) and listen ({}) are not the same address family",
                node.name,
                self.cfg.listen
            );
        }
        Ok(SocketAddr::new(ip, port))
    }
}

#[async_trait]
impl Router for Nat {
    fn describe(&self) -> String {
        format!(
            "nat {} (nft table {} {})",
            self.cfg.listen,
            self.family(),
            self.cfg.table
        )
    }

    async fn current(&self) -> Result<Value> {
        Ok(json!({
            "listen": self.cfg.listen.to_string(),
            "dnat": self.rule().await?.map(|a| a.to_string()),
        }))
    }

    async fn point(&self, _from: &Node, to: &Node) -> Result<Value> {
        let dest = self.target(to)?;
        let changed = self.rule().await? != Some(dest);
        if changed {
            self.host
                .run_ok(&Cmd::new(["nft", "-f", "-"]).stdin(self.script(dest)))
                .await
                .context("apply the DNAT swap with nft -f on the NAT host")?;
        }
        let now = self.rule().await?;
        if now != Some(dest) {
            bail!(
                "after nft -f, {} goes to {:?}, not {dest}",
                self.cfg.listen,
                now.map(|a| a.to_string())
            );
        }
        Ok(
            json!({ "listen": self.cfg.listen.to_string(), "dnat": dest.to_string(), "changed": changed }),
        )
    }

    async fn verify(&self, to: &Node) -> Result<Value> {
        let dest = self.target(to)?;
        let now = self.rule().await?;
        if now != Some(dest) {
            bail!(
                "{} goes to {:?}, not {dest} ({})",
                self.cfg.listen,
                now.map(|a| a.to_string()),
                to.name
            );
        }
        super::reaches(&self.cfg.connect, "the NAT address", to).await
    }
}
