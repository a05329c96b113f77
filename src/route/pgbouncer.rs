//! PgBouncer: `PAUSE db` holds clients, the `[databases]` entries are repointed in
//! pgbouncer.ini (atomically, through host control) and `RELOAD`ed, `RESUME db` releases them.
//! The admin console speaks only the simple query protocol.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use serde_json::{json, Value};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::Router;
use crate::host::Host;
use crate::memo::Memo;
use crate::pg::{session, Endpoint, Session};
use crate::spec::{Node, PgBouncerRoute};

pub struct PgBouncer {
    cfg: PgBouncerRoute,
    host: Arc<dyn Host>,
}

impl PgBouncer {
    pub fn new(cfg: PgBouncerRoute) -> Result<PgBouncer> {
        let host = cfg.host.open()?;
        Ok(PgBouncer { cfg, host })
    }

    fn endpoint(&self, dbname: &str) -> Endpoint {
        Endpoint::new(
            "pgbouncer",
            self.cfg.admin.clone().with("dbname", dbname),
            self.cfg.password.clone(),
        )
    }

    /// The admin console, kept open between steps (inside the pause each new connection
    /// costs its set-up's round trips); see [`crate::pg::session`].
    async fn console(&self) -> Result<Session> {
        session(&self.endpoint("pgbouncer"))
            .await
            .context("connect to the PgBouncer admin console")
    }

    /// A console of its own for `PAUSE db` (see `hold`), kept like the main one.
    async fn pause_console(&self, db: &str) -> Result<Session> {
        let mut ep = self.endpoint("pgbouncer");
        ep.name = format!("pgbouncer (PAUSE {db})");
        session(&ep)
            .await
            .context("connect to the PgBouncer admin console")
    }

    async fn rows(c: &Client, sql: &str) -> Result<Vec<Vec<(String, String)>>> {
        let msgs = c
            .simple_query(sql)
            .await
            .with_context(|| format!("PgBouncer console: {sql}"))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(
                    r.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, col)| {
                            (col.name().to_string(), r.get(i).unwrap_or("").to_string())
                        })
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    async fn ini(&self) -> Result<String> {
        let bytes = self.host.read_file(&self.cfg.config).await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        self.remember_ini(&bytes);
        Ok(text)
    }

    /// Where this process keeps the last pgbouncer.ini it read from this host and path.
    fn ini_key(&self) -> (String, String) {
        (self.host.describe(), self.cfg.config.display().to_string())
    }

    /// What `memo` holds for this PgBouncer (by its config file), left in place.
    fn known<T: Clone>(&self, memo: &Memo<T>) -> Option<T> {
        let (host, file) = self.ini_key();
        memo.get(&host, &file)
    }

    /// What `memo` holds for this PgBouncer, taken.
    fn taken<T>(&self, memo: &Memo<T>) -> Option<T> {
        let (host, file) = self.ini_key();
        memo.take(&host, &file)
    }

    fn keep<T>(&self, memo: &Memo<T>, value: T) {
        let (host, file) = self.ini_key();
        memo.remember(&host, &file, value);
    }

    fn remember_ini(&self, bytes: &[u8]) {
        self.keep(&SEEN_INI, bytes.to_vec());
    }

    /// The repointed file written: from the text read before the hold when it is still what
    /// the file holds (one round trip inside the pause), else read again and rewritten.
    /// Returns the text the file now holds.
    async fn write_repointed(&self, repoint: impl Fn(&str) -> String) -> Result<String> {
        // The pgbouncer.ini read before (by `hold`, before clients were held), used once,
        // with a compare-and-swap write.
        if let Some(seen) = self.taken(&SEEN_INI) {
            let out = repoint(&String::from_utf8_lossy(&seen));
            if let Ok(true) = self
                .host
                .rewrite_file_if(&self.cfg.config, &seen, out.as_bytes())
                .await
            {
                self.remember_ini(out.as_bytes());
                return Ok(out);
            }
        }
        let ini = self.ini().await?;
        let out = repoint(&ini);
        if out != ini {
            self.host
                .rewrite_file(&self.cfg.config, out.as_bytes())
                .await?;
            self.remember_ini(out.as_bytes());
        }
        Ok(out)
    }

    /// pgbouncer.ini as this process last read or wrote it, else read now.
    async fn last_ini(&self) -> Result<String> {
        match self.known(&SEEN_INI) {
            Some(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            None => self.ini().await,
        }
    }

    /// The `[databases]` entries we manage: name → its connection string.
    fn entries(ini: &str) -> Vec<(String, String)> {
        let mut in_dbs = false;
        let mut out = Vec::new();
        for line in ini.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                in_dbs = t == "[databases]";
                continue;
            }
            if !in_dbs || t.is_empty() || t.starts_with(';') || t.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = t.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        out
    }

    fn check_pool_mode(config: &[Vec<(String, String)>]) -> Result<()> {
        if config_value(config, "pool_mode").as_deref() == Some("session") {
            bail!("PgBouncer runs pool_mode = session: PAUSE would wait for every client to disconnect; use transaction pooling for the cutover");
        }
        Ok(())
    }

    /// Held clients are disconnected after `query_wait_timeout`: raise it above the cutover's
    /// pause budget while they are held (0 means no limit), from `SHOW CONFIG`'s rows. The
    /// value in force is remembered as the configured one (to go back to), unless it is this
    /// tool's own stretch left by an earlier attempt. A `RELOAD` resets it, so the repoint
    /// stretches again.
    async fn stretch_wait_timeout(
        &self,
        c: &Client,
        config: &[Vec<(String, String)>],
    ) -> Result<()> {
        let budget = self.cfg.pause_budget.as_secs();
        let now = wait_timeout_in(config);
        if let Some(configured) = configured_at_hold(now, budget) {
            self.keep(&CONFIGURED_WAIT, configured);
        }
        if let Some(s) = stretch_to(now, budget) {
            set_wait_timeout(c, s).await?;
        }
        Ok(())
    }

    /// `ini` with the managed `[databases]` entries pointed at `to`.
    fn repointed(&self, ini: &str, to: &Node) -> String {
        let (host, port) = (to.conninfo.host(), to.conninfo.port().to_string());
        repoint_ini(ini, &self.cfg.databases, host, &port)
    }

    /// The configured `query_wait_timeout`, to go back to after the release: as PgBouncer
    /// showed it after loading its configuration (an `%include`d file counts), else as
    /// pgbouncer.ini sets it (a resumed run; PgBouncer's default is 120 s).
    async fn configured_wait_timeout(&self) -> Result<u64> {
        if let Some(seen) = self.known(&CONFIGURED_WAIT) {
            return Ok(seen);
        }
        let ini = self.last_ini().await?;
        Ok(ini_wait_timeout(&ini).unwrap_or(120))
    }

    /// `server_login_retry` as PgBouncer shows it (at the hold, after a RELOAD), kept as the
    /// configured value unless it is 0: the release's own setting, left by a run that died
    /// between its two round trips (the file then tells).
    fn remember_login_retry(&self, config: &[Vec<(String, String)>]) {
        if let Some(seen) = config_value(config, "server_login_retry").and_then(|v| seconds(&v)) {
            if seen != 0 {
                self.keep(&CONFIGURED_RETRY, seen);
            }
        }
    }

    /// The configured `server_login_retry` to go back to after the release.
    async fn configured_login_retry(&self) -> Result<u64> {
        if let Some(seen) = self.known(&CONFIGURED_RETRY) {
            return Ok(seen);
        }
        let ini = self.last_ini().await?;
        Ok(login_retry_in_ini(&ini))
    }
}

/// Pure: `server_login_retry` as pgbouncer.ini sets it, else PgBouncer's default (15 s).
fn login_retry_in_ini(ini: &str) -> u64 {
    ini_setting(ini, "pgbouncer", "server_login_retry")
        .and_then(|v| seconds(&v))
        .unwrap_or(15)
}

/// Pure: the `query_wait_timeout` to set so that held clients outlast `budget` seconds, from
/// the value in force (`None`: unknown, left alone; 0: no limit).
fn stretch_to(now: Option<u64>, budget: u64) -> Option<u64> {
    now.filter(|&s| s != 0 && s < budget).map(|_| budget + 1)
}

/// Pure: the same after a RELOAD: from the configured value as seen before (`known`), else as
/// `ini` sets it (PgBouncer's default is 120 s).
fn stretched_wait(known: Option<u64>, ini: &str, budget: u64) -> Option<u64> {
    let configured = known.or_else(|| {
        ini_setting(ini, "pgbouncer", "query_wait_timeout").map_or(Some(120), |v| seconds(&v))
    });
    stretch_to(configured, budget)
}

/// Pure: what the value in force at the hold says of the configured one: itself, unless it is
/// this tool's own stretch (`budget + 1`) left by an earlier attempt.
fn configured_at_hold(now: Option<u64>, budget: u64) -> Option<u64> {
    now.filter(|&s| s != budget + 1)
}

fn wait_timeout_in(config: &[Vec<(String, String)>]) -> Option<u64> {
    config_value(config, "query_wait_timeout").and_then(|v| seconds(&v))
}

fn ini_wait_timeout(ini: &str) -> Option<u64> {
    ini_setting(ini, "pgbouncer", "query_wait_timeout").and_then(|v| seconds(&v))
}

/// Pure: one setting's value among `SHOW CONFIG`'s rows.
fn config_value(rows: &[Vec<(String, String)>], key: &str) -> Option<String> {
    rows.iter().find_map(|row| {
        let get = |k: &str| row.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        (get("key").as_deref() == Some(key))
            .then(|| get("value"))
            .flatten()
    })
}

async fn set_wait_timeout(c: &Client, seconds: u64) -> Result<()> {
    set_seconds(c, "query_wait_timeout", seconds).await
}

/// `SET key = seconds` on the console: in force until the next RELOAD or SET.
async fn set_seconds(c: &Client, key: &str, seconds: u64) -> Result<()> {
    c.simple_query(&format!("SET {key} = {seconds}"))
        .await
        .map_err(|e| {
            anyhow!(
                "PgBouncer SET {key}: {}",
                crate::pg::conn::error_chain_text(&e)
            )
        })?;
    Ok(())
}

/// A time setting as PgBouncer shows or takes it ("120", "120s", "2min" is not used by it).
fn seconds(v: &str) -> Option<u64> {
    let v = v.trim().trim_end_matches('s').trim();
    v.parse::<f64>().ok().map(|f| f.ceil() as u64)
}

/// `key` in `[section]` of an ini text.
fn ini_setting(ini: &str, section: &str, key: &str) -> Option<String> {
    let mut inside = false;
    for line in ini.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == format!("[{section}]");
            continue;
        }
        if inside {
            if let Some((k, v)) = t.split_once('=') {
                if k.trim() == key {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

/// Pure: pgbouncer.ini with the `[databases]` entries of `databases` pointed at `host` and
/// `port`; every other line as it was.
pub fn repoint_ini(ini: &str, databases: &[String], host: &str, port: &str) -> String {
    let mut in_dbs = false;
    let mut out = String::new();
    for line in ini.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_dbs = t == "[databases]";
        }
        let managed = in_dbs
            && t.split_once('=')
                .is_some_and(|(k, _)| databases.iter().any(|d| d == k.trim()));
        match t.split_once('=') {
            Some((k, v)) if managed => {
                out.push_str(&format!(
                    "{} = {}\n",
                    k.trim(),
                    repoint_entry(v.trim(), host, port)
                ));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// What this process last read or wrote of each PgBouncer's config file.
static SEEN_INI: Memo<Vec<u8>> = Memo::new();

/// The repointed file `prepare_point` wrote (not yet RELOADed), for `point` to take.
static PREPARED_INI: Memo<Vec<u8>> = Memo::new();

/// The configured `query_wait_timeout` as PgBouncer showed it (at the hold, after the
/// repoint's RELOAD), to go back to on release.
static CONFIGURED_WAIT: Memo<u64> = Memo::new();

/// The configured `server_login_retry` as PgBouncer showed it (never 0: see
/// `remember_login_retry`), to set back after the release.
static CONFIGURED_RETRY: Memo<u64> = Memo::new();

/// A `[databases]` value with only its `host=` and `port=` values replaced (added when
/// missing); every other token (`password=`, `auth_user=`, `pool_size=`, …) stays as written.
pub fn repoint_entry(value: &str, host: &str, port: &str) -> String {
    let mut out = String::new();
    let mut seen_host = false;
    let mut seen_port = false;
    let mut rest = value.trim();
    while !rest.is_empty() {
        let (token, after) = split_token(rest);
        let key = token.split('=').next().unwrap_or("").trim();
        let replaced = match key {
            "host" => {
                seen_host = true;
                format!("host={host}")
            }
            "port" => {
                seen_port = true;
                format!("port={port}")
            }
            _ => token.to_string(),
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&replaced);
        rest = after.trim_start();
    }
    if !seen_host {
        out = format!("host={host} {out}");
    }
    if !seen_port {
        out.push_str(&format!(" port={port}"));
    }
    out.trim().to_string()
}

/// The `host=` and `port=` values of a `[databases]` entry (whose other keys are PgBouncer's
/// own, `pool_size=` and the like, so it is no libpq conninfo).
pub fn entry_host_port(value: &str) -> (Option<String>, Option<String>) {
    let (mut host, mut port) = (None, None);
    let mut rest = value.trim();
    while !rest.is_empty() {
        let (token, after) = split_token(rest);
        if let Some((k, v)) = token.split_once('=') {
            let v = v.trim().trim_matches('\'').to_string();
            match k.trim() {
                "host" => host = Some(v),
                "port" => port = Some(v),
                _ => {}
            }
        }
        rest = after.trim_start();
    }
    (host, port)
}

/// The first `key=value` token (a quoted value may hold spaces) and what follows it.
fn split_token(s: &str) -> (&str, &str) {
    let mut quoted = false;
    let mut escaped = false;
    let mut seen_eq = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '=' => seen_eq = true,
            '\'' if seen_eq => quoted = !quoted,
            c if c.is_whitespace() && !quoted && seen_eq && !s[..i].trim_end().ends_with('=') => {
                return (&s[..i], &s[i..]);
            }
            _ => {}
        }
    }
    (s, "")
}

#[async_trait]
impl Router for PgBouncer {
    fn describe(&self) -> String {
        format!(
            "pgbouncer ({}, {})",
            self.cfg.admin,
            self.cfg.databases.join(", ")
        )
    }

    async fn current(&self) -> Result<Value> {
        let ini = self.ini().await?;
        let entries = Self::entries(&ini);
        let mut out = serde_json::Map::new();
        for db in &self.cfg.databases {
            let line = entries.iter().find(|(k, _)| k == db).ok_or_else(|| {
                anyhow!(
                    "{} has no [databases] entry {db}",
                    self.cfg.config.display()
                )
            })?;
            let (host, port) = entry_host_port(&line.1);
            out.insert(
                db.clone(),
                json!({ "host": host.unwrap_or_else(|| "localhost".into()), "port": port.and_then(|p| p.parse::<u16>().ok()).unwrap_or(5432) }),
            );
        }
        Ok(Value::Object(out))
    }

    fn holds(&self) -> bool {
        true
    }

    async fn hold(&self) -> Result<()> {
        // One console per database, all opened before the first PAUSE (outside the pause):
        // the PAUSEs then go out at once, one per connection. Not pipelined on one console:
        // PgBouncer leaves a second command that arrived while a PAUSE waited unread until
        // more input comes (measured: the hold then never completes); one after the other,
        // each database after the first would add a round trip to the pause.
        let consoles =
            futures_util::future::try_join_all(self.cfg.databases.iter().enumerate().map(
                |(i, db)| async move {
                    match i {
                        0 => self.console().await,
                        _ => self.pause_console(db).await,
                    }
                },
            ))
            .await?;
        let Some(c) = consoles.first() else {
            bail!("the PgBouncer route names no database to hold");
        };
        let config = Self::rows(c, "SHOW CONFIG").await?;
        Self::check_pool_mode(&config)?;
        self.remember_login_retry(&config);
        self.stretch_wait_timeout(c, &config).await?;
        let paused = futures_util::future::join_all(self.cfg.databases.iter().zip(&consoles).map(
            |(db, c)| async move {
                match c.simple_query(&format!("PAUSE {db}")).await {
                    Ok(_) => Ok(()),
                    Err(e)
                        if e.to_string().contains("already")
                            || format!("{e:?}").contains("already") =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(anyhow!(
                        "PgBouncer PAUSE {db}: {}",
                        crate::pg::conn::error_chain_text(&e)
                    )),
                }
            },
        ))
        .await;
        paused.into_iter().collect::<Result<Vec<()>>>()?;
        consoles.into_iter().for_each(Session::keep);
        Ok(())
    }

    async fn release(&self) -> Result<()> {
        let configured = self.configured_wait_timeout().await?;
        let retry = self.configured_login_retry().await?;
        let c = self.console().await?;
        // A PAUSE that found a server connection still logging in closed it and marked its
        // pool as failing to log in (PgBouncer 1.18 and later, pgbouncer PR #420): after the
        // RESUME that pool opens no server connection for `server_login_retry` (15 s by
        // default) and its held clients wait that long. So the retry delay is 0 while the
        // RESUMEs are read: PgBouncer launches the held clients' server connections in the
        // same turn of its event loop, before `settle` sets the configured delay back one
        // round trip later (after the clients are released, so outside the pause).
        //
        // The retry delay, every RESUME, then the held clients' wait limit back to the
        // configured one, sent back to back (one round trip; the console answers each in
        // turn, and futures joined are first polled, so sent, in the order written): unlike
        // PAUSE, RESUME never waits.
        let client: &Client = &c;
        let (unblocked, sent, restored) =
            tokio::join!(
                async {
                    match retry {
                        0 => Ok(()),
                        _ => set_seconds(client, "server_login_retry", 0).await,
                    }
                },
                futures_util::future::join_all(self.cfg.databases.iter().map(|db| async move {
                    (db, client.simple_query(&format!("RESUME {db}")).await)
                })),
                set_wait_timeout(client, configured)
            );
        for (db, done) in sent {
            if let Err(e) = done {
                let text = crate::pg::conn::error_chain_text(&e);
                if !text.contains("not paused") {
                    bail!("PgBouncer RESUME {db}: {text}");
                }
            }
        }
        restored?;
        unblocked?;
        c.keep();
        Ok(())
    }

    async fn settle(&self) -> Result<()> {
        let retry = self.configured_login_retry().await?;
        if retry != 0 {
            let c = self.console().await?;
            set_seconds(&c, "server_login_retry", retry).await?;
            c.keep();
        }
        Ok(())
    }

    async fn prepare_point(&self, _from: &Node, to: &Node) -> Result<()> {
        let ini = self.write_repointed(|ini| self.repointed(ini, to)).await?;
        self.keep(&PREPARED_INI, ini.into_bytes());
        Ok(())
    }

    async fn point(&self, _from: &Node, to: &Node) -> Result<Value> {
        let port = to.conninfo.port().to_string();
        // Written by `prepare_point` beside the promotion and pointing at `to`: only the RELOAD
        // is left (whose SHOW DATABASES below checks what PgBouncer loaded). Else written now.
        let prepared = self
            .taken(&PREPARED_INI)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .filter(|ini| self.repointed(ini, to) == *ini);
        let ini = match prepared {
            Some(ini) => ini,
            None => self.write_repointed(|ini| self.repointed(ini, to)).await?,
        };
        let c = self.console().await?;
        // RELOAD, the configuration it loaded, the held clients' wait limit it resets
        // stretched again (from the configured value seen at the hold, else the file just
        // written), and the console's own view, sent back to back: one round trip, the
        // console answers them in order.
        let budget = self.cfg.pause_budget.as_secs();
        let known = self.known(&CONFIGURED_WAIT);
        let stretching = stretched_wait(known, &ini, budget);
        let stretch = async {
            match stretching {
                Some(seconds) => set_wait_timeout(&c, seconds).await,
                None => Ok(()),
            }
        };
        let (reloaded, config, stretched, databases) = tokio::join!(
            c.simple_query("RELOAD"),
            Self::rows(&c, "SHOW CONFIG"),
            stretch,
            Self::rows(&c, "SHOW DATABASES")
        );
        reloaded.map_err(|e| {
            anyhow!(
                "PgBouncer RELOAD: {}",
                crate::pg::conn::error_chain_text(&e)
            )
        })?;
        stretched?;
        // What was loaded is the configured value (an `%include`d file counts): the one to go
        // back to, and, where the guess above missed a limit the held clients could hit, the
        // one to stretch now.
        let config = config?;
        self.remember_login_retry(&config);
        if let Some(configured) = wait_timeout_in(&config) {
            self.keep(&CONFIGURED_WAIT, configured);
            if let (Some(seconds), None) = (stretch_to(Some(configured), budget), stretching) {
                set_wait_timeout(&c, seconds).await?;
            }
        }
        let mut seen = serde_json::Map::new();
        for row in databases? {
            let get = |k: &str| {
                row.iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let name = get("name");
            if self.cfg.databases.contains(&name) {
                if get("port") != port {
                    bail!(
                        "after RELOAD, PgBouncer's {name} still points at port {}, not {port}",
                        get("port")
                    );
                }
                seen.insert(name, json!({ "host": get("host"), "port": get("port") }));
            }
        }
        c.keep();
        Ok(Value::Object(seen))
    }

    async fn verify(&self, to: &Node) -> Result<Value> {
        let mut out = serde_json::Map::new();
        for db in &self.cfg.databases {
            let through = crate::spec::Through {
                conninfo: self.cfg.admin.clone().with("dbname", db),
                password: self.cfg.password.clone(),
            };
            out.insert(
                db.clone(),
                super::reaches(&through, &format!("PgBouncer {db}"), to).await?,
            );
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::{
        configured_at_hold, entry_host_port, login_retry_in_ini, repoint_entry, repoint_ini,
        stretch_to, stretched_wait,
    };

    #[test]
    fn the_login_retry_to_go_back_to_is_the_files_else_the_default() {
        assert_eq!(
            login_retry_in_ini("[pgbouncer]\nserver_login_retry = 3\n"),
            3
        );
        assert_eq!(login_retry_in_ini("[pgbouncer]\nlisten_port = 1\n"), 15);
        assert_eq!(
            login_retry_in_ini("[databases]\nserver_login_retry = 4\n[pgbouncer]\n"),
            15,
            "only the [pgbouncer] section's"
        );
        assert_eq!(
            login_retry_in_ini("[pgbouncer]\nserver_login_retry = 0\n"),
            0
        );
    }

    #[test]
    fn held_clients_outlast_the_budget_after_a_reload() {
        assert_eq!(stretch_to(Some(120), 200), Some(201));
        assert_eq!(stretch_to(Some(300), 200), None);
        assert_eq!(stretch_to(Some(0), 200), None, "0 is no limit");
        assert_eq!(stretch_to(None, 200), None);
        let ini = "[databases]\napp = host=a\n[pgbouncer]\nquery_wait_timeout = 30\n";
        assert_eq!(stretched_wait(None, ini, 200), Some(201));
        assert_eq!(
            stretched_wait(None, "[pgbouncer]\nlisten_port = 1\n", 200),
            Some(201)
        );
        assert_eq!(
            stretched_wait(None, "[pgbouncer]\nlisten_port = 1\n", 100),
            None
        );
        let unlimited = "[pgbouncer]\nquery_wait_timeout = 0\n";
        assert_eq!(stretched_wait(None, unlimited, 200), None);
        // What PgBouncer showed at the hold wins over the file (an %include may set it).
        assert_eq!(stretched_wait(Some(0), ini, 200), None);
        assert_eq!(stretched_wait(Some(5), unlimited, 200), Some(201));
        // The value in force at the hold is the configured one, unless it is our own stretch.
        assert_eq!(configured_at_hold(Some(30), 200), Some(30));
        assert_eq!(configured_at_hold(Some(201), 200), None);
        assert_eq!(configured_at_hold(None, 200), None);
    }

    #[test]
    fn host_and_port_are_read_among_pgbouncer_keys() {
        assert_eq!(
            entry_host_port("host=10.0.0.1 port=6000 dbname=app pool_size=7 auth_user=pgb"),
            (Some("10.0.0.1".into()), Some("6000".into()))
        );
        assert_eq!(entry_host_port("dbname=app"), (None, None));
    }

    #[test]
    fn only_host_and_port_change() {
        assert_eq!(
            repoint_entry(
                "host=10.0.0.1 port=5432 dbname=app password='se cret' pool_size=20",
                "10.0.0.2",
                "5433"
            ),
            "host=10.0.0.2 port=5433 dbname=app password='se cret' pool_size=20"
        );
        assert_eq!(
            repoint_entry("dbname=app", "h", "1"),
            "host=h dbname=app port=1"
        );
        assert_eq!(
            repoint_entry("host = old  dbname=app", "new", "2"),
            "host=new dbname=app port=2"
        );
    }

    #[test]
    fn only_the_managed_databases_entries_are_repointed() {
        let ini = "[databases]\napp = host=a port=1 dbname=app\nother = host=a port=1\n; app = host=a\n[pgbouncer]\nlisten_port = 6432\napp = host=a\n";
        let dbs = vec!["app".to_string()];
        assert_eq!(
            repoint_ini(ini, &dbs, "b", "2"),
            "[databases]\napp = host=b port=2 dbname=app\nother = host=a port=1\n; app = host=a\n[pgbouncer]\nlisten_port = 6432\napp = host=a\n"
        );
    }
}
