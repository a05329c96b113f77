//! Hooks (`[[hook]]` in the spec): a program or an HTTP(S) URL told of every run event as one
//! JSON object, or, marked `gate`, asked before a switchover holds clients. Everything sent
//! goes through [`crate::redact`] first: no secret leaves in an event.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::spec::{Hook, HookTarget};

pub const PROTOCOL_VERSION: u32 = 1;

/// A hook's name in messages: its program or its URL's host.
pub fn label(hook: &Hook) -> String {
    match &hook.target {
        HookTarget::Command(c) => format!("hook {}", c[0]),
        HookTarget::Url(u) => format!(
            "hook {}",
            reqwest::Url::parse(u)
                .ok()
                .and_then(|p| p.host_str().map(str::to_string))
                .unwrap_or_default()
        ),
    }
}

/// Send `body` to `hook` within its time limit; its answer (`{"ok": true, …}` expected).
pub async fn call(hook: &Hook, action: &str, body: &Value) -> Result<Value> {
    // Masked as a whole: an event may quote spec text or a command's output.
    let body: Value = serde_json::from_str(&crate::redact::redact(&body.to_string()))?;
    let name = label(hook);
    match &hook.target {
        HookTarget::Command(c) => {
            crate::route::exec::call_plugin(&name, c, hook.timeout, &hook.env, action, &body).await
        }
        HookTarget::Url(u) => {
            let client = reqwest::Client::builder()
                .timeout(hook.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()?;
            let resp = client
                .post(u)
                .json(&body)
                .send()
                .await
                .with_context(|| format!("{name}: POST"))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("{name} answered {action} with HTTP {status}");
            }
            let answer: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
            match answer.get("ok") {
                Some(Value::Bool(true)) => Ok(answer),
                Some(Value::Bool(false)) => Err(anyhow!(
                    "{name} said no to {action}: {}",
                    answer["error"].as_str().unwrap_or("(no reason given)")
                )),
                // An event receiver need not answer anything.
                _ => Ok(json!({ "ok": true })),
            }
        }
    }
}

/// The JSON a hook receives for one journal record of a run.
pub fn event(spec: &str, run_id: &str, operation: &str, record: &Value) -> Value {
    json!({
        "version": PROTOCOL_VERSION,
        "action": "event",
        "spec": spec,
        "run_id": run_id,
        "operation": operation,
        "at": chrono::Utc::now(),
        "event": record,
    })
}
