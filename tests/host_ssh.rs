//! ssh host control against a real sshd on loopback, as the `postgres` user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use migrate::host::remote::RemoteHost;
use migrate::host::{Cmd, Host};

use crate::support::sshd::Sshd;

/// A directory in the sshd's own folder that the remote user (postgres) owns.
fn postgres_dir(sshd: &Sshd, name: &str) -> std::path::PathBuf {
    let dir = sshd.dir.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    std::os::unix::fs::chown(&dir, Some(pg.uid.as_raw()), Some(pg.gid.as_raw())).unwrap();
    dir
}

#[tokio::test]
async fn ssh_runs_commands_and_files_as_the_remote_user() {
    let sshd = Sshd::start();
    let host = sshd.host();

    let out = host.run_ok(&Cmd::new(["id", "-un"])).await.unwrap();
    assert_eq!(out.stdout_text().trim(), "postgres");

    // Quoting survives the remote login shell exactly.
    let tricky = "it's $(touch /tmp/pwned) `x` \"q\" ; echo no";
    let out = host
        .run_ok(&Cmd::new(["printf", "%s", tricky]))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), tricky);
    let out = host
        .run_ok(&Cmd::new(["cat"]).stdin("over ssh stdin"))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "over ssh stdin");

    // Files: atomic write with a mode, read back, existence.
    let dir = postgres_dir(&sshd, "remote");
    let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    let file = dir.join("postgresql.auto.conf");
    host.write_file(&file, b"primary_slot_name = 'migrate_old'\n", 0o640, None)
        .await
        .unwrap();
    host.write_file(&file, b"primary_slot_name = 'migrate_new'\n", 0o640, None)
        .await
        .unwrap();
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.uid(), pg.uid.as_raw());
    assert_eq!(
        host.read_file(&file).await.unwrap(),
        b"primary_slot_name = 'migrate_new'\n"
    );
    assert!(host.exists(&file).await.unwrap());
    assert!(!host.exists(&dir.join("absent")).await.unwrap());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "temporary file left behind"
    );

    // A failing command: status and stderr in the message.
    let err = host
        .run_ok(&Cmd::new(["ls", "/definitely/not/here"]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ssh postgres@127.0.0.1") && err.contains("/definitely/not/here"),
        "{err}"
    );
}

#[tokio::test]
async fn ssh_failures_are_named() {
    let sshd = Sshd::start();
    // Wrong key: authentication refused, reported as unreachable with ssh's own words.
    let other = sshd.dir.path().join("other_key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(st.success());
    let host = RemoteHost::ssh(
        "127.0.0.1",
        Some(sshd.port),
        Some("postgres"),
        Some(&other),
        &sshd.options(),
    );
    let err = host.run(&Cmd::new(["true"])).await.unwrap_err().to_string();
    assert!(
        err.contains("cannot reach") && err.contains("Permission denied"),
        "{err}"
    );

    // Nothing listening.
    let port = migrate::lab::ports::PortBlock::reserve(1).unwrap();
    let host = RemoteHost::ssh(
        "127.0.0.1",
        Some(port.base),
        Some("postgres"),
        Some(&sshd.key()),
        &sshd.options(),
    );
    let err = host.run(&Cmd::new(["true"])).await.unwrap_err().to_string();
    assert!(
        err.contains("cannot reach") && err.contains("refused"),
        "{err}"
    );
}

/// The server's stop (pg_ctl -W, then a shell loop on the host) and launch, over ssh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stops_and_starts_through_ssh() {
    use migrate::pg::server::{RunState, Server, StopMode};
    use std::time::Duration;
    let lab = crate::support::TestLab::up().await;
    let sshd = Sshd::start();
    let server = Server::new(
        std::sync::Arc::new(sshd.host()),
        lab.lab.bin_dir.clone(),
        lab.lab.data_dir("old"),
    );
    assert_eq!(server.state().await.unwrap(), RunState::Running);
    server
        .stop(StopMode::Fast, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(server.state().await.unwrap(), RunState::Stopped);
    assert!(!lab.lab.data_dir("old").join("postmaster.pid").exists());
    // Stopping a stopped server is not an error.
    server
        .stop(StopMode::Fast, Duration::from_secs(60))
        .await
        .unwrap();
    server
        .launch_unless_running(&lab.lab.server_log("old"))
        .await
        .unwrap();
    let t = std::time::Instant::now();
    while migrate::pg::connect(&lab.lab.endpoint("old", "postgres"))
        .await
        .is_err()
    {
        assert!(t.elapsed() < Duration::from_secs(30), "old did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
        .stop(StopMode::Immediate, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(server.state().await.unwrap(), RunState::Stopped);
}

/// The multiplexing master serving `socket`: OpenSSH titles it `ssh: <socket> [mux]`.
fn master_pid(socket: &std::path::Path) -> Option<i32> {
    let want = format!("ssh: {} [mux]", socket.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
        (cmd.trim_end_matches('\0') == want && crate::support::alive(pid)).then_some(pid)
    })
}

#[tokio::test]
async fn commands_over_ssh_share_one_master_and_survive_losing_it() {
    let sshd = Sshd::start();
    let host = sshd.host();
    let socket = host
        .control_socket()
        .expect("ssh hosts multiplex")
        .to_path_buf();
    host.prepare().await;
    assert!(socket.exists(), "no socket at {}", socket.display());
    let first = master_pid(&socket).expect("prepare opens the master connection");
    for i in 0..5 {
        let out = host
            .run_ok(&Cmd::new(["echo", &i.to_string()]))
            .await
            .unwrap();
        assert_eq!(out.stdout_text().trim(), i.to_string());
    }
    assert_eq!(
        master_pid(&socket),
        Some(first),
        "every command went through the one master"
    );

    // The master dies in the middle of a command (outside any pause): the command fails
    // cleanly and at once, never hangs.
    let running = {
        let host = sshd.host();
        tokio::spawn(async move {
            host.run(&Cmd::new(["sleep", "5"]).timeout(std::time::Duration::from_secs(30)))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = std::time::Instant::now();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(4), running)
        .await
        .expect("a command on a lost master must end, not hang")
        .unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
    match ended {
        Err(e) => assert!(e.to_string().contains("cannot reach"), "{e:#}"),
        Ok(out) => assert!(
            !out.success(),
            "the interrupted command cannot have succeeded"
        ),
    }
    // The next commands work: over a direct connection first (the socket is stale), then
    // through a new master.
    for i in 0..3 {
        let out = host
            .run_ok(&Cmd::new(["echo", &format!("again {i}")]))
            .await
            .unwrap();
        assert_eq!(out.stdout_text().trim(), format!("again {i}"));
        assert!(
            !out.stderr_tail().contains("Control socket"),
            "{}",
            out.stderr_tail()
        );
    }
    let second = master_pid(&socket).expect("a new master after the lost one");
    assert_ne!(second, first);
    migrate::host::mux::close_all();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(master_pid(&socket), None, "close_all ends the masters");
    assert!(
        !socket.parent().unwrap().exists(),
        "the control folder is removed"
    );
}

/// A check after a batch runs once the files are in place, in the same call, and its status
/// and output come back as its own; a write that fails runs no check and says which files.
#[tokio::test]
async fn a_check_after_a_batch_sees_the_files_and_runs_only_if_they_landed() {
    use migrate::host::FileWrite;
    let sshd = Sshd::start();
    let host = sshd.host();
    let dir = postgres_dir(&sshd, "then");
    let signal = dir.join("standby.signal");
    let files = [FileWrite::new(signal.clone(), Vec::new(), 0o600)];
    let check = Cmd::new([
        "sh".to_string(),
        "-c".into(),
        "ls \"$1\"; exit 3".into(),
        "check".into(),
        signal.display().to_string(),
    ]);
    let out = host.write_files_then(&files, &check).await.unwrap();
    assert_eq!(out.code, Some(3));
    assert_eq!(out.stdout_text().trim(), signal.display().to_string());
    let marker = dir.join("checked");
    let nowhere = [FileWrite::new(
        dir.join("no/such/dir/f"),
        b"x".to_vec(),
        0o600,
    )];
    let touch = Cmd::new(["touch", &marker.display().to_string()]);
    let err = host.write_files_then(&nowhere, &touch).await.unwrap_err();
    assert!(format!("{err:#}").contains("no/such/dir/f"), "{err:#}");
    assert!(!marker.exists(), "the check ran after a failed write");
}

/// A batch of files in one round trip: each replaced atomically with its mode, contents byte
/// for byte (quotes, newlines, binary, empty), in order, no temporary file left; a batch over
/// 64 KiB goes file by file and lands the same.
#[tokio::test]
async fn a_batch_of_files_lands_in_one_call_exactly() {
    use migrate::host::FileWrite;
    let sshd = Sshd::start();
    let host = sshd.host();
    let dir = postgres_dir(&sshd, "batch");
    let tricky = b"primary_conninfo = 'it''s $(touch /tmp/pwned) `x`'\n\0\xff\n".to_vec();
    let big = vec![b'x'; 70 * 1024];
    for (name, files) in [
        (
            "small",
            vec![
                FileWrite::new(dir.join("a.conf"), tricky.clone(), 0o600),
                FileWrite::new(dir.join("standby.signal"), Vec::new(), 0o640),
                FileWrite::new(dir.join("a.conf"), b"second write wins\n".to_vec(), 0o644),
            ],
        ),
        (
            "big",
            vec![FileWrite::new(dir.join("big"), big.clone(), 0o600)],
        ),
    ] {
        host.write_files(&files)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
    assert_eq!(
        std::fs::read(dir.join("a.conf")).unwrap(),
        b"second write wins\n"
    );
    let mode = |n: &str| std::fs::metadata(dir.join(n)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("a.conf"), 0o644);
    assert_eq!(std::fs::read(dir.join("standby.signal")).unwrap(), b"");
    assert_eq!(mode("standby.signal"), 0o640);
    assert_eq!(std::fs::read(dir.join("big")).unwrap(), big);
    let one = vec![FileWrite::new(dir.join("t"), tricky.clone(), 0o600)];
    host.write_files(&one).await.unwrap();
    assert_eq!(std::fs::read(dir.join("t")).unwrap(), tricky);
    assert!(!std::path::Path::new("/tmp/pwned").exists());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("migrate-tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// A config file rewritten over ssh keeps its mode and owner (read in the same call that
/// writes); a missing file is an error, not a new file.
#[tokio::test]
async fn a_rewrite_over_ssh_keeps_mode_and_owner_in_one_call() {
    let sshd = Sshd::start();
    let host = sshd.host();
    let dir = postgres_dir(&sshd, "cfg");
    let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    let file = dir.join("pgbouncer.ini");
    std::fs::write(&file, "[databases]\napp = host=10.0.0.1\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&file, Some(pg.uid.as_raw()), Some(pg.gid.as_raw())).unwrap();
    host.rewrite_file(&file, b"[databases]\napp = host=10.0.0.2\n")
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "[databases]\napp = host=10.0.0.2\n"
    );
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.uid(), pg.uid.as_raw());
    let missing = dir.join("absent.ini");
    let err = host.rewrite_file(&missing, b"x").await.unwrap_err();
    assert!(format!("{err:#}").contains("absent.ini"), "{err:#}");
    assert!(!missing.exists());

    // Compare-and-swap: written only while the file still holds what was read before.
    let read_before = b"[databases]\napp = host=10.0.0.2\n";
    assert!(host
        .rewrite_file_if(&file, read_before, b"[databases]\napp = host=10.0.0.3\n")
        .await
        .unwrap());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "[databases]\napp = host=10.0.0.3\n"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // Changed meanwhile (by the operator): not written, and said so.
    assert!(!host
        .rewrite_file_if(&file, read_before, b"[databases]\napp = host=10.0.0.4\n")
        .await
        .unwrap());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "[databases]\napp = host=10.0.0.3\n"
    );
}

/// Quick commands go through the host's kept remote shell (one Perl agent per master), which
/// bounds each command on the far side: a command past its time limit is killed there with
/// everything it started (a session of its own would only lose its local ssh client and leave
/// the remote process running), and the shell keeps serving afterwards. Exit status, stdout,
/// stderr and stdin pass through it byte for byte.
#[tokio::test]
async fn the_kept_remote_shell_bounds_commands_on_the_far_side() {
    let sshd = Sshd::start();
    let host = sshd.host();
    host.prepare().await;
    let dir = postgres_dir(&sshd, "shell");
    let pidfile = dir.join("pid");

    let out = host
        .run(
            &Cmd::new([
                "sh",
                "-c",
                "printf 'out \\001'; printf err >&2; cat; exit 7",
            ])
            .stdin(b"in\n\0bytes".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(out.code, Some(7));
    assert_eq!(out.stdout, b"out \x01in\n\0bytes");
    assert_eq!(out.stderr, b"err");

    let started = std::time::Instant::now();
    let err = host
        .run(
            &Cmd::new([
                "sh".to_string(),
                "-c".into(),
                format!("echo $$ > {}; exec sleep 60", pidfile.display()),
            ])
            .timeout(std::time::Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("did not finish within"),
        "{err:#}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < gone,
            "the remote command {pid} outlived its time limit"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = host.run_ok(&Cmd::new(["echo", "after"])).await.unwrap();
    assert_eq!(out.stdout_text(), "after\n");
    migrate::host::mux::close_all();
}
