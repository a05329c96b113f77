//! One initialized, provisioned cluster per machine and PostgreSQL version, copied for each
//! lab: `initdb` and loading the sample data run once, not once per test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::host::local::LocalHost;
use crate::host::{Cmd, Host};
use crate::pg::server::{Server, StopMode};
use crate::pg::{connect, Conninfo, Endpoint};

/// Bump when the template's contents change, so stale copies are not reused.
const TEMPLATE_FORMAT: u32 = 3;

/// Settings every lab node shares (node-local ones are appended per node).
pub const COMMON_CONF: &str = "\
# --- migrate lab: settings shared by every node ---
listen_addresses = '127.0.0.1'
max_connections = 100
shared_buffers = 32MB
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_log_hints = on
hot_standby = on
wal_keep_size = 128MB
# Bounds what a migrate slot can retain while its standby is down (plan's slot_bound check).
max_slot_wal_keep_size = 2GB
# Standbys retry a lost upstream after 1 s instead of 5 s (pitfall P13: a promotion or a
# cascade reconnect otherwise waits the full interval).
wal_retrieve_retry_interval = 1s
max_wal_size = 512MB
logging_collector = off
log_line_prefix = '%m [%p] %q%a '
log_connections = off
";

pub const HBA: &str = "\
# migrate lab: socket for the local superuser, passwords over TCP
local   all          all                   trust
host    all          all    127.0.0.1/32   scram-sha-256
host    all          all    ::1/128        scram-sha-256
host    replication  all    127.0.0.1/32   scram-sha-256
host    replication  all    ::1/128        scram-sha-256
";

pub(crate) const SAMPLE_SQL: &str = "
CREATE TABLE accounts (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    balance numeric(12,2) NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO accounts SELECT g, 'owner-' || g, (g % 1000), now() FROM generate_series(1, 10000) g;
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts (id),
    amount numeric(12,2) NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO orders (account_id, amount) SELECT (g % 10000) + 1, (g % 500) FROM generate_series(1, 20000) g;
-- The rehearsal writer's numbered rows: one sequence per client.
CREATE TABLE ledger (
    client int NOT NULL,
    seq bigint NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (client, seq)
);
";

pub fn template_root(version: &str) -> PathBuf {
    let base = std::env::var_os("MIGRATE_TEMPLATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("migrate-template-{version}-v{TEMPLATE_FORMAT}"))
}

/// The template's data directory, built first if needed (under a file lock, so concurrent
/// processes build it once).
pub async fn ensure(host: &LocalHost, bin_dir: &Path) -> Result<PathBuf> {
    let version = server_version(host, bin_dir).await?;
    let root = template_root(&version);
    let data = root.join("data");
    if root.join("READY").exists() {
        return Ok(data);
    }
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let lock_path = sibling(&root, "lock");
    let file = std::fs::File::create(&lock_path)
        .with_context(|| format!("create {}", lock_path.display()))?;
    let _lock = tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive))
        .await?
        .map_err(|(_, e)| anyhow::anyhow!("lock {}: {e}", lock_path.display()))?;
    if root.join("READY").exists() {
        return Ok(data);
    }
    let build = sibling(&root, &format!("build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&build);
    build_template(host, bin_dir, &build)
        .await
        .context("build the lab's template cluster")?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&build, &root)
        .with_context(|| format!("move the template into {}", root.display()))?;
    std::fs::write(root.join("READY"), version)?;
    Ok(data)
}

/// `…/migrate-template-15.18-v1` → `…/migrate-template-15.18-v1.<suffix>` (the version's dots
/// are not an extension).
fn sibling(root: &Path, suffix: &str) -> PathBuf {
    let mut name = root.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    root.with_file_name(name)
}

async fn server_version(host: &LocalHost, bin_dir: &Path) -> Result<String> {
    let out = host
        .run_ok(&Cmd::new([
            bin_dir.join("postgres").display().to_string(),
            "-V".into(),
        ]))
        .await?;
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" → "15.18"
    let text = out.stdout_text();
    Ok(text
        .split_whitespace()
        .nth(2)
        .unwrap_or("unknown")
        .to_string())
}

async fn build_template(host: &LocalHost, bin_dir: &Path, build: &Path) -> Result<()> {
    super::make_dir(build, 0o755, host)?;
    let data = build.join("data");
    let tool = |n: &str| bin_dir.join(n).display().to_string();
    host.run_ok(
        &Cmd::new([
            tool("initdb"),
            "-D".into(),
            data.display().to_string(),
            "-U".into(),
            "postgres".into(),
            "-E".into(),
            "UTF8".into(),
            "--locale=C.UTF-8".into(),
            "--auth-local=trust".into(),
            "--auth-host=scram-sha-256".into(),
            "--no-sync".into(),
            "--no-instructions".into(),
        ])
        .timeout(Duration::from_secs(300)),
    )
    .await?;
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf)?;
    text.push('\n');
    text.push_str(COMMON_CONF);
    host.write_file(&conf, text.as_bytes(), 0o600, None).await?;
    host.write_file(&data.join("pg_hba.conf"), HBA.as_bytes(), 0o600, None)
        .await?;
    // Socket only while building: no TCP port is needed, so nothing can clash.
    let mut opts = String::new();
    opts.push_str(&format!(
        "-c listen_addresses= -k {} -p 5999",
        build.display()
    ));
    let log = build.join("build.log");
    host.run_ok(
        &Cmd::new([
            tool("pg_ctl"),
            "start".into(),
            "-D".into(),
            data.display().to_string(),
            "-l".into(),
            log.display().to_string(),
            "-w".into(),
            "-o".into(),
            opts,
        ])
        .timeout(Duration::from_secs(120)),
    )
    .await?;
    let provision = async {
        let sock = Conninfo::parse(&format!(
            "host={} port=5999 user=postgres dbname=postgres sslmode=disable",
            build.display()
        ))?;
        let admin = connect(&Endpoint::new("template", sock.clone(), None)).await?;
        admin
            .batch_execute("CREATE ROLE repl WITH REPLICATION LOGIN")
            .await?;
        // CREATE DATABASE refuses to run in the implicit transaction of a multi-statement batch.
        admin.batch_execute("CREATE DATABASE app").await?;
        let app = connect(&Endpoint::new("template", sock.with("dbname", "app"), None)).await?;
        app.batch_execute(SAMPLE_SQL).await?;
        app.batch_execute("CHECKPOINT").await?;
        anyhow::Ok(())
    }
    .await;
    Server::new(std::sync::Arc::new(host.clone()), bin_dir, &data)
        .stop(StopMode::Fast, Duration::from_secs(60))
        .await?;
    provision?;
    let _ = std::fs::remove_file(&log);
    Ok(())
}
