//! External route plugins: an executable (`migrate-route-<name>` on `PATH`, or the spec's
//! `command`) that reads one JSON request on stdin and writes one JSON answer on stdout.
//!
//! Request: `{"version": 1, "action": "current"|"hold"|"release"|"point"|"verify",
//! "route": "<name>", "config": {…}, "endpoint": {"node", "host", "port"}, "from": {…}}`
//! (`endpoint` for point and verify, `from` for point).
//! Answer: `{"ok": true, …anything to journal…}` or `{"ok": false, "error": "…"}`; a non-zero
//! exit status or an answer that is not JSON is a failure too. The protocol is in the README.

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use serde_json::{json, Value};

use super::Router;
use crate::host::exec::run_process;
use crate::host::Cmd;
use crate::spec::{ExecRoute, Node};

pub const PROTOCOL_VERSION: u32 = 1;

/// A plugin's answer is one small JSON object; more than this is refused.
const OUTPUT_LIMIT: usize = 1 << 20;

pub struct Exec {
    cfg: ExecRoute,
}

impl Exec {
    pub fn new(cfg: ExecRoute) -> Exec {
        Exec { cfg }
    }

    fn endpoint(&self, node: &Node) -> Value {
        let t = self.cfg.targets.of(node);
        json!({ "node": node.name, "host": t.host, "port": t.port })
    }

    async fn call(&self, action: &str, to: Option<&Node>, from: Option<&Node>) -> Result<Value> {
        let mut req = json!({
            "version": PROTOCOL_VERSION,
            "action": action,
            "route": self.cfg.name,
            "config": self.cfg.config,
        });
        if let Some(n) = to {
            req["endpoint"] = self.endpoint(n);
        }
        if let Some(n) = from {
            req["from"] = self.endpoint(n);
        }
        call_plugin(
            &format!("route plugin {}", self.cfg.name),
            &self.cfg.command,
            self.cfg.timeout,
            &self.cfg.env,
            action,
            &req,
        )
        .await
    }
}

/// Run a JSON plugin once: `req` on stdin, `{"ok": true, …}` expected on stdout within
/// `timeout`. `label` names it in errors ("route plugin x", "fence plugin"); `env` lists the
/// variables of migrate's environment it gets.
pub async fn call_plugin(
    label: &str,
    command: &[String],
    timeout: std::time::Duration,
    env: &[String],
    action: &str,
    req: &Value,
) -> Result<Value> {
    let mut cmd = Cmd::new(command.to_vec())
        .stdin(serde_json::to_vec(req)?)
        .timeout(timeout)
        .output_limit(OUTPUT_LIMIT);
    for var in env {
        if let Ok(v) = std::env::var(var) {
            cmd = cmd.env(var, v);
        }
    }
    let out = run_process(&cmd, None)
        .await
        .with_context(|| format!("{label} (is `{}` installed and executable?)", command[0]))?;
    let text = out.stdout_text();
    let answer: Option<Value> = serde_json::from_str(text.trim()).ok();
    match (out.success(), answer) {
        (true, Some(a)) if a["ok"] == json!(true) => Ok(a),
        (_, Some(a)) if a["ok"] == json!(false) => bail!(
            "{label} failed to {action}: {}",
            a["error"].as_str().unwrap_or("(no error text)")
        ),
        (true, _) => Err(anyhow!(
            "{label} answered {action} with no JSON {{\"ok\": …}} on stdout: {:?}",
            text.chars().take(200).collect::<String>()
        )),
        (false, _) => bail!(
            "{label} failed to {action} ({}): {}",
            out.status_text(),
            out.stderr_tail()
        ),
    }
}

#[async_trait]
impl Router for Exec {
    fn describe(&self) -> String {
        format!("exec {} ({})", self.cfg.name, self.cfg.command[0])
    }

    fn own_limit(&self) -> Option<std::time::Duration> {
        Some(self.cfg.timeout)
    }

    async fn current(&self) -> Result<Value> {
        self.call("current", None, None).await
    }

    async fn hold(&self) -> Result<()> {
        self.call("hold", None, None).await.map(drop)
    }

    async fn release(&self) -> Result<()> {
        self.call("release", None, None).await.map(drop)
    }

    async fn point(&self, from: &Node, to: &Node) -> Result<Value> {
        self.call("point", Some(to), Some(from)).await
    }

    async fn verify(&self, to: &Node) -> Result<Value> {
        let mut v = self.call("verify", Some(to), None).await?;
        if let Some(t) = &self.cfg.connect {
            v["through"] = super::reaches(t, &format!("route {}", self.cfg.name), to).await?;
        }
        Ok(v)
    }
}
