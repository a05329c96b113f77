//! Each route provider against its real server on loopback: point at the new primary, verify,
//! point back, verify; and the refusals that must leave the route as it was.

use crate::support::traffic::{
    listen_also_on, node, Bind, HaProxy, NatBox, Pair, PowerDns, PDNS_KEY,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_points_verifies_persists_and_points_back() {
    let pair = Pair::up().await;
    let listen = pair.ports.base;
    let mut proxy = HaProxy::start(pair.dir.path(), listen, pair.port("old"));
    let (spec, r) = pair.router(&format!(
        "[[route]]\nkind = \"haproxy\"\nsocket = \"{}\"\nbackend = \"pg_primary\"\nserver = \"pg1\"\nconfig = \"{}\"\nconnect = \"{}\"\n",
        proxy.socket.display(),
        proxy.cfg.display(),
        pair.connect_via(listen)
    ));
    let (old, new) = (node(&spec, "old"), node(&spec, "new"));

    let before = r.current().await.unwrap();
    assert_eq!(before["port"], pair.port("old"), "{before}");
    r.verify(old).await.unwrap();
    assert!(r.verify(new).await.is_err(), "it does not reach new yet");

    let pointed = r.point(old, new).await.unwrap();
    assert_eq!(pointed["config_rewritten"], true, "{pointed}");
    let v = r.verify(new).await.unwrap();
    assert_eq!(v["port"], pair.port("new").to_string(), "{v}");
    let cfg = std::fs::read_to_string(&proxy.cfg).unwrap();
    assert!(
        cfg.contains(&format!("server pg1 127.0.0.1:{} check", pair.port("new"))),
        "{cfg}"
    );
    // Idempotent: again is a no-op.
    assert_eq!(r.point(old, new).await.unwrap()["config_rewritten"], false);

    // A restart from the configuration keeps the new address.
    let (cfg_path, socket) = (proxy.cfg.clone(), proxy.socket.clone());
    proxy.daemon.kill();
    let proxy = HaProxy::run(cfg_path, socket, listen);
    r.verify(new).await.unwrap();

    r.point(new, old).await.unwrap();
    r.verify(old).await.unwrap();
    let cfg = std::fs::read_to_string(&proxy.cfg).unwrap();
    assert!(cfg.contains(&format!("127.0.0.1:{} check", pair.port("old"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_update_is_signed_compare_and_swap_and_verified_by_query() {
    let pair = Pair::up().await;
    let bind = Bind::start(pair.dir.path(), pair.ports.base, "127.0.0.11");
    let route = |key: &std::path::Path| {
        format!(
            "[[route]]\nkind = \"dns\"\nserver = \"127.0.0.1:{}\"\nzone = \"db.test\"\nname = \"pg.db.test\"\nttl = 30\nkey_file = \"{}\"\n\
             [route.targets]\nold = \"127.0.0.11\"\nnew = \"127.0.0.12\"\n",
            bind.port,
            key.display()
        )
    };
    let (spec, r) = pair.router(&route(&bind.key_file));
    let (old, new) = (node(&spec, "old"), node(&spec, "new"));

    assert_eq!(
        r.current().await.unwrap()["addresses"],
        serde_json::json!(["127.0.0.11"])
    );
    r.verify(old).await.unwrap();
    let p = r.point(old, new).await.unwrap();
    assert_eq!(p["changed"], true);
    assert_eq!(bind.dig(), "127.0.0.12");
    r.verify(new).await.unwrap();
    assert_eq!(r.point(old, new).await.unwrap()["changed"], false);
    r.point(new, old).await.unwrap();
    assert_eq!(bind.dig(), "127.0.0.11");
    r.verify(old).await.unwrap();

    // A wrong key (same name, another secret) is refused and changes nothing.
    let wrong = pair.dir.path().join("wrong.key");
    std::fs::write(
        &wrong,
        "key \"pgmig-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZ3dyb25nISE=\";\n};\n",
    )
    .unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (_, bad) = pair.router(&route(&wrong));
    let e = format!("{:#}", bad.point(old, new).await.unwrap_err());
    assert!(e.contains("TSIG") || e.contains("refused"), "{e}");
    assert!(!e.contains("d3Jvbmd3"), "the secret leaked: {e}");
    assert_eq!(bind.dig(), "127.0.0.11");
    // The plan's route check (verify) uses a signed query: a wrong key shows there too.
    assert!(bad.verify(old).await.is_err(), "verify must prove the key");

    // Someone else moved the record: the compare-and-swap refuses to overwrite it.
    bind.nsupdate("127.0.0.99");
    let e = format!("{:#}", r.point(old, new).await.unwrap_err());
    assert!(e.contains("no longer holds 127.0.0.11"), "{e}");
    assert_eq!(bind.dig(), "127.0.0.99");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powerdns_api_replaces_the_rrset_and_the_answer_is_verified() {
    let pair = Pair::up().await;
    let pdns = PowerDns::start(
        pair.dir.path(),
        pair.ports.base,
        pair.ports.base + 1,
        "127.0.0.11",
    )
    .await;
    let route = |var: &str| {
        format!(
            "[[route]]\nkind = \"powerdns\"\napi = \"http://127.0.0.1:{}\"\nzone = \"db.test.\"\nname = \"pg.db.test.\"\napi_key = {{ env = \"{var}\" }}\ndns_server = \"127.0.0.1:{}\"\n\
             [route.targets]\nold = \"127.0.0.11\"\nnew = \"127.0.0.12\"\n",
            pdns.api_port, pdns.dns_port
        )
    };
    // Set before any other thread reads the environment in this test process.
    std::env::set_var("ROUTE_TEST_PDNS_KEY", PDNS_KEY);
    std::env::set_var("ROUTE_TEST_PDNS_BAD", "not-the-key");
    let (spec, r) = pair.router(&route("ROUTE_TEST_PDNS_KEY"));
    let (old, new) = (node(&spec, "old"), node(&spec, "new"));

    r.verify(old).await.unwrap();
    assert_eq!(r.point(old, new).await.unwrap()["changed"], true);
    assert_eq!(pdns.dig(), "127.0.0.12");
    r.verify(new).await.unwrap();
    r.point(new, old).await.unwrap();
    assert_eq!(pdns.dig(), "127.0.0.11");
    r.verify(old).await.unwrap();

    let (_, bad) = pair.router(&route("ROUTE_TEST_PDNS_BAD"));
    let e = format!("{:#}", bad.point(old, new).await.unwrap_err());
    assert!(e.contains("refused the API key"), "{e}");
    assert!(!e.contains("not-the-key") && !e.contains(PDNS_KEY), "{e}");
    assert!(bad.verify(old).await.is_err(), "verify must prove the key");
    assert_eq!(pdns.dig(), "127.0.0.11");
}

/// The example plugin shipped in fixtures/plugins (a hosts-file entry, as application servers
/// use for the database name) through the exec protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_plugin_example_points_verifies_and_points_back() {
    let pair = Pair::up().await;
    let hosts = pair.dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n10.0.0.1 pg.db.internal\n").unwrap();
    let plugin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/plugins/migrate-route-hostsfile");
    let (spec, r) = pair.router(&format!(
        "[[route]]\nkind = \"exec\"\nname = \"hostsfile\"\ncommand = [\"{}\"]\n\
         config = {{ file = \"{}\", name = \"pg.db.internal\" }}\n\
         [route.targets]\nold = \"10.0.0.1\"\nnew = \"10.0.0.2\"\n",
        plugin.display(),
        hosts.display()
    ));
    let (old, new) = (node(&spec, "old"), node(&spec, "new"));
    assert_eq!(r.current().await.unwrap()["address"], "10.0.0.1");
    r.verify(old).await.unwrap();
    r.point(old, new).await.unwrap();
    let text = std::fs::read_to_string(&hosts).unwrap();
    assert!(text.contains("10.0.0.2 pg.db.internal"), "{text}");
    assert!(text.contains("127.0.0.1 localhost"), "{text}");
    r.verify(new).await.unwrap();
    let e = format!("{:#}", r.verify(old).await.unwrap_err());
    assert!(e.contains("hostsfile") && e.contains("10.0.0.2"), "{e}");
    r.point(new, old).await.unwrap();
    r.verify(old).await.unwrap();

    // A plugin that is not there: refused when the spec is read, naming the field...
    let path = pair.spec_file("[[route]]\nkind = \"exec\"\nname = \"nosuchplugin\"\n");
    let e = migrate::spec::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("route[0].command[0]") && e.contains("migrate-route-nosuchplugin"),
        "{e}"
    );
    // ...and one removed after that is a clear error at run time.
    let spec = migrate::spec::parse(&path, &std::fs::read_to_string(&path).unwrap()).unwrap();
    let missing = migrate::route::open(&spec.routes).unwrap().remove(0);
    let e = format!("{:#}", missing.current().await.unwrap_err());
    assert!(e.contains("migrate-route-nosuchplugin"), "{e}");
}

/// The NAT box is a network namespace the test creates and removes; the route reaches it
/// through host control, and clients (this process) through the virtual address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_swaps_the_dnat_rule_atomically_in_a_network_namespace() {
    let pair = Pair::up().await;
    let nat = NatBox::create(pair.dir.path());
    listen_also_on(&pair, &["old", "new"], nat.host_ip, "10.213.0.0/24").await;
    let (spec, r) = pair.router(&format!(
        "[[route]]\nkind = \"nat\"\nlisten = \"{vip}:5432\"\ntable = \"migrate_test\"\nhook = \"prerouting\"\n\
         connect = \"host={vip} port=5432 user=postgres dbname=postgres passfile={pass} sslmode=disable connect_timeout=5\"\n\
         host = {{ kind = \"docker\", container = \"{ns}\", docker = \"{wrapper}\" }}\n\
         [route.targets]\nold = \"{ip}:{old}\"\nnew = \"{ip}:{new}\"\n",
        vip = nat.vip,
        pass = pair.lab.lab.passfile().display(),
        ns = nat.ns,
        wrapper = nat.exec_wrapper.display(),
        ip = nat.host_ip,
        old = pair.port("old"),
        new = pair.port("new"),
    ));
    let (old, new) = (node(&spec, "old"), node(&spec, "new"));

    assert_eq!(r.current().await.unwrap()["dnat"], serde_json::Value::Null);
    assert!(r.verify(old).await.is_err(), "no rule yet");
    // The first point creates the table and the rule.
    r.point(new, old).await.unwrap();
    r.verify(old).await.unwrap();

    let p = r.point(old, new).await.unwrap();
    assert_eq!(p["changed"], true);
    let v = r.verify(new).await.unwrap();
    assert_eq!(v["port"], pair.port("new").to_string(), "{v}");
    let rules = nat.rules("migrate_test");
    assert_eq!(rules.matches("dnat to").count(), 1, "one rule: {rules}");
    assert_eq!(r.point(old, new).await.unwrap()["changed"], false);

    r.point(new, old).await.unwrap();
    r.verify(old).await.unwrap();
    let rules = nat.rules("migrate_test");
    assert!(
        rules.contains(&format!("dnat to {}:{}", nat.host_ip, pair.port("old"))),
        "{rules}"
    );
}

/// A route is verified by who answers through it, not by the port: old and new here are
/// copies of one cluster (one system identifier), both writable, and the postmaster start time
/// tells them apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_reaches_a_node_only_if_that_very_server_answers() {
    use migrate::pg::conninfo::Conninfo;
    use migrate::spec::Through;
    let pair = Pair::up().await;
    let spec = pair.spec_with("");
    let to_old = Through {
        conninfo: Conninfo::parse(&pair.connect_via(pair.port("old"))).unwrap(),
        password: None,
    };
    let v = migrate::route::reaches(&to_old, "the app endpoint", node(&spec, "old"))
        .await
        .unwrap();
    assert_eq!(v["primary"], "old", "{v}");
    let e = migrate::route::reaches(&to_old, "the app endpoint", node(&spec, "new"))
        .await
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("another server answers than new"), "{e}");
    assert!(e.contains("system identifier"), "{e}");
}
