//! The engine drill (feature `failpoints` only): a plan of small, real, reversible side effects
//! on the old primary and on local disk, used by the crash-matrix tests to exercise the
//! journal, resume and rollback. It creates a table, rows and a replication slot on the
//! primary, so it is never part of a release build.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::engine::{Cx, Description, Kind, Plan, Probe, Step};
use crate::host::local::LocalHost;
use crate::host::Host;
use crate::pg::{connect, Endpoint};
use crate::spec::Spec;

pub const OPERATION: &str = "drill";
pub const TABLE: &str = "migrate_drill";
pub const SLOT: &str = "migrate_drill";
pub const ROWS: i64 = 100;

pub fn marker_path(spec: &Spec) -> PathBuf {
    spec.state_dir.join("drill-marker")
}

pub fn plan(spec: &Arc<Spec>) -> Result<Plan> {
    let ep = spec.primary().endpoint();
    let host = spec.primary().conninfo.host().to_string();
    let on = |e: &Endpoint| Target {
        ep: e.clone(),
        host: host.clone(),
    };
    Ok(Plan {
        operation: OPERATION.into(),
        steps: vec![
            Box::new(Observe(on(&ep))),
            Box::new(CreateTable(on(&ep))),
            Box::new(InsertRows(on(&ep))),
            Box::new(CreateSlot(on(&ep))),
            Box::new(WriteMarker {
                path: marker_path(spec),
            }),
        ],
    })
}

#[derive(Clone)]
struct Target {
    ep: Endpoint,
    host: String,
}

impl Target {
    async fn client(&self) -> Result<Client> {
        connect(&self.ep).await
    }
    fn describe(&self, action: &str, proof: &str, undo: &str) -> Description {
        Description {
            host: format!("{} ({})", self.ep.name, self.host),
            action: action.into(),
            proof: proof.into(),
            undo: undo.into(),
        }
    }
}

async fn table_exists(c: &Client) -> Result<bool> {
    Ok(c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&TABLE])
        .await?
        .get(0))
}

struct Observe(Target);

#[async_trait]
impl Step for Observe {
    fn id(&self) -> String {
        "observe".into()
    }
    fn describe(&self) -> Description {
        self.0.describe(
            "SELECT pg_current_wal_lsn(), system_identifier FROM pg_control_system()",
            "a row",
            "nothing",
        )
    }
    fn kind(&self) -> Kind {
        Kind::ReadOnly
    }
    async fn apply(&self, _: &Cx) -> Result<Value> {
        let c = self.0.client().await?;
        let r = c
            .query_one("SELECT pg_current_wal_lsn()::text, system_identifier::text FROM pg_control_system()", &[])
            .await?;
        Ok(json!({ "lsn": r.get::<_, String>(0), "system_identifier": r.get::<_, String>(1) }))
    }
}

struct CreateTable(Target);

#[async_trait]
impl Step for CreateTable {
    fn id(&self) -> String {
        "create_table".into()
    }
    fn describe(&self) -> Description {
        self.0.describe(
            &format!("CREATE TABLE IF NOT EXISTS {TABLE} (n bigint PRIMARY KEY, note text)"),
            &format!("to_regclass('{TABLE}') is not null"),
            &format!("DROP TABLE IF EXISTS {TABLE}"),
        )
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn probe(&self, _: &Cx) -> Result<Probe> {
        let c = self.0.client().await?;
        Ok(if table_exists(&c).await? {
            Probe::Done(json!({ "table": TABLE }))
        } else {
            Probe::NotDone
        })
    }
    async fn apply(&self, _: &Cx) -> Result<Value> {
        let c = self.0.client().await?;
        c.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (n bigint PRIMARY KEY, note text)"
        ))
        .await?;
        Ok(json!({ "table": TABLE }))
    }
    async fn compensate(&self, _: &Cx, _: Option<&Value>) -> Result<()> {
        self.0
            .client()
            .await?
            .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}"))
            .await?;
        Ok(())
    }
}

struct InsertRows(Target);

impl InsertRows {
    /// The table comes from the journaled output of `create_table`, never from the spec.
    fn table(cx: &Cx) -> Result<String> {
        cx.output("create_table")
            .and_then(|o| o["table"].as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("create_table recorded no table name"))
    }
}

#[async_trait]
impl Step for InsertRows {
    fn id(&self) -> String {
        "insert_rows".into()
    }
    fn describe(&self) -> Description {
        self.0.describe(
            &format!("INSERT INTO {TABLE} SELECT g, 'row ' || g FROM generate_series(1, {ROWS}) g ON CONFLICT DO NOTHING"),
            &format!("count(*) = {ROWS}"),
            &format!("DELETE FROM {TABLE}"),
        )
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn probe(&self, cx: &Cx) -> Result<Probe> {
        let table = Self::table(cx)?;
        let c = self.0.client().await?;
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        Ok(if n == ROWS {
            Probe::Done(json!({ "rows": n }))
        } else {
            Probe::NotDone
        })
    }
    async fn apply(&self, cx: &Cx) -> Result<Value> {
        let table = Self::table(cx)?;
        let c = self.0.client().await?;
        c.batch_execute(&format!(
            "INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, {ROWS}) g ON CONFLICT DO NOTHING"
        ))
        .await?;
        Ok(json!({ "rows": ROWS }))
    }
    async fn compensate(&self, _: &Cx, _: Option<&Value>) -> Result<()> {
        let c = self.0.client().await?;
        if table_exists(&c).await? {
            c.batch_execute(&format!("DELETE FROM {TABLE}")).await?;
        }
        Ok(())
    }
}

struct CreateSlot(Target);

async fn slot_exists(c: &Client) -> Result<bool> {
    Ok(c.query_one(
        "SELECT count(*) > 0 FROM pg_replication_slots WHERE slot_name = $1",
        &[&SLOT],
    )
    .await?
    .get(0))
}

#[async_trait]
impl Step for CreateSlot {
    fn id(&self) -> String {
        "create_slot".into()
    }
    fn describe(&self) -> Description {
        self.0.describe(
            &format!("SELECT pg_create_physical_replication_slot('{SLOT}')"),
            "the slot is listed in pg_replication_slots",
            &format!("SELECT pg_drop_replication_slot('{SLOT}')"),
        )
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn probe(&self, _: &Cx) -> Result<Probe> {
        let c = self.0.client().await?;
        Ok(if slot_exists(&c).await? {
            Probe::Done(json!({ "slot": SLOT }))
        } else {
            Probe::NotDone
        })
    }
    async fn apply(&self, _: &Cx) -> Result<Value> {
        let c = self.0.client().await?;
        if !slot_exists(&c).await? {
            c.execute("SELECT pg_create_physical_replication_slot($1)", &[&SLOT])
                .await?;
        }
        Ok(json!({ "slot": SLOT }))
    }
    async fn compensate(&self, _: &Cx, _: Option<&Value>) -> Result<()> {
        let c = self.0.client().await?;
        if slot_exists(&c).await? {
            c.execute("SELECT pg_drop_replication_slot($1)", &[&SLOT])
                .await?;
        }
        Ok(())
    }
}

struct WriteMarker {
    path: PathBuf,
}

impl WriteMarker {
    fn content(cx: &Cx) -> Result<String> {
        let lsn = cx
            .output("observe")
            .and_then(|o| o["lsn"].as_str())
            .ok_or_else(|| anyhow!("observe recorded no LSN"))?;
        Ok(format!("run {} observed {lsn}\n", cx.run_id))
    }
}

#[async_trait]
impl Step for WriteMarker {
    fn id(&self) -> String {
        "write_marker".into()
    }
    fn describe(&self) -> Description {
        Description {
            host: "local".into(),
            action: format!("write {}", self.path.display()),
            proof: "the file holds the run id and the observed LSN".into(),
            undo: format!("remove {}", self.path.display()),
        }
    }
    fn kind(&self) -> Kind {
        Kind::Reversible
    }
    async fn probe(&self, cx: &Cx) -> Result<Probe> {
        let want = Self::content(cx)?;
        Ok(match std::fs::read_to_string(&self.path) {
            Ok(have) if have == want => Probe::Done(json!({ "path": self.path })),
            _ => Probe::NotDone,
        })
    }
    async fn apply(&self, cx: &Cx) -> Result<Value> {
        LocalHost::new(None)?
            .write_file(&self.path, Self::content(cx)?.as_bytes(), 0o600, None)
            .await
            .context("write the drill marker")?;
        Ok(json!({ "path": self.path }))
    }
    async fn compensate(&self, _: &Cx, _: Option<&Value>) -> Result<()> {
        LocalHost::new(None)?.remove_file(&self.path).await
    }
}
