//! SQL that several modules run, written once.

use anyhow::Result;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

/// `pg_is_in_recovery()`: true on a standby.
pub async fn in_recovery(c: &Client) -> Result<bool> {
    Ok(one(c, "SELECT pg_is_in_recovery()").await?.get(0))
}

/// The one row of a query without parameters, in one round trip: the driver's `query_one`
/// prepares the statement first (a round trip more, which inside the write pause costs as
/// much as the query).
pub async fn one(c: &Client, sql: &str) -> Result<Row> {
    let mut rows = c.query_typed(sql, &[]).await?;
    match rows.len() {
        1 => Ok(rows.remove(0)),
        n => anyhow::bail!("expected one row, got {n}: {sql}"),
    }
}

/// The LSN in the first column of a one-row query (`…::text`); NULL is `None`, as is text that
/// is no LSN.
pub async fn lsn(c: &Client, sql: &str) -> Result<Option<super::Lsn>> {
    let v: Option<String> = one(c, sql).await?.get(0);
    Ok(v.and_then(|s| s.parse().ok()))
}

/// The row of a query without parameters that returns at most one, in one round trip.
pub async fn opt(c: &Client, sql: &str) -> Result<Option<Row>> {
    let mut rows = c.query_typed(sql, &[]).await?;
    match rows.len() {
        0 => Ok(None),
        1 => Ok(Some(rows.remove(0))),
        n => anyhow::bail!("expected at most one row, got {n}: {sql}"),
    }
}

/// The walreceiver's (status, received_tli), if one runs.
pub async fn walreceiver(c: &Client) -> Result<Option<(String, i32)>> {
    Ok(
        opt(c, "SELECT status, received_tli FROM pg_stat_wal_receiver")
            .await?
            .map(|r| (r.get(0), r.get(1))),
    )
}

/// The state of the newest `pg_stat_replication` row for `application_name`.
pub async fn replication_state(c: &Client, application_name: &str) -> Result<Option<String>> {
    Ok(c.query_typed(
        "SELECT state FROM pg_stat_replication WHERE application_name = $1
              ORDER BY backend_start DESC LIMIT 1",
        &[(&application_name, Type::TEXT)],
    )
    .await?
    .first()
    .map(|r| r.get(0)))
}

/// Create a physical slot reserving WAL now, unless it exists (a standby can hold one too).
pub async fn create_physical_slot(c: &Client, slot: &str) -> Result<()> {
    // Typed: no prepare round trip (this runs inside the write pause).
    c.query_typed(
        "SELECT pg_create_physical_replication_slot($1::name, true)
          WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1::name)",
        &[(&slot, Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// Drop a slot if it exists and nothing streams from it.
pub async fn drop_inactive_slot(c: &Client, slot: &str) -> Result<()> {
    c.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
        &[&slot],
    )
    .await?;
    Ok(())
}

/// Whether a slot exists.
pub async fn slot_exists(c: &Client, slot: &str) -> Result<bool> {
    Ok(c.query_one(
        "SELECT count(*) > 0 FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await?
    .get(0))
}
