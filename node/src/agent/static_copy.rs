//! A control-plane pod's static copy: the last known good pod the
//! checkpoint keeps, written as a static pod the kubelet runs with no API
//! server to ask (after a power cut: the agent's checkpointer; for
//! deleted or crash-looping Deployments: `selfnode recover`).
//!
//! The copy is `etc/kubernetes/manifests/<component>-checkpoint.json`; the
//! Secret and ConfigMap volumes it mounted from the API become 0600 files
//! under `etc/kubernetes/checkpoint-volumes/<component>` (0700).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::api::core::v1::{HostPathVolumeSource, KeyToPath, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::checkpoint::PodCheckpoint;
use crate::fsutil::{ensure_dir, write_atomic};
use crate::paths::HostPaths;
use crate::readiness::COPY_LABEL;

const NAMESPACE: &str = "kube-system";
/// Annotations of a copy: the pod it copies, and that pod's UID.
const COPY_OF_POD: &str = "selfnode.dev/checkpoint-pod";
const COPY_OF_UID: &str = "selfnode.dev/checkpoint-uid";

/// Where one component's static copy lives on the host.
pub struct CopyPaths {
    pub manifest: PathBuf,
    pub volumes: PathBuf,
}

pub fn copy_paths(paths: &HostPaths, component: &str) -> CopyPaths {
    CopyPaths {
        manifest: paths
            .static_pod_dir()
            .join(format!("{component}-checkpoint.json")),
        volumes: paths
            .kubeconfig_dir()
            .join("checkpoint-volumes")
            .join(component),
    }
}

/// Writes one component's static copy: volumes first (0600 files in a 0700
/// tree), the manifest last and atomically, so the kubelet never sees a
/// manifest whose files are missing.
pub fn activate(paths: &HostPaths, cp: &PodCheckpoint) -> anyhow::Result<()> {
    let copy = copy_paths(paths, &cp.component);
    let (pod, files) = static_copy(cp, &copy.volumes)?;
    if copy.volumes.exists() {
        std::fs::remove_dir_all(&copy.volumes)
            .with_context(|| format!("cannot clear {}", copy.volumes.display()))?;
    }
    for (path, bytes) in files {
        if let Some(dir) = path.parent() {
            ensure_dir(dir, 0o700).with_context(|| format!("creating {}", dir.display()))?;
        }
        write_atomic(&path, &bytes, 0o600)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let json = serde_json::to_vec_pretty(&pod)?;
    ensure_dir(&paths.static_pod_dir(), 0o755)?;
    write_atomic(&copy.manifest, &json, 0o600)
        .with_context(|| format!("writing {}", copy.manifest.display()))?;
    tracing::info!(component = %cp.component, manifest = %copy.manifest.display(), "wrote the checkpoint copy as a static pod");
    Ok(())
}

pub fn deactivate(paths: &HostPaths, component: &str) -> anyhow::Result<()> {
    let copy = copy_paths(paths, component);
    match std::fs::remove_file(&copy.manifest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", copy.manifest.display())),
    }
    if copy.volumes.exists() {
        std::fs::remove_dir_all(&copy.volumes)
            .with_context(|| format!("removing {}", copy.volumes.display()))?;
    }
    Ok(())
}

/// One file a static copy's volumes need: where, and its bytes.
pub type VolumeFile = (PathBuf, Vec<u8>);

/// The static pod for a kept copy, and the files (path, bytes) its volumes
/// need under `volumes_dir`. ConfigMap volumes become hostPath volumes
/// over those files (items and sub-paths keep their layout); hostPath
/// volumes (the keys and kubeconfigs) stay as they are;
/// service-account token volumes are dropped (static pods cannot have
/// them); the pod loses what binds it to the API (node name, service
/// account, priority value, owner), and is labelled as a copy so no
/// controller adopts its mirror.
///
/// Errors: a volume names a Secret (never kept), or a ConfigMap or key the
/// copy does not hold.
pub fn static_copy(
    cp: &PodCheckpoint,
    volumes_dir: &Path,
) -> anyhow::Result<(Pod, Vec<VolumeFile>)> {
    let mut spec = cp.pod.spec.clone().context("the kept pod has no spec")?;
    let cms: BTreeMap<&str, BTreeMap<String, Vec<u8>>> = cp
        .config_maps
        .iter()
        .map(|c| {
            let data = c
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .chain(
                    c.binary_data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.0.clone())),
                )
                .collect();
            (c.metadata.name.as_deref().unwrap_or_default(), data)
        })
        .collect();
    let mut files = Vec::new();
    let mut dropped = Vec::new();
    let mut volumes = Vec::new();
    for v in spec.volumes.take().unwrap_or_default() {
        let dir = volumes_dir.join(&v.name);
        let mut layout = |source: &BTreeMap<String, Vec<u8>>,
                          items: Option<&Vec<KeyToPath>>,
                          what: &str|
         -> anyhow::Result<()> {
            match items {
                Some(items) => {
                    for it in items {
                        let bytes = source.get(&it.key).with_context(|| {
                            format!("volume {}: {what} has no key {}", v.name, it.key)
                        })?;
                        files.push((dir.join(&it.path), bytes.clone()));
                    }
                }
                None => {
                    for (k, bytes) in source {
                        files.push((dir.join(k), bytes.clone()));
                    }
                }
            }
            Ok(())
        };
        let host = |name: &str| Volume {
            name: name.to_string(),
            host_path: Some(HostPathVolumeSource {
                path: dir.display().to_string(),
                type_: Some("DirectoryOrCreate".to_string()),
            }),
            ..Volume::default()
        };
        // A pod of a cluster made before the keys left the API mounts them
        // from a legacy key Secret, at the paths the host keeps the same
        // files at: the copy mounts the host's files there instead.
        if let Some(name) = v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            .filter(|n| bootstrap::objects::LEGACY_KEY_SECRETS.contains(n))
        {
            match legacy_host_dir(&spec, &v.name) {
                Some(path) => {
                    tracing::info!(volume = %v.name, secret = name, path = %path.display(), "checkpoint copy: a legacy key Secret volume mounts the host's files");
                    volumes.push(Volume {
                        name: v.name.clone(),
                        host_path: Some(HostPathVolumeSource {
                            path: path.display().to_string(),
                            type_: Some("Directory".to_string()),
                        }),
                        ..Volume::default()
                    });
                }
                None => dropped.push(v.name.clone()),
            }
            continue;
        }
        // What the volume mounts from the API: (kind, name, items).
        let mut sources: Vec<(&str, &str, Option<&Vec<KeyToPath>>)> = Vec::new();
        if let Some(s) = &v.secret {
            let name = s.secret_name.as_deref().unwrap_or_default();
            sources.push(("Secret", name, s.items.as_ref()));
        } else if let Some(c) = &v.config_map {
            sources.push(("ConfigMap", c.name.as_str(), c.items.as_ref()));
        } else if let Some(p) = &v.projected {
            let projected = p.sources.as_deref().unwrap_or_default();
            if projected.iter().any(|s| s.service_account_token.is_some()) {
                dropped.push(v.name.clone());
                continue;
            }
            for src in projected {
                if let Some(s) = &src.secret {
                    sources.push(("Secret", s.name.as_str(), s.items.as_ref()));
                }
                if let Some(c) = &src.config_map {
                    sources.push(("ConfigMap", c.name.as_str(), c.items.as_ref()));
                }
            }
        } else {
            volumes.push(v);
            continue;
        }
        for (kind, name, items) in sources {
            if kind == "Secret" {
                anyhow::bail!(
                    "volume {}: Secret {name}: a checkpoint holds no Secret (the control plane's keys are the hosts' files)",
                    v.name
                );
            }
            let data = cms.get(name).with_context(|| {
                format!("volume {}: {kind} {name} is not in the checkpoint", v.name)
            })?;
            layout(data, items, &format!("{kind} {name}"))?;
        }
        volumes.push(host(&v.name));
    }
    spec.volumes = Some(volumes);
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        if let Some(mounts) = c.volume_mounts.as_mut() {
            mounts.retain(|m| !dropped.contains(&m.name));
        }
    }
    // A static pod runs here by definition; the kubelet checks affinity and
    // selectors against the Node it knows, which after a power cut is its
    // own initial one, without the control-plane label.
    spec.node_name = None;
    spec.node_selector = None;
    spec.affinity = None;
    spec.service_account_name = None;
    spec.service_account = None;
    spec.automount_service_account_token = Some(false);
    spec.priority = None;
    let original = cp.pod.metadata.name.clone().unwrap_or_default();
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(format!("{}-checkpoint", cp.component)),
            namespace: Some(NAMESPACE.to_string()),
            labels: Some(BTreeMap::from([(
                COPY_LABEL.to_string(),
                cp.component.clone(),
            )])),
            annotations: Some(BTreeMap::from([
                (COPY_OF_POD.to_string(), original),
                (
                    COPY_OF_UID.to_string(),
                    cp.pod.metadata.uid.clone().unwrap_or_default(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    };
    Ok((pod, files))
}

/// The host directory that stands for legacy key Secret volume `volume`:
/// mounted whole, at its mount path (the PKI directory); mounted by file
/// (`subPath`, a kubeconfig), the directory of the first such mount, whose
/// files are named as the sub-paths. `None`: no container mounts it.
fn legacy_host_dir(spec: &k8s_openapi::api::core::v1::PodSpec, volume: &str) -> Option<PathBuf> {
    let mounts: Vec<&k8s_openapi::api::core::v1::VolumeMount> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .filter(|m| m.name == volume)
        .collect();
    if let Some(whole) = mounts.iter().find(|m| m.sub_path.is_none()) {
        return Some(PathBuf::from(&whole.mount_path));
    }
    mounts
        .first()
        .and_then(|m| Path::new(&m.mount_path).parent().map(Path::to_path_buf))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMap, ConfigMapVolumeSource, Container, PodSpec, ProjectedVolumeSource,
        SecretVolumeSource, ServiceAccountTokenProjection, VolumeMount, VolumeProjection,
    };

    pub(crate) fn kept() -> PodCheckpoint {
        let config = ConfigMap {
            metadata: ObjectMeta {
                name: Some("apiserver-config".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                ("audit.yaml".to_string(), "rules: []".to_string()),
                ("other.yaml".to_string(), "x".to_string()),
            ])),
            ..ConfigMap::default()
        };
        let mount = |name: &str, path: &str| VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..VolumeMount::default()
        };
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("kube-apiserver-abcde".into()),
                uid: Some("u-1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("cp1".into()),
                node_selector: Some(BTreeMap::from([(
                    "node-role.kubernetes.io/control-plane".to_string(),
                    String::new(),
                )])),
                affinity: Some(k8s_openapi::api::core::v1::Affinity::default()),
                priority: Some(2_000_001_000),
                service_account_name: Some("default".into()),
                containers: vec![Container {
                    name: "kube-apiserver".into(),
                    volume_mounts: Some(vec![
                        mount("config", "/etc/kubernetes/config"),
                        mount("f-apiserver-key", "/etc/kubernetes/pki/apiserver.key"),
                        mount("token", "/var/run/secrets/kubernetes.io/serviceaccount"),
                    ]),
                    ..Container::default()
                }],
                volumes: Some(vec![
                    Volume {
                        name: "config".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: "apiserver-config".into(),
                            items: Some(vec![KeyToPath {
                                key: "audit.yaml".into(),
                                path: "sub/audit.yaml".into(),
                                ..KeyToPath::default()
                            }]),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                    Volume {
                        name: "f-apiserver-key".into(),
                        host_path: Some(HostPathVolumeSource {
                            path: "/etc/kubernetes/pki/apiserver.key".into(),
                            type_: Some("File".into()),
                        }),
                        ..Volume::default()
                    },
                    Volume {
                        name: "token".into(),
                        projected: Some(ProjectedVolumeSource {
                            sources: Some(vec![VolumeProjection {
                                service_account_token: Some(ServiceAccountTokenProjection {
                                    path: "token".into(),
                                    ..ServiceAccountTokenProjection::default()
                                }),
                                ..VolumeProjection::default()
                            }]),
                            ..ProjectedVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                ]),
                ..PodSpec::default()
            }),
            status: None,
        };
        PodCheckpoint {
            component: "kube-apiserver".into(),
            pod,
            config_maps: vec![config],
            observed_at: 1,
        }
    }

    #[test]
    fn a_static_copy_mounts_its_config_from_files_keeps_host_files_and_is_unbound_from_the_api() {
        let dir = Path::new("/x/vols");
        let (pod, files) = static_copy(&kept(), dir).unwrap();
        assert_eq!(
            files,
            vec![(dir.join("config/sub/audit.yaml"), b"rules: []".to_vec())],
            "only the items the volume names, at their paths"
        );
        let spec = pod.spec.unwrap();
        let vols = spec.volumes.unwrap();
        assert_eq!(vols.len(), 2, "the token volume is dropped");
        assert_eq!(vols[0].host_path.as_ref().unwrap().path, "/x/vols/config");
        assert_eq!(
            vols[1].host_path.as_ref().unwrap().path,
            "/etc/kubernetes/pki/apiserver.key",
            "a key stays the host's file"
        );
        let mounts = spec.containers[0].volume_mounts.as_ref().unwrap();
        assert_eq!(mounts.len(), 2, "and its mount");
        assert_eq!(spec.node_name, None);
        assert_eq!(
            spec.node_selector, None,
            "the kubelet admits it without the API"
        );
        assert_eq!(spec.affinity, None);
        assert_eq!(spec.priority, None);
        assert_eq!(spec.service_account_name, None);
        assert_eq!(
            pod.metadata.name.as_deref(),
            Some("kube-apiserver-checkpoint")
        );
        assert_eq!(
            pod.metadata
                .labels
                .unwrap()
                .get(COPY_LABEL)
                .map(String::as_str),
            Some("kube-apiserver"),
            "labelled as a copy: no k8s-app label for a DaemonSet to adopt"
        );
    }

    #[test]
    fn a_volume_whose_config_map_is_not_kept_is_an_error() {
        let mut cp = kept();
        cp.config_maps.clear();
        let err = static_copy(&cp, Path::new("/x")).unwrap_err().to_string();
        assert!(
            err.contains("ConfigMap apiserver-config is not in the checkpoint"),
            "{err}"
        );
    }

    #[test]
    fn a_secret_volume_is_never_made_from_a_checkpoint() {
        let mut cp = kept();
        let spec = cp.pod.spec.as_mut().unwrap();
        spec.volumes.as_mut().unwrap().push(Volume {
            name: "keys".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("some-secret".into()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        let err = static_copy(&cp, Path::new("/x")).unwrap_err().to_string();
        assert!(err.contains("a checkpoint holds no Secret"), "{err}");
    }

    #[test]
    fn a_legacy_key_secret_volume_mounts_the_hosts_files_where_it_was_mounted() {
        use k8s_openapi::api::core::v1::VolumeMount;
        let mut cp = kept();
        let spec = cp.pod.spec.as_mut().unwrap();
        let secret = |volume: &str, name: &str| Volume {
            name: volume.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.into()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        };
        // As selfnode made them before the keys left the API: the PKI
        // directory whole, a kubeconfig by sub-path, the etcd CA unmounted.
        spec.volumes.as_mut().unwrap().extend([
            secret("pki", "kube-apiserver"),
            secret("kubeconfigs", "kube-apiserver"),
            secret("etcd-ca", "selfnode-etcd-ca"),
        ]);
        let mounts = spec.containers[0]
            .volume_mounts
            .get_or_insert_with(Vec::new);
        mounts.push(VolumeMount {
            name: "pki".into(),
            mount_path: "/etc/kubernetes/pki".into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        mounts.push(VolumeMount {
            name: "kubeconfigs".into(),
            mount_path: "/etc/kubernetes/admin.conf".into(),
            sub_path: Some("admin.conf".into()),
            ..VolumeMount::default()
        });
        let (pod, _) = static_copy(&cp, Path::new("/x")).unwrap();
        let spec = pod.spec.unwrap();
        let host = |name: &str| {
            spec.volumes
                .iter()
                .flatten()
                .find(|v| v.name == name)
                .map(|v| v.host_path.as_ref().unwrap().path.clone())
        };
        assert_eq!(host("pki").as_deref(), Some("/etc/kubernetes/pki"));
        assert_eq!(host("kubeconfigs").as_deref(), Some("/etc/kubernetes"));
        assert_eq!(host("etcd-ca"), None, "no container mounts it");
        assert!(spec.volumes.iter().flatten().all(|v| v.secret.is_none()));
    }
}
