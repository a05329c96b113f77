//! One writable node: before anything that can make a node writable (promoting the target,
//! restarting the old primary as primary in an undo), every other node must be shown not
//! writable, by its own answer or, where it is down, by its control file. Where that cannot be
//! shown, the step refuses and the run stops for the operator with the situation described.

use std::time::Duration;

use super::proof::controldata;
use crate::pg::server::RunState;
use crate::pg::{connect, sql};
use crate::steps::member::Member;

/// How long a node may take to answer the question.
const ASK: Duration = Duration::from_secs(5);

/// What a node is, as far as writes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writable {
    /// It answers and is a primary.
    Yes,
    /// It answers in recovery, or it is down and its control file says it stopped (or
    /// crashed) as a standby.
    No(String),
    /// Its server runs but answers nothing (a frozen host, a stopped postmaster): it takes no
    /// write while it stays so, but it cannot be shown to be a standby.
    Silent(String),
    /// It cannot be shown either way (down after running as a primary, so a restart would
    /// bring it up writable; its host does not answer).
    Unknown(String),
}

/// How strict a check is about a node that runs but answers nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfSilent {
    /// Refuse: before a promotion, a silent old primary might be serving someone.
    Refuse,
    /// Accept: restarting the old primary in an abort beside a target that hangs (it was a
    /// standby at the proof and this run never promoted it); refusing would leave the
    /// cluster without any primary.
    Accept,
}

/// Pure: what a down node is. Whatever it was, a restart brings it up as a standby only if
/// `standby.signal` is in its data directory; without it, it comes up writable.
pub fn down_as(state: &str, standby_signal: bool) -> Writable {
    if standby_signal {
        Writable::No(format!(
            "down (control file: {state:?}), standby.signal in place"
        ))
    } else {
        Writable::Unknown(format!(
            "down (control file: {state:?}) without standby.signal: a restart brings it up writable"
        ))
    }
}

/// Ask `m`.
pub async fn writable(m: &Member) -> Writable {
    let answer = tokio::time::timeout(ASK, async {
        let c = connect(&m.endpoint()).await?;
        sql::in_recovery(&c).await
    })
    .await;
    match answer {
        Ok(Ok(false)) => Writable::Yes,
        Ok(Ok(true)) => Writable::No("answers in recovery".into()),
        Ok(Err(e)) => down(m, format!("{e:#}")).await,
        Err(_) => down(m, format!("no answer within {ASK:?}")).await,
    }
}

async fn down(m: &Member, why: String) -> Writable {
    let why = why.lines().next().unwrap_or_default().to_string();
    let state = match m.server() {
        Ok(s) => tokio::time::timeout(ASK, s.state()).await,
        Err(e) => return Writable::Unknown(format!("{why}; and its server: {e:#}")),
    };
    match state {
        Ok(Ok(RunState::Running)) => {
            Writable::Silent(format!("its server runs but does not answer ({why})"))
        }
        Ok(Ok(RunState::NoCluster)) => Writable::No("no cluster there".into()),
        Ok(Ok(RunState::Stopped)) => match tokio::time::timeout(ASK, controldata(m)).await {
            Ok(Ok(ctl)) => {
                let signal = m.node.data_dir.join("standby.signal");
                match tokio::time::timeout(ASK, m.host.exists(&signal)).await {
                    Ok(Ok(present)) => down_as(&ctl.state, present),
                    _ => Writable::Unknown(format!(
                        "down ({why}); its host did not say whether {} exists",
                        signal.display()
                    )),
                }
            }
            Ok(Err(e)) => Writable::Unknown(format!("down ({why}); its control file: {e:#}")),
            Err(_) => Writable::Unknown(format!("down ({why}); pg_controldata did not answer")),
        },
        Ok(Err(e)) => Writable::Unknown(format!("{why}; its host: {e:#}")),
        Err(_) => Writable::Unknown(format!("{why}; its host did not answer")),
    }
}

/// `Err` with the situation when any of `others` is, or may be, writable.
pub async fn none_writable(
    others: &[&Member],
    before: &str,
    if_silent: IfSilent,
) -> Result<(), String> {
    for m in others {
        match writable(m).await {
            Writable::No(_) => {}
            Writable::Silent(_) if if_silent == IfSilent::Accept => {}
            Writable::Yes => {
                return Err(format!(
                    "{} answers as a writable primary, so {before} would make two primaries",
                    m.name()
                ))
            }
            Writable::Silent(why) | Writable::Unknown(why) => {
                return Err(format!(
                    "{} cannot be shown not writable ({why}), so {before} could make two primaries",
                    m.name()
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_down_node_is_safe_only_with_standby_signal() {
        assert!(matches!(down_as("shut down", true), Writable::No(_)));
        assert!(matches!(
            down_as("in archive recovery", true),
            Writable::No(_)
        ));
        // A promoted target that was stopped, a crashed primary: a restart is a primary.
        assert!(matches!(down_as("shut down", false), Writable::Unknown(_)));
        assert!(matches!(
            down_as("in production", false),
            Writable::Unknown(_)
        ));
        assert!(matches!(
            down_as("shut down in recovery", false),
            Writable::Unknown(_)
        ));
    }
}
