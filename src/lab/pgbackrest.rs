//! A pgBackRest repository for the lab (`lab up --pgbackrest`, `rehearse --pgbackrest`): the
//! old primary archives its WAL into a stanza `lab` in `DIR/pgbackrest/repo` and has one full
//! backup there, and the lab's spec clones with `[clone] method = "pgbackrest"`. Every site
//! shares the lab's file system, so the repository is reachable from each node's host, as a
//! shared repository (NFS, object storage) is in production.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use super::Lab;
use crate::host::{Cmd, Host};
use crate::pg::connect;
use crate::pg::server::StopMode;

pub const STANZA: &str = "lab";

/// Where the lab's pgBackRest configuration lives.
pub fn config_path(lab: &Lab) -> PathBuf {
    lab.dir.join("pgbackrest").join("pgbackrest.conf")
}

/// The spec's `[clone]` table when the lab has a repository.
pub fn clone_table(lab: &Lab) -> Option<String> {
    let config = config_path(lab);
    config.is_file().then(|| {
        format!(
            "\n[clone]\nmethod = \"pgbackrest\"\nstanza = \"{STANZA}\"\nconfig = {}\n",
            toml::Value::String(config.display().to_string())
        )
    })
}

fn pgbackrest(lab: &Lab, command: &str) -> Cmd {
    Cmd::new([
        "pgbackrest".to_string(),
        format!("--config={}", config_path(lab).display()),
        format!("--stanza={STANZA}"),
        command.to_string(),
    ])
    .timeout(Duration::from_secs(1800))
}

/// Make the repository: configuration, WAL archiving on the old primary (a restart), the
/// stanza and a full backup. Running it again takes another full backup.
pub async fn seed(lab: &Lab) -> Result<()> {
    let root = lab.dir.join("pgbackrest");
    let host = lab.node_host("old");
    for d in ["repo", "log", "lock", "spool"] {
        super::make_dir(&root.join(d), 0o750, &lab.host)?;
    }
    let config = format!(
        "[global]\nrepo1-path={root}/repo\nrepo1-retention-full=2\nlog-path={root}/log\n\
         lock-path={root}/lock\nspool-path={root}/spool\nstart-fast=y\nlog-level-console=warn\n\n\
         [{STANZA}]\npg1-path={data}\npg1-port={port}\npg1-socket-path={socket}\npg1-user=postgres\n",
        root = root.display(),
        data = lab.data_dir("old").display(),
        port = lab.port("old"),
        socket = lab.socket_dir().display(),
    );
    lab.host
        .write_file(&config_path(lab), config.as_bytes(), 0o640, None)
        .await?;
    let c = connect(&lab.endpoint("old", "postgres")).await?;
    c.batch_execute("ALTER SYSTEM SET archive_mode = on")
        .await?;
    c.batch_execute(&format!(
        "ALTER SYSTEM SET archive_command = 'pgbackrest --config={} --stanza={STANZA} archive-push %p'",
        config_path(lab).display()
    ))
    .await?;
    drop(c);
    let server = lab.server("old");
    server.stop(StopMode::Fast, Duration::from_secs(60)).await?;
    server
        .start(&lab.server_log("old"), Duration::from_secs(60))
        .await?;
    for step in ["stanza-create", "check", "backup"] {
        host.run_ok(&pgbackrest(lab, step))
            .await
            .with_context(|| format!("pgbackrest {step} for the lab's repository"))?;
    }
    Ok(())
}
