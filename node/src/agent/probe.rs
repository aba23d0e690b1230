//! HTTPS health checks for the control-plane processes the agent runs:
//! `GET https://addr/path` answers 200, optionally verifying the server
//! against a CA and presenting a client certificate (etcd requires one).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use bootstrap::plane::{ClientCert, HealthCheck};

/// How long one probe may take, connect and answer included: a server that
/// accepts and goes silent fails the probe instead of holding it.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {address}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {address} failed")]
    Handshake {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("GET {url} failed")]
    Io { url: String, source: std::io::Error },
    #[error("GET {url} answered {status_line:?}")]
    Status { url: String, status_line: String },
    #[error("GET {url} did not answer within {}s", PROBE_TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("cannot read {path}")]
    ReadPem {
        path: std::path::PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS settings for {what}")]
    Tls { what: String, source: rustls::Error },
}

/// Runs `check` once.
pub async fn check(check: &HealthCheck) -> Result<(), ProbeError> {
    match check {
        HealthCheck::Https {
            address,
            path,
            ca_file,
            client_cert,
        } => https_ok(*address, path, ca_file.as_deref(), client_cert.as_ref()).await,
    }
}

pub async fn https_ok(
    address: SocketAddr,
    path: &str,
    ca_file: Option<&Path>,
    client: Option<&ClientCert>,
) -> Result<(), ProbeError> {
    https_ok_as(address, address.ip(), path, ca_file, client).await
}

/// [`https_ok`], verifying the server's certificate for the address `name`
/// instead of the one dialled: what a client that reaches `address`
/// through a forwarder checks (the API balancer's clients dial loopback).
/// At most [`PROBE_TIMEOUT`].
pub async fn https_ok_as(
    address: SocketAddr,
    name: std::net::IpAddr,
    path: &str,
    ca_file: Option<&Path>,
    client: Option<&ClientCert>,
) -> Result<(), ProbeError> {
    let config = tls_config(ca_file, client)?;
    let url = format!("https://{address}{path}");
    let probe = async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|source| ProbeError::Connect {
                address: address.to_string(),
                source,
            })?;
        let name = ServerName::IpAddress(name.into());
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|source| ProbeError::Handshake { address, source })?;
        get_ok(&mut tls, &address.to_string(), path, &url).await
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .map_err(|_| ProbeError::Timeout { url: url.clone() })?
}

/// `GET http://127.0.0.1:<port><path>` answers 200: the kubelet's healthz
/// endpoint speaks plain HTTP on loopback. At most [`PROBE_TIMEOUT`].
pub async fn http_ok(port: u16, path: &str) -> Result<(), ProbeError> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|source| ProbeError::Connect {
                address: format!("127.0.0.1:{port}"),
                source,
            })?;
        get_ok(&mut stream, "127.0.0.1", path, &url).await
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .map_err(|_| ProbeError::Timeout { url: url.clone() })?
}

/// Sends a minimal HTTP/1.0 GET on `stream` and wants a 200 back.
async fn get_ok<S>(stream: &mut S, host: &str, path: &str, url: &str) -> Result<(), ProbeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|source| ProbeError::Io {
            url: url.to_string(),
            source,
        })?;
    let mut buf = Vec::new();
    // Servers that close without close_notify (TLS) still gave us the answer.
    let _ = (&mut *stream).take(8192).read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(ProbeError::Status {
            url: url.to_string(),
            status_line: status_line.to_string(),
        })
    }
}

fn tls_config(
    ca_file: Option<&Path>,
    client: Option<&ClientCert>,
) -> Result<ClientConfig, ProbeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = |what: &str| {
        let what = what.to_string();
        move |source| ProbeError::Tls { what, source }
    };
    let pem = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ProbeError::ReadPem { path, source }
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls("the protocol versions"))?;
    let builder = match ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(pem(ca))? {
                roots
                    .add(cert.map_err(pem(ca))?)
                    .map_err(tls(&ca.display().to_string()))?;
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider))),
    };
    match client {
        Some(c) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert_file)
                .and_then(|it| it.collect())
                .map_err(pem(&c.cert_file))?;
            let key = PrivateKeyDer::from_pem_file(&c.key_file).map_err(pem(&c.key_file))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(tls(&c.cert_file.display().to_string()))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// For components that serve a certificate they made themselves at start-up
/// (controller-manager, scheduler): nothing to verify it against, exactly as
/// the kubelet's HTTPS probes do. Signatures are still checked.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
