//! Re-sync: a node that cannot follow the primary's timeline (it wrote on its own, or
//! received WAL the new primary never had) becomes its standby again. `pg_rewind` first
//! (node-local settings kept and re-applied: it copies the primary's); where the rewind is
//! impossible (no wal_log_hints or checksums, WAL gone), a fresh clone. Then it starts and must
//! stream on the primary's timeline.
//!
//! `m` is the node with the primary as its upstream; `primary` the serving primary.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::member::{Member, Port};
use super::switchover::follow::wait_following;
use super::switchover::proof::controldata;
use crate::engine::{Cx, Description, Kind, Step};
use crate::host::Cmd;
use crate::pg::secret::resolve_password;
use crate::pg::service::StopMode;
use crate::pg::{connect, sql};
use crate::steps::id::StepId;

#[derive(Clone)]
pub struct Resync {
    pub m: Member,
    pub primary: Member,
}

/// How long a stop or a start may take.
const SERVER_LIMIT: Duration = Duration::from_secs(120);
/// How long the rejoined node may take to stream.
const FOLLOW_LIMIT: Duration = Duration::from_secs(120);

/// How long one database call of a re-sync may take (a CHECKPOINT: [`CHECKPOINT_LIMIT`]).
const SQL_LIMIT: Duration = Duration::from_secs(30);
const CHECKPOINT_LIMIT: Duration = Duration::from_secs(600);

/// `work` within `limit`, or an error naming `what`.
async fn within<T>(
    what: &str,
    limit: Duration,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {limit:?}"))?
}

impl Resync {
    /// The primary's timeline.
    async fn timeline(&self) -> Result<i32> {
        within("the primary's timeline", SQL_LIMIT, async {
            let c = connect(&self.primary.endpoint()).await?;
            if sql::in_recovery(&c).await? {
                bail!("{} is not a primary", self.primary.name());
            }
            let f: String = c
                .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
                .await?
                .get(0);
            Ok(i32::from_str_radix(f.get(..8).unwrap_or_default(), 16)?)
        })
        .await
    }

    /// The slot the node streams through, on the primary.
    async fn slot(&self) -> Result<()> {
        within("create the slot on the primary", SQL_LIMIT, async {
            let c = connect(&self.primary.endpoint()).await?;
            sql::create_physical_slot(&c, &self.m.slot()).await
        })
        .await
    }
}

/// `settings`: what must survive the re-sync, read before anything changes.
pub struct KeepSettings(pub Resync);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptOut {
    /// The node's postgresql.auto.conf (its own port, cluster_name, ALTER SYSTEM settings).
    pub auto_conf: String,
    /// It already streams from the primary on its timeline: nothing to do.
    pub following: bool,
}

#[async_trait]
impl Step for KeepSettings {
    type Output = KeptOut;
    fn id(&self) -> String {
        StepId::Settings.to_string()
    }
    fn describe(&self) -> Description {
        Description {
            host: self.0.m.host_label(),
            action: format!(
                "read {}/postgresql.auto.conf; check whether it already streams from {}",
                self.0.m.node.data_dir.display(),
                self.0.primary.name()
            ),
            proof: "journaled".into(),
            undo: "nothing (read-only)".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, cx: &Cx) -> Result<KeptOut> {
        let r = &self.0;
        let tli = r.timeline().await?;
        let following = wait_following(
            &r.m,
            &r.primary,
            tli,
            Duration::from_secs(2),
            cx,
            &StepId::Settings,
        )
        .await
        .is_ok();
        let auto =
            r.m.host
                .read_file(&r.m.node.data_dir.join("postgresql.auto.conf"))
                .await
                .context("read its postgresql.auto.conf")?;
        Ok(KeptOut {
            auto_conf: String::from_utf8_lossy(&auto).into_owned(),
            following,
        })
    }
}

/// `rewind`: stop the node (it stays marked as a standby), make sure it shut down cleanly,
/// and rewind it to the primary's timeline.
pub struct Rewind(pub Resync);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewindOut {
    pub rewound: bool,
    /// Why not (the next step re-clones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl Rewind {
    async fn rewind(&self, kept: &KeptOut) -> Result<std::result::Result<(), String>> {
        let r = &self.0;
        let server = r.m.server()?;
        server.stop(StopMode::Fast, SERVER_LIMIT).await?;
        // Its own settings as the primary's standby, and the mark, first: whatever starts it
        // from now on (the clean shutdown below, a resume after a crash in the middle of
        // pg_rewind, which copies the primary's settings) starts a standby on its own port.
        r.m.host
            .write_files(&r.m.standby_files(kept.auto_conf.as_bytes(), Port::Keep)?)
            .await?;
        let ctl = controldata(&r.m).await?;
        if !ctl.state.starts_with("shut down") {
            // pg_rewind needs a clean shutdown: recover as a standby, then stop.
            server.start(&r.m.node.log_file, SERVER_LIMIT).await?;
            server.stop(StopMode::Fast, SERVER_LIMIT).await?;
        }
        // The control file must show the primary's timeline (P7).
        within("CHECKPOINT on the primary", CHECKPOINT_LIMIT, async {
            Ok(connect(&r.primary.endpoint())
                .await?
                .batch_execute("CHECKPOINT")
                .await?)
        })
        .await?;
        let source = &r.primary.node;
        let password = resolve_password(source.password.as_ref(), &source.conninfo)?;
        let user = source
            .conninfo
            .get("user")
            .unwrap_or("postgres")
            .to_string();
        let line = password.map(|p| super::member::passfile_line(&user, &p));
        let cmd = Cmd::new([
            server.tool("pg_rewind"),
            "-D".into(),
            r.m.node.data_dir.display().to_string(),
            format!("--source-server={}", source.conninfo.to_libpq_string()),
        ])
        .timeout(Duration::from_secs(3600));
        let out = r.m.run_with_passfile(cmd, line.as_deref(), false).await?;
        if !out.success() {
            return Ok(Err(out.stderr_tail()));
        }
        let said = format!(
            "{}\n{}",
            out.stdout_text(),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(why) = untrusted_rewind(&said) {
            return Ok(Err(why));
        }
        // Rewound, the primary's settings copied over its own: the crash matrix kills here.
        crate::engine::failpoint::point(&StepId::Rewind.to_string(), "rewound").await;
        // pg_rewind copied the primary's postgresql.auto.conf: the node's own comes back, as
        // the primary's standby.
        r.m.host
            .write_files(&r.m.standby_files(kept.auto_conf.as_bytes(), Port::Keep)?)
            .await?;
        Ok(Ok(()))
    }
}

#[async_trait]
impl Step for Rewind {
    type Output = RewindOut;
    fn id(&self) -> String {
        StepId::Rewind.to_string()
    }
    fn describe(&self) -> Description {
        let r = &self.0;
        Description {
            host: r.m.host_label(),
            action: format!(
                "{} (fast), standby.signal, a clean shutdown if it crashed, CHECKPOINT on {p}, pg_rewind -D {} --source-server=<{p}>, then its own postgresql.auto.conf as {p}'s standby",
                r.m.server_words("stop"),
                r.m.node.data_dir.display(),
                p = r.primary.name()
            ),
            proof: "pg_rewind exits 0 (otherwise the next step re-clones)".into(),
            undo: "none: what the node wrote on its own is discarded".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::NothingToUndo
    }
    async fn apply(&self, cx: &Cx) -> Result<RewindOut> {
        let kept: KeptOut = cx.get(&StepId::Settings)?;
        if kept.following {
            return Ok(RewindOut {
                rewound: false,
                why: Some("not needed: it streams from the primary".into()),
            });
        }
        Ok(match self.rewind(&kept).await? {
            Ok(()) => RewindOut {
                rewound: true,
                why: None,
            },
            Err(why) => {
                cx.progress(
                    &StepId::Rewind,
                    format!("pg_rewind failed: {why}; re-cloning"),
                );
                RewindOut {
                    rewound: false,
                    why: Some(why),
                }
            }
        })
    }
}

/// Pure: why a successful pg_rewind is not trusted. "No rewind required" means both are on
/// one timeline; a node that cannot follow although it is on the primary's timeline was
/// started as a primary without a promotion (standby.signal removed), and wrote WAL of its
/// own there, which pg_rewind cannot see. Only a re-clone is sure.
fn untrusted_rewind(output: &str) -> Option<String> {
    // "servers diverged at …" then "no rewind required": the node is behind the fork, which
    // it can follow; "on the same timeline": nothing tells a fork from a lag.
    (output.contains("same timeline") && output.contains("no rewind required")).then(|| {
        "pg_rewind found both on one timeline (\"no rewind required\"), yet the node did not follow: it may have written on that timeline as a primary, which pg_rewind cannot detect".to_string()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_rewind_required_is_not_trusted() {
        let same = "pg_rewind: source and target cluster are on the same timeline\npg_rewind: no rewind required\n";
        assert!(super::untrusted_rewind(same).is_some());
        assert!(super::untrusted_rewind("pg_rewind: servers diverged at WAL location 0/3000148 on timeline 2\npg_rewind: Done!\n").is_none());
        // Behind the fork point: nothing to rewind, and it can follow.
        assert!(super::untrusted_rewind("pg_rewind: servers diverged at WAL location 0/3000148 on timeline 2\npg_rewind: no rewind required\n").is_none());
    }
}

/// `reclone`: when the rewind was impossible, a fresh copy of the primary.
pub struct Reclone(pub Resync);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecloneOut {
    pub recloned: bool,
}

#[async_trait]
impl Step for Reclone {
    type Output = RecloneOut;
    fn id(&self) -> String {
        StepId::Reclone.to_string()
    }
    fn describe(&self) -> Description {
        let r = &self.0;
        Description {
            host: r.m.host_label(),
            action: format!(
                "only if the rewind failed: empty {}, pg_basebackup from {} through slot {}, its own postgresql.auto.conf as the primary's standby",
                r.m.node.data_dir.display(),
                r.primary.name(),
                r.m.slot()
            ),
            proof: "pg_basebackup exits 0".into(),
            undo: "none".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::NothingToUndo
    }
    async fn apply(&self, cx: &Cx) -> Result<RecloneOut> {
        let kept: KeptOut = cx.get(&StepId::Settings)?;
        let rewind: RewindOut = cx.get(&StepId::Rewind)?;
        if kept.following || rewind.rewound {
            return Ok(RecloneOut { recloned: false });
        }
        let r = &self.0;
        let server = r.m.server()?;
        server.stop(StopMode::Fast, SERVER_LIMIT).await?;
        let data = r.m.node.data_dir.display().to_string();
        cx.progress(&StepId::Reclone, format!("emptying {data}"));
        r.m.host
            .run_ok(&Cmd::new([
                "find",
                data.as_str(),
                "-mindepth",
                "1",
                "-delete",
            ]))
            .await?;
        r.slot().await?;
        let conninfo = r.m.replication_conninfo(None)?;
        cx.progress(
            &StepId::Reclone,
            format!("pg_basebackup from {}", r.primary.name()),
        );
        r.m.run_with_replication_password(
            super::chain::basebackup_cmd(&r.m, &server, &conninfo),
            true,
        )
        .await
        .context("re-clone with pg_basebackup")?;
        r.m.host
            .write_files(&r.m.standby_files(kept.auto_conf.as_bytes(), Port::Keep)?)
            .await?;
        Ok(RecloneOut { recloned: true })
    }
}

/// `rejoin`: start it and prove it streams from the primary on its timeline.
pub struct Rejoin(pub Resync);

#[async_trait]
impl Step for Rejoin {
    type Output = super::switchover::reverse::TimelineOut;
    fn id(&self) -> String {
        StepId::Rejoin.to_string()
    }
    fn describe(&self) -> Description {
        let r = &self.0;
        Description {
            host: r.m.host_label(),
            action: format!(
                "slot {} on {p}; {} (as a standby of {p})",
                r.m.slot(),
                r.m.server_words("start"),
                p = r.primary.name()
            ),
            proof: "pg_stat_wal_receiver streaming on the primary's timeline, and a streaming row on the primary".into(),
            undo: "nothing".into(),
        }
    }
    fn kind(&self) -> Kind {
        Kind::NothingToUndo
    }
    async fn apply(&self, cx: &Cx) -> Result<super::switchover::reverse::TimelineOut> {
        let r = &self.0;
        let tli = r.timeline().await?;
        r.slot().await?;
        r.m.server()?
            .launch_unless_running(&r.m.node.log_file)
            .await?;
        wait_following(&r.m, &r.primary, tli, FOLLOW_LIMIT, cx, &StepId::Rejoin).await?;
        Ok(super::switchover::reverse::TimelineOut {
            timeline: i64::from(tli),
        })
    }
}
