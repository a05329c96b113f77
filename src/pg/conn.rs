//! Opening connections from a [`Conninfo`] plus a password reference.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio_postgres::{Client, NoTls};

use super::conninfo::Conninfo;
use super::secret::{resolve_password, SecretRef};
use super::tls;

/// A server to connect to, named for messages (usually the spec's node name).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub conninfo: Conninfo,
    pub password: Option<SecretRef>,
}

impl Endpoint {
    pub fn new(
        name: impl Into<String>,
        conninfo: Conninfo,
        password: Option<SecretRef>,
    ) -> Endpoint {
        Endpoint {
            name: name.into(),
            conninfo,
            password,
        }
    }
}

fn driver_config(c: &Conninfo) -> Result<tokio_postgres::Config> {
    let mut cfg = tokio_postgres::Config::new();
    let host = c.get("host");
    match host {
        Some(h) if h.contains(',') => {
            bail!("several hosts in one conninfo are not supported: a node is one server")
        }
        Some(h) => {
            cfg.host(h);
        }
        None if c.get("hostaddr").is_none() => {
            cfg.host("localhost");
        }
        None => {}
    }
    if let Some(addr) = c.get("hostaddr") {
        let ip = addr
            .parse()
            .map_err(|_| anyhow!("hostaddr {addr:?} is not an IP address"))?;
        cfg.hostaddr(ip);
        if host.is_none() {
            cfg.host(addr);
        }
    }
    cfg.port(c.port());
    cfg.user(c.user());
    cfg.dbname(c.dbname());
    cfg.application_name(c.get("application_name").unwrap_or("migrate"));
    if let Some(o) = c.get("options") {
        cfg.options(o);
    }
    let timeout = match c.get("connect_timeout") {
        Some(t) => {
            let secs: u64 = t
                .parse()
                .map_err(|_| anyhow!("connect_timeout {t:?} is not a number of seconds"))?;
            Duration::from_secs(secs.max(2))
        }
        None => Duration::from_secs(10),
    };
    cfg.connect_timeout(timeout);
    if let Some(k) = c.get("keepalives") {
        cfg.keepalives(k != "0");
    }
    if let Some(i) = c.get("keepalives_idle").and_then(|v| v.parse().ok()) {
        cfg.keepalives_idle(Duration::from_secs(i));
    }
    match c.get("target_session_attrs") {
        None | Some("any") => {}
        Some("read-write") => {
            cfg.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        }
        Some(other) => {
            bail!("target_session_attrs={other} is not supported; use any or read-write")
        }
    }
    match c.get("channel_binding") {
        None | Some("prefer") => {}
        Some("disable") => {
            cfg.channel_binding(tokio_postgres::config::ChannelBinding::Disable);
        }
        Some("require") => {
            cfg.channel_binding(tokio_postgres::config::ChannelBinding::Require);
        }
        Some(other) => {
            bail!("channel_binding={other} is not valid; use disable, prefer or require")
        }
    }
    cfg.ssl_mode(tls::SslMode::from_conninfo(c)?.driver_mode());
    Ok(cfg)
}

/// Connect, with a message that names the node, the (password-free) conninfo, the cause and
/// the usual fix.
pub async fn connect(ep: &Endpoint) -> Result<Client> {
    let what = format!("connect to {} ({})", ep.name, ep.conninfo);
    let mut cfg = driver_config(&ep.conninfo).with_context(|| what.clone())?;
    if let Some(pw) =
        resolve_password(ep.password.as_ref(), &ep.conninfo).with_context(|| what.clone())?
    {
        cfg.password(pw.expose());
    }
    let connector = tls::connector(&ep.conninfo).with_context(|| what.clone())?;
    let name = ep.name.clone();
    let client = match connector {
        None => {
            let (client, conn) = cfg.connect(NoTls).await.map_err(|e| explain(e, &what))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(node = %name, "connection closed: {e}");
                }
            });
            client
        }
        Some(tls) => {
            let (client, conn) = cfg.connect(tls).await.map_err(|e| explain(e, &what))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(node = %name, "connection closed: {e}");
                }
            });
            client
        }
    };
    Ok(client)
}

/// Turn a driver error into a message with a hint for the usual causes.
fn explain(e: tokio_postgres::Error, what: &str) -> anyhow::Error {
    let detail = error_chain_text(&e);
    let hint = if let Some(db) = e.as_db_error() {
        match db.code().code() {
            "28P01" => "the password is wrong: check the password reference (env var or passfile) for this user",
            "28000" => "pg_hba.conf has no entry admitting this user from this address: add one and reload",
            "3D000" => "the database does not exist: fix dbname in the conninfo",
            "53300" => "the server has no free connection slots: raise max_connections or close sessions",
            "57P03" => "the server is starting up or shutting down: wait and retry",
            _ => "",
        }
    } else if detail.contains("Connection refused") {
        "nothing listens there: is the server running, are host and port right, is a firewall in the way?"
    } else if detail.contains("timed out") || detail.contains("timeout") {
        "no answer in time: check the host, routing and firewalls"
    } else if detail.contains("certificate") || detail.contains("InvalidCertificate") {
        "the server certificate was not accepted: check sslrootcert and that the host name matches the certificate"
    } else if detail.contains("password missing") {
        "the server asks for a password: give the node a password reference (env var or passfile)"
    } else if detail.contains("server does not support TLS") {
        "the server does not offer TLS: enable ssl on the server or lower sslmode"
    } else {
        ""
    };
    if hint.is_empty() {
        anyhow!("{what}: {detail}")
    } else {
        anyhow!("{what}: {detail}\n  hint: {hint}")
    }
}

pub fn error_chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    parts.join(": ")
}
