//! What every journaled command shares: the spec, its hash, the locks, the event renderer.

use std::sync::Arc;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::cli::Global;
use crate::engine::events::{self, EventSink};
use crate::engine::lock::StateLock;
use crate::engine::{Interrupts, Invocation, Outcome, Plan, Runner};
use crate::exit::Exit;
use crate::pg::advisory::{AdvisoryLock, AdvisoryOutcome};
use crate::spec::{self, Spec};
use crate::ui::{progress, Ui};

pub struct Session {
    pub spec: Arc<Spec>,
    pub inv: Invocation,
    _state_lock: StateLock,
    _advisory: Option<AdvisoryLock>,
}

/// Load the spec, take the run's lock file, then the advisory lock on the old primary (when it
/// is reachable). A second run fails here, before anything changes.
pub async fn open(g: &Global, command: &str, ui: &Ui) -> Result<Session> {
    let path = super::spec_path(g)?;
    let spec = spec::load(&path)?;
    let spec_hash = spec_hash(&path)?;
    let state_lock = StateLock::acquire(&spec.state_dir, &format!("migrate {command}"))?;
    let advisory = match AdvisoryLock::acquire(&spec.primary().endpoint(), &spec.name).await? {
        AdvisoryOutcome::Held(l) => Some(l),
        AdvisoryOutcome::Unreachable(why) => {
            ui.warn(format!(
                "the old primary is unreachable, so only the lock file guards this run: {why}"
            ));
            None
        }
    };
    prepare_hosts(&spec).await;
    let inv = Invocation {
        state_dir: spec.state_dir.clone(),
        spec_hash,
        spec_arg: path.display().to_string(),
        command: format!("migrate {command} -f {}", path.display()),
    };
    Ok(Session {
        spec: Arc::new(spec),
        inv,
        _state_lock: state_lock,
        _advisory: advisory,
    })
}

/// Open the ssh master connection of every host the run will use, all at once and before any
/// step, so that no command inside the cutover's pause pays a connection setup. Best effort: a
/// host that cannot be reached now is reported by the step that needs it.
async fn prepare_hosts(spec: &Spec) {
    use crate::spec::Route;
    let mut hosts: Vec<&crate::host::HostSpec> = spec.nodes.iter().map(|n| &n.host).collect();
    for r in &spec.routes {
        match r {
            Route::PgBouncer(p) => hosts.push(&p.host),
            Route::HaProxy(h) => hosts.push(&h.host),
            Route::Nat(n) => hosts.push(&n.host),
            _ => {}
        }
    }
    let opened: Vec<_> = hosts
        .into_iter()
        .filter(|h| matches!(h, crate::host::HostSpec::Ssh { .. }))
        .filter_map(|h| h.open().ok())
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for h in opened {
        set.spawn(async move { h.prepare().await });
    }
    while set.join_next().await.is_some() {}
}

/// The last run in the state directory, refused while it is not finished: `what` does not
/// start beside an open run.
pub fn last_finished_run(
    s: &Session,
    what: &str,
) -> Result<Option<crate::engine::replay::RunState>> {
    let last = crate::engine::replay::load(&s.inv.state_dir)?.map(|l| l.state);
    if let Some(st) = last.as_ref().filter(|st| st.finished().is_none()) {
        anyhow::bail!(
            "run {} ({}) is not finished: finish it with `migrate resume -f {a}` or `migrate rollback -f {a}` first ({what} does not start beside an open run); nothing was changed",
            st.run_id,
            st.operation,
            a = s.inv.spec_arg
        );
    }
    Ok(last)
}

/// SHA-256 of the spec file, journaled and recorded by `plan`.
pub fn spec_hash(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Run `work` with a renderer attached to the runner's events and the interrupt signals
/// (Ctrl-C, SIGTERM, SIGHUP: all three mean "stop safely", as the runner decides). Every
/// journal record is also told to the spec's event hooks, in order, beside the run (a slow
/// or failing hook is logged and never holds the run up).
pub async fn drive<F, Fut>(ui: &Ui, spec: &Spec, work: F) -> Result<Exit>
where
    F: FnOnce(EventSink, Interrupts) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome>>,
{
    let (tx, mut rx) = events::channel();
    let (ui_tx, ui_rx) = events::channel();
    let renderer = progress::spawn(ui.progress_mode(), ui_rx);
    let hooks: Vec<crate::spec::Hook> = spec.hooks.iter().filter(|h| !h.gate).cloned().collect();
    let spec_name = spec.name.clone();
    let teller = tokio::spawn(async move {
        let (mut run_id, mut operation) = (String::new(), String::new());
        while let Some(ev) = rx.recv().await {
            let record = match &ev {
                events::RunEvent::RunOpened {
                    run_id: r,
                    operation: o,
                    ..
                } => {
                    (run_id, operation) = (r.clone(), o.clone());
                    None
                }
                events::RunEvent::Journaled { record } => serde_json::to_value(record).ok(),
                _ => None,
            };
            let _ = ui_tx.send(ev);
            let Some(record) = record else { continue };
            let body = crate::hooks::event(&spec_name, &run_id, &operation, &record);
            for h in &hooks {
                if let Err(e) = crate::hooks::call(h, "event", &body).await {
                    tracing::warn!("{}: {e:#}", crate::hooks::label(h));
                }
            }
        }
    });
    let (signals, watcher) = interrupts();
    let result = work(tx, signals).await;
    watcher.abort();
    let _ = teller.await;
    let _ = renderer.await;
    result.map(|_| Exit::Done)
}

/// Start a new run of `plan` and run it to its end under the runner's policy.
pub async fn start(ui: &Ui, s: &Session, plan: Plan, pause_before: Option<String>) -> Result<Exit> {
    start_with(ui, s, plan, pause_before, false).await
}

/// [`start`], abandoning an unfinished run when `abandon` (a failover: see
/// [`Runner::start_abandoning`]).
pub async fn start_with(
    ui: &Ui,
    s: &Session,
    plan: Plan,
    pause_before: Option<String>,
    abandon: bool,
) -> Result<Exit> {
    let inv = s.inv.clone();
    drive(ui, &s.spec, |events, mut signals| async move {
        let mut runner = if abandon {
            Runner::start_abandoning(plan, inv, events)?
        } else {
            Runner::start(plan, inv, events)?
        };
        runner.pause_before(pause_before)?;
        runner.run(Some(&mut signals)).await
    })
    .await
}

fn interrupts() -> (Interrupts, tokio::task::JoinHandle<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(async move {
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        loop {
            let name = tokio::select! {
                r = tokio::signal::ctrl_c() => match r { Ok(()) => "interrupt (Ctrl-C)", Err(_) => return },
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
            };
            if tx.send(name).is_err() {
                return;
            }
        }
    });
    (rx, watcher)
}
