//! docker-compose.yml and fixtures/compose.toml describe the same topology. There is no Docker
//! engine here, so this checks what can be checked: the compose file parses, every spec node
//! is a service (same name, container, port, data directory, PostgreSQL major version), the
//! datacenter networks are as the story has them, and the spec validates.

use std::path::Path;

use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let s = &compose["services"][name];
    assert!(!s.is_null(), "docker-compose.yml has no service {name}");
    s
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_file_and_its_spec_match() {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let mut compose: Value = serde_yaml::from_str(&text).expect("docker-compose.yml parses");
    compose.apply_merge().expect("YAML merge keys resolve");
    let spec = migrate::spec::load(&root().join("fixtures/compose.toml")).unwrap();

    let mut published = std::collections::BTreeSet::new();
    for node in &spec.nodes {
        let svc = service(&compose, &node.name);
        assert_eq!(
            node.conninfo.host(),
            node.name,
            "{}: the spec reaches the node by its service name",
            node.name
        );
        let ports = strs(&svc["ports"]);
        assert_eq!(ports.len(), 1, "{}: {ports:?}", node.name);
        let (host_port, container_port) = ports[0].split_once(':').unwrap();
        assert_eq!(
            container_port,
            node.conninfo.port().to_string(),
            "{}",
            node.name
        );
        assert!(
            published.insert(host_port.to_string()),
            "port {host_port} twice"
        );
        match &node.host {
            migrate::host::HostSpec::Docker { container, .. } => assert_eq!(
                svc["container_name"].as_str(),
                Some(container.as_str()),
                "{}: host control's container",
                node.name
            ),
            other => panic!(
                "{}: compose nodes use docker host control, not {other:?}",
                node.name
            ),
        }
        assert_eq!(
            svc["environment"]["PGDATA"].as_str(),
            Some(node.data_dir.to_str().unwrap()),
            "{}: data directory",
            node.name
        );
        let image = svc["image"].as_str().unwrap();
        let major = image.rsplit(':').next().unwrap();
        assert!(
            node.bin_dir
                .as_ref()
                .unwrap()
                .to_str()
                .unwrap()
                .contains(&format!("/{major}/")),
            "{}: image {image} vs bin_dir {:?}",
            node.name,
            node.bin_dir
        );
        assert!(!svc["healthcheck"].is_null(), "{}: healthcheck", node.name);
    }
    // Every database service is a spec node.
    for (name, svc) in compose["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        if svc["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("postgres:"))
        {
            assert!(
                spec.node(name).is_some(),
                "service {name} is not in the spec"
            );
        }
    }
    // One network per datacenter: old alone, new with its local replica, DR apart.
    let nets = |n: &str| strs(&service(&compose, n)["networks"]);
    assert_eq!(nets("old"), ["dc_old"]);
    assert_eq!(nets("new"), ["dc_new"]);
    assert_eq!(nets("new_replica"), ["dc_new"]);
    assert_eq!(nets("dr"), ["dc_dr"]);
    let tool = nets("tool");
    for dc in ["dc_old", "dc_new", "dc_dr"] {
        assert!(tool.contains(&dc.to_string()), "the tool reaches {dc}");
    }
    // The route: the spec's PgBouncer is the compose PgBouncer.
    match &spec.routes[..] {
        [migrate::spec::Route::PgBouncer(p)] => {
            let svc = service(&compose, p.admin.host());
            assert_eq!(
                p.admin.port().to_string(),
                svc["environment"]["LISTEN_PORT"]
                    .as_u64()
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            );
            assert_eq!(
                svc["environment"]["DB_NAME"].as_str(),
                p.databases.first().map(String::as_str)
            );
            assert_eq!(
                svc["environment"]["DB_HOST"].as_str(),
                Some(spec.primary().name.as_str())
            );
        }
        other => panic!("the compose spec routes through PgBouncer: {other:?}"),
    }
}
