//! PowerDNS Authoritative: the rrset is replaced through the HTTP API (`PATCH` with
//! `X-API-Key`, 204 on success; docs/pitfalls.md, traffic §5.4), then the served answer is checked with a DNS
//! query. The API has no compare-and-swap: the rrset is read first and the change refused when
//! it no longer holds the old primary's address (a narrow race remains, stated in the README).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use serde_json::{json, Value};

use super::dns::check_answer;
use super::Router;
use crate::pg::secret::Secret;
use crate::spec::{Node, PowerDnsRoute};

/// The most of an API answer read into memory.
const BODY_LIMIT: usize = 4 << 20;

pub struct PowerDns {
    cfg: PowerDnsRoute,
    http: reqwest::Client,
}

impl PowerDns {
    /// No redirects (the `X-API-Key` header must reach only the configured API), no proxy from
    /// the environment, the spec's `ca_file` as an extra trust root.
    pub fn new(cfg: PowerDnsRoute) -> Result<PowerDns> {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .use_rustls_tls();
        if let Some(ca) = &cfg.ca_file {
            let pem =
                std::fs::read(ca).with_context(|| format!("read ca_file {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("ca_file {} is not a PEM certificate", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        let http = b.build().context("HTTP client")?;
        Ok(PowerDns { cfg, http })
    }

    /// A response body, refused past [`BODY_LIMIT`] (a zone answer is a few KiB).
    async fn body(&self, mut resp: reqwest::Response) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.context("read the PowerDNS answer")? {
            if out.len() + chunk.len() > BODY_LIMIT {
                bail!(
                    "the PowerDNS API at {} answered more than {} KiB; refusing to read it",
                    self.cfg.api,
                    BODY_LIMIT >> 10
                );
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn zone_url(&self) -> String {
        format!(
            "{}/api/v1/servers/{}/zones/{}",
            self.cfg.api, self.cfg.server_id, self.cfg.zone
        )
    }

    fn key(&self) -> Result<Secret> {
        self.cfg
            .api_key
            .resolve_plain()
            .context("the PowerDNS API key (api_key)")
    }

    async fn refused(&self, resp: reqwest::Response, what: &str) -> anyhow::Error {
        let status = resp.status();
        let body = self.body(resp).await.unwrap_or_default();
        let body: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        if status.is_redirection() {
            return anyhow!(
                "PowerDNS API at {} answered {status} (a redirect) to {what}; redirects are not followed so the API key goes nowhere else: give the final URL as api",
                self.cfg.api
            );
        }
        match status.as_u16() {
            401 | 403 => anyhow!(
                "PowerDNS API at {} refused the API key ({status}) on {what}: check api_key",
                self.cfg.api
            ),
            404 => anyhow!(
                "PowerDNS API at {}: zone {} not found on server {} ({what})",
                self.cfg.api,
                self.cfg.zone,
                self.cfg.server_id
            ),
            _ => anyhow!(
                "PowerDNS API at {} answered {status} to {what}: {body}",
                self.cfg.api
            ),
        }
    }

    /// The addresses of our rrset as the API holds them.
    async fn rrset(&self) -> Result<Vec<IpAddr>> {
        let resp = self
            .http
            .get(self.zone_url())
            .header("X-API-Key", self.key()?.expose())
            .send()
            .await
            .with_context(|| format!("reach the PowerDNS API at {}", self.cfg.api))?;
        if !resp.status().is_success() {
            return Err(self.refused(resp, "reading the zone").await);
        }
        let zone: Value =
            serde_json::from_slice(&self.body(resp).await?).context("PowerDNS zone JSON")?;
        let mut out = Vec::new();
        for set in zone["rrsets"].as_array().into_iter().flatten() {
            let name = set["name"].as_str().unwrap_or("");
            let rtype = set["type"].as_str().unwrap_or("");
            if name.eq_ignore_ascii_case(&self.cfg.name) && (rtype == "A" || rtype == "AAAA") {
                for r in set["records"].as_array().into_iter().flatten() {
                    if r["disabled"].as_bool() != Some(true) {
                        if let Some(ip) = r["content"].as_str().and_then(|c| c.parse().ok()) {
                            out.push(ip);
                        }
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[async_trait]
impl Router for PowerDns {
    fn describe(&self) -> String {
        format!("powerdns {} at {}", self.cfg.name, self.cfg.api)
    }

    async fn current(&self) -> Result<Value> {
        let now = self.rrset().await?;
        Ok(json!({
            "name": self.cfg.name,
            "addresses": now.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        }))
    }

    async fn point(&self, from: &Node, to: &Node) -> Result<Value> {
        let (old, new) = (self.cfg.targets.ip_of(from)?, self.cfg.targets.ip_of(to)?);
        let now = self.rrset().await?;
        if now == [new] {
            return Ok(
                json!({ "name": self.cfg.name, "address": new.to_string(), "changed": false }),
            );
        }
        if now != [old] {
            bail!(
                "{} holds {:?}, not {old} ({}): someone else changed it; refusing to overwrite",
                self.cfg.name,
                now.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                from.name
            );
        }
        let rtype = if new.is_ipv4() { "A" } else { "AAAA" };
        let body = json!({ "rrsets": [{
            "name": self.cfg.name, "type": rtype, "ttl": self.cfg.ttl, "changetype": "REPLACE",
            "records": [{ "content": new.to_string(), "disabled": false }],
        }]});
        let resp = self
            .http
            .patch(self.zone_url())
            .header("X-API-Key", self.key()?.expose())
            .json(&body)
            .send()
            .await
            .with_context(|| format!("reach the PowerDNS API at {}", self.cfg.api))?;
        if resp.status().as_u16() != 204 && !resp.status().is_success() {
            return Err(self.refused(resp, "the rrset change").await);
        }
        Ok(json!({ "name": self.cfg.name, "address": new.to_string(), "changed": true }))
    }

    async fn verify(&self, to: &Node) -> Result<Value> {
        let want = self.cfg.targets.ip_of(to)?;
        let held = self.rrset().await?;
        if held != [want] {
            bail!(
                "the PowerDNS API holds {} as {:?}, not {want} ({})",
                self.cfg.name,
                held.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                to.name
            );
        }
        let mut v = check_answer(self.cfg.dns_server, &self.cfg.name, want).await?;
        if let Some(t) = &self.cfg.connect {
            v["through"] = super::reaches(t, "the DNS name", to).await?;
        }
        Ok(v)
    }
}
