//! Hostile hosts and shared places: planted links and foreign folders are refused without a
//! file outside the state directory touched; children see only the environment meant for
//! them; a PowerDNS redirect is not followed; a plugin's helpers die with it.
//!
//! Most run `migrate plan` on a spec whose servers are down (port 1 refuses at once): plan then
//! still opens every route and checks the state directory, which is all these need.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{migrate_env, output_text, text};

/// A spec on this machine whose servers are down, with `extra` appended (routes, state_dir).
fn spec_with(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("spec.toml");
    let text = format!(
        r#"name = "hostile"
state_dir = "state"

[replication]
user = "repl"
password = {{ env = "HOSTILE_REPL_PW" }}

[nodes.old]
role = "primary"
conninfo = "host=127.0.0.1 port=1 user=postgres sslmode=disable connect_timeout=2"
data_dir = "{d}/old"

[nodes.new]
role = "target"
upstream = "old"
conninfo = "host=127.0.0.2 port=1 user=postgres sslmode=disable connect_timeout=2"
data_dir = "{d}/new"
{extra}"#,
        d = dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn plan(spec: &Path, env: &[(&str, &str)]) -> std::process::Output {
    migrate_env(&["plan", "-f", spec.to_str().unwrap()], env)
}

/// A file outside the state directory that a planted link points at.
struct Victim {
    path: PathBuf,
}

impl Victim {
    fn new(dir: &Path) -> Victim {
        let path = dir.join("victim.txt");
        std::fs::write(&path, "the operator's file\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Victim { path }
    }

    #[track_caller]
    fn assert_untouched(&self, ctx: &str) {
        assert_eq!(
            std::fs::read_to_string(&self.path).unwrap(),
            "the operator's file\n",
            "{ctx}: the file behind a planted link was written"
        );
        let mode = std::fs::metadata(&self.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o644,
            "{ctx}: the file behind a planted link was chmod-ed"
        );
    }
}

#[test]
fn planted_links_in_the_state_directory_are_refused_and_nothing_outside_is_touched() {
    let outside = tempfile::tempdir().unwrap();
    let victim = Victim::new(outside.path());
    for name in [
        "plan.json",
        "lock",
        "journal.jsonl",
        ".migrate-tmp.plan.json.1234",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_with(dir.path(), "");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&victim.path, state.join(name)).unwrap();
        for args in [&["plan"][..], &["replicate"], &["cutover", "--yes"]] {
            let mut argv = args.to_vec();
            let name_of_command = args[0];
            argv.extend(["-f", spec.to_str().unwrap()]);
            let out = migrate_env(&argv, &[]);
            let ctx = format!("{name}, {name_of_command}");
            assert_ne!(out.status.code(), Some(0), "{ctx}: {}", output_text(&out));
            assert!(
                text(&out.stderr).contains("symbolic link"),
                "{ctx}: the refusal should say why: {}",
                output_text(&out)
            );
            victim.assert_untouched(&ctx);
        }
    }
    // The state directory itself a link to a folder elsewhere.
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), "");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("state")).unwrap();
    let out = plan(&spec, &[]);
    assert_ne!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        text(&out.stderr).contains("symbolic link"),
        "{}",
        output_text(&out)
    );
    assert!(
        !outside.path().join("plan.json").exists(),
        "plan wrote through a linked state_dir"
    );
    let mode = std::fs::metadata(outside.path()).unwrap().mode() & 0o777;
    assert_ne!(
        mode, 0o700,
        "plan chmod-ed the folder behind a linked state_dir"
    );
    victim.assert_untouched("linked state_dir");
}

#[test]
fn a_state_directory_owned_by_another_user_or_open_to_others_is_refused() {
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    for (owner, mode, want) in [
        (nobody.uid.as_raw(), 0o700, "belongs to uid"),
        (
            nix::unistd::geteuid().as_raw(),
            0o777,
            "writable by group or others",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_with(dir.path(), "");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&state, Some(owner), None).unwrap();
        let out = plan(&spec, &[]);
        assert_ne!(out.status.code(), Some(0), "{}", output_text(&out));
        assert!(
            text(&out.stderr).contains(want),
            "{want}: {}",
            output_text(&out)
        );
        assert_eq!(
            std::fs::read_dir(&state).unwrap().count(),
            0,
            "{want}: plan wrote into it"
        );
        let meta = std::fs::metadata(&state).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o777),
            (owner, mode),
            "{want}: plan changed it"
        );
    }
    // A folder that holds other things (the operator's files) is not a state directory.
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with(dir.path(), "");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(state.join("notes.txt"), "mine").unwrap();
    let out = plan(&spec, &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("not migrate's"),
        "{}",
        output_text(&out)
    );
}

/// A plugin that records its environment and the pids it starts, then sleeps `sleep` seconds.
fn plugin(dir: &Path, sleep: u32) -> PathBuf {
    let path = dir.join("migrate-route-probe");
    let script = format!(
        "#!/bin/sh\n\
         tr '\\0' '\\n' < /proc/$$/environ > {d}/plugin-env.txt\n\
         ( sleep {sleep}; touch {d}/grandchild-acted ) &\n\
         echo $! > {d}/grandchild.pid\n\
         sleep {sleep}\n\
         printf '{{\"ok\": true, \"token_seen\": \"%s\"}}' \"$PLUGIN_TOKEN\"\n",
        d = dir.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn exec_route(plugin: &Path, timeout: &str) -> String {
    format!(
        "\n[[route]]\nkind = \"exec\"\nname = \"probe\"\ncommand = [\"{}\"]\ntimeout = \"{timeout}\"\nenv = [\"PLUGIN_TOKEN\"]\n",
        plugin.display()
    )
}

#[test]
fn a_plugin_sees_only_the_environment_meant_for_it_and_its_answer_is_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin(dir.path(), 0);
    let spec = spec_with(dir.path(), &exec_route(&p, "10s"));
    let secrets = [
        ("PGPASSWORD", "Leaky-Pgpassword-1"),
        ("HOSTILE_REPL_PW", "Leaky-Replication-2"),
        ("AWS_SECRET_ACCESS_KEY", "Leaky-Cloud-3"),
    ];
    let mut env: Vec<(&str, &str)> = secrets.to_vec();
    env.push(("PLUGIN_TOKEN", "Plugin-Own-Token-4"));
    let out = plan(&spec, &env);
    let seen = std::fs::read_to_string(dir.path().join("plugin-env.txt"))
        .unwrap_or_else(|e| panic!("the plugin did not run ({e}): {}", output_text(&out)));
    for (var, value) in secrets {
        assert!(
            !seen.contains(value) && !seen.contains(&format!("{var}=")),
            "{var} reached the plugin: {seen}"
        );
    }
    assert!(
        seen.contains("PLUGIN_TOKEN=Plugin-Own-Token-4"),
        "the plugin's own variable is missing: {seen}"
    );
    assert!(seen.contains("PATH="), "{seen}");
    // The plugin echoed its token; plan shows the route's answer, masked.
    let all = output_text(&out);
    assert!(
        all.contains("token_seen"),
        "plan should show the plugin's answer: {all}"
    );
    assert!(
        !all.contains("Plugin-Own-Token-4"),
        "a secret was printed: {all}"
    );
}

fn dead_or_zombie(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_plugin_that_times_out_is_killed_with_everything_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin(dir.path(), 4);
    let spec = spec_with(dir.path(), &exec_route(&p, "1s"));
    let started = Instant::now();
    let out = plan(&spec, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "plan waited for the plugin: {:?}",
        started.elapsed()
    );
    let all = output_text(&out);
    assert!(all.contains("did not finish within"), "{all}");
    let pid: i32 = std::fs::read_to_string(dir.path().join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !dead_or_zombie(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        dead_or_zombie(pid),
        "the plugin's grandchild {pid} outlived the time-out"
    );
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !dir.path().join("grandchild-acted").exists(),
        "the grandchild acted after the time-out"
    );
}

/// A one-request-at-a-time HTTP server that answers every request with `answer` and records
/// each request's head.
fn http_server(answer: String) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            log.lock().unwrap().push(head);
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (port, seen)
}

#[test]
fn a_powerdns_redirect_is_not_followed_so_the_key_reaches_no_other_server() {
    let (second, second_seen) = http_server(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"rrsets\":[]}".into(),
    );
    let (first, first_seen) = http_server(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{second}/api/v1/servers/localhost/zones/db.example.\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let route = format!(
        "\n[[route]]\nkind = \"powerdns\"\napi = \"http://127.0.0.1:{first}\"\nzone = \"db.example.\"\nname = \"pg.db.example.\"\napi_key = {{ env = \"HOSTILE_PDNS_KEY\" }}\ndns_server = \"127.0.0.1:1\"\n\n[route.targets]\nold = \"10.0.0.1\"\nnew = \"10.0.0.2\"\n"
    );
    let spec = spec_with(dir.path(), &route);
    let out = plan(&spec, &[("HOSTILE_PDNS_KEY", "Pdns-Key-Never-Forwarded")]);
    let all = output_text(&out);
    assert!(
        first_seen
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.contains("Pdns-Key-Never-Forwarded")),
        "the configured API should have been asked, with the key: {all}"
    );
    assert!(
        second_seen.lock().unwrap().is_empty(),
        "the redirect was followed: {:?}",
        second_seen.lock().unwrap()
    );
    assert!(
        all.contains("redirect"),
        "plan should say the API redirected: {all}"
    );
    assert!(!all.contains("Pdns-Key-Never-Forwarded"), "{all}");
}

/// A bin_dir for one node: every PostgreSQL program as a link to the real one, except
/// `pg_basebackup`, which records its own environment (and the passfile folder it was given)
/// before it becomes the real program.
fn recording_bin_dir(real: &Path, out: &Path) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("migrate-bin-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for e in std::fs::read_dir(real).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "pg_basebackup" {
            std::os::unix::fs::symlink(e.path(), dir.path().join(e.file_name())).unwrap();
        }
    }
    let wrapper = dir.path().join("pg_basebackup");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             tr '\\0' '\\n' < /proc/$$/environ > {o}/basebackup-env.txt\n\
             stat -c '%a %U' \"$(dirname \"$PGPASSFILE\")\" > {o}/passfile-dir.txt\n\
             exec {real}/pg_basebackup \"$@\"\n",
            o = out.display(),
            real = real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test]
async fn a_clone_keeps_the_replication_password_private_and_ignores_planted_files() {
    let chain = crate::replication::Chain::new().await;
    let lab = &chain.lab.lab;
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = recording_bin_dir(&lab.bin_dir, out.path());
    // Only the target is cloned through the recording wrapper.
    let spec = std::fs::read_to_string(&chain.spec).unwrap();
    let real = toml::Value::String(lab.bin_dir.display().to_string()).to_string();
    let wrapped = toml::Value::String(bin.path().display().to_string()).to_string();
    let marker = "[nodes.new]";
    let (head, tail) = spec.split_at(spec.find(marker).unwrap());
    let tail = tail.replacen(
        &format!("bin_dir = {real}"),
        &format!("bin_dir = {wrapped}"),
        1,
    );
    std::fs::write(&chain.spec, format!("{head}{tail}")).unwrap();
    // What older versions wrote the password into, planted world-readable by someone else.
    let crc = crc32fast::hash(lab.data_dir("new").as_os_str().as_encoded_bytes());
    let planted = PathBuf::from(format!("/tmp/migrate-new-{crc:08x}-clone.pgpass"));
    std::fs::write(&planted, "planted\n").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();

    let leaks = [
        ("PGPASSWORD", "Leaky-Pgpassword-5"),
        ("AWS_SECRET_ACCESS_KEY", "Leaky-Cloud-6"),
    ];
    let run = chain.run_env(&["replicate"], &leaks).await;
    crate::support::assert_exit_at(&run, migrate::exit::Exit::Done, "replicate");

    let env = std::fs::read_to_string(out.path().join("basebackup-env.txt")).unwrap();
    for (var, value) in leaks {
        assert!(
            !env.contains(value) && !env.contains(&format!("{var}=")),
            "{var} reached pg_basebackup: {env}"
        );
    }
    let passwords = std::fs::read_to_string(lab.passfile()).unwrap();
    for pw in passwords.lines().filter_map(|l| l.rsplit(':').next()) {
        assert!(
            !env.contains(pw),
            "a password is in pg_basebackup's environment"
        );
    }
    let passfile = env
        .lines()
        .find_map(|l| l.strip_prefix("PGPASSFILE="))
        .unwrap_or_else(|| panic!("pg_basebackup got no PGPASSFILE: {env}"));
    assert!(passfile.starts_with("/tmp/migrate-pass."), "{passfile}");
    let dir_mode = std::fs::read_to_string(out.path().join("passfile-dir.txt")).unwrap();
    assert_eq!(
        dir_mode.trim(),
        "700 postgres",
        "the passfile folder must be private to the clone's user"
    );
    assert!(
        !Path::new(passfile).parent().unwrap().exists(),
        "the private passfile folder {passfile} was left behind"
    );
    assert_eq!(
        std::fs::read_to_string(&planted).unwrap(),
        "planted\n",
        "the planted file was used"
    );
    assert_eq!(std::fs::metadata(&planted).unwrap().mode() & 0o777, 0o666);
    std::fs::remove_file(&planted).unwrap();
}

#[test]
fn plan_with_the_primary_down_still_reports_routes_window_and_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("pdns.key");
    std::fs::write(&key, "k3y-file-value\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let route = format!(
        "\n[cutover]\nwindow_start = \"2020-01-01T00:00:00Z\"\nwindow_end = \"2020-01-01T01:00:00Z\"\n\n[[route]]\nkind = \"powerdns\"\napi = \"http://127.0.0.1:1\"\nzone = \"db.example.\"\nname = \"pg.db.example.\"\napi_key = {{ file = \"{}\" }}\ndns_server = \"127.0.0.1:1\"\n\n[route.targets]\nold = \"10.0.0.1\"\nnew = \"10.0.0.2\"\n",
        key.display()
    );
    let spec = spec_with(dir.path(), &route);
    let out = migrate_env(&["plan", "--json", "-f", spec.to_str().unwrap()], &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", output_text(&out)));
    let check = |id: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no {id} check: {v:#}"))
            .clone()
    };
    assert_eq!(check("connect:old")["status"], "fail");
    assert_eq!(check("window")["status"], "fail", "{v:#}");
    assert_eq!(
        check("route:0")["status"],
        "fail",
        "the unreachable API must be reported: {v:#}"
    );
    let secrets = check("secret_files");
    assert!(
        secrets["message"].as_str().unwrap().contains("pdns.key"),
        "{secrets}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "not ready: {}",
        output_text(&out)
    );
}
