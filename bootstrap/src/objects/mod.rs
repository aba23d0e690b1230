//! The self-hosted control plane as typed Kubernetes objects (k8s-openapi),
//! and their server-side apply.
//!
//! [`self_hosted_objects`] is pure: a [`PlaneSpec`] and the contents of the
//! files the components need ([`PlaneFiles`]) in, [`Object`]s out, in
//! dependency order. [`apply_all`] applies them with server-side apply
//! (field manager `selfnode`, forced), which is idempotent: applying the
//! same objects again changes nothing.
//!
//! What is here: the kube-apiserver DaemonSet (its keys are hostPath
//! mounts: no Secret holds a private key), the
//! controller-manager and scheduler Deployments, kube-proxy, the pod-network
//! DaemonSet (`selfnode network-agent`), CoreDNS, and the RBAC bindings the
//! PKI's identities rely on, and what joining hosts need (`join_objects`:
//! `cluster-info`, the bootstrap-token bindings, the cluster's settings for
//! kubelets). Not here: the control-plane label and taint of the Node, which the init sequence
//! sets with [`mark_control_plane`] once the kubelet registered it.

mod addons;
mod apply;
pub(crate) mod control_plane;
mod etcd;
mod join;
mod meta;
pub mod network;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::host::{Host, HostError};
use crate::plane::{PlaneSpec, PlaneSpecError};

pub use apply::{
    apply_all, control_plane_node_patch, create_missing, ensure_kubernetes_service_target_port,
    mark_control_plane, with_control_plane_taint, Applied, ApplyError, ApplyOutcome,
};
pub use control_plane::{
    component_files, component_workloads, shared_file, ComponentWorkload, LEGACY_KEY_SECRETS,
};
pub use etcd::{etcd_static_pod, etcd_static_pod_yaml, ETCD};
pub use join::{
    ClusterSettings, ClusterSettingsError, BUNDLE_OFFER, CLUSTER_SETTINGS, ETCD_DEFRAG_LEASE,
    LEGACY_AUTOAPPROVE_BINDING, UPGRADE_ROLE, UPGRADE_TURNS,
};

/// Namespace of every namespaced object here.
pub const NAMESPACE: &str = "kube-system";
/// Field manager of selfnode's server-side applies.
pub const FIELD_MANAGER: &str = "selfnode";
/// Label on every object selfnode manages (value [`MANAGED_BY_VALUE`]).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on selfnode's objects.
pub const MANAGED_BY_VALUE: &str = "selfnode";
/// Pod-template annotation (value `"true"`) marking the pods the node
/// agent's checkpointer keeps a last-known-good copy of.
pub const CHECKPOINT_ANNOTATION: &str = "selfnode.dev/checkpoint";
/// Pod-template annotation: hash of the Secret or ConfigMap the pod mounts,
/// so a change of their contents rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "selfnode.dev/config-hash";
/// Label (value `""`) and taint key (effect `NoSchedule`) of control-plane nodes.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// Mode of the files mounted from the control-plane Secrets.
pub const SECRET_FILE_MODE: i32 = 0o400;

/// One object of the self-hosted control plane. Its `Debug` never shows
/// Secret values (private keys): only their keys.
#[derive(Clone, PartialEq)]
pub enum Object {
    /// A ServiceAccount.
    ServiceAccount(ServiceAccount),
    /// A ClusterRole.
    ClusterRole(ClusterRole),
    /// A ClusterRoleBinding.
    ClusterRoleBinding(ClusterRoleBinding),
    /// A Role.
    Role(Role),
    /// A RoleBinding.
    RoleBinding(RoleBinding),
    /// A Secret (certificates, keys, kubeconfigs the components mount).
    Secret(Secret),
    /// A ConfigMap.
    ConfigMap(ConfigMap),
    /// A Service.
    Service(Service),
    /// A DaemonSet.
    DaemonSet(DaemonSet),
    /// A Deployment.
    Deployment(Deployment),
}

impl Object {
    /// The object's Kubernetes `kind` (`Secret`, `DaemonSet`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::ClusterRole(_) => "ClusterRole",
            Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Object::Role(_) => "Role",
            Object::RoleBinding(_) => "RoleBinding",
            Object::Secret(_) => "Secret",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Service(_) => "Service",
            Object::DaemonSet(_) => "DaemonSet",
            Object::Deployment(_) => "Deployment",
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::ServiceAccount(o) => &o.metadata,
            Object::ClusterRole(o) => &o.metadata,
            Object::ClusterRoleBinding(o) => &o.metadata,
            Object::Role(o) => &o.metadata,
            Object::RoleBinding(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::DaemonSet(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
        }
    }

    /// `metadata.name`; empty when unset.
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// `metadata.namespace`; `None` for cluster-scoped objects.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// Apply order: identities and permissions, then what pods mount, then
    /// Services, then the workloads that use all of them.
    pub(crate) fn apply_rank(&self) -> u8 {
        match self {
            Object::ServiceAccount(_) => 0,
            Object::ClusterRole(_) => 1,
            Object::ClusterRoleBinding(_) | Object::Role(_) | Object::RoleBinding(_) => 2,
            Object::Secret(_) | Object::ConfigMap(_) => 3,
            Object::Service(_) => 4,
            Object::DaemonSet(_) | Object::Deployment(_) => 5,
        }
    }

    /// The object as YAML (what `kubectl apply -f` would take).
    ///
    /// Errors with [`ObjectsError::Render`].
    pub fn to_yaml(&self) -> Result<String, ObjectsError> {
        fn render<T: serde::Serialize>(v: &T) -> Result<String, ObjectsError> {
            serde_saphyr::to_string(v).map_err(|source| ObjectsError::Render {
                what: "object",
                source,
            })
        }
        match self {
            Object::ServiceAccount(o) => render(o),
            Object::ClusterRole(o) => render(o),
            Object::ClusterRoleBinding(o) => render(o),
            Object::Role(o) => render(o),
            Object::RoleBinding(o) => render(o),
            Object::Secret(o) => render(o),
            Object::ConfigMap(o) => render(o),
            Object::Service(o) => render(o),
            Object::DaemonSet(o) => render(o),
            Object::Deployment(o) => render(o),
        }
    }
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Secret(s) => f
                .debug_struct("Secret")
                .field("metadata", &s.metadata)
                .field("type", &s.type_)
                .field(
                    "keys",
                    &s.data.as_ref().map(|d| d.keys().collect::<Vec<_>>()),
                )
                .finish_non_exhaustive(),
            Object::ServiceAccount(o) => o.fmt(f),
            Object::ClusterRole(o) => o.fmt(f),
            Object::ClusterRoleBinding(o) => o.fmt(f),
            Object::Role(o) => o.fmt(f),
            Object::RoleBinding(o) => o.fmt(f),
            Object::ConfigMap(o) => o.fmt(f),
            Object::Service(o) => o.fmt(f),
            Object::DaemonSet(o) => o.fmt(f),
            Object::Deployment(o) => o.fmt(f),
        }
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.namespace() {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind(), self.name()),
            None => write!(f, "{} {}", self.kind(), self.name()),
        }
    }
}

/// The contents of the host files the self-hosted components mount, by
/// absolute path (the path their flags name). Its `Debug` shows paths and
/// sizes only: the contents are private keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PlaneFiles(BTreeMap<PathBuf, Vec<u8>>);

impl fmt::Debug for PlaneFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(p, c)| (p.display().to_string(), format!("{} bytes", c.len()))),
            )
            .finish()
    }
}

impl PlaneFiles {
    /// No files.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the contents of the file at absolute `path`.
    pub fn insert(&mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) {
        self.0.insert(path.into(), contents.into());
    }

    /// The contents of the file at `path`, if given.
    pub fn get(&self, path: &Path) -> Option<&[u8]> {
        self.0.get(path).map(Vec::as_slice)
    }

    /// Every file some self-hosted component needs, sorted.
    pub fn required(spec: &PlaneSpec) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = control_plane::component_flags(spec)
            .into_iter()
            .flat_map(|(_, f)| f.files())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Reads [`PlaneFiles::required`] from the host (after `ensure_pki`
    /// and `ensure_encryption_config`), except selfnode's own files (the
    /// audit policy, the admission configuration), which are taken from
    /// this version (a host of an older one may lack them).
    ///
    /// Errors with [`ObjectsError::FileNotOnHost`] when one is missing.
    pub fn read(host: &dyn Host, spec: &PlaneSpec) -> Result<Self, ObjectsError> {
        spec.validate()?;
        let mut files = PlaneFiles::new();
        let own = crate::plane::apiserver_own_files(spec);
        for path in Self::required(spec) {
            if let Some((_, contents)) = own.iter().find(|(p, _)| *p == path) {
                files.insert(path, contents.as_bytes());
                continue;
            }
            match host.read_file(&path)? {
                Some(bytes) => files.insert(path, bytes),
                None => return Err(ObjectsError::FileNotOnHost { path }),
            }
        }
        Ok(files)
    }
}

/// Every object of the self-hosted control plane, in apply order.
///
/// Errors with [`ObjectsError`]: an invalid spec, a file missing from
/// `files`, or a config that cannot be rendered.
pub fn self_hosted_objects(
    spec: &PlaneSpec,
    files: &PlaneFiles,
) -> Result<Vec<Object>, ObjectsError> {
    spec.validate()?;
    let mut out = addons::rbac();
    out.extend(control_plane::objects(spec, files)?);
    out.extend(addons::kube_proxy(spec)?);
    out.extend(network::objects(spec));
    out.extend(addons::coredns(spec)?);
    out.extend(join::objects(spec, files)?);
    out.sort_by_key(Object::apply_rank);
    Ok(out)
}

/// The self-hosted objects cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// The [`PlaneSpec`] is invalid.
    #[error(transparent)]
    InvalidSpec(#[from] PlaneSpecError),
    /// Reading a file from the host failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// [`PlaneFiles::read`] found a required file absent on the host.
    #[error("{} is missing on this host: run the PKI and encryption steps of init first", path.display())]
    FileNotOnHost {
        /// The file.
        path: PathBuf,
    },
    /// The [`PlaneFiles`] given lack a file a component mounts.
    #[error("no contents given for {} (needed by {component})", path.display())]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// The component that mounts it (`kube-apiserver`, ...).
        component: String,
    },
    /// An object or an embedded config could not be rendered as YAML.
    #[error("failed to render the {what} as YAML")]
    Render {
        /// What was being rendered, for the message.
        what: &'static str,
        /// The YAML serializer's error.
        #[source]
        source: serde_saphyr::SerializeError,
    },
}
