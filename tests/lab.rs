//! `migrate lab up|status|down` through the real binary.

use migrate::exit::Exit;
use std::net::TcpListener;
use std::process::Command;

use migrate::lab::ports::PortBlock;
use migrate::lab::PORT_SPAN;

use crate::support::{alive, migrate, postmaster_pid, text};

/// Stops the lab through the binary on drop, so a failing test leaves nothing running.
struct Down(String);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = migrate(&["lab", "down", "--dir", &self.0]);
    }
}

fn lab_passwords(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("pgpass"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit(':').next().unwrap().to_string())
        .collect()
}

#[test]
fn lab_up_serves_app_through_pgbouncer_and_down_stops_everything() {
    let ports = PortBlock::reserve(PORT_SPAN).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let d = dir.to_str().unwrap().to_string();
    let _down = Down(d.clone());
    let base = ports.base.to_string();

    let up = migrate(&["lab", "up", "--dir", &d, "--base-port", &base]);
    assert_eq!(up.status.code(), Some(0), "{}", text(&up.stderr));
    let bouncer = ports.base + 4;
    assert!(
        text(&up.stdout).contains(&format!("-p {bouncer}")),
        "prints the PgBouncer port: {}",
        text(&up.stdout)
    );

    // psql through PgBouncer reaches the app database on the old primary.
    let psql = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &bouncer.to_string(),
            "-U",
            "postgres",
            "-d",
            "app",
            "-Atc",
        ])
        .arg("SELECT count(*) FROM accounts; SELECT current_setting('cluster_name')")
        .env("PGPASSFILE", dir.join("pgpass"))
        .output()
        .expect("psql");
    assert!(psql.status.success(), "{}", text(&psql.stderr));
    assert_eq!(text(&psql.stdout).trim(), "10000\nold");

    let pg_pid = postmaster_pid(&dir.join("nodes/old/data")).expect("postmaster.pid");
    let bouncer_pid: i32 = std::fs::read_to_string(dir.join("pgbouncer/pgbouncer.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pg_pid) && alive(bouncer_pid));

    // Twice is harmless: nothing restarted.
    let again = migrate(&["lab", "up", "--dir", &d, "--base-port", &base]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert_eq!(postmaster_pid(&dir.join("nodes/old/data")), Some(pg_pid));

    let status = migrate(&["lab", "status", "--dir", &d, "--json"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["nodes"][0]["name"], "old");
    assert_eq!(v["nodes"][0]["state"], "running");
    assert_eq!(v["nodes"][0]["serving_as"], "primary");
    assert_eq!(v["nodes"][1]["state"], "absent");
    assert_eq!(v["pgbouncer_running"], true);

    // The written spec is valid, and no output carries a password.
    let validate = migrate(&["validate", "-f", dir.join("lab.toml").to_str().unwrap()]);
    crate::support::assert_exit(&validate, Exit::Done);
    let all_output = [&up, &again, &status, &validate]
        .iter()
        .map(|o| text(&o.stdout) + &text(&o.stderr))
        .collect::<String>();
    let spec_text = std::fs::read_to_string(dir.join("lab.toml")).unwrap();
    for pw in lab_passwords(&dir) {
        assert!(!all_output.contains(&pw), "a password was printed");
        assert!(!spec_text.contains(&pw), "a password is in the spec");
    }

    let down = migrate(&["lab", "down", "--dir", &d]);
    assert_eq!(down.status.code(), Some(0), "{}", text(&down.stderr));
    // `pg_ctl stop` returns once the pid file is gone, which the postmaster removes just
    // before it exits: allow it that moment (on a loaded machine, a few milliseconds).
    let gone = |pid: i32| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        !alive(pid)
    };
    assert!(gone(pg_pid), "postgres still running after lab down");
    assert!(gone(bouncer_pid), "pgbouncer still running after lab down");
    let twice = migrate(&["lab", "down", "--dir", &d]);
    assert_eq!(twice.status.code(), Some(0), "{}", text(&twice.stderr));
}

#[test]
fn lab_refuses_a_taken_port_and_starts_nothing() {
    let ports = PortBlock::reserve(PORT_SPAN).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let d = dir.to_str().unwrap().to_string();
    let _down = Down(d.clone());
    let _squatter = TcpListener::bind(("127.0.0.1", ports.base + 4)).unwrap();
    let up = migrate(&[
        "lab",
        "up",
        "--dir",
        &d,
        "--base-port",
        &ports.base.to_string(),
    ]);
    assert_eq!(up.status.code(), Some(2));
    let err = text(&up.stderr);
    assert!(
        err.contains(&format!("port {}", ports.base + 4)) && err.contains("--base-port"),
        "{err}"
    );
    assert!(
        !dir.join("nodes/old/data/postmaster.pid").exists(),
        "a server was started anyway"
    );
}

#[test]
fn lab_status_without_a_lab_says_how_to_make_one() {
    let tmp = tempfile::tempdir().unwrap();
    let out = migrate(&["lab", "status", "--dir", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("migrate lab up"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn wan_links_without_the_lab_of_separate_hosts_are_refused_before_anything_is_made() {
    for args in [
        &["lab", "up", "--rtt", "30ms"][..],
        &["rehearse", "--bandwidth", "100mbit"][..],
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lab");
        let mut all = args.to_vec();
        all.extend(["--dir", dir.to_str().unwrap()]);
        let out = migrate(&all);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(
            text(&out.stderr).contains("add --hosts ssh"),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            !dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none(),
            "{args:?}: a lab was made in {}",
            dir.display()
        );
    }
}

#[test]
fn lab_up_in_a_folder_the_server_user_cannot_enter_is_refused_naming_it() {
    if !nix::unistd::geteuid().is_root() {
        return; // only root runs the servers as another user
    }
    use std::os::unix::fs::PermissionsExt;
    let ports = PortBlock::reserve(PORT_SPAN).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let closed = tmp.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = closed.join("lab");
    let d = dir.to_str().unwrap().to_string();
    let _down = Down(d.clone());
    let up = migrate(&[
        "lab",
        "up",
        "--dir",
        &d,
        "--base-port",
        &ports.base.to_string(),
    ]);
    assert_eq!(up.status.code(), Some(2), "{}", text(&up.stderr));
    let err = text(&up.stderr);
    assert!(
        err.contains(&format!(
            "{} cannot be entered (mode 0700",
            closed.display()
        )) && err.contains("postgres")
            && err.contains("chmod o+x"),
        "{err}"
    );
    assert!(
        !dir.join("nodes/old/data").exists(),
        "a node was made anyway"
    );
}

/// The fastest of five TCP connections from inside `netns` (None: the bastion, this
/// namespace) to `addr:22` (every site's sshd listens on its members' addresses), in µs, timed
/// inside one process (no process start in the measure), or None when one does not open
/// within a second.
fn connect_us(netns: Option<&str>, addr: std::net::Ipv4Addr) -> Option<u64> {
    let script = "import socket, sys, time\nbest = 1e9\nfor _ in range(5):\n    t = time.perf_counter()\n    s = socket.create_connection((sys.argv[1], 22), timeout=1)\n    best = min(best, time.perf_counter() - t)\n    s.close()\nprint(int(best * 1e6))\n";
    let mut argv: Vec<String> = match netns {
        Some(ns) => ["ip", "netns", "exec", ns].map(String::from).to_vec(),
        None => Vec::new(),
    };
    argv.extend([
        "python3".into(),
        "-c".into(),
        script.into(),
        addr.to_string(),
    ]);
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .expect("python3");
    out.status
        .success()
        .then(|| text(&out.stdout).trim().parse().ok())
        .flatten()
}

/// The WAN of the lab of separate hosts, measured from outside migrate: a round trip between
/// two places takes the RTT asked for, two members of one place talk undelayed, a place's
/// uplink carries no more than its rate, and a cut link passes nothing until restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssh_labs_wan_delays_caps_and_cuts_links_between_places() {
    let t = crate::support::TestLab::up_with(migrate::lab::Layout::Plain, migrate::lab::Hosts::Ssh)
        .await;
    let lab = &t.lab;
    let sites = lab.sites.as_ref().expect("the ssh lab");
    lab.shape(&migrate::lab::wan::Wan {
        rtt_us: 40_000,
        bandwidth: Some("8mbit".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let old = sites.addr("old");
    let newdc = sites.netns("newdc");
    // A connection is one round trip (SYN out, SYN-ACK back). Lower bounds are the point (the
    // delay is there); upper bounds leave room for a loaded machine.
    let across = connect_us(None, old).expect("the link is up");
    assert!(
        (40_000..150_000).contains(&across),
        "bastion -> old datacenter: {across} µs for a 40 ms round trip"
    );
    let inside = connect_us(Some(&newdc), sites.addr("new_replica")).expect("up");
    assert!(
        inside < 20_000,
        "new -> new_replica (one site): {inside} µs, not delayed"
    );
    let between = connect_us(Some(&newdc), old).expect("the link is up");
    assert!(
        (40_000..150_000).contains(&between),
        "new datacenter -> old datacenter: {between} µs"
    );

    // 2 MB from the old datacenter to the bastion at 8 Mbit/s: about 2 s, never faster.
    let listener = TcpListener::bind((sites.bastion(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let bastion = sites.bastion();
    let olddc = sites.netns("olddc");
    let send = std::thread::spawn(move || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &olddc,
                "bash",
                "-c",
                &format!("head -c 2000000 /dev/zero > /dev/tcp/{bastion}/{port}"),
            ])
            .status()
            .unwrap()
    });
    let (mut conn, _) = listener.accept().unwrap();
    let started = std::time::Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = std::io::Read::read(&mut conn, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(send.join().unwrap().success());
    assert_eq!(got, 2_000_000);
    let rate = got as f64 / secs;
    assert!(
        (250_000.0..1_100_000.0).contains(&rate),
        "old datacenter's uplink at 8 Mbit/s (1 MB/s): {rate:.0} B/s"
    );

    // A cut passes nothing, in either direction, until it is restored.
    lab.set_link("bastion", "olddc", true).await.unwrap();
    assert_eq!(
        connect_us(None, old),
        None,
        "bastion -> old with the link cut"
    );
    assert!(
        connect_us(Some(&newdc), old).is_some(),
        "other links stay up"
    );
    let w = lab.set_link("olddc", "bastion", false).await.unwrap();
    assert!(w.cuts.is_empty(), "{w:?}");
    assert!(connect_us(None, old).is_some(), "restored");
    lab.down().await.unwrap();
}
