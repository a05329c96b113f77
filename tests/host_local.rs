//! Local host control, and `docker exec` host control at the argv level.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use migrate::host::local::LocalHost;
use migrate::host::remote::RemoteHost;
use migrate::host::{Cmd, Host};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn world_traversable_tempdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[tokio::test]
async fn local_host_runs_argv_as_the_given_user() {
    let host = if is_root() {
        LocalHost::new(Some("postgres")).unwrap()
    } else {
        LocalHost::new(None).unwrap()
    };
    let out = host.run_ok(&Cmd::new(["id", "-un"])).await.unwrap();
    let expected = if is_root() {
        "postgres".to_string()
    } else {
        std::env::var("USER").unwrap_or_default()
    };
    assert_eq!(out.stdout_text().trim(), expected);
    // An argv is not a shell string: metacharacters arrive as they are.
    let out = host
        .run_ok(&Cmd::new(["printf", "%s", "$(echo no); `x` 'q'"]))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "$(echo no); `x` 'q'");
    let out = host
        .run_ok(&Cmd::new(["cat"]).stdin("fed on stdin"))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "fed on stdin");
}

#[tokio::test]
async fn a_command_past_its_time_limit_is_killed() {
    let host = LocalHost::new(None).unwrap();
    let started = Instant::now();
    let err = host
        .run(&Cmd::new(["sleep", "30"]).timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not finish"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn run_ok_names_the_command_and_its_stderr() {
    let host = LocalHost::new(None).unwrap();
    let err = host
        .run_ok(&Cmd::new(["sh", "-c", "echo boom >&2; exit 3"]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("exit status 3") && err.contains("boom") && err.contains("sh -c"),
        "{err}"
    );
}

#[tokio::test]
async fn local_write_is_atomic_with_mode_and_owner() {
    let dir = world_traversable_tempdir();
    let host = LocalHost::new(None).unwrap();
    let path = dir.path().join("postgresql.auto.conf");
    let owner = if is_root() { Some("postgres") } else { None };
    host.write_file(&path, b"primary_conninfo = 'x'\n", 0o640, owner)
        .await
        .unwrap();
    host.write_file(&path, b"primary_conninfo = 'y'\n", 0o640, owner)
        .await
        .unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    if is_root() {
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        assert_eq!(meta.uid(), pg.uid.as_raw());
    }
    assert_eq!(
        host.read_file(&path).await.unwrap(),
        b"primary_conninfo = 'y'\n"
    );
    assert!(host.exists(&path).await.unwrap());
    assert!(!host.exists(&dir.path().join("absent")).await.unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temporary files left behind: {leftovers:?}"
    );
    let err = host
        .write_file(Path::new("/nonexistent-dir/f"), b"x", 0o600, None)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent-dir"), "{err:#}");
}

/// There is no Docker engine on our machines, so `docker` host control is tested at the argv
/// level, and its file operations through a stand-in `docker` that runs `exec`'s command on
/// this machine. What is not tested here: a real `docker exec` into a container.
#[tokio::test]
async fn docker_host_builds_docker_exec_argv_and_its_file_operations_work() {
    let h = RemoteHost::docker("pg-dr", Some("postgres"), None);
    assert_eq!(
        h.wrap(&[
            "pg_ctl".into(),
            "status".into(),
            "-D".into(),
            "/var/lib/postgresql/data".into()
        ]),
        [
            "docker",
            "exec",
            "-i",
            "-u",
            "postgres",
            "pg-dr",
            "pg_ctl",
            "status",
            "-D",
            "/var/lib/postgresql/data"
        ]
    );
    assert_eq!(h.describe(), "docker container pg-dr");

    let dir = world_traversable_tempdir();
    let fake = dir.path().join("docker");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = exec ] || exit 64; shift\n[ \"$1\" = -i ] && shift\n\
         if [ \"$1\" = -u ]; then shift 2; fi\necho \"$1\" > \"$(dirname \"$0\")/container\"; shift\nexec \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = RemoteHost::docker("pg-dr", None, Some(&fake));
    let target = dir.path().join("standby.signal");
    h.write_file(&target, b"it's \"quoted\"\n", 0o600, None)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("container"))
            .unwrap()
            .trim(),
        "pg-dr"
    );
    assert_eq!(h.read_file(&target).await.unwrap(), b"it's \"quoted\"\n");
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(h.exists(&target).await.unwrap());
    assert!(!h.exists(&dir.path().join("nope")).await.unwrap());
}
