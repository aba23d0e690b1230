//! The pod network: the `selfnode-network` DaemonSet, which runs
//! `selfnode network-agent` (the `cni` crate's agent) on every node, and
//! its identity (ServiceAccount, ClusterRole, ClusterRoleBinding).
//!
//! The agent reaches the API like every client on a node: through the
//! node-local load balancer on loopback. It sets `KUBERNETES_SERVICE_HOST`
//! and `KUBERNETES_SERVICE_PORT` to it, so kube-rs's in-cluster config
//! (`Config::infer`) takes the pod's service-account token and `ca.crt`
//! as usual; the `kubernetes` Service cannot be used, since Service IPs
//! need kube-proxy and, for pods, the pod network this agent makes.

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{meta, Object, NAMESPACE};
use crate::plane::PlaneSpec;

/// Name of the DaemonSet and its ServiceAccount.
pub const NETWORK: &str = "selfnode-network";
/// Name of the ClusterRole and ClusterRoleBinding.
pub const NETWORK_ROLE: &str = "selfnode:network";
/// The selfnode binary inside selfnode's image.
const SELFNODE_BIN: &str = "/usr/local/bin/selfnode";
/// Where the agent writes the conflist (containerd's CNI `conf_dir`).
const CNI_CONF_DIR: &str = "/etc/cni/net.d";

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        ..EnvVar::default()
    }
}

/// The pod network's objects, image `spec.images.selfnode`.
pub(crate) fn objects(spec: &PlaneSpec) -> Vec<Object> {
    let app = [("k8s-app", NETWORK)];
    let role = ClusterRole {
        metadata: meta::object_meta(NETWORK_ROLE, false, &[]),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["nodes".to_string()]),
            verbs: ["get", "list", "watch"].map(str::to_string).to_vec(),
            ..PolicyRule::default()
        }]),
        ..ClusterRole::default()
    };
    let binding = ClusterRoleBinding {
        metadata: meta::object_meta(NETWORK_ROLE, false, &[]),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_string()),
            kind: "ClusterRole".to_string(),
            name: NETWORK_ROLE.to_string(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: NETWORK.to_string(),
            namespace: Some(NAMESPACE.to_string()),
            ..Subject::default()
        }]),
    };
    let container = Container {
        name: "network-agent".to_string(),
        image: Some(spec.images.selfnode.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        termination_message_policy: meta::logs_on_error(),
        command: Some(vec![
            SELFNODE_BIN.to_string(),
            "network-agent".to_string(),
            "--node-name".to_string(),
            "$(NODE_NAME)".to_string(),
            "--cluster-cidr".to_string(),
            spec.pod_cidr.to_string(),
        ]),
        env: Some(vec![
            meta::node_name_env(),
            // In-cluster config through the node-local load balancer (see
            // the module docs); these override the kubelet's own values.
            env("KUBERNETES_SERVICE_HOST", spec.loopback().to_string()),
            env(
                "KUBERNETES_SERVICE_PORT",
                spec.ports.api_load_balancer.to_string(),
            ),
        ]),
        // Routes (NET_ADMIN) but also sysctls under /proc/sys and loading
        // br_netfilter (SYS_MODULE): only a privileged container gets a
        // writable /proc/sys.
        security_context: meta::privileged(),
        volume_mounts: Some(vec![
            meta::mount("cni-conf", CNI_CONF_DIR, false),
            meta::LIB_MODULES.mount(),
            meta::XTABLES_LOCK.mount(),
        ]),
        ..Container::default()
    };
    let daemon_set = DaemonSet {
        metadata: meta::object_meta(NETWORK, true, &app),
        spec: DaemonSetSpec {
            selector: meta::selector(&app),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(meta::labels(&app)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    host_network: Some(true),
                    service_account_name: Some(NETWORK.to_string()),
                    priority_class_name: Some("system-node-critical".to_string()),
                    node_selector: Some(meta::labels(&[("kubernetes.io/os", "linux")])),
                    tolerations: Some(meta::tolerate_all()),
                    volumes: Some(vec![
                        meta::host_path(
                            "cni-conf",
                            &spec.cni_conf_dir.to_string_lossy(),
                            Some("DirectoryOrCreate"),
                        ),
                        meta::LIB_MODULES.volume(),
                        meta::XTABLES_LOCK.volume(),
                    ]),
                    ..PodSpec::default()
                }),
            },
            update_strategy: Some(meta::one_node_at_a_time()),
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    };
    vec![
        Object::ServiceAccount(ServiceAccount {
            metadata: meta::object_meta(NETWORK, true, &app),
            ..ServiceAccount::default()
        }),
        Object::ClusterRole(role),
        Object::ClusterRoleBinding(binding),
        Object::DaemonSet(daemon_set),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plane::tests::spec;

    fn daemon_set(spec: &PlaneSpec) -> DaemonSet {
        objects(spec)
            .into_iter()
            .find_map(|o| match o {
                Object::DaemonSet(d) => Some(d),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn the_agent_runs_privileged_on_every_node_from_selfnodes_image() {
        let s = spec();
        let ds = daemon_set(&s);
        assert_eq!(ds.metadata.name.as_deref(), Some(NETWORK));
        assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
        let pod = ds.spec.template.spec.unwrap();
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        assert_eq!(pod.service_account_name.as_deref(), Some(NETWORK));
        let tol = pod.tolerations.unwrap();
        assert_eq!(tol.len(), 1);
        assert_eq!(
            (tol[0].key.as_deref(), tol[0].operator.as_deref()),
            (None, Some("Exists"))
        );
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("localhost/selfnode:0.1.0"));
        assert_eq!(
            c.command.clone().unwrap(),
            [
                "/usr/local/bin/selfnode",
                "network-agent",
                "--node-name",
                "$(NODE_NAME)",
                "--cluster-cidr",
                "10.244.0.0/16"
            ]
        );
        assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
        let env = c.env.clone().unwrap();
        let node_name = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
        assert_eq!(
            node_name
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "spec.nodeName"
        );
        let value = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
                .unwrap()
        };
        assert_eq!(value("KUBERNETES_SERVICE_HOST"), "127.0.0.1");
        assert_eq!(value("KUBERNETES_SERVICE_PORT"), "7445");
    }

    #[test]
    fn host_paths_are_mounted_as_the_agent_needs_them() {
        let pod = daemon_set(&spec()).spec.template.spec.unwrap();
        let vols = pod.volumes.unwrap();
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        let mut seen = Vec::new();
        for m in &mounts {
            let v = vols.iter().find(|v| v.name == m.name).unwrap();
            let hp = v.host_path.as_ref().unwrap();
            assert_eq!(hp.path, m.mount_path, "same path inside and out");
            seen.push((m.mount_path.as_str(), hp.type_.as_deref(), m.read_only));
        }
        assert_eq!(
            seen,
            [
                ("/etc/cni/net.d", Some("DirectoryOrCreate"), Some(false)),
                ("/lib/modules", None, Some(true)),
                ("/run/xtables.lock", Some("FileOrCreate"), Some(false)),
            ]
        );
    }

    #[test]
    fn the_role_reads_nodes_only_and_is_bound_to_the_agent() {
        let objs = objects(&spec());
        let Object::ClusterRole(role) = &objs[1] else {
            panic!("{:?}", objs[1])
        };
        let rules = role.rules.clone().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].resources.clone().unwrap(), ["nodes"]);
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
        let Object::ClusterRoleBinding(b) = &objs[2] else {
            panic!("{:?}", objs[2])
        };
        assert_eq!(b.role_ref.name, NETWORK_ROLE);
        let subject = &b.subjects.clone().unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", NETWORK, Some("kube-system"))
        );
    }

    #[test]
    fn ipv6_clusters_reach_the_balancer_on_ipv6_loopback() {
        let mut s = PlaneSpec::new(
            "cp-1",
            "fd00::10".parse().unwrap(),
            "v1.37.2",
            crate::plane::tests::images(),
        );
        s.pod_cidr = "fd00:10:244::/56".parse().unwrap();
        let c = daemon_set(&s).spec.template.spec.unwrap().containers[0].clone();
        let env = c.env.unwrap();
        assert!(env
            .iter()
            .any(|e| e.name == "KUBERNETES_SERVICE_HOST" && e.value.as_deref() == Some("::1")));
        assert_eq!(c.command.unwrap()[5], "fd00:10:244::/56");
    }
}
