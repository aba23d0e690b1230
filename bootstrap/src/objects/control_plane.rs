//! The self-hosted kube-apiserver (DaemonSet), kube-controller-manager and
//! kube-scheduler (Deployments).
//!
//! The cluster's keys never pass through the API: each component mounts
//! exactly the files its flags name (`plane::flags`), read-only, from the
//! host's disk, at the paths the host processes use, one hostPath of type
//! `File` per file (as kubeadm's static pods mount theirs, but file by
//! file, so the API server never sees `ca.key`). A host that lacks a file
//! does not start the pod (the kubelet refuses the volume) rather than
//! starting it with an empty one; the keys reach a control-plane host
//! before its pods do (its control-plane join).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec,
    DeploymentStrategy, RollingUpdateDaemonSet, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, EnvVarSource, ObjectFieldSelector, PodAffinityTerm,
    PodAntiAffinity, PodSpec, PodTemplateSpec, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use sha2::{Digest, Sha256};

use super::meta::{self, ProbeKind};
use super::{Object, ObjectsError, PlaneFiles, CHECKPOINT_ANNOTATION, CONFIG_HASH_ANNOTATION};
use crate::plane::flags::{self, Flags, HOST_IP_ENV};
use crate::plane::{Placement, PlaneSpec};

pub(crate) const APISERVER: &str = "kube-apiserver";
pub(crate) const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub(crate) const SCHEDULER: &str = "kube-scheduler";

/// The apiserver pod's hostPath volume of `PlaneSpec::audit_log_dir`.
pub(crate) const AUDIT_LOG_VOLUME: &str = "audit-log";
/// The apiserver pod's hostPath volume of the static admission policies.
pub(crate) const ADMISSION_POLICY_VOLUME: &str = "admission-policies";

/// The Secrets that held the control plane's keys before they moved onto
/// the hosts' disks (`kube-system`): deleted wherever they are found.
pub const LEGACY_KEY_SECRETS: [&str; 4] =
    [APISERVER, CONTROLLER_MANAGER, SCHEDULER, "selfnode-etcd-ca"];

/// The self-hosted flags of each control-plane component.
pub(crate) fn component_flags(spec: &PlaneSpec) -> [(&'static str, Flags); 3] {
    let p = Placement::SelfHosted;
    [
        (APISERVER, flags::apiserver(spec, p)),
        (CONTROLLER_MANAGER, flags::controller_manager(spec, p)),
        (SCHEDULER, flags::scheduler(spec, p)),
    ]
}

/// A file's name in hashes and volume names: its path under the PKI
/// directory with `/` replaced by `-` (`etcd/ca.crt` → `etcd-ca.crt`), or
/// its file name.
pub(crate) fn file_key(spec: &PlaneSpec, file: &Path) -> String {
    match file.strip_prefix(&spec.pki_dir) {
        Ok(rel) => rel.display().to_string().replace('/', "-"),
        Err(_) => file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// The volume of one host file: a DNS label from its key
/// (`apiserver-etcd-client.key` → `f-apiserver-etcd-client-key`).
fn volume_name(key: &str) -> String {
    let mut name: String = std::iter::once("f-")
        .chain(std::iter::once(key))
        .collect::<String>()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// How a component's pod mounts the host files its flags name.
struct Mounted {
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
    /// Hash of the contents of the files every control-plane host holds
    /// alike ([`shared_file`]); in the pod template, so a change of one of
    /// them rolls the pods everywhere. Not of a host's own certificates,
    /// keys and kubeconfigs: they differ from host to host (a hash of them
    /// would differ with the host that computed it), and a host restarts
    /// its own components when it renews them (`node::certs`).
    hash: String,
}

/// Whether `file` is the same on every control-plane host: the CAs, the
/// service-account pair, the encryption configuration, selfnode's own
/// configuration files (the audit policy, the admission configuration).
/// Everything else a component reads (its serving and client
/// certificates, its kubeconfig) is the host's own.
pub fn shared_file(spec: &PlaneSpec, file: &Path) -> bool {
    use crate::pki::names;
    match file.strip_prefix(&spec.pki_dir) {
        Ok(rel) => {
            let rel = rel.display().to_string();
            [names::CA, names::FRONT_PROXY_CA, names::ETCD_CA]
                .iter()
                .any(|ca| rel == format!("{ca}.crt") || rel == format!("{ca}.key"))
                || rel == names::SA_KEY
                || rel == names::SA_PUB
                || rel == crate::plane::ENCRYPTION_CONFIG_FILE
        }
        // The kubeconfig directory: a kubeconfig is a host's own; the
        // audit policy and admission configuration are selfnode's.
        Err(_) => file.extension().is_none_or(|e| e != "conf"),
    }
}

/// Every host file each control-plane component reads (what its pod
/// mounts), by component name.
pub fn component_files(spec: &PlaneSpec) -> Vec<(&'static str, Vec<PathBuf>)> {
    component_flags(spec)
        .into_iter()
        .map(|(name, flags)| (name, flags.files()))
        .collect()
}

fn mounted_files(
    spec: &PlaneSpec,
    name: &str,
    files: &[PathBuf],
    contents: &PlaneFiles,
) -> Result<Mounted, ObjectsError> {
    let mut data = BTreeMap::new();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for file in files {
        let bytes = contents
            .get(file)
            .ok_or_else(|| ObjectsError::MissingFile {
                path: file.clone(),
                component: name.to_string(),
            })?;
        let key = file_key(spec, file);
        if shared_file(spec, file) {
            data.insert(key.clone(), ByteString(bytes.to_vec()));
        }
        let path = file.display().to_string();
        volumes.push(meta::host_path(&volume_name(&key), &path, Some("File")));
        mounts.push(meta::mount(&volume_name(&key), &path, true));
    }
    Ok(Mounted {
        volumes,
        mounts,
        hash: data_hash(&data),
    })
}

/// SHA-256 over every key and value (length-prefixed, in key order).
pub(crate) fn data_hash(data: &BTreeMap<String, ByteString>) -> String {
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.0.len() as u64).to_be_bytes());
        h.update(&v.0);
    }
    hex::encode(h.finalize())
}

fn pod_labels(app: &str) -> [(&'static str, String); 2] {
    [
        ("tier", "control-plane".to_string()),
        ("k8s-app", app.to_string()),
    ]
}

fn template_meta(app: &str, hash: &str) -> ObjectMeta {
    let labels = pod_labels(app);
    ObjectMeta {
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        ),
        annotations: Some(meta::labels(&[
            (CHECKPOINT_ANNOTATION, "true"),
            (CONFIG_HASH_ANNOTATION, hash),
        ])),
        ..ObjectMeta::default()
    }
}

fn workload_meta(spec: &PlaneSpec, app: &str) -> ObjectMeta {
    meta::object_meta(
        app,
        true,
        &[
            ("tier", "control-plane"),
            ("k8s-app", app),
            ("app.kubernetes.io/version", &spec.kubernetes_version),
        ],
    )
}

fn command(binary: &str, flags: &Flags) -> Vec<String> {
    std::iter::once(binary.to_string())
        .chain(flags.args())
        .collect()
}

/// The pod spec every control-plane component shares.
fn control_plane_pod(container: Container, volumes: Vec<Volume>, dns_policy: &str) -> PodSpec {
    PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        host_network: Some(true),
        dns_policy: Some(dns_policy.to_string()),
        node_selector: Some(meta::control_plane_node_selector()),
        tolerations: Some(meta::control_plane_tolerations()),
        priority_class_name: Some("system-node-critical".to_string()),
        automount_service_account_token: Some(false),
        security_context: Some(meta::seccomp_runtime_default()),
        ..PodSpec::default()
    }
}

/// A control-plane component's workload and the config hash its pod
/// template carries for the files it mounts: what a certificate renewal
/// sets to roll the pods (`selfnode certs renew`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentWorkload {
    /// `kube-apiserver`, `kube-controller-manager`, `kube-scheduler` (the
    /// workload's name).
    pub component: &'static str,
    /// The workload's kind: `DaemonSet` (kube-apiserver) or `Deployment`.
    pub workload_kind: &'static str,
    /// The value of [`CONFIG_HASH_ANNOTATION`] for the files now.
    pub config_hash: String,
}

/// The three control-plane workloads with the config hash of the host's
/// files, as [`crate::objects::self_hosted_objects`] renders it.
///
/// Errors with [`ObjectsError`] (invalid spec, a file a component mounts
/// missing from `files`).
pub fn component_workloads(
    spec: &PlaneSpec,
    files: &PlaneFiles,
) -> Result<Vec<ComponentWorkload>, ObjectsError> {
    spec.validate()?;
    component_flags(spec)
        .into_iter()
        .map(|(component, flags)| {
            let m = mounted_files(spec, component, &flags.files(), files)?;
            Ok(ComponentWorkload {
                component,
                workload_kind: if component == APISERVER {
                    "DaemonSet"
                } else {
                    "Deployment"
                },
                config_hash: m.hash,
            })
        })
        .collect()
}

pub(crate) fn objects(spec: &PlaneSpec, files: &PlaneFiles) -> Result<Vec<Object>, ObjectsError> {
    let [(_, api_flags), (_, cm_flags), (_, sched_flags)] = component_flags(spec);
    let mut api = mounted_files(spec, APISERVER, &api_flags.files(), files)?;
    // The audit log (plane::audit), on each host's disk.
    let audit_dir = spec.audit_log_dir.display().to_string();
    api.volumes.push(meta::host_path(
        AUDIT_LOG_VOLUME,
        &audit_dir,
        Some("DirectoryOrCreate"),
    ));
    api.mounts
        .push(meta::mount(AUDIT_LOG_VOLUME, &audit_dir, false));
    // The static admission policies the admission configuration names
    // (plane::admission), read-only; the apiserver re-reads them itself.
    let policies = crate::plane::admission_policy_dir(&spec.kubeconfig_dir)
        .display()
        .to_string();
    api.volumes.push(meta::host_path(
        ADMISSION_POLICY_VOLUME,
        &policies,
        Some("Directory"),
    ));
    api.mounts
        .push(meta::mount(ADMISSION_POLICY_VOLUME, &policies, true));
    let cm = mounted_files(spec, CONTROLLER_MANAGER, &cm_flags.files(), files)?;
    let sched = mounted_files(spec, SCHEDULER, &sched_flags.files(), files)?;
    let out = vec![
        Object::DaemonSet(apiserver_daemonset(spec, &api_flags, api)),
        Object::Deployment(controller_manager_deployment(spec, &cm_flags, cm)),
        Object::Deployment(scheduler_deployment(spec, &sched_flags, sched)),
    ];
    Ok(out)
}

fn apiserver_daemonset(spec: &PlaneSpec, flags: &Flags, m: Mounted) -> DaemonSet {
    let port_num = spec.ports.apiserver;
    let probe_port = || IntOrString::Int(i32::from(port_num));
    let container = Container {
        name: APISERVER.to_string(),
        image: Some(spec.images.kube_apiserver.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        termination_message_policy: meta::logs_on_error(),
        command: Some(command(APISERVER, flags)),
        env: Some(vec![EnvVar {
            name: HOST_IP_ENV.to_string(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.hostIP".to_string(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        // No ports: on a hostNetwork pod they become host ports, and the
        // scheduler would then refuse the surge pod of a rollout on this node.
        ports: None,
        // The probes go to the pod's IP, which is the node's (hostNetwork):
        // the address the apiserver advertises.
        liveness_probe: Some(meta::http_probe(
            ProbeKind::Liveness,
            "HTTPS",
            None,
            "/livez",
            probe_port(),
        )),
        readiness_probe: Some(meta::http_probe(
            ProbeKind::Readiness,
            "HTTPS",
            None,
            "/readyz",
            probe_port(),
        )),
        startup_probe: Some(meta::http_probe(
            ProbeKind::Startup,
            "HTTPS",
            None,
            "/livez",
            probe_port(),
        )),
        resources: Some(meta::cpu_request("250m")),
        volume_mounts: Some(m.mounts),
        ..Container::default()
    };
    let sel = [("k8s-app", APISERVER)];
    DaemonSet {
        metadata: workload_meta(spec, APISERVER),
        spec: DaemonSetSpec {
            selector: meta::selector(&sel),
            template: PodTemplateSpec {
                metadata: Some(template_meta(APISERVER, &m.hash)),
                spec: Some(control_plane_pod(
                    container,
                    m.volumes,
                    "ClusterFirstWithHostNet",
                )),
            },
            // Surge, never a gap: the new pod starts beside the old one (both
            // bind 6443 with --permit-port-sharing) and the old one goes only
            // when the new one is Ready, so a single node keeps its API
            // through an upgrade.
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    }
}

/// Shape shared by the controller-manager and scheduler Deployments.
struct DeploymentShape<'a> {
    app: &'static str,
    image: &'a str,
    replicas: i32,
    port: u16,
    cpu: &'static str,
    liveness: &'static str,
    readiness: Option<&'static str>,
}

fn control_plane_deployment(
    spec: &PlaneSpec,
    shape: DeploymentShape<'_>,
    flags: &Flags,
    m: Mounted,
) -> Deployment {
    let host = Some(spec.loopback().to_string());
    let probe_port = || IntOrString::Int(i32::from(shape.port));
    let container = Container {
        name: shape.app.to_string(),
        image: Some(shape.image.to_string()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        termination_message_policy: meta::logs_on_error(),
        command: Some(command(shape.app, flags)),
        ports: None,
        liveness_probe: Some(meta::http_probe(
            ProbeKind::Liveness,
            "HTTPS",
            host.clone(),
            shape.liveness,
            probe_port(),
        )),
        readiness_probe: shape.readiness.map(|path| {
            meta::http_probe(
                ProbeKind::Readiness,
                "HTTPS",
                host.clone(),
                path,
                probe_port(),
            )
        }),
        startup_probe: Some(meta::http_probe(
            ProbeKind::Startup,
            "HTTPS",
            host.clone(),
            shape.liveness,
            probe_port(),
        )),
        resources: Some(meta::cpu_request(shape.cpu)),
        volume_mounts: Some(m.mounts),
        ..Container::default()
    };
    let mut pod = control_plane_pod(container, m.volumes, "Default");
    // Spread replicas over control-plane nodes; two on one node could not
    // both bind the host port anyway.
    pod.affinity = Some(Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(meta::selector(&[("k8s-app", shape.app)])),
                        topology_key: "kubernetes.io/hostname".to_string(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    });
    Deployment {
        metadata: workload_meta(spec, shape.app),
        spec: DeploymentSpec {
            replicas: Some(shape.replicas),
            selector: meta::selector(&[("k8s-app", shape.app)]),
            template: PodTemplateSpec {
                metadata: Some(template_meta(shape.app, &m.hash)),
                spec: Some(pod),
            },
            // Surge: the new pod shares the port with the old one
            // (--permit-port-sharing) until it is Ready; on a single node the
            // old scheduler schedules its own successor.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

fn controller_manager_deployment(spec: &PlaneSpec, flags: &Flags, m: Mounted) -> Deployment {
    // kubeadm: liveness and startup on /healthz, no readiness probe (a
    // standby replica that is not the leader is still healthy).
    let shape = DeploymentShape {
        app: CONTROLLER_MANAGER,
        image: &spec.images.kube_controller_manager,
        replicas: spec.replicas.controller_manager,
        port: spec.ports.controller_manager,
        cpu: "200m",
        liveness: "/healthz",
        readiness: None,
    };
    control_plane_deployment(spec, shape, flags, m)
}

fn scheduler_deployment(spec: &PlaneSpec, flags: &Flags, m: Mounted) -> Deployment {
    // kubeadm: liveness and startup on /livez, readiness on /readyz.
    let shape = DeploymentShape {
        app: SCHEDULER,
        image: &spec.images.kube_scheduler,
        replicas: spec.replicas.scheduler,
        port: spec.ports.scheduler,
        cpu: "100m",
        liveness: "/livez",
        readiness: Some("/readyz"),
    };
    control_plane_deployment(spec, shape, flags, m)
}
