//! The cluster PKI in kubeadm's layout: CAs, service-account keys, serving and
//! client certificates, and the kubeconfigs that embed them.
//!
//! [`ensure_pki`] observes what is on disk and converges: missing files are
//! created, valid ones reused, stale leaves re-issued. CAs and the
//! service-account key are never replaced silently (everything else, and the
//! join pin, hangs off them): a broken one is an error saying what to do.
//!
//! Every file is written with mode 0600 and every directory 0700. Keys are
//! ECDSA P-256 in PKCS#8 PEM. Validity: CAs 10 years, leaves 1 year (capped at
//! their CA's expiry), re-issued when less than 30 days remain.

mod cert;
pub mod csr;
pub mod kubeconfig;
mod spec;
pub mod transfer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::host::{Host, HostError};
use cert::{Ca, CertError, Profile};
use kubeconfig::{Kubeconfig, KubeconfigError};
use spec::SanSet;

pub use cert::ip_sans;
pub use spec::{
    PkiSpec, PkiSpecError, DEFAULT_API_ENDPOINT, DEFAULT_CLUSTER_NAME, DEFAULT_DNS_DOMAIN,
    DEFAULT_KUBECONFIG_DIR, DEFAULT_PKI_DIR, DEFAULT_SERVICE_CIDR,
};

/// Validity of a new CA (kubeadm's `CACertificateValidityPeriod`).
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of a new leaf certificate (kubeadm's `CertificateValidityPeriod`).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A leaf with less than this left is re-issued.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Mode of every file written here.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the PKI and kubeconfig directories.
pub const DIR_MODE: u32 = 0o700;

/// File and identity names, as kubeadm's `constants` package has them.
pub mod names {
    // Base names under the PKI directory (`<base>.crt`, `<base>.key`).

    /// Base name of the cluster CA (CN `kubernetes`): signs the API server's
    /// certificates and every kubeconfig's client certificate.
    pub const CA: &str = "ca";
    /// Base name of the front-proxy CA (CN `front-proxy-ca`): signs the
    /// aggregation layer's client certificate.
    pub const FRONT_PROXY_CA: &str = "front-proxy-ca";
    /// Base name of the etcd CA (CN `etcd-ca`): signs etcd's certificates and
    /// the clients of etcd.
    pub const ETCD_CA: &str = "etcd/ca";
    /// Base name of the API server's serving certificate.
    pub const APISERVER: &str = "apiserver";
    /// Base name of the API server's client certificate for the kubelets
    /// (user [`APISERVER_KUBELET_CLIENT_USER`]).
    pub const APISERVER_KUBELET_CLIENT: &str = "apiserver-kubelet-client";
    /// Base name of the API server's client certificate for aggregated APIs,
    /// signed by the front-proxy CA.
    pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";
    /// Base name of etcd's serving certificate (CN: the node name).
    pub const ETCD_SERVER: &str = "etcd/server";
    /// Base name of etcd's peer certificate (CN: the node name).
    pub const ETCD_PEER: &str = "etcd/peer";
    /// Base name of the etcd client certificate for health checks.
    pub const ETCD_HEALTHCHECK_CLIENT: &str = "etcd/healthcheck-client";
    /// Base name of the API server's client certificate for etcd.
    pub const APISERVER_ETCD_CLIENT: &str = "apiserver-etcd-client";
    /// Service-account signing key pair, under the PKI directory: the
    /// private key (PKCS#8 PEM).
    pub const SA_KEY: &str = "sa.key";
    /// The public half of [`SA_KEY`] (SubjectPublicKeyInfo PEM).
    pub const SA_PUB: &str = "sa.pub";

    // Kubeconfig files, under the kubeconfig directory.

    /// Kubeconfig of the cluster administrator (group
    /// [`CLUSTER_ADMINS_GROUP`]).
    pub const ADMIN_CONF: &str = "admin.conf";
    /// Kubeconfig that bypasses RBAC (group [`SYSTEM_MASTERS_GROUP`]).
    pub const SUPER_ADMIN_CONF: &str = "super-admin.conf";
    /// Kubeconfig of kube-controller-manager (user
    /// `system:kube-controller-manager`).
    pub const CONTROLLER_MANAGER_CONF: &str = "controller-manager.conf";
    /// Kubeconfig of kube-scheduler (user `system:kube-scheduler`).
    pub const SCHEDULER_CONF: &str = "scheduler.conf";
    /// Kubeconfig of this node's kubelet (user
    /// `<NODE_USER_PREFIX><node name>`, group [`NODES_GROUP`]).
    pub const KUBELET_CONF: &str = "kubelet.conf";
    /// Kubeconfig of the selfnode agent of a control-plane host (user
    /// [`CONTROL_PLANE_AGENT_USER`], group [`CONTROL_PLANE_AGENTS_GROUP`]):
    /// it approves new nodes' certificates and promotes control-plane
    /// nodes. Only a host that holds the CA key can make one.
    pub const CONTROL_PLANE_AGENT_CONF: &str = "selfnode-agent.conf";
    /// User of [`CONTROL_PLANE_AGENT_CONF`].
    pub const CONTROL_PLANE_AGENT_USER: &str = "selfnode:control-plane-agent";
    /// Group of [`CONTROL_PLANE_AGENT_CONF`]; RBAC gives it what the
    /// control-plane agents do, and only it may set the control-plane label.
    pub const CONTROL_PLANE_AGENTS_GROUP: &str = "selfnode:control-plane-agents";

    /// Group of `admin.conf`; RBAC must bind it to `cluster-admin`.
    pub const CLUSTER_ADMINS_GROUP: &str = "kubeadm:cluster-admins";
    /// Group of `super-admin.conf` (bypasses RBAC).
    pub const SYSTEM_MASTERS_GROUP: &str = "system:masters";
    /// Group of every kubelet's client certificate.
    pub const NODES_GROUP: &str = "system:nodes";
    /// Prefix of a kubelet's user name; the node name follows.
    pub const NODE_USER_PREFIX: &str = "system:node:";
    /// User of `apiserver-kubelet-client`; RBAC must let it use the kubelet API.
    pub const APISERVER_KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";
}

/// What [`ensure_pki`] did, file by file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PkiReport {
    /// Every file, in the order handled: CAs, service-account keys, leaves, kubeconfigs.
    pub entries: Vec<PkiEntry>,
    /// Things to tell the user though nothing failed.
    pub warnings: Vec<PkiWarning>,
    /// The join pin of the cluster CA (see [`ca_cert_hash`]).
    pub ca_cert_hash: String,
}

impl PkiReport {
    /// The action taken for `path`, if it is one of the PKI's files.
    pub fn action(&self, path: &Path) -> Option<&PkiAction> {
        self.entries
            .iter()
            .find(|e| e.path == path)
            .map(|e| &e.action)
    }

    /// Entries that were created or renewed.
    pub fn changed(&self) -> impl Iterator<Item = &PkiEntry> {
        self.entries
            .iter()
            .filter(|e| e.action != PkiAction::Reused)
    }
}

/// One file of the PKI and what [`ensure_pki`] did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiEntry {
    /// The certificate, key or kubeconfig file.
    pub path: PathBuf,
    /// What was done with it.
    pub action: PkiAction,
}

/// What [`ensure_pki`] did with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PkiAction {
    /// The file did not exist.
    Created,
    /// The file was valid and was kept (its mode may have been corrected).
    Reused,
    /// The file existed and was replaced.
    Renewed(RenewReason),
}

impl fmt::Display for PkiAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PkiAction::Created => f.write_str("created"),
            PkiAction::Reused => f.write_str("reused"),
            PkiAction::Renewed(why) => write!(f, "renewed: {why}"),
        }
    }
}

/// Why an existing file was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewReason {
    /// The other half of the pair (certificate or key) was missing.
    PairIncomplete {
        /// The half that was missing.
        missing: PathBuf,
    },
    /// The certificate (a file, or a kubeconfig's embedded one) cannot be read
    /// as a PEM X.509 certificate, or has a shape no leaf of ours has (e.g. the
    /// CA flag).
    CertUnreadable,
    /// The key (a file, or a kubeconfig's embedded one) cannot be read as a
    /// PKCS#8 PEM private key.
    KeyUnreadable,
    /// The key is not the private half of the certificate's public key.
    KeyMismatch,
    /// The certificate was not issued by the current CA.
    NotSignedByCa,
    /// The certificate's validity starts in the future.
    NotYetValid {
        /// Start of its validity.
        not_before: SystemTime,
    },
    /// The certificate has expired.
    Expired {
        /// End of its validity.
        not_after: SystemTime,
    },
    /// The certificate expires within [`RENEW_BEFORE`] (and its CA outlives it).
    ExpiresSoon {
        /// End of its validity.
        not_after: SystemTime,
    },
    /// The subject's CN or O differs from what would be issued now.
    SubjectChanged {
        /// The subject wanted, as `O=<org>, CN=<cn>` (or `CN=<cn>`).
        want: String,
        /// The subject found, in the same form.
        got: String,
    },
    /// The extended key usages (server auth, client auth) differ from what
    /// would be issued now.
    UsageChanged,
    /// The subject alternative names differ from what would be issued now.
    SansChanged {
        /// Names wanted but missing from the certificate.
        added: Vec<String>,
        /// Names in the certificate no longer wanted.
        removed: Vec<String>,
    },
    /// `sa.pub` is not the public half of `sa.key`.
    PublicKeyMismatch,
    /// The kubeconfig does not parse, or its current context does not lead to
    /// a cluster and a user.
    KubeconfigUnreadable,
    /// The file was valid; [`renew_pki`] re-issues every leaf and kubeconfig.
    Requested,
    /// The kubeconfig points at another API server than the spec's.
    ServerChanged {
        /// The spec's API endpoint.
        want: String,
        /// The kubeconfig's `server`.
        got: String,
    },
    /// The kubeconfig embeds another CA than the current one.
    KubeconfigCaChanged,
    /// Cluster, user or context names differ from what would be written now.
    KubeconfigLayoutChanged,
}

impl fmt::Display for RenewReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use RenewReason::*;
        match self {
            PairIncomplete { missing } => write!(f, "{} was missing", missing.display()),
            CertUnreadable => f.write_str("the certificate could not be parsed"),
            KeyUnreadable => f.write_str("the key could not be parsed"),
            KeyMismatch => f.write_str("the key does not match the certificate"),
            NotSignedByCa => f.write_str("it was not signed by the current CA"),
            NotYetValid { not_before } => {
                write!(f, "it is not valid before {}", cert::fmt_time(*not_before))
            }
            Expired { not_after } => write!(f, "it expired at {}", cert::fmt_time(*not_after)),
            ExpiresSoon { not_after } => write!(
                f,
                "it expires at {}, less than {} days from now",
                cert::fmt_time(*not_after),
                RENEW_BEFORE.as_secs() / 86400
            ),
            SubjectChanged { want, got } => write!(f, "subject is {got}, want {want}"),
            UsageChanged => f.write_str("its extended key usages changed"),
            SansChanged { added, removed } => {
                f.write_str("subject alternative names changed")?;
                if !added.is_empty() {
                    write!(f, " (added {})", added.join(", "))?;
                }
                if !removed.is_empty() {
                    write!(f, " (removed {})", removed.join(", "))?;
                }
                Ok(())
            }
            PublicKeyMismatch => f.write_str("it is not the public half of sa.key"),
            KubeconfigUnreadable => f.write_str("it is not a kubeconfig selfnode can read"),
            Requested => f.write_str("renewal was requested"),
            ServerChanged { want, got } => write!(f, "server is {got}, want {want}"),
            KubeconfigCaChanged => f.write_str("it embeds another CA than the current one"),
            KubeconfigLayoutChanged => f.write_str("its cluster, user or context names changed"),
        }
    }
}

/// Something the caller should tell the user, though nothing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PkiWarning {
    /// The CA expires within a leaf's lifetime: leaves are now capped at its
    /// expiry and cannot be renewed past it.
    CaExpiresSoon {
        /// The CA certificate.
        path: PathBuf,
        /// End of its validity.
        not_after: SystemTime,
    },
}

impl fmt::Display for PkiWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PkiWarning::CaExpiresSoon { path, not_after } => write!(
                f,
                "CA {} expires at {}; certificates it issues cannot outlive it: plan a CA rotation",
                path.display(),
                cert::fmt_time(*not_after)
            ),
        }
    }
}

/// A PKI that [`ensure_pki`] cannot converge by itself.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The [`PkiSpec`] is invalid.
    #[error(transparent)]
    InvalidSpec(#[from] PkiSpecError),
    /// A joined control-plane host lacks one of the cluster's CA files
    /// (they come with its control-plane join; it never makes its own).
    #[error("{} is missing: a joined control-plane host gets the cluster's CAs with its control-plane join and never makes its own ('selfnode promote' on a control-plane host sends them again)", path.display())]
    MissingClusterKey {
        /// The missing file.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A CA certificate exists without its key.
    #[error("CA certificate {} exists but its key {} is missing: restore the key from a backup; {}", cert.display(), key.display(), ca_advice(cert, key))]
    CaKeyMissing {
        /// The CA certificate.
        cert: PathBuf,
        /// The missing key.
        key: PathBuf,
    },
    /// A CA certificate is not a PEM X.509 certificate, or cannot sign.
    #[error("CA certificate {} cannot be used: {reason}; restore it from a backup; {}", cert.display(), ca_advice(cert, key))]
    CaCertUnreadable {
        /// The CA certificate.
        cert: PathBuf,
        /// Its key.
        key: PathBuf,
        /// What is wrong with the certificate.
        reason: String,
    },
    /// A CA key is not a readable PKCS#8 PEM private key.
    #[error("CA key {} cannot be used: {reason}; restore it from a backup; {}", key.display(), ca_advice(cert, key))]
    CaKeyUnreadable {
        /// The CA certificate.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
        /// What is wrong with the key.
        reason: String,
    },
    /// A CA key is not the private half of its certificate's public key.
    #[error("CA key {} does not match CA certificate {}: restore the matching pair from a backup; {}", key.display(), cert.display(), ca_advice(cert, key))]
    CaKeyMismatch {
        /// The CA certificate.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// A CA certificate lacks the CA basic constraint.
    #[error("{} is not a CA certificate (no CA basic constraint); {}", cert.display(), ca_advice(cert, key))]
    NotACa {
        /// The certificate.
        cert: PathBuf,
        /// Its key.
        key: PathBuf,
    },
    /// A CA certificate's validity starts in the future (likely a wrong clock).
    #[error("CA certificate {} is not valid before {}: check the system clock (date -u)", cert.display(), cert::fmt_time(*not_before))]
    CaNotYetValid {
        /// The CA certificate.
        cert: PathBuf,
        /// Start of its validity.
        not_before: SystemTime,
    },
    /// A CA certificate has expired.
    #[error("CA certificate {} expired at {}; if the clock is right, {}", cert.display(), cert::fmt_time(*not_after), ca_advice(cert, key))]
    CaExpired {
        /// The CA certificate.
        cert: PathBuf,
        /// Its key.
        key: PathBuf,
        /// End of its validity.
        not_after: SystemTime,
    },
    /// `sa.key` exists but is not a readable PKCS#8 PEM private key.
    #[error("service-account key {} cannot be used: {reason}; restore it from a backup (a new key invalidates every service-account token in the cluster; to accept that, move the file away and run again)", path.display())]
    ServiceAccountKeyUnreadable {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Generating a key or signing a certificate failed.
    #[error("failed to generate {what}")]
    Generate {
        /// The file or base name being made.
        what: String,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// A kubeconfig could not be rendered.
    #[error("failed to render {}", path.display())]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: KubeconfigError,
    },
    /// [`ca_cert_hash`] got something that is not a PEM X.509 certificate.
    #[error("invalid CA certificate: {reason}")]
    InvalidCaCert {
        /// What is wrong with it.
        reason: String,
    },
}

fn ca_advice(cert: &Path, key: &Path) -> String {
    format!(
        "selfnode never replaces a CA by itself because every certificate, kubeconfig and join \
         string depends on it; to start over with a new CA, move {} and {} away and run again",
        cert.display(),
        key.display()
    )
}

/// kubeadm's `discovery-token-ca-cert-hash` for a PEM CA certificate:
/// `sha256:` and the lowercase hex SHA-256 of its DER SubjectPublicKeyInfo
/// (kubeadm's `pubkeypin.Hash`). Only the first certificate of a bundle counts.
///
/// Errors with [`PkiError::InvalidCaCert`].
pub fn ca_cert_hash(ca_pem: &[u8]) -> Result<String, PkiError> {
    let invalid = |e: CertError| PkiError::InvalidCaCert {
        reason: e.to_string(),
    };
    let der = cert::pem_der(ca_pem, "CERTIFICATE").map_err(invalid)?;
    let (_, c) = X509Certificate::from_der(&der).map_err(|_| invalid(CertError::NotX509))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(c.public_key().raw))
    ))
}

/// What kind of certificate an [`CertExpiry`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// A CA (`ca`, `front-proxy-ca`, `etcd/ca`): 10 years, never renewed by selfnode.
    Ca,
    /// A leaf certificate file under the PKI directory.
    Leaf,
    /// The client certificate embedded in a kubeconfig.
    Kubeconfig,
}

/// One certificate of the PKI `spec` describes and when it stops being
/// valid: a row of `selfnode certs check-expiration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    /// kubeadm's name: the base name (`apiserver`, `etcd/server`) or the
    /// kubeconfig file (`admin.conf`).
    pub name: String,
    /// The certificate or kubeconfig file.
    pub path: PathBuf,
    /// What it is.
    pub kind: CertKind,
    /// Base name of the CA that signs it (`ca`, `front-proxy-ca`,
    /// `etcd/ca`); `None` for a CA.
    pub signed_by: Option<&'static str>,
    /// End of its validity; `None` when the file is not on this host or
    /// cannot be read (then `problem` says which).
    pub not_after: Option<SystemTime>,
    /// Why `not_after` is unknown: "not on this host" or what could not be read.
    pub problem: Option<String>,
}

/// Every certificate of the PKI `spec` describes, read from `host`: the
/// three CAs, the leaves of kubeadm's `certs` phase, and the client
/// certificates of the kubeconfigs, in that order. Reads only; a file that
/// is absent or unreadable is a row with a `problem`, not an error (a host
/// that joined holds only its etcd member's files).
///
/// Errors with [`PkiError`] for an invalid spec or a failed read.
pub fn expiration(host: &dyn Host, spec: &PkiSpec) -> Result<Vec<CertExpiry>, PkiError> {
    spec.validate()?;
    let ca_name = |id: CaId| match id {
        CaId::Cluster => names::CA,
        CaId::FrontProxy => names::FRONT_PROXY_CA,
        CaId::Etcd => names::ETCD_CA,
    };
    let mut out = Vec::new();
    let mut row = |name: &str, path: PathBuf, kind, signed_by, pem: Result<Vec<u8>, CertError>| {
        let (not_after, problem) = match pem.and_then(|pem| cert_not_after(&pem)) {
            Ok(t) => (Some(t), None),
            Err(why) => (None, Some(why.to_string())),
        };
        out.push(CertExpiry {
            name: name.to_string(),
            path,
            kind,
            signed_by,
            not_after,
            problem,
        });
    };
    let read = |path: &Path| -> Result<Result<Vec<u8>, CertError>, PkiError> {
        Ok(host.read_file(path)?.ok_or(CertError::NotOnHost))
    };
    for base in [names::CA, names::FRONT_PROXY_CA, names::ETCD_CA] {
        let path = spec.cert_path(base);
        let pem = read(&path)?;
        row(base, path, CertKind::Ca, None, pem);
    }
    for (base, ca, _) in leaf_profiles(spec)? {
        let path = spec.cert_path(base);
        let pem = read(&path)?;
        row(base, path, CertKind::Leaf, Some(ca_name(ca)), pem);
    }
    for (file, _) in kubeconfig_profiles(spec) {
        let path = spec.kubeconfig_path(file);
        let pem = read(&path)?.and_then(|bytes| {
            let kc = Kubeconfig::from_yaml(&bytes).map_err(|_| CertError::NotAKubeconfig)?;
            let (_, user) = kc.current().ok_or(CertError::NoKubeconfigUser)?;
            kubeconfig::decode_data(user.user.client_certificate_data.as_deref())
                .ok_or(CertError::NoClientCertificate)
        });
        row(file, path, CertKind::Kubeconfig, Some(names::CA), pem);
    }
    Ok(out)
}

/// The end of validity of the first certificate in `pem`.
fn cert_not_after(pem: &[u8]) -> Result<SystemTime, CertError> {
    let der = cert::pem_der(pem, "CERTIFICATE")?;
    let (_, c) = X509Certificate::from_der(&der).map_err(|_| CertError::NotX509)?;
    Ok(cert::system_time(c.validity().not_after.timestamp()))
}

/// Brings the PKI described by `spec` into place through `host`, as of `now`.
///
/// Idempotent and resumable: whatever a killed earlier run left behind is
/// either reused or replaced. All checks that can refuse (spec, CAs,
/// service-account key) run before anything is written.
///
/// Returns what was done to each file; errors with [`PkiError`] (a CA or
/// `sa.key` that cannot be used is never replaced).
pub fn ensure_pki(host: &dyn Host, spec: &PkiSpec, now: SystemTime) -> Result<PkiReport, PkiError> {
    converge(host, spec, now, false, true)
}

/// [`ensure_pki`] on a control-plane host that joined: the same CAs and
/// keys (they came with its control-plane join), its own leaves and
/// kubeconfigs, but not `kubelet.conf`: its kubelet has its own
/// credentials from its TLS bootstrap, rotated by the kubelet itself.
///
/// Errors as [`ensure_pki`]; it never makes a CA (a missing CA key is an
/// error before anything is written, not a new CA).
pub fn ensure_joined_control_plane_pki(
    host: &dyn Host,
    spec: &PkiSpec,
    now: SystemTime,
) -> Result<PkiReport, PkiError> {
    require_cluster_cas(host, spec)?;
    converge(host, spec, now, false, false)
}

/// [`renew_pki`] on a control-plane host that joined: every leaf and
/// kubeconfig of its own re-issued, no `kubelet.conf`, never a CA.
///
/// Errors as [`ensure_joined_control_plane_pki`].
pub fn renew_joined_control_plane_pki(
    host: &dyn Host,
    spec: &PkiSpec,
    now: SystemTime,
) -> Result<PkiReport, PkiError> {
    require_cluster_cas(host, spec)?;
    converge(host, spec, now, true, false)
}

/// The CAs a joined host received, or [`PkiError::MissingClusterKey`].
fn require_cluster_cas(host: &dyn Host, spec: &PkiSpec) -> Result<(), PkiError> {
    for base in [names::CA, names::FRONT_PROXY_CA, names::ETCD_CA] {
        for path in [spec.cert_path(base), spec.key_path(base)] {
            if host.read_file(&path)?.is_none() {
                return Err(PkiError::MissingClusterKey { path });
            }
        }
    }
    Ok(())
}

/// [`ensure_pki`], except that every leaf certificate and kubeconfig is
/// re-issued (new key, new validity from `now`) even when it is valid, as
/// kubeadm's `certs renew all`. CAs and the service-account key are kept:
/// nothing signed by them, and no join pin, changes.
///
/// Errors as [`ensure_pki`].
pub fn renew_pki(host: &dyn Host, spec: &PkiSpec, now: SystemTime) -> Result<PkiReport, PkiError> {
    converge(host, spec, now, true, true)
}

/// `kubelet`: whether this host's kubelet kubeconfig is part of the PKI
/// (not on a joined host: see [`ensure_joined_control_plane_pki`]).
fn converge(
    host: &dyn Host,
    spec: &PkiSpec,
    now: SystemTime,
    renew_all: bool,
    kubelet: bool,
) -> Result<PkiReport, PkiError> {
    spec.validate()?;
    let now = cert::unix_secs(now);

    // Observe and refuse first; write nothing until everything can converge.
    let ca_plans = [
        inspect_ca(host, spec, names::CA, "kubernetes", now)?,
        inspect_ca(host, spec, names::FRONT_PROXY_CA, "front-proxy-ca", now)?,
        inspect_ca(host, spec, names::ETCD_CA, "etcd-ca", now)?,
    ];
    let sa_plan = inspect_sa(host, spec)?;

    let mut run = Run {
        host,
        now,
        renew_all,
        report: PkiReport::default(),
    };
    host.ensure_dir(&spec.pki_dir, DIR_MODE)?;
    host.ensure_dir(&spec.etcd_pki_dir(), DIR_MODE)?;
    host.ensure_dir(&spec.kubeconfig_dir, DIR_MODE)?;

    let [cluster_plan, front_proxy_plan, etcd_plan] = ca_plans;
    let cluster_ca = run.apply_ca(cluster_plan)?;
    let front_proxy_ca = run.apply_ca(front_proxy_plan)?;
    let etcd_ca = run.apply_ca(etcd_plan)?;
    run.apply_sa(spec, sa_plan)?;

    for (base, ca_id, profile) in leaf_profiles(spec)? {
        let ca = match ca_id {
            CaId::Cluster => &cluster_ca,
            CaId::FrontProxy => &front_proxy_ca,
            CaId::Etcd => &etcd_ca,
        };
        run.ensure_leaf(spec, base, &profile, ca)?;
    }
    for (file, profile) in kubeconfig_profiles(spec) {
        if !kubelet && file == names::KUBELET_CONF {
            continue;
        }
        run.ensure_kubeconfig(spec, file, &profile, &cluster_ca)?;
    }

    run.report.ca_cert_hash = ca_cert_hash(&cluster_ca.cert_pem)?;
    Ok(run.report)
}

#[derive(Debug, Clone, Copy)]
enum CaId {
    Cluster,
    FrontProxy,
    Etcd,
}

/// The leaves kubeadm's `certs` phase makes, with the CA that signs each.
fn leaf_profiles(spec: &PkiSpec) -> Result<Vec<(&'static str, CaId, Profile)>, PkiError> {
    let client = |cn: &str| Profile {
        cn: cn.to_string(),
        org: None,
        sans: SanSet::default(),
        server_auth: false,
        client_auth: true,
    };

    // kubeadm's GetAPIServerAltNames, plus loopback (the kubeconfigs and the
    // node-local load balancer reach the API on 127.0.0.1, and [::1] when
    // the cluster speaks IPv6) and the API endpoint's own host.
    let mut api = SanSet::default();
    api.add_dns(&spec.node_name);
    for name in ["kubernetes", "kubernetes.default", "kubernetes.default.svc"] {
        api.add_dns(name);
    }
    api.add_dns(&format!("kubernetes.default.svc.{}", spec.dns_domain));
    let service_ip = spec.kubernetes_service_ip()?;
    api.add_ip(service_ip);
    api.add_ip(std::net::Ipv4Addr::LOCALHOST.into());
    let ipv6 = service_ip.is_ipv6() || spec.advertise_addresses.iter().any(|a| a.is_ipv6());
    if ipv6 {
        api.add_ip(std::net::Ipv6Addr::LOCALHOST.into());
    }
    for addr in &spec.advertise_addresses {
        api.add_ip(*addr);
    }
    api.add(spec.api_endpoint_host()?);
    for san in &spec.extra_sans {
        api.add(spec::parse_san(san)?);
    }

    // kubeadm's getAltNames for etcd server and peer.
    let mut etcd = SanSet::default();
    etcd.add_dns(&spec.node_name);
    etcd.add_dns("localhost");
    etcd.add_ip(std::net::Ipv4Addr::LOCALHOST.into());
    etcd.add_ip(std::net::Ipv6Addr::LOCALHOST.into());
    for addr in &spec.advertise_addresses {
        etcd.add_ip(*addr);
    }
    let etcd_node = |sans: SanSet| Profile {
        cn: spec.node_name.clone(),
        org: None,
        sans,
        server_auth: true,
        client_auth: true,
    };

    Ok(vec![
        (
            names::APISERVER,
            CaId::Cluster,
            Profile {
                cn: "kube-apiserver".to_string(),
                org: None,
                sans: api,
                server_auth: true,
                client_auth: false,
            },
        ),
        (
            names::APISERVER_KUBELET_CLIENT,
            CaId::Cluster,
            client(names::APISERVER_KUBELET_CLIENT_USER),
        ),
        (
            names::FRONT_PROXY_CLIENT,
            CaId::FrontProxy,
            client("front-proxy-client"),
        ),
        (names::ETCD_SERVER, CaId::Etcd, etcd_node(etcd.clone())),
        (names::ETCD_PEER, CaId::Etcd, etcd_node(etcd)),
        (
            names::ETCD_HEALTHCHECK_CLIENT,
            CaId::Etcd,
            client("kube-etcd-healthcheck-client"),
        ),
        (
            names::APISERVER_ETCD_CLIENT,
            CaId::Etcd,
            client("kube-apiserver-etcd-client"),
        ),
    ])
}

/// kubeadm's kubeconfig phase: file, client identity (the user is the CN).
fn kubeconfig_profiles(spec: &PkiSpec) -> Vec<(&'static str, Profile)> {
    let user = |cn: String, org: Option<&str>| Profile {
        cn,
        org: org.map(str::to_string),
        sans: SanSet::default(),
        server_auth: false,
        client_auth: true,
    };
    vec![
        (
            names::ADMIN_CONF,
            user(
                "kubernetes-admin".to_string(),
                Some(names::CLUSTER_ADMINS_GROUP),
            ),
        ),
        (
            names::SUPER_ADMIN_CONF,
            user(
                "kubernetes-super-admin".to_string(),
                Some(names::SYSTEM_MASTERS_GROUP),
            ),
        ),
        (
            names::CONTROLLER_MANAGER_CONF,
            user("system:kube-controller-manager".to_string(), None),
        ),
        (
            names::SCHEDULER_CONF,
            user("system:kube-scheduler".to_string(), None),
        ),
        (
            names::KUBELET_CONF,
            user(
                format!("{}{}", names::NODE_USER_PREFIX, spec.node_name),
                Some(names::NODES_GROUP),
            ),
        ),
        (
            names::CONTROL_PLANE_AGENT_CONF,
            user(
                names::CONTROL_PLANE_AGENT_USER.to_string(),
                Some(names::CONTROL_PLANE_AGENTS_GROUP),
            ),
        ),
    ]
}

/// What to do about one CA, decided before anything is written.
enum CaPlan {
    /// Both files are valid.
    Reuse {
        cert_path: PathBuf,
        key_path: PathBuf,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
        ca: Ca,
    },
    /// Neither file exists.
    Create {
        cert_path: PathBuf,
        key_path: PathBuf,
        cn: &'static str,
    },
    /// Only the key exists (an earlier run stopped between the two writes,
    /// or the certificate was deleted): make the certificate for that key.
    /// Everything signed before still verifies, and the join pin is kept.
    CertFromKey {
        cert_path: PathBuf,
        key_path: PathBuf,
        key_pem: Vec<u8>,
        key: rcgen::KeyPair,
        cn: &'static str,
    },
}

fn inspect_ca(
    host: &dyn Host,
    spec: &PkiSpec,
    base: &str,
    cn: &'static str,
    now: i64,
) -> Result<CaPlan, PkiError> {
    let cert_path = spec.cert_path(base);
    let key_path = spec.key_path(base);
    let cert_file = host.read_file(&cert_path)?;
    let key_file = host.read_file(&key_path)?;
    let key_unreadable = |e: CertError| PkiError::CaKeyUnreadable {
        cert: cert_path.clone(),
        key: key_path.clone(),
        reason: e.to_string(),
    };
    match (cert_file, key_file) {
        (None, None) => Ok(CaPlan::Create {
            cert_path,
            key_path,
            cn,
        }),
        (Some(_), None) => Err(PkiError::CaKeyMissing {
            cert: cert_path,
            key: key_path,
        }),
        (None, Some(key_pem)) => {
            let key = cert::parse_key(&key_pem).map_err(key_unreadable)?;
            Ok(CaPlan::CertFromKey {
                cert_path,
                key_path,
                key_pem,
                key,
                cn,
            })
        }
        (Some(cert_pem), Some(key_pem)) => {
            let ca = parse_ca(&cert_path, &key_path, &cert_pem, &key_pem, now)?;
            Ok(CaPlan::Reuse {
                cert_path,
                key_path,
                cert_pem,
                key_pem,
                ca,
            })
        }
    }
}

/// A CA from its PEM files, checked as [`ensure_pki`] checks one on disk
/// (the paths are for messages).
fn parse_ca(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
    now: i64,
) -> Result<Ca, PkiError> {
    let (cert_path, key_path) = (cert_path.to_path_buf(), key_path.to_path_buf());
    let key_unreadable = |e: CertError| PkiError::CaKeyUnreadable {
        cert: cert_path.clone(),
        key: key_path.clone(),
        reason: e.to_string(),
    };
    let cert_unreadable = |e: CertError| PkiError::CaCertUnreadable {
        cert: cert_path.clone(),
        key: key_path.clone(),
        reason: e.to_string(),
    };
    let der = cert::pem_der(cert_pem, "CERTIFICATE").map_err(cert_unreadable)?;
    let (_, x509) =
        X509Certificate::from_der(&der).map_err(|_| cert_unreadable(CertError::NotX509))?;
    let key = cert::parse_key(key_pem).map_err(key_unreadable)?;
    if !cert::key_matches(&key, &x509) {
        return Err(PkiError::CaKeyMismatch {
            cert: cert_path,
            key: key_path,
        });
    }
    if !x509.is_ca() {
        return Err(PkiError::NotACa {
            cert: cert_path,
            key: key_path,
        });
    }
    let not_before = x509.validity().not_before.timestamp();
    let not_after = x509.validity().not_after.timestamp();
    if now < not_before {
        return Err(PkiError::CaNotYetValid {
            cert: cert_path,
            not_before: cert::system_time(not_before),
        });
    }
    if now >= not_after {
        return Err(PkiError::CaExpired {
            cert: cert_path,
            key: key_path,
            not_after: cert::system_time(not_after),
        });
    }
    Ca::new(cert_pem.to_vec(), der.clone(), key)
        .map_err(|e| cert_unreadable(CertError::CannotSign(e)))
}

/// A serving certificate for `ips` (CN `cn`), signed by the CA at
/// `ca_cert`/`ca_key` (PEM, as read from those files) and valid for
/// `validity` from `now`: for a service that lives as long as one command
/// (the bundle `selfnode upgrade` shares with the other hosts), kept in
/// memory and never written. Returns the certificate (PEM) and its key
/// (PKCS#8 DER).
pub fn short_lived_serving_cert(
    (ca_cert, ca_cert_pem): (&Path, &[u8]),
    (ca_key, ca_key_pem): (&Path, &[u8]),
    cn: &str,
    ips: &[std::net::IpAddr],
    validity: std::time::Duration,
    now: SystemTime,
) -> Result<(String, Vec<u8>), PkiError> {
    let now = cert::unix_secs(now);
    let ca = parse_ca(ca_cert, ca_key, ca_cert_pem, ca_key_pem, now)?;
    let mut sans = SanSet::default();
    for ip in ips {
        sans.add_ip(*ip);
    }
    let profile = Profile {
        cn: cn.to_string(),
        org: None,
        sans,
        server_auth: true,
        client_auth: false,
    };
    let generate = |source| PkiError::Generate {
        what: cn.to_string(),
        source,
    };
    let key = cert::new_key().map_err(generate)?;
    let pem = cert::issue_for(&profile, &key, &ca, now, validity).map_err(generate)?;
    Ok((pem, key.serialize_der()))
}

/// The organisations (O) of a certificate's subject (DER); empty when it
/// does not parse.
pub fn subject_orgs(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    cert.subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect()
}

/// The certificates of an etcd member joining a running cluster on this
/// node (a control-plane node that is not the first): `etcd/ca.crt`, and
/// `etcd/server`, `etcd/peer` (CN and SANs: the node's name, its
/// addresses, loopback) and `etcd/healthcheck-client` issued with the etcd
/// CA given as PEM (from the cluster's `selfnode-etcd-ca` Secret). The CA's
/// key is used in memory and never written. Idempotent as [`ensure_pki`]:
/// valid leaves are kept, leaves of another CA or with other names renewed.
///
/// Errors with [`PkiError`]: an invalid spec, a CA that cannot sign, a
/// write that fails.
pub fn ensure_etcd_member(
    host: &dyn Host,
    spec: &PkiSpec,
    ca_cert_pem: &[u8],
    ca_key_pem: &[u8],
    now: SystemTime,
) -> Result<PkiReport, PkiError> {
    spec.validate()?;
    let now = cert::unix_secs(now);
    let cert_path = spec.cert_path(names::ETCD_CA);
    let key_path = spec.key_path(names::ETCD_CA);
    let ca = parse_ca(&cert_path, &key_path, ca_cert_pem, ca_key_pem, now)?;
    let mut run = Run {
        host,
        now,
        renew_all: false,
        report: PkiReport::default(),
    };
    host.ensure_dir(&spec.pki_dir, DIR_MODE)?;
    host.ensure_dir(&spec.etcd_pki_dir(), DIR_MODE)?;
    match host.read_file(&cert_path)? {
        Some(old) if old == ca_cert_pem => run.keep(&cert_path, ca_cert_pem)?,
        Some(_) => run.put(&cert_path, ca_cert_pem, Some(RenewReason::NotSignedByCa))?,
        None => run.put(&cert_path, ca_cert_pem, None)?,
    }
    let member = [
        names::ETCD_SERVER,
        names::ETCD_PEER,
        names::ETCD_HEALTHCHECK_CLIENT,
    ];
    for (base, ca_id, profile) in leaf_profiles(spec)? {
        if matches!(ca_id, CaId::Etcd) && member.contains(&base) {
            run.ensure_leaf(spec, base, &profile, &ca)?;
        }
    }
    Ok(run.report)
}

/// The existing, readable `sa.key` (PEM and parsed), or `None` if absent.
type SaPlan = Option<(Vec<u8>, rcgen::KeyPair)>;

fn inspect_sa(host: &dyn Host, spec: &PkiSpec) -> Result<SaPlan, PkiError> {
    let path = spec.pki_dir.join(names::SA_KEY);
    match host.read_file(&path)? {
        None => Ok(None),
        Some(key_pem) => match cert::parse_key(&key_pem) {
            Ok(key) => Ok(Some((key_pem, key))),
            Err(e) => Err(PkiError::ServiceAccountKeyUnreadable {
                path,
                reason: e.to_string(),
            }),
        },
    }
}

/// One convergence pass: the host, the clock, and what was done so far.
struct Run<'a> {
    host: &'a dyn Host,
    now: i64,
    /// Re-issue valid leaves and kubeconfigs too ([`renew_pki`]).
    renew_all: bool,
    report: PkiReport,
}

impl Run<'_> {
    /// Why a leaf that passed its checks is replaced anyway, if it is.
    fn requested(&self) -> Option<RenewReason> {
        self.renew_all.then_some(RenewReason::Requested)
    }
}

impl Run<'_> {
    fn record(&mut self, path: &Path, action: PkiAction) {
        match &action {
            PkiAction::Reused => tracing::debug!(path = %path.display(), "pki file reused"),
            other => tracing::info!(path = %path.display(), action = %other, "pki file written"),
        }
        self.report.entries.push(PkiEntry {
            path: path.to_path_buf(),
            action,
        });
    }

    /// Writes a new file (`replaced: None`) or a replacement, and records it.
    fn put(
        &mut self,
        path: &Path,
        contents: &[u8],
        replaced: Option<RenewReason>,
    ) -> Result<(), PkiError> {
        self.host.write_file(path, contents, FILE_MODE)?;
        let action = match replaced {
            Some(reason) => PkiAction::Renewed(reason),
            None => PkiAction::Created,
        };
        self.record(path, action);
        Ok(())
    }

    /// Keeps a valid file. Re-writing the same bytes is a no-op for the host
    /// (compare-before-write) except that a wrong mode is corrected.
    fn keep(&mut self, path: &Path, contents: &[u8]) -> Result<(), PkiError> {
        self.host.write_file(path, contents, FILE_MODE)?;
        self.record(path, PkiAction::Reused);
        Ok(())
    }

    fn apply_ca(&mut self, plan: CaPlan) -> Result<Ca, PkiError> {
        let generate = |what: &Path| {
            let what = what.display().to_string();
            move |source| PkiError::Generate { what, source }
        };
        let (cert_path, key, cn) = match plan {
            CaPlan::Reuse {
                cert_path,
                key_path,
                cert_pem,
                key_pem,
                ca,
            } => {
                self.keep(&key_path, &key_pem)?;
                self.keep(&cert_path, &cert_pem)?;
                if ca.not_after - self.now < LEAF_VALIDITY.as_secs() as i64 {
                    self.report.warnings.push(PkiWarning::CaExpiresSoon {
                        path: cert_path,
                        not_after: cert::system_time(ca.not_after),
                    });
                }
                return Ok(ca);
            }
            CaPlan::Create {
                cert_path,
                key_path,
                cn,
            } => {
                let key = cert::new_key().map_err(generate(&key_path))?;
                let key_pem = key.serialize_pem().into_bytes();
                // Key first: a crash before the certificate is written leaves
                // a state that CertFromKey completes.
                self.put(&key_path, &key_pem, None)?;
                (cert_path, key, cn)
            }
            CaPlan::CertFromKey {
                cert_path,
                key_path,
                key_pem,
                key,
                cn,
            } => {
                self.keep(&key_path, &key_pem)?;
                (cert_path, key, cn)
            }
        };
        let der = cert::self_signed_ca(cn, &key, self.now).map_err(generate(&cert_path))?;
        let pem = pem::encode_config(
            &pem::Pem::new("CERTIFICATE", der.clone()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
        .into_bytes();
        self.put(&cert_path, &pem, None)?;
        Ca::new(pem, der, key).map_err(generate(&cert_path))
    }

    fn apply_sa(&mut self, spec: &PkiSpec, plan: SaPlan) -> Result<(), PkiError> {
        let key_path = spec.pki_dir.join(names::SA_KEY);
        let pub_path = spec.pki_dir.join(names::SA_PUB);
        let old_pub = self.host.read_file(&pub_path)?;
        let (key, new_key) = match plan {
            Some((key_pem, key)) => {
                self.keep(&key_path, &key_pem)?;
                (key, false)
            }
            None => {
                let key = cert::new_key().map_err(|source| PkiError::Generate {
                    what: key_path.display().to_string(),
                    source,
                })?;
                self.put(&key_path, key.serialize_pem().as_bytes(), None)?;
                (key, true)
            }
        };
        let want = cert::spki_der(&key);
        match old_pub {
            Some(old) if cert::pem_der(&old, "PUBLIC KEY").ok() == Some(want) => {
                self.keep(&pub_path, &old)
            }
            old => {
                let reason = if new_key {
                    RenewReason::PairIncomplete { missing: key_path }
                } else {
                    RenewReason::PublicKeyMismatch
                };
                self.put(
                    &pub_path,
                    key.public_key_pem().as_bytes(),
                    old.and(Some(reason)),
                )
            }
        }
    }

    fn ensure_leaf(
        &mut self,
        spec: &PkiSpec,
        base: &str,
        profile: &Profile,
        ca: &Ca,
    ) -> Result<(), PkiError> {
        let cert_path = spec.cert_path(base);
        let key_path = spec.key_path(base);
        let cert_file = self.host.read_file(&cert_path)?;
        let key_file = self.host.read_file(&key_path)?;
        let reason = match (&cert_file, &key_file) {
            (Some(c), Some(k)) => match cert::check_leaf(c, k, profile, ca, self.now) {
                Ok(()) => match self.requested() {
                    None => {
                        self.keep(&key_path, k)?;
                        self.keep(&cert_path, c)?;
                        return Ok(());
                    }
                    requested => requested,
                },
                Err(reason) => Some(reason),
            },
            (None, Some(_)) => Some(RenewReason::PairIncomplete {
                missing: cert_path.clone(),
            }),
            (Some(_), None) => Some(RenewReason::PairIncomplete {
                missing: key_path.clone(),
            }),
            (None, None) => None,
        };
        let (key_pem, cert_pem) = self.issue(base, profile, ca)?;
        // Key first: a crash in between leaves a pair that fails KeyMismatch
        // and is re-issued on the next run.
        self.put(&key_path, key_pem.as_bytes(), key_file.and(reason.clone()))?;
        self.put(&cert_path, cert_pem.as_bytes(), cert_file.and(reason))
    }

    fn issue(&self, what: &str, profile: &Profile, ca: &Ca) -> Result<(String, String), PkiError> {
        let generate = |source| PkiError::Generate {
            what: what.to_string(),
            source,
        };
        let key = cert::new_key().map_err(generate)?;
        let cert_pem = cert::issue(profile, &key, ca, self.now).map_err(generate)?;
        Ok((key.serialize_pem(), cert_pem))
    }

    fn ensure_kubeconfig(
        &mut self,
        spec: &PkiSpec,
        file: &str,
        profile: &Profile,
        ca: &Ca,
    ) -> Result<(), PkiError> {
        let path = spec.kubeconfig_path(file);
        let existing = self.host.read_file(&path)?;
        let replaced = match &existing {
            Some(bytes) => match check_kubeconfig(bytes, spec, profile, ca, self.now) {
                Ok(()) => match self.requested() {
                    None => return self.keep(&path, bytes),
                    requested => requested,
                },
                Err(reason) => Some(reason),
            },
            None => None,
        };
        let (key_pem, cert_pem) = self.issue(file, profile, ca)?;
        let kc = Kubeconfig::with_client_cert(
            &spec.cluster_name,
            &spec.api_endpoint,
            &ca.cert_pem,
            &profile.cn,
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
        );
        let yaml = kc.to_yaml().map_err(|source| PkiError::Kubeconfig {
            path: path.clone(),
            source,
        })?;
        self.put(&path, yaml.as_bytes(), replaced)
    }
}

fn check_kubeconfig(
    bytes: &[u8],
    spec: &PkiSpec,
    profile: &Profile,
    ca: &Ca,
    now: i64,
) -> Result<(), RenewReason> {
    let kc = Kubeconfig::from_yaml(bytes).map_err(|_| RenewReason::KubeconfigUnreadable)?;
    let (cluster, user) = kc.current().ok_or(RenewReason::KubeconfigUnreadable)?;
    if cluster.cluster.server != spec.api_endpoint {
        return Err(RenewReason::ServerChanged {
            want: spec.api_endpoint.clone(),
            got: cluster.cluster.server.clone(),
        });
    }
    let ca_der = kubeconfig::decode_data(cluster.cluster.certificate_authority_data.as_deref())
        .and_then(|pem| cert::pem_der(&pem, "CERTIFICATE").ok());
    if ca_der.as_deref() != Some(ca.cert_der.as_slice()) {
        return Err(RenewReason::KubeconfigCaChanged);
    }
    let cert_pem = kubeconfig::decode_data(user.user.client_certificate_data.as_deref())
        .ok_or(RenewReason::CertUnreadable)?;
    let key_pem = kubeconfig::decode_data(user.user.client_key_data.as_deref())
        .ok_or(RenewReason::KeyUnreadable)?;
    let want = Kubeconfig::with_client_cert(
        &spec.cluster_name,
        &spec.api_endpoint,
        &ca.cert_pem,
        &profile.cn,
        &cert_pem,
        &key_pem,
    );
    if kc != want {
        return Err(RenewReason::KubeconfigLayoutChanged);
    }
    cert::check_leaf(&cert_pem, &key_pem, profile, ca, now)
}
