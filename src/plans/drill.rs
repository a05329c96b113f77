//! The engine drill (feature `failpoints` only): a plan of small, real, reversible side effects
//! on the old primary and on local disk, used by the crash-matrix tests to exercise the
//! journal, resume and rollback. It creates a table, rows and a replication slot on the
//! primary, so it is never part of a release build.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
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
    let mut plan = Plan::new(OPERATION);
    plan.push(Observe(on(&ep)));
    plan.push(CreateTable(on(&ep)));
    plan.push(InsertRows(on(&ep)));
    plan.push(CreateSlot(on(&ep)));
    plan.push(WriteMarker {
        path: marker_path(spec),
    });
    Ok(plan)
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

// The drill's step ids (its own plan; not part of StepId, which names the real ones).
const OBSERVE: &str = "observe";
const CREATE_TABLE: &str = "create_table";
const INSERT_ROWS: &str = "insert_rows";
const CREATE_SLOT: &str = "create_slot";
const WRITE_MARKER: &str = "write_marker";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Observed {
    lsn: String,
    system_identifier: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TableOut {
    table: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RowsOut {
    rows: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SlotOut {
    slot: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MarkerOut {
    path: PathBuf,
}

struct Observe(Target);

#[async_trait]
impl Step for Observe {
    type Output = Observed;
    fn id(&self) -> String {
        OBSERVE.into()
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
    async fn apply(&self, _: &Cx) -> Result<Observed> {
        let c = self.0.client().await?;
        let r = c
            .query_one("SELECT pg_current_wal_lsn()::text, system_identifier::text FROM pg_control_system()", &[])
            .await?;
        Ok(Observed {
            lsn: r.get(0),
            system_identifier: r.get(1),
        })
    }
}

struct CreateTable(Target);

#[async_trait]
impl Step for CreateTable {
    type Output = TableOut;
    fn id(&self) -> String {
        CREATE_TABLE.into()
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
    async fn probe(&self, _: &Cx) -> Result<Probe<TableOut>> {
        let c = self.0.client().await?;
        Ok(if table_exists(&c).await? {
            Probe::Done(TableOut {
                table: TABLE.into(),
            })
        } else {
            Probe::NotDone
        })
    }
    async fn apply(&self, _: &Cx) -> Result<TableOut> {
        let c = self.0.client().await?;
        c.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (n bigint PRIMARY KEY, note text)"
        ))
        .await?;
        Ok(TableOut {
            table: TABLE.into(),
        })
    }
    async fn compensate(&self, _: &Cx, _: Option<TableOut>) -> Result<()> {
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
        Ok(cx.get::<TableOut>(&CREATE_TABLE)?.table)
    }
}

#[async_trait]
impl Step for InsertRows {
    type Output = RowsOut;
    fn id(&self) -> String {
        INSERT_ROWS.into()
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
    async fn probe(&self, cx: &Cx) -> Result<Probe<RowsOut>> {
        let table = Self::table(cx)?;
        let c = self.0.client().await?;
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        Ok(if n == ROWS {
            Probe::Done(RowsOut { rows: n })
        } else {
            Probe::NotDone
        })
    }
    async fn apply(&self, cx: &Cx) -> Result<RowsOut> {
        let table = Self::table(cx)?;
        let c = self.0.client().await?;
        c.batch_execute(&format!(
            "INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, {ROWS}) g ON CONFLICT DO NOTHING"
        ))
        .await?;
        Ok(RowsOut { rows: ROWS })
    }
    async fn compensate(&self, _: &Cx, _: Option<RowsOut>) -> Result<()> {
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
    type Output = SlotOut;
    fn id(&self) -> String {
        CREATE_SLOT.into()
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
    async fn probe(&self, _: &Cx) -> Result<Probe<SlotOut>> {
        let c = self.0.client().await?;
        Ok(if slot_exists(&c).await? {
            Probe::Done(SlotOut { slot: SLOT.into() })
        } else {
            Probe::NotDone
        })
    }
    async fn apply(&self, _: &Cx) -> Result<SlotOut> {
        let c = self.0.client().await?;
        if !slot_exists(&c).await? {
            c.execute("SELECT pg_create_physical_replication_slot($1)", &[&SLOT])
                .await?;
        }
        Ok(SlotOut { slot: SLOT.into() })
    }
    async fn compensate(&self, _: &Cx, _: Option<SlotOut>) -> Result<()> {
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
        let lsn = cx.get::<Observed>(&OBSERVE)?.lsn;
        Ok(format!("run {} observed {lsn}\n", cx.run_id))
    }
}

#[async_trait]
impl Step for WriteMarker {
    type Output = MarkerOut;
    fn id(&self) -> String {
        WRITE_MARKER.into()
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
    async fn probe(&self, cx: &Cx) -> Result<Probe<MarkerOut>> {
        let want = Self::content(cx)?;
        Ok(match std::fs::read_to_string(&self.path) {
            Ok(have) if have == want => Probe::Done(MarkerOut {
                path: self.path.clone(),
            }),
            _ => Probe::NotDone,
        })
    }
    async fn apply(&self, cx: &Cx) -> Result<MarkerOut> {
        LocalHost::new(None)?
            .write_file(&self.path, Self::content(cx)?.as_bytes(), 0o600, None)
            .await
            .context("write the drill marker")?;
        Ok(MarkerOut {
            path: self.path.clone(),
        })
    }
    async fn compensate(&self, _: &Cx, _: Option<MarkerOut>) -> Result<()> {
        LocalHost::new(None)?.remove_file(&self.path).await
    }
}
