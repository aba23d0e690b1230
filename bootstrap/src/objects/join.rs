//! What joining hosts need from the cluster, as kubeadm provides it:
//! `cluster-info` in `kube-public` (readable anonymously, signed per token
//! by the controller-manager's bootstrap signer), the bindings that let a
//! bootstrap token ask for a kubelet client certificate and have it
//! approved, and the cluster's settings a kubelet needs (cluster DNS,
//! domain), readable by bootstrap tokens and nodes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use serde::{Deserialize, Serialize};

use super::{meta, Object, ObjectsError, PlaneFiles, NAMESPACE};
use crate::join::{cluster_info, CLUSTER_INFO, CLUSTER_INFO_NAMESPACE, NODE_TOKEN_GROUP};
use crate::plane::PlaneSpec;

/// The ConfigMap (in `kube-system`) with [`ClusterSettings`].
pub const CLUSTER_SETTINGS: &str = "selfnode-cluster";
const SETTINGS_KEY: &str = "cluster.json";
/// Role (and binding, namespace `default`) that lets nodes read the API
/// servers' EndpointSlice.
const APISERVERS_ROLE: &str = "selfnode:node-apiservers";
/// ClusterRole (and its binding) of control-plane tokens.
const GET_NODES_ROLE: &str = "selfnode:get-nodes";
/// The ClusterRole of the control-plane hosts' agents.
const CONTROL_PLANE_AGENT_ROLE: &str = "selfnode:control-plane-agent";
/// The Lease (`coordination.k8s.io/v1`, in `kube-system`) an agent holds
/// while it defragments its host's etcd member, so that no two members
/// are defragmented at once.
pub const ETCD_DEFRAG_LEASE: &str = "selfnode-etcd-defrag";
/// The Role (and binding, in `kube-system`) that lets the control-plane
/// agents take [`ETCD_DEFRAG_LEASE`].
const ETCD_DEFRAG_LEASE_ROLE: &str = "selfnode:etcd-defrag-lease";
/// The ConfigMap (in `kube-system`) with the bundle an upgrade offers the
/// hosts (its `VERSION`, `SHA256SUMS`, and the host that serves it):
/// written by `selfnode upgrade` with admin credentials, read by every
/// node's agent with its kubelet's.
pub const BUNDLE_OFFER: &str = "selfnode-bundle-offer";
/// The ConfigMap (in `kube-system`) that says whose turn it is in an
/// upgrade of several hosts: the control-plane nodes whose etcd member
/// moves to the new bundle now, and the nodes whose host (kubelet,
/// containerd, agent) does. Written by `selfnode upgrade apply`, read by
/// every node's agent.
pub const UPGRADE_TURNS: &str = "selfnode-upgrade";
/// The Role (and binding) that lets nodes read [`BUNDLE_OFFER`] and
/// [`UPGRADE_TURNS`].
pub const UPGRADE_ROLE: &str = "selfnode:upgrade";
/// The binding that gave every bootstrap token upstream's group-wide
/// client-certificate approval, in clusters made by an older selfnode:
/// the control-plane agents delete it.
pub const LEGACY_AUTOAPPROVE_BINDING: &str = "selfnode:node-autoapprove-bootstrap";
const NODES_GROUP: &str = "system:nodes";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The cluster-wide settings a joining host needs for its kubelet and its
/// network, published at init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSettings {
    /// The cluster's name.
    pub cluster_name: String,
    /// The kubelet's `clusterDNS` (CoreDNS's Service IP).
    pub cluster_dns: String,
    /// The kubelet's `clusterDomain`.
    pub cluster_domain: String,
    /// The cluster's pod network.
    pub pod_cidr: String,
    /// The cluster's Service network.
    pub service_cidr: String,
    /// The control plane's Kubernetes version (`v1.x.y`).
    pub kubernetes_version: String,
    /// Control-plane nodes take ordinary pods (no `NoSchedule` taint), as
    /// the first one was made (`init --allow-workloads`). Absent in
    /// clusters made before control-plane join: false.
    #[serde(default)]
    pub allow_workloads: bool,
    /// etcd's `--quota-backend-bytes` of every member. Absent in clusters
    /// made before it was a setting: the default.
    #[serde(default = "default_etcd_quota")]
    pub etcd_quota_backend_bytes: u64,
}

fn default_etcd_quota() -> u64 {
    crate::config::DEFAULT_ETCD_QUOTA_BACKEND_BYTES
}

impl ClusterSettings {
    /// Reads them back from their ConfigMap.
    ///
    /// Errors: the ConfigMap lacks the key or it does not parse.
    pub fn from_config_map(cm: &ConfigMap) -> Result<ClusterSettings, ClusterSettingsError> {
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(SETTINGS_KEY))
            .ok_or(ClusterSettingsError::Missing)?;
        serde_json::from_str(text).map_err(|source| ClusterSettingsError::Parse { source })
    }
}

/// The [`CLUSTER_SETTINGS`] ConfigMap does not hold usable [`ClusterSettings`].
#[derive(Debug, thiserror::Error)]
pub enum ClusterSettingsError {
    /// The ConfigMap has no `cluster.json`.
    #[error("ConfigMap {NAMESPACE}/{CLUSTER_SETTINGS} has no {SETTINGS_KEY}")]
    Missing,
    /// `cluster.json` is not the JSON of [`ClusterSettings`].
    #[error("{SETTINGS_KEY} in ConfigMap {NAMESPACE}/{CLUSTER_SETTINGS} does not parse")]
    Parse {
        /// The JSON parser's error.
        source: serde_json::Error,
    },
}

fn binding_subject(kind: &str, name: &str) -> Subject {
    Subject {
        api_group: Some(RBAC_GROUP.to_string()),
        kind: kind.to_string(),
        name: name.to_string(),
        namespace: None,
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: Some(RBAC_GROUP.to_string()),
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

fn cluster_binding(name: &str, role: &str, group: &str) -> Object {
    Object::ClusterRoleBinding(ClusterRoleBinding {
        metadata: meta::object_meta(name, false, &[]),
        role_ref: role_ref("ClusterRole", role),
        subjects: Some(vec![binding_subject("Group", group)]),
    })
}

/// A Role that may `get` the ConfigMaps named, and its binding to
/// `subjects`.
fn read_config_maps(
    namespace: &str,
    role: &str,
    config_maps: &[&str],
    subjects: Vec<Subject>,
) -> [Object; 2] {
    let mut m = meta::object_meta(role, true, &[]);
    m.namespace = Some(namespace.to_string());
    [
        Object::Role(Role {
            metadata: m.clone(),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".to_string()]),
                resource_names: Some(config_maps.iter().map(|c| c.to_string()).collect()),
                verbs: vec!["get".to_string()],
                ..PolicyRule::default()
            }]),
        }),
        Object::RoleBinding(RoleBinding {
            metadata: m,
            role_ref: role_ref("Role", role),
            subjects: Some(subjects),
        }),
    ]
}

/// The objects joining hosts need (see the module docs).
pub(crate) fn objects(spec: &PlaneSpec, files: &PlaneFiles) -> Result<Vec<Object>, ObjectsError> {
    let ca_path = spec.pki_dir.join("ca.crt");
    let ca = files
        .get(&ca_path)
        .ok_or_else(|| ObjectsError::MissingFile {
            path: ca_path.clone(),
            component: "cluster-info".to_string(),
        })?;
    let server = format!(
        "https://{}",
        std::net::SocketAddr::new(spec.advertise_address, spec.ports.apiserver)
    );
    let mut info = cluster_info(&server, ca);
    info.metadata.labels = meta::object_meta(CLUSTER_INFO, false, &[]).labels;
    let settings = ClusterSettings {
        cluster_name: spec.cluster_name.clone(),
        cluster_dns: spec.dns_service_ip()?.to_string(),
        cluster_domain: spec.cluster_domain.clone(),
        pod_cidr: spec.pod_cidr.to_string(),
        service_cidr: spec.service_cidr.to_string(),
        kubernetes_version: spec.kubernetes_version.clone(),
        allow_workloads: spec.allow_workloads,
        etcd_quota_backend_bytes: spec.etcd_quota_backend_bytes,
    };
    let settings_cm = ConfigMap {
        metadata: meta::object_meta(CLUSTER_SETTINGS, true, &[]),
        data: Some(BTreeMap::from([(
            SETTINGS_KEY.to_string(),
            serde_json::to_string_pretty(&settings).unwrap_or_default(),
        )])),
        ..ConfigMap::default()
    };
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(groups.iter().map(|g| g.to_string()).collect()),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    };
    let mut out = vec![
        // A bootstrap token may create a CSR for a kubelet client
        // certificate. No group is bound to upstream's `nodeclient`
        // auto-approval: it does not tie the certificate's name to a new
        // node, so a token could become any node. The control-plane hosts'
        // agents approve them instead, for names no Node has.
        cluster_binding(
            "selfnode:kubelet-bootstrap",
            "system:node-bootstrapper",
            NODE_TOKEN_GROUP,
        ),
        // Nodes renew their own client certificates (the certificate's
        // name must be the requester's: `selfnodeclient`).
        cluster_binding(
            "selfnode:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            NODES_GROUP,
        ),
        // A joining host asks whether its name is taken before it writes
        // anything (kubeadm's `kubeadm:get-nodes`): get, never list.
        Object::ClusterRole(ClusterRole {
            metadata: meta::object_meta(GET_NODES_ROLE, false, &[]),
            rules: Some(vec![rule(&[""], &["nodes"], &["get"])]),
            ..ClusterRole::default()
        }),
        cluster_binding(GET_NODES_ROLE, GET_NODES_ROLE, NODE_TOKEN_GROUP),
        // What the control-plane hosts' agents do: approve new nodes'
        // client certificates (and mark single-use tokens used), hand a
        // promoted node the cluster's keys sealed to it (a Secret and a
        // Role only that node may use), and set the control-plane label.
        Object::ClusterRole(ClusterRole {
            metadata: meta::object_meta(CONTROL_PLANE_AGENT_ROLE, false, &[]),
            rules: Some(vec![
                rule(&[""], &["nodes"], &["get", "list", "watch", "patch"]),
                rule(
                    &[""],
                    &["secrets", "configmaps"],
                    &["get", "list", "create", "update", "patch", "delete"],
                ),
                rule(
                    &["rbac.authorization.k8s.io"],
                    &["roles", "rolebindings"],
                    &["get", "create", "update", "patch", "delete"],
                ),
                rule(
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                    &["get", "list", "watch"],
                ),
                rule(
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests/approval"],
                    // The approver patches the conditions in.
                    &["update", "patch"],
                ),
                PolicyRule {
                    api_groups: Some(vec!["certificates.k8s.io".to_string()]),
                    resources: Some(vec!["signers".to_string()]),
                    resource_names: Some(vec![
                        "kubernetes.io/kube-apiserver-client-kubelet".to_string(),
                        "kubernetes.io/kubelet-serving".to_string(),
                    ]),
                    verbs: vec!["approve".to_string()],
                    ..PolicyRule::default()
                },
                rule(
                    &["rbac.authorization.k8s.io"],
                    &["clusterrolebindings"],
                    &["get", "delete"],
                ),
            ]),
            ..ClusterRole::default()
        }),
        cluster_binding(
            CONTROL_PLANE_AGENT_ROLE,
            CONTROL_PLANE_AGENT_ROLE,
            crate::pki::names::CONTROL_PLANE_AGENTS_GROUP,
        ),
        Object::ConfigMap(info),
        Object::ConfigMap(settings_cm),
    ];
    // Every node's API balancer learns the API servers from the
    // `kubernetes` EndpointSlice, with the kubelet's credentials.
    let mut m = meta::object_meta(APISERVERS_ROLE, false, &[]);
    m.namespace = Some("default".to_string());
    out.push(Object::Role(Role {
        metadata: m.clone(),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["discovery.k8s.io".to_string()]),
            resources: Some(vec!["endpointslices".to_string()]),
            resource_names: Some(vec!["kubernetes".to_string()]),
            verbs: vec!["get".to_string()],
            ..PolicyRule::default()
        }]),
    }));
    out.push(Object::RoleBinding(RoleBinding {
        metadata: m,
        role_ref: role_ref("Role", APISERVERS_ROLE),
        subjects: Some(vec![binding_subject("Group", NODES_GROUP)]),
    }));
    // The agents' etcd-upkeep task holds one Lease while it defragments
    // its member. A Role in kube-system, not a rule of the agents'
    // ClusterRole: `create` cannot be limited to a name (the name is not
    // known when a create is authorized), so it is limited to this
    // namespace instead; everything else to the one Lease.
    let mut m = meta::object_meta(ETCD_DEFRAG_LEASE_ROLE, false, &[]);
    m.namespace = Some(NAMESPACE.to_string());
    out.push(Object::Role(Role {
        metadata: m.clone(),
        rules: Some(vec![
            rule(&["coordination.k8s.io"], &["leases"], &["create"]),
            PolicyRule {
                api_groups: Some(vec!["coordination.k8s.io".to_string()]),
                resources: Some(vec!["leases".to_string()]),
                resource_names: Some(vec![ETCD_DEFRAG_LEASE.to_string()]),
                verbs: vec!["get".to_string(), "update".to_string()],
                ..PolicyRule::default()
            },
        ]),
    }));
    out.push(Object::RoleBinding(RoleBinding {
        metadata: m,
        role_ref: role_ref("Role", ETCD_DEFRAG_LEASE_ROLE),
        subjects: Some(vec![binding_subject(
            "Group",
            crate::pki::names::CONTROL_PLANE_AGENTS_GROUP,
        )]),
    }));
    out.extend(read_config_maps(
        CLUSTER_INFO_NAMESPACE,
        "selfnode:bootstrap-signer-clusterinfo",
        &[CLUSTER_INFO],
        vec![binding_subject("User", "system:anonymous")],
    ));
    out.extend(read_config_maps(
        NAMESPACE,
        "selfnode:cluster-settings",
        &[CLUSTER_SETTINGS],
        vec![
            binding_subject("Group", NODE_TOKEN_GROUP),
            binding_subject("Group", NODES_GROUP),
        ],
    ));
    // Nodes, not bootstrap tokens: a host fetches an offered bundle with
    // its kubelet's client certificate, which a token does not have, and
    // follows an upgrade when its turn comes.
    out.extend(read_config_maps(
        NAMESPACE,
        UPGRADE_ROLE,
        &[BUNDLE_OFFER, UPGRADE_TURNS],
        vec![binding_subject("Group", NODES_GROUP)],
    ));
    Ok(out)
}
