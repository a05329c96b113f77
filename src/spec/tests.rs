use std::path::Path;
use std::time::Duration;

use super::*;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// The pure part of `load`: the fixtures name secret files under /etc that this machine lacks.
fn load(path: &Path) -> Result<Spec, SpecError> {
    parse(path, &std::fs::read_to_string(path).unwrap())
}

#[test]
fn example_spec_parses_into_typed_values() {
    let spec = load(&fixture("good/example.toml")).unwrap();
    assert_eq!(spec.name, "dc-move");
    let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        ["old", "new", "dr", "new_replica"],
        "primary first, then down the tree"
    );
    assert_eq!(spec.primary().name, "old");
    assert_eq!(spec.target().name, "new");
    assert_eq!(spec.downstream_of("new").count(), 2);
    assert_eq!(spec.cutover.lag_threshold, 16 << 20);
    assert_eq!(spec.cutover.catchup_timeout, Duration::from_secs(1800));
    let w = spec.cutover.window.unwrap();
    assert_eq!((w.end - w.start).num_hours(), 2);
    assert_eq!(
        spec.replication.password,
        Some(SecretRef::Env("MIGRATE_REPL_PASSWORD".into()))
    );
    assert!(matches!(
        spec.node("dr").unwrap().host,
        HostSpec::Docker { .. }
    ));
    assert_eq!(
        spec.node("new").unwrap().conninfo.get("sslmode"),
        Some("verify-full")
    );
    assert_eq!(spec.routes.len(), 2);
    assert_eq!(spec.routes[0], Route::None);
    assert!(matches!(&spec.routes[1], Route::PgBouncer(p) if p.databases == ["app"]));
}

#[test]
fn defaults_and_relative_paths_follow_the_spec_file() {
    let spec = load(&fixture("good/minimal.toml")).unwrap();
    assert_eq!(spec.state_dir, fixture("good/.migrate/t"));
    assert_eq!(spec.cutover.proof_timeout, Duration::from_secs(30));
    assert_eq!(spec.cutover.lag_threshold, 16 << 20);
    assert!(spec.cutover.window.is_none());
    assert!(spec.routes.is_empty());
    let text = std::fs::read_to_string(fixture("good/minimal.toml"))
        .unwrap()
        .replace(
            "{ passfile = \"/etc/pgpass\" }",
            "{ passfile = \"secrets/pgpass\" }",
        );
    let spec = parse(Path::new("/etc/migrate/spec.toml"), &text).unwrap();
    assert_eq!(
        spec.primary().password,
        Some(SecretRef::Passfile("/etc/migrate/secrets/pgpass".into()))
    );
}

#[test]
fn errors_name_file_field_and_fix() {
    let text = std::fs::read_to_string(fixture("good/minimal.toml"))
        .unwrap()
        .replace("upstream = \"old\"", "upstream = \"nowhere\"");
    let err = parse(Path::new("/x/spec.toml"), &text).unwrap_err();
    assert_eq!(err.field, "nodes.new.upstream");
    let shown = err.to_string();
    assert!(shown.starts_with("/x/spec.toml: nodes.new.upstream: \"nowhere\" is not a node; known nodes: dr, new, new_replica, old"), "{shown}");
    assert!(shown.contains("fix:"), "{shown}");
}

#[test]
fn replicas_of_the_old_primary_are_allowed() {
    let text = std::fs::read_to_string(fixture("good/minimal.toml"))
        .unwrap()
        .replace(
            "[nodes.dr]\nrole = \"replica\"\nupstream = \"new\"",
            "[nodes.dr]\nrole = \"replica\"\nupstream = \"old\"",
        );
    let spec = parse(Path::new("/x/spec.toml"), &text).unwrap();
    assert_eq!(spec.downstream_of("old").count(), 2);
}

#[test]
fn ssh_hosts_without_strict_host_key_checking_are_warned_about() {
    let with = |host: &str| {
        format!(
            "name = \"t\"\n[replication]\nuser = \"repl\"\n\
             [nodes.old]\nrole = \"primary\"\nconninfo = \"host=10.0.0.1\"\ndata_dir = \"/a\"\nhost = {host}\n\
             [nodes.new]\nrole = \"target\"\nupstream = \"old\"\nconninfo = \"host=10.0.0.2\"\ndata_dir = \"/b\"\n"
        )
    };
    let warnings = |host: &str| {
        parse(Path::new("/x/spec.toml"), &with(host))
            .unwrap()
            .warnings
    };
    assert_eq!(warnings("{ kind = \"ssh\", host = \"db1\" }").len(), 1);
    assert!(warnings("{ kind = \"ssh\", host = \"db1\", known_hosts = \"/k\" }").is_empty());
    assert!(warnings(
        "{ kind = \"ssh\", host = \"db1\", options = [\"StrictHostKeyChecking=yes\"] }"
    )
    .is_empty());
    // ssh takes the first value: a `no` before known_hosts' `yes` still wins.
    let weak = warnings(
        "{ kind = \"ssh\", host = \"db1\", known_hosts = \"/k\", options = [\"StrictHostKeyChecking=no\"] }",
    );
    assert!(
        weak.len() == 1 && weak[0].contains("NOT checked"),
        "{weak:?}"
    );
}

#[test]
fn bake_retention_is_a_share_or_a_size() {
    use super::{parse_retention, Retention};
    assert_eq!(parse_retention("50%"), Ok(Retention::Percent(50)));
    assert_eq!(parse_retention(" 100 %"), Ok(Retention::Percent(100)));
    assert_eq!(parse_retention("20GiB"), Ok(Retention::Bytes(20 << 30)));
    for bad in ["0%", "101%", "-5%", "x%", "0", "lots"] {
        assert!(parse_retention(bad).is_err(), "{bad}");
    }
}

#[test]
fn retention_past_its_limit() {
    use super::Retention;
    let half = Retention::Percent(50);
    // 40 retained of 100 left for WAL: under half; 60 of 100: past it.
    assert_eq!(half.exceeded(40, Some(60)), Some(false));
    assert_eq!(half.exceeded(60, Some(40)), Some(true));
    assert_eq!(half.exceeded(50, Some(50)), Some(false));
    // A share of a disk whose free space is unknown is not judged; bytes are.
    assert_eq!(half.exceeded(60, None), None);
    assert_eq!(Retention::Bytes(10).exceeded(11, None), Some(true));
    assert_eq!(Retention::Bytes(10).exceeded(10, None), Some(false));
    // No overflow at the extremes.
    assert_eq!(
        Retention::Percent(100).exceeded(u64::MAX, Some(u64::MAX)),
        Some(false)
    );
}

#[test]
fn clone_settings_become_pg_basebackup_arguments() {
    let base = "name = \"t\"\n[replication]\nuser = \"repl\"\n\
        [nodes.old]\nrole = \"primary\"\nconninfo = \"host=10.0.0.1\"\ndata_dir = \"/a\"\n\
        [nodes.new]\nrole = \"target\"\nupstream = \"old\"\nconninfo = \"host=10.0.0.2\"\ndata_dir = \"/b\"\n";
    let parse =
        |extra: &str| super::parse(std::path::Path::new("/x.toml"), &format!("{base}{extra}"));
    assert!(parse("").unwrap().clone.basebackup_args().is_empty());
    let s = parse("[clone]\nmax_rate = \"20MB\"\ncompress = \"zstd\"\n").unwrap();
    assert_eq!(
        s.clone.basebackup_args(),
        ["--max-rate=20480k", "--compress=server-zstd"]
    );
    assert!(parse("[clone]\nmax_rate = \"1kB\"\n").unwrap_err().field == "clone.max_rate");
    assert!(parse("[clone]\ncompress = \"xz\"\n").unwrap_err().field == "clone.compress");
}
