//! Configuration files the agent writes for its children.
//!
//! Rendering is pure (host facts come in as [`HostFacts`]) so the output is
//! pinned by golden tests; writing goes through `fsutil::write_atomic`.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the agent observed about the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    pub cgroup: CgroupVersion,
    pub driver: CgroupDriver,
    /// The agent lacks CAP_SYS_RESOURCE (some VMs and containers drop it), so
    /// no process here may lower its oom_score_adj; the kubelet asks for -998
    /// on every pod sandbox, which runc then fails to set.
    pub restrict_oom_score_adj: bool,
    /// The kernel settings the kubelet checks hold its values
    /// (`agent::kernel`), so it may run with `protectKernelDefaults`.
    pub kernel_defaults: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

impl CgroupDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
        }
    }
}

impl HostFacts {
    /// cgroup v2 when the unified hierarchy is mounted at /sys/fs/cgroup
    /// (it has `cgroup.controllers`); the systemd driver when systemd is the
    /// init system (`/run/systemd/system` exists), as the kubelet docs advise.
    /// Changes nothing: the kubelet's service sets the kernel settings and
    /// observes them again before each start.
    pub fn detect(root: &Path) -> Self {
        let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        };
        let driver = if root.join("run/systemd/system").is_dir() {
            CgroupDriver::Systemd
        } else {
            CgroupDriver::Cgroupfs
        };
        HostFacts {
            cgroup,
            driver,
            restrict_oom_score_adj: !has_capability(CAP_SYS_RESOURCE),
            kernel_defaults: super::kernel::kubelet_sysctls_hold(Path::new(
                super::kernel::PROC_SYS,
            )),
        }
    }
}

const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has `cap` in its effective set (/proc/self/status).
fn has_capability(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|mask| mask & (1 << cap) != 0)
}

/// Inputs for containerd's config file.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub pause_image: String,
    pub runc: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
}

/// containerd 2.4 configuration (format version 4; `containerd config dump` shows how it reads it).
pub fn render_containerd(cfg: &ContainerdConfig, facts: HostFacts) -> String {
    use toml::{Table, Value};
    fn table(entries: Vec<(&str, Value)>) -> Value {
        Value::Table(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Table>(),
        )
    }
    fn s(p: impl AsRef<str>) -> Value {
        Value::String(p.as_ref().to_string())
    }
    fn path(p: &Path) -> Value {
        s(p.to_string_lossy())
    }
    let runc_options = table(vec![
        ("BinaryName", path(&cfg.runc)),
        // runc's own state; the default (/run/containerd/runc) would be shared
        // by every containerd on the machine.
        ("Root", path(&cfg.state.join("runc"))),
        (
            "SystemdCgroup",
            Value::Boolean(facts.driver == CgroupDriver::Systemd),
        ),
    ]);
    let mut runtime_entries = vec![
        (
            "containerd",
            table(vec![
                ("default_runtime_name", s("runc")),
                (
                    "runtimes",
                    table(vec![(
                        "runc",
                        table(vec![
                            ("runtime_type", s("io.containerd.runc.v2")),
                            ("options", runc_options),
                        ]),
                    )]),
                ),
            ]),
        ),
        (
            "cni",
            table(vec![
                ("bin_dirs", Value::Array(vec![path(&cfg.cni_bin_dir)])),
                ("conf_dir", path(&cfg.cni_conf_dir)),
            ]),
        ),
    ];
    // Pod network namespaces live under containerd's state dir, so a full
    // stop of the agent can release them with the rest of its mounts.
    runtime_entries.push(("netns_mounts_under_state_dir", Value::Boolean(true)));
    if facts.restrict_oom_score_adj {
        // Never ask runc for an oom_score_adj below containerd's own.
        runtime_entries.push(("restrict_oom_score_adj", Value::Boolean(true)));
    }
    let runtime = table(runtime_entries);
    let images = table(vec![
        ("snapshotter", s("overlayfs")),
        (
            "pinned_images",
            table(vec![("sandbox", s(&cfg.pause_image))]),
        ),
    ]);
    let cri = table(vec![
        ("stream_server_address", s("127.0.0.1")),
        ("stream_server_port", s("0")),
    ]);
    let doc = table(vec![
        ("version", Value::Integer(4)),
        ("root", path(&cfg.root)),
        ("state", path(&cfg.state)),
        // NRI listens on a fixed host-wide socket; selfnode does not use it.
        (
            "disabled_plugins",
            Value::Array(vec![s("io.containerd.nri.v1.nri")]),
        ),
        (
            "plugins",
            table(vec![
                ("io.containerd.cri.v1.images", images),
                ("io.containerd.cri.v1.runtime", runtime),
                ("io.containerd.grpc.v1.cri", cri),
                // Format 4 moved the listeners into server plugins. Both are set so two
                // containerds on one machine (test hosts) never share a socket.
                (
                    "io.containerd.server.v1.grpc",
                    table(vec![("address", path(&cfg.socket))]),
                ),
                (
                    "io.containerd.server.v1.ttrpc",
                    table(vec![(
                        "address",
                        s(format!("{}.ttrpc", cfg.socket.display())),
                    )]),
                ),
            ]),
        ),
    ]);
    let body = toml::to_string(&doc).unwrap_or_default();
    format!("# Written by selfnode agent; changes are overwritten at the next start.\n{body}")
}

/// The socket a containerd config rendered by [`render_containerd`] makes
/// containerd listen on; `None` when the text does not say.
pub fn containerd_socket_in(text: &str) -> Option<PathBuf> {
    let doc: toml::Table = toml::from_str(text).ok()?;
    doc.get("plugins")?
        .get("io.containerd.server.v1.grpc")?
        .get("address")?
        .as_str()
        .map(PathBuf::from)
}

/// Inputs for the KubeletConfiguration.
#[derive(Debug, Clone)]
pub struct KubeletInputs {
    pub containerd_socket: PathBuf,
    pub healthz_port: u16,
    pub static_pod_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub volume_plugin_dir: PathBuf,
    /// Whether the node belongs to a cluster (a kubeconfig exists). Without
    /// one, the kubelet runs standalone and its API server stays off.
    pub in_cluster: bool,
    pub client_ca: Option<PathBuf>,
    /// The cluster DNS Service IP(s) pods get in their resolv.conf.
    pub cluster_dns: Vec<std::net::IpAddr>,
    /// The cluster's DNS domain (`cluster.local` unless configured): the
    /// search paths pods get.
    pub cluster_domain: String,
    /// `cgroupRoot`; `None`: the root cgroup (the kubelet's default).
    pub cgroup_root: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct KubeletConfiguration {
    kind: &'static str,
    api_version: &'static str,
    container_runtime_endpoint: String,
    cgroup_driver: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fail_cgroup_v1: Option<bool>,
    healthz_bind_address: &'static str,
    healthz_port: u16,
    read_only_port: u16,
    enable_server: bool,
    authentication: KubeletAuthn,
    authorization: KubeletAuthz,
    static_pod_path: String,
    pod_logs_dir: String,
    volume_plugin_dir: String,
    cluster_domain: String,
    #[serde(rename = "clusterDNS", skip_serializing_if = "Vec::is_empty")]
    cluster_dns: Vec<String>,
    rotate_certificates: bool,
    #[serde(rename = "serverTLSBootstrap")]
    server_tls_bootstrap: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup_root: Option<String>,
    resolv_conf: &'static str,
    eviction_hard: BTreeMap<&'static str, &'static str>,
    tls_min_version: &'static str,
    tls_cipher_suites: &'static [&'static str],
    seccomp_default: bool,
    pod_pids_limit: i64,
    protect_kernel_defaults: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct KubeletAuthn {
    anonymous: Enabled,
    webhook: Enabled,
    #[serde(skip_serializing_if = "Option::is_none")]
    x509: Option<X509>,
}

#[derive(Debug, Serialize)]
struct Enabled {
    enabled: bool,
}

#[derive(Debug, Serialize)]
struct X509 {
    #[serde(rename = "clientCAFile")]
    client_ca_file: String,
}

#[derive(Debug, Serialize)]
struct KubeletAuthz {
    mode: &'static str,
}

/// Hard eviction thresholds, absolute where the kubelet's defaults are
/// percentages. The defaults (`nodefs.available<10%`,
/// `imagefs.available<15%`) scale with the disk, not with what a node needs:
/// on a large shared disk (this project's test machines: 252 GiB with about
/// 40 GiB, 16%, free) one build pushes the node under 15%, the kubelet
/// taints it `disk-pressure`, and every new pod without that toleration
/// (CoreDNS, user workloads) stays Pending while tens of GiB are free.
/// A kubelet given some thresholds sets the others to zero, so all five are
/// given.
fn eviction_hard() -> BTreeMap<&'static str, &'static str> {
    [
        ("memory.available", "100Mi"),
        ("nodefs.available", "1Gi"),
        ("nodefs.inodesFree", "5%"),
        ("imagefs.available", "1Gi"),
        ("imagefs.inodesFree", "5%"),
    ]
    .into_iter()
    .collect()
}

/// `podPidsLimit`: processes and threads one pod may run. A fork bomb in a
/// pod stops there instead of taking the node's PIDs (the kernel's default
/// `pid_max` is 4194304 on 64-bit hosts, often 32768); the control-plane
/// components run a few hundred threads at most.
pub const POD_PIDS_LIMIT: i64 = 4096;

/// The KubeletConfiguration, as JSON (a YAML subset the kubelet reads).
///
/// Secure by default: no read-only port, no anonymous requests, TLS 1.2
/// at least with the control plane's cipher suites, the runtime's default
/// seccomp profile for every container that names none, at most
/// [`POD_PIDS_LIMIT`] processes per pod, `protectKernelDefaults` where the
/// host's kernel settings hold the kubelet's values, and in a cluster
/// webhook authentication and authorization against the API server and a
/// serving certificate signed by the cluster CA (`serverTLSBootstrap`).
/// A standalone kubelet has no API server to ask, so it serves no API at all
/// (`enableServer: false`); only healthz on loopback.
pub fn render_kubelet(k: &KubeletInputs, facts: HostFacts) -> String {
    let cfg = KubeletConfiguration {
        kind: "KubeletConfiguration",
        api_version: "kubelet.config.k8s.io/v1beta1",
        container_runtime_endpoint: format!("unix://{}", k.containerd_socket.display()),
        cgroup_driver: facts.driver.as_str(),
        // Kubernetes >= 1.35 refuses cgroup v1 unless told otherwise.
        fail_cgroup_v1: (facts.cgroup == CgroupVersion::V1).then_some(false),
        healthz_bind_address: "127.0.0.1",
        healthz_port: k.healthz_port,
        read_only_port: 0,
        enable_server: k.in_cluster,
        authentication: KubeletAuthn {
            anonymous: Enabled { enabled: false },
            webhook: Enabled {
                enabled: k.in_cluster,
            },
            x509: k.client_ca.as_ref().map(|p| X509 {
                client_ca_file: p.display().to_string(),
            }),
        },
        authorization: KubeletAuthz {
            mode: if k.in_cluster {
                "Webhook"
            } else {
                "AlwaysAllow"
            },
        },
        static_pod_path: k.static_pod_dir.display().to_string(),
        pod_logs_dir: k.pod_logs_dir.display().to_string(),
        volume_plugin_dir: k.volume_plugin_dir.display().to_string(),
        cluster_domain: k.cluster_domain.clone(),
        cluster_dns: k.cluster_dns.iter().map(|ip| ip.to_string()).collect(),
        rotate_certificates: k.in_cluster,
        // Its serving certificate from the cluster CA, asked for with a
        // request the control-plane hosts' approver checks against the
        // Node's addresses (`agent::tasks::approver`); the API server
        // verifies it (`--kubelet-certificate-authority`). No self-signed
        // certificate is made.
        server_tls_bootstrap: k.in_cluster,
        cgroup_root: k.cgroup_root.clone(),
        resolv_conf: "/etc/resolv.conf",
        eviction_hard: eviction_hard(),
        // The control plane's TLS settings (bootstrap's `plane::tls`).
        tls_min_version: bootstrap::plane::TLS_MIN_VERSION,
        tls_cipher_suites: &bootstrap::plane::TLS_CIPHER_SUITES,
        seccomp_default: true,
        pod_pids_limit: POD_PIDS_LIMIT,
        protect_kernel_defaults: facts.kernel_defaults,
    };
    let mut out = serde_json::to_string_pretty(&cfg).unwrap_or_default();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_CGROUPFS: HostFacts = HostFacts {
        cgroup: CgroupVersion::V1,
        driver: CgroupDriver::Cgroupfs,
        restrict_oom_score_adj: false,
        kernel_defaults: true,
    };

    fn golden(name: &str, actual: &str) {
        testkit::golden(env!("CARGO_MANIFEST_DIR"), name, actual);
    }

    fn containerd_cfg() -> ContainerdConfig {
        ContainerdConfig {
            root: "/var/lib/selfnode/containerd".into(),
            state: "/run/selfnode/containerd".into(),
            socket: "/run/selfnode/containerd/containerd.sock".into(),
            pause_image: "registry.k8s.io/pause:3.10.2".into(),
            runc: "/var/cache/selfnode/bundle/bin/runc".into(),
            cni_bin_dir: "/var/cache/selfnode/bundle/cni/bin".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
        }
    }

    fn kubelet_inputs(in_cluster: bool) -> KubeletInputs {
        KubeletInputs {
            containerd_socket: "/run/selfnode/containerd/containerd.sock".into(),
            healthz_port: 10248,
            static_pod_dir: "/etc/kubernetes/manifests".into(),
            pod_logs_dir: "/var/log/pods".into(),
            volume_plugin_dir: "/usr/libexec/kubernetes/kubelet-plugins/volume/exec".into(),
            in_cluster,
            client_ca: in_cluster.then(|| "/etc/kubernetes/pki/ca.crt".into()),
            cluster_dns: if in_cluster {
                vec!["10.96.0.10".parse().unwrap()]
            } else {
                Vec::new()
            },
            cluster_domain: "cluster.local".into(),
            cgroup_root: None,
        }
    }

    #[test]
    fn a_cgroup_root_reaches_the_kubelet_configuration() {
        let mut k = kubelet_inputs(true);
        let text = render_kubelet(&k, V1_CGROUPFS);
        assert!(
            !text.contains("cgroupRoot"),
            "the kubelet's default: {text}"
        );
        k.cgroup_root = Some("/selfnode-node2".into());
        let v: serde_json::Value = serde_json::from_str(
            render_kubelet(&k, V1_CGROUPFS)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
                .as_str(),
        )
        .unwrap();
        assert_eq!(v["cgroupRoot"], "/selfnode-node2");
    }

    #[test]
    fn containerd_config_golden() {
        golden(
            "containerd-v1-cgroupfs.toml",
            &render_containerd(&containerd_cfg(), V1_CGROUPFS),
        );
    }

    #[test]
    fn the_socket_is_read_back_from_a_rendered_config() {
        let cfg = containerd_cfg();
        let text = render_containerd(&cfg, V1_CGROUPFS);
        assert_eq!(containerd_socket_in(&text), Some(cfg.socket));
        assert_eq!(containerd_socket_in("version = 3\n"), None);
    }

    #[test]
    fn containerd_uses_systemd_cgroups_only_under_systemd() {
        let facts = HostFacts {
            cgroup: CgroupVersion::V2,
            driver: CgroupDriver::Systemd,
            restrict_oom_score_adj: false,
            kernel_defaults: true,
        };
        assert!(render_containerd(&containerd_cfg(), facts).contains("SystemdCgroup = true"));
        assert!(render_containerd(&containerd_cfg(), V1_CGROUPFS).contains("SystemdCgroup = false"));
    }

    #[test]
    fn oom_score_adj_is_restricted_only_without_cap_sys_resource() {
        let restricted = HostFacts {
            restrict_oom_score_adj: true,
            ..V1_CGROUPFS
        };
        assert!(render_containerd(&containerd_cfg(), restricted)
            .contains("restrict_oom_score_adj = true"));
        assert!(
            !render_containerd(&containerd_cfg(), V1_CGROUPFS).contains("restrict_oom_score_adj")
        );
    }

    #[test]
    fn kubelet_standalone_golden() {
        golden(
            "kubelet-standalone.json",
            &render_kubelet(&kubelet_inputs(false), V1_CGROUPFS),
        );
    }

    #[test]
    fn kubelet_in_cluster_golden() {
        golden(
            "kubelet-in-cluster.json",
            &render_kubelet(&kubelet_inputs(true), V1_CGROUPFS),
        );
    }

    #[test]
    fn the_kubelet_serves_tls_1_2_at_least_with_the_control_planes_cipher_suites() {
        let out: serde_json::Value =
            serde_json::from_str(&render_kubelet(&kubelet_inputs(true), V1_CGROUPFS)).unwrap();
        assert_eq!(out["tlsMinVersion"], "VersionTLS12");
        assert_eq!(
            out["tlsCipherSuites"],
            serde_json::json!(bootstrap::plane::TLS_CIPHER_SUITES)
        );
    }

    #[test]
    fn seccomp_by_default_a_pid_limit_and_kernel_defaults_protected_where_they_hold() {
        let out: serde_json::Value =
            serde_json::from_str(&render_kubelet(&kubelet_inputs(true), V1_CGROUPFS)).unwrap();
        assert_eq!(out["seccompDefault"], true);
        assert_eq!(out["podPidsLimit"], 4096);
        assert_eq!(out["protectKernelDefaults"], true);
        let unset = HostFacts {
            kernel_defaults: false,
            ..V1_CGROUPFS
        };
        let out: serde_json::Value =
            serde_json::from_str(&render_kubelet(&kubelet_inputs(true), unset)).unwrap();
        assert_eq!(out["protectKernelDefaults"], false);
    }

    #[test]
    fn the_configured_cluster_domain_reaches_the_kubelet() {
        let mut k = kubelet_inputs(true);
        k.cluster_domain = "lab.internal".into();
        let out: serde_json::Value =
            serde_json::from_str(&render_kubelet(&k, V1_CGROUPFS)).unwrap();
        assert_eq!(out["clusterDomain"], "lab.internal");
    }

    #[test]
    fn kubelet_on_cgroup_v2_keeps_the_upstream_default() {
        let facts = HostFacts {
            cgroup: CgroupVersion::V2,
            driver: CgroupDriver::Systemd,
            restrict_oom_score_adj: false,
            kernel_defaults: true,
        };
        let out = render_kubelet(&kubelet_inputs(true), facts);
        assert!(!out.contains("failCgroupV1"));
        assert!(out.contains(r#""cgroupDriver": "systemd""#));
    }
}
