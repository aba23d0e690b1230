//! Small builders shared by the object modules.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource, ObjectFieldSelector,
    PodSecurityContext, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Toleration,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{CONTROL_PLANE_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, NAMESPACE};

pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Metadata of an object selfnode manages: its labels plus `managed-by`.
pub(crate) fn object_meta(name: &str, namespaced: bool, pairs: &[(&str, &str)]) -> ObjectMeta {
    let mut l = labels(pairs);
    l.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string());
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespaced.then(|| NAMESPACE.to_string()),
        labels: Some(l),
        ..ObjectMeta::default()
    }
}

pub(crate) fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(pairs)),
        ..LabelSelector::default()
    }
}

fn toleration(key: &str, effect: Option<&str>) -> Toleration {
    Toleration {
        key: Some(key.to_string()),
        operator: Some("Exists".to_string()),
        effect: effect.map(str::to_string),
        ..Toleration::default()
    }
}

/// Tolerations of the control-plane workloads: they run on control-plane
/// nodes and must start before the pod network exists (the node is
/// NotReady then), and stay through a NotReady spell (a single node has
/// nowhere else to go). `unreachable` keeps its default 300 s, so a
/// Deployment's pod on a dead node is replaced on another control-plane
/// node. DaemonSets get the rest from the DaemonSet controller.
pub(crate) fn control_plane_tolerations() -> Vec<Toleration> {
    vec![
        toleration(CONTROL_PLANE_LABEL, Some("NoSchedule")),
        toleration("node.kubernetes.io/not-ready", None),
        toleration("node.kubernetes.io/network-unavailable", Some("NoSchedule")),
        toleration("CriticalAddonsOnly", None),
    ]
}

/// Tolerate every taint (kube-proxy: every node needs it).
pub(crate) fn tolerate_all() -> Vec<Toleration> {
    vec![Toleration {
        operator: Some("Exists".to_string()),
        ..Toleration::default()
    }]
}

pub(crate) fn control_plane_node_selector() -> BTreeMap<String, String> {
    labels(&[(CONTROL_PLANE_LABEL, "")])
}

pub(crate) fn seccomp_runtime_default() -> PodSecurityContext {
    PodSecurityContext {
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

pub(crate) fn cpu_request(cpu: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(
            [("cpu".to_string(), Quantity(cpu.to_string()))]
                .into_iter()
                .collect(),
        ),
        ..ResourceRequirements::default()
    }
}

/// How a probe is timed (kubeadm's `staticpod` helpers).
#[derive(Clone, Copy)]
pub(crate) enum ProbeKind {
    Liveness,
    Readiness,
    /// Up to 10 minutes for the component to come up (kubeadm allows 4).
    Startup,
}

/// An HTTP(S) GET probe on `port` (and `host`; `None`: the pod's IP).
pub(crate) fn http_probe(
    kind: ProbeKind,
    scheme: &str,
    host: Option<String>,
    path: &str,
    port: IntOrString,
) -> Probe {
    let (initial_delay, timeout, failure, period) = match kind {
        ProbeKind::Liveness => (10, 15, 8, 10),
        ProbeKind::Readiness => (0, 15, 3, 1),
        // Every second from the start: a pod counts as started, and can
        // turn Ready, as soon as it serves (kubeadm's 10 s initial delay
        // alone would make every control-plane start 10 s slower). Up to 10
        // minutes, where kubeadm allows 4: a component that serves is
        // started at once whatever the budget, and on a slow machine the
        // budget is what decides. An emulated appliance's self-hosted
        // kube-apiserver, starting beside the temporary plane, was killed
        // at 4 minutes while it was still starting, and each restart
        // started over (bench/results/appliance-2026-12-01.md).
        ProbeKind::Startup => (0, 15, 600, 1),
    };
    Probe {
        http_get: Some(HTTPGetAction {
            host,
            path: Some(path.to_string()),
            port,
            scheme: Some(scheme.to_string()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        timeout_seconds: Some(timeout),
        failure_threshold: Some(failure),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

/// A hostPath volume (`type_`: `DirectoryOrCreate`, `FileOrCreate`, ...).
pub(crate) fn host_path(name: &str, path: &str, type_: Option<&str>) -> Volume {
    Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string(),
            type_: type_.map(str::to_string),
        }),
        ..Volume::default()
    }
}

pub(crate) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// A host path a node agent shares with the host, as a volume and a mount
/// of the same name.
pub(crate) struct HostMount {
    name: &'static str,
    path: &'static str,
    type_: Option<&'static str>,
    read_only: bool,
}

/// The iptables lock, shared with every other iptables user on the host
/// (kube-proxy, the network agent).
pub(crate) const XTABLES_LOCK: HostMount = HostMount {
    name: "xtables-lock",
    path: "/run/xtables.lock",
    type_: Some("FileOrCreate"),
    read_only: false,
};

/// The host's kernel modules, read-only (kube-proxy, the network agent).
pub(crate) const LIB_MODULES: HostMount = HostMount {
    name: "lib-modules",
    path: "/lib/modules",
    type_: None,
    read_only: true,
};

impl HostMount {
    /// The pod's hostPath volume.
    pub(crate) fn volume(&self) -> Volume {
        host_path(self.name, self.path, self.type_)
    }

    /// The container's mount of [`HostMount::volume`].
    pub(crate) fn mount(&self) -> VolumeMount {
        mount(self.name, self.path, self.read_only)
    }
}

/// `NODE_NAME` from the pod's `spec.nodeName` (node agents).
pub(crate) fn node_name_env() -> EnvVar {
    EnvVar {
        name: "NODE_NAME".to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "spec.nodeName".to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A privileged container (node agents that change the host's network).
pub(crate) fn privileged() -> Option<SecurityContext> {
    Some(SecurityContext {
        privileged: Some(true),
        ..SecurityContext::default()
    })
}

/// Node agents (kube-proxy, the network agent): replaced one node at a time.
pub(crate) fn one_node_at_a_time() -> DaemonSetUpdateStrategy {
    DaemonSetUpdateStrategy {
        type_: Some("RollingUpdate".to_string()),
        rolling_update: Some(RollingUpdateDaemonSet {
            max_unavailable: Some(IntOrString::Int(1)),
            ..RollingUpdateDaemonSet::default()
        }),
    }
}

/// `terminationMessagePolicy` for every container selfnode creates: when a
/// container fails without writing a termination message, the kubelet puts
/// the tail of its log in the pod status instead, so `kubectl get pod -o
/// yaml` and `selfnode init`'s errors show why (CoreDNS and the control
/// plane log their fatal error and exit).
pub(crate) fn logs_on_error() -> Option<String> {
    Some("FallbackToLogsOnError".to_string())
}
