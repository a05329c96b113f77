//! `ha_pause` and `ha_resume`: the HA managers declared on the nodes (`ha = …`) are paused
//! before the hold, so none of them restarts the fenced primary or fails over while migrate
//! switches, and given the new topology after the release (outside the write pause).
//!
//! repmgr: `repmgr service pause` (every repmgrd of its cluster), then `service status` must
//! show each running repmgrd paused; after: `primary register --force` on the new primary,
//! `standby register --force` under each declared standby's upstream, repmgrd started again
//! where it ended itself, `service unpause`. Patroni: `PATCH /config {"pause": true}` per
//! Patroni cluster, then every member must report the pause; after: the cluster leads again
//! or becomes a standby cluster of the new primary (`ha::patroni::resume_body`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::Direction;
use crate::engine::{Cx, Description, Kind, Step};
use crate::ha::patroni::{self, Api};
use crate::ha::repmgr::{Repmgr, Repmgrd};
use crate::ha::{Placement, RepmgrAfter};
use crate::spec::Ha;
use crate::steps::id::StepId;
use crate::steps::member::Member;

/// How long the managers may take to show the pause (Patroni members see it on their next
/// loop, `loop_wait` = 10 s by default) or to come back after it.
const SETTLE: Duration = Duration::from_secs(40);

/// How long a repmgrd migrate started is given to show up in `service status`.
const START_GRACE: Duration = Duration::from_secs(10);

impl Direction {
    /// Every node, the switchover's two first.
    fn members(&self) -> impl Iterator<Item = &Member> {
        [&self.from, &self.to].into_iter().chain(&self.followers)
    }

    fn repmgr(&self) -> Vec<(&Member, Repmgr)> {
        self.members()
            .filter_map(|m| match &m.node.ha {
                Some(Ha::Repmgr { config }) => Some((
                    m,
                    Repmgr {
                        node: m.name().to_string(),
                        program: crate::ha::repmgr::program(m.node.bin_dir.as_deref()),
                        config: config.clone(),
                    },
                )),
                _ => None,
            })
            .collect()
    }

    /// The Patroni clusters: name → its members.
    fn patroni(&self) -> BTreeMap<String, Vec<(&Member, &crate::spec::Patroni)>> {
        let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for m in self.members() {
            if let Some(Ha::Patroni(p)) = &m.node.ha {
                out.entry(p.cluster.clone()).or_default().push((m, p));
            }
        }
        out
    }

    /// Whether any node declares an HA manager.
    pub fn has_ha(&self) -> bool {
        self.members().any(|m| m.node.ha.is_some())
    }

    /// Who streams from whom once the switch is done.
    fn placements(&self) -> Vec<Placement> {
        let mut v = vec![
            Placement {
                node: self.to.name().into(),
                upstream: None,
            },
            Placement {
                node: self.from.name().into(),
                upstream: Some(self.to.name().into()),
            },
        ];
        v.extend(self.followers.iter().map(|f| Placement {
            node: f.name().into(),
            upstream: f.node.upstream.clone(),
        }));
        v
    }

    fn ha_hosts(&self) -> String {
        self.members()
            .filter_map(|m| {
                m.node
                    .ha
                    .as_ref()
                    .map(|h| format!("{} ({})", m.name(), h.kind()))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What one repmgr cluster answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RepmgrSeen {
    /// The node whose repmgr spoke for the cluster.
    pub via: String,
    pub daemons: Vec<Repmgrd>,
}

/// What one Patroni member answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatroniSeen {
    pub cluster: String,
    pub node: String,
    pub member: patroni::Member,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HaPauseOut {
    #[serde(default)]
    pub repmgr: Option<RepmgrSeen>,
    #[serde(default)]
    pub patroni: Vec<PatroniSeen>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HaResumeOut {
    #[serde(default)]
    pub repmgr: Option<RepmgrAfter>,
    #[serde(default)]
    pub repmgrd: Option<RepmgrSeen>,
    #[serde(default)]
    pub patroni: Vec<PatroniSeen>,
    /// What the operator must know (a manager left paused, a daemon that would not start).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// repmgr through the first declared node that answers (the old primary's first).
async fn repmgr_status(nodes: &[(&Member, Repmgr)]) -> Result<RepmgrSeen> {
    let mut errors = Vec::new();
    for (m, r) in nodes {
        match r.status(m.host.as_ref()).await {
            Ok(daemons) => {
                return Ok(RepmgrSeen {
                    via: m.name().into(),
                    daemons,
                })
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("no repmgr node answered: {}", errors.join("; "))
}

/// `service pause`/`unpause` through the first repmgr that does it, then `service status`
/// must show every running repmgrd so. repmgr exits non-zero when it cannot reach one of its
/// nodes (a server that is down, whose repmgrd cannot act either): the status decides.
async fn repmgr_pause(nodes: &[(&Member, Repmgr)], pause: bool) -> Result<RepmgrSeen> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut errors = Vec::new();
        for (m, r) in nodes {
            match r.pause(m.host.as_ref(), pause).await {
                Ok(()) => {
                    errors.clear();
                    break;
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        let seen = repmgr_status(nodes).await?;
        let wrong: Vec<&str> = seen
            .daemons
            .iter()
            .filter(|d| d.running && d.paused != pause)
            .map(|d| d.name.as_str())
            .collect();
        if wrong.is_empty() {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            bail!(
                "repmgrd on {} still {} after `repmgr service {}`{}",
                wrong.join(", "),
                if pause { "unpaused" } else { "paused" },
                if pause { "pause" } else { "unpause" },
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(": {}", errors.join("; "))
                }
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Set `pause` on every Patroni cluster and wait until each member reports it.
async fn patroni_pause(d: &Direction, pause: bool) -> Result<Vec<PatroniSeen>> {
    let mut seen = Vec::new();
    for (cluster, members) in d.patroni() {
        let apis = members
            .iter()
            .map(|(m, p)| Ok((m.name().to_string(), Api::new(p)?)))
            .collect::<Result<Vec<_>>>()?;
        patch_any(&cluster, &apis, &serde_json::json!({ "pause": pause })).await?;
        seen.extend(wait_members(&cluster, &apis, |m| m.paused == pause).await?);
    }
    Ok(seen)
}

/// `PATCH /config` through the first member that takes it (the setting is the cluster's).
async fn patch_any(cluster: &str, apis: &[(String, Api)], body: &serde_json::Value) -> Result<()> {
    let mut errors = Vec::new();
    for (_, api) in apis {
        match api.patch_config(body).await {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!(
        "no member of Patroni cluster {cluster} took {body}: {}",
        errors.join("; ")
    )
}

async fn wait_members(
    cluster: &str,
    apis: &[(String, Api)],
    ok: impl Fn(&patroni::Member) -> bool,
) -> Result<Vec<PatroniSeen>> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut seen = Vec::new();
        let mut waiting = Vec::new();
        for (node, api) in apis {
            match api.member().await {
                Ok(m) if ok(&m) => seen.push(PatroniSeen {
                    cluster: cluster.into(),
                    node: node.clone(),
                    member: m,
                }),
                Ok(m) => waiting.push(format!(
                    "{node} ({} {}, pause {})",
                    m.role, m.state, m.paused
                )),
                Err(e) => waiting.push(format!("{node}: {e:#}")),
            }
        }
        if waiting.is_empty() {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            bail!(
                "Patroni cluster {cluster}: after {}s still waiting for {}",
                SETTLE.as_secs(),
                waiting.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub struct HaPause(pub Direction);

#[async_trait]
impl Step for HaPause {
    type Output = HaPauseOut;
    fn id(&self) -> String {
        StepId::HaPause.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.0.ha_hosts(),
            action: "repmgr: `repmgr service pause`; Patroni: PATCH /config {\"pause\": true} per cluster".into(),
            proof: "`repmgr service status` shows every running repmgrd paused; every Patroni member's GET /patroni says \"pause\": true".into(),
            undo: "`repmgr service unpause`; PATCH /config {\"pause\": false}".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn apply(&self, _cx: &Cx) -> Result<HaPauseOut> {
        let repmgr = self.0.repmgr();
        Ok(HaPauseOut {
            repmgr: if repmgr.is_empty() {
                None
            } else {
                Some(repmgr_pause(&repmgr, true).await?)
            },
            patroni: patroni_pause(&self.0, true).await?,
        })
    }
    /// Never fails: an HA manager left paused risks no data, and the undo must go on to
    /// finish the abort. What could not be unpaused is reported.
    async fn compensate(&self, cx: &Cx, _out: Option<HaPauseOut>) -> Result<()> {
        let repmgr = self.0.repmgr();
        let mut left = Vec::new();
        if !repmgr.is_empty() {
            if let Err(e) = repmgr_pause(&repmgr, false).await {
                left.push(format!(
                    "{e:#}; run `repmgr service unpause` once every repmgr node is up"
                ));
            }
        }
        if let Err(e) = patroni_pause(&self.0, false).await {
            left.push(format!(
                "{e:#}; run `patronictl resume` once the cluster answers"
            ));
        }
        for l in left {
            cx.progress(&StepId::HaPause, format!("HA manager left paused: {l}"));
        }
        Ok(())
    }
}

/// After the registration: every declared node's repmgrd running and unpaused, as
/// `service status` sees it. A repmgrd may end itself a while after the switch (once its
/// reconnect attempts find no primary it knows), or run unseen by its restarted server
/// (`Repmgr::restart_daemon`): so this converges, bringing such a daemon back, until the
/// state holds twice in a row a few seconds apart, or `SETTLE` passes (then what is still
/// wrong is reported).
async fn repmgrd_back(nodes: &[(&Member, Repmgr)]) -> Result<(RepmgrSeen, Vec<String>)> {
    let deadline = Instant::now() + SETTLE;
    let mut held = 0;
    // A daemon just started needs a moment to register with its server: until then it is
    // left alone, or the next round would stop it again as "running unseen".
    let mut started: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let seen = repmgr_status(nodes).await?;
        let mut down = Vec::new();
        let mut start_errors = Vec::new();
        for (m, r) in nodes {
            let running = seen.daemons.iter().any(|d| d.name == m.name() && d.running);
            if !running {
                down.push(m.name().to_string());
                if started
                    .get(m.name())
                    .is_some_and(|t| t.elapsed() < START_GRACE)
                {
                    continue;
                }
                started.insert(m.name().to_string(), Instant::now());
                if let Err(e) = r.restart_daemon(m.host.as_ref()).await {
                    start_errors.push(format!("{}: {e:#}", m.name()));
                }
            }
        }
        let paused = seen.daemons.iter().any(|d| d.running && d.paused);
        if paused {
            // Unpausing also covers a daemon just started from a paused state file.
            let (m, r) = &nodes[0];
            let _ = r.pause(m.host.as_ref(), false).await;
        }
        held = if down.is_empty() && !paused {
            held + 1
        } else {
            0
        };
        if held >= 2 {
            return Ok((seen, Vec::new()));
        }
        if Instant::now() > deadline {
            let mut notes = Vec::new();
            if !down.is_empty() {
                notes.push(format!(
                    "repmgrd is not running on {} ({}); start it there",
                    down.join(", "),
                    if start_errors.is_empty() {
                        "it ended again after `repmgr daemon start`".to_string()
                    } else {
                        start_errors.join("; ")
                    }
                ));
            }
            if paused {
                notes.push("repmgrd is still paused: run `repmgr service unpause`".into());
            }
            return Ok((seen, notes));
        }
        tokio::time::sleep(Duration::from_secs(if down.is_empty() && !paused {
            3
        } else {
            1
        }))
        .await;
    }
}

pub struct HaResume(pub Direction);

impl HaResume {
    async fn repmgr(&self, out: &mut HaResumeOut) -> Result<()> {
        let nodes = self.0.repmgr();
        if nodes.is_empty() {
            return Ok(());
        }
        let declared: Vec<String> = nodes.iter().map(|(m, _)| m.name().to_string()).collect();
        let decision = crate::ha::repmgr_after(&declared, &self.0.placements());
        out.repmgr = Some(decision.clone());
        let RepmgrAfter::Register { primary, standbys } = decision else {
            if let RepmgrAfter::LeavePaused { reason } = decision {
                out.notes.push(format!("repmgrd left paused: {reason}"));
            }
            return Ok(());
        };
        let by_name = |n: &str| {
            nodes
                .iter()
                .find(|(m, _)| m.name() == n)
                .ok_or_else(|| anyhow!("no repmgr node {n}"))
        };
        let (pm, pr) = by_name(&primary)?;
        pr.register_primary(pm.host.as_ref()).await?;
        for (node, upstream) in &standbys {
            let (um, ur) = by_name(upstream)?;
            let upstream_id = ur.node_id(um.host.as_ref()).await?;
            let (m, r) = by_name(node)?;
            r.register_standby(m.host.as_ref(), upstream_id).await?;
        }
        // The primary's repmgr first: it speaks for the new topology.
        let mut order: Vec<(&Member, Repmgr)> = nodes.clone();
        order.sort_by_key(|(m, _)| m.name() != primary);
        let (seen, notes) = repmgrd_back(&order).await?;
        out.repmgrd = Some(seen);
        out.notes.extend(notes);
        Ok(())
    }

    async fn patroni(&self, out: &mut HaResumeOut) -> Result<()> {
        let placements = self.0.placements();
        for (cluster, members) in self.0.patroni() {
            let names: Vec<String> = members.iter().map(|(m, _)| m.name().to_string()).collect();
            let leader = crate::ha::patroni_leader(
                &names,
                &placements,
                (
                    self.0.to.node.conninfo.host(),
                    self.0.to.node.conninfo.port(),
                ),
                crate::replication::slot_name,
            );
            let apis = members
                .iter()
                .map(|(m, p)| Ok((m.name().to_string(), Api::new(p)?)))
                .collect::<Result<Vec<_>>>()?;
            patch_any(&cluster, &apis, &patroni::resume_body(&leader))
                .await
                .with_context(|| format!("hand Patroni cluster {cluster} the new topology"))?;
            out.patroni
                .extend(wait_members(&cluster, &apis, |m| !m.paused).await?);
        }
        Ok(())
    }
}

#[async_trait]
impl Step for HaResume {
    type Output = HaResumeOut;
    fn id(&self) -> String {
        StepId::HaResume.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.0.ha_hosts(),
            action: format!(
                "repmgr: `primary register --force` on {}, `standby register --force` under its upstream on every other repmgr node, `daemon start` where repmgrd ended or runs unseen by its restarted server, `service unpause`; Patroni: PATCH /config {{\"standby_cluster\": …, \"pause\": false}} (a cluster without {} follows it as a standby cluster)",
                self.0.to.name(),
                self.0.to.name()
            ),
            proof: "`repmgr service status` shows every running repmgrd unpaused; every Patroni member reports no pause".into(),
            undo: "nothing (a rollback pauses them again)".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::NothingToUndo
    }
    async fn apply(&self, cx: &Cx) -> Result<HaResumeOut> {
        let mut out = HaResumeOut::default();
        self.repmgr(&mut out).await?;
        self.patroni(&mut out).await?;
        for n in &out.notes {
            cx.progress(&StepId::HaResume, n.clone());
        }
        Ok(out)
    }
}
