//! `window`: wait for the maintenance window (visible countdown), or refuse after its end.

use std::time::Duration;

use anyhow::{bail, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::{Cx, Description, Kind, Step};
use crate::spec::Window;
use crate::steps::id::StepId;

pub struct WaitForWindow {
    pub window: Option<Window>,
    pub force: bool,
}

/// What `window` recorded. Every field is optional: a spec without a window records nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowOut {
    /// When the clock entered the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entered: Option<DateTime<Utc>>,
    /// Went outside the window because the operator said `--force-window`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<DateTime<Utc>>,
}

/// The window decision at one instant.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Go(WindowOut),
    /// Not open yet: this many seconds to go.
    Wait(i64),
    /// Closed, and not forced.
    Closed(DateTime<Utc>),
}

/// Pure: go, wait or refuse at `now`.
pub fn decide(window: Option<&Window>, force: bool, now: DateTime<Utc>) -> Decision {
    let Some(w) = window else {
        return Decision::Go(WindowOut::default());
    };
    let forced = |start, end| {
        Decision::Go(WindowOut {
            forced: true,
            window_start: start,
            window_end: end,
            ..WindowOut::default()
        })
    };
    let (start, end) = (w.start.with_timezone(&Utc), w.end.with_timezone(&Utc));
    if now >= end {
        return if force {
            forced(None, Some(end))
        } else {
            Decision::Closed(end)
        };
    }
    if now >= start {
        return Decision::Go(WindowOut {
            entered: Some(now),
            ..WindowOut::default()
        });
    }
    if force {
        return forced(Some(start), None);
    }
    Decision::Wait((start - now).num_seconds())
}

#[async_trait]
impl Step for WaitForWindow {
    type Output = WindowOut;
    fn id(&self) -> String {
        StepId::Window.to_string()
    }
    fn describe(&self) -> Description {
        let action = match &self.window {
            Some(w) => format!(
                "wait for the window {} – {}",
                w.start.to_rfc3339(),
                w.end.to_rfc3339()
            ),
            None => "no window in the spec: go at once".into(),
        };
        Description {
            host: "-".into(),
            action,
            proof: "the clock is inside the window".into(),
            undo: "nothing".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, cx: &Cx) -> Result<WindowOut> {
        loop {
            match decide(self.window.as_ref(), self.force, Utc::now()) {
                Decision::Go(out) => return Ok(out),
                Decision::Closed(end) => bail!(
                    "the maintenance window ended at {}; pass --force-window to go anyway",
                    end.to_rfc3339()
                ),
                Decision::Wait(left) => cx.progress(
                    &StepId::Window,
                    format!(
                        "the window opens in {}h{:02}m{:02}s",
                        left / 3600,
                        left / 60 % 60,
                        left % 60
                    ),
                ),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: &str, end: &str) -> Window {
        Window {
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
        }
    }

    fn at(t: &str) -> DateTime<Utc> {
        t.parse().unwrap()
    }

    #[test]
    fn the_window_decides_go_wait_or_closed() {
        let w = window("2026-12-01T22:00:00Z", "2026-12-01T23:00:00Z");
        assert_eq!(
            decide(None, false, at("2026-12-01T10:00:00Z")),
            Decision::Go(WindowOut::default())
        );
        assert_eq!(
            decide(Some(&w), false, at("2026-12-01T21:59:00Z")),
            Decision::Wait(60)
        );
        match decide(Some(&w), false, at("2026-12-01T22:30:00Z")) {
            Decision::Go(o) => assert_eq!(o.entered, Some(at("2026-12-01T22:30:00Z"))),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(Some(&w), false, at("2026-12-01T23:00:00Z")),
            Decision::Closed(at("2026-12-01T23:00:00Z"))
        );
        match decide(Some(&w), true, at("2026-12-02T01:00:00Z")) {
            Decision::Go(o) => assert!(o.forced && o.window_end.is_some()),
            other => panic!("{other:?}"),
        }
        match decide(Some(&w), true, at("2026-12-01T12:00:00Z")) {
            Decision::Go(o) => assert!(o.forced && o.window_start.is_some()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_format_1_window_record_decodes() {
        let old: WindowOut = serde_json::from_str(r#"{"window": null}"#).unwrap();
        assert_eq!(old, WindowOut::default());
    }
}
