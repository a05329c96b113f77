//! The `[[route]]` entries: the traffic layer's providers, validated into typed values.
//!
//! Common to every provider: `connect` (the application-facing endpoint; connecting through it
//! must reach the primary) with its `password`, and `targets` (how the route addresses a node,
//! `node = "ip:port"`, defaulting to the node's own conninfo host and port).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::raw::{RawHost, RawRoute};
use super::{Node, SpecError, Validator};
use crate::host::HostSpec;
use crate::pg::{Conninfo, Endpoint, SecretRef};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// No traffic layer: the cutover verifies the new primary directly.
    None,
    PgBouncer(Box<PgBouncerRoute>),
    HaProxy(Box<HaProxyRoute>),
    Dns(Box<DnsRoute>),
    PowerDns(Box<PowerDnsRoute>),
    Nat(Box<NatRoute>),
    Exec(Box<ExecRoute>),
}

impl Route {
    /// What the route changes, in normal form: two routes with one key would fight over the
    /// same record, rule or pooler entry.
    pub fn changes(&self) -> Option<String> {
        use super::values::normal_path;
        let on = super::values::machine;
        Some(match self {
            Route::None => return None,
            Route::PgBouncer(r) => format!(
                "the PgBouncer config {} on {}",
                normal_path(&r.config).display(),
                on(&r.host)
            ),
            Route::HaProxy(r) => format!(
                "the HAProxy server {}/{} on {}",
                r.backend,
                r.server,
                on(&r.host)
            ),
            Route::Dns(r) => format!("the DNS record {}", r.name.to_ascii_lowercase()),
            Route::PowerDns(r) => format!("the DNS record {}", r.name.to_ascii_lowercase()),
            Route::Nat(r) => format!("the DNAT rule for {} on {}", r.listen, on(&r.host)),
            Route::Exec(r) => format!("the plugin route {}", r.name),
        })
    }
}

/// The application-facing endpoint of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Through {
    pub conninfo: Conninfo,
    pub password: Option<SecretRef>,
}

impl Through {
    pub fn endpoint(&self, label: &str) -> Endpoint {
        Endpoint::new(label, self.conninfo.clone(), self.password.clone())
    }
}

/// A node as the route addresses it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// node name → how the route reaches it (explicit entries only; see [`Targets::of`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets(BTreeMap<String, Target>);

impl Targets {
    /// The IP address the route uses for `node` (DNS records, DNAT rules, proxy servers).
    pub fn ip_of(&self, node: &Node) -> anyhow::Result<IpAddr> {
        let t = self.of(node);
        t.ip()
            .ok_or_else(|| anyhow::anyhow!("{}: {} is not an IP address", node.name, t.host))
    }

    pub fn of(&self, node: &Node) -> Target {
        self.0.get(&node.name).cloned().unwrap_or_else(|| Target {
            host: node.conninfo.host().to_string(),
            port: node.conninfo.port(),
        })
    }
}

/// A PgBouncer in front of the primary: clients are held with PAUSE, the [databases] entries
/// repointed in pgbouncer.ini and reloaded, then RESUME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBouncerRoute {
    pub admin: Conninfo,
    pub password: Option<SecretRef>,
    pub config: PathBuf,
    pub databases: Vec<String>,
    pub host: HostSpec,
    /// The longest the cutover may hold clients; `query_wait_timeout` is raised above it for
    /// the pause when it is shorter (set by the spec from the cutover's time boxes).
    pub pause_budget: Duration,
}

/// An HAProxy TCP backend whose server is re-addressed through the runtime API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaProxyRoute {
    pub socket: PathBuf,
    pub backend: String,
    pub server: String,
    /// haproxy.cfg, whose `server` line is rewritten so a reload keeps the change.
    pub config: PathBuf,
    pub host: HostSpec,
    pub connect: Through,
    pub targets: Targets,
}

/// An A/AAAA record changed by RFC 2136 dynamic update signed with TSIG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRoute {
    pub server: SocketAddr,
    pub zone: String,
    pub name: String,
    pub ttl: u32,
    /// A BIND key file (`key "name" { algorithm hmac-sha256; secret "…"; };`).
    pub key_file: PathBuf,
    pub connect: Option<Through>,
    pub targets: Targets,
}

/// An A/AAAA record changed through the PowerDNS Authoritative HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerDnsRoute {
    pub api: String,
    pub server_id: String,
    pub zone: String,
    pub name: String,
    pub ttl: u32,
    pub api_key: SecretRef,
    /// An extra CA certificate (PEM) for an https API.
    pub ca_file: Option<PathBuf>,
    /// The authoritative server to query for verification.
    pub dns_server: SocketAddr,
    pub connect: Option<Through>,
    pub targets: Targets,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatHook {
    /// Traffic from other hosts through this one (a router or NAT box).
    Prerouting,
    /// Traffic from the NAT host itself.
    Output,
}

/// An nftables DNAT rule on the NAT host: `listen` (the address clients use) → a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatRoute {
    pub listen: SocketAddr,
    pub table: String,
    pub hook: NatHook,
    pub host: HostSpec,
    pub connect: Through,
    pub targets: Targets,
}

/// An external plugin speaking JSON on stdin/stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRoute {
    pub name: String,
    pub command: Vec<String>,
    pub timeout: Duration,
    /// The variables of migrate's environment the plugin gets (its secrets); it gets no other
    /// but PATH, HOME, the locale and the like.
    pub env: Vec<String>,
    pub config: serde_json::Value,
    pub connect: Option<Through>,
    pub targets: Targets,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPgBouncer {
    admin: String,
    password: Option<toml::Value>,
    config: PathBuf,
    databases: Vec<String>,
    #[serde(default)]
    host: RawHost,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHaProxy {
    socket: PathBuf,
    backend: String,
    server: String,
    config: PathBuf,
    connect: String,
    password: Option<toml::Value>,
    #[serde(default)]
    host: RawHost,
    #[serde(default)]
    targets: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    server: String,
    zone: String,
    name: String,
    ttl: Option<u32>,
    key_file: PathBuf,
    connect: Option<String>,
    password: Option<toml::Value>,
    #[serde(default)]
    targets: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPowerDns {
    api: String,
    server_id: Option<String>,
    zone: String,
    name: String,
    ttl: Option<u32>,
    api_key: Option<toml::Value>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    insecure_http: bool,
    dns_server: String,
    connect: Option<String>,
    password: Option<toml::Value>,
    #[serde(default)]
    targets: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNat {
    listen: String,
    table: Option<String>,
    hook: Option<String>,
    connect: String,
    password: Option<toml::Value>,
    #[serde(default)]
    host: RawHost,
    #[serde(default)]
    targets: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    name: String,
    command: Option<Vec<String>>,
    timeout: Option<String>,
    #[serde(default)]
    env: Vec<String>,
    config: Option<toml::Table>,
    connect: Option<String>,
    password: Option<toml::Value>,
    #[serde(default)]
    targets: BTreeMap<String, String>,
}

const KINDS: &str = "kind is one of \"pgbouncer\", \"haproxy\", \"dns\", \"powerdns\", \"nat\", \"exec\", or \"none\" (the cutover then verifies the new primary directly)";

impl Validator {
    /// A provider's settings, with serde's complaint turned into `route[i].<key>: …`.
    pub(super) fn settings<T: DeserializeOwned>(
        &self,
        f: &str,
        what: &str,
        table: toml::Table,
        keys: &str,
    ) -> Result<T, SpecError> {
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            // toml's messages may run over lines ("… \nin `kind`"): one line on the terminal.
            let msg = e.inner().to_string().trim().replace('\n', " ");
            let missing = msg
                .strip_prefix("missing field `")
                .and_then(|r| r.split('`').next())
                .map(str::to_string);
            let field = match (path.as_str(), missing) {
                (".", Some(m)) => format!("{f}.{m}"),
                (".", None) => f.to_string(),
                (p, Some(m)) => format!("{f}.{p}.{m}"),
                (p, None) => format!("{f}.{p}"),
            };
            self.err(
                field,
                msg.trim(),
                format!("{what} takes {keys} (see the README's spec reference)"),
            )
        })
    }

    fn through(
        &self,
        f: &str,
        connect: Option<String>,
        password: Option<toml::Value>,
    ) -> Result<Option<Through>, SpecError> {
        match connect {
            None if password.is_some() => Err(self.err(
                format!("{f}.password"),
                "a password without connect",
                "give connect (the application-facing conninfo) or remove password",
            )),
            None => Ok(None),
            Some(c) => Ok(Some(Through {
                conninfo: self.conninfo(&format!("{f}.connect"), &c)?,
                password: self.secret(&format!("{f}.password"), password)?,
            })),
        }
    }

    fn targets(
        &self,
        f: &str,
        raw: BTreeMap<String, String>,
        nodes: &[Node],
        need_ip: bool,
    ) -> Result<Targets, SpecError> {
        let mut out = BTreeMap::new();
        for (name, text) in raw {
            let field = format!("{f}.targets.{name}");
            let Some(node) = nodes.iter().find(|n| n.name == name) else {
                return Err(self.err(
                    field,
                    format!("{name:?} is not a node"),
                    "name one of the spec's nodes",
                ));
            };
            if node.role == super::Role::Replica {
                return Err(self.err(
                    field,
                    format!("{name} is a replica; a route only ever points at the primary or the target"),
                    "remove this entry (give targets for the primary and the target only)",
                ));
            }
            let target = match text.parse::<SocketAddr>() {
                Ok(sa) => Target {
                    host: sa.ip().to_string(),
                    port: sa.port(),
                },
                Err(_) => match text.parse::<IpAddr>() {
                    Ok(ip) => Target {
                        host: ip.to_string(),
                        port: node.conninfo.port(),
                    },
                    Err(_) => return Err(self.err(
                        field,
                        format!("{text:?} is not an address"),
                        "write \"10.0.0.5:5432\", \"[2001:db8::5]:5432\" or just the IP address",
                    )),
                },
            };
            out.insert(name, target);
        }
        let targets = Targets(out);
        let pointed: Vec<&Node> = nodes
            .iter()
            .filter(|n| n.role != super::Role::Replica)
            .collect();
        let ips: Vec<(&str, IpAddr)> = pointed
            .iter()
            .filter_map(|n| targets.of(n).ip().map(|ip| (n.name.as_str(), ip)))
            .collect();
        if let [(a, ipa), rest @ ..] = ips.as_slice() {
            if let Some((b, ipb)) = rest.iter().find(|(_, ip)| ip.is_ipv4() != ipa.is_ipv4()) {
                return Err(self.err(
                    format!("{f}.targets.{b}"),
                    format!("{a} is reached at {ipa} and {b} at {ipb}: one route cannot switch between IPv4 and IPv6 (an A record cannot become an AAAA record, a DNAT rule is per family)"),
                    format!("give targets.{b} an address of the same family as {a}'s"),
                ));
            }
        }
        if need_ip {
            for n in nodes.iter().filter(|n| n.role != super::Role::Replica) {
                if targets.of(n).ip().is_none() {
                    return Err(self.err(
                        format!("{f}.targets.{}", n.name),
                        format!(
                            "{}'s host {:?} is not an IP address, and this route needs one",
                            n.name,
                            n.conninfo.host()
                        ),
                        format!("add targets.{} = \"<ip>:<port>\"", n.name),
                    ));
                }
            }
        }
        Ok(targets)
    }

    /// An API key: `{ env = "VAR" }` or `{ file = "PATH" }` (the whole file, mode 600).
    fn api_secret(&self, field: &str, v: Option<toml::Value>) -> Result<SecretRef, SpecError> {
        let fix =
            "reference it: { env = \"PDNS_API_KEY\" } or { file = \"/etc/migrate/pdns.key\" }";
        self.secret_ref(field, v, ("file", SecretRef::File), fix)?
            .ok_or_else(|| self.err(field, "missing", fix))
    }

    fn fqdn(&self, field: &str, v: &str) -> Result<String, SpecError> {
        let ok = !v.is_empty()
            && v.split('.').filter(|l| !l.is_empty()).all(|l| {
                l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !ok {
            return Err(self.err(
                field,
                format!("{v:?} is not a DNS name"),
                "write a name such as \"pg.db.example.com.\"",
            ));
        }
        Ok(if v.ends_with('.') {
            v.to_string()
        } else {
            format!("{v}.")
        })
    }

    fn socket_addr(
        &self,
        field: &str,
        v: &str,
        default_port: u16,
    ) -> Result<SocketAddr, SpecError> {
        v.parse::<SocketAddr>()
            .or_else(|_| {
                v.parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, default_port))
            })
            .map_err(|_| {
                self.err(
                    field,
                    format!("{v:?} is not an IP address with a port"),
                    format!("write \"10.0.0.53:{default_port}\""),
                )
            })
    }

    /// An HTTP API's base URL (PowerDNS, Patroni): http(s), no user:password@ (`secret` says
    /// where the secret goes instead), and https unless the API is on loopback or the spec
    /// says `insecure_http = true`.
    pub(super) fn api_url(
        &self,
        field: &str,
        api: &str,
        insecure_http: bool,
        (secret, key): (&str, &str),
    ) -> Result<(), SpecError> {
        self.plain_text(field, api, "URL")?;
        let url = reqwest::Url::parse(api).map_err(|e| {
            self.err(
                field,
                format!("{api:?} is not a URL ({e})"),
                "write the API's base URL, e.g. \"https://10.0.0.53:8081\"",
            )
        })?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(
                field,
                "the URL carries a user name or password; secrets are not allowed inline",
                format!("remove user:password@ from the URL and give the {secret} as {key} = {{ env = \"VAR\" }} or {{ file = \"PATH\" }}"),
            ));
        }
        if url.port() == Some(0) {
            return Err(self.err(
                field,
                "port 0 is not a port",
                "give the API's port (1-65535)",
            ));
        }
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        match url.scheme() {
            "https" => Ok(()),
            "http" if loopback || insecure_http => Ok(()),
            "http" => Err(self.err(
                field,
                format!("plain http to a remote API would send the {secret} unencrypted"),
                "use https:// (with ca_file for a private CA), or set insecure_http = true if the network is trusted",
            )),
            other => Err(self.err(field, format!("{other}:// is not http(s)"), "write the API's base URL, e.g. \"https://10.0.0.53:8081\"")),
        }
    }

    pub(super) fn absolute(
        &self,
        field: &str,
        p: &std::path::Path,
        what: &str,
    ) -> Result<(), SpecError> {
        if p.is_absolute() {
            Ok(())
        } else {
            Err(self.err(
                field,
                "not an absolute path",
                format!("give the absolute path of {what}"),
            ))
        }
    }

    pub(super) fn route(
        &self,
        i: usize,
        r: RawRoute,
        nodes: &[Node],
        pause_budget: Duration,
    ) -> Result<Route, SpecError> {
        let f = format!("route[{i}]");
        let f = f.as_str();
        match r.kind.as_str() {
            "none" => {
                if let Some(k) = r.settings.keys().next() {
                    return Err(self.err(
                        format!("{f}.{k}"),
                        "a route of kind \"none\" takes no settings",
                        "remove the key",
                    ));
                }
                Ok(Route::None)
            }
            "pgbouncer" => {
                let raw: RawPgBouncer = self.settings(f, "a pgbouncer route", r.settings, "admin (conninfo of the admin console), password, config (pgbouncer.ini path), databases, host")?;
                if raw.databases.is_empty() {
                    return Err(self.err(
                        format!("{f}.databases"),
                        "no database to repoint",
                        "list the [databases] entries of pgbouncer.ini that point at the primary",
                    ));
                }
                self.absolute(
                    &format!("{f}.config"),
                    &raw.config,
                    "pgbouncer.ini on the pooler's host",
                )?;
                for (j, db) in raw.databases.iter().enumerate() {
                    if !super::values::plain_identifier(db) {
                        return Err(self.err(format!("{f}.databases[{j}]"), format!("{db:?} is not a plain database name"), "list [databases] entries by name: letters, digits, '_', '-' or '.' (they go into PAUSE/RESUME console commands)"));
                    }
                }
                Ok(Route::PgBouncer(Box::new(PgBouncerRoute {
                    admin: self.conninfo(&format!("{f}.admin"), &raw.admin)?,
                    password: self.secret(&format!("{f}.password"), raw.password)?,
                    config: raw.config,
                    databases: raw.databases,
                    host: self.host(&format!("{f}.host"), raw.host)?,
                    pause_budget,
                })))
            }
            "haproxy" => {
                let raw: RawHaProxy = self.settings(f, "a haproxy route", r.settings, "socket (the admin stats socket), backend, server, config (haproxy.cfg), connect, password, host, targets")?;
                self.absolute(
                    &format!("{f}.socket"),
                    &raw.socket,
                    "the stats socket (level admin) on the proxy's host",
                )?;
                self.absolute(
                    &format!("{f}.config"),
                    &raw.config,
                    "haproxy.cfg on the proxy's host",
                )?;
                for (k, v) in [("backend", &raw.backend), ("server", &raw.server)] {
                    if v.is_empty()
                        || v.contains(|c: char| {
                            c.is_whitespace() || c.is_control() || c == '/' || c == ';'
                        })
                    {
                        return Err(self.err(
                            format!("{f}.{k}"),
                            format!("{v:?} is not an HAProxy {k} name"),
                            format!("give the {k} name as written in haproxy.cfg"),
                        ));
                    }
                }
                Ok(Route::HaProxy(Box::new(HaProxyRoute {
                    socket: raw.socket,
                    backend: raw.backend,
                    server: raw.server,
                    config: raw.config,
                    host: self.host(&format!("{f}.host"), raw.host)?,
                    connect: self
                        .through(f, Some(raw.connect), raw.password)?
                        .expect("given"),
                    targets: self.targets(f, raw.targets, nodes, true)?,
                })))
            }
            "dns" => {
                let raw: RawDns = self.settings(f, "a dns route", r.settings, "server (ip:port), zone, name, ttl, key_file (a BIND TSIG key file), connect, password, targets")?;
                Ok(Route::Dns(Box::new(DnsRoute {
                    server: self.socket_addr(&format!("{f}.server"), &raw.server, 53)?,
                    zone: self.fqdn(&format!("{f}.zone"), &raw.zone)?,
                    name: self.fqdn(&format!("{f}.name"), &raw.name)?,
                    ttl: raw.ttl.unwrap_or(30),
                    key_file: self.relative_to_spec(&raw.key_file),
                    connect: self.through(f, raw.connect, raw.password)?,
                    targets: self.targets(f, raw.targets, nodes, true)?,
                })))
            }
            "powerdns" => {
                let raw: RawPowerDns = self.settings(f, "a powerdns route", r.settings, "api (base URL), server_id, zone, name, ttl, api_key, dns_server (ip:port), connect, password, targets")?;
                self.api_url(
                    &format!("{f}.api"),
                    &raw.api,
                    raw.insecure_http,
                    ("API key", "api_key"),
                )?;
                if let Some(sid) = &raw.server_id {
                    if !super::values::plain_identifier(sid) {
                        return Err(self.err(
                            format!("{f}.server_id"),
                            format!("{sid:?} is not a PowerDNS server id"),
                            "leave server_id out for \"localhost\", or give the id the API lists",
                        ));
                    }
                }
                let api_key = self.api_secret(&format!("{f}.api_key"), raw.api_key)?;
                Ok(Route::PowerDns(Box::new(PowerDnsRoute {
                    api: raw.api.trim_end_matches('/').to_string(),
                    server_id: raw.server_id.unwrap_or_else(|| "localhost".into()),
                    zone: self.fqdn(&format!("{f}.zone"), &raw.zone)?,
                    name: self.fqdn(&format!("{f}.name"), &raw.name)?,
                    ttl: raw.ttl.unwrap_or(30),
                    api_key,
                    ca_file: raw.ca_file.map(|p| self.relative_to_spec(&p)),
                    dns_server: self.socket_addr(
                        &format!("{f}.dns_server"),
                        &raw.dns_server,
                        53,
                    )?,
                    connect: self.through(f, raw.connect, raw.password)?,
                    targets: self.targets(f, raw.targets, nodes, true)?,
                })))
            }
            "nat" => {
                let raw: RawNat = self.settings(f, "a nat route", r.settings, "listen (the ip:port clients use), table, hook (prerouting|output), connect, password, host, targets")?;
                let hook = match raw.hook.as_deref() {
                    None | Some("prerouting") => NatHook::Prerouting,
                    Some("output") => NatHook::Output,
                    Some(other) => return Err(self.err(format!("{f}.hook"), format!("unknown hook {other:?}"), "hook is \"prerouting\" (clients on other hosts) or \"output\" (clients on the NAT host)")),
                };
                let table = raw.table.unwrap_or_else(|| "migrate".into());
                if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(self.err(
                        format!("{f}.table"),
                        format!("{table:?} is not an nftables table name"),
                        "use letters, digits and '_'",
                    ));
                }
                let listen = self.socket_addr(&format!("{f}.listen"), &raw.listen, 5432)?;
                let targets = self.targets(f, raw.targets, nodes, true)?;
                for n in nodes.iter().filter(|n| n.role != super::Role::Replica) {
                    if targets
                        .of(n)
                        .ip()
                        .is_some_and(|ip| ip.is_ipv4() != listen.is_ipv4())
                    {
                        return Err(self.err(
                            format!("{f}.targets.{}", n.name),
                            format!("the route listens on {listen} but {} is at {}: DNAT cannot cross address families", n.name, targets.of(n)),
                            "give listen and every target addresses of one family",
                        ));
                    }
                }
                Ok(Route::Nat(Box::new(NatRoute {
                    listen,
                    table,
                    hook,
                    host: self.host(&format!("{f}.host"), raw.host)?,
                    connect: self
                        .through(f, Some(raw.connect), raw.password)?
                        .expect("given"),
                    targets,
                })))
            }
            "exec" => {
                let raw: RawExec = self.settings(f, "a exec route", r.settings, "name, command, timeout, config (a table handed to the plugin), connect, password, targets")?;
                if raw.name.is_empty()
                    || !raw
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(self.err(format!("{f}.name"), format!("{:?} is not a plugin name", raw.name), "use letters, digits, '-' and '_' (the plugin is migrate-route-<name> on PATH)"));
                }
                let command = self.plugin_command(
                    f,
                    raw.command
                        .unwrap_or_else(|| vec![format!("migrate-route-{}", raw.name)]),
                )?;
                let config = self.plugin_config(f, raw.config)?;
                let env = self.plugin_env(f, raw.env)?;
                Ok(Route::Exec(Box::new(ExecRoute {
                    name: raw.name,
                    env,
                    command,
                    timeout: self.bounded(
                        &format!("{f}.timeout"),
                        raw.timeout,
                        Duration::from_secs(30),
                        super::values::Bounds::new(super::values::SECOND, super::values::HOUR),
                    )?,
                    config,
                    connect: self.through(f, raw.connect, raw.password)?,
                    targets: self.targets(f, raw.targets, nodes, false)?,
                })))
            }
            other => Err(self.err(
                format!("{f}.kind"),
                format!("unknown route provider {other:?}"),
                KINDS,
            )),
        }
    }
}
