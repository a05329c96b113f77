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
    let started = std::time::Instant::now();
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
    // What each new connection costs (MIGRATE_LOG=migrate=debug): inside the pause a
    // connection's set-up is several round trips.
    tracing::debug!(node = %ep.name, ms = started.elapsed().as_millis() as u64, "connected");
    Ok(client)
}

/// The usual causes of a failed connection, each with its fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    WrongPassword,
    NoHbaEntry,
    NoDatabase,
    NoSlots,
    StartingOrStopping,
    Refused,
    NoAnswer,
    Certificate,
    PasswordMissing,
    NoTls,
}

impl Hint {
    pub fn fix(self) -> &'static str {
        match self {
            Hint::WrongPassword => "the password is wrong: check the password reference (env var or passfile) for this user",
            Hint::NoHbaEntry => "pg_hba.conf has no entry admitting this user from this address: add one and reload",
            Hint::NoDatabase => "the database does not exist: fix dbname in the conninfo",
            Hint::NoSlots => "the server has no free connection slots: raise max_connections or close sessions",
            Hint::StartingOrStopping => "the server is starting up or shutting down: wait and retry",
            Hint::Refused => "nothing listens there: is the server running, are host and port right, is a firewall in the way?",
            Hint::NoAnswer => "no answer in time: check the host, routing and firewalls",
            Hint::Certificate => "the server certificate was not accepted: check sslrootcert and that the host name matches the certificate",
            Hint::PasswordMissing => "the server asks for a password: give the node a password reference (env var or passfile)",
            Hint::NoTls => "the server does not offer TLS: enable ssl on the server or lower sslmode",
        }
    }

    /// The hint for a driver error: by SQLSTATE where the server answered, by the I/O error's
    /// kind where the network failed, and by the driver's text only where it offers nothing
    /// typed (TLS and authentication set-up).
    pub fn of(e: &tokio_postgres::Error) -> Option<Hint> {
        use tokio_postgres::error::SqlState;
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            return [
                (SqlState::INVALID_PASSWORD, Hint::WrongPassword),
                (
                    SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                    Hint::NoHbaEntry,
                ),
                (SqlState::INVALID_CATALOG_NAME, Hint::NoDatabase),
                (SqlState::TOO_MANY_CONNECTIONS, Hint::NoSlots),
                (SqlState::CANNOT_CONNECT_NOW, Hint::StartingOrStopping),
            ]
            .into_iter()
            .find_map(|(state, hint)| (*code == state).then_some(hint));
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return Some(Hint::Refused),
                    std::io::ErrorKind::TimedOut => return Some(Hint::NoAnswer),
                    _ => {}
                }
            }
            source = err.source();
        }
        let detail = error_chain_text(e);
        [
            ("timed out", Hint::NoAnswer),
            ("certificate", Hint::Certificate),
            ("InvalidCertificate", Hint::Certificate),
            ("password missing", Hint::PasswordMissing),
            ("server does not support TLS", Hint::NoTls),
        ]
        .into_iter()
        .find_map(|(text, hint)| detail.contains(text).then_some(hint))
    }
}

/// A connection that failed: what was tried, the driver's error (kept whole), and the hint.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}{}", hint.map(|h| format!("\n  hint: {}", h.fix())).unwrap_or_default())]
pub struct ConnectError {
    pub what: String,
    pub hint: Option<Hint>,
    detail: String,
    driver: tokio_postgres::Error,
}

impl ConnectError {
    /// The driver's error, for a caller that branches on it (SQLSTATE, I/O kind).
    pub fn driver(&self) -> &tokio_postgres::Error {
        &self.driver
    }
}

/// Pure: whether a driver error says the server is on its way up (SQLSTATE 57P03 while it
/// starts or before it reaches a consistent state), as opposed to shutting down: such a
/// server will answer in a moment, and what it is can then be asked.
pub fn starting_up(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW
            && (d.message().contains("starting up") || d.message().contains("not yet accepting"))
    })
}

/// [`starting_up`] for an error from [`connect`].
pub fn is_starting_up(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<ConnectError>())
        .any(|c| starting_up(c.driver()))
}

/// Turn a driver error into a message with a hint for the usual causes.
fn explain(e: tokio_postgres::Error, what: &str) -> anyhow::Error {
    ConnectError {
        what: what.to_string(),
        hint: Hint::of(&e),
        detail: error_chain_text(&e),
        driver: e,
    }
    .into()
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
