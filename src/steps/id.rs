//! Step ids: the one definition of every step's journaled key, shared by plans, the
//! certificate, `status`, the rehearsal and the tests. The text form (`fence`,
//! `clone:new_replica`) is what the journal stores; [`StepId`]'s `Display` writes it and
//! `FromStr` reads it back, both from the one table in [`StepId::name`].

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StepId {
    // Building the chain, per standby.
    Prepare(String),
    Slot(String),
    Clone(String),
    Start(String),
    /// `migrate replicate`'s wait until the chain has caught up.
    Catchup,
    // The switchover.
    Window,
    /// The catch-up gate inside a cutover.
    Gate,
    Hold,
    /// The soft fence's own step in earlier versions' journals (now part of `stop`).
    Fence,
    Stop,
    Proof,
    Stage,
    Promote,
    Reverse,
    Route,
    Release,
    Followers,
    Certificate,
    // `migrate failover` (with promote, route, release and certificate).
    /// Fence the lost primary and point the routes away from it.
    Isolate,
    /// Measure what the promotion can lose, and hold it to what the operator accepted.
    Loss,
    /// Every other standby streams from the new primary.
    Repoint,
    /// The gate hooks' go / no-go, before `hold`.
    Approve,
    /// Pause the declared HA managers (repmgrd, Patroni), before `hold`.
    HaPause,
    /// Give them the new topology and unpause them, after `release`.
    HaResume,
    // `migrate resync`.
    /// Read what must survive the re-sync (the node's own settings).
    Settings,
    Rewind,
    Reclone,
    /// Start as the primary's standby and stream on its timeline.
    Rejoin,
    // `migrate complete`.
    Check,
    Retire,
    DropStaleSlots,
}

impl StepId {
    /// The ids that name no node and are not steps of the switchover (`Fence`: only in
    /// earlier versions' journals).
    const OTHERS: [StepId; 15] = [
        StepId::Fence,
        StepId::Catchup,
        StepId::Approve,
        StepId::HaPause,
        StepId::HaResume,
        StepId::Settings,
        StepId::Rewind,
        StepId::Reclone,
        StepId::Rejoin,
        StepId::Isolate,
        StepId::Loss,
        StepId::Repoint,
        StepId::Check,
        StepId::Retire,
        StepId::DropStaleSlots,
    ];

    /// Every id that names no node.
    pub fn fixed() -> impl Iterator<Item = &'static StepId> {
        Self::SWITCHOVER.iter().chain(Self::OTHERS.iter())
    }

    /// The switchover's steps, in the order a cutover or switchback runs them.
    pub const SWITCHOVER: [StepId; 12] = [
        StepId::Window,
        StepId::Gate,
        StepId::Hold,
        StepId::Stop,
        StepId::Proof,
        StepId::Stage,
        StepId::Promote,
        StepId::Route,
        StepId::Release,
        StepId::Reverse,
        StepId::Followers,
        StepId::Certificate,
    ];

    /// The steps inside the write pause, in order: from holding the clients to releasing them.
    pub fn pause() -> &'static [StepId] {
        &Self::SWITCHOVER[2..9]
    }

    /// The name, and the node for the per-node steps.
    fn name(&self) -> (&'static str, Option<&str>) {
        match self {
            StepId::Prepare(n) => ("prepare", Some(n)),
            StepId::Slot(n) => ("slot", Some(n)),
            StepId::Clone(n) => ("clone", Some(n)),
            StepId::Start(n) => ("start", Some(n)),
            StepId::Catchup => ("catchup", None),
            StepId::Window => ("window", None),
            StepId::Gate => ("gate", None),
            StepId::Hold => ("hold", None),
            StepId::Fence => ("fence", None),
            StepId::Stop => ("stop", None),
            StepId::Proof => ("proof", None),
            StepId::Stage => ("stage", None),
            StepId::Promote => ("promote", None),
            StepId::Reverse => ("reverse", None),
            StepId::Route => ("route", None),
            StepId::Release => ("release", None),
            StepId::Followers => ("followers", None),
            StepId::Certificate => ("certificate", None),
            StepId::Isolate => ("isolate", None),
            StepId::Loss => ("loss", None),
            StepId::Repoint => ("repoint", None),
            StepId::Approve => ("approve", None),
            StepId::HaPause => ("ha_pause", None),
            StepId::HaResume => ("ha_resume", None),
            StepId::Settings => ("settings", None),
            StepId::Rewind => ("rewind", None),
            StepId::Reclone => ("reclone", None),
            StepId::Rejoin => ("rejoin", None),
            StepId::Check => ("check", None),
            StepId::Retire => ("retire", None),
            StepId::DropStaleSlots => ("drop_stale_slots", None),
        }
    }

    /// The node a per-node step works on.
    pub fn node(&self) -> Option<&str> {
        self.name().1
    }

    /// Whether this is a clone step (any node).
    pub fn is_clone(&self) -> bool {
        matches!(self, StepId::Clone(_))
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            (name, Some(node)) => write!(f, "{name}:{node}"),
            (name, None) => f.write_str(name),
        }
    }
}

impl FromStr for StepId {
    type Err = String;
    fn from_str(s: &str) -> Result<StepId, String> {
        type PerNode = (fn(String) -> StepId, &'static str);
        let per_node: [PerNode; 4] = [
            (StepId::Prepare, "prepare"),
            (StepId::Slot, "slot"),
            (StepId::Clone, "clone"),
            (StepId::Start, "start"),
        ];
        if let Some((kind, node)) = s.split_once(':') {
            for (make, name) in per_node {
                if kind == name && !node.is_empty() {
                    return Ok(make(node.to_string()));
                }
            }
        } else if let Some(id) = StepId::fixed().find(|id| id.name().0 == s) {
            return Ok(id.clone());
        }
        Err(format!("no step {s:?}"))
    }
}

impl serde::Serialize for StepId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StepId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StepId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The write pause runs from holding the clients to releasing them; the old primary's
    /// start as a standby (`reverse`) comes after, outside it (issue 19).
    #[test]
    fn the_pause_is_hold_to_release_and_reverse_follows_it() {
        let pause = StepId::pause();
        assert_eq!(pause.first(), Some(&StepId::Hold));
        assert_eq!(pause.last(), Some(&StepId::Release));
        assert!(!pause.contains(&StepId::Reverse));
        let at = |id: &StepId| StepId::SWITCHOVER.iter().position(|s| s == id);
        assert!(at(&StepId::Release) < at(&StepId::Reverse));
        assert!(
            at(&StepId::Stage) < at(&StepId::Promote),
            "staged before the promotion"
        );
    }

    #[test]
    fn every_id_reads_back_as_itself() {
        let mut all: Vec<StepId> = StepId::fixed().cloned().collect();
        assert_eq!(all.len(), 27, "every fixed id once");
        all.extend([
            StepId::Prepare("new".into()),
            StepId::Slot("dr".into()),
            StepId::Clone("new_replica".into()),
            StepId::Start("dr".into()),
        ]);
        for id in all {
            assert_eq!(id.to_string().parse::<StepId>(), Ok(id.clone()), "{id}");
        }
        assert_eq!(StepId::Clone("dr".into()).to_string(), "clone:dr");
        assert!("clone:".parse::<StepId>().is_err());
        assert!("nonsense".parse::<StepId>().is_err());
    }
}
