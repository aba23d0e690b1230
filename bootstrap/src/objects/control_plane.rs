//! The self-hosted kube-apiserver (DaemonSet), kube-controller-manager and
//! kube-scheduler (Deployments) and the Secrets they mount.
//!
//! Each component's Secret holds exactly the files its flags name
//! (`plane::flags`), mounted read-only (0400) at the paths the host
//! processes use: the PKI directory as one Secret volume whose items keep
//! the directory layout (`etcd/ca.crt`), each kubeconfig as a single file
//! (`subPath`) in the kubeconfig directory, as kubeadm's hostPath mounts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec,
    DeploymentStrategy, RollingUpdateDaemonSet, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector, PodAffinityTerm,
    PodAntiAffinity, PodSpec, PodTemplateSpec, Secret, SecretVolumeSource, Volume, VolumeMount,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use sha2::{Digest, Sha256};

use super::meta::{self, ProbeKind};
use super::{
    Object, ObjectsError, PlaneFiles, CHECKPOINT_ANNOTATION, CONFIG_HASH_ANNOTATION,
    SECRET_FILE_MODE,
};
use crate::plane::flags::{self, Flags, HOST_IP_ENV};
use crate::plane::{Placement, PlaneSpec};

pub(crate) const APISERVER: &str = "kube-apiserver";
pub(crate) const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub(crate) const SCHEDULER: &str = "kube-scheduler";

/// Volume names in the pods.
pub(crate) const PKI_VOLUME: &str = "pki";
pub(crate) const KUBECONFIG_VOLUME: &str = "kubeconfig";
/// The apiserver pod's hostPath volume of `PlaneSpec::audit_log_dir`.
pub(crate) const AUDIT_LOG_VOLUME: &str = "audit-log";
/// The apiserver pod's volume of [`ETCD_CA_SECRET`]; no container mounts it.
pub(crate) const ETCD_CA_VOLUME: &str = "etcd-member-ca";

/// Secret (`kube-system`) with the etcd CA's certificate and key (keys
/// `etcd-ca.crt`, `etcd-ca.key`): what a control-plane node's agent issues
/// its etcd member's server, peer and healthcheck certificates with.
///
/// The kube-apiserver DaemonSet's pods name it as a volume that no
/// container mounts. That volume is the only reason a node may read it:
/// the Node authorizer lets a kubelet's credentials read the Secrets of
/// the pods bound to that node, so a node gets the etcd CA exactly while
/// the DaemonSet (its control-plane label) puts an apiserver there, and
/// no key is ever copied between hosts by hand.
pub const ETCD_CA_SECRET: &str = "selfnode-etcd-ca";

/// The self-hosted flags of each control-plane component.
pub(crate) fn component_flags(spec: &PlaneSpec) -> [(&'static str, Flags); 3] {
    let p = Placement::SelfHosted;
    [
        (APISERVER, flags::apiserver(spec, p)),
        (CONTROLLER_MANAGER, flags::controller_manager(spec, p)),
        (SCHEDULER, flags::scheduler(spec, p)),
    ]
}

/// The Secret key of a file: its path under the PKI directory with `/`
/// replaced by `-` (`etcd/ca.crt` → `etcd-ca.crt`), or its file name.
pub(crate) fn secret_key(spec: &PlaneSpec, file: &Path) -> String {
    match file.strip_prefix(&spec.pki_dir) {
        Ok(rel) => rel.display().to_string().replace('/', "-"),
        Err(_) => file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// A component's Secret and how its pod mounts it.
struct Mounted {
    secret: Secret,
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
    /// Hash of the Secret's data; in the pod template, so a changed
    /// certificate rolls the pods (subPath mounts never see updates).
    hash: String,
}

fn mounted_secret(
    spec: &PlaneSpec,
    name: &str,
    files: &[PathBuf],
    contents: &PlaneFiles,
) -> Result<Mounted, ObjectsError> {
    let mut data = BTreeMap::new();
    let mut pki_items = Vec::new();
    let mut other_items = Vec::new();
    let mut mounts = Vec::new();
    for file in files {
        let bytes = contents
            .get(file)
            .ok_or_else(|| ObjectsError::MissingFile {
                path: file.clone(),
                component: name.to_string(),
            })?;
        let key = secret_key(spec, file);
        data.insert(key.clone(), ByteString(bytes.to_vec()));
        match file.strip_prefix(&spec.pki_dir) {
            Ok(rel) => pki_items.push(KeyToPath {
                key,
                path: rel.display().to_string(),
                ..KeyToPath::default()
            }),
            Err(_) => {
                other_items.push(KeyToPath {
                    key: key.clone(),
                    path: key.clone(),
                    ..KeyToPath::default()
                });
                mounts.push(VolumeMount {
                    name: KUBECONFIG_VOLUME.to_string(),
                    mount_path: file.display().to_string(),
                    sub_path: Some(key),
                    read_only: Some(true),
                    ..VolumeMount::default()
                });
            }
        }
    }
    let volume = |vname: &str, items: Vec<KeyToPath>| Volume {
        name: vname.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(name.to_string()),
            items: Some(items),
            default_mode: Some(SECRET_FILE_MODE),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mut volumes = Vec::new();
    if !pki_items.is_empty() {
        volumes.push(volume(PKI_VOLUME, pki_items));
        mounts.insert(
            0,
            VolumeMount {
                name: PKI_VOLUME.to_string(),
                mount_path: spec.pki_dir.display().to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        );
    }
    if !other_items.is_empty() {
        volumes.push(volume(KUBECONFIG_VOLUME, other_items));
    }
    let hash = data_hash(&data);
    let secret = Secret {
        metadata: meta::object_meta(name, true, &[("tier", "control-plane")]),
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Secret::default()
    };
    Ok(Mounted {
        secret,
        volumes,
        mounts,
        hash,
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

/// The files of [`ETCD_CA_SECRET`]: the etcd CA's certificate and key.
pub(crate) fn etcd_ca_files(spec: &PlaneSpec) -> [PathBuf; 2] {
    let base = spec.pki_dir.join(crate::pki::names::ETCD_CA);
    [base.with_extension("crt"), base.with_extension("key")]
}

fn etcd_ca_secret(spec: &PlaneSpec, files: &PlaneFiles) -> Result<Secret, ObjectsError> {
    let mut data = BTreeMap::new();
    for file in etcd_ca_files(spec) {
        let bytes = files.get(&file).ok_or_else(|| ObjectsError::MissingFile {
            path: file.clone(),
            component: ETCD_CA_SECRET.to_string(),
        })?;
        data.insert(secret_key(spec, &file), ByteString(bytes.to_vec()));
    }
    Ok(Secret {
        metadata: meta::object_meta(ETCD_CA_SECRET, true, &[("tier", "control-plane")]),
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Secret::default()
    })
}

/// A control-plane component's Secret (its certificates, keys and
/// kubeconfigs) and the workload whose pods mount it: what publishing
/// renewed certificates after the pivot applies (`selfnode certs renew`).
#[derive(Debug, Clone)]
pub struct ComponentSecret {
    /// The component: `kube-apiserver`, `kube-controller-manager`,
    /// `kube-scheduler` (the Secret's and the workload's name).
    pub component: &'static str,
    /// The workload's kind: `DaemonSet` (kube-apiserver) or `Deployment`.
    pub workload_kind: &'static str,
    /// The Secret, as [`crate::objects::self_hosted_objects`] renders it.
    pub secret: Secret,
    /// The value of [`CONFIG_HASH_ANNOTATION`] the workload's pod template
    /// carries for this Secret: a different one rolls the pods.
    pub config_hash: String,
}

/// The Secrets of the three control-plane components, rendered from the
/// host's files exactly as [`crate::objects::self_hosted_objects`] renders
/// them (the same Secret, the same config hash), without the rest.
///
/// Errors with [`ObjectsError`] (invalid spec, a file a component mounts
/// missing from `files`).
pub fn component_secrets(
    spec: &PlaneSpec,
    files: &PlaneFiles,
) -> Result<Vec<ComponentSecret>, ObjectsError> {
    spec.validate()?;
    component_flags(spec)
        .into_iter()
        .map(|(component, flags)| {
            let m = mounted_secret(spec, component, &flags.files(), files)?;
            Ok(ComponentSecret {
                component,
                workload_kind: if component == APISERVER {
                    "DaemonSet"
                } else {
                    "Deployment"
                },
                secret: m.secret,
                config_hash: m.hash,
            })
        })
        .collect()
}

pub(crate) fn objects(spec: &PlaneSpec, files: &PlaneFiles) -> Result<Vec<Object>, ObjectsError> {
    let [(_, api_flags), (_, cm_flags), (_, sched_flags)] = component_flags(spec);
    let mut api = mounted_secret(spec, APISERVER, &api_flags.files(), files)?;
    // Named, never mounted: see ETCD_CA_SECRET.
    api.volumes.push(Volume {
        name: ETCD_CA_VOLUME.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(ETCD_CA_SECRET.to_string()),
            default_mode: Some(SECRET_FILE_MODE),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    // The audit log (plane::audit), on each host's disk.
    let audit_dir = spec.audit_log_dir.display().to_string();
    api.volumes.push(meta::host_path(
        AUDIT_LOG_VOLUME,
        &audit_dir,
        Some("DirectoryOrCreate"),
    ));
    api.mounts
        .push(meta::mount(AUDIT_LOG_VOLUME, &audit_dir, false));
    let cm = mounted_secret(spec, CONTROLLER_MANAGER, &cm_flags.files(), files)?;
    let sched = mounted_secret(spec, SCHEDULER, &sched_flags.files(), files)?;
    let out = vec![
        Object::Secret(api.secret.clone()),
        Object::Secret(cm.secret.clone()),
        Object::Secret(sched.secret.clone()),
        Object::Secret(etcd_ca_secret(spec, files)?),
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
