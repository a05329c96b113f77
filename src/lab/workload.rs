//! Load for rehearsals and tests: growing the `app` database, and a writer whose every
//! acknowledged commit is recorded, so that zero loss can be checked row by row.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

use crate::pg::{connect, Endpoint};

/// Grow `app` by about `megabytes` MiB (table `bulk`, in batches so WAL flows steadily).
pub async fn grow_app(ep: &Endpoint, megabytes: u64) -> Result<()> {
    let c = connect(ep).await?;
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS bulk (id bigint PRIMARY KEY, payload text NOT NULL)",
    )
    .await?;
    // ~256 bytes per row on disk with the index.
    let rows = megabytes * 4096;
    let start: i64 = c
        .query_one("SELECT coalesce(max(id), 0) FROM bulk", &[])
        .await?
        .get(0);
    let batch = 100_000i64;
    let mut done = 0i64;
    while (done as u64) < rows {
        let n = batch.min(rows as i64 - done);
        let from = start + done + 1;
        c.execute(
            "INSERT INTO bulk SELECT g, repeat(md5(g::text), 6) FROM generate_series($1::bigint, $2::bigint) g",
            &[&from, &(from + n - 1)],
        )
        .await?;
        done += n;
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Ack {
    pub client: i32,
    pub seq: i64,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WriterReport {
    pub acks: Vec<Ack>,
    /// Error messages clients saw (connection errors, query errors), in order.
    pub errors: Vec<String>,
    /// When each of `errors` happened.
    pub error_times: Vec<DateTime<Utc>>,
}

/// `clients` concurrent writers, each committing `INSERT INTO ledger (client, seq)` with
/// increasing seq through `ep`, recording each acknowledged commit. Errors are recorded and the
/// client reconnects and goes on with the next number.
pub struct Writer {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    report: Arc<Mutex<WriterReport>>,
}

impl Writer {
    /// `eps`: where to write; on every (re)connect the first that is a primary is used, so the
    /// writer follows a switchover without a traffic layer.
    pub fn start(eps: Vec<Endpoint>, clients: i32, pause: Duration) -> Writer {
        let eps: Vec<Endpoint> = eps.into_iter().map(as_application).collect();
        let (stop, rx) = watch::channel(false);
        let report = Arc::new(Mutex::new(WriterReport::default()));
        let tasks = (0..clients)
            .map(|client| {
                let eps = eps.clone();
                let rx = rx.clone();
                let report = report.clone();
                tokio::spawn(async move { write_loop(eps, client, pause, rx, report).await })
            })
            .collect();
        Writer {
            stop,
            tasks,
            report,
        }
    }

    /// What the writer has recorded so far (it goes on).
    pub fn report_so_far(&self) -> WriterReport {
        self.report.lock().expect("report").clone()
    }

    pub fn acked(&self) -> usize {
        self.report.lock().expect("report").acks.len()
    }

    pub async fn stop(self) -> WriterReport {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let r = self.report.lock().expect("report").clone();
        r
    }
}

/// The writer is the application, not the tool: without this its sessions would carry the
/// tool's default `application_name` ("migrate"), which the fence and the hold's list of
/// blockers leave alone as the tool's own. An empty name, the server's default: most drivers
/// send none unless told to (libpq, psycopg, pgx, node-postgres; JDBC does). An endpoint that
/// names one keeps it.
fn as_application(mut ep: Endpoint) -> Endpoint {
    if ep.conninfo.get("application_name").is_none() {
        ep.conninfo.set("application_name", "");
    }
    ep
}

async fn connect_primary(eps: &[Endpoint]) -> Result<tokio_postgres::Client> {
    let mut last = anyhow::anyhow!("no endpoint");
    for ep in eps {
        match connect(ep).await {
            Ok(c) if eps.len() == 1 => return Ok(c),
            Ok(c) => match c.query_one("SELECT pg_is_in_recovery()", &[]).await {
                Ok(r) if !r.get::<_, bool>(0) => return Ok(c),
                Ok(_) => last = anyhow::anyhow!("{} is a standby", ep.name),
                Err(e) => last = e.into(),
            },
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn write_loop(
    eps: Vec<Endpoint>,
    client: i32,
    pause: Duration,
    stop: watch::Receiver<bool>,
    report: Arc<Mutex<WriterReport>>,
) {
    let mut seq: i64 = 0;
    let mut conn = None;
    while !*stop.borrow() {
        if conn.is_none() {
            match connect_primary(&eps).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    {
                        let mut r = report.lock().expect("report");
                        r.errors.push(format!("client {client}: {e:#}"));
                        r.error_times.push(Utc::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let c = conn.as_ref().expect("connected");
        seq += 1;
        // Simple query protocol: through PgBouncer in transaction pooling, named prepared
        // statements would land on other server connections. The values are our own integers.
        match c
            .batch_execute(&format!(
                "INSERT INTO ledger (client, seq) VALUES ({client}, {seq})"
            ))
            .await
        {
            Ok(()) => report.lock().expect("report").acks.push(Ack {
                client,
                seq,
                at: Utc::now(),
            }),
            Err(e) => {
                {
                    let mut r = report.lock().expect("report");
                    r.errors.push(format!(
                        "client {client}: {}",
                        crate::pg::conn::error_chain_text(&e)
                    ));
                    r.error_times.push(Utc::now());
                }
                conn = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// The acknowledged rows missing from `ep`'s ledger.
pub async fn missing_acks(ep: &Endpoint, acks: &[Ack]) -> Result<Vec<(i32, i64)>> {
    let c = connect(ep).await?;
    let rows = c.query("SELECT client, seq FROM ledger", &[]).await?;
    let have: std::collections::HashSet<(i32, i64)> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(acks
        .iter()
        .map(|a| (a.client, a.seq))
        .filter(|k| !have.contains(k))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::Conninfo;

    fn endpoint(conninfo: &str) -> Endpoint {
        Endpoint::new("app", Conninfo::parse(conninfo).unwrap(), None)
    }

    /// The writer never goes by the tool's name (the fence spares `migrate%` sessions); a name
    /// the endpoint gives is kept.
    #[test]
    fn the_writer_sends_no_name_of_its_own_and_keeps_a_given_one() {
        let bare = as_application(endpoint("host=h port=1 user=u dbname=app"));
        assert_eq!(bare.conninfo.get("application_name"), Some(""));
        let named = as_application(endpoint(
            "host=h port=1 user=u dbname=app application_name=shop",
        ));
        assert_eq!(named.conninfo.get("application_name"), Some("shop"));
    }
}
