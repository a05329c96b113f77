//! Hostile specs unlike any in fixtures/bad: every value of several good specs (each leaf, each
//! array element, each conninfo keyword) replaced in turn by hostile text, numbers and shapes,
//! every key removed in turn, and an unknown key added to every table. Whatever the spec,
//! `parse` must not panic; a refusal names the file, a field and a fix in printable text of
//! bounded length; and a spec that is accepted holds no control character anywhere (they
//! would reach shells, conninfo strings, journals and terminals) and no value an ssh or
//! docker command line would read as an option.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use toml::{Table, Value};

use super::*;

/// A spec using every section and every kind of host, service, HA manager, route and plugin.
const RICH: &str = r#"
name = "rich"
state_dir = "/var/lib/migrate/rich"

[replication]
user = "repl"
password = { passfile = "/etc/migrate/pgpass" }

[nodes.old]
role = "primary"
conninfo = "host=db-old port=5432 user=postgres dbname=postgres sslmode=verify-full sslrootcert=/etc/migrate/ca.crt"
password = { passfile = "/etc/migrate/pgpass" }
data_dir = "/var/lib/postgresql/15/main"
bin_dir = "/usr/lib/postgresql/15/bin"
log_file = "/var/log/postgresql/old.log"
service = { kind = "pg_ctlcluster", version = 15, cluster = "main" }
ha = { kind = "repmgr", config = "/etc/repmgr.conf" }
host = { kind = "ssh", host = "db-old", user = "postgres", port = 22, identity_file = "/root/.ssh/id_ed25519", known_hosts = "/etc/migrate/known_hosts", options = ["ServerAliveInterval=5"] }

[nodes.new]
role = "target"
upstream = "old"
replication_tls = "none"
conninfo = "postgresql://postgres@db-new1:5432/postgres?sslmode=verify-full&sslrootcert=/etc/migrate/ca.crt"
data_dir = "/var/lib/postgresql/15/main"
service = { kind = "systemd", unit = "postgresql@15-main" }
ha = { kind = "patroni", url = "https://10.0.0.1:8008", cluster = "main", username = "patroni", password = { file = "/etc/migrate/patroni-api" }, ca_file = "/etc/patroni/ca.pem" }
host = { kind = "local", run_as = "postgres" }

[nodes.dr]
role = "replica"
upstream = "new"
conninfo = "host=pg-dr port=5433 user=postgres dbname=postgres"
data_dir = "/var/lib/postgresql/data"
host = { kind = "docker", container = "pg-dr", user = "postgres", docker = "/usr/bin/docker" }

[cutover]
window_start = "2026-11-28T01:00:00+01:00"
window_end = "2026-11-28T03:00:00+01:00"
lag_threshold = "16MiB"
lag_stable_for = "5s"
catchup_timeout = "10m"
proof_timeout = "30s"
promote_timeout = "60s"
hold_timeout = "10s"
hold = "abort"
retire = "standby"
resync = "ask"

[failover.fence]
command = ["/usr/local/bin/fence-vm", "--site", "dc2"]
timeout = "60s"
env = ["HYPERVISOR_TOKEN"]
config = { vm = "db-new1" }

[clone]
method = "pgbackrest"
stanza = "main"
config = "/etc/pgbackrest/pgbackrest.conf"

[bake]
unbounded_slots = "refuse"
max_retained = "50%"

[[hook]]
command = ["/usr/local/bin/notify-dba"]
timeout = "10s"
env = ["SLACK_TOKEN"]
gate = false

[[hook]]
url = "https://hooks.example.net/migrate"

[[route]]
kind = "pgbouncer"
admin = "host=pooler port=6432 user=pgbouncer dbname=pgbouncer"
password = { env = "PGBOUNCER_ADMIN_PASSWORD" }
config = "/etc/pgbouncer/pgbouncer.ini"
databases = ["app"]
host = { kind = "ssh", host = "pooler", user = "postgres" }
"#;

/// The good specs whose every value is replaced in turn.
fn seeds() -> Vec<(String, String)> {
    let mut out = vec![("rich.toml".to_string(), RICH.to_string())];
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for rel in [
        "good/example.toml",
        "good/minimal.toml",
        "good/routes.toml",
        "compose.toml",
    ] {
        out.push((
            rel.to_string(),
            std::fs::read_to_string(fixtures.join(rel)).unwrap(),
        ));
    }
    out
}

/// Text an attacker or a slip of the hand could put in any string field.
fn hostile_text() -> Vec<String> {
    let mut out: Vec<String> = [
        "",
        " ",
        "-",
        "--",
        "-oProxyCommand=touch /tmp/migrate-mutation-ran",
        "--help",
        "a\nb",
        "a\rb",
        "a\tb",
        "a\u{0}b",
        "a\u{1b}[2Jb",
        "a\u{7f}b",
        "a\u{85}b",
        "a\u{2028}b",
        "a\u{202e}b",
        "$(touch /tmp/migrate-mutation-ran)",
        "`touch /tmp/migrate-mutation-ran`",
        "a;touch /tmp/migrate-mutation-ran",
        "a|b",
        "a&b",
        "a b",
        "'",
        "\"",
        "\\",
        "%s%n",
        "${HOME}",
        "*",
        "../../../etc/passwd",
        "/",
        "/.",
        "/tmp/../",
        ".",
        "~",
        "relative/path",
        "host=evil port=1",
        "a=b c=d",
        "0",
        "-1",
        "99999999999999999999999",
        "1e400",
        "NaN",
        "é",
        "💥",
        "\u{feff}",
    ]
    .map(String::from)
    .into();
    out.push("x".repeat(70_000));
    out.push("/".repeat(5000));
    out
}

fn hostile_values() -> Vec<Value> {
    let mut out: Vec<Value> = hostile_text().into_iter().map(Value::String).collect();
    out.extend(
        [0, 1, -1, 65_536, i64::MAX, i64::MIN]
            .into_iter()
            .map(Value::Integer),
    );
    out.extend(
        [0.5, -0.0, f64::INFINITY, f64::NAN]
            .into_iter()
            .map(Value::Float),
    );
    out.push(Value::Boolean(true));
    out.push(Value::Array(vec![]));
    out.push(Value::Array(vec![Value::String("a\nb".into())]));
    out.push(Value::Array(vec![Value::String("-x".into())]));
    out.push(Value::Table(Table::new()));
    out
}

/// One step into a TOML value: a table key or an array index.
#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

fn shown(path: &[Seg]) -> String {
    path.iter()
        .map(|s| match s {
            Seg::Key(k) => k.clone(),
            Seg::Index(i) => format!("[{i}]"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Every path to a leaf, and every path to a table (for removals and additions).
fn paths(v: &Value, here: &mut Vec<Seg>, leaves: &mut Vec<Vec<Seg>>, tables: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Table(t) => {
            tables.push(here.clone());
            for (k, child) in t {
                here.push(Seg::Key(k.clone()));
                paths(child, here, leaves, tables);
                here.pop();
            }
        }
        Value::Array(a) => {
            leaves.push(here.clone());
            for (i, child) in a.iter().enumerate() {
                here.push(Seg::Index(i));
                paths(child, here, leaves, tables);
                here.pop();
            }
        }
        _ => leaves.push(here.clone()),
    }
}

fn inside_plugin_config(path: &[Seg]) -> Accepted {
    if path
        .windows(2)
        .any(|w| matches!(&w[0], Seg::Key(k) if k == "config"))
    {
        Accepted::Opaque
    } else {
        Accepted::Printable
    }
}

fn at<'a>(v: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    path.iter().fold(v, |v, s| match s {
        Seg::Key(k) => v.as_table_mut().unwrap().get_mut(k).unwrap(),
        Seg::Index(i) => &mut v.as_array_mut().unwrap()[*i],
    })
}

/// Control characters and the other invisible ones a terminal or a parser could act on.
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{feff}'
        )
}

/// What must hold for any input: checked for one mutated spec.
fn check(what: &str, text: &str) {
    check_with(what, text, Accepted::Printable)
}

/// What an accepted spec must show: no unprintable text anywhere, or (for a value inside a
/// plugin's opaque `config` table, handed over as JSON) only that nothing panicked.
#[derive(Clone, Copy)]
enum Accepted {
    Printable,
    Opaque,
}

fn check_with(what: &str, text: &str, want: Accepted) {
    if let Err(e) = catch_unwind(AssertUnwindSafe(|| check_inner(what, text, want))) {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        FAILURES.with(|f| f.borrow_mut().push(msg));
    }
}

thread_local! {
    static FAILURES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn check_inner(what: &str, text: &str, want: Accepted) {
    let path = Path::new("/srv/specs/mutated.toml");
    let result = catch_unwind(AssertUnwindSafe(|| parse(path, text)))
        .unwrap_or_else(|_| panic!("parse panicked on {what}"));
    match result {
        Err(e) => {
            assert_eq!(e.file, path, "{what}");
            for (part, s) in [
                ("field", &e.field),
                ("problem", &e.problem),
                ("fix", &e.fix),
            ] {
                assert!(!s.trim().is_empty(), "{what}: empty {part} in {e}");
                assert!(
                    !s.chars().any(unprintable),
                    "{what}: unprintable character in the error's {part}: {s:?}"
                );
                assert!(
                    s.len() <= 2048,
                    "{what}: the error's {part} is {} bytes long",
                    s.len()
                );
            }
        }
        Ok(spec) => match want {
            Accepted::Printable => accepted(what, &spec),
            Accepted::Opaque => {}
        },
    }
}

/// An accepted spec: nothing in it a shell, a conninfo string or a terminal could misread.
fn accepted(what: &str, spec: &Spec) {
    // Debug shows an unprintable character as an escape: look for the escapes.
    let debug = format!("{spec:?}");
    for esc in ["\\n", "\\r", "\\t", "\\0", "\\u{"] {
        assert!(
            !debug.contains(esc),
            "{what}: accepted, with {esc} in it: {}",
            excerpt(&debug, esc)
        );
    }
    for node in &spec.nodes {
        // Positional arguments of pg_ctlcluster and systemctl: an option there changes the
        // command.
        let word = match &node.service {
            crate::pg::service::Service::PgCtlCluster { cluster, .. } => cluster.as_str(),
            crate::pg::service::Service::Systemd { unit } => unit.as_str(),
            crate::pg::service::Service::PgCtl => "",
        };
        assert!(
            !word.starts_with('-'),
            "{what}: service {:?} accepted",
            node.service
        );
    }
    let routes = spec.routes.iter().filter_map(|r| match r {
        Route::PgBouncer(p) => Some(&p.host),
        Route::HaProxy(h) => Some(&h.host),
        Route::Nat(n) => Some(&n.host),
        _ => None,
    });
    for host in spec.nodes.iter().map(|n| &n.host).chain(routes) {
        match host {
            HostSpec::Ssh { host, user, .. } => {
                assert!(!host.starts_with('-'), "{what}: ssh host {host:?} accepted");
                assert!(
                    !user.as_deref().unwrap_or("").starts_with('-'),
                    "{what}: ssh user {user:?} accepted"
                );
            }
            HostSpec::Docker {
                container, user, ..
            } => {
                assert!(
                    !container.starts_with('-'),
                    "{what}: container {container:?} accepted"
                );
                assert!(
                    !user.as_deref().unwrap_or("").starts_with('-'),
                    "{what}: docker user {user:?} accepted"
                );
            }
            HostSpec::Local { .. } => {}
        }
    }
}

fn excerpt(s: &str, needle: &str) -> String {
    let i = s.find(needle).unwrap_or(0);
    let from = s.floor_char_boundary(i.saturating_sub(120));
    let to = s.ceil_char_boundary((i + 60).min(s.len()));
    s[from..to].to_string()
}

fn render(v: &Value) -> String {
    toml::to_string(v.as_table().unwrap()).unwrap()
}

/// The conninfo keywords' values, replaced one at a time (key=value form only).
fn conninfo_variants(conninfo: &str) -> Vec<String> {
    let words: Vec<&str> = conninfo.split_whitespace().collect();
    let mut out = Vec::new();
    for i in 0..words.len() {
        let Some((key, _)) = words[i].split_once('=') else {
            continue;
        };
        for bad in [
            "'a b'",
            "'-oProxyCommand=x'",
            "'a\\'",
            "a'b",
            "'",
            "\\",
            "'a\nb'",
            "''",
            "99999999999",
            "-1",
        ] {
            let mut w = words.clone();
            let replaced = format!("{key}={bad}");
            w[i] = &replaced;
            out.push(w.join(" "));
        }
    }
    out.push(format!("{conninfo} host=-x"));
    out.push(format!(
        "{conninfo} options='-c default_transaction_read_only=off'"
    ));
    out.push(format!("{conninfo} service=evil"));
    out
}

#[test]
fn hostile_values_in_every_field_are_refused_cleanly_or_harmless() {
    let values = hostile_values();
    let mut tried = 0;
    for (name, text) in seeds() {
        let seed: Value = toml::from_str::<Table>(&text).unwrap().into();
        check(&format!("{name} as written"), &render(&seed));
        let (mut leaves, mut tables) = (Vec::new(), Vec::new());
        paths(&seed, &mut Vec::new(), &mut leaves, &mut tables);
        for path in &leaves {
            for bad in &values {
                let mut v = seed.clone();
                *at(&mut v, path) = bad.clone();
                let what = format!("{name}: {} = {}", shown(path), excerpt_value(bad));
                check_with(&what, &render(&v), inside_plugin_config(path));
                tried += 1;
            }
            if let Some(Value::String(s)) = Some(at(&mut seed.clone(), path).clone()) {
                if s.contains('=') {
                    for variant in conninfo_variants(&s) {
                        let mut v = seed.clone();
                        *at(&mut v, path) = Value::String(variant.clone());
                        check(
                            &format!("{name}: {} = {variant:?}", shown(path)),
                            &render(&v),
                        );
                        tried += 1;
                    }
                }
            }
        }
        for path in &tables {
            let table = at(&mut seed.clone(), path).as_table().unwrap().clone();
            for key in table.keys() {
                let mut v = seed.clone();
                at(&mut v, path).as_table_mut().unwrap().remove(key);
                check(
                    &format!("{name}: {}.{key} removed", shown(path)),
                    &render(&v),
                );
                tried += 1;
            }
            let mut v = seed.clone();
            at(&mut v, path)
                .as_table_mut()
                .unwrap()
                .insert("surprise".into(), Value::String("x".into()));
            check(
                &format!("{name}: {}.surprise added", shown(path)),
                &render(&v),
            );
            tried += 1;
        }
    }
    let failures = FAILURES.with(|f| f.take());
    let listed: Vec<&str> = failures
        .iter()
        .take(100)
        .map(|f| &f[..f.floor_char_boundary(400.min(f.len()))])
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {tried} mutations failed; the first:\n{}",
        failures.len(),
        listed.join("\n")
    );
    assert!(tried > 10_000, "only {tried} mutations tried");
}

fn excerpt_value(v: &Value) -> String {
    let s = format!("{v:?}");
    if s.len() > 80 {
        format!("{}… ({} bytes)", &s[..s.floor_char_boundary(80)], s.len())
    } else {
        s
    }
}

/// A spec with an old primary, a target and `n` replicas `n0`…, each streaming from the node
/// `upstream(i)` names.
fn many_replicas(target: &str, n: usize, upstream: impl Fn(usize) -> String) -> String {
    let mut text = format!(
        "name = \"many\"\n[replication]\nuser = \"repl\"\n\
         [nodes.old]\nrole = \"primary\"\nconninfo = \"host=10.0.0.1\"\ndata_dir = \"/srv/old\"\n\
         [nodes.{target}]\nrole = \"target\"\nupstream = \"old\"\nconninfo = \"host=10.0.0.2\"\ndata_dir = \"/srv/{target}\"\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "[nodes.n{i}]\nrole = \"replica\"\nupstream = \"{}\"\nconninfo = \"host=10.1.{}.{}\"\ndata_dir = \"/srv/n{i}\"\n",
            upstream(i),
            i / 250,
            i % 250
        ));
    }
    text
}

/// A chain of replicas thousands deep is accepted, in order, without a stack overflow (an
/// upstream walk that recursed would end the process; the walk that kept a list per node
/// took 55 s for 5000 before it was made linear).
#[test]
fn thousands_of_nodes_in_a_deep_chain_do_not_overflow() {
    let text = many_replicas("new", 5000, |i| {
        if i == 0 {
            "new".into()
        } else {
            format!("n{}", i - 1)
        }
    });
    let spec = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || parse(Path::new("/srv/deep.toml"), &text))
        .unwrap()
        .join()
        .expect("parse of a deep chain panicked or overflowed its stack")
        .unwrap();
    let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names.len(), 5002);
    assert_eq!(names[..4], ["old", "new", "n0", "n1"]);
    assert_eq!(names[5001], "n4999");
}

/// A replication cycle thousands of nodes long is named in a message of bounded length.
#[test]
fn a_cycle_thousands_of_nodes_long_is_named_briefly() {
    let text = many_replicas("new", 3000, |i| format!("n{}", (i + 1) % 3000));
    let e = parse(Path::new("/srv/loop.toml"), &text).unwrap_err();
    assert!(e.problem.starts_with("replication cycle: "), "{e}");
    assert!(e.problem.contains("more"), "{e}");
    assert!(e.to_string().len() < 1024, "{} bytes", e.to_string().len());
}

/// Nesting and dotted keys far past any real spec: refused by the TOML reader's own limits,
/// with a message that still names a place.
#[test]
fn nesting_past_the_readers_limits_is_refused_naming_a_place() {
    let deep = 100_000;
    for text in [
        format!("name = {}{}\n", "[".repeat(deep), "]".repeat(deep)),
        format!("name = {}1{}\n", "{a = ".repeat(deep), "}".repeat(deep)),
        format!("name = \"x\"\n{}b = 1\n", "a.".repeat(deep)),
    ] {
        let e = parse(Path::new("/srv/deep.toml"), &text).unwrap_err();
        assert!(!e.field.trim().is_empty(), "{e}");
        assert!(e.to_string().len() < 1024, "{e}");
    }
}
