//! [`PlaneSpec`]: what the control plane must look like, and its validation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::Placement;
use crate::config::InitSettings;
use crate::pki::{PkiSpec, PkiSpecError};

/// Where this node's self-hosted etcd member keeps its data (the temporary
/// member uses a sibling, see [`PlaneSpec::temp_etcd_data_dir`]).
pub const DEFAULT_ETCD_DATA_DIR: &str = "/var/lib/selfnode/etcd";

/// The temporary member's data directory during init's pivot, beside the
/// member's `data_dir`: `<data_dir>-bootstrap` (`/var/lib/selfnode/etcd` →
/// `/var/lib/selfnode/etcd-bootstrap`).
pub fn temp_etcd_data_dir_beside(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "etcd".into());
    name.push("-bootstrap");
    data_dir.with_file_name(name)
}

/// The Pod network when the user gives none (kubeadm has no default; this is
/// the common one of flannel and many guides).
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";

/// The desired control plane of a cluster, as seen from its first node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneSpec {
    /// Cluster name (kubeconfigs, controller-manager's `--cluster-name`).
    pub cluster_name: String,
    /// This node's name (a lowercase DNS name); also etcd's member name.
    pub node_name: String,
    /// The address this node serves etcd and the API on; reachable by the
    /// other nodes and by pods, so neither loopback nor unspecified.
    pub advertise_address: IpAddr,
    /// Pod network; the controller-manager gives each node a /24 (IPv4) or
    /// /64 (IPv6) of it.
    pub pod_cidr: IpNet,
    /// Service network; its first address is the `kubernetes` Service, its
    /// tenth the cluster DNS Service (as kubeadm).
    pub service_cidr: IpNet,
    /// Cluster DNS domain.
    pub cluster_domain: String,
    /// Extra subject alternative names of the API server's serving
    /// certificate (IP addresses or DNS names), beyond the node's own.
    pub extra_sans: Vec<String>,
    /// Ordinary pods may run on this control-plane node: it gets the
    /// control-plane label but not the `NoSchedule` taint.
    pub allow_workloads: bool,
    /// `vX.Y.Z` of the control-plane images (a label on the workloads, for
    /// skew checks).
    pub kubernetes_version: String,
    /// Images of the self-hosted components.
    pub images: PlaneImages,
    /// Certificates and keys (kubeadm's layout), on the host and in the pods.
    pub pki_dir: PathBuf,
    /// Kubeconfig files, on the host and in the pods.
    pub kubeconfig_dir: PathBuf,
    /// The self-hosted etcd member's data directory on this node.
    pub etcd_data_dir: PathBuf,
    /// etcd's `--quota-backend-bytes`, on the temporary member and every
    /// self-hosted one.
    pub etcd_quota_backend_bytes: u64,
    /// Where each control-plane host's kube-apiservers write their audit
    /// logs (see `plane::audit`).
    pub audit_log_dir: PathBuf,
    /// Where containerd reads CNI configurations on the host; the network
    /// agent writes there through a hostPath mount.
    pub cni_conf_dir: PathBuf,
    /// TCP ports of the temporary and self-hosted components.
    pub ports: PlanePorts,
    /// Replica counts of the self-hosted Deployments.
    pub replicas: PlaneReplicas,
    /// kube-proxy's `conntrack.maxPerCore`. `None` keeps kube-proxy's default
    /// (32768 per core, written to the host's `nf_conntrack_max`); `Some(0)`
    /// leaves the host's setting alone, which hosts that are network
    /// namespaces of one machine need (the sysctl is not per namespace).
    pub kube_proxy_conntrack_max_per_core: Option<i32>,
}

/// Image references of the self-hosted components (upstream names, e.g.
/// `registry.k8s.io/kube-apiserver:v1.37.2`; the `dist` crate knows them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneImages {
    /// kube-apiserver (`registry.k8s.io/kube-apiserver:<vX.Y.Z>`).
    pub kube_apiserver: String,
    /// kube-controller-manager.
    pub kube_controller_manager: String,
    /// kube-scheduler.
    pub kube_scheduler: String,
    /// kube-proxy (a DaemonSet on every node).
    pub kube_proxy: String,
    /// CoreDNS, the cluster DNS.
    pub coredns: String,
    /// etcd (`registry.k8s.io/etcd:<X.Y.Z>-0`), the self-hosted members'
    /// static pods.
    pub etcd: String,
    /// selfnode's own image (`localhost/selfnode:<version>`): the pod
    /// network's agent.
    pub selfnode: String,
}

/// TCP ports. Temporary and self-hosted components both bind on the node
/// during the pivot, so each has its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanePorts {
    /// The self-hosted etcd member.
    pub etcd_client: u16,
    /// The self-hosted etcd member's peer port.
    pub etcd_peer: u16,
    /// The temporary etcd member: both run during the pivot.
    pub temp_etcd_client: u16,
    /// The temporary etcd member's peer port.
    pub temp_etcd_peer: u16,
    /// The self-hosted kube-apiserver (the port in the `kubernetes` Endpoints).
    pub apiserver: u16,
    /// The temporary kube-apiserver.
    pub temp_apiserver: u16,
    /// The self-hosted kube-controller-manager's `--secure-port`.
    pub controller_manager: u16,
    /// The temporary kube-controller-manager's `--secure-port`.
    pub temp_controller_manager: u16,
    /// The self-hosted kube-scheduler's `--secure-port`.
    pub scheduler: u16,
    /// The temporary kube-scheduler's `--secure-port`.
    pub temp_scheduler: u16,
    /// The node-local API load balancer on loopback that every client on a
    /// node uses (kubeconfigs, kube-proxy).
    pub api_load_balancer: u16,
}

/// The node-local API load balancer's port when the agent is given none
/// (`selfnode agent --api-lb-port`).
pub const DEFAULT_API_LB_PORT: u16 = 7445;

impl Default for PlanePorts {
    fn default() -> Self {
        PlanePorts {
            etcd_client: 2379,
            etcd_peer: 2380,
            temp_etcd_client: 12379,
            temp_etcd_peer: 12380,
            apiserver: 6443,
            temp_apiserver: 6444,
            controller_manager: 10257,
            temp_controller_manager: 10357,
            scheduler: 10259,
            temp_scheduler: 10359,
            api_load_balancer: DEFAULT_API_LB_PORT,
        }
    }
}

impl PlanePorts {
    /// The etcd client port of the member at `placement`.
    pub fn etcd_client_port(&self, placement: Placement) -> u16 {
        match placement {
            Placement::Temporary => self.temp_etcd_client,
            Placement::SelfHosted => self.etcd_client,
        }
    }

    /// The etcd peer port of the member at `placement`.
    pub fn etcd_peer_port(&self, placement: Placement) -> u16 {
        match placement {
            Placement::Temporary => self.temp_etcd_peer,
            Placement::SelfHosted => self.etcd_peer,
        }
    }

    /// The kube-apiserver port at `placement`.
    pub fn apiserver_port(&self, placement: Placement) -> u16 {
        match placement {
            Placement::Temporary => self.temp_apiserver,
            Placement::SelfHosted => self.apiserver,
        }
    }

    /// The kube-controller-manager port at `placement`.
    pub fn controller_manager_port(&self, placement: Placement) -> u16 {
        match placement {
            Placement::Temporary => self.temp_controller_manager,
            Placement::SelfHosted => self.controller_manager,
        }
    }

    /// The kube-scheduler port at `placement`.
    pub fn scheduler_port(&self, placement: Placement) -> u16 {
        match placement {
            Placement::Temporary => self.temp_scheduler,
            Placement::SelfHosted => self.scheduler,
        }
    }

    /// Every port with its role, for validation and messages.
    fn named(&self) -> [(&'static str, u16); 11] {
        [
            ("etcd_client", self.etcd_client),
            ("etcd_peer", self.etcd_peer),
            ("temp_etcd_client", self.temp_etcd_client),
            ("temp_etcd_peer", self.temp_etcd_peer),
            ("apiserver", self.apiserver),
            ("temp_apiserver", self.temp_apiserver),
            ("controller_manager", self.controller_manager),
            ("temp_controller_manager", self.temp_controller_manager),
            ("scheduler", self.scheduler),
            ("temp_scheduler", self.temp_scheduler),
            ("api_load_balancer", self.api_load_balancer),
        ]
    }
}

/// Ports other node components bind (kubelet, kube-proxy) that the control
/// plane must leave free.
const RESERVED_PORTS: [(u16, &str); 4] = [
    (10248, "the kubelet's healthz"),
    (10250, "the kubelet's API"),
    (10249, "kube-proxy's metrics"),
    (10256, "kube-proxy's healthz"),
];

/// Replica counts of the self-hosted Deployments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneReplicas {
    /// kube-controller-manager replicas; at least 1.
    pub controller_manager: i32,
    /// kube-scheduler replicas; at least 1.
    pub scheduler: i32,
    /// CoreDNS replicas; at least 1.
    pub coredns: i32,
}

impl Default for PlaneReplicas {
    fn default() -> Self {
        PlaneReplicas {
            controller_manager: 1,
            scheduler: 1,
            coredns: 2,
        }
    }
}

/// What a [`PlaneSpec`] needs beyond the user's settings: the bundle's
/// version and images, and where this host keeps things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneEnv {
    /// `vX.Y.Z` of the bundle's Kubernetes.
    pub kubernetes_version: String,
    /// The bundle's images of the self-hosted components.
    pub images: PlaneImages,
    /// Becomes [`PlaneSpec::pki_dir`].
    pub pki_dir: PathBuf,
    /// Becomes [`PlaneSpec::kubeconfig_dir`].
    pub kubeconfig_dir: PathBuf,
    /// Becomes [`PlaneSpec::etcd_data_dir`].
    pub etcd_data_dir: PathBuf,
    /// Becomes [`PlaneSpec::audit_log_dir`].
    pub audit_log_dir: PathBuf,
    /// Becomes [`PlaneSpec::cni_conf_dir`].
    pub cni_conf_dir: PathBuf,
    /// The port of the host agent's API load balancer on loopback (`selfnode
    /// agent --api-lb-port`): becomes [`PlanePorts::api_load_balancer`], so
    /// every kubeconfig and kube-proxy point at it.
    pub api_load_balancer_port: u16,
}

impl PlaneSpec {
    /// The control plane for `settings` on a host described by `env`. Every
    /// field of [`InitSettings`] is taken apart here by name, so a setting
    /// that reaches no component is a compile error, not a silent drop.
    pub fn from_settings(settings: &InitSettings, env: PlaneEnv) -> PlaneSpec {
        let InitSettings {
            cluster_name,
            node_name,
            advertise_address,
            pod_cidr,
            service_cidr,
            cluster_domain,
            extra_sans,
            // Where the bundle is: node opens it; its version and images
            // come in through `env`.
            bundle: _,
            allow_workloads,
            etcd_quota_backend_bytes,
        } = settings;
        let PlaneEnv {
            kubernetes_version,
            images,
            pki_dir,
            kubeconfig_dir,
            etcd_data_dir,
            audit_log_dir,
            cni_conf_dir,
            api_load_balancer_port,
        } = env;
        PlaneSpec {
            cluster_name: cluster_name.clone(),
            node_name: node_name.clone(),
            advertise_address: *advertise_address,
            pod_cidr: *pod_cidr,
            service_cidr: *service_cidr,
            cluster_domain: cluster_domain.clone(),
            extra_sans: extra_sans.clone(),
            allow_workloads: *allow_workloads,
            kubernetes_version,
            images,
            pki_dir,
            kubeconfig_dir,
            etcd_data_dir,
            etcd_quota_backend_bytes: *etcd_quota_backend_bytes,
            audit_log_dir,
            cni_conf_dir,
            ports: PlanePorts {
                api_load_balancer: api_load_balancer_port,
                ..PlanePorts::default()
            },
            // One control-plane node to start with: one CoreDNS replica
            // (a second could not spread anyway).
            replicas: PlaneReplicas {
                coredns: 1,
                ..PlaneReplicas::default()
            },
            kube_proxy_conntrack_max_per_core: None,
        }
    }

    /// A spec with kubeadm's defaults (and [`DEFAULT_POD_CIDR`]) for
    /// everything but the node's identity, the version and the images.
    /// Tests only: production specs come from [`PlaneSpec::from_settings`].
    #[cfg(any(test, feature = "testing"))]
    pub fn new(
        node_name: impl Into<String>,
        advertise_address: IpAddr,
        kubernetes_version: impl Into<String>,
        images: PlaneImages,
    ) -> Self {
        PlaneSpec {
            cluster_name: crate::pki::DEFAULT_CLUSTER_NAME.to_string(),
            node_name: node_name.into(),
            advertise_address,
            pod_cidr: DEFAULT_POD_CIDR
                .parse()
                .expect("DEFAULT_POD_CIDR is a valid CIDR; every plane test starts from it"),
            service_cidr: crate::pki::DEFAULT_SERVICE_CIDR
                .parse()
                .expect("DEFAULT_SERVICE_CIDR is a valid CIDR; every pki test starts from it"),
            cluster_domain: crate::pki::DEFAULT_DNS_DOMAIN.to_string(),
            extra_sans: Vec::new(),
            allow_workloads: false,
            kubernetes_version: kubernetes_version.into(),
            images,
            pki_dir: PathBuf::from(crate::pki::DEFAULT_PKI_DIR),
            kubeconfig_dir: PathBuf::from(crate::pki::DEFAULT_KUBECONFIG_DIR),
            etcd_data_dir: PathBuf::from(DEFAULT_ETCD_DATA_DIR),
            etcd_quota_backend_bytes: crate::config::DEFAULT_ETCD_QUOTA_BACKEND_BYTES,
            audit_log_dir: PathBuf::from(super::DEFAULT_AUDIT_LOG_DIR),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            ports: PlanePorts::default(),
            replicas: PlaneReplicas::default(),
            kube_proxy_conntrack_max_per_core: None,
        }
    }

    /// The PKI this plane needs: the kubeconfigs point at the node-local
    /// load balancer ([`PlaneSpec::local_api_endpoint`]).
    pub fn pki_spec(&self) -> PkiSpec {
        // Every field by name: a new one must be decided on here.
        let PlaneSpec {
            cluster_name,
            node_name,
            advertise_address,
            pod_cidr: _,
            service_cidr,
            cluster_domain,
            extra_sans,
            allow_workloads: _,
            kubernetes_version: _,
            images: _,
            pki_dir,
            kubeconfig_dir,
            etcd_data_dir: _,
            etcd_quota_backend_bytes: _,
            audit_log_dir: _,
            cni_conf_dir: _,
            ports: _,
            replicas: _,
            kube_proxy_conntrack_max_per_core: _,
        } = self;
        PkiSpec {
            cluster_name: cluster_name.clone(),
            node_name: node_name.clone(),
            advertise_addresses: vec![*advertise_address],
            service_cidr: *service_cidr,
            dns_domain: cluster_domain.clone(),
            extra_sans: extra_sans.clone(),
            pki_dir: pki_dir.clone(),
            kubeconfig_dir: kubeconfig_dir.clone(),
            api_endpoint: self.local_api_endpoint(),
        }
    }

    /// Checks every field; the first problem found is returned as a
    /// [`PlaneSpecError`].
    pub fn validate(&self) -> Result<(), PlaneSpecError> {
        // Names, advertise address, service CIDR, domain and directories are
        // the PKI's too: one set of rules and messages.
        self.pki_spec().validate()?;
        let adv = self.advertise_address;
        if adv.is_loopback() {
            return Err(PlaneSpecError::LoopbackAdvertiseAddress { address: adv });
        }
        check_version(&self.kubernetes_version)?;
        for (field, image) in self.images.named() {
            if image.is_empty() || image.contains(char::is_whitespace) {
                return Err(PlaneSpecError::InvalidImage {
                    field,
                    image: image.to_string(),
                });
            }
        }
        if !self.etcd_data_dir.is_absolute() {
            return Err(PlaneSpecError::RelativeEtcdDataDir {
                path: self.etcd_data_dir.clone(),
            });
        }
        if !self.audit_log_dir.is_absolute() {
            return Err(PlaneSpecError::RelativeAuditLogDir {
                path: self.audit_log_dir.clone(),
            });
        }
        self.check_networks()?;
        self.check_ports()?;
        for (field, n) in [
            ("controller_manager", self.replicas.controller_manager),
            ("scheduler", self.replicas.scheduler),
            ("coredns", self.replicas.coredns),
        ] {
            if n < 1 {
                return Err(PlaneSpecError::InvalidReplicas { field, replicas: n });
            }
        }
        if let Some(n) = self.kube_proxy_conntrack_max_per_core {
            if n < 0 {
                return Err(PlaneSpecError::InvalidConntrackMax { value: n });
            }
        }
        Ok(())
    }

    fn check_networks(&self) -> Result<(), PlaneSpecError> {
        let (pod, svc) = (self.pod_cidr, self.service_cidr);
        let family = |ip: IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        let adv_family = family(self.advertise_address);
        for (what, net) in [("pod CIDR", pod), ("service CIDR", svc)] {
            if family(net.addr()) != adv_family {
                return Err(PlaneSpecError::FamilyMismatch {
                    what,
                    cidr: net,
                    address: self.advertise_address,
                });
            }
        }
        // kube-controller-manager's node CIDR allocator: node masks of /24
        // (IPv4) or /64 (IPv6), at most 2^16 of them.
        let (node_mask, max_prefix) = match pod {
            IpNet::V4(_) => (24, 24),
            IpNet::V6(_) => (64, 64),
        };
        if pod.prefix_len() > max_prefix || node_mask - pod.prefix_len() > 16 {
            return Err(PlaneSpecError::PodCidrSize {
                cidr: pod,
                min: node_mask.saturating_sub(16),
                max: max_prefix,
            });
        }
        if pod.contains(&svc) || svc.contains(&pod) {
            return Err(PlaneSpecError::CidrOverlap { pod, service: svc });
        }
        self.dns_service_ip()?;
        Ok(())
    }

    fn check_ports(&self) -> Result<(), PlaneSpecError> {
        let named = self.ports.named();
        for (i, (field, port)) in named.iter().enumerate() {
            if *port == 0 {
                return Err(PlaneSpecError::ZeroPort { field });
            }
            if let Some((other, _)) = named[..i].iter().find(|(_, p)| p == port) {
                return Err(PlaneSpecError::PortClash {
                    port: *port,
                    a: other,
                    b: field,
                });
            }
            if let Some((_, user)) = RESERVED_PORTS.iter().find(|(p, _)| p == port) {
                return Err(PlaneSpecError::ReservedPort {
                    field,
                    port: *port,
                    user,
                });
            }
        }
        Ok(())
    }

    /// Loopback of the cluster's address family.
    pub fn loopback(&self) -> IpAddr {
        if self.advertise_address.is_ipv6() {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    }

    /// `https://127.0.0.1:<api_load_balancer>` (`[::1]` for IPv6): the API
    /// as every client on a node reaches it.
    pub fn local_api_endpoint(&self) -> String {
        format!(
            "https://{}",
            SocketAddr::new(self.loopback(), self.ports.api_load_balancer)
        )
    }

    /// The minor of [`Self::kubernetes_version`] (`37` for `v1.37.2`); 0
    /// for a version [`Self::validate`] refuses.
    pub fn kubernetes_minor(&self) -> u32 {
        self.kubernetes_version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }

    /// The `kubernetes` Service IP (first address of the service CIDR).
    ///
    /// Errors with [`PlaneSpecError::Pki`] when the service CIDR is too small.
    pub fn kubernetes_service_ip(&self) -> Result<IpAddr, PlaneSpecError> {
        Ok(self.pki_spec().kubernetes_service_ip()?)
    }

    /// The cluster DNS Service IP: the tenth address of the service CIDR
    /// (kubeadm's `GetDNSIP`).
    ///
    /// Errors with [`PlaneSpecError::ServiceCidrTooSmallForDns`].
    pub fn dns_service_ip(&self) -> Result<IpAddr, PlaneSpecError> {
        let too_small = PlaneSpecError::ServiceCidrTooSmallForDns {
            cidr: self.service_cidr,
        };
        match self.service_cidr {
            IpNet::V4(net) if net.prefix_len() <= 28 => {
                Ok(IpAddr::V4((u32::from(net.network()) + 10).into()))
            }
            IpNet::V6(net) if net.prefix_len() <= 124 => {
                Ok(IpAddr::V6((u128::from(net.network()) + 10).into()))
            }
            _ => Err(too_small),
        }
    }

    /// An etcd member's client URLs: loopback and the advertise address.
    pub fn etcd_client_urls(&self, placement: Placement) -> Vec<String> {
        let port = self.ports.etcd_client_port(placement);
        vec![
            https_url(self.loopback(), port),
            https_url(self.advertise_address, port),
        ]
    }

    /// An etcd member's peer URL (advertise address only: peers never use
    /// loopback). Also how membership changes name a member.
    pub fn etcd_peer_url(&self, placement: Placement) -> String {
        https_url(self.advertise_address, self.ports.etcd_peer_port(placement))
    }

    /// An etcd member's name: the node's name for the self-hosted member,
    /// `<node>-bootstrap` for the temporary one.
    pub fn etcd_member_name(&self, placement: Placement) -> String {
        match placement {
            Placement::Temporary => format!("{}-bootstrap", self.node_name),
            Placement::SelfHosted => self.node_name.clone(),
        }
    }

    /// The temporary member's data directory: `<etcd_data_dir>-bootstrap`,
    /// removed once the pivot is done.
    pub fn temp_etcd_data_dir(&self) -> PathBuf {
        temp_etcd_data_dir_beside(&self.etcd_data_dir)
    }

    /// The data directory of the member at `placement`.
    pub fn etcd_data_dir_for(&self, placement: Placement) -> PathBuf {
        match placement {
            Placement::Temporary => self.temp_etcd_data_dir(),
            Placement::SelfHosted => self.etcd_data_dir.clone(),
        }
    }
}

impl PlaneImages {
    fn named(&self) -> [(&'static str, &str); 7] {
        [
            ("etcd", &self.etcd),
            ("kube_apiserver", &self.kube_apiserver),
            ("kube_controller_manager", &self.kube_controller_manager),
            ("kube_scheduler", &self.kube_scheduler),
            ("kube_proxy", &self.kube_proxy),
            ("coredns", &self.coredns),
            ("selfnode", &self.selfnode),
        ]
    }
}

pub(crate) fn https_url(ip: IpAddr, port: u16) -> String {
    format!("https://{}", SocketAddr::new(ip, port))
}

/// `vMAJOR.MINOR.PATCH` with an optional `-prerelease`/`+build` suffix.
fn check_version(v: &str) -> Result<(), PlaneSpecError> {
    let bad = || PlaneSpecError::InvalidVersion {
        version: v.to_string(),
    };
    let core = v.strip_prefix('v').ok_or_else(bad)?;
    let core = core.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if parts.len() == 3 && parts.iter().all(numeric) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// An invalid [`PlaneSpec`].
#[derive(Debug, thiserror::Error)]
pub enum PlaneSpecError {
    /// The derived [`PkiSpec`] is invalid (names, advertise address, service
    /// CIDR, domain, directories).
    #[error(transparent)]
    Pki(#[from] PkiSpecError),
    /// The advertise address is a loopback address.
    #[error("advertise address {address} is a loopback address: other nodes and pods could not reach the API or etcd there; give this node's address on the cluster network")]
    LoopbackAdvertiseAddress {
        /// The address given.
        address: IpAddr,
    },
    /// `kubernetes_version` is not `vMAJOR.MINOR.PATCH` (with an optional
    /// `-prerelease`/`+build` suffix).
    #[error("invalid Kubernetes version {version:?}: expected vMAJOR.MINOR.PATCH, e.g. v1.37.2")]
    InvalidVersion {
        /// The version given.
        version: String,
    },
    /// An image reference is empty or contains whitespace.
    #[error("invalid image for {field}: {image:?}; give a reference like registry.k8s.io/kube-apiserver:v1.37.2")]
    InvalidImage {
        /// The [`PlaneImages`] field.
        field: &'static str,
        /// The reference given.
        image: String,
    },
    /// `etcd_data_dir` is a relative path.
    #[error("etcd_data_dir must be an absolute path, got {}", path.display())]
    RelativeEtcdDataDir {
        /// The path given.
        path: PathBuf,
    },
    /// `audit_log_dir` is a relative path.
    #[error("audit_log_dir must be an absolute path, got {}", path.display())]
    RelativeAuditLogDir {
        /// The path given.
        path: PathBuf,
    },
    /// A CIDR is not of the advertise address's IP family.
    #[error("the {what} {cidr} is not of the advertise address {address}'s IP family; selfnode runs single-stack clusters")]
    FamilyMismatch {
        /// Which CIDR (`pod CIDR`, `service CIDR`).
        what: &'static str,
        /// The CIDR given.
        cidr: IpNet,
        /// The advertise address.
        address: IpAddr,
    },
    /// The pod CIDR's prefix is outside `/min..=/max`, so it cannot be cut
    /// into at most 2^16 per-node subnets (/24 for IPv4, /64 for IPv6).
    #[error("pod CIDR {cidr} has the wrong size: each node gets a subnet of it, so its prefix must be between /{min} and /{max}")]
    PodCidrSize {
        /// The pod CIDR given.
        cidr: IpNet,
        /// The shortest prefix allowed, in bits.
        min: u8,
        /// The longest prefix allowed, in bits.
        max: u8,
    },
    /// The pod and service CIDRs overlap.
    #[error("pod CIDR {pod} and service CIDR {service} overlap; pick disjoint ranges")]
    CidrOverlap {
        /// The pod CIDR.
        pod: IpNet,
        /// The service CIDR.
        service: IpNet,
    },
    /// The service CIDR has fewer than 16 addresses (narrower than /28 for
    /// IPv4, /124 for IPv6), so it has no cluster DNS Service IP.
    #[error("service CIDR {cidr} is too small: it needs at least 16 addresses (the cluster DNS Service takes the tenth)")]
    ServiceCidrTooSmallForDns {
        /// The service CIDR given.
        cidr: IpNet,
    },
    /// A port is 0.
    #[error("port {field} is 0; give a port from 1 to 65535")]
    ZeroPort {
        /// The [`PlanePorts`] field.
        field: &'static str,
    },
    /// Two ports are the same.
    #[error("ports {a} and {b} are both {port}; components that run at the same time on a node need distinct ports")]
    PortClash {
        /// The port.
        port: u16,
        /// The first [`PlanePorts`] field that has it.
        a: &'static str,
        /// The second [`PlanePorts`] field that has it.
        b: &'static str,
    },
    /// A port is one the kubelet or kube-proxy binds.
    #[error("port {field} is {port}, which {user} uses; pick another")]
    ReservedPort {
        /// The [`PlanePorts`] field.
        field: &'static str,
        /// The port.
        port: u16,
        /// Who binds it, for the message (e.g. `the kubelet's API`).
        user: &'static str,
    },
    /// A replica count is below 1.
    #[error("{field} replicas is {replicas}; it must be at least 1")]
    InvalidReplicas {
        /// The [`PlaneReplicas`] field.
        field: &'static str,
        /// The count given.
        replicas: i32,
    },
    /// `kube_proxy_conntrack_max_per_core` is negative.
    #[error("kube-proxy conntrack max per core is {value}; give 0 (leave the host alone) or a positive number")]
    InvalidConntrackMax {
        /// The value given.
        value: i32,
    },
}

impl PlaneSpecError {
    /// Whether a retry cannot help (exit 2): every variant: the desired plane is inconsistent (bad input), checked before anything is written. An exhaustive match,
    /// so a new variant must be classified here.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            PlaneSpecError::Pki(..)
            | PlaneSpecError::LoopbackAdvertiseAddress { .. }
            | PlaneSpecError::InvalidVersion { .. }
            | PlaneSpecError::InvalidImage { .. }
            | PlaneSpecError::RelativeEtcdDataDir { .. }
            | PlaneSpecError::RelativeAuditLogDir { .. }
            | PlaneSpecError::FamilyMismatch { .. }
            | PlaneSpecError::PodCidrSize { .. }
            | PlaneSpecError::CidrOverlap { .. }
            | PlaneSpecError::ServiceCidrTooSmallForDns { .. }
            | PlaneSpecError::ZeroPort { .. }
            | PlaneSpecError::PortClash { .. }
            | PlaneSpecError::ReservedPort { .. }
            | PlaneSpecError::InvalidReplicas { .. }
            | PlaneSpecError::InvalidConntrackMax { .. } => true,
        }
    }
}
