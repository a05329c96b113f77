//! One writable node: before anything that can make a node writable (promoting the target,
//! restarting the old primary as primary in an undo), every other node must be shown not
//! writable, by its own answer or, where it is down, by its control file. Where that cannot be
//! shown, the step refuses and the run stops for the operator with the situation described.

use std::time::Duration;

use crate::host::Cmd;
use crate::pg::server::RunState;
use crate::pg::{session, sql};
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

/// How long a node that is starting up is waited for: as long as one question may take, so a
/// check inside the write pause waits no longer than it did before it waited for starts.
const STARTING: Duration = ASK;

/// Ask `m`. A server on its way up is asked again until it answers (within [`STARTING`]):
/// whether it comes up writable is what matters, and "silent" would refuse a standby that
/// needs a moment.
pub async fn writable(m: &Member) -> Writable {
    let deadline = tokio::time::Instant::now() + STARTING;
    // A node this process holds no open connection to is likely down (the stopped old primary
    // before the promotion): its host is asked at the same time as the node, one round trip
    // instead of two inside the pause, and its answer used only if the node gives none (a
    // node that answers is not kept waiting for its host).
    let mut ahead = (!crate::pg::session::is_open(&m.endpoint())).then(|| {
        let m = m.clone();
        tokio::spawn(async move { look(&m).await })
    });
    loop {
        let asked = in_recovery(m).await;
        let looked = ahead.take();
        let why = match asked {
            Ok(Ok(false)) => return Writable::Yes,
            Ok(Ok(true)) => return Writable::No("answers in recovery".into()),
            Ok(Err(e)) if crate::pg::conn::is_starting_up(&e) => {
                if tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                format!("{e:#}")
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("no answer within {ASK:?}"),
        };
        // Not answering: its host says what it is. A postmaster still starting (its sockets
        // not open yet: connections refused) is asked again; one stopping is not waited for.
        let looked = match looked {
            Some(looking) => looking
                .await
                .unwrap_or_else(|e| Err(format!("its host: {e}"))),
            None => look(m).await,
        };
        let (w, starting) = down(m, &why, looked);
        if !(starting && tokio::time::Instant::now() < deadline) {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `pg_is_in_recovery()` on `m`, within [`ASK`].
async fn in_recovery(m: &Member) -> Result<anyhow::Result<bool>, tokio::time::error::Elapsed> {
    tokio::time::timeout(ASK, async {
        let c = session(&m.endpoint()).await?;
        let r = sql::in_recovery(&c).await?;
        c.keep();
        anyhow::Ok(r)
    })
    .await
}

/// `sh -c` script for a node that does not answer: $1 pg_controldata, $2 the data directory,
/// then the status command. Prints `state=<code>`, `dir=0|1`, `signal=0|1`, `pm=<the
/// postmaster's status line in postmaster.pid: starting, stopping, ready, standby>`, then the
/// control file in the C locale. One round trip: before a promotion this runs inside the write pause,
/// where three separate calls over ssh cost 40-60 ms.
const LOOK_DOWN: &str = r#"ctl=$1; data=$2; shift 2
"$@" >/dev/null 2>&1; echo "state=$?"
if [ -d "$data" ]; then echo dir=1; else echo dir=0; fi
if [ -e "$data/standby.signal" ]; then echo signal=1; else echo signal=0; fi
echo "pm=$(sed -n 8p "$data/postmaster.pid" 2>/dev/null)"
LC_ALL=C "$ctl" -D "$data" 2>&1"#;

/// Pure: what LOOK_DOWN's output says about a node that did not answer (`why`).
fn read_down(text: &str, node: &str, why: &str) -> Writable {
    let mut lines = text.lines();
    let mut field = |key: &str| {
        lines
            .next()
            .and_then(|l| l.strip_prefix(key))
            .map(str::to_string)
    };
    let (Some(code), Some(dir), Some(signal), Some(_pm)) = (
        field("state="),
        field("dir="),
        field("signal="),
        field("pm="),
    ) else {
        let said = text.lines().next().unwrap_or_default();
        return Writable::Unknown(format!("{why}; its host did not say what runs ({said:?})"));
    };
    let control: String = text.lines().skip(4).collect::<Vec<_>>().join("\n");
    match RunState::from_status(code.parse().ok()) {
        Some(RunState::Running) => {
            Writable::Silent(format!("its server runs but does not answer ({why})"))
        }
        Some(RunState::NoCluster) => Writable::No("no cluster there".into()),
        // pg_ctlcluster refuses (exit 1) where pg_ctl says 4: the directory is gone.
        None if dir == "0" => Writable::No("no cluster there".into()),
        None => Writable::Unknown(format!("{why}; the status of its server failed")),
        Some(RunState::Stopped) => match super::proof::parse_controldata(&control, node) {
            Ok(ctl) => down_as(&ctl.state, signal == "1"),
            Err(e) => Writable::Unknown(format!("down ({why}); its control file: {e:#}")),
        },
    }
}

/// Pure: whether LOOK_DOWN's output shows a server on its way up: it runs, and its postmaster
/// says "starting", or has not written its status line yet (the first moments of a start,
/// when connections are refused before its sockets open). A postmaster shutting down says
/// "stopping"; one that runs says "ready" or "standby".
fn still_starting(text: &str) -> bool {
    let mut lines = text.lines();
    lines.next() == Some("state=0")
        && lines
            .nth(2)
            .and_then(|l| l.strip_prefix("pm="))
            .is_some_and(|pm| matches!(pm.trim(), "" | "starting"))
}

/// LOOK_DOWN's output on `m`'s host, or why there is none.
async fn look(m: &Member) -> Result<String, String> {
    let server = m.server().map_err(|e| format!("its server: {e:#}"))?;
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        LOOK_DOWN.into(),
        "migrate-look".into(),
        server.tool("pg_controldata"),
        m.node.data_dir.display().to_string(),
    ];
    argv.extend(server.status_argv());
    match tokio::time::timeout(ASK, m.host.run(&Cmd::new(argv).timeout(ASK))).await {
        Ok(Ok(out)) => Ok(out.stdout_text()),
        Ok(Err(e)) => Err(format!("its host: {e:#}")),
        Err(_) => Err("its host did not answer".into()),
    }
}

/// What a node that did not answer (`why`) is, from what its host said, and whether it is
/// still starting.
fn down(m: &Member, why: &str, looked: Result<String, String>) -> (Writable, bool) {
    let why = why.lines().next().unwrap_or_default();
    match looked {
        Ok(text) => (read_down(&text, m.name(), why), still_starting(&text)),
        Err(e) => (Writable::Unknown(format!("{why}; {e}")), false),
    }
}

async fn ask_all(others: &[&Member]) -> Vec<Writable> {
    let mut set = tokio::task::JoinSet::new();
    for (i, m) in others.iter().enumerate() {
        let m = (*m).clone();
        set.spawn(async move { (i, writable(&m).await) });
    }
    let mut out: Vec<Option<Writable>> = others.iter().map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        if let Ok((i, w)) = done {
            out[i] = Some(w);
        }
    }
    out.into_iter()
        .map(|w| w.unwrap_or_else(|| Writable::Unknown("the check itself failed".into())))
        .collect()
}

/// `Err` with the situation when any of `others` is, or may be, writable.
pub async fn none_writable(
    others: &[&Member],
    before: &str,
    if_silent: IfSilent,
) -> Result<(), String> {
    // Asked all at once: each answer is a round trip inside the write pause.
    let answers = ask_all(others).await;
    for (m, w) in others.iter().zip(answers) {
        match w {
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

    #[test]
    fn a_postmaster_still_starting_is_told_from_one_stopping() {
        assert!(still_starting("state=0\ndir=1\nsignal=1\npm=starting\n"));
        assert!(!still_starting("state=0\ndir=1\nsignal=1\npm=stopping\n"));
        assert!(!still_starting("state=0\ndir=1\nsignal=1\npm=ready   \n"));
        assert!(!still_starting("state=0\ndir=1\nsignal=1\npm=standby \n"));
        // The pid file without its status line yet: the first moments of a start.
        assert!(still_starting("state=0\ndir=1\nsignal=1\npm=\n"));
        // Not running: whatever an old pid file says.
        assert!(!still_starting("state=3\ndir=1\nsignal=1\npm=starting\n"));
        assert!(!still_starting("ssh: connect refused"));
    }

    const CONTROL: &str = "pg_control version number:            1300\nDatabase cluster state:               shut down\nLatest checkpoint location:           0/3000028\nLatest checkpoint's TimeLineID:       1\n";

    #[test]
    fn one_look_at_a_silent_node_says_what_it_is() {
        let staged = format!("state=3\ndir=1\nsignal=1\npm=\n{CONTROL}");
        assert!(matches!(
            read_down(&staged, "old", "refused"),
            Writable::No(_)
        ));
        let unstaged = format!("state=3\ndir=1\nsignal=0\npm=\n{CONTROL}");
        assert!(matches!(
            read_down(&unstaged, "old", "refused"),
            Writable::Unknown(_)
        ));
        assert!(matches!(
            read_down("state=0\ndir=1\nsignal=1\npm=\n", "old", "timeout"),
            Writable::Silent(_)
        ));
        assert!(matches!(
            read_down("state=4\ndir=0\nsignal=0\npm=\n", "old", "refused"),
            Writable::No(_)
        ));
        // pg_ctlcluster's exit 1 on a removed cluster, and on one that is there.
        assert!(matches!(
            read_down("state=1\ndir=0\nsignal=0\npm=\n", "old", "refused"),
            Writable::No(_)
        ));
        assert!(matches!(
            read_down("state=1\ndir=1\nsignal=1\npm=\n", "old", "refused"),
            Writable::Unknown(_)
        ));
        // Stopped, but the control file cannot be read: not shown safe.
        assert!(matches!(
            read_down(
                "state=3\ndir=1\nsignal=1\npm=\npg_controldata: could not open",
                "old",
                "refused"
            ),
            Writable::Unknown(_)
        ));
        assert!(matches!(
            read_down("ssh: connect to host refused", "old", "refused"),
            Writable::Unknown(_)
        ));
    }
}
