//! The engine's shared vocabulary: what kind of step a step is, and how a run ended. A leaf
//! module: it imports nothing from the rest of the engine, so every other engine module may
//! import it without a cycle.

use serde::{Deserialize, Serialize};

/// What a step does to the world, which decides whether an abort or a rollback undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Observes only; nothing to undo.
    ReadOnly,
    /// Changes something, but there is nothing to undo: the change is part of going forward
    /// after the point of no return (repointing routes, releasing clients), and going back is a
    /// procedure of its own.
    NothingToUndo,
    /// Has a compensation that restores the state from before it.
    Reversible,
    /// Cannot be undone (promotion). Rollback after it is a procedure of its own.
    PointOfNoReturn,
}

impl Kind {
    /// Whether an abort or a rollback calls this step's compensation.
    pub fn compensated(self) -> bool {
        matches!(self, Kind::Reversible | Kind::PointOfNoReturn)
    }

    /// Whether a journal that recorded `recorded` for a step may be resumed by a plan that says
    /// `self`: equal, or both without a compensation (journals written before
    /// [`Kind::NothingToUndo`] existed called those steps read-only).
    pub fn resumes(self, recorded: Kind) -> bool {
        self == recorded || (!self.compensated() && !recorded.compensated())
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    /// Every step with an effect was undone (an operator's `rollback`, or an automatic abort of
    /// a run that keeps nothing).
    RolledBack,
    /// Failed before the point of no return and undone automatically, down to the plan's kept
    /// steps (the chain a cutover built stays in place for the next attempt).
    Aborted,
}

/// The snake_case name serde gives a unit enum value (`Kind::ReadOnly` → `read_only`): the one
/// spelling for journal, JSON output and tables, so no hand-written string map can drift.
pub fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::from("?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_serde_names() {
        assert_eq!(label(&Kind::ReadOnly), "read_only");
        assert_eq!(label(&Kind::PointOfNoReturn), "point_of_no_return");
        assert_eq!(label(&Outcome::RolledBack), "rolled_back");
        assert_eq!(label(&Outcome::Aborted), "aborted");
    }

    #[test]
    fn a_step_without_compensation_resumes_across_the_read_only_rename() {
        assert!(Kind::NothingToUndo.resumes(Kind::ReadOnly));
        assert!(Kind::ReadOnly.resumes(Kind::NothingToUndo));
        assert!(!Kind::Reversible.resumes(Kind::ReadOnly));
        assert!(!Kind::ReadOnly.resumes(Kind::PointOfNoReturn));
    }
}
