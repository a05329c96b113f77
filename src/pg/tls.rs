//! TLS for PostgreSQL connections on rustls (ring), honouring libpq's `sslmode` semantics:
//! `disable`; `allow`/`prefer`/`require` encrypt without verifying (as libpq, unless a root
//! certificate is given, when `require` acts as `verify-ca`); `verify-ca` checks the chain;
//! `verify-full` checks the chain and the host name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conninfo::Conninfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn from_conninfo(c: &Conninfo) -> Result<SslMode> {
        Ok(match c.get("sslmode").unwrap_or("prefer") {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => bail!(
                "sslmode {other:?} is not valid; use disable, allow, prefer, require, verify-ca or verify-full"
            ),
        })
    }

    pub fn driver_mode(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as M;
        match self {
            SslMode::Disable => M::Disable,
            SslMode::Allow | SslMode::Prefer => M::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => M::Require,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_cert_path(c: &Conninfo) -> Option<PathBuf> {
    if let Some(p) = c.get("sslrootcert") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let default = Path::new(&home).join(".postgresql/root.crt");
    default.exists().then_some(default)
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("read sslrootcert {}", path.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("parse sslrootcert {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("use a certificate of {}", path.display()))?;
    }
    if roots.is_empty() {
        bail!("sslrootcert {} holds no certificate", path.display());
    }
    Ok(roots)
}

/// The TLS connector for this conninfo, or `None` for `sslmode=disable`.
pub fn connector(c: &Conninfo) -> Result<Option<MakeRustlsConnect>> {
    let mut mode = SslMode::from_conninfo(c)?;
    let roots = root_cert_path(c);
    if mode == SslMode::Require && c.get("sslrootcert").is_some() {
        mode = SslMode::VerifyCa;
    }
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable => return Ok(None),
        SslMode::Allow | SslMode::Prefer | SslMode::Require => Arc::new(NoVerification),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = roots.ok_or_else(|| {
                anyhow!(
                    "sslmode={} needs the CA certificate: set sslrootcert=/path/to/ca.crt in the conninfo",
                    c.get("sslmode").unwrap_or("require")
                )
            })?;
            let webpki = WebPkiServerVerifier::builder_with_provider(
                Arc::new(load_roots(&path)?),
                provider(),
            )
            .build()
            .context("build the certificate verifier")?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (c.get("sslcert"), c.get("sslkey")) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("read sslcert {cert}"))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parse sslcert {cert}"))?;
            let key =
                PrivateKeyDer::from_pem_file(key).with_context(|| format!("read sslkey {key}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("use the client certificate")?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("sslcert and sslkey go together: set both or neither"),
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// `verify-ca`: the chain must lead to the given CA; the name in the certificate is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a CA: encryption only, as libpq does. Handshake signatures are
/// still checked so the session key belongs to whoever presented the certificate.
#[derive(Debug)]
struct NoVerification;

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(m, c, d, &provider().signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(m, c, d, &provider().signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
