//! The self-hosted etcd member: a static pod the kubelet runs from a file.
//!
//! Why a static pod and not a DaemonSet: etcd is what the API server needs
//! to answer, so nothing that needs the API server may be needed to start
//! it. The kubelet starts a static pod from its manifest directory with no
//! API server at all (after an agent restart, a reboot, a power cut), and
//! still shows it in the API as a mirror pod (`etcd-<node>` in
//! `kube-system`). The member's identity (name, peer URL, data directory)
//! is in the node's checkpoint; the manifest is rendered from the cluster's
//! [`PlaneSpec`] by `selfnode init` (and `join` and `restore`).
//!
//! No liveness probe: a member that lost quorum is alive and must not be
//! restarted for it. Readiness is `etcdctl endpoint health` on loopback with
//! the healthcheck client certificate (etcd requires client certificates on
//! its client port, which the kubelet's HTTP probes cannot present, and the
//! unauthenticated metrics listener kubeadm probes is off): a linearizable
//! read, so a learner or a member without quorum is not Ready.

use k8s_openapi::api::core::v1::{Container, ExecAction, Pod, PodSpec, Probe};

use super::meta;
use super::ObjectsError;
use crate::pki::names;
use crate::plane::flags::{self, EtcdInitial};
use crate::plane::{Placement, PlaneSpec};

/// Name of the static pod (the mirror pod is `etcd-<node>`) and its
/// manifest file (`etcd.yaml`) in the kubelet's static pod directory.
pub const ETCD: &str = "etcd";

const DATA_VOLUME: &str = "etcd-data";
const CERTS_VOLUME: &str = "etcd-certs";

/// The self-hosted etcd member of this node, started as `initial` says
/// when its data directory is empty.
pub fn etcd_static_pod(spec: &PlaneSpec, initial: &EtcdInitial) -> Pod {
    let p = Placement::SelfHosted;
    let flags = flags::etcd(spec, p, initial);
    let etcd_pki = spec.pki_dir.join("etcd");
    let pki = |base: &str, ext: &str| {
        spec.pki_dir
            .join(format!("{base}.{ext}"))
            .display()
            .to_string()
    };
    let data_dir = spec.etcd_data_dir.display().to_string();
    let health = vec![
        "/usr/local/bin/etcdctl".to_string(),
        format!(
            "--endpoints={}",
            crate::plane::spec::https_url(spec.loopback(), spec.ports.etcd_client)
        ),
        format!("--cacert={}", pki(names::ETCD_CA, "crt")),
        format!("--cert={}", pki(names::ETCD_HEALTHCHECK_CLIENT, "crt")),
        format!("--key={}", pki(names::ETCD_HEALTHCHECK_CLIENT, "key")),
        "--command-timeout=5s".to_string(),
        "endpoint".to_string(),
        "health".to_string(),
    ];
    let container = Container {
        name: ETCD.to_string(),
        image: Some(spec.images.etcd.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        termination_message_policy: meta::logs_on_error(),
        command: Some(
            std::iter::once("etcd".to_string())
                .chain(flags.args())
                .collect(),
        ),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(health),
            }),
            // Each probe execs etcdctl in the container (no unauthenticated
            // health listener, see flags.rs): every 5 s, not more, since on
            // a slow CPU each exec is a process start and a TLS handshake.
            period_seconds: Some(5),
            timeout_seconds: Some(10),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: Some(meta::cpu_request("100m")),
        volume_mounts: Some(vec![
            meta::mount(DATA_VOLUME, &data_dir, false),
            meta::mount(CERTS_VOLUME, &etcd_pki.display().to_string(), true),
        ]),
        ..Container::default()
    };
    let metadata = meta::object_meta(
        ETCD,
        true,
        &[
            ("component", ETCD),
            ("tier", "control-plane"),
            ("k8s-app", ETCD),
        ],
    );
    Pod {
        metadata,
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![
                meta::host_path(DATA_VOLUME, &data_dir, Some("DirectoryOrCreate")),
                meta::host_path(
                    CERTS_VOLUME,
                    &etcd_pki.display().to_string(),
                    Some("Directory"),
                ),
            ]),
            host_network: Some(true),
            dns_policy: Some("Default".to_string()),
            priority_class_name: Some("system-node-critical".to_string()),
            automount_service_account_token: Some(false),
            security_context: Some(meta::seccomp_runtime_default()),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// [`etcd_static_pod`] as the YAML the kubelet reads.
pub fn etcd_static_pod_yaml(
    spec: &PlaneSpec,
    initial: &EtcdInitial,
) -> Result<String, ObjectsError> {
    serde_saphyr::to_string(&etcd_static_pod(spec, initial)).map_err(|source| {
        ObjectsError::Render {
            what: "the etcd static pod",
            source,
        }
    })
}
