//! A thin containerd client over its unix socket (tonic, through
//! containerd-client's generated stubs).
//!
//! Every request carries the `containerd-namespace` header, and the
//! `containerd-lease` header when the client holds a lease, so what is
//! written is protected from garbage collection until it is referenced.
//!
//! Only services present in containerd 1.6 and 2.x are used: Version,
//! Content, Images, Leases, Snapshots, Diff. (Transfer does not exist in
//! 1.6.)

use containerd_client::services::v1::{
    content_client::ContentClient, diff_client::DiffClient, images_client::ImagesClient,
    leases_client::LeasesClient, snapshots::snapshots_client::SnapshotsClient,
    version_client::VersionClient, CreateRequest as CreateLeaseRequest,
    DeleteRequest as DeleteLeaseRequest,
};
use containerd_client::tonic::{
    metadata::AsciiMetadataValue, transport::Channel, Code, Request, Status,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The namespace the kubelet (CRI) uses.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// How long [`connect`] waits for the socket to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const NAMESPACE_HEADER: &str = "containerd-namespace";
const LEASE_HEADER: &str = "containerd-lease";
/// Label that makes containerd's GC delete a lease after this time
/// (RFC 3339), so a crashed import does not pin content forever.
pub const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The socket refused the connection (or does not exist).
    #[error("cannot connect to containerd at {socket}: {reason}; is containerd running and is this the right socket?")]
    Connect {
        /// The containerd socket.
        socket: PathBuf,
        /// The transport error and its causes, joined with `: `.
        reason: String,
    },
    /// The socket did not accept a connection within [`CONNECT_TIMEOUT`].
    #[error("containerd at {socket} did not accept a connection within {timeout:?}")]
    ConnectTimeout {
        /// The containerd socket.
        socket: PathBuf,
        /// How long [`connect`] waited.
        timeout: Duration,
    },
    /// The namespace is not valid containerd syntax.
    #[error("invalid containerd namespace {namespace:?}: use letters, digits and single '.', '_' or '-' between them")]
    InvalidNamespace {
        /// The namespace given.
        namespace: String,
    },
    /// containerd answered a call with an error status.
    #[error("containerd {op} failed: {message} (code {code:?})")]
    Rpc {
        /// The call, e.g. `Leases.Delete <id>`.
        op: String,
        /// The gRPC status code.
        code: Code,
        /// containerd's message.
        message: String,
    },
}

impl ContainerdError {
    /// An RPC error from a tonic status.
    pub fn rpc(op: impl Into<String>, status: Status) -> ContainerdError {
        ContainerdError::Rpc {
            op: op.into(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// The gRPC code if this is an RPC error.
    pub fn code(&self) -> Option<Code> {
        match self {
            ContainerdError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the request itself is wrong (`selfnode` exits 2):
    /// [`ContainerdError::InvalidNamespace`]. An unreachable or slow
    /// containerd and its RPC errors are failures a retry may fix.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ContainerdError::InvalidNamespace { .. } => true,
            ContainerdError::Connect { .. }
            | ContainerdError::ConnectTimeout { .. }
            | ContainerdError::Rpc { .. } => false,
        }
    }
}

/// A connection to containerd, bound to one namespace (and optionally to a
/// lease). Cheap to clone.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    socket: PathBuf,
    namespace: String,
    namespace_header: AsciiMetadataValue,
    lease: Option<(String, AsciiMetadataValue)>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket)
            .field("namespace", &self.namespace)
            .field("lease", &self.lease.as_ref().map(|(id, _)| id))
            .finish()
    }
}

/// containerd's namespace syntax (`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`).
fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 76
        && ns
            .split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    // tonic's transport error only says "transport error"; the useful part
    // (e.g. "No such file or directory") is at the end of the chain.
    let mut parts = vec![err.to_string()];
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}

/// Connects to the containerd socket at `socket` (waiting at most
/// [`CONNECT_TIMEOUT`]) for requests in `namespace`.
pub async fn connect(socket: &Path, namespace: &str) -> Result<Client, ContainerdError> {
    if !valid_namespace(namespace) {
        return Err(ContainerdError::InvalidNamespace {
            namespace: namespace.to_string(),
        });
    }
    let namespace_header: AsciiMetadataValue =
        namespace
            .parse()
            .map_err(|_| ContainerdError::InvalidNamespace {
                namespace: namespace.to_string(),
            })?;
    let channel =
        match tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(socket)).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(err)) => {
                return Err(ContainerdError::Connect {
                    socket: socket.to_path_buf(),
                    reason: describe(&err),
                })
            }
            Err(_) => {
                return Err(ContainerdError::ConnectTimeout {
                    socket: socket.to_path_buf(),
                    timeout: CONNECT_TIMEOUT,
                })
            }
        };
    Ok(Client {
        channel,
        socket: socket.to_path_buf(),
        namespace: namespace.to_string(),
        namespace_header,
        lease: None,
    })
}

/// containerd's version string (e.g. `v2.4.2` or `1.6.20~ds1`): connects,
/// asks, disconnects. The node's readiness probe (wrap it in a timeout).
pub async fn version(socket: &Path) -> Result<String, ContainerdError> {
    let client = connect(socket, "default").await?;
    Ok(client.version().await?.0)
}

/// RFC 3339 UTC timestamp of `t` (seconds precision), as containerd's label
/// parser expects.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (year, month, day, h, m, sec) = utc_civil(secs);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}Z")
}

/// The UTC calendar date and time of `secs` since 1970: year, month, day,
/// hour, minute, second (Howard Hinnant's civil_from_days). Shared with
/// [`crate::appliance`]'s image dates.
pub(crate) fn utc_civil(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

impl Client {
    /// The containerd socket this client is connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The namespace every request carries.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The lease this client's requests carry, if any.
    pub fn lease(&self) -> Option<&str> {
        self.lease.as_ref().map(|(id, _)| id.as_str())
    }

    /// Wraps `message` in a request with the namespace (and lease) headers.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let md = request.metadata_mut();
        md.insert(NAMESPACE_HEADER, self.namespace_header.clone());
        if let Some((_, value)) = &self.lease {
            md.insert(LEASE_HEADER, value.clone());
        }
        request
    }

    /// The Content service (blobs). Wrap messages with [`Client::request`].
    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }

    /// The Images service (image records).
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    /// The Snapshots service (unpacked layers).
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    /// The Diff service (applies layers to snapshots).
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }

    /// The Leases service (protects content from GC during writes).
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }

    /// Tasks (running containers); the node agent drains them on a full stop.
    pub fn tasks(&self) -> containerd_client::services::v1::tasks_client::TasksClient<Channel> {
        containerd_client::services::v1::tasks_client::TasksClient::new(self.channel.clone())
    }

    /// Containers (metadata and labels; the CRI labels each with its pod's
    /// `io.kubernetes.pod.*` and `io.kubernetes.container.name`).
    pub fn containers(
        &self,
    ) -> containerd_client::services::v1::containers_client::ContainersClient<Channel> {
        containerd_client::services::v1::containers_client::ContainersClient::new(
            self.channel.clone(),
        )
    }

    /// The Namespaces service.
    pub fn namespaces(
        &self,
    ) -> containerd_client::services::v1::namespaces_client::NamespacesClient<Channel> {
        containerd_client::services::v1::namespaces_client::NamespacesClient::new(
            self.channel.clone(),
        )
    }

    /// `(version, revision)` of the daemon.
    pub async fn version(&self) -> Result<(String, String), ContainerdError> {
        let response = VersionClient::new(self.channel.clone())
            .version(self.request(()))
            .await
            .map_err(|s| ContainerdError::rpc("Version", s))?
            .into_inner();
        Ok((response.version, response.revision))
    }

    /// Creates a lease that containerd's GC deletes by itself after `expiry`
    /// (in case we never get to delete it) and returns a client whose
    /// requests carry it.
    pub async fn with_new_lease(
        &self,
        id: &str,
        expiry: Duration,
    ) -> Result<Client, ContainerdError> {
        let labels = HashMap::from([(
            LEASE_EXPIRE_LABEL.to_string(),
            rfc3339(SystemTime::now() + expiry),
        )]);
        let response = self
            .leases()
            .create(self.request(CreateLeaseRequest {
                id: id.to_string(),
                labels,
            }))
            .await
            .map_err(|s| ContainerdError::rpc(format!("Leases.Create {id}"), s))?
            .into_inner();
        let id = response
            .lease
            .map(|l| l.id)
            .unwrap_or_else(|| id.to_string());
        let value: AsciiMetadataValue = id.parse().map_err(|_| ContainerdError::Rpc {
            op: "Leases.Create".to_string(),
            code: Code::Internal,
            message: format!("lease id {id:?} is not valid ASCII"),
        })?;
        let mut client = self.clone();
        client.lease = Some((id, value));
        Ok(client)
    }

    /// Deletes lease `id`; what it protected becomes collectable unless
    /// something else references it.
    pub async fn delete_lease(&self, id: &str) -> Result<(), ContainerdError> {
        let mut request = Request::new(DeleteLeaseRequest {
            id: id.to_string(),
            sync: false,
        });
        request
            .metadata_mut()
            .insert(NAMESPACE_HEADER, self.namespace_header.clone());
        match self.leases().delete(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(ContainerdError::rpc(format!("Leases.Delete {id}"), status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18T11:06:40Z"
        );
    }

    #[test]
    fn namespaces_are_validated() {
        for ok in ["k8s.io", "default", "a-b_c.d", "x1"] {
            assert!(valid_namespace(ok), "{ok}");
        }
        for bad in ["", "-a", "a..b", "a b", "ä", "a/"] {
            assert!(!valid_namespace(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn connect_to_a_missing_socket_says_what_to_check() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let err = version(&socket).await.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "cannot connect to containerd at {}",
                socket.display()
            )),
            "{err}"
        );
        assert!(err.contains("No such file or directory"), "{err}");
        let err = connect(&socket, "bad ns").await.unwrap_err().to_string();
        assert!(err.contains("invalid containerd namespace"), "{err}");
    }
}
