//! Real traffic servers for the route providers, started on loopback by the test itself and
//! killed on drop: HAProxy, BIND (named), PowerDNS, and a network namespace for NAT.
//! CI installs haproxy, bind9, bind9-dnsutils, pdns-server, pdns-backend-sqlite3, sqlite3 and
//! nftables.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use migrate::lab::ports::PortBlock;
use migrate::route::Router;
use migrate::spec::{Node, Spec};

use super::TestLab;

/// A background server process, killed (and reaped) on drop.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Daemon {
        let log = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e} (is it installed?)"));
        Daemon { child }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "{what} not ready after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn wait_for_tcp(port: u16) {
    wait_until(
        &format!("127.0.0.1:{port}"),
        Duration::from_secs(20),
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

fn world_readable_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("migrate-route-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A lab whose `old` and `new` are both writable primaries (`new` a base backup of `old`
/// started without standby.signal): what a route needs to show it reaches one or the other.
pub struct Pair {
    pub lab: TestLab,
    pub dir: tempfile::TempDir,
    pub ports: PortBlock,
}

impl Pair {
    pub async fn up() -> Pair {
        let lab = TestLab::up().await;
        let l = &lab.lab;
        // The base backup goes over the local socket as the postgres OS user.
        let hba = l.data_dir("old").join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).unwrap();
        text.push_str("local   replication  postgres  trust\n");
        std::fs::write(&hba, text).unwrap();
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(l.bin_dir.join("psql"))
                .arg("-h")
                .arg(l.socket_dir())
                .arg("-p")
                .arg(l.port("old").to_string())
                .args(["-U", "postgres", "-qAtc", "SELECT pg_reload_conf()"]),
        );
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(l.bin_dir.join("pg_basebackup"))
                .arg("-h")
                .arg(l.socket_dir())
                .arg("-p")
                .arg(l.port("old").to_string())
                .args(["-U", "postgres", "-X", "stream", "-c", "fast", "-D"])
                .arg(l.data_dir("new")),
        );
        l.write_node_conf("new").await.unwrap();
        l.server("new")
            .start(&l.server_log("new"), Duration::from_secs(60))
            .await
            .unwrap();
        Pair {
            lab,
            dir: world_readable_dir(),
            ports: PortBlock::reserve(4).expect("free ports"),
        }
    }

    pub fn port(&self, node: &str) -> u16 {
        self.lab.lab.port(node)
    }

    /// The lab spec with `route` (a `[[route]]` table) in place of its PgBouncer route.
    pub fn spec_with(&self, route: &str) -> Spec {
        let path = self.spec_file(route);
        migrate::spec::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The file [`Pair::spec_with`] loads.
    pub fn spec_file(&self, route: &str) -> PathBuf {
        let text = std::fs::read_to_string(self.lab.lab.spec_path()).unwrap();
        let cut = text.find("[[route]]").unwrap_or(text.len());
        let path = self.lab.lab.dir.join("route-test.toml");
        std::fs::write(&path, format!("{}\n{route}\n", &text[..cut])).unwrap();
        path
    }

    pub fn router(&self, route: &str) -> (Spec, Box<dyn Router>) {
        let spec = self.spec_with(route);
        let mut routers = migrate::route::open(&spec.routes).unwrap();
        assert_eq!(routers.len(), 1);
        (spec, routers.remove(0))
    }

    /// The application-facing conninfo for a proxy on `port` (the lab's passfile has the
    /// password).
    pub fn connect_via(&self, port: u16) -> String {
        format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres passfile={} sslmode=disable",
            self.lab.lab.passfile().display()
        )
    }
}

pub fn node<'a>(spec: &'a Spec, name: &str) -> &'a Node {
    spec.node(name).unwrap()
}

pub struct HaProxy {
    pub daemon: Daemon,
    pub cfg: PathBuf,
    pub socket: PathBuf,
}

impl HaProxy {
    pub fn config(socket: &Path, listen: u16, server_port: u16) -> String {
        format!(
            "global\n    stats socket {} mode 600 level admin\n    stats timeout 30s\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30m\n    timeout server 30m\n\
             frontend pg_front\n    bind 127.0.0.1:{listen}\n    default_backend pg_primary\n\
             backend pg_primary\n    server pg1 127.0.0.1:{server_port} check inter 1s\n",
            socket.display()
        )
    }

    pub fn start(dir: &Path, listen: u16, server_port: u16) -> HaProxy {
        let cfg = dir.join("haproxy.cfg");
        let socket = dir.join("admin.sock");
        std::fs::write(&cfg, Self::config(&socket, listen, server_port)).unwrap();
        run_ok(Command::new("haproxy").arg("-c").arg("-f").arg(&cfg));
        Self::run(cfg, socket, listen)
    }

    /// Start (again) from the configuration file as it is now.
    pub fn run(cfg: PathBuf, socket: PathBuf, port: u16) -> HaProxy {
        let _ = std::fs::remove_file(&socket);
        let log = cfg.with_extension("log");
        let daemon = Daemon::spawn(
            "haproxy",
            Command::new("haproxy").arg("-f").arg(&cfg).arg("-db"),
            &log,
        );
        wait_for_tcp(port);
        wait_until("the HAProxy stats socket", Duration::from_secs(10), || {
            socket.exists()
        });
        HaProxy {
            daemon,
            cfg,
            socket,
        }
    }
}

pub struct Bind {
    pub _daemon: Daemon,
    pub port: u16,
    pub key_file: PathBuf,
    pub dir: PathBuf,
}

impl Bind {
    /// named serving `db.test` with `pg A <address>`, updatable with the key `pgmig-key` for
    /// that name only.
    pub fn start(dir: &Path, port: u16, address: &str) -> Bind {
        let key_file = dir.join("pgmig.key");
        let key = run_ok(Command::new("tsig-keygen").args(["-a", "hmac-sha256", "pgmig-key"]));
        std::fs::write(&key_file, key).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let zone = dir.join("db.test.zone");
        std::fs::write(
            &zone,
            format!(
                "$TTL 30\n@ IN SOA ns1.db.test. admin.db.test. 1 3600 600 86400 30\n\
                 @ IN NS ns1.db.test.\nns1 IN A 127.0.0.1\npg IN A {address}\n"
            ),
        )
        .unwrap();
        let conf = dir.join("named.conf");
        std::fs::write(
            &conf,
            format!(
                "include \"{key}\";\noptions {{ directory \"{dir}\"; pid-file \"{dir}/named.pid\";\n\
                 listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n\
                 recursion no; dnssec-validation no; }};\ncontrols {{ }};\n\
                 zone \"db.test\" {{ type primary; file \"{zone}\";\n\
                 update-policy {{ grant pgmig-key name pg.db.test. A AAAA; }}; }};\n",
                key = key_file.display(),
                dir = dir.display(),
                zone = zone.display()
            ),
        )
        .unwrap();
        run_ok(Command::new("named-checkconf").arg(&conf));
        let daemon = Daemon::spawn(
            "named",
            Command::new("named").arg("-c").arg(&conf).arg("-g"),
            &dir.join("named.log"),
        );
        wait_until("named answers", Duration::from_secs(20), || {
            Command::new("dig")
                .args(["+short", "+time=1", "+tries=1", "-p", &port.to_string()])
                .args(["@127.0.0.1", "pg.db.test", "A"])
                .output()
                .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
        });
        Bind {
            _daemon: daemon,
            port,
            key_file,
            dir: dir.to_path_buf(),
        }
    }

    pub fn dig(&self) -> String {
        run_ok(
            Command::new("dig")
                .args(["+short", "-p", &self.port.to_string()])
                .args(["@127.0.0.1", "pg.db.test", "A"]),
        )
        .trim()
        .to_string()
    }

    /// Someone else changes the record (nsupdate with the real key).
    pub fn nsupdate(&self, address: &str) {
        let script = format!(
            "server 127.0.0.1 {}\nzone db.test.\nupdate delete pg.db.test. A\nupdate add pg.db.test. 30 A {address}\nsend\n",
            self.port
        );
        let path = self.dir.join("upd.txt");
        std::fs::write(&path, script).unwrap();
        run_ok(
            Command::new("nsupdate")
                .arg("-k")
                .arg(&self.key_file)
                .arg(&path),
        );
    }
}

pub struct PowerDns {
    pub _daemon: Daemon,
    pub dns_port: u16,
    pub api_port: u16,
}

pub const PDNS_KEY: &str = "route-test-api-key";

impl PowerDns {
    pub async fn start(dir: &Path, dns_port: u16, api_port: u16, address: &str) -> PowerDns {
        let db = dir.join("pdns.sqlite3");
        let schema =
            std::fs::read_to_string("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")
                .expect("pdns-backend-sqlite3 schema");
        let mut sqlite = Command::new("sqlite3")
            .arg(&db)
            .stdin(Stdio::piped())
            .spawn()
            .expect("sqlite3");
        use std::io::Write;
        sqlite
            .stdin
            .take()
            .unwrap()
            .write_all(schema.as_bytes())
            .unwrap();
        assert!(sqlite.wait().unwrap().success());
        std::fs::write(
            dir.join("pdns.conf"),
            format!(
                "launch=gsqlite3\ngsqlite3-database={db}\nlocal-address=127.0.0.1\nlocal-port={dns_port}\n\
                 socket-dir={dir}\napi=yes\napi-key={PDNS_KEY}\nwebserver=yes\nwebserver-address=127.0.0.1\n\
                 webserver-port={api_port}\nwebserver-allow-from=127.0.0.1/32\nguardian=no\ndaemon=no\n\
                 disable-syslog=yes\nsecurity-poll-suffix=\nsetuid=\nsetgid=\n",
                db = db.display(),
                dir = dir.display()
            ),
        )
        .unwrap();
        let daemon = Daemon::spawn(
            "pdns_server",
            Command::new("pdns_server").arg(format!("--config-dir={}", dir.display())),
            &dir.join("pdns.log"),
        );
        wait_for_tcp(api_port);
        let zone = serde_json::json!({
            "name": "db.test.", "kind": "Native", "nameservers": ["ns1.db.test."],
            "rrsets": [{ "name": "pg.db.test.", "type": "A", "ttl": 30,
                         "records": [{ "content": address, "disabled": false }] }],
        });
        let resp = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{api_port}/api/v1/servers/localhost/zones"
            ))
            .header("X-API-Key", PDNS_KEY)
            .json(&zone)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text().await);
        PowerDns {
            _daemon: daemon,
            dns_port,
            api_port,
        }
    }

    pub fn dig(&self) -> String {
        run_ok(
            Command::new("dig")
                .args(["+short", "-p", &self.dns_port.to_string()])
                .args(["@127.0.0.1", "pg.db.test", "A"]),
        )
        .trim()
        .to_string()
    }
}

/// A network namespace acting as the NAT box between this host and a virtual address:
/// `root (10.213.0.1) ⇄ veth ⇄ ns (10.213.0.2)`, with `vip` routed into the namespace and a
/// masquerade there so replies come back through it. Removed on drop.
pub struct NatBox {
    pub ns: String,
    pub vip: &'static str,
    pub host_ip: &'static str,
    /// A stand-in `docker` that runs `exec`'s command inside the namespace, so the route's
    /// host control (`kind = "docker"`) reaches the NAT box like a container.
    pub exec_wrapper: PathBuf,
    veth: String,
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

impl NatBox {
    pub fn create(dir: &Path) -> NatBox {
        let id = std::process::id();
        let ns = format!("migrate-nat-{id}");
        let veth = format!("mgn{id}a");
        let peer = format!("mgn{id}b");
        let nat = NatBox {
            ns: ns.clone(),
            vip: "10.213.1.100",
            host_ip: "10.213.0.1",
            exec_wrapper: dir.join("docker"),
            veth: veth.clone(),
        };
        nat.remove();
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", "10.213.0.1/24", "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        ip(&["-n", &ns, "addr", "add", "10.213.0.2/24", "dev", &peer]);
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["route", "add", "10.213.1.100/32", "via", "10.213.0.2"]);
        run_ok(Command::new("ip").args([
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]));
        let mut nft = Command::new("ip");
        nft.args(["netns", "exec", &ns, "nft", "-f", "-"])
            .stdin(Stdio::piped());
        let mut child = nft.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(
                b"table ip fixture {\n chain post { type nat hook postrouting priority 100; policy accept; ip daddr 10.213.0.1 masquerade; }\n}\n",
            )
            .unwrap();
        assert!(child.wait().unwrap().success());
        std::fs::write(
            &nat.exec_wrapper,
            "#!/bin/sh\n[ \"$1\" = exec ] || exit 64; shift\n[ \"$1\" = -i ] && shift\n\
             if [ \"$1\" = -u ]; then shift 2; fi\nns=\"$1\"; shift\nexec ip netns exec \"$ns\" \"$@\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&nat.exec_wrapper, std::fs::Permissions::from_mode(0o755))
            .unwrap();
        nat
    }

    /// Every rule in the NAT table the route manages, as nft lists it.
    pub fn rules(&self, table: &str) -> String {
        run_ok(Command::new("ip").args([
            "netns", "exec", &self.ns, "nft", "list", "table", "ip", table,
        ]))
    }

    fn remove(&self) {
        let _ = Command::new("ip")
            .args(["route", "del", "10.213.1.100/32"])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

impl Drop for NatBox {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Let the lab's servers also listen on `address` and take password logins from `subnet`
/// (restarts them).
pub async fn listen_also_on(pair: &Pair, nodes: &[&str], address: &str, subnet: &str) {
    let l = &pair.lab.lab;
    for n in nodes {
        let conf = l.data_dir(n).join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&format!("listen_addresses = '127.0.0.1,{address}'\n"));
        std::fs::write(&conf, text).unwrap();
        let hba = l.data_dir(n).join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).unwrap();
        text.push_str(&format!("host all all {subnet} scram-sha-256\n"));
        std::fs::write(&hba, text).unwrap();
        let server = l.server(n);
        server
            .stop(migrate::pg::server::StopMode::Fast, Duration::from_secs(30))
            .await
            .unwrap();
        server
            .start(&l.server_log(n), Duration::from_secs(60))
            .await
            .unwrap();
    }
}
