//! `isolate`: fence the lost primary as far as it can be reached, then point every route at
//! the node about to be promoted (read-only until then), so nothing writes to the lost one
//! should it come back.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Failover, Seen};
use crate::engine::{Cx, Description, Kind, Step};
use crate::host::FileWrite;
use crate::pg::service::StopMode;
use crate::steps::id::StepId;
use crate::steps::switchover::guard::{self, Writable};

pub struct Isolate(pub Failover);

/// How the lost primary was fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fenced {
    /// It was already shown not writable (down with standby.signal, or in recovery).
    NotWritable,
    /// Its server ran without answering: stopped (immediate), and marked as a standby.
    Stopped,
    /// Down as a primary: marked with standby.signal, so a restart brings it up read-only.
    Marked,
    /// Its host does not answer: the spec's fence plugin fenced it.
    Plugin,
    /// Its host does not answer and there is no fence plugin: the operator said `--no-fence`.
    OperatorsWord,
}

impl Fenced {
    /// Whether the promotion goes ahead without the lost primary shown not writable.
    pub fn trusted_without_proof(self) -> bool {
        matches!(self, Fenced::Plugin | Fenced::OperatorsWord)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IsolateOut {
    pub fenced: Fenced,
    /// What was found and done, in words.
    pub detail: String,
    /// The fence plugin's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<Value>,
    /// Each route, pointed at the standby (or why it could not be).
    pub routes: Vec<Value>,
    /// The newest position the lost primary was known to have before this run.
    #[serde(default)]
    pub last_known: Option<Seen>,
}

/// How long an immediate shutdown of a server that does not answer may take before it is
/// killed instead.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// SIGKILL the postmaster of `m`'s data directory and its children, and wait until it is gone:
/// the fence of a server that answers no signal it can catch.
async fn kill_postmaster(m: &crate::steps::member::Member) -> Result<()> {
    const KILL: &str = r#"pid=$(head -n 1 "$1/postmaster.pid" 2>/dev/null) || exit 0
[ -n "$pid" ] || exit 0
pkill -KILL -P "$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null
for _ in $(seq 100); do
  # Gone, or killed and not reaped yet (a PID 1 that does not reap): it writes nothing more.
  # Its pid file goes with it, so that no status check takes a zombie for a running server.
  if ! kill -0 "$pid" 2>/dev/null || [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" = Z ]; then
    rm -f -- "$1/postmaster.pid"; exit 0
  fi
  sleep 0.1
done
echo "postmaster $pid still runs" >&2; exit 1"#;
    m.host
        .run_ok(&crate::host::Cmd::new([
            "sh".to_string(),
            "-c".into(),
            KILL.into(),
            "migrate-kill".into(),
            m.node.data_dir.display().to_string(),
        ]))
        .await
        .map(drop)
}

impl Isolate {
    /// Fence the lost primary; what was done.
    async fn fence(&self) -> Result<(Fenced, String, Option<Value>)> {
        let f = &self.0;
        let lost = &f.d.from;
        let name = lost.name();
        let signal =
            || FileWrite::new(lost.node.data_dir.join("standby.signal"), Vec::new(), 0o600);
        let why = match guard::writable(lost).await {
            Writable::Yes => bail!(
                "{name} answers as a writable primary: it is not lost. A planned switch that loses nothing is `migrate rollback` (or `migrate cutover`); if {name} must go anyway, stop it first. Nothing was changed"
            ),
            Writable::No(why) => return Ok((Fenced::NotWritable, why, None)),
            Writable::Silent(why) => {
                // A frozen server (SIGSTOPped, a hung host process) ignores the immediate
                // shutdown's SIGQUIT: it is killed, postmaster and children.
                let how = match lost.server()?.stop(StopMode::Immediate, STOP_LIMIT).await {
                    Ok(()) => "stopped (immediate)".to_string(),
                    Err(e) => {
                        kill_postmaster(lost).await.with_context(|| {
                            format!("the immediate shutdown failed ({e:#}), and so did SIGKILL")
                        })?;
                        format!("the immediate shutdown failed ({e:#}): killed (SIGKILL)")
                    }
                };
                lost.host.write_files(&[signal()]).await?;
                return Ok((
                    Fenced::Stopped,
                    format!("{why}: {how} and marked with standby.signal"),
                    None,
                ));
            }
            Writable::Unknown(why) => why,
        };
        // Down as a primary, or its host does not answer. Where the host answers and the
        // server is down, the mark is the fence.
        let marked = async {
            if lost.server()?.state().await? == crate::pg::server::RunState::Running {
                bail!("its server runs again");
            }
            lost.host.write_files(&[signal()]).await
        };
        let host_problem = match tokio::time::timeout(f.d.limit, marked).await {
            Ok(Ok(())) => {
                return Ok((
                    Fenced::Marked,
                    format!("{why}; marked with standby.signal"),
                    None,
                ))
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("its host did not answer within {:?}", f.d.limit),
        };
        let could_not = format!("could not fence {name} ({why}; {host_problem})");
        if let Some(plugin) = &f.fence {
            let req = json!({
                "version": crate::route::exec::PROTOCOL_VERSION,
                "action": "fence",
                "node": {
                    "name": name,
                    "host": lost.node.conninfo.host(),
                    "port": lost.node.conninfo.port(),
                },
                "config": plugin.config,
            });
            let answer = crate::route::exec::call_plugin(
                "fence plugin",
                &plugin.command,
                plugin.timeout,
                &plugin.env,
                "fence",
                &req,
            )
            .await
            .map_err(|e| {
                anyhow!("{could_not}, and the fence plugin failed: {e:#}; nothing was promoted")
            })?;
            return Ok((
                Fenced::Plugin,
                format!("{could_not}; the fence plugin fenced it"),
                Some(answer),
            ));
        }
        if f.no_fence {
            return Ok((
                Fenced::OperatorsWord,
                format!("{could_not}; --no-fence: the operator vouches that it is off"),
                None,
            ));
        }
        bail!(
            "{could_not}, and the spec has no fence plugin ([failover.fence]). Make sure {name} is off (power, network), then run again with --no-fence; nothing was promoted"
        )
    }
}

#[async_trait]
impl Step for Isolate {
    type Output = IsolateOut;
    fn id(&self) -> String {
        StepId::Isolate.to_string()
    }
    fn describe(&self) -> Description {
        let f = &self.0;
        Description {
            host: f.d.from.host_label(),
            action: format!(
                "fence {lost}: a server that runs without answering is stopped (immediate); down, it gets standby.signal; a host that does not answer: {plugin}; then point every route at {to}",
                lost = f.d.from.name(),
                to = f.d.to.name(),
                plugin = match (&f.fence, f.no_fence) {
                    (Some(p), _) => format!("the fence plugin {}", p.command[0]),
                    (None, true) => "--no-fence (the operator's word)".into(),
                    (None, false) => "refuse (no fence plugin)".into(),
                }
            ),
            proof: format!("{} is shown not writable, or fenced by the plugin or the operator's word", f.d.from.name()),
            undo: "none: a lost primary stays fenced, and the routes stay on the standby".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::NothingToUndo
    }
    async fn apply(&self, cx: &Cx) -> Result<IsolateOut> {
        let (fenced, detail, plugin) = self.fence().await?;
        cx.progress(&StepId::Isolate, detail.clone());
        let (from, to) = (&self.0.d.from.node, &self.0.d.to.node);
        let mut routes = Vec::new();
        for r in crate::route::open(&self.0.d.routes)? {
            let pointed = tokio::time::timeout(self.0.d.limit, r.point(from, to)).await;
            routes.push(match pointed {
                Ok(Ok(v)) => json!({ "route": r.describe(), "points_at": v }),
                Ok(Err(e)) => json!({ "route": r.describe(), "error": format!("{e:#}") }),
                Err(_) => json!({ "route": r.describe(), "error": format!("no answer within {:?}", self.0.d.limit) }),
            });
        }
        Ok(IsolateOut {
            fenced,
            detail,
            plugin,
            routes,
            last_known: self.0.last_known.clone(),
        })
    }
}
