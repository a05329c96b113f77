//! `failover`: the emergency promotion of a standby when the primary is lost. Unlike a
//! switchover it cannot prove that every byte arrived, so it measures what may be lost and
//! needs the operator's word for it before the point of no return.
//!
//! The operation's parameters are part of its name in the journal (`failover:new:old`,
//! `failover:new:dr:accept=8192:no-fence`), so `resume` rebuilds the very same plan.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};

use super::cutover::{COMPLETE, CUTOVER, SWITCHBACK};
use crate::engine::replay::RunState;
use crate::engine::{Outcome, Plan};
use crate::spec::Spec;
use crate::steps::failover::{Failover, Isolate, Loss, Repoint, Seen};
use crate::steps::member::Member;
use crate::steps::switchover::{Direction, Others, Promote, Release, VerifyPrimary};
use crate::steps::StepId;

pub const PREFIX: &str = "failover";

/// What a failover run was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverOp {
    /// The primary that is lost.
    pub lost: String,
    /// The standby promoted in its place.
    pub to: String,
    /// The bytes of acknowledged WAL the operator accepts to lose (`None`: none, and only a
    /// failover proven lossless goes ahead).
    pub accept_loss: Option<u64>,
    /// The operator's word that the lost primary is off although migrate could not fence it.
    pub no_fence: bool,
}

impl fmt::Display for FailoverOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}:{}:{}", self.lost, self.to)?;
        if let Some(n) = self.accept_loss {
            write!(f, ":accept={n}")?;
        }
        if self.no_fence {
            f.write_str(":no-fence")?;
        }
        Ok(())
    }
}

impl FromStr for FailoverOp {
    type Err = String;
    fn from_str(s: &str) -> Result<FailoverOp, String> {
        let mut parts = s.split(':');
        if parts.next() != Some(PREFIX) {
            return Err(format!("{s:?} is not a failover"));
        }
        let (Some(lost), Some(to)) = (parts.next(), parts.next()) else {
            return Err(format!("{s:?} names no lost primary and no new one"));
        };
        let mut op = FailoverOp {
            lost: lost.into(),
            to: to.into(),
            accept_loss: None,
            no_fence: false,
        };
        for p in parts {
            match p.split_once('=') {
                Some(("accept", n)) => {
                    op.accept_loss = Some(n.parse().map_err(|_| format!("{s:?}: accept={n}"))?)
                }
                None if p == "no-fence" => op.no_fence = true,
                _ => return Err(format!("{s:?}: unknown part {p:?}")),
            }
        }
        Ok(op)
    }
}

/// Which node serves as primary after the run `last` (none: the spec's primary).
pub fn current_primary(last: Option<&RunState>, spec: &Spec) -> String {
    let (old, target) = (&spec.primary().name, &spec.target().name);
    match last {
        None => old.clone(),
        Some(s) => serving(
            &s.operation,
            s.finished() == Some(Outcome::Completed) || s.point_of_no_return.is_some(),
            old,
            target,
        ),
    }
}

/// Pure: who serves after a run of `operation` that did (`switched`: completed, or past its
/// point of no return, so it promoted) or did not switch.
pub fn serving(operation: &str, switched: bool, old: &str, target: &str) -> String {
    match operation {
        CUTOVER if switched => target.into(),
        SWITCHBACK if !switched => target.into(),
        COMPLETE => target.into(),
        // A re-sync names the primary it made the node follow.
        op if op.starts_with(super::resync::PREFIX) => match super::resync::parse(op) {
            Ok((_, primary)) => primary,
            Err(_) => old.into(),
        },
        op => match op.parse::<FailoverOp>() {
            Ok(f) if switched => f.to,
            Ok(f) => f.lost,
            Err(_) => old.into(),
        },
    }
}

/// What the failover's steps share, for `op` on `spec`.
pub fn context(spec: &Spec, op: &FailoverOp, last_known: Option<Seen>) -> Result<Failover> {
    if op.lost == op.to {
        bail!("{} is the lost primary; promote another node", op.to);
    }
    let member = |name: &str| {
        Member::new(spec, name).map_err(|_| {
            anyhow!(
                "the spec has no node {name:?} (nodes: {})",
                spec.nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    };
    let followers = spec
        .nodes
        .iter()
        .filter(|n| n.name != op.lost && n.name != op.to)
        .map(|n| member(&n.name))
        .collect::<Result<Vec<_>>>()?;
    Ok(Failover {
        d: Direction {
            from: member(&op.lost)?,
            to: member(&op.to)?,
            followers,
            routes: spec.routes.clone(),
            limit: spec.cutover.proof_timeout,
        },
        fence: spec.failover.fence.clone(),
        no_fence: op.no_fence,
        accept_loss: op.accept_loss,
        last_known,
        state_dir: spec.state_dir.clone(),
    })
}

pub fn plan(spec: &Arc<Spec>, op: &FailoverOp, last_known: Option<Seen>) -> Result<Plan> {
    let f = context(spec, op, last_known)?;
    let d = f.d.clone();
    let mut plan = Plan::new(op.to_string());
    // Nothing before the promotion is undone: the lost primary stays fenced and the routes
    // stay on the standby (read-only until promoted). A refused loss ends the run, aborted.
    plan.abort_from_here();
    plan.push(Isolate(f.clone()));
    plan.push(Loss(f.clone()));
    plan.push(Promote {
        d: d.clone(),
        timeout: spec.cutover.promote_timeout,
        others: Others::Failover,
    });
    // Clients first: the new primary serves before the standbys are moved to it.
    plan.push(VerifyPrimary(d.clone()));
    plan.push(Release(d));
    plan.push(Repoint(f.clone()));
    plan.push(crate::steps::failover::FailoverCertificate(f));
    Ok(plan)
}

/// The steps of a failover, in order.
pub const STEPS: [StepId; 7] = [
    StepId::Isolate,
    StepId::Loss,
    StepId::Promote,
    StepId::Route,
    StepId::Release,
    StepId::Repoint,
    StepId::Certificate,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operation_name_carries_every_parameter() {
        for op in [
            FailoverOp {
                lost: "new".into(),
                to: "old".into(),
                accept_loss: None,
                no_fence: false,
            },
            FailoverOp {
                lost: "new".into(),
                to: "dr".into(),
                accept_loss: Some(8192),
                no_fence: true,
            },
        ] {
            assert_eq!(op.to_string().parse::<FailoverOp>(), Ok(op.clone()));
        }
        assert_eq!("failover:new:old".parse::<FailoverOp>().unwrap().to, "old");
        assert!("cutover".parse::<FailoverOp>().is_err());
        assert!("failover:new".parse::<FailoverOp>().is_err());
        assert!("failover:new:old:accept=x".parse::<FailoverOp>().is_err());
        assert!("failover:new:old:bogus".parse::<FailoverOp>().is_err());
    }

    #[test]
    fn the_serving_primary_follows_each_kind_of_run() {
        let s = |op: &str, switched| serving(op, switched, "old", "new");
        assert_eq!(s("replicate", false), "old");
        assert_eq!(s("cutover", false), "old");
        assert_eq!(s("cutover", true), "new");
        assert_eq!(s("switchback", true), "old");
        assert_eq!(s("switchback", false), "new");
        assert_eq!(s("complete", false), "new");
        assert_eq!(s("failover:new:dr", true), "dr");
        assert_eq!(s("failover:new:dr:accept=5", false), "new");
        assert_eq!(s("resync:new:dr", false), "dr");
    }
}
