//! Connections kept for the life of the process, one per endpoint, so that a step inside the
//! write pause does not pay a connection's set-up (TCP, then SCRAM: three round trips, 90 ms
//! at 30 ms RTT) each time it asks a server something.
//!
//! A kept connection is only trusted while nothing went wrong with it: [`session`] hands out
//! a [`Session`] that drops the connection from the cache when it is dropped without
//! [`Session::keep`] — on an error (`?`), a time limit that cancelled the work, or a panic —
//! so the next call connects afresh instead of waiting on a link that may be dead. A server
//! that went away closes its connection, which is never handed out again either.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Result;
use tokio_postgres::Client;

use super::conn::{connect, Endpoint};

fn cache() -> &'static Mutex<HashMap<String, Arc<Client>>> {
    static C: OnceLock<Mutex<HashMap<String, Arc<Client>>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Everything that decides where a connection goes and as whom (the password reference, not
/// the password).
fn key(ep: &Endpoint) -> String {
    format!("{}\u{1f}{}\u{1f}{:?}", ep.name, ep.conninfo, ep.password)
}

/// A kept connection to one endpoint; derefs to the driver's client.
pub struct Session {
    client: Arc<Client>,
    key: String,
    kept: bool,
}

impl Session {
    /// The work with this connection went well: keep it for the next call.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Deref for Session {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.kept {
            let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
            if c.get(&self.key)
                .is_some_and(|k| Arc::ptr_eq(k, &self.client))
            {
                c.remove(&self.key);
            }
        }
    }
}

/// Whether this process keeps an open connection to `ep` (asking it then costs one round
/// trip and no connection set-up).
pub fn is_open(ep: &Endpoint) -> bool {
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key(ep))
        .is_some_and(|c| !c.is_closed())
}

/// The kept connection to `ep`, or a new one.
pub async fn session(ep: &Endpoint) -> Result<Session> {
    let key = key(ep);
    let kept = cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .filter(|c| !c.is_closed())
        .cloned();
    let client = match kept {
        Some(c) => c,
        None => {
            let c = Arc::new(connect(ep).await?);
            cache()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), c.clone());
            c
        }
    };
    Ok(Session {
        client,
        key,
        kept: false,
    })
}

/// Open (or check) the kept connections to every endpoint at once, before a time-critical
/// stretch; an endpoint that cannot be reached is left for the step that needs it to report.
pub async fn warm(endpoints: &[Endpoint], limit: std::time::Duration) {
    let mut opened = tokio::task::JoinSet::new();
    for ep in endpoints {
        let ep = ep.clone();
        opened.spawn(async move {
            if let Ok(Ok(s)) = tokio::time::timeout(limit, session(&ep)).await {
                if let Ok(Ok(_)) = tokio::time::timeout(limit, s.simple_query("")).await {
                    s.keep();
                }
            }
        });
    }
    while opened.join_next().await.is_some() {}
}
