//! What the crash matrices share: the crash points of a list of steps, and the check that a
//! crash point fired. Each matrix then says what to run at each point and which end state it
//! expects (resume reaches the uninterrupted end; rollback restores the start).

use std::os::unix::process::ExitStatusExt;
use std::process::Output;

use super::output_text;

/// Where in a step the process is killed (`MIGRATE_CRASH_AT=<step>:<when>`): `before` its side
/// effect (the start is journaled), `after` it (its success is not).
pub const BOUNDARIES: [&str; 2] = ["before", "after"];

/// One crash point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    pub step: String,
    pub when: &'static str,
}

impl Point {
    /// The value for `MIGRATE_CRASH_AT`.
    pub fn at(&self) -> String {
        format!("{}:{}", self.step, self.when)
    }
}

/// Both boundaries of every step, in plan order.
pub fn boundaries<S: ToString>(steps: impl IntoIterator<Item = S>) -> Vec<Point> {
    steps
        .into_iter()
        .map(|s| s.to_string())
        .flat_map(|step| {
            BOUNDARIES.map(|when| Point {
                step: step.clone(),
                when,
            })
        })
        .collect()
}

/// The crash point fired: the process died of SIGKILL there.
#[track_caller]
pub fn assert_killed(out: &Output, at: &str) {
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{at}: the crash point did not fire: {}",
        output_text(out)
    );
}
