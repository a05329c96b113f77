//! Connections: TLS modes against a real server with a generated CA, and clear errors for a
//! wrong password or an unreachable server (the password never printed).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use migrate::pg::{connect, Conninfo, Endpoint, SecretRef};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::support::TestLab;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

fn server_cert(ca: &Ca) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn endpoint(lab: &TestLab, conninfo: &str) -> Endpoint {
    let c = Conninfo::parse(&format!(
        "port={} user=postgres dbname=postgres {conninfo}",
        lab.lab.port("old")
    ))
    .unwrap();
    Endpoint::new("old", c, Some(SecretRef::Passfile(lab.lab.passfile())))
}

async fn uses_ssl(ep: &Endpoint) -> anyhow::Result<bool> {
    let c = connect(ep).await?;
    Ok(c.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await?
    .get(0))
}

#[tokio::test]
async fn sslmodes_verify_the_chain_and_the_host_name() {
    let lab = TestLab::up().await;
    let ca = new_ca("migrate test CA");
    let stranger = new_ca("some other CA");
    let (cert, key) = server_cert(&ca);
    let data = lab.lab.data_dir("old");
    let host = lab.lab.host();
    host.write_file(&data.join("server.crt"), cert.as_bytes(), 0o600, None)
        .await
        .unwrap();
    host.write_file(&data.join("server.key"), key.as_bytes(), 0o600, None)
        .await
        .unwrap();
    let admin = connect(&lab.lab.endpoint("old", "postgres")).await.unwrap();
    admin
        .batch_execute("ALTER SYSTEM SET ssl = on")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    drop(admin);

    let certs = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let p = certs.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let ca_file = write("ca.crt", &ca.pem);
    let stranger_file = write("other-ca.crt", &stranger.pem);

    // The reload is asynchronous: wait until the server offers TLS.
    let mut tries = 0;
    while uses_ssl(&endpoint(&lab, "host=127.0.0.1 sslmode=require"))
        .await
        .is_err()
    {
        tries += 1;
        assert!(tries < 100, "server never offered TLS");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let ok = |ci: &str| endpoint(&lab, ci);
    assert!(uses_ssl(&ok(&format!(
        "host=localhost hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca_file}"
    )))
    .await
    .unwrap());
    assert!(uses_ssl(&ok(&format!(
        "host=127.0.0.1 sslmode=verify-full sslrootcert={ca_file}"
    )))
    .await
    .unwrap());

    let wrong_ca = uses_ssl(&ok(&format!(
        "host=localhost hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={stranger_file}"
    )))
    .await
    .unwrap_err();
    assert!(
        format!("{wrong_ca:#}").contains("UnknownIssuer"),
        "{wrong_ca:#}"
    );

    let wrong_name = uses_ssl(&ok(&format!(
        "host=db.wrong.example hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca_file}"
    )))
    .await
    .unwrap_err();
    let msg = format!("{wrong_name:#}");
    assert!(
        msg.contains("certificate not valid for name \"db.wrong.example\""),
        "{msg}"
    );

    // verify-ca checks the chain only; require and prefer only encrypt; disable does not.
    assert!(uses_ssl(&ok(&format!(
        "host=db.wrong.example hostaddr=127.0.0.1 sslmode=verify-ca sslrootcert={ca_file}"
    )))
    .await
    .unwrap());
    assert!(uses_ssl(&ok(&format!(
        "host=localhost hostaddr=127.0.0.1 sslmode=verify-ca sslrootcert={stranger_file}"
    )))
    .await
    .is_err());
    assert!(uses_ssl(&ok("host=127.0.0.1 sslmode=require"))
        .await
        .unwrap());
    assert!(uses_ssl(&ok("host=127.0.0.1 sslmode=prefer"))
        .await
        .unwrap());
    assert!(!uses_ssl(&ok("host=127.0.0.1 sslmode=disable"))
        .await
        .unwrap());

    let no_ca = uses_ssl(&ok("host=127.0.0.1 sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(format!("{no_ca:#}").contains("sslrootcert"), "{no_ca:#}");
}

#[tokio::test]
async fn wrong_password_and_unreachable_server_are_explained_without_the_password() {
    let lab = TestLab::up().await;
    let dir = tempfile::tempdir().unwrap();
    let passfile = dir.path().join("pgpass");
    let wrong = "Wr0ng-Passw0rd-never-shown";
    std::fs::write(&passfile, format!("*:*:*:postgres:{wrong}\n")).unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();

    let conninfo = Conninfo::parse(&format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        lab.lab.port("old")
    ))
    .unwrap();
    let err = connect(&Endpoint::new(
        "old",
        conninfo.clone(),
        Some(SecretRef::Passfile(passfile.clone())),
    ))
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("connect to old") && msg.contains("password authentication failed"),
        "{msg}"
    );
    assert!(msg.contains("hint: the password is wrong"), "{msg}");
    assert!(!msg.contains(wrong), "the password was printed: {msg}");

    let ok = connect(&Endpoint::new(
        "old",
        conninfo,
        Some(SecretRef::Passfile(lab.lab.passfile())),
    ))
    .await;
    assert!(ok.is_ok(), "{:#}", ok.err().unwrap());

    // The port right after the PgBouncer is within the reserved block and unused.
    let free = lab.lab.base_port + 1;
    let down = Conninfo::parse(&format!(
        "host=127.0.0.1 port={free} user=postgres sslmode=disable"
    ))
    .unwrap();
    let err = connect(&Endpoint::new("new", down, None))
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("connect to new") && msg.contains("nothing listens there"),
        "{msg}"
    );
    assert!(Path::new(&lab.lab.passfile()).exists());
}

/// `pg::alive::forks`: a running postmaster answers the cancel-request probe by forking (its
/// child closes the socket); a frozen one (SIGSTOP: the kernel still completes the TCP
/// handshake) never does, so the probe runs into its time limit; a closed port fails at once.
#[tokio::test]
async fn the_liveness_probe_tells_a_forking_postmaster_from_a_frozen_one() {
    use std::time::Duration;
    let lab = TestLab::up().await;
    let tcp = Conninfo::parse(&format!("host=127.0.0.1 port={}", lab.lab.port("old"))).unwrap();
    let limit = Duration::from_secs(3);
    let probe = |c: Conninfo| async move {
        tokio::time::timeout(limit, migrate::pg::alive::forks(&c)).await
    };
    assert!(matches!(probe(tcp.clone()).await, Ok(Ok(()))));
    let socket = Conninfo::parse(&format!(
        "host={} port={}",
        lab.lab.socket_dir().display(),
        lab.lab.port("old")
    ))
    .unwrap();
    assert!(matches!(probe(socket).await, Ok(Ok(()))));
    let pid = crate::support::postmaster_pid(&lab.lab.data_dir("old")).expect("old runs");
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let frozen = probe(tcp.clone()).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(
        frozen.is_err(),
        "a frozen postmaster was taken for alive: {frozen:?}"
    );
    assert!(matches!(probe(tcp).await, Ok(Ok(()))));
    let closed = Conninfo::parse("host=127.0.0.1 port=1").unwrap();
    assert!(matches!(probe(closed).await, Ok(Err(_))));
}
