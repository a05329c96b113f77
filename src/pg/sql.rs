//! SQL that several modules run, written once.

use anyhow::Result;
use tokio_postgres::Client;

/// `pg_is_in_recovery()`: true on a standby.
pub async fn in_recovery(c: &Client) -> Result<bool> {
    Ok(c.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0))
}

/// The walreceiver's (status, received_tli), if one runs.
pub async fn walreceiver(c: &Client) -> Result<Option<(String, i32)>> {
    Ok(
        c.query_opt("SELECT status, received_tli FROM pg_stat_wal_receiver", &[])
            .await?
            .map(|r| (r.get(0), r.get(1))),
    )
}

/// The state of the newest `pg_stat_replication` row for `application_name`.
pub async fn replication_state(c: &Client, application_name: &str) -> Result<Option<String>> {
    Ok(c.query_opt(
        "SELECT state FROM pg_stat_replication WHERE application_name = $1
              ORDER BY backend_start DESC LIMIT 1",
        &[&application_name],
    )
    .await?
    .map(|r| r.get(0)))
}

/// Create a physical slot reserving WAL now, unless it exists (a standby can hold one too).
pub async fn create_physical_slot(c: &Client, slot: &str) -> Result<()> {
    c.execute(
        "SELECT pg_create_physical_replication_slot($1, true)
          WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
        &[&slot],
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
