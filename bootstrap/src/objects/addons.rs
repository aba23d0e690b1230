//! kube-proxy, CoreDNS and the RBAC bindings the PKI relies on.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, DeploymentStrategy,
    RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    HTTPGetAction, KeyToPath, PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    Toleration, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use serde::Serialize;

use super::control_plane::data_hash;
use super::meta;
use super::{Object, ObjectsError, CONFIG_HASH_ANNOTATION, CONTROL_PLANE_LABEL, NAMESPACE};
use crate::pki::names;
use crate::plane::PlaneSpec;

const KUBE_PROXY: &str = "kube-proxy";
const KUBE_PROXY_CONFIG_DIR: &str = "/var/lib/kube-proxy";
const KUBE_PROXY_KUBECONFIG: &str = "kubeconfig.conf";
const KUBE_PROXY_CONFIG: &str = "config.conf";
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const COREDNS: &str = "coredns";

fn yaml<T: Serialize>(what: &'static str, value: &T) -> Result<String, ObjectsError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(value, options)
        .map_err(|source| ObjectsError::Render { what, source })
}

fn cluster_role_binding(name: &str, role: &str, subject: Subject) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta::object_meta(name, false, &[]),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_string()),
            kind: "ClusterRole".to_string(),
            name: role.to_string(),
        },
        subjects: Some(vec![subject]),
    }
}

fn subject(kind: &str, name: &str) -> Subject {
    let namespaced = kind == "ServiceAccount";
    Subject {
        api_group: (!namespaced).then(|| "rbac.authorization.k8s.io".to_string()),
        kind: kind.to_string(),
        name: name.to_string(),
        namespace: namespaced.then(|| NAMESPACE.to_string()),
    }
}

/// kubeadm's bindings for the identities in the PKI: `admin.conf`'s group
/// gets `cluster-admin` (without it admin.conf can do nothing; apply this
/// with `super-admin.conf`), and the apiserver's kubelet client may use the
/// kubelet API (logs, exec, port-forward). The bootstrap-token bindings
/// (node bootstrappers, CSR auto-approval, cluster-info) come with join.
pub(crate) fn rbac() -> Vec<Object> {
    vec![
        Object::ClusterRoleBinding(cluster_role_binding(
            names::CLUSTER_ADMINS_GROUP,
            "cluster-admin",
            subject("Group", names::CLUSTER_ADMINS_GROUP),
        )),
        Object::ClusterRoleBinding(cluster_role_binding(
            "kubeadm:apiserver-kubelet-client",
            "system:kubelet-api-admin",
            subject("User", names::APISERVER_KUBELET_CLIENT_USER),
        )),
    ]
}

// ---- kube-proxy ----------------------------------------------------------

/// The kubeconfig kube-proxy uses: its service-account token and the
/// cluster CA from the projected volume, and the node-local load balancer
/// as server. The `kubernetes` Service cannot be used: kube-proxy is what
/// makes Service IPs work.
#[derive(Serialize)]
struct TokenKubeconfig {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: Vec<NamedCluster>,
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    current_context: &'static str,
    users: Vec<NamedUser>,
}

#[derive(Serialize)]
struct NamedCluster {
    name: &'static str,
    cluster: ClusterEntry,
}

#[derive(Serialize)]
struct ClusterEntry {
    #[serde(rename = "certificate-authority")]
    certificate_authority: String,
    server: String,
}

#[derive(Serialize)]
struct NamedContext {
    name: &'static str,
    context: ContextEntry,
}

#[derive(Serialize)]
struct ContextEntry {
    cluster: &'static str,
    namespace: &'static str,
    user: &'static str,
}

#[derive(Serialize)]
struct NamedUser {
    name: &'static str,
    user: UserEntry,
}

#[derive(Serialize)]
struct UserEntry {
    #[serde(rename = "tokenFile")]
    token_file: String,
}

/// The subset of `kubeproxy.config.k8s.io/v1alpha1` selfnode sets.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KubeProxyConfiguration {
    api_version: &'static str,
    kind: &'static str,
    bind_address: String,
    client_connection: ClientConnection,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: String,
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conntrack: Option<Conntrack>,
}

#[derive(Serialize)]
struct ClientConnection {
    kubeconfig: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Conntrack {
    max_per_core: i32,
}

pub(crate) fn kube_proxy(spec: &PlaneSpec) -> Result<Vec<Object>, ObjectsError> {
    let kubeconfig = TokenKubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: vec![NamedCluster {
            name: "default",
            cluster: ClusterEntry {
                certificate_authority: format!("{SA_DIR}/ca.crt"),
                server: spec.local_api_endpoint(),
            },
        }],
        contexts: vec![NamedContext {
            name: "default",
            context: ContextEntry {
                cluster: "default",
                namespace: "default",
                user: "default",
            },
        }],
        current_context: "default",
        users: vec![NamedUser {
            name: "default",
            user: UserEntry {
                token_file: format!("{SA_DIR}/token"),
            },
        }],
    };
    let unspecified = if spec.advertise_address.is_ipv6() {
        "::"
    } else {
        "0.0.0.0"
    };
    let config = KubeProxyConfiguration {
        api_version: "kubeproxy.config.k8s.io/v1alpha1",
        kind: "KubeProxyConfiguration",
        bind_address: unspecified.to_string(),
        client_connection: ClientConnection {
            kubeconfig: format!("{KUBE_PROXY_CONFIG_DIR}/{KUBE_PROXY_KUBECONFIG}"),
        },
        cluster_cidr: spec.pod_cidr.to_string(),
        mode: "iptables",
        conntrack: spec
            .kube_proxy_conntrack_max_per_core
            .map(|max_per_core| Conntrack { max_per_core }),
    };
    let data: BTreeMap<String, String> = [
        (
            KUBE_PROXY_KUBECONFIG.to_string(),
            yaml("kube-proxy kubeconfig", &kubeconfig)?,
        ),
        (
            KUBE_PROXY_CONFIG.to_string(),
            yaml("KubeProxyConfiguration", &config)?,
        ),
    ]
    .into_iter()
    .collect();
    let hash = data_hash(
        &data
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
            .collect(),
    );
    let app = [("k8s-app", KUBE_PROXY)];
    let config_map = ConfigMap {
        metadata: meta::object_meta(KUBE_PROXY, true, &app),
        data: Some(data),
        ..ConfigMap::default()
    };

    let container = Container {
        name: KUBE_PROXY.to_string(),
        image: Some(spec.images.kube_proxy.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        termination_message_policy: meta::logs_on_error(),
        command: Some(vec![
            "/usr/local/bin/kube-proxy".to_string(),
            format!("--config={KUBE_PROXY_CONFIG_DIR}/{KUBE_PROXY_CONFIG}"),
            "--hostname-override=$(NODE_NAME)".to_string(),
        ]),
        env: Some(vec![meta::node_name_env()]),
        security_context: meta::privileged(),
        volume_mounts: Some(vec![
            meta::mount(KUBE_PROXY, KUBE_PROXY_CONFIG_DIR, true),
            meta::XTABLES_LOCK.mount(),
            meta::LIB_MODULES.mount(),
        ]),
        ..Container::default()
    };
    let daemon_set = DaemonSet {
        metadata: meta::object_meta(KUBE_PROXY, true, &app),
        spec: DaemonSetSpec {
            selector: meta::selector(&app),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(meta::labels(&app)),
                    annotations: Some(meta::labels(&[(CONFIG_HASH_ANNOTATION, &hash)])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    host_network: Some(true),
                    service_account_name: Some(KUBE_PROXY.to_string()),
                    priority_class_name: Some("system-node-critical".to_string()),
                    node_selector: Some(meta::labels(&[("kubernetes.io/os", "linux")])),
                    tolerations: Some(meta::tolerate_all()),
                    volumes: Some(vec![
                        Volume {
                            name: KUBE_PROXY.to_string(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: KUBE_PROXY.to_string(),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        meta::XTABLES_LOCK.volume(),
                        meta::LIB_MODULES.volume(),
                    ]),
                    ..PodSpec::default()
                }),
            },
            update_strategy: Some(meta::one_node_at_a_time()),
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    };
    Ok(vec![
        Object::ServiceAccount(ServiceAccount {
            metadata: meta::object_meta(KUBE_PROXY, true, &app),
            ..ServiceAccount::default()
        }),
        Object::ClusterRoleBinding(cluster_role_binding(
            "kubeadm:node-proxier",
            "system:node-proxier",
            subject("ServiceAccount", KUBE_PROXY),
        )),
        Object::ConfigMap(config_map),
        Object::DaemonSet(daemon_set),
    ])
}

// ---- CoreDNS -------------------------------------------------------------

/// kubeadm's Corefile for the cluster domain. CoreDNS has no typed
/// configuration: this is its own file format.
pub(crate) fn corefile(domain: &str) -> String {
    format!(
        r#".:53 {{
    errors
    health {{
       lameduck 5s
    }}
    ready
    kubernetes {domain} in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    prometheus :9153
    forward . /etc/resolv.conf {{
       max_concurrent 1000
    }}
    cache 30 {{
       disable success {domain}
       disable denial {domain}
    }}
    loop
    reload
    loadbalance
}}
"#
    )
}

pub(crate) fn coredns(spec: &PlaneSpec) -> Result<Vec<Object>, ObjectsError> {
    let dns_ip = spec.dns_service_ip()?;
    let app = [("k8s-app", "kube-dns")];
    let rule = |group: &str, resources: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: vec!["list".to_string(), "watch".to_string()],
        ..PolicyRule::default()
    };
    let role = ClusterRole {
        metadata: meta::object_meta("system:coredns", false, &[]),
        rules: Some(vec![
            rule("", &["endpoints", "services", "pods", "namespaces"]),
            rule("discovery.k8s.io", &["endpointslices"]),
        ]),
        ..ClusterRole::default()
    };
    let config_map = ConfigMap {
        metadata: meta::object_meta(COREDNS, true, &[]),
        data: Some(
            [("Corefile".to_string(), corefile(&spec.cluster_domain))]
                .into_iter()
                .collect(),
        ),
        ..ConfigMap::default()
    };
    let port = |name: &str, port: i32, proto: &str| ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some(proto.to_string()),
        ..ContainerPort::default()
    };
    let quantity = |s: &str| Quantity(s.to_string());
    let probe = |path: &str, port_name: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(port_name.to_string()),
            scheme: Some("HTTP".to_string()),
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    };
    let liveness = Probe {
        initial_delay_seconds: Some(60),
        timeout_seconds: Some(5),
        success_threshold: Some(1),
        failure_threshold: Some(5),
        ..probe("/health", "liveness-probe")
    };
    let readiness = probe("/ready", "readiness-probe");
    let container = Container {
        name: COREDNS.to_string(),
        image: Some(spec.images.coredns.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        termination_message_policy: meta::logs_on_error(),
        args: Some(vec![
            "-conf".to_string(),
            "/etc/coredns/Corefile".to_string(),
        ]),
        resources: Some(ResourceRequirements {
            limits: Some([("memory".to_string(), quantity("170Mi"))].into()),
            requests: Some(
                [
                    ("cpu".to_string(), quantity("100m")),
                    ("memory".to_string(), quantity("70Mi")),
                ]
                .into(),
            ),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "config-volume".to_string(),
            mount_path: "/etc/coredns".to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ports: Some(vec![
            port("dns", 53, "UDP"),
            port("dns-tcp", 53, "TCP"),
            port("metrics", 9153, "TCP"),
            port("liveness-probe", 8080, "TCP"),
            port("readiness-probe", 8181, "TCP"),
        ]),
        liveness_probe: Some(liveness),
        readiness_probe: Some(readiness),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_BIND_SERVICE".to_string()]),
                drop: Some(vec!["ALL".to_string()]),
            }),
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        priority_class_name: Some("system-cluster-critical".to_string()),
        service_account_name: Some(COREDNS.to_string()),
        affinity: Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_expressions: Some(vec![LabelSelectorRequirement {
                                    key: "k8s-app".to_string(),
                                    operator: "In".to_string(),
                                    values: Some(vec!["kube-dns".to_string()]),
                                }]),
                                ..LabelSelector::default()
                            }),
                            topology_key: "kubernetes.io/hostname".to_string(),
                            ..PodAffinityTerm::default()
                        },
                    },
                ]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        }),
        tolerations: Some(vec![
            Toleration {
                key: Some("CriticalAddonsOnly".to_string()),
                operator: Some("Exists".to_string()),
                ..Toleration::default()
            },
            Toleration {
                key: Some(CONTROL_PLANE_LABEL.to_string()),
                effect: Some("NoSchedule".to_string()),
                ..Toleration::default()
            },
        ]),
        node_selector: Some(meta::labels(&[("kubernetes.io/os", "linux")])),
        dns_policy: Some("Default".to_string()),
        volumes: Some(vec![Volume {
            name: "config-volume".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: COREDNS.to_string(),
                items: Some(vec![KeyToPath {
                    key: "Corefile".to_string(),
                    path: "Corefile".to_string(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    let deployment = Deployment {
        metadata: meta::object_meta(COREDNS, true, &app),
        spec: DeploymentSpec {
            replicas: Some(spec.replicas.coredns),
            selector: meta::selector(&app),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(1)),
                    ..RollingUpdateDeployment::default()
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(meta::labels(&app)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    };
    let mut svc_meta = meta::object_meta(
        "kube-dns",
        true,
        &[
            ("k8s-app", "kube-dns"),
            ("kubernetes.io/cluster-service", "true"),
            ("kubernetes.io/name", "CoreDNS"),
        ],
    );
    svc_meta.annotations = Some(meta::labels(&[
        ("prometheus.io/port", "9153"),
        ("prometheus.io/scrape", "true"),
    ]));
    let svc_port = |name: &str, port: i32, proto: &str| ServicePort {
        name: Some(name.to_string()),
        port,
        protocol: Some(proto.to_string()),
        target_port: Some(IntOrString::Int(port)),
        ..ServicePort::default()
    };
    let service = Service {
        metadata: svc_meta,
        spec: Some(ServiceSpec {
            cluster_ip: Some(dns_ip.to_string()),
            selector: Some(meta::labels(&app)),
            ports: Some(vec![
                svc_port("dns", 53, "UDP"),
                svc_port("dns-tcp", 53, "TCP"),
                svc_port("metrics", 9153, "TCP"),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    Ok(vec![
        Object::ServiceAccount(ServiceAccount {
            metadata: meta::object_meta(COREDNS, true, &[]),
            ..ServiceAccount::default()
        }),
        Object::ClusterRole(role),
        Object::ClusterRoleBinding(cluster_role_binding(
            "system:coredns",
            "system:coredns",
            subject("ServiceAccount", COREDNS),
        )),
        Object::ConfigMap(config_map),
        Object::Service(service),
        Object::Deployment(deployment),
    ])
}
