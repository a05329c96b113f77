//! `--hosts compose`: the lab's topology as the containers of `docker-compose.yml`, on a real
//! Docker engine, every node driven with `docker exec`.
//!
//! migrate runs on the Docker host and reaches each container at its address on the lab's
//! user bridge (`10.A.B.0/24`, from the base port, so labs can run side by side); nothing is
//! published on the host's ports. The images are Debian's own PostgreSQL and PgBouncer
//! packages on `debian:<release>-slim` (`docker/postgres/`): one image per major, 13
//! (bullseye), 15 (bookworm) and 17 (trixie). Where the base image cannot be pulled (Docker
//! Hub unreachable), it is made with `debootstrap --variant=minbase` and `docker import`.
//!
//! The compose file and the image's files are built into this binary and written into the lab
//! directory, so an installed `migrate` needs no checkout. The lab's secret (one password for
//! `postgres`, `repl` and PgBouncer) goes to compose through `DIR/.env` (0600), never through
//! a child's environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::host::local::LocalHost;
use crate::host::remote::RemoteHost;
use crate::host::{Cmd, Host};

/// The files of the compose topology, as in the repository.
const COMPOSE_FILE: &str = include_str!("../../docker-compose.yml");
const DOCKERFILE: &str = include_str!("../../docker/postgres/Dockerfile");
const ENTRYPOINT: &str = include_str!("../../docker/postgres/entrypoint.sh");
const LAB_CONF: &str = include_str!("../../docker/postgres/lab.conf");

/// Inside every node's container.
pub const DATA_DIR: &str = "/var/lib/postgresql/migrate/data";
pub const SERVER_LOG: &str = "/var/lib/postgresql/migrate/server.log";
pub const PORT: u16 = 5432;
pub const PGBOUNCER_PORT: u16 = 6432;
pub const PGBOUNCER_INI: &str = "/etc/pgbouncer/pgbouncer.ini";
/// The compose service of the application endpoint.
pub const BOUNCER: &str = "pgbouncer";

/// The PostgreSQL majors the lab has images for, and the Debian release that ships each.
pub const MAJORS: [(u32, &str); 3] = [(13, "bullseye"), (15, "bookworm"), (17, "trixie")];
pub const DEFAULT_MAJOR: u32 = 15;

/// Pure: the Debian release whose own packages give PostgreSQL `major`.
pub fn release_of(major: u32) -> Result<&'static str> {
    MAJORS
        .iter()
        .find(|(m, _)| *m == major)
        .map(|(_, r)| *r)
        .with_context(|| {
            format!(
                "--pg {major}: the compose lab has images for PostgreSQL {}; choose one of those",
                MAJORS
                    .iter()
                    .map(|(m, _)| m.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

pub fn image_of(major: u32) -> String {
    format!("migrate-lab-pg:{major}")
}

/// Pure: `10.A.B` for a base port, `A` in 200..250: apart from the ssh lab's 10.100-199 and
/// injective for ports below 50 × 256.
pub fn net_of(base_port: u16) -> String {
    format!("10.{}.{}", 200 + ((base_port >> 8) % 50), base_port & 0xff)
}

/// What `lab-state.json` keeps of a compose lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComposeState {
    pub major: u32,
}

#[derive(Debug, Clone)]
pub struct Compose {
    pub major: u32,
    /// The compose project and the containers' name prefix.
    pub project: String,
    pub net: String,
    pub dir: PathBuf,
}

impl Compose {
    pub fn new(base_port: u16, major: u32, dir: &Path) -> Result<Compose> {
        release_of(major)?;
        Ok(Compose {
            major,
            project: format!("migrate-lab-{base_port}"),
            net: net_of(base_port),
            dir: dir.to_path_buf(),
        })
    }

    pub fn container(&self, member: &str) -> String {
        format!("{}-{member}", self.project)
    }

    pub fn addr(&self, member: &str) -> std::net::Ipv4Addr {
        let last = match member {
            "old" => 10,
            "new" => 11,
            "new_replica" => 12,
            "dr" => 13,
            _ => 20,
        };
        format!("{}.{last}", self.net)
            .parse()
            .expect("a dotted quad")
    }

    /// Host control of a member's container, as the postgres OS user.
    pub fn host(&self, member: &str) -> RemoteHost {
        RemoteHost::docker(&self.container(member), Some("postgres"), None)
    }

    /// The spec's `host = …` for a member.
    pub fn spec_host(&self, member: &str) -> String {
        format!(
            "{{ kind = \"docker\", container = \"{}\", user = \"postgres\" }}",
            self.container(member)
        )
    }

    pub fn bin_dir(&self) -> PathBuf {
        PathBuf::from(format!("/usr/lib/postgresql/{}/bin", self.major))
    }

    fn build_context(&self) -> PathBuf {
        self.dir.join("docker").join("postgres")
    }

    fn compose_file(&self) -> PathBuf {
        self.dir.join("docker-compose.yml")
    }

    /// Lay down the compose file, the image's build context and `.env` (the password).
    pub async fn write_files(&self, password: &str) -> Result<()> {
        let local = LocalHost::new(None)?;
        write_build_context(&self.build_context())?;
        local
            .write_file(&self.compose_file(), COMPOSE_FILE.as_bytes(), 0o644, None)
            .await?;
        let env = env_file(
            password,
            self.major,
            release_of(self.major)?,
            &self.project,
            &self.net,
        );
        local
            .write_file(&self.dir.join(".env"), env.as_bytes(), 0o600, None)
            .await
    }

    /// `docker compose` (v2) where it answers, else Debian's `docker-compose` (1.29), with
    /// this lab's project name and file.
    async fn compose_argv(&self, args: &[&str]) -> Result<Vec<String>> {
        let mut argv: Vec<String> = compose_program().await?;
        argv.extend([
            "-p".to_string(),
            self.project.clone(),
            "-f".into(),
            self.compose_file().display().to_string(),
            "--project-directory".into(),
            self.dir.display().to_string(),
        ]);
        argv.extend(args.iter().map(|a| a.to_string()));
        Ok(argv)
    }

    async fn compose(&self, args: &[&str], timeout: Duration) -> Result<()> {
        let argv = self.compose_argv(args).await?;
        let out = LocalHost::new(None)?
            .run(&Cmd::new(argv).timeout(timeout))
            .await?;
        if !out.success() {
            bail!(
                "`docker compose {}` for the lab in {} failed ({}): {}",
                args.join(" "),
                self.dir.display(),
                out.status_text(),
                out.stderr_tail()
            );
        }
        Ok(())
    }

    /// Images ready, then the containers up (a second call is harmless).
    pub async fn up(&self) -> Result<Vec<String>> {
        engine_running().await?;
        let notes = ensure_image(self.major, &self.build_context()).await?;
        self.compose(&["up", "-d", "--no-build"], Duration::from_secs(300))
            .await?;
        Ok(notes)
    }

    /// Containers and the network removed (volumes too, though the file declares none).
    pub async fn down(&self) -> Result<()> {
        if !self.compose_file().exists() {
            return Ok(());
        }
        self.compose(
            &["down", "-v", "--remove-orphans", "-t", "5"],
            Duration::from_secs(180),
        )
        .await
    }

    /// Why a member's container is not running (its state and the end of its log), or None
    /// while it runs.
    pub async fn not_running(&self, member: &str) -> Result<Option<String>> {
        let name = self.container(member);
        let local = LocalHost::new(None)?;
        let out = local
            .run(
                &Cmd::new(["docker", "inspect", "-f", "{{.State.Status}}", &name])
                    .timeout(Duration::from_secs(30)),
            )
            .await?;
        let status = out.stdout_text().trim().to_string();
        if out.success() && status == "running" {
            return Ok(None);
        }
        let logs = local
            .run(
                &Cmd::new(["docker", "logs", "--tail", "5", &name])
                    .timeout(Duration::from_secs(30)),
            )
            .await?;
        let tail = [
            logs.stdout_text(),
            String::from_utf8_lossy(&logs.stderr).into_owned(),
        ]
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
        Ok(Some(format!(
            "container {name} is {}: {tail}",
            if status.is_empty() {
                "missing"
            } else {
                &status
            }
        )))
    }

    /// Whether PgBouncer's container answers on its port.
    pub fn bouncer_running(&self) -> bool {
        std::net::TcpStream::connect_timeout(
            &(self.addr(BOUNCER), PGBOUNCER_PORT).into(),
            Duration::from_millis(300),
        )
        .is_ok()
    }

    /// Send `signal` (a name: QUIT, STOP, CONT) to a node's postmaster inside its container;
    /// for QUIT, wait (up to 30 s) until its pid file is gone. The postmaster's pid.
    pub async fn signal_postmaster(&self, node: &str, signal: &str) -> Result<i32> {
        let script = r#"set -e
pid=$(head -n 1 "$1/postmaster.pid")
kill -s "$2" "$pid"
if [ "$2" = QUIT ]; then
  i=0
  while [ -e "$1/postmaster.pid" ]; do
    i=$((i+1)); [ "$i" -lt 3000 ] || { echo "postmaster $pid still there" >&2; exit 1; }
    sleep 0.01
  done
fi
echo "$pid""#;
        let out = self
            .host(node)
            .run_ok(
                &Cmd::new(["sh", "-c", script, "migrate-signal", DATA_DIR, signal])
                    .timeout(Duration::from_secs(40)),
            )
            .await
            .with_context(|| format!("signal {signal} to {node}'s postmaster"))?;
        out.stdout_text()
            .trim()
            .parse()
            .with_context(|| format!("{node}: no postmaster pid"))
    }
}

/// The image's build context (docker/postgres of the repository) into `dir`.
pub fn write_build_context(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for (name, text, mode) in [
        ("Dockerfile", DOCKERFILE, 0o644),
        ("entrypoint.sh", ENTRYPOINT, 0o755),
        ("lab.conf", LAB_CONF, 0o644),
    ] {
        crate::host::local::write_atomic(&dir.join(name), text.as_bytes(), mode, None)?;
    }
    Ok(())
}

/// Pure: the `.env` compose reads for the file's variables.
pub fn env_file(password: &str, major: u32, release: &str, project: &str, net: &str) -> String {
    format!(
        "# Written by migrate lab up --hosts compose (0600: it holds the lab's password).\n\
         MIGRATE_LAB_PASSWORD={password}\n\
         MIGRATE_PG_MAJOR={major}\n\
         MIGRATE_DEBIAN_RELEASE={release}\n\
         MIGRATE_COMPOSE_PREFIX={project}\n\
         MIGRATE_COMPOSE_NET={net}\n"
    )
}

async fn compose_program() -> Result<Vec<String>> {
    let local = LocalHost::new(None)?;
    let v2 = local
        .run(&Cmd::new(["docker", "compose", "version"]).timeout(Duration::from_secs(20)))
        .await;
    if v2.is_ok_and(|o| o.success()) {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    let v1 = local
        .run(&Cmd::new(["docker-compose", "version"]).timeout(Duration::from_secs(20)))
        .await;
    if v1.is_ok_and(|o| o.success()) {
        return Ok(vec!["docker-compose".into()]);
    }
    bail!("neither `docker compose` (Compose v2) nor `docker-compose` answers; install one (Debian: apt-get install docker-compose)")
}

/// Refuse early, naming the fix, when there is no Docker engine to talk to.
pub async fn engine_running() -> Result<()> {
    let out = LocalHost::new(None)?
        .run(
            &Cmd::new(["docker", "info", "--format", "{{.ServerVersion}}"])
                .timeout(Duration::from_secs(30)),
        )
        .await
        .context("run `docker` (Debian: apt-get install docker.io)")?;
    if !out.success() {
        bail!(
            "the Docker engine does not answer ({}): start it (systemctl start docker, or dockerd &) and try again",
            out.stderr_tail()
        );
    }
    Ok(())
}

async fn image_exists(image: &str) -> Result<bool> {
    let out = LocalHost::new(None)?
        .run(&Cmd::new(["docker", "image", "inspect", image]).timeout(Duration::from_secs(30)))
        .await?;
    Ok(out.success())
}

/// The label that ties an image to the build context it was made from.
const CONTEXT_LABEL: &str = "org.migrate.lab-context";

/// Pure: a digest of the build context this binary carries, so an image built from an older
/// Dockerfile or entrypoint is rebuilt rather than used.
pub fn context_digest() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [DOCKERFILE, ENTRYPOINT, LAB_CONF] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `image` exists and was built from this binary's build context.
pub async fn image_current(image: &str) -> Result<bool> {
    let format = format!("{{{{index .Config.Labels \"{CONTEXT_LABEL}\"}}}}");
    let out = LocalHost::new(None)?
        .run(
            &Cmd::new(["docker", "image", "inspect", "-f", &format, image])
                .timeout(Duration::from_secs(30)),
        )
        .await?;
    Ok(out.success() && out.stdout_text().trim() == context_digest())
}

/// Make `migrate-lab-pg:<major>` unless it exists: the base `debian:<release>-slim` is
/// used if present, else pulled, else made with debootstrap and imported. What was done, for
/// the operator. Two callers at once on one machine wait for each other (a file lock).
pub async fn ensure_image(major: u32, context: &Path) -> Result<Vec<String>> {
    let release = release_of(major)?;
    let image = image_of(major);
    // Without an engine every image looks missing: say so instead of building.
    engine_running().await?;
    if image_current(&image).await? {
        return Ok(vec![format!("image {image}: present")]);
    }
    let lock_path = std::env::temp_dir().join(format!("migrate-lab-image-{major}.lock"));
    let file = std::fs::File::create(&lock_path)
        .with_context(|| format!("create {}", lock_path.display()))?;
    let _lock = tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
    })
    .await?
    .map_err(|(_, e)| anyhow::anyhow!("lock {}: {e}", lock_path.display()))?;
    if image_current(&image).await? {
        return Ok(vec![format!("image {image}: present")]);
    }
    let mut notes = vec![ensure_base(release).await?];
    let local = LocalHost::new(None)?;
    let out = local
        .run(
            &Cmd::new([
                "docker".to_string(),
                "build".into(),
                "-q".into(),
                "--build-arg".into(),
                format!("RELEASE={release}"),
                "--build-arg".into(),
                format!("MAJOR={major}"),
                "--label".into(),
                format!("{CONTEXT_LABEL}={}", context_digest()),
                "-t".into(),
                image.clone(),
                context.display().to_string(),
            ])
            .timeout(Duration::from_secs(30 * 60)),
        )
        .await?;
    if !out.success() {
        bail!(
            "docker build of {image} (Debian {release}, postgresql-{major}) failed: {}",
            out.stderr_tail()
        );
    }
    notes.push(format!(
        "image {image}: built from debian:{release}-slim with Debian's postgresql-{major} and pgbouncer"
    ));
    Ok(notes)
}

async fn ensure_base(release: &str) -> Result<String> {
    let base = format!("debian:{release}-slim");
    if image_exists(&base).await? {
        return Ok(format!("base image {base}: present"));
    }
    let local = LocalHost::new(None)?;
    let pulled = local
        .run(&Cmd::new(["docker", "pull", "-q", &base]).timeout(Duration::from_secs(120)))
        .await?;
    if pulled.success() {
        return Ok(format!("base image {base}: pulled"));
    }
    let why_not_pulled = pulled.stderr_tail();
    if !nix::unistd::geteuid().is_root() {
        bail!("{base} cannot be pulled ({why_not_pulled}) and making it with debootstrap needs root; as root run `migrate lab image --pg <major>`");
    }
    let root = tempfile::Builder::new()
        .prefix(&format!("migrate-debootstrap-{release}-"))
        .tempdir_in("/var/tmp")
        .context("a folder for debootstrap")?;
    let tree = root.path().join("rootfs");
    let out = local
        .run(
            &Cmd::new([
                "debootstrap".to_string(),
                "--variant=minbase".into(),
                release.into(),
                tree.display().to_string(),
                "http://deb.debian.org/debian".into(),
            ])
            .timeout(Duration::from_secs(30 * 60)),
        )
        .await
        .context("run debootstrap (Debian: apt-get install debootstrap)")?;
    if !out.success() {
        bail!(
            "{base} cannot be pulled ({why_not_pulled}) and debootstrap {release} failed: {}",
            out.stderr_tail()
        );
    }
    // `tar | docker import`, through a shell: both ends are this machine's programs and the
    // paths are ours.
    let out = local
        .run(
            &Cmd::new([
                "sh",
                "-c",
                r#"set -e; rm -f "$1"/var/cache/apt/archives/*.deb; tar -C "$1" -c . | docker import - "$2" >/dev/null"#,
                "migrate-import",
                &tree.display().to_string(),
                &base,
            ])
            .timeout(Duration::from_secs(10 * 60)),
        )
        .await?;
    if !out.success() {
        bail!("docker import of {base} failed: {}", out.stderr_tail());
    }
    Ok(format!(
        "base image {base}: not pullable here ({}), made with debootstrap --variant=minbase and docker import",
        why_not_pulled.lines().last().unwrap_or("").trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_major_has_its_debian_release_and_others_are_refused() {
        assert_eq!(release_of(13).unwrap(), "bullseye");
        assert_eq!(release_of(15).unwrap(), "bookworm");
        assert_eq!(release_of(17).unwrap(), "trixie");
        let e = release_of(16).unwrap_err().to_string();
        assert!(e.contains("13, 15, 17"), "{e}");
    }

    #[test]
    fn labs_side_by_side_get_their_own_network_apart_from_the_ssh_labs() {
        assert_eq!(net_of(25430), "10.249.86");
        assert_ne!(net_of(25430), net_of(25435));
        for port in [1024u16, 25430, 40000, 65535] {
            let second: u32 = net_of(port).split('.').nth(1).unwrap().parse().unwrap();
            assert!((200..250).contains(&second), "{port}: {second}");
        }
    }

    #[test]
    fn the_env_file_carries_every_variable_the_compose_file_reads() {
        let env = env_file("pw", 17, "trixie", "migrate-lab-1", "10.200.1");
        for var in [
            "MIGRATE_LAB_PASSWORD",
            "MIGRATE_PG_MAJOR",
            "MIGRATE_DEBIAN_RELEASE",
            "MIGRATE_COMPOSE_PREFIX",
            "MIGRATE_COMPOSE_NET",
        ] {
            assert!(COMPOSE_FILE.contains(var), "the compose file reads {var}");
            assert!(env.contains(&format!("{var}=")), "{var}");
        }
    }

    /// The containers' settings are the embedded lab's, but for the address they listen on.
    #[test]
    fn the_image_settings_are_the_embedded_labs() {
        let ours: Vec<&str> = LAB_CONF
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("listen_addresses"))
            .collect();
        let labs: Vec<&str> = crate::lab::template::COMMON_CONF
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("listen_addresses"))
            .collect();
        assert_eq!(ours, labs);
    }
}
