//! `approve`: every gate hook (`[[hook]]` with `gate = true`) is asked before the switchover
//! holds clients; one "no" (or no answer in time) fails the step, and the cutover aborts with
//! nothing changed (a change-management go / no-go).

use anyhow::{bail, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::engine::{Cx, Description, Kind, Step};
use crate::spec::Hook;
use crate::steps::id::StepId;

pub struct Approve {
    pub hooks: Vec<Hook>,
    pub spec: String,
    pub operation: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApproveOut {
    /// Each gate's answer.
    pub answers: Vec<Value>,
}

#[async_trait]
impl Step for Approve {
    type Output = ApproveOut;
    fn id(&self) -> String {
        StepId::Approve.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: self
                .hooks
                .iter()
                .map(crate::hooks::label)
                .collect::<Vec<_>>()
                .join(", "),
            action: format!(
                "ask each gate hook: {{\"action\": \"approve\", \"from\": \"{}\", \"to\": \"{}\", …}}",
                self.from, self.to
            ),
            proof: "every gate answers {\"ok\": true} within its time limit".into(),
            undo: "nothing (nothing has changed yet)".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, cx: &Cx) -> Result<ApproveOut> {
        let body = json!({
            "version": crate::hooks::PROTOCOL_VERSION,
            "action": "approve",
            "spec": self.spec,
            "run_id": cx.run_id,
            "operation": self.operation,
            "from": self.from,
            "to": self.to,
        });
        let mut answers = Vec::new();
        for h in &self.hooks {
            match crate::hooks::call(h, "approve", &body).await {
                Ok(a) => answers.push(a),
                Err(e) => bail!("no go: {e:#}; nothing was changed"),
            }
        }
        Ok(ApproveOut { answers })
    }
}
