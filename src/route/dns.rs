//! DNS: an RFC 2136 dynamic update signed with TSIG (HMAC-SHA256 or stronger), sent natively
//! with hickory as a compare-and-swap (prerequisite: the record still holds the old primary's
//! address; docs/pitfalls.md, traffic §5.3), then verified by querying the server. Shared with the PowerDNS
//! provider: the answer check.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use base64::Engine;
use hickory_client::client::{Client, ClientHandle};
use hickory_client::proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_client::proto::dnssec::tsig::TSigner;
use hickory_client::proto::op::ResponseCode;
use hickory_client::proto::rr::rdata::{A, AAAA};
use hickory_client::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_client::proto::runtime::TokioRuntimeProvider;
use hickory_client::proto::udp::UdpClientStream;
use serde_json::{json, Value};

use super::Router;
use crate::spec::{DnsRoute, Node};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A TSIG key as BIND writes it (`tsig-keygen`). The secret never leaves this struct.
pub struct TsigKey {
    pub name: String,
    pub algorithm: TsigAlgorithm,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TsigKey({} {:?}, secret redacted)",
            self.name, self.algorithm
        )
    }
}

impl TsigKey {
    /// Parse `key "name" { algorithm hmac-sha256; secret "base64"; };`.
    pub fn parse(text: &str) -> Result<TsigKey> {
        let text: String = text
            .lines()
            .map(|l| {
                l.split("//")
                    .next()
                    .unwrap_or("")
                    .split('#')
                    .next()
                    .unwrap_or("")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let after_key = text
            .split_once("key")
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("no `key \"name\" {{ … }}` block"))?;
        let name = after_key
            .split('"')
            .nth(1)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| anyhow!("the key has no quoted name"))?
            .to_string();
        let body = after_key
            .split_once('{')
            .and_then(|(_, r)| r.split_once('}'))
            .map(|(b, _)| b)
            .ok_or_else(|| anyhow!("the key block has no {{ … }}"))?;
        let mut algorithm = None;
        let mut secret = None;
        for stmt in body.split(';') {
            let mut words = stmt.split_whitespace();
            match words.next() {
                Some("algorithm") => {
                    algorithm = words
                        .next()
                        .map(|a| a.trim_matches('"').to_ascii_lowercase())
                }
                Some("secret") => secret = words.next().map(|s| s.trim_matches('"').to_string()),
                _ => {}
            }
        }
        let algorithm = match algorithm.as_deref() {
            Some("hmac-sha256") => TsigAlgorithm::HmacSha256,
            Some("hmac-sha384") => TsigAlgorithm::HmacSha384,
            Some("hmac-sha512") => TsigAlgorithm::HmacSha512,
            Some(other) => bail!("algorithm {other} is refused: use hmac-sha256 or stronger (tsig-keygen -a hmac-sha256)"),
            None => bail!("the key has no algorithm"),
        };
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret.ok_or_else(|| anyhow!("the key has no secret"))?)
            .map_err(|_| anyhow!("the key's secret is not base64"))?;
        Ok(TsigKey {
            name,
            algorithm,
            secret,
        })
    }

    pub fn load(path: &Path) -> Result<TsigKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read the TSIG key file {}", path.display()))?;
        TsigKey::parse(&text).with_context(|| format!("the TSIG key file {}", path.display()))
    }

    fn signer(&self) -> Result<TSigner> {
        TSigner::new(
            self.secret.clone(),
            self.algorithm.clone(),
            Name::from_ascii(&self.name)?,
            300,
        )
        .map_err(|e| anyhow!("TSIG key {}: {e}", self.name))
    }
}

async fn client(server: SocketAddr, key: Option<&TsigKey>) -> Result<Client> {
    let mut builder = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_timeout(Some(TIMEOUT));
    if let Some(k) = key {
        builder = builder.with_signer(Some(Arc::new(k.signer()?)));
    }
    let (client, bg) = Client::connect(builder.build())
        .await
        .with_context(|| format!("DNS server {server}"))?;
    tokio::spawn(bg);
    Ok(client)
}

fn record_type(ip: IpAddr) -> RecordType {
    match ip {
        IpAddr::V4(_) => RecordType::A,
        IpAddr::V6(_) => RecordType::AAAA,
    }
}

/// The A or AAAA addresses `server` answers for `name` (authoritative, no recursion).
pub async fn answer(server: SocketAddr, name: &str, rtype: RecordType) -> Result<Vec<IpAddr>> {
    let mut c = client(server, None).await?;
    let resp = c
        .query(Name::from_ascii(name)?, DNSClass::IN, rtype)
        .await
        .with_context(|| format!("query {name} {rtype} at {server}"))?;
    match resp.response_code() {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        code => bail!("{server} answered {code} for {name} {rtype}"),
    }
    let mut out: Vec<IpAddr> = resp
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The served answer must be exactly `want`.
pub async fn check_answer(server: SocketAddr, name: &str, want: IpAddr) -> Result<Value> {
    let got = answer(server, name, record_type(want)).await?;
    if got != [want] {
        bail!(
            "{server} serves {name} as {}, not {want}",
            if got.is_empty() {
                "nothing".to_string()
            } else {
                got.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    Ok(json!({ "server": server.to_string(), "name": name, "answer": want.to_string() }))
}

fn record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, data)
}

pub struct Dns {
    cfg: DnsRoute,
    key: TsigKey,
}

impl Dns {
    pub fn new(cfg: DnsRoute) -> Result<Dns> {
        let key = TsigKey::load(&cfg.key_file)?;
        Ok(Dns { cfg, key })
    }

    /// Prove the key without changing anything: an update message with only a prerequisite
    /// (the zone's SOA exists, RFC 2136 §2.4.1) and no update section. The server checks the
    /// TSIG signature of every update; a signed query would not show a bad key (BIND answers
    /// queries regardless).
    async fn prove_key(&self) -> Result<()> {
        use hickory_client::proto::op::{Message, MessageType, OpCode, Query, UpdateMessage};
        use hickory_client::proto::xfer::{DnsHandle, FirstAnswer};
        let c = client(self.cfg.server, Some(&self.key)).await?;
        let zone = Name::from_ascii(&self.cfg.zone)?;
        let mut q = Query::new();
        q.set_name(zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        let mut prereq = Record::update0(zone, 0, RecordType::SOA);
        prereq.set_dns_class(DNSClass::ANY);
        let mut m = Message::new();
        m.set_id(rand::random())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Update)
            .set_recursion_desired(false);
        m.add_zone(q);
        m.add_pre_requisite(prereq);
        let code = match c.send(m).first_answer().await {
            Ok(r) => r.response_code(),
            Err(e) => bail!(
                "{} did not accept an update signed with the TSIG key {}: {e} (is the key known to the server, and are the clocks within 300 s?)",
                self.cfg.server,
                self.key.name
            ),
        };
        if code != ResponseCode::NoError {
            bail!(
                "{} answered {code} to an update signed with the TSIG key {} (no change was asked): check the key and allow-update / update-policy",
                self.cfg.server,
                self.key.name
            );
        }
        Ok(())
    }

    /// Send the compare-and-swap; the response code tells whether the server took it.
    async fn swap(&self, old: IpAddr, new: IpAddr) -> Result<ResponseCode> {
        let mut c = client(self.cfg.server, Some(&self.key)).await?;
        let name = Name::from_ascii(&self.cfg.name)?;
        let resp = c
            .compare_and_swap(
                record(&name, self.cfg.ttl, old),
                record(&name, self.cfg.ttl, new),
                Name::from_ascii(&self.cfg.zone)?,
            )
            .await;
        match resp {
            Ok(r) => Ok(r.response_code()),
            // hickory refuses an answer whose TSIG does not verify; a server that does not
            // know our key answers unsigned (BADKEY/BADSIG), which lands here too.
            Err(e) => Err(anyhow!(
                "the update of {} at {} failed: {e} (is the TSIG key {} known to the server, and are the clocks within 300 s?)",
                self.cfg.name,
                self.cfg.server,
                self.key.name
            )),
        }
    }
}

#[async_trait]
impl Router for Dns {
    fn describe(&self) -> String {
        format!("dns {} at {}", self.cfg.name, self.cfg.server)
    }

    async fn current(&self) -> Result<Value> {
        let mut all = answer(self.cfg.server, &self.cfg.name, RecordType::A).await?;
        all.extend(answer(self.cfg.server, &self.cfg.name, RecordType::AAAA).await?);
        Ok(json!({
            "name": self.cfg.name,
            "addresses": all.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        }))
    }

    async fn point(&self, from: &Node, to: &Node) -> Result<Value> {
        let (old, new) = (self.cfg.targets.ip_of(from)?, self.cfg.targets.ip_of(to)?);
        if record_type(old) != record_type(new) {
            bail!("{} ({old}) and {} ({new}) are not the same address family: one compare-and-swap cannot move an A record to AAAA", from.name, to.name);
        }
        let served = answer(self.cfg.server, &self.cfg.name, record_type(new)).await?;
        if served == [new] {
            return Ok(
                json!({ "name": self.cfg.name, "address": new.to_string(), "changed": false }),
            );
        }
        match self.swap(old, new).await? {
            ResponseCode::NoError => {}
            ResponseCode::NXRRSet => {
                let now = answer(self.cfg.server, &self.cfg.name, record_type(new)).await?;
                if now != [new] {
                    bail!(
                        "{} no longer holds {old} ({}): it holds {:?}. Someone else changed it; refusing to overwrite (compare-and-swap prerequisite failed)",
                        self.cfg.name,
                        from.name,
                        now.iter().map(|a| a.to_string()).collect::<Vec<_>>()
                    );
                }
            }
            ResponseCode::Refused | ResponseCode::NotAuth => bail!(
                "{} refused the update of {} with key {} ({}): check allow-update / update-policy for that key",
                self.cfg.server,
                self.cfg.name,
                self.key.name,
                "REFUSED or NOTAUTH"
            ),
            code => bail!("{} answered {code} to the update of {}", self.cfg.server, self.cfg.name),
        }
        Ok(json!({ "name": self.cfg.name, "address": new.to_string(), "changed": true }))
    }

    async fn verify(&self, to: &Node) -> Result<Value> {
        self.prove_key().await?;
        let mut v =
            check_answer(self.cfg.server, &self.cfg.name, self.cfg.targets.ip_of(to)?).await?;
        if let Some(t) = &self.cfg.connect {
            v["through"] = super::reaches(t, "the DNS name", to).await?;
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_bind_key_file() {
        let k = TsigKey::parse(
            "key \"pgmig-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0c2VjcmV0c2VjcmV0\";\n};\n",
        )
        .unwrap();
        assert_eq!(k.name, "pgmig-key");
        assert_eq!(k.algorithm, TsigAlgorithm::HmacSha256);
        assert_eq!(k.secret, b"secretsecretsecret");
        assert!(!format!("{k:?}").contains("c2Vj"));
    }

    #[test]
    fn refuses_weak_algorithms() {
        let e = TsigKey::parse("key \"k\" { algorithm hmac-md5; secret \"AAAA\"; };")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hmac-sha256 or stronger"), "{e}");
    }
}
