//! The control plane's shape: [`PlaneSpec`] (what the user's config decides),
//! the temporary control plane as host processes ([`temp_plane`]), the
//! encryption-at-rest configuration ([`ensure_encryption_config`]), the
//! apiserver's audit policy (`audit`) and admission configuration
//! (`admission`), and the TLS settings of every component (`tls`).
//!
//! Every component's command line is built in one place (`flags`), once for
//! each [`Placement`]: the temporary processes read the PKI from the host;
//! the self-hosted pods (see [`crate::objects`]) get the same files mounted
//! from Secrets at the same paths, so their flags differ only where the two
//! must run side by side during the pivot (ports, the `kubernetes` endpoint
//! reconciler, and the advertise address, which a DaemonSet takes per node).

mod admission;
mod audit;
mod encryption;
pub(crate) mod flags;
pub(crate) mod spec;
mod tls;

#[cfg(test)]
pub(crate) mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::host::{Host, HostError};
use crate::pki::names;

pub use admission::{
    admission_config, admission_config_path, admission_policy_dir, ensure_admission_config,
    ADMISSION_CONFIG_FILE, CONTROL_PLANE_LABEL_POLICY, CONTROL_PLANE_LABEL_POLICY_FILE, POLICY_DIR,
};
pub use audit::{
    audit_policy_path, ensure_audit_files, AUDIT_LOG_DIR_MODE, AUDIT_LOG_MAXAGE_DAYS,
    AUDIT_LOG_MAXBACKUP, AUDIT_LOG_MAXSIZE_MB, AUDIT_POLICY, AUDIT_POLICY_FILE,
    DEFAULT_AUDIT_LOG_DIR,
};
pub use encryption::{
    ensure_encryption_config, EncryptionConfigError, EncryptionReport, ENCRYPTION_CONFIG_FILE,
    ENCRYPTION_KEY_NAME,
};
pub use flags::{EtcdInitial, InitialClusterState};
pub use spec::{
    temp_etcd_data_dir_beside, PlaneEnv, PlaneImages, PlanePorts, PlaneReplicas, PlaneSpec,
    PlaneSpecError, DEFAULT_API_LB_PORT, DEFAULT_ETCD_DATA_DIR, DEFAULT_POD_CIDR,
};
pub use tls::{tls_cipher_suites_flag, ETCD_TLS_MIN_VERSION, TLS_CIPHER_SUITES, TLS_MIN_VERSION};

/// Where a component runs; its flags differ only where both must coexist
/// during the pivot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A host process supervised by the node agent, on the first node only.
    Temporary,
    /// A pod of the self-hosted control plane (DaemonSet or Deployment).
    SelfHosted,
}

/// One supervised process of the temporary control plane. Serialisable: the
/// node agent reads it from its services directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessSpec {
    /// Service name (`etcd`, `kube-apiserver`, ...); also the log file's name.
    pub name: String,
    /// File name under the bundle's `bin/`.
    pub binary: String,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// How the supervisor tells that the process serves.
    pub health: HealthCheck,
}

/// A readiness check the supervisor runs against a process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    /// `GET https://<address><path>` answers 200.
    Https {
        /// Address and port to connect to.
        address: SocketAddr,
        /// Request path, with its leading `/` (`/readyz`, `/healthz`).
        path: String,
        /// CA that must have signed the serving certificate (whose SANs
        /// include `address`'s IP). `None`: the component serves a
        /// self-signed certificate it makes at start-up (controller-manager,
        /// scheduler), so there is nothing to verify it against; the
        /// kubelet's probes do the same.
        ca_file: Option<PathBuf>,
        /// Client certificate and key to present (etcd requires one).
        /// `None`: anonymous, which RBAC's `system:public-info-viewer`
        /// allows for `/livez`, `/readyz` and `/healthz`.
        client_cert: Option<ClientCert>,
    },
}

impl HealthCheck {
    /// The URL checked.
    pub fn url(&self) -> String {
        match self {
            HealthCheck::Https { address, path, .. } => format!("https://{address}{path}"),
        }
    }
}

/// A client certificate and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientCert {
    /// The certificate (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
}

/// The temporary control plane, in start order: etcd, kube-apiserver,
/// kube-controller-manager, kube-scheduler. Each must be healthy before the
/// next starts. The PKI ([`crate::pki::ensure_pki`] with
/// [`PlaneSpec::pki_spec`]), the encryption configuration and the etcd data
/// directory ([`prepare_temp_plane`]) must be in place first.
///
/// Errors with [`PlaneSpecError`] when the spec is invalid.
pub fn temp_plane(spec: &PlaneSpec) -> Result<Vec<ProcessSpec>, PlaneSpecError> {
    spec.validate()?;
    let p = Placement::Temporary;
    let loopback = spec.loopback();
    let pki = |base: &str, ext: &str| spec.pki_dir.join(format!("{base}.{ext}"));
    Ok(vec![
        ProcessSpec {
            name: "etcd".into(),
            binary: "etcd".into(),
            args: flags::etcd(spec, p, &EtcdInitial::alone(spec, p)).args(),
            health: HealthCheck::Https {
                address: SocketAddr::new(loopback, spec.ports.temp_etcd_client),
                path: "/readyz".into(),
                ca_file: Some(pki(names::ETCD_CA, "crt")),
                client_cert: Some(ClientCert {
                    cert_file: pki(names::ETCD_HEALTHCHECK_CLIENT, "crt"),
                    key_file: pki(names::ETCD_HEALTHCHECK_CLIENT, "key"),
                }),
            },
        },
        ProcessSpec {
            name: "kube-apiserver".into(),
            binary: "kube-apiserver".into(),
            args: flags::apiserver(spec, p).args(),
            health: HealthCheck::Https {
                address: SocketAddr::new(loopback, spec.ports.apiserver_port(p)),
                path: "/readyz".into(),
                ca_file: Some(pki(names::CA, "crt")),
                client_cert: None,
            },
        },
        ProcessSpec {
            name: "kube-controller-manager".into(),
            binary: "kube-controller-manager".into(),
            args: flags::controller_manager(spec, p).args(),
            health: HealthCheck::Https {
                address: SocketAddr::new(loopback, spec.ports.controller_manager_port(p)),
                path: "/healthz".into(),
                ca_file: None,
                client_cert: None,
            },
        },
        ProcessSpec {
            name: "kube-scheduler".into(),
            binary: "kube-scheduler".into(),
            args: flags::scheduler(spec, p).args(),
            health: HealthCheck::Https {
                address: SocketAddr::new(loopback, spec.ports.scheduler_port(p)),
                path: "/readyz".into(),
                ca_file: None,
                client_cert: None,
            },
        },
    ])
}

/// Creates what the temporary processes need besides the PKI: the temporary
/// etcd member's data directory (mode 0700, which etcd insists on) and the
/// apiserver's own files ([`ensure_apiserver_files`]). Idempotent.
///
/// Errors with [`PrepareError`].
pub fn prepare_temp_plane(host: &dyn Host, spec: &PlaneSpec) -> Result<(), PrepareError> {
    spec.validate()?;
    host.ensure_dir(&spec.temp_etcd_data_dir(), ETCD_DATA_DIR_MODE)?;
    ensure_apiserver_files(host, spec)?;
    Ok(())
}

/// Writes what an apiserver on this host reads or writes besides the PKI
/// and the kubeconfigs: the audit policy, the admission configuration
/// (both 0600, selfnode's own, in the kubeconfig directory) and the audit
/// log directory (0700). Idempotent; on every control-plane host.
///
/// Errors with [`HostError`] when one cannot be written.
pub fn ensure_apiserver_files(host: &dyn Host, spec: &PlaneSpec) -> Result<(), HostError> {
    ensure_audit_files(host, &spec.kubeconfig_dir, &spec.audit_log_dir)?;
    ensure_admission_config(host, &spec.kubeconfig_dir)?;
    Ok(())
}

/// The files of [`ensure_apiserver_files`] that a component names in a
/// flag, with their contents in this version of selfnode: taken from here,
/// never from a host (a host set up by an older version may lack one).
pub fn apiserver_own_files(spec: &PlaneSpec) -> [(PathBuf, String); 2] {
    [
        (
            audit_policy_path(&spec.kubeconfig_dir),
            AUDIT_POLICY.to_string(),
        ),
        (
            admission_config_path(&spec.kubeconfig_dir),
            admission_config(&spec.kubeconfig_dir),
        ),
    ]
}

/// Mode of etcd's data directory.
pub const ETCD_DATA_DIR_MODE: u32 = 0o700;

/// [`prepare_temp_plane`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The [`PlaneSpec`] is invalid.
    #[error(transparent)]
    InvalidSpec(#[from] PlaneSpecError),
    /// Creating the directory failed.
    #[error(transparent)]
    Host(#[from] HostError),
}
