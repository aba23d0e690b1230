//! Golden files of every object, and the cross-checks between flags and
//! the host files each pod mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{PodSpec, Taint};

use super::control_plane::{self, file_key};
use super::*;
use crate::host::fake::MemHost;
use crate::plane::tests::{check_golden, spec};
use crate::plane::{ensure_encryption_config, flags, Placement};

/// Placeholder contents for every file: stable golden files. Each names
/// its path and, for keys, looks like one, so a scan of the objects finds
/// any that leaked into them.
fn files(spec: &PlaneSpec) -> PlaneFiles {
    let mut f = PlaneFiles::new();
    for p in PlaneFiles::required(spec) {
        let contents = if p.extension().is_some_and(|e| e == "key") {
            format!("-----BEGIN PRIVATE KEY-----\nkey of {}\n", p.display())
        } else {
            format!("contents of {}\n", p.display())
        };
        f.insert(p, contents);
    }
    f
}

fn objects() -> Vec<Object> {
    let s = spec();
    self_hosted_objects(&s, &files(&s)).unwrap()
}

fn golden_name(o: &Object) -> String {
    let name = o.name().replace(':', "_");
    format!("{}-{name}.yaml", o.kind().to_ascii_lowercase())
}

const GOLDEN_DIR: &str = "objects";

#[test]
fn objects_golden() {
    let objs = objects();
    let mut names = BTreeSet::new();
    for o in &objs {
        let name = golden_name(o);
        assert!(names.insert(name.clone()), "two objects map to {name}");
        check_golden(&format!("{GOLDEN_DIR}/{name}"), &o.to_yaml().unwrap());
    }
    // A golden file for an object no longer rendered is a failure too.
    let dir = testkit::golden_dir(env!("CARGO_MANIFEST_DIR")).join(GOLDEN_DIR);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        if testkit::updating_golden() && !names.contains(&file) {
            std::fs::remove_file(dir.join(&file)).unwrap();
            continue;
        }
        assert!(
            names.contains(&file),
            "stale golden file {file}: no object renders it (UPDATE_GOLDEN=1 removes it)"
        );
    }
}

#[test]
fn the_expected_objects_in_dependency_order() {
    let objs = objects();
    let listed: Vec<String> = objs.iter().map(|o| o.to_string()).collect();
    assert_eq!(
        listed,
        [
            "ServiceAccount kube-system/kube-proxy",
            "ServiceAccount kube-system/selfnode-network",
            "ServiceAccount kube-system/coredns",
            "ClusterRole selfnode:network",
            "ClusterRole system:coredns",
            "ClusterRole selfnode:get-nodes",
            "ClusterRole selfnode:control-plane-agent",
            "ClusterRoleBinding kubeadm:cluster-admins",
            "ClusterRoleBinding kubeadm:apiserver-kubelet-client",
            "ClusterRoleBinding kubeadm:node-proxier",
            "ClusterRoleBinding selfnode:network",
            "ClusterRoleBinding system:coredns",
            "ClusterRoleBinding selfnode:kubelet-bootstrap",
            "ClusterRoleBinding selfnode:node-autoapprove-certificate-rotation",
            "ClusterRoleBinding selfnode:get-nodes",
            "ClusterRoleBinding selfnode:control-plane-agent",
            "Role default/selfnode:node-apiservers",
            "RoleBinding default/selfnode:node-apiservers",
            "Role kube-system/selfnode:etcd-defrag-lease",
            "RoleBinding kube-system/selfnode:etcd-defrag-lease",
            "Role kube-public/selfnode:bootstrap-signer-clusterinfo",
            "RoleBinding kube-public/selfnode:bootstrap-signer-clusterinfo",
            "Role kube-system/selfnode:cluster-settings",
            "RoleBinding kube-system/selfnode:cluster-settings",
            "Role kube-system/selfnode:upgrade",
            "RoleBinding kube-system/selfnode:upgrade",
            "ConfigMap kube-system/kube-proxy",
            "ConfigMap kube-system/coredns",
            "ConfigMap kube-public/cluster-info",
            "ConfigMap kube-system/selfnode-cluster",
            "Service kube-system/kube-dns",
            "DaemonSet kube-system/kube-apiserver",
            "Deployment kube-system/kube-controller-manager",
            "Deployment kube-system/kube-scheduler",
            "DaemonSet kube-system/kube-proxy",
            "DaemonSet kube-system/selfnode-network",
            "Deployment kube-system/coredns",
        ]
    );
    for o in &objs {
        let labels = o.metadata().labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY_VALUE),
            "{o}"
        );
    }
}

fn pod_spec(o: &Object) -> Option<&PodSpec> {
    match o {
        Object::DaemonSet(d) => d.spec.template.spec.as_ref(),
        Object::Deployment(d) => d.spec.template.spec.as_ref(),
        _ => None,
    }
}

fn find<'a>(objs: &'a [Object], kind: &str, name: &str) -> &'a Object {
    objs.iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The host file a pod mounts at `path`: the hostPath of type `File` at
/// the same path, mounted read-only; `None` when nothing mounts it so.
fn host_file(pod: &PodSpec, path: &str) -> Option<String> {
    let container = &pod.containers[0];
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let m = container
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| m.mount_path == path)?;
    assert_eq!(m.read_only, Some(true), "{path} must be read-only");
    let hp = volumes
        .iter()
        .find(|v| v.name == m.name)?
        .host_path
        .as_ref()?;
    assert_eq!(hp.type_.as_deref(), Some("File"), "{path}");
    Some(hp.path.clone())
}

/// Every absolute path in a flag value (comma-separated values included).
fn paths_in_command(cmd: &[String]) -> Vec<String> {
    cmd.iter()
        .skip(1)
        .filter_map(|a| a.split_once('=').map(|(_, v)| v))
        .flat_map(|v| v.split(','))
        .filter(|v| v.starts_with('/'))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_file_a_flag_names_is_mounted_read_only_from_the_host_and_nothing_else() {
    let s = spec();
    let objs = objects();
    for (name, kind) in [
        (control_plane::APISERVER, "DaemonSet"),
        (control_plane::CONTROLLER_MANAGER, "Deployment"),
        (control_plane::SCHEDULER, "Deployment"),
    ] {
        let pod = pod_spec(find(&objs, kind, name)).unwrap();
        let cmd = pod.containers[0].command.clone().unwrap();
        assert_eq!(cmd[0], name);
        // Logs it writes are on a writable hostPath directory; every other
        // path is a file it reads, from the host, at the same path.
        let (logs, paths): (Vec<String>, Vec<String>) = paths_in_command(&cmd)
            .into_iter()
            .partition(|p| Path::new(p).starts_with(&s.audit_log_dir));
        assert_eq!(
            logs.is_empty(),
            name != control_plane::APISERVER,
            "{name}: {logs:?}"
        );
        for log in &logs {
            let dir = s.audit_log_dir.display().to_string();
            let mounted = pod.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path == dir && m.read_only == Some(false))
                .unwrap_or_else(|| panic!("{name}: {log} is not on a writable mount"));
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mounted.name)
                .unwrap();
            assert_eq!(
                volume.host_path.as_ref().unwrap().path,
                dir,
                "{name}: {log}"
            );
        }
        assert!(paths.len() >= 2, "{name}: {paths:?}");
        for path in &paths {
            let from = host_file(pod, path)
                .unwrap_or_else(|| panic!("{name}: {path} is not mounted from the host"));
            assert_eq!(&from, path, "{name}");
        }
        // And nothing else: a pod sees only the files its component reads.
        let mounted = pod.containers[0]
            .volume_mounts
            .as_deref()
            .unwrap_or_default();
        let distinct: BTreeSet<&String> = paths.iter().collect();
        // The apiserver's one directory besides its log: the static
        // admission policies its admission configuration names, read-only.
        let policies = usize::from(name == control_plane::APISERVER);
        if policies == 1 {
            let dir = crate::plane::admission_policy_dir(&s.kubeconfig_dir)
                .display()
                .to_string();
            assert!(
                mounted
                    .iter()
                    .any(|m| m.mount_path == dir && m.read_only == Some(true)),
                "{name}: {dir} is not mounted read-only"
            );
        }
        assert_eq!(
            mounted.len(),
            distinct.len() + logs.len().min(1) + policies,
            "{name}: extra mounts {mounted:#?}"
        );
        assert!(
            pod.volumes
                .as_deref()
                .unwrap_or_default()
                .iter()
                .all(|v| v.secret.is_none() && v.config_map.is_none()),
            "{name} mounts nothing from the API"
        );
    }
}

#[test]
fn each_component_mounts_what_it_needs_and_no_more() {
    let s = spec();
    let objs = objects();
    let keys = |kind, name| -> BTreeSet<String> {
        let pod = pod_spec(find(&objs, kind, name)).unwrap();
        pod.containers[0]
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|m| m.read_only == Some(true))
            .map(|m| file_key(&s, Path::new(&m.mount_path)))
            .collect()
    };
    let api = keys("DaemonSet", control_plane::APISERVER);
    for k in [
        "ca.crt",
        "apiserver.crt",
        "apiserver.key",
        "apiserver-kubelet-client.crt",
        "apiserver-kubelet-client.key",
        "front-proxy-ca.crt",
        "front-proxy-client.crt",
        "front-proxy-client.key",
        "sa.pub",
        "sa.key",
        "apiserver-etcd-client.crt",
        "apiserver-etcd-client.key",
        "etcd-ca.crt",
        "encryption-config.yaml",
        "audit-policy.yaml",
    ] {
        assert!(api.contains(k), "kube-apiserver lacks {k}");
    }
    for k in ["ca.key", "etcd-ca.key", "front-proxy-ca.key"] {
        assert!(!api.contains(k), "kube-apiserver must not get {k}");
    }
    let cm = keys("Deployment", control_plane::CONTROLLER_MANAGER);
    assert_eq!(
        cm.into_iter().collect::<Vec<_>>(),
        [
            "ca.crt",
            "ca.key",
            "controller-manager.conf",
            "front-proxy-ca.crt",
            "sa.key"
        ]
    );
    let sched = keys("Deployment", control_plane::SCHEDULER);
    assert_eq!(sched.into_iter().collect::<Vec<_>>(), ["scheduler.conf"]);
}

#[test]
fn no_object_holds_a_private_key_or_a_key_file() {
    let s = spec();
    let given = files(&s);
    for o in objects() {
        let text = o.to_yaml().unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{o} holds a private key");
        for p in PlaneFiles::required(&s) {
            let contents = String::from_utf8_lossy(given.get(&p).unwrap()).into_owned();
            if let Some(body) = contents.lines().nth(1) {
                assert!(!text.contains(body), "{o} holds the key {}", p.display());
            }
        }
    }
}

#[test]
fn every_key_a_volume_references_exists() {
    let objs = objects();
    for o in &objs {
        let Some(pod) = pod_spec(o) else { continue };
        for v in pod.volumes.as_deref().unwrap_or_default() {
            let (kind, name, items) = if let Some(s) = &v.secret {
                ("Secret", s.secret_name.clone().unwrap(), s.items.clone())
            } else if let Some(c) = &v.config_map {
                ("ConfigMap", c.name.clone(), c.items.clone())
            } else {
                continue;
            };
            let keys: BTreeSet<String> = match find(&objs, kind, &name) {
                Object::Secret(s) => s.data.clone().unwrap_or_default().into_keys().collect(),
                Object::ConfigMap(c) => c.data.clone().unwrap_or_default().into_keys().collect(),
                _ => unreachable!(),
            };
            for item in items.unwrap_or_default() {
                assert!(
                    keys.contains(&item.key),
                    "{o}: volume {} references missing key {} of {kind} {name}",
                    v.name,
                    item.key
                );
            }
        }
        // Every mount names a volume of the pod.
        let vols: BTreeSet<&str> = pod
            .volumes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        for c in &pod.containers {
            for m in c.volume_mounts.as_deref().unwrap_or_default() {
                assert!(
                    vols.contains(m.name.as_str()),
                    "{o}: mount of unknown volume {}",
                    m.name
                );
            }
        }
    }
}

#[test]
fn self_hosted_commands_are_the_flag_builders() {
    let s = spec();
    let objs = objects();
    let cmd = |kind, name| {
        pod_spec(find(&objs, kind, name)).unwrap().containers[0]
            .command
            .clone()
            .unwrap()
    };
    let mut want = vec!["kube-apiserver".to_string()];
    want.extend(flags::apiserver(&s, Placement::SelfHosted).args());
    assert_eq!(cmd("DaemonSet", "kube-apiserver"), want);
    let mut want = vec!["kube-controller-manager".to_string()];
    want.extend(flags::controller_manager(&s, Placement::SelfHosted).args());
    assert_eq!(cmd("Deployment", "kube-controller-manager"), want);
}

#[test]
fn control_plane_pods_are_host_network_checkpointable_and_critical() {
    let objs = objects();
    for (kind, name) in [
        ("DaemonSet", "kube-apiserver"),
        ("Deployment", "kube-controller-manager"),
        ("Deployment", "kube-scheduler"),
    ] {
        let o = find(&objs, kind, name);
        let (tmeta, pod) = match o {
            Object::DaemonSet(d) => (&d.spec.template.metadata, d.spec.template.spec.as_ref()),
            Object::Deployment(d) => (&d.spec.template.metadata, d.spec.template.spec.as_ref()),
            _ => unreachable!(),
        };
        let pod = pod.unwrap();
        let ann = tmeta.as_ref().unwrap().annotations.clone().unwrap();
        assert_eq!(ann[CHECKPOINT_ANNOTATION], "true", "{o}");
        assert_eq!(ann[CONFIG_HASH_ANNOTATION].len(), 64, "{o}");
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        assert_eq!(pod.node_selector.as_ref().unwrap()[CONTROL_PLANE_LABEL], "");
        let tol = pod.tolerations.clone().unwrap();
        for key in [CONTROL_PLANE_LABEL, "node.kubernetes.io/not-ready"] {
            assert!(
                tol.iter().any(|t| t.key.as_deref() == Some(key)),
                "{o} lacks {key}"
            );
        }
        let c = &pod.containers[0];
        assert!(
            c.liveness_probe.is_some() && c.startup_probe.is_some(),
            "{o}"
        );
    }
}

#[test]
fn the_pod_template_hash_is_the_same_on_every_host_and_follows_the_shared_files() {
    let s = spec();
    let hash = |files: &PlaneFiles| {
        let objs = self_hosted_objects(&s, files).unwrap();
        match find(&objs, "DaemonSet", "kube-apiserver") {
            Object::DaemonSet(d) => d
                .spec
                .template
                .metadata
                .clone()
                .unwrap()
                .annotations
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone(),
            _ => unreachable!(),
        }
    };
    let mut f = files(&s);
    let before = hash(&f);
    assert_eq!(before, hash(&f), "deterministic");
    // A host's own certificate or kubeconfig (another host's, or renewed
    // here) does not change it: every host computes the same hash.
    f.insert("/etc/kubernetes/pki/apiserver.crt", "another host's");
    f.insert("/etc/kubernetes/controller-manager.conf", "another host's");
    assert_eq!(before, hash(&f));
    // What every host shares does.
    f.insert("/etc/kubernetes/pki/ca.crt", "a new CA bundle");
    assert_ne!(before, hash(&f));
    let mut g = files(&s);
    g.insert("/etc/kubernetes/admission-config.yaml", "changed");
    assert_ne!(before, hash(&g));
}

#[test]
fn shared_files_are_the_cas_the_service_account_pair_and_selfnodes_own() {
    let s = spec();
    let shared: Vec<String> = PlaneFiles::required(&s)
        .into_iter()
        .filter(|f| shared_file(&s, f))
        .map(|f| f.display().to_string())
        .collect();
    assert_eq!(
        shared,
        [
            "/etc/kubernetes/admission-config.yaml",
            "/etc/kubernetes/audit-policy.yaml",
            "/etc/kubernetes/pki/ca.crt",
            "/etc/kubernetes/pki/ca.key",
            "/etc/kubernetes/pki/encryption-config.yaml",
            "/etc/kubernetes/pki/etcd/ca.crt",
            "/etc/kubernetes/pki/front-proxy-ca.crt",
            "/etc/kubernetes/pki/sa.key",
            "/etc/kubernetes/pki/sa.pub",
        ]
    );
}

#[test]
fn component_workloads_carry_the_template_hashes_the_objects_render() {
    let s = spec();
    let objs = objects();
    let workloads = component_workloads(&s, &files(&s)).unwrap();
    let names: Vec<_> = workloads
        .iter()
        .map(|c| (c.workload_kind, c.component))
        .collect();
    assert_eq!(
        names,
        [
            ("DaemonSet", "kube-apiserver"),
            ("Deployment", "kube-controller-manager"),
            ("Deployment", "kube-scheduler"),
        ]
    );
    for c in &workloads {
        let tmeta = match find(&objs, c.workload_kind, c.component) {
            Object::DaemonSet(d) => d.spec.template.metadata.clone(),
            Object::Deployment(d) => d.spec.template.metadata.clone(),
            _ => unreachable!(),
        };
        assert_eq!(
            tmeta.unwrap().annotations.unwrap()[CONFIG_HASH_ANNOTATION],
            c.config_hash,
            "{}",
            c.component
        );
    }
}

#[test]
fn kube_proxy_reaches_the_api_through_the_local_load_balancer() {
    let objs = objects();
    let Object::ConfigMap(cm) = find(&objs, "ConfigMap", "kube-proxy") else {
        unreachable!()
    };
    let data = cm.data.clone().unwrap();
    assert!(data["kubeconfig.conf"].contains("server: https://127.0.0.1:7445"));
    assert!(data["kubeconfig.conf"]
        .contains("tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token"));
    assert!(data["config.conf"].contains("clusterCIDR: 10.244.0.0/16"));
    assert!(data["config.conf"].contains("mode: iptables"));
    assert!(!data["config.conf"].contains("conntrack"));

    let mut s = spec();
    s.kube_proxy_conntrack_max_per_core = Some(0);
    let objs = self_hosted_objects(&s, &files(&s)).unwrap();
    let Object::ConfigMap(cm) = find(&objs, "ConfigMap", "kube-proxy") else {
        unreachable!()
    };
    assert!(cm.data.clone().unwrap()["config.conf"].contains("maxPerCore: 0"));
}

#[test]
fn dns_service_takes_the_tenth_address() {
    let objs = objects();
    let Object::Service(svc) = find(&objs, "Service", "kube-dns") else {
        unreachable!()
    };
    assert_eq!(
        svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("10.96.0.10")
    );
    let Object::Deployment(d) = find(&objs, "Deployment", "coredns") else {
        unreachable!()
    };
    assert_eq!(d.spec.replicas, Some(2));
}

#[test]
fn missing_file_contents_are_named() {
    let s = spec();
    let mut f = PlaneFiles::new();
    for p in PlaneFiles::required(&s) {
        if !p.ends_with("sa.key") {
            f.insert(p, "x");
        }
    }
    let err = self_hosted_objects(&s, &f).unwrap_err().to_string();
    assert!(err.contains("/etc/kubernetes/pki/sa.key"), "{err}");
    assert!(err.contains("kube-apiserver"), "{err}");
}

#[test]
fn plane_files_are_read_from_the_host_after_pki_and_encryption() {
    let h = MemHost::new();
    let s = spec();
    let err = PlaneFiles::read(&h, &s).unwrap_err().to_string();
    assert!(err.contains("is missing on this host"), "{err}");
    let now = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    crate::pki::ensure_pki(&h, &s.pki_spec(), now).unwrap();
    let err = PlaneFiles::read(&h, &s).unwrap_err().to_string();
    assert!(err.contains("encryption-config.yaml"), "{err}");
    ensure_encryption_config(&h, &s.pki_dir, &mut rand::rng()).unwrap();
    let files = PlaneFiles::read(&h, &s).unwrap();
    let objs = self_hosted_objects(&s, &files).unwrap();
    assert_eq!(objs.len(), 37);
    // Debug output never shows contents (private keys).
    let dbg = format!("{files:?}");
    assert!(
        dbg.contains("/etc/kubernetes/pki/ca.key") && !dbg.contains("PRIVATE KEY"),
        "{dbg}"
    );
}

#[test]
fn required_files_are_exactly_those_of_the_three_components() {
    let s = spec();
    let want: Vec<PathBuf> = [
        "/etc/kubernetes/admission-config.yaml",
        "/etc/kubernetes/audit-policy.yaml",
        "/etc/kubernetes/controller-manager.conf",
        "/etc/kubernetes/pki/apiserver-etcd-client.crt",
        "/etc/kubernetes/pki/apiserver-etcd-client.key",
        "/etc/kubernetes/pki/apiserver-kubelet-client.crt",
        "/etc/kubernetes/pki/apiserver-kubelet-client.key",
        "/etc/kubernetes/pki/apiserver.crt",
        "/etc/kubernetes/pki/apiserver.key",
        "/etc/kubernetes/pki/ca.crt",
        "/etc/kubernetes/pki/ca.key",
        "/etc/kubernetes/pki/encryption-config.yaml",
        "/etc/kubernetes/pki/etcd/ca.crt",
        "/etc/kubernetes/pki/front-proxy-ca.crt",
        "/etc/kubernetes/pki/front-proxy-client.crt",
        "/etc/kubernetes/pki/front-proxy-client.key",
        "/etc/kubernetes/pki/sa.key",
        "/etc/kubernetes/pki/sa.pub",
        "/etc/kubernetes/scheduler.conf",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(PlaneFiles::required(&s), want);
}

#[test]
fn control_plane_taint_is_added_once_and_keeps_others() {
    let other = Taint {
        key: "example.com/dedicated".into(),
        effect: "NoExecute".into(),
        value: Some("x".into()),
        ..Taint::default()
    };
    let added = with_control_plane_taint(std::slice::from_ref(&other)).unwrap();
    assert_eq!(added.len(), 2);
    assert_eq!(added[0], other);
    assert_eq!(added[1].key, CONTROL_PLANE_LABEL);
    assert_eq!(added[1].effect, "NoSchedule");
    assert_eq!(with_control_plane_taint(&added), None);
    let patch = serde_json::to_value(control_plane_node_patch("cp-1")).unwrap();
    assert_eq!(
        patch,
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "cp-1",
                "labels": { CONTROL_PLANE_LABEL: "" }
            }
        })
    );
}

#[test]
fn etcd_static_pod_golden() {
    let s = spec();
    let pod =
        crate::objects::etcd_static_pod_yaml(&s, &crate::plane::EtcdInitial::join_temporary(&s))
            .unwrap();
    check_golden("static-pods/etcd.yaml", &pod);
    // Only the etcd certificates reach the pod, read-only; data on the host.
    assert!(pod.contains("path: /etc/kubernetes/pki/etcd\n"), "{pod}");
    assert!(pod.contains("path: /var/lib/selfnode/etcd\n"), "{pod}");
    assert!(!pod.contains("livenessProbe"), "{pod}");
}

#[test]
fn cluster_settings_errors_name_the_config_map_and_keep_their_cause() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let e = ClusterSettings::from_config_map(&ConfigMap::default()).unwrap_err();
    assert!(matches!(e, ClusterSettingsError::Missing), "{e}");
    assert_eq!(
        e.to_string(),
        "ConfigMap kube-system/selfnode-cluster has no cluster.json"
    );
    let cm = ConfigMap {
        data: Some(BTreeMap::from([(
            "cluster.json".to_string(),
            "{\"clusterName\": 3}".to_string(),
        )])),
        ..ConfigMap::default()
    };
    let e = ClusterSettings::from_config_map(&cm).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cluster.json in ConfigMap kube-system/selfnode-cluster does not parse"
    );
    let cause = std::error::Error::source(&e)
        .expect("the parser's error")
        .to_string();
    assert!(cause.contains("invalid type"), "{cause}");
}

#[test]
fn no_bootstrap_token_group_gets_upstream_client_certificate_approval() {
    for o in objects() {
        if let Object::ClusterRoleBinding(b) = &o {
            assert!(
                !b.role_ref.name.ends_with(":nodeclient"),
                "{o}: a token could become any node"
            );
        }
        if let Object::ClusterRole(r) = &o {
            for rule in r.rules.iter().flatten() {
                let nodes = rule.resources.iter().flatten().any(|x| x == "nodes");
                let patch = rule.verbs.iter().any(|v| v == "patch" || v == "update");
                assert!(
                    !(nodes && patch) || o.name() == "selfnode:control-plane-agent",
                    "{o} may change Nodes"
                );
            }
        }
    }
}
