//! Preflight: every reason the cutover would fail or lose data, found before the window.
//! Each check has a stable id, a status, the finding and the remedy (docs/pitfalls.md, preflight).

mod archive;
mod bake;
mod checks;
mod ha;
mod service;

use serde::Serialize;

pub use checks::{observe, run, Seen};

pub mod record;
pub mod sync;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: String,
    pub status: Status,
    pub message: String,
    pub remedy: String,
}

impl Check {
    pub fn pass(id: impl Into<String>, message: impl Into<String>) -> Check {
        Check {
            id: id.into(),
            status: Status::Pass,
            message: message.into(),
            remedy: String::new(),
        }
    }
    pub fn warn(
        id: impl Into<String>,
        message: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Check {
        Check {
            id: id.into(),
            status: Status::Warn,
            message: message.into(),
            remedy: remedy.into(),
        }
    }
    pub fn fail(
        id: impl Into<String>,
        message: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Check {
        Check {
            id: id.into(),
            status: Status::Fail,
            message: message.into(),
            remedy: remedy.into(),
        }
    }
}

/// Ready when no check failed.
pub fn ready(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}
