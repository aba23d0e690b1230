//! The one place that builds each component's command line.
//!
//! Flags are kubeadm's (`phases/controlplane/manifests.go`,
//! `phases/etcd/local.go`) with the differences written next to them. Every
//! value that names a file is a [`Value::File`], so the self-hosted objects
//! know exactly which files to put in Secrets and mount (at the same paths).

use std::path::{Path, PathBuf};

use super::spec::https_url;
use super::{Placement, PlaneSpec, ENCRYPTION_CONFIG_FILE};
use crate::pki::names;

/// Name of the environment variable the self-hosted kube-apiserver pod gets
/// from `status.hostIP` (its node's address) and passes as
/// `--advertise-address=$(HOST_IP)`: one DaemonSet serves every
/// control-plane node, each advertising itself.
pub(crate) const HOST_IP_ENV: &str = "HOST_IP";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Text(String),
    /// A file the component reads (must be present where it runs).
    File(PathBuf),
    /// A directory the component owns (etcd's data dir; host only).
    Dir(PathBuf),
    /// A file the component writes (the apiserver's audit log), in a
    /// directory the pods mount from the host.
    Output(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Flag {
    pub name: &'static str,
    pub value: Value,
}

/// A component's flags, rendered sorted by name (as kubeadm does), one
/// `--name=value` each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Flags(Vec<Flag>);

impl Flags {
    fn text(&mut self, name: &'static str, value: impl Into<String>) -> &mut Self {
        self.0.push(Flag {
            name,
            value: Value::Text(value.into()),
        });
        self
    }

    fn file(&mut self, name: &'static str, path: PathBuf) -> &mut Self {
        self.0.push(Flag {
            name,
            value: Value::File(path),
        });
        self
    }

    fn dir(&mut self, name: &'static str, path: PathBuf) -> &mut Self {
        self.0.push(Flag {
            name,
            value: Value::Dir(path),
        });
        self
    }

    fn output(&mut self, name: &'static str, path: PathBuf) -> &mut Self {
        self.0.push(Flag {
            name,
            value: Value::Output(path),
        });
        self
    }

    fn sorted(&self) -> Vec<&Flag> {
        let mut v: Vec<&Flag> = self.0.iter().collect();
        v.sort_by_key(|f| f.name);
        v
    }

    /// `--name=value` arguments, sorted by name.
    pub fn args(&self) -> Vec<String> {
        self.sorted()
            .into_iter()
            .map(|f| {
                let value = match &f.value {
                    Value::Text(s) => s.clone(),
                    Value::File(p) | Value::Dir(p) | Value::Output(p) => p.display().to_string(),
                };
                format!("--{}={value}", f.name)
            })
            .collect()
    }

    /// Every file a flag names, sorted, without duplicates.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .0
            .iter()
            .filter_map(|f| match &f.value {
                Value::File(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        files.sort();
        files.dedup();
        files
    }

    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|f| f.name == name).map(|f| &f.value)
    }
}

fn crt(spec: &PlaneSpec, base: &str) -> PathBuf {
    spec.pki_dir.join(format!("{base}.crt"))
}

fn key(spec: &PlaneSpec, base: &str) -> PathBuf {
    spec.pki_dir.join(format!("{base}.key"))
}

fn kubeconfig(spec: &PlaneSpec, file: &str) -> PathBuf {
    spec.kubeconfig_dir.join(file)
}

/// The encryption configuration's path: it lives with the keys.
pub(crate) fn encryption_config_path(pki_dir: &Path) -> PathBuf {
    pki_dir.join(ENCRYPTION_CONFIG_FILE)
}

/// etcd's `--heartbeat-interval`, in milliseconds (see [`etcd`]).
pub const ETCD_HEARTBEAT_MS: u32 = 500;
/// etcd's `--election-timeout`, in milliseconds: ten heartbeats.
pub const ETCD_ELECTION_TIMEOUT_MS: u32 = 5000;

/// etcd, for either member. kubeadm's flags, except:
/// - TLS 1.2 at least and selfnode's cipher suites, on the client and peer
///   listeners alike (`plane::tls`);
/// - no `--listen-metrics-urls=http://127.0.0.1:2381`: that listener has no
///   authentication; health is checked on the client port with the
///   healthcheck client certificate instead, and metrics are there too;
/// - the temporary member listens on its own ports and data directory, so
///   both run on the first node while the self-hosted member joins;
/// - `--initial-cluster`/`--initial-cluster-state` come from `initial`: etcd
///   reads them only when its data directory is empty;
/// - `--quota-backend-bytes` always set, from the cluster's settings
///   (default 8 GiB where etcd's own is 2 GiB): at the quota etcd raises
///   NOSPACE and the cluster takes no writes; the agent's etcd-upkeep task
///   defragments and disarms;
/// - `--heartbeat-interval=500` and `--election-timeout=5000` (ms) where
///   etcd's defaults are 100 and 1000, the values etcd's tuning guide gives
///   for slow networks and that OpenShift uses on its slower clouds. Under
///   a starved CPU (an emulated appliance running both members and two
///   apiservers during the pivot) raft messages took longer than the
///   1-2 s election timeout: the two members started election after
///   election and had no leader for 90 s at a time. The cost is the time
///   to notice a dead leader (about 5 s instead of 1 s), which the
///   Kubernetes clients ride out with their retries; a commit never waits
///   for a heartbeat.
pub(crate) fn etcd(spec: &PlaneSpec, placement: Placement, initial: &EtcdInitial) -> Flags {
    let peer = spec.etcd_peer_url(placement);
    let client = https_url(
        spec.advertise_address,
        spec.ports.etcd_client_port(placement),
    );
    let mut f = Flags::default();
    f.text("name", spec.etcd_member_name(placement))
        .dir("data-dir", spec.etcd_data_dir_for(placement))
        .text(
            "listen-client-urls",
            spec.etcd_client_urls(placement).join(","),
        )
        .text("advertise-client-urls", client)
        .text("listen-peer-urls", &peer)
        .text("initial-advertise-peer-urls", &peer)
        .text("initial-cluster", initial.cluster())
        .text("initial-cluster-state", initial.state.as_str())
        .file("cert-file", crt(spec, names::ETCD_SERVER))
        .file("key-file", key(spec, names::ETCD_SERVER))
        .file("trusted-ca-file", crt(spec, names::ETCD_CA))
        .text("client-cert-auth", "true")
        .file("peer-cert-file", crt(spec, names::ETCD_PEER))
        .file("peer-key-file", key(spec, names::ETCD_PEER))
        .file("peer-trusted-ca-file", crt(spec, names::ETCD_CA))
        .text("peer-client-cert-auth", "true")
        .text("tls-min-version", super::ETCD_TLS_MIN_VERSION)
        .text("cipher-suites", super::tls_cipher_suites_flag())
        .text("snapshot-count", "10000")
        .text(
            "quota-backend-bytes",
            spec.etcd_quota_backend_bytes.to_string(),
        )
        .text("feature-gates", "InitialCorruptCheck=true")
        .text("watch-progress-notify-interval", "5s")
        .text("heartbeat-interval", ETCD_HEARTBEAT_MS.to_string())
        .text("election-timeout", ETCD_ELECTION_TIMEOUT_MS.to_string());
    f
}

/// How an etcd member starts when its data directory is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdInitial {
    /// `name=peer URL` of every member, this one included.
    pub members: Vec<(String, String)>,
    /// `--initial-cluster-state`.
    pub state: InitialClusterState,
}

/// etcd's `--initial-cluster-state`: found a new cluster or join one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialClusterState {
    /// A cluster of its own (the temporary member; a restored member).
    New,
    /// Joins members that already run (after `member add`).
    Existing,
}

impl InitialClusterState {
    fn as_str(self) -> &'static str {
        match self {
            InitialClusterState::New => "new",
            InitialClusterState::Existing => "existing",
        }
    }
}

impl EtcdInitial {
    /// A one-member cluster of the member at `placement`.
    pub fn alone(spec: &PlaneSpec, placement: Placement) -> Self {
        EtcdInitial {
            members: vec![(
                spec.etcd_member_name(placement),
                spec.etcd_peer_url(placement),
            )],
            state: InitialClusterState::New,
        }
    }

    /// The self-hosted member joining the temporary one (the pivot).
    pub fn join_temporary(spec: &PlaneSpec) -> Self {
        let member = |p| (spec.etcd_member_name(p), spec.etcd_peer_url(p));
        EtcdInitial {
            members: vec![member(Placement::Temporary), member(Placement::SelfHosted)],
            state: InitialClusterState::Existing,
        }
    }

    fn cluster(&self) -> String {
        self.members
            .iter()
            .map(|(name, url)| format!("{name}={url}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// kube-apiserver. kubeadm's flags plus `--encryption-provider-config`
/// (secrets encrypted at rest), `--profiling=false`, the audit log
/// (`--audit-policy-file`, `--audit-log-*`), Pod Security admission
/// (`--admission-control-config-file`, `plane::admission`),
/// `--service-account-extend-token-expiration=false` and TLS 1.2 at least
/// with selfnode's cipher suites (`plane::tls`). Placement decides:
/// - `--secure-port`: the temporary one moves aside so both serve during
///   the pivot;
/// - `--endpoint-reconciler-type=none` for the temporary one, so only
///   apiservers that stay are ever written into the `kubernetes` Endpoints;
/// - `--advertise-address`: literal for the process, `$(HOST_IP)` for the
///   DaemonSet (the kubelet expands it from the pod's env).
///
/// The kubelets' serving certificates are checked against the cluster CA
/// (`--kubelet-certificate-authority`): every kubelet asks for one
/// (`serverTLSBootstrap`) and selfnode's approver approves only a node's
/// own names and addresses. Not set: `--anonymous-auth` keeps its default (true) as in
/// kubeadm: RBAC lets anonymous requests reach only the health and version
/// endpoints (`system:public-info-viewer`), which the kubelet's probes need.
pub(crate) fn apiserver(spec: &PlaneSpec, placement: Placement) -> Flags {
    let advertise = match placement {
        Placement::Temporary => spec.advertise_address.to_string(),
        Placement::SelfHosted => format!("$({HOST_IP_ENV})"),
    };
    let mut f = Flags::default();
    f.text("advertise-address", advertise)
        .text(
            "secure-port",
            spec.ports.apiserver_port(placement).to_string(),
        )
        .text("allow-privileged", "true")
        .text("authorization-mode", "Node,RBAC")
        // Added to the default plugins (PodSecurity among them), which
        // plane::admission configures.
        .text("enable-admission-plugins", "NodeRestriction")
        .file(
            "admission-control-config-file",
            super::admission_config_path(&spec.kubeconfig_dir),
        )
        .text("enable-bootstrap-token-auth", "true")
        .file("client-ca-file", crt(spec, names::CA))
        .file("tls-cert-file", crt(spec, names::APISERVER))
        .file("tls-private-key-file", key(spec, names::APISERVER))
        .text("tls-min-version", super::TLS_MIN_VERSION)
        .text("tls-cipher-suites", super::tls_cipher_suites_flag())
        .file(
            "kubelet-client-certificate",
            crt(spec, names::APISERVER_KUBELET_CLIENT),
        )
        .file(
            "kubelet-client-key",
            key(spec, names::APISERVER_KUBELET_CLIENT),
        )
        .file("kubelet-certificate-authority", crt(spec, names::CA))
        .text(
            "kubelet-preferred-address-types",
            "InternalIP,ExternalIP,Hostname",
        )
        // The member on this node, on loopback: the temporary one, or the
        // self-hosted one (its static pod runs on every control-plane node).
        .text(
            "etcd-servers",
            https_url(spec.loopback(), spec.ports.etcd_client_port(placement)),
        )
        .file("etcd-cafile", crt(spec, names::ETCD_CA))
        .file("etcd-certfile", crt(spec, names::APISERVER_ETCD_CLIENT))
        .file("etcd-keyfile", key(spec, names::APISERVER_ETCD_CLIENT))
        .text("service-cluster-ip-range", spec.service_cidr.to_string())
        .file("service-account-key-file", spec.pki_dir.join(names::SA_PUB))
        .file(
            "service-account-signing-key-file",
            spec.pki_dir.join(names::SA_KEY),
        )
        .text(
            "service-account-issuer",
            format!("https://kubernetes.default.svc.{}", spec.cluster_domain),
        )
        // A pod's token lives its hour, not a year (CIS 1.2.30); clients
        // reload it (client-go and kube-rs both do).
        .text("service-account-extend-token-expiration", "false")
        .text("requestheader-username-headers", "X-Remote-User")
        .text("requestheader-group-headers", "X-Remote-Group")
        .text("requestheader-extra-headers-prefix", "X-Remote-Extra-")
        .file(
            "requestheader-client-ca-file",
            crt(spec, names::FRONT_PROXY_CA),
        )
        .text("requestheader-allowed-names", "front-proxy-client")
        .file(
            "proxy-client-cert-file",
            crt(spec, names::FRONT_PROXY_CLIENT),
        )
        .file(
            "proxy-client-key-file",
            key(spec, names::FRONT_PROXY_CLIENT),
        )
        .file(
            "encryption-provider-config",
            encryption_config_path(&spec.pki_dir),
        )
        .text("profiling", "false")
        // The audit log (plane::audit). The temporary apiserver, which runs
        // beside the self-hosted one on the first host, writes its own file.
        .file(
            "audit-policy-file",
            super::audit_policy_path(&spec.kubeconfig_dir),
        )
        .output(
            "audit-log-path",
            spec.audit_log_dir.join(match placement {
                Placement::Temporary => "kube-apiserver-temporary.log",
                Placement::SelfHosted => "kube-apiserver.log",
            }),
        )
        .text("audit-log-maxage", super::AUDIT_LOG_MAXAGE_DAYS.to_string())
        .text(
            "audit-log-maxbackup",
            super::AUDIT_LOG_MAXBACKUP.to_string(),
        )
        .text("audit-log-maxsize", super::AUDIT_LOG_MAXSIZE_MB.to_string())
        // SO_REUSEPORT: an upgraded pod binds beside the old one (surge).
        .text("permit-port-sharing", "true");
    if placement == Placement::Temporary {
        f.text("endpoint-reconciler-type", "none");
    }
    // The static admission policies (plane::admission) are beta and on
    // from 1.37; the previous minor has them as alpha, off unless asked.
    if spec.kubernetes_minor() < 37 {
        f.text("feature-gates", "ManifestBasedAdmissionControlConfig=true");
    }
    f
}

/// kube-controller-manager. kubeadm's flags (with the Pod CIDR given, so
/// node CIDR allocation on) plus `--profiling=false`, an explicit
/// `--secure-port` (the temporary one moves aside during the pivot) and
/// the apiserver's TLS settings (it serves on loopback only; the same
/// settings everywhere keep scanners quiet).
pub(crate) fn controller_manager(spec: &PlaneSpec, placement: Placement) -> Flags {
    let conf = kubeconfig(spec, names::CONTROLLER_MANAGER_CONF);
    let ca = crt(spec, names::CA);
    let mut f = Flags::default();
    f.text("bind-address", spec.loopback().to_string())
        .text(
            "secure-port",
            spec.ports.controller_manager_port(placement).to_string(),
        )
        .text("leader-elect", "true")
        .file("kubeconfig", conf.clone())
        .file("authentication-kubeconfig", conf.clone())
        .file("authorization-kubeconfig", conf)
        .file("client-ca-file", ca.clone())
        .file(
            "requestheader-client-ca-file",
            crt(spec, names::FRONT_PROXY_CA),
        )
        .file("root-ca-file", ca.clone())
        .file(
            "service-account-private-key-file",
            spec.pki_dir.join(names::SA_KEY),
        )
        .file("cluster-signing-cert-file", ca)
        .file("cluster-signing-key-file", key(spec, names::CA))
        .text("use-service-account-credentials", "true")
        .text("controllers", "*,bootstrapsigner,tokencleaner")
        .text("allocate-node-cidrs", "true")
        .text("cluster-cidr", spec.pod_cidr.to_string())
        .text("service-cluster-ip-range", spec.service_cidr.to_string())
        .text("cluster-name", &spec.cluster_name)
        .text("profiling", "false")
        .text("tls-min-version", super::TLS_MIN_VERSION)
        .text("tls-cipher-suites", super::tls_cipher_suites_flag())
        .text("permit-port-sharing", "true");
    f
}

/// kube-scheduler. kubeadm's flags plus `--profiling=false`, an explicit
/// `--secure-port` and the apiserver's TLS settings.
pub(crate) fn scheduler(spec: &PlaneSpec, placement: Placement) -> Flags {
    let conf = kubeconfig(spec, names::SCHEDULER_CONF);
    let mut f = Flags::default();
    f.text("bind-address", spec.loopback().to_string())
        .text(
            "secure-port",
            spec.ports.scheduler_port(placement).to_string(),
        )
        .text("leader-elect", "true")
        .file("kubeconfig", conf.clone())
        .file("authentication-kubeconfig", conf.clone())
        .file("authorization-kubeconfig", conf)
        .text("profiling", "false")
        .text("tls-min-version", super::TLS_MIN_VERSION)
        .text("tls-cipher-suites", super::tls_cipher_suites_flag())
        .text("permit-port-sharing", "true");
    f
}
