//! The docker-compose topology, on the real Docker engine: the file agrees with its spec and
//! with what `lab up --hosts compose` writes, both Compose versions' syntax accepts it,
//! `docker exec` host control does what the other hosts do, and the rehearsal runs on
//! PostgreSQL 13, 15 and 17 (Debian's own packages in containers) with nothing lost and
//! nothing left behind.
//!
//! Needs a running Docker engine and docker-compose (scripts/test installs and starts them).

use std::path::{Path, PathBuf};
use std::process::Command;

use migrate::host::remote::RemoteHost;
use migrate::host::{Cmd, Host};
use migrate::lab::compose::{self, Compose};
use serde_yaml::Value;

use crate::support::text;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let s = &compose["services"][name];
    assert!(!s.is_null(), "docker-compose.yml has no service {name}");
    s
}

/// `${VAR:-default}` → default (the file as run by hand, with nothing set).
fn with_defaults(v: &str) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("closed") + at;
        let inner = &rest[at + 2..end];
        out.push_str(inner.split_once(":-").map(|(_, d)| d).unwrap_or(""));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn compose_file() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let mut compose: Value = serde_yaml::from_str(&text).expect("docker-compose.yml parses");
    compose.apply_merge().expect("YAML merge keys resolve");
    compose
}

#[test]
fn compose_file_and_its_spec_match() {
    let compose = compose_file();
    // Compose 1.29 rejects a top-level `name:` and reads a file without `version` as v1.
    assert!(compose["name"].is_null(), "no top-level name");
    assert!(compose["version"]
        .as_str()
        .is_some_and(|v| v.starts_with('2')));
    let spec = migrate::spec::load(&root().join("fixtures/compose.toml")).unwrap();
    let dockerfile = std::fs::read_to_string(root().join("docker/postgres/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("PGDATA={}", compose::DATA_DIR)),
        "the image's PGDATA is where migrate looks"
    );
    // What `lab up --hosts compose` writes: the same addresses and container names.
    let lab = Compose::new(25430, 15, Path::new("/l")).unwrap();
    for node in &spec.nodes {
        let svc = service(&compose, &node.name);
        let addr = with_defaults(svc["networks"]["lab"]["ipv4_address"].as_str().unwrap());
        assert_eq!(node.conninfo.host(), addr, "{}: address", node.name);
        assert_eq!(
            addr.rsplit('.').next(),
            lab.addr(&node.name).to_string().rsplit('.').next(),
            "{}: lab up's address",
            node.name
        );
        assert_eq!(node.conninfo.port(), compose::PORT, "{}", node.name);
        let container = with_defaults(svc["container_name"].as_str().unwrap());
        assert_eq!(container, format!("migrate-lab-{}", node.name));
        assert_eq!(
            lab.container(&node.name),
            format!("migrate-lab-25430-{}", node.name)
        );
        match &node.host {
            migrate::host::HostSpec::Docker { container: c, .. } => {
                assert_eq!(c, &container, "{}: host control's container", node.name)
            }
            other => panic!(
                "{}: compose nodes use docker exec, not {other:?}",
                node.name
            ),
        }
        assert_eq!(
            node.data_dir,
            PathBuf::from(compose::DATA_DIR),
            "{}",
            node.name
        );
        let image = with_defaults(svc["image"].as_str().unwrap());
        assert_eq!(image, compose::image_of(15));
        assert!(
            node.bin_dir.as_ref().is_some_and(|b| b == &lab.bin_dir()),
            "{}: {:?}",
            node.name,
            node.bin_dir
        );
        assert!(!svc["healthcheck"].is_null(), "{}: healthcheck", node.name);
        let mode = svc["command"][0].as_str().unwrap();
        let want = if node.role == migrate::spec::Role::Primary {
            "primary"
        } else {
            "standby"
        };
        assert_eq!(mode, want, "{}", node.name);
    }
    // Every database service is a spec node.
    for (name, svc) in compose["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        if svc["command"][0].as_str() != Some("pgbouncer") {
            assert!(
                spec.node(name).is_some(),
                "service {name} is not in the spec"
            );
        }
    }
    // The route: the spec's PgBouncer is the compose PgBouncer.
    match &spec.routes[..] {
        [migrate::spec::Route::PgBouncer(p)] => {
            let svc = service(&compose, compose::BOUNCER);
            let addr = with_defaults(svc["networks"]["lab"]["ipv4_address"].as_str().unwrap());
            assert_eq!(p.admin.host(), addr);
            assert_eq!(p.admin.port(), compose::PGBOUNCER_PORT);
            assert_eq!(
                with_defaults(svc["environment"]["MIGRATE_PRIMARY_HOST"].as_str().unwrap()),
                spec.primary().conninfo.host()
            );
            assert_eq!(p.config, PathBuf::from(compose::PGBOUNCER_INI));
        }
        other => panic!("the compose spec routes through PgBouncer: {other:?}"),
    }
}

/// Debian's docker-compose 1.29 validates the file (Compose v2 reads the same syntax).
#[test]
fn docker_compose_accepts_the_file() {
    let out = Command::new("docker-compose")
        .current_dir(root())
        .args(["-p", "migrate-config-check", "config", "-q"])
        .env("MIGRATE_LAB_PASSWORD", "x")
        .output()
        .expect("docker-compose is installed (scripts/test installs it)");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Without the password it refuses, naming it.
    let out = Command::new("docker-compose")
        .current_dir(root())
        .args(["-p", "migrate-config-check", "config", "-q"])
        .env_remove("MIGRATE_LAB_PASSWORD")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("MIGRATE_LAB_PASSWORD"));
}

/// A container of the lab image, removed on drop.
struct Container(String);

impl Container {
    async fn start(name: &str) -> Container {
        let notes = compose::ensure_image(15, &build_context())
            .await
            .expect("image");
        assert!(!notes.is_empty());
        let _ = Command::new("docker").args(["rm", "-f", name]).output();
        let out = Command::new("docker")
            .args(["run", "-d", "--name", name, "-e", "MIGRATE_LAB_PASSWORD=x"])
            .arg(compose::image_of(15))
            .arg("standby")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        Container(name.to_string())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

fn build_context() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("migrate-test-context-{}", std::process::id()));
    compose::write_build_context(&dir).unwrap();
    dir
}

#[tokio::test]
async fn docker_exec_host_control_against_the_real_engine() {
    let name = format!("migrate-test-host-{}", std::process::id());
    let _c = Container::start(&name).await;
    let as_postgres = RemoteHost::docker(&name, Some("postgres"), None);
    let out = as_postgres.run_ok(&Cmd::new(["id", "-un"])).await.unwrap();
    assert_eq!(out.stdout_text().trim(), "postgres");

    // Atomic writes with a mode, and with an owner as root; read back; exists; remove.
    let as_root = RemoteHost::docker(&name, None, None);
    let file = Path::new("/var/lib/postgresql/migrate/settings.conf");
    as_root
        .write_file(file, b"a = 1\n", 0o640, Some("postgres"))
        .await
        .unwrap();
    let mode_and_owner = || async {
        as_root
            .run_ok(&Cmd::new([
                "stat",
                "-c",
                "%a %U",
                &file.display().to_string(),
            ]))
            .await
            .unwrap()
            .stdout_text()
            .trim()
            .to_string()
    };
    assert_eq!(mode_and_owner().await, "640 postgres");
    assert_eq!(as_postgres.read_file(file).await.unwrap(), b"a = 1\n");
    as_postgres.rewrite_file(file, b"a = 2\n").await.unwrap();
    assert_eq!(
        mode_and_owner().await,
        "640 postgres",
        "rewrite keeps mode and owner"
    );
    assert!(as_postgres.exists(file).await.unwrap());
    as_postgres.remove_file(file).await.unwrap();
    assert!(!as_postgres.exists(file).await.unwrap());
    // A server in the container: made, started, stopped through host control.
    let server = migrate::pg::server::Server::new(
        std::sync::Arc::new(as_postgres.clone()),
        Path::new("/usr/lib/postgresql/15/bin"),
        PathBuf::from("/var/lib/postgresql/migrate/c1"),
    );
    as_postgres
        .run_ok(&Cmd::new([
            "initdb",
            "-D",
            "/var/lib/postgresql/migrate/c1",
            "--no-sync",
        ]))
        .await
        .unwrap();
    let log = Path::new("/var/lib/postgresql/migrate/c1.log");
    server
        .start(log, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        server.state().await.unwrap(),
        migrate::pg::server::RunState::Running
    );
    server
        .stop(
            migrate::pg::server::StopMode::Fast,
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(
        server.state().await.unwrap(),
        migrate::pg::server::RunState::Stopped
    );

    // A missing container, a stopped one and a stopped engine are named as such, never
    // taken for the command's own "no".
    let missing = RemoteHost::docker("migrate-test-no-such-container", None, None);
    let e = format!("{:#}", missing.exists(file).await.unwrap_err());
    assert!(
        e.contains("does not exist") && e.contains("docker ps -a"),
        "{e}"
    );
    let dead =
        std::env::temp_dir().join(format!("migrate-test-dead-docker-{}", std::process::id()));
    std::fs::write(
        &dead,
        "#!/bin/sh\nexec docker -H unix:///nonexistent/docker.sock \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dead, std::fs::Permissions::from_mode(0o755)).unwrap();
    let no_engine = RemoteHost::docker(&name, None, Some(&dead));
    let e = format!("{:#}", no_engine.read_file(file).await.unwrap_err());
    assert!(e.contains("Docker engine does not answer"), "{e}");
    let _ = std::fs::remove_file(&dead);
    let out = Command::new("docker")
        .args(["stop", "-t", "1", &name])
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = format!("{:#}", as_postgres.exists(file).await.unwrap_err());
    assert!(
        e.contains("is not running") && e.contains("docker start"),
        "{e}"
    );
}

/// An image built from another build context (an older Dockerfile or entrypoint) is not
/// taken for the lab's: `ensure_image` rebuilds it.
#[tokio::test]
async fn an_image_from_another_build_context_is_not_current() {
    compose::ensure_image(15, &build_context())
        .await
        .expect("image");
    assert!(compose::image_current(&compose::image_of(15))
        .await
        .unwrap());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {}\nLABEL org.migrate.lab-context=an-older-context\n",
            compose::image_of(15)
        ),
    )
    .unwrap();
    let stale = format!("migrate-test-stale:{}", std::process::id());
    let out = Command::new("docker")
        .args(["build", "-q", "-t", &stale])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let current = compose::image_current(&stale).await.unwrap();
    let _ = Command::new("docker").args(["rmi", &stale]).output();
    assert!(
        !current,
        "a stale label passed for the current build context"
    );
}

/// What no compose rehearsal may leave: containers, networks, volumes of its project.
fn left_behind(project: &str) -> Vec<String> {
    let label = format!("label=com.docker.compose.project={project}");
    let mut left = Vec::new();
    for what in [
        vec!["ps", "-a", "-q", "--filter", &label],
        vec!["network", "ls", "-q", "--filter", &label],
        vec!["volume", "ls", "-q", "--filter", &label],
    ] {
        let out = Command::new("docker").args(&what).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        left.extend(
            text(&out.stdout)
                .lines()
                .map(|l| format!("{} {l}", what[0])),
        );
    }
    left
}

/// The compose rehearsal on one major: exit 0, zero client errors, every acknowledged
/// commit on every node after each switch, the embedded lab's report shape, nothing left.
fn rehearse_on(major: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--compose", "--pg", major];
    args.extend_from_slice(extra);
    let (out, dir) = crate::rehearse::rehearse(&args);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", crate::support::output_text(&out)));
    assert_eq!(out.status.code(), Some(0), "{r:#}\n{}", text(&out.stderr));
    for switch in ["cutover", "rollback"] {
        let s = &r[switch];
        assert!(s["acked"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["errors"], 0, "{switch}: {s}");
        for node in ["old", "new", "new_replica", "dr"] {
            assert_eq!(s["missing"][node], 0, "{switch} on {node}: {s}");
        }
        assert!(s["write_pause_ms"].as_f64().unwrap() > 0.0);
    }
    for node in ["old", "new", "new_replica", "dr"] {
        assert_eq!(r["missing_at_end"][node], 0, "{node}: {r:#}");
    }
    // The same report as the embedded lab's (tests/rehearse.rs reads these keys).
    for key in [
        "dir",
        "clients",
        "scale_mb",
        "replicate_ms",
        "replicate_phases_ms",
        "plan_ms",
        "cutover",
        "rollback",
        "acked_total",
        "missing_at_end",
    ] {
        assert!(!r[key].is_null(), "{key}: {r:#}");
    }
    // Each node reported the major asked for.
    let lab_state = std::fs::read_to_string(dir.path().join("lab/lab-state.json")).unwrap();
    assert!(
        lab_state.contains(&format!("\"major\": {major}")),
        "{lab_state}"
    );
    let state: serde_json::Value = serde_json::from_str(&lab_state).unwrap();
    let port = state["base_port"].as_u64().unwrap();
    let left = left_behind(&format!("migrate-lab-{port}"));
    assert!(left.is_empty(), "left behind: {left:?}");
    // The servers' logs outlive their containers.
    for node in ["old", "new", "new_replica", "dr"] {
        let log = dir.path().join(format!("lab/logs/{node}-server.log"));
        assert!(
            log.metadata().is_ok_and(|m| m.len() > 0),
            "{}",
            log.display()
        );
    }
    r
}

/// [`rehearse_on`] with a fault: the tool did what it must and no client saw an error
/// through it. The fault's report.
fn fault_on(major: &str, fault: &str) -> serde_json::Value {
    let r = rehearse_on(major, &["--fault", fault]);
    let f = r["fault"].clone();
    assert_eq!(f["name"], fault, "{f:#}");
    assert_eq!(f["as_expected"], true, "{f:#}");
    assert_eq!(f["errors"], 0, "{f:#}");
    f
}

/// PostgreSQL 13, with the target stopped as soon as the cutover has fenced the old primary:
/// the proof's time box undoes the cutover (as on the embedded lab), then it goes through.
#[test]
fn a_compose_rehearsal_on_postgresql_13_undoes_a_cutover_whose_target_stops_after_the_fence() {
    let f = fault_on("13", "stop-target-after-fence");
    assert_eq!(f["exit_code"], 1, "{f:#}");
    assert_eq!(f["run"]["failed_step"], "proof", "{f:#}");
    assert_eq!(f["run"]["outcome"], "aborted", "{f:#}");
}

/// PostgreSQL 17, with `migrate cutover` killed right after the promotion: `resume`
/// finishes it.
#[test]
fn a_compose_rehearsal_on_postgresql_17_resumes_a_cutover_killed_after_the_promotion() {
    let f = fault_on("17", "crash-tool-after-promote");
    assert_eq!(f["run"]["outcome"], "completed", "{f:#}");
}

/// PostgreSQL 15, with the target's postmaster killed inside its container during the
/// catch-up: the same behaviour as on the embedded lab (tests/rehearse.rs).
#[test]
fn a_compose_rehearsal_on_postgresql_15_waits_for_a_target_killed_during_catch_up() {
    let f = fault_on("15", "kill-target-during-catchup");
    assert_eq!(f["exit_code"], 0, "{f:#}");
    assert_eq!(f["run"]["operation"], "replicate", "{f:#}");
    assert_eq!(f["run"]["outcome"], "completed", "{f:#}");
    assert!(
        f["recovery"]
            .to_string()
            .contains("still waiting at the catch-up gate"),
        "{f:#}"
    );
}
