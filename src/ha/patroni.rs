//! Patroni, through the REST API `patronictl` itself uses: `PATCH /config` with
//! `{"pause": true}` puts the whole Patroni cluster in maintenance mode (the setting lives in
//! its DCS), and each member's `GET /patroni` says `"pause": true` once it has seen it.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::spec::Patroni;

/// How long one REST call may take.
pub const CALL_LIMIT: Duration = Duration::from_secs(10);

/// What a member's `GET /patroni` tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `primary`/`master`, `replica`, `standby_leader`, …
    pub role: String,
    pub state: String,
    pub paused: bool,
    /// `patroni.scope`: the cluster it belongs to.
    pub scope: Option<String>,
}

/// Pure: a `GET /patroni` answer (`pause` is only present, `true`, while paused).
pub fn parse_member(v: &Value) -> Result<Member> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(role), Some(state)) = (text("role"), text("state")) else {
        bail!(
            "not a Patroni member's status (no role and state): {}",
            crate::spec::values::shown(&v.to_string(), 200)
        );
    };
    Ok(Member {
        role,
        state,
        paused: v.get("pause").and_then(Value::as_bool).unwrap_or(false),
        scope: v
            .pointer("/patroni/scope")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Where a Patroni cluster's members stream from once migrate has switched over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leader {
    /// One of its members is the primary now: it leads as a normal cluster again.
    Own,
    /// The primary is outside it: the cluster becomes a standby cluster of that server
    /// (Patroni's `standby_cluster`), its leader streaming through `slot`.
    Remote {
        host: String,
        port: u16,
        slot: Option<String>,
    },
}

/// Pure: the `PATCH /config` body that hands the cluster back to Patroni after the switchover.
pub fn resume_body(leader: &Leader) -> Value {
    let standby = match leader {
        Leader::Own => Value::Null,
        Leader::Remote { host, port, slot } => {
            let mut s =
                json!({ "host": host, "port": port, "create_replica_methods": ["basebackup"] });
            if let Some(slot) = slot {
                s["primary_slot_name"] = json!(slot);
            }
            s
        }
    };
    json!({ "standby_cluster": standby, "pause": false })
}

/// A member's REST API.
pub struct Api {
    cfg: Patroni,
    client: reqwest::Client,
}

impl Api {
    pub fn new(cfg: &Patroni) -> Result<Api> {
        let mut b = reqwest::Client::builder()
            .timeout(CALL_LIMIT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Api {
            cfg: cfg.clone(),
            client: b.build()?,
        })
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder> {
        Ok(match (&self.cfg.username, &self.cfg.password) {
            (Some(u), Some(p)) => r.basic_auth(u, Some(p.resolve_plain()?.expose())),
            _ => r,
        })
    }

    /// The same API with a shorter time limit per call (plan's probing of undeclared hosts).
    pub fn with_timeout(mut self, t: Duration) -> Result<Api> {
        self.client = reqwest::Client::builder()
            .timeout(t)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(self)
    }

    pub fn url(&self) -> &str {
        &self.cfg.url
    }

    pub async fn member(&self) -> Result<Member> {
        let url = format!("{}/patroni", self.cfg.url);
        let resp = self
            .auth(self.client.get(&url))?
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        // Patroni answers 503 from a member whose server is down, with the same document.
        let v: Value = resp
            .json()
            .await
            .with_context(|| format!("GET {url}: HTTP {status}, not JSON"))?;
        parse_member(&v).with_context(|| format!("GET {url}"))
    }

    /// `PATCH /config`: change the cluster's dynamic configuration.
    pub async fn patch_config(&self, body: &Value) -> Result<()> {
        let url = format!("{}/config", self.cfg.url);
        let resp = self
            .auth(self.client.patch(&url).json(body))?
            .send()
            .await
            .with_context(|| format!("PATCH {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            bail!(
                "PATCH {url} {body}: HTTP {status}: {}",
                crate::spec::values::shown(text.trim(), 200)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_status_is_read_and_pause_defaults_to_false() {
        let m = parse_member(
            &json!({"state": "running", "role": "primary", "pause": true,
            "patroni": {"version": "3.0.2", "scope": "main", "name": "pg1"}}),
        )
        .unwrap();
        assert_eq!(
            m,
            Member {
                role: "primary".into(),
                state: "running".into(),
                paused: true,
                scope: Some("main".into())
            }
        );
        let m = parse_member(&json!({"state": "running", "role": "replica"})).unwrap();
        assert!(!m.paused);
        assert!(parse_member(&json!({"ok": true})).is_err());
    }

    #[test]
    fn resume_makes_a_standby_cluster_of_the_remote_primary_or_undoes_it() {
        assert_eq!(
            resume_body(&Leader::Remote {
                host: "10.1.0.5".into(),
                port: 5432,
                slot: Some("migrate_old".into())
            }),
            json!({"standby_cluster": {"host": "10.1.0.5", "port": 5432,
                "primary_slot_name": "migrate_old", "create_replica_methods": ["basebackup"]},
                "pause": false})
        );
        assert_eq!(
            resume_body(&Leader::Own),
            json!({"standby_cluster": null, "pause": false})
        );
    }
}
