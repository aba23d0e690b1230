//! A bundle from the one host that has it to the others: the host with the
//! bundle serves its files over mutually authenticated TLS, and every other
//! host fetches them and checks every byte against the `SHA256SUMS` of an
//! [`Offer`], the text the control plane published, never against anything
//! the serving host says. An air-gapped site copies one bundle to one host.
//!
//! The TLS configurations come from the caller: this module knows nothing
//! of the cluster's PKI. The server asks every client for a certificate
//! that chains to the roots of its configuration and hands it to a
//! [`ClientCheck`] before it serves a byte; the client verifies the
//! server's certificate for the address the offer names.
//!
//! The server serves the files its bundle's `SHA256SUMS` lists, and
//! `VERSION`, by their path in the bundle, with `GET /<path>`; nothing else.
//! A fetch into a directory that holds some of the files already fetches
//! only the others, so a fetch cut short is resumed by running it again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

use crate::bundle::{parse_checksums, Bundle, BundleError};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the control plane publishes about a bundle on offer: its `VERSION`
/// and `SHA256SUMS`, and where a host serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The bundle's `VERSION` file.
    pub version: String,
    /// The bundle's `SHA256SUMS` file: what every fetched file must match.
    pub sha256sums: String,
    /// Where the bundle is served (`https://<source>/`).
    pub source: SocketAddr,
}

impl Offer {
    /// The offer of `bundle`, served at `source`.
    pub fn of(bundle: &Bundle, source: SocketAddr) -> Result<Offer, ShareError> {
        let read = |name: &str| {
            let path = bundle.root().join(name);
            std::fs::read_to_string(&path).map_err(|source| ShareError::Io {
                what: format!("reading {}", path.display()),
                source,
            })
        };
        Ok(Offer {
            version: read("VERSION")?,
            sha256sums: read("SHA256SUMS")?,
            source,
        })
    }

    /// The files to fetch: (path in the bundle, SHA-256), from the
    /// offer's `SHA256SUMS`.
    pub fn files(&self) -> Result<Vec<(String, String)>, ShareError> {
        Ok(parse_checksums(
            &self.sha256sums,
            Path::new("SHA256SUMS (as published)"),
        )?)
    }

    /// A short name for the bundle: the first 12 hex digits of the SHA-256
    /// of its `VERSION` and `SHA256SUMS` (where the hosts keep it, and how
    /// they say which one they hold).
    pub fn id(&self) -> String {
        id_of(&self.version, &self.sha256sums)
    }
}

/// [`Offer::id`] of the bundle at hand.
pub fn bundle_id(bundle: &Bundle) -> Result<String, ShareError> {
    let offer = Offer::of(bundle, SocketAddr::from(([0, 0, 0, 0], 0)))?;
    Ok(offer.id())
}

fn id_of(version: &str, sha256sums: &str) -> String {
    let mut h = Sha256::new();
    h.update(version.as_bytes());
    h.update([0u8]);
    h.update(sha256sums.as_bytes());
    hex::encode(h.finalize())[..12].to_string()
}

/// Errors of serving and fetching a bundle.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A file or socket operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS connection to the serving host failed (its certificate, or
    /// ours, refused).
    #[error("TLS with the bundle's host {address}")]
    Tls {
        /// The serving host.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("GET https://{address}/{file}")]
    Http {
        /// The serving host.
        address: SocketAddr,
        /// The file asked for.
        file: String,
        /// The cause.
        source: hyper::Error,
    },
    /// The serving host answered with another status than 200.
    #[error("GET https://{address}/{file}: the bundle's host answered {status}")]
    Status {
        /// The serving host.
        address: SocketAddr,
        /// The file asked for.
        file: String,
        /// Its answer.
        status: u16,
    },
    /// A fetched file is not what the published `SHA256SUMS` says: nothing
    /// of it was kept.
    #[error("{file} from the bundle's host {address} has SHA-256 {actual}, but the published SHA256SUMS says {expected}: it was not kept; the serving host's bundle is not the one published (or was changed since)")]
    Mismatch {
        /// The serving host.
        address: SocketAddr,
        /// The file.
        file: String,
        /// What the offer says.
        expected: String,
        /// What came.
        actual: String,
    },
    /// The offer's `SHA256SUMS`, or the fetched bundle, is not a bundle.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// Decides whether a client whose certificate chains to the server's roots
/// may fetch: `Err` says why not.
pub type ClientCheck = Arc<dyn Fn(&CertificateDer<'_>) -> Result<(), String> + Send + Sync>;

/// Serves the bundle at `root` on `listener` until the future is dropped.
/// Every connection's client must present a certificate that `tls`
/// verifies and `check` allows (configure `tls` with a client certificate
/// verifier).
pub async fn serve(
    root: PathBuf,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    check: ClientCheck,
) -> Result<(), ShareError> {
    let bundle = Bundle::open(&root)?;
    let mut files: BTreeMap<String, PathBuf> = bundle
        .checksums()?
        .into_iter()
        .map(|(f, _)| (f.clone(), root.join(&f)))
        .collect();
    for name in ["VERSION", "SHA256SUMS"] {
        files.insert(name.to_string(), root.join(name));
    }
    let files = Arc::new(files);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = listener.accept().await.map_err(|source| ShareError::Io {
            what: "accepting a connection to the bundle".into(),
            source,
        })?;
        let (acceptor, files, check) = (acceptor.clone(), files.clone(), check.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "bundle share: TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "bundle share: TLS handshake timed out");
                    return;
                }
            };
            let allowed = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => check(cert),
                None => Err("no client certificate".to_string()),
            };
            if let Err(why) = allowed {
                tracing::warn!(%peer, %why, "bundle share: client refused");
                return;
            }
            let service = hyper::service::service_fn(move |req| {
                let files = files.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&files, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "bundle share: connection ended");
            }
        });
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn status(code: hyper::StatusCode, text: &str) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(
        Full::new(Bytes::from(text.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r
}

/// One request: a listed file, or 404.
async fn answer(
    files: &BTreeMap<String, PathBuf>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    if req.method() != hyper::Method::GET {
        return status(hyper::StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let Some(path) = files.get(req.uri().path().trim_start_matches('/')) else {
        return status(hyper::StatusCode::NOT_FOUND, "not a file of this bundle\n");
    };
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "bundle share: cannot open");
            return status(hyper::StatusCode::INTERNAL_SERVER_ERROR, "cannot read it\n");
        }
    };
    let len = file.metadata().await.map(|m| m.len()).ok();
    let stream = tokio_util::io::ReaderStream::new(file).map(|chunk| chunk.map(Frame::data));
    let mut r = hyper::Response::new(StreamBody::new(stream).boxed());
    if let Some(len) = len {
        r.headers_mut().insert(
            hyper::header::CONTENT_LENGTH,
            hyper::header::HeaderValue::from(len),
        );
    }
    r
}

/// What a fetch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct FetchReport {
    /// Files fetched.
    pub fetched: usize,
    /// Files that were there already, with the right hash.
    pub kept: usize,
    /// Bytes fetched.
    pub bytes: u64,
}

/// Fetches the bundle of `offer` into `dest` over `tls` (whose roots must
/// verify the serving host's certificate for the offer's address). Every
/// file is checked against the offer's `SHA256SUMS` before it takes its
/// place; `VERSION` and `SHA256SUMS`, from the offer, are written last, so
/// a directory with both holds the whole bundle. Returns the bundle.
pub async fn fetch(
    offer: &Offer,
    dest: &Path,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(Bundle, FetchReport), ShareError> {
    let files = offer.files()?;
    let mut report = FetchReport::default();
    let mut todo = Vec::new();
    for (file, sha) in files {
        if sha256_of(&dest.join(&file)).await.as_deref() == Some(sha.as_str()) {
            report.kept += 1;
        } else {
            todo.push((file, sha));
        }
    }
    if !todo.is_empty() {
        let address = offer.source;
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|source| ShareError::Io {
                what: format!("connecting to the bundle's host {address}"),
                source,
            })?;
        let name = ServerName::IpAddress(address.ip().into());
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|source| ShareError::Tls { address, source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|source| ShareError::Http {
                address,
                file: String::new(),
                source,
            })?;
        let driver = tokio::spawn(conn);
        let result = async {
            for (file, sha) in &todo {
                report.bytes += fetch_one(&mut sender, address, dest, file, sha).await?;
                report.fetched += 1;
            }
            Ok::<_, ShareError>(())
        }
        .await;
        drop(sender);
        driver.abort();
        result?;
    }
    for (name, text) in [
        ("VERSION", &offer.version),
        ("SHA256SUMS", &offer.sha256sums),
    ] {
        let path = dest.join(name);
        if tokio::fs::read_to_string(&path).await.ok().as_ref() != Some(text) {
            write_new(&path, text.as_bytes(), 0o644).await?;
        }
    }
    Ok((Bundle::open(dest)?, report))
}

/// One file into `dest`, checked; returns its size.
async fn fetch_one(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    address: SocketAddr,
    dest: &Path,
    file: &str,
    sha: &str,
) -> Result<u64, ShareError> {
    let http = |source| ShareError::Http {
        address,
        file: file.to_string(),
        source,
    };
    let req = hyper::Request::get(format!("/{file}"))
        .header(hyper::header::HOST, address.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| ShareError::Io {
            what: format!("making the request for {file}"),
            source: std::io::Error::other(e),
        })?;
    sender.ready().await.map_err(http)?;
    let resp = sender.send_request(req).await.map_err(http)?;
    if resp.status() != hyper::StatusCode::OK {
        return Err(ShareError::Status {
            address,
            file: file.to_string(),
            status: resp.status().as_u16(),
        });
    }
    let target = dest.join(file);
    let partial = partial_path(&target);
    let io = |what: String| move |source| ShareError::Io { what, source };
    if let Some(dir) = target.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io(format!("creating {}", dir.display())))?;
    }
    let mut out = tokio::fs::File::create(&partial)
        .await
        .map_err(io(format!("creating {}", partial.display())))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut body = resp.into_body();
    let copied = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(http)?;
            if let Ok(data) = frame.into_data() {
                hasher.update(&data);
                size += data.len() as u64;
                out.write_all(&data)
                    .await
                    .map_err(io(format!("writing {}", partial.display())))?;
            }
        }
        out.sync_all()
            .await
            .map_err(io(format!("writing {}", partial.display())))?;
        Ok::<_, ShareError>(())
    }
    .await;
    drop(out);
    let actual = hex::encode(hasher.finalize());
    if let Err(e) = copied {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    if actual != sha {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(ShareError::Mismatch {
            address,
            file: file.to_string(),
            expected: sha.to_string(),
            actual,
        });
    }
    tokio::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
        .await
        .map_err(io(format!("setting the mode of {}", partial.display())))?;
    tokio::fs::rename(&partial, &target)
        .await
        .map_err(io(format!("moving {} into place", target.display())))?;
    Ok(size)
}

/// `<file>.partial`, beside it.
fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    target.with_file_name(name)
}

/// Writes `bytes` to `path` through a file beside it, renamed into place.
async fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ShareError> {
    let partial = partial_path(path);
    let io = |what: String| move |source| ShareError::Io { what, source };
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io(format!("creating {}", dir.display())))?;
    }
    tokio::fs::write(&partial, bytes)
        .await
        .map_err(io(format!("writing {}", partial.display())))?;
    tokio::fs::set_permissions(&partial, std::fs::Permissions::from_mode(mode))
        .await
        .map_err(io(format!("setting the mode of {}", partial.display())))?;
    tokio::fs::rename(&partial, path)
        .await
        .map_err(io(format!("moving {} into place", path.display())))
}

/// The SHA-256 of the file at `path`, lowercase hex; `None` when it cannot
/// be read.
async fn sha256_of(path: &Path) -> Option<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path).ok()?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).ok()?;
        Some(hex::encode(h.finalize()))
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
#[path = "share_tests.rs"]
mod tests;
