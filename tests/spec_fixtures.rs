//! Every spec in fixtures/bad is refused with exit code 2 and a message naming the field;
//! secrets written into a bad spec never appear in any output.

use std::path::{Path, PathBuf};

use crate::support::{migrate, migrate_env, text};

fn fixtures(sub: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn header(file: &Path, key: &str) -> Option<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_string))
}

/// A listing of a folder, with sizes and modification times, to show nothing changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for e in walk(dir) {
        let m = std::fs::symlink_metadata(&e).unwrap();
        out.push((e, m.len(), m.modified().unwrap(), m.permissions().mode()));
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// What a command that ran a spec's ProxyCommand or LocalCommand would leave.
const RAN_A_COMMAND: &str = "/tmp/migrate-bad-spec-ran-a-command";

#[test]
fn every_bad_spec_is_refused_naming_the_field() {
    let bad = fixtures("bad");
    assert!(
        bad.len() >= 90,
        "expected the full set of bad specs, found {}",
        bad.len()
    );
    let dir = bad[0].parent().unwrap().to_path_buf();
    let _ = std::fs::remove_file(RAN_A_COMMAND);
    let before = snapshot(&dir);
    for file in bad {
        let expect = header(&file, "expect")
            .unwrap_or_else(|| panic!("{} lacks '# expect: FIELD'", file.display()));
        let path = file.to_str().unwrap();
        let runs: [&[&str]; 4] = [
            &["validate", "-f", path],
            &["validate", "--json", "-f", path],
            &["plan", "-f", path],
            &["plan", "--json", "-f", path],
        ];
        for args in runs {
            let out = migrate(args);
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            let what = format!("{} ({})", file.display(), args[..args.len() - 2].join(" "));
            assert_eq!(
                out.status.code(),
                Some(2),
                "{what}: exit code; stderr: {stderr}"
            );
            assert!(
                stderr.contains(&expect),
                "{what}: message should name {expect:?}; got: {stderr}"
            );
            assert!(
                stderr.contains(path),
                "{what}: message should name the file; got: {stderr}"
            );
            assert!(
                stderr.contains("fix:"),
                "{what}: message should give the fix; got: {stderr}"
            );
            for bytes in [&out.stdout, &out.stderr] {
                assert!(
                    !bytes
                        .iter()
                        .any(|b| *b == 0x1b || *b == 0 || *b == 0x07 || *b == b'\r'),
                    "{what}: a raw control character reached the terminal: {stderr:?}"
                );
            }
            if let Some(secret) = header(&file, "secret") {
                assert!(
                    !stdout.contains(&secret) && !stderr.contains(&secret),
                    "{what}: the secret was printed"
                );
            }
        }
    }
    assert!(
        !Path::new(RAN_A_COMMAND).exists(),
        "a bad spec made migrate run one of its commands"
    );
    assert_eq!(
        before,
        snapshot(&dir),
        "a refused spec created or changed files next to it"
    );
}

#[test]
fn a_ten_megabyte_name_is_refused_in_a_few_lines() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    let base = std::fs::read_to_string(
        fixtures("good")
            .iter()
            .find(|f| f.ends_with("minimal.toml"))
            .unwrap(),
    )
    .unwrap();
    let huge = "n".repeat(10 << 20);
    std::fs::write(
        &spec,
        base.replace("[nodes.dr]", &format!("[nodes.{huge}]")),
    )
    .unwrap();
    let out = migrate(&["validate", "-f", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let printed = out.stdout.len() + out.stderr.len();
    assert!(
        printed < 4096,
        "printed {printed} bytes: {}",
        &text(&out.stderr)[..400]
    );
    assert!(
        text(&out.stderr).contains("more characters"),
        "{}",
        text(&out.stderr)
    );
}

/// A good fixture made real on this machine: its /etc files created in a private folder
/// (secrets 0600, as `validate` demands) and its exec plugin on a PATH of its own.
struct Installed {
    _dir: tempfile::TempDir,
    spec: PathBuf,
    path_env: String,
}

fn install(file: &Path) -> Installed {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let text = std::fs::read_to_string(file)
        .unwrap()
        .replace("/etc/migrate/", &format!("{}/migrate/", etc.display()))
        .replace("/etc/pgpass", &format!("{}/pgpass", etc.display()));
    std::fs::create_dir_all(etc.join("migrate")).unwrap();
    for f in [
        "pgpass",
        "migrate/pgpass",
        "migrate/pgmig.key",
        "migrate/ca.crt",
    ] {
        let p = etc.join(f);
        std::fs::write(&p, "x\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let plugin = bin.join("migrate-route-srx");
    std::fs::write(&plugin, "#!/bin/sh\necho '{\"ok\": true}'\n").unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = dir.path().join(file.file_name().unwrap());
    std::fs::write(&spec, text).unwrap();
    Installed {
        path_env: format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        spec,
        _dir: dir,
    }
}

#[test]
fn good_specs_validate() {
    for file in fixtures("good") {
        let real = install(&file);
        let spec = real.spec.to_str().unwrap();
        let out = migrate_env(&["validate", "-f", spec], &[("PATH", &real.path_env)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            text(&out.stderr)
        );
        let out = migrate_env(
            &["validate", "--json", "-f", spec],
            &[("PATH", &real.path_env)],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(v["valid"], true);
        assert_eq!(v["nodes"][0]["role"], "primary");
    }
}

#[test]
fn a_good_spec_whose_secret_files_are_missing_or_open_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let real = install(&fixtures("good")[0]);
    let dir = real.spec.parent().unwrap();
    let pgpass = dir.join("etc/migrate/pgpass");
    let spec = real.spec.to_str().unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = migrate_env(&["validate", "-f", spec], &[("PATH", &real.path_env)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("password") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::remove_file(&pgpass).unwrap();
    let out = migrate_env(&["validate", "-f", spec], &[("PATH", &real.path_env)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot be read"),
        "{}",
        text(&out.stderr)
    );
    // A trust file that is a named pipe would block the TLS set-up that reads it.
    std::fs::write(&pgpass, "x\n").unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ca = dir.join("etc/migrate/ca.crt");
    std::fs::remove_file(&ca).unwrap();
    nix::unistd::mkfifo(&ca, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let out = migrate_env(&["validate", "-f", spec], &[("PATH", &real.path_env)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("sslrootcert")
            && text(&out.stderr).contains("not a regular file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn no_spec_given_is_bad_input() {
    let out = migrate(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("-f/--spec"),
        "{}",
        text(&out.stderr)
    );
    let out = migrate(&["validate", "-f", "/nonexistent/spec.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/spec.toml"));
}

/// A spec given as a named pipe: one nobody writes to is refused after a bounded wait, not
/// waited on for ever; one that is written to (`-f <(…)`) is read as a file would be.
#[test]
fn a_spec_from_a_pipe_is_read_or_refused_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("spec.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = migrate(&["validate", "-f", fifo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("named pipe without a writer"),
        "{}",
        text(&out.stderr)
    );
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/good/minimal.toml");
    let writer = {
        let (fifo, good) = (fifo.clone(), good.clone());
        std::thread::spawn(move || std::fs::write(&fifo, std::fs::read(good).unwrap()))
    };
    let out = migrate(&["validate", "-f", fifo.to_str().unwrap()]);
    writer.join().unwrap().unwrap();
    let stderr = text(&out.stderr);
    // The minimal spec names secret files this machine lacks: read and parsed, then refused
    // for those (exit 2 naming the passfile), never for how it arrived.
    assert!(
        !stderr.contains("named pipe") && !stderr.contains("cannot read the spec"),
        "{stderr}"
    );
    assert!(
        stderr.contains("nodes.old.password") || out.status.success(),
        "{stderr}"
    );
}

#[test]
fn a_spec_that_is_endless_binary_or_a_folder_is_refused() {
    let bin = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bin.path(), [0x7f, b'E', b'L', b'F', 0xff, 0xfe, 0]).unwrap();
    for (path, want) in [
        ("/dev/zero", "larger than 64 MiB"),
        (bin.path().to_str().unwrap(), "not UTF-8"),
        ("/tmp", "cannot read the spec"),
    ] {
        let out = migrate(&["validate", "-f", path]);
        assert_eq!(out.status.code(), Some(2), "{path}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(want),
            "{path}: {}",
            text(&out.stderr)
        );
    }
}
