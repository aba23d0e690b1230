//! What the PKI must look like: [`PkiSpec`] and its validation.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

/// kubeadm's `CertificatesDir`.
pub const DEFAULT_PKI_DIR: &str = "/etc/kubernetes/pki";
/// kubeadm's `KubernetesDir`, where the kubeconfigs go.
pub const DEFAULT_KUBECONFIG_DIR: &str = "/etc/kubernetes";
/// kubeadm's default `clusterName`.
pub const DEFAULT_CLUSTER_NAME: &str = "kubernetes";
/// kubeadm's default `networking.dnsDomain`.
pub const DEFAULT_DNS_DOMAIN: &str = "cluster.local";
/// kubeadm's default `networking.serviceSubnet`.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// The node-local API load balancer every kubeconfig points at.
pub const DEFAULT_API_ENDPOINT: &str = "https://127.0.0.1:6443";

/// The desired PKI of one control-plane node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiSpec {
    /// Cluster name used in the kubeconfigs (kubeadm's `clusterName`).
    pub cluster_name: String,
    /// This node's name (a DNS-1123 subdomain): etcd certificate CN, kubelet identity.
    pub node_name: String,
    /// Addresses this node serves the API and etcd on. At least one.
    pub advertise_addresses: Vec<IpAddr>,
    /// The Service CIDR; its first host address is the `kubernetes` Service IP.
    pub service_cidr: IpNet,
    /// Cluster DNS domain.
    pub dns_domain: String,
    /// Extra subject alternative names for the API server certificate only:
    /// IP addresses or DNS names (`*.` wildcards allowed).
    pub extra_sans: Vec<String>,
    /// Absolute directory for certificates and keys.
    pub pki_dir: PathBuf,
    /// Absolute directory for the kubeconfig files.
    pub kubeconfig_dir: PathBuf,
    /// `https://host[:port]` every kubeconfig points at.
    pub api_endpoint: String,
}

impl PkiSpec {
    /// A spec with kubeadm's defaults for everything but the node's identity.
    /// Tests only: production specs come from `PlaneSpec::pki_spec`.
    #[cfg(any(test, feature = "testing"))]
    pub fn new(node_name: impl Into<String>, advertise_addresses: Vec<IpAddr>) -> Self {
        PkiSpec {
            cluster_name: DEFAULT_CLUSTER_NAME.to_string(),
            node_name: node_name.into(),
            advertise_addresses,
            service_cidr: DEFAULT_SERVICE_CIDR
                .parse()
                .expect("DEFAULT_SERVICE_CIDR is a valid CIDR; every pki test starts from it"),
            dns_domain: DEFAULT_DNS_DOMAIN.to_string(),
            extra_sans: Vec::new(),
            pki_dir: PathBuf::from(DEFAULT_PKI_DIR),
            kubeconfig_dir: PathBuf::from(DEFAULT_KUBECONFIG_DIR),
            api_endpoint: DEFAULT_API_ENDPOINT.to_string(),
        }
    }

    /// Checks every field; the first problem found is returned as a
    /// [`PkiSpecError`].
    pub fn validate(&self) -> Result<(), PkiSpecError> {
        validate_cluster_name(&self.cluster_name)?;
        if let Err(reason) = check_dns_subdomain(&self.node_name) {
            return Err(PkiSpecError::InvalidNodeName {
                name: self.node_name.clone(),
                reason,
            });
        }
        if self.advertise_addresses.is_empty() {
            return Err(PkiSpecError::NoAdvertiseAddress);
        }
        for addr in &self.advertise_addresses {
            if addr.is_unspecified() || addr.is_multicast() {
                return Err(PkiSpecError::InvalidAdvertiseAddress { address: *addr });
            }
        }
        self.kubernetes_service_ip()?;
        if let Err(reason) = check_dns_subdomain(&self.dns_domain) {
            return Err(PkiSpecError::InvalidDnsDomain {
                domain: self.dns_domain.clone(),
                reason,
            });
        }
        for san in &self.extra_sans {
            parse_san(san)?;
        }
        for (field, path) in [
            ("pki_dir", &self.pki_dir),
            ("kubeconfig_dir", &self.kubeconfig_dir),
        ] {
            if !path.is_absolute() {
                return Err(PkiSpecError::RelativeDir {
                    field,
                    path: path.clone(),
                });
            }
        }
        self.api_endpoint_host()?;
        Ok(())
    }

    /// The `kubernetes` Service's cluster IP: the first host address of the
    /// Service CIDR (kubeadm's `GetAPIServerVirtualIP`).
    ///
    /// Errors with [`PkiSpecError::ServiceCidrTooSmall`].
    pub fn kubernetes_service_ip(&self) -> Result<IpAddr, PkiSpecError> {
        let too_small = || PkiSpecError::ServiceCidrTooSmall {
            cidr: self.service_cidr,
        };
        match self.service_cidr {
            IpNet::V4(net) => {
                if net.prefix_len() > 30 {
                    return Err(too_small());
                }
                let first = u32::from(net.network()) + 1;
                Ok(IpAddr::V4(first.into()))
            }
            IpNet::V6(net) => {
                if net.prefix_len() > 126 {
                    return Err(too_small());
                }
                let first = u128::from(net.network()) + 1;
                Ok(IpAddr::V6(first.into()))
            }
        }
    }

    /// The host part of [`PkiSpec::api_endpoint`].
    pub(crate) fn api_endpoint_host(&self) -> Result<San, PkiSpecError> {
        parse_endpoint_host(&self.api_endpoint).map_err(|reason| PkiSpecError::InvalidApiEndpoint {
            endpoint: self.api_endpoint.clone(),
            reason,
        })
    }

    /// `<pki_dir>/<base>.crt`, e.g. `cert_path(names::APISERVER)`.
    pub fn cert_path(&self, base: &str) -> PathBuf {
        self.pki_dir.join(format!("{base}.crt"))
    }

    /// `<pki_dir>/<base>.key`.
    pub fn key_path(&self, base: &str) -> PathBuf {
        self.pki_dir.join(format!("{base}.key"))
    }

    /// `<kubeconfig_dir>/<file>`, e.g. `kubeconfig_path(names::ADMIN_CONF)`.
    pub fn kubeconfig_path(&self, file: &str) -> PathBuf {
        self.kubeconfig_dir.join(file)
    }

    /// The subdirectory of `pki_dir` holding the etcd PKI.
    pub fn etcd_pki_dir(&self) -> PathBuf {
        self.pki_dir.join("etcd")
    }
}

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum San {
    Dns(String),
    Ip(IpAddr),
}

/// Names in a certificate, normalised for comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SanSet {
    pub dns: BTreeSet<String>,
    pub ips: BTreeSet<IpAddr>,
}

impl SanSet {
    pub fn add(&mut self, san: San) {
        match san {
            San::Dns(d) => {
                self.dns.insert(d.to_ascii_lowercase());
            }
            San::Ip(ip) => {
                self.ips.insert(canonical_ip(ip));
            }
        }
    }

    pub fn add_dns(&mut self, name: &str) {
        self.add(San::Dns(name.to_string()));
    }

    pub fn add_ip(&mut self, ip: IpAddr) {
        self.add(San::Ip(ip));
    }

    /// Names in `self` but not in `other`, for messages.
    pub fn minus(&self, other: &SanSet) -> Vec<String> {
        let dns = self.dns.difference(&other.dns).cloned();
        let ips = self.ips.difference(&other.ips).map(|ip| ip.to_string());
        dns.chain(ips).collect()
    }
}

/// IPv4-mapped IPv6 addresses compare as their IPv4 form.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// An IP address or a DNS name (an optional leading `*.` wildcard allowed).
pub(crate) fn parse_san(san: &str) -> Result<San, PkiSpecError> {
    if let Ok(ip) = san.parse::<IpAddr>() {
        return Ok(San::Ip(ip));
    }
    let name = san.strip_prefix("*.").unwrap_or(san);
    check_dns_subdomain(name).map_err(|reason| PkiSpecError::InvalidExtraSan {
        san: san.to_string(),
        reason,
    })?;
    Ok(San::Dns(san.to_string()))
}

fn validate_cluster_name(name: &str) -> Result<(), PkiSpecError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(PkiSpecError::InvalidClusterName {
            name: name.to_string(),
        })
    }
}

/// RFC 1123 subdomain as Kubernetes defines it (`IsDNS1123Subdomain`):
/// lowercase, at most 253 characters, dot-separated labels of [a-z0-9-]
/// that start and end with an alphanumeric character.
pub(crate) fn check_dns_subdomain(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("only lowercase letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with '-'");
        }
    }
    Ok(())
}

/// `https://host[:port][/]`: returns the host as a SAN.
fn parse_endpoint_host(endpoint: &str) -> Result<San, &'static str> {
    let rest = endpoint
        .strip_prefix("https://")
        .ok_or("it must start with https://")?;
    let authority = match rest.split_once('/') {
        Some((authority, "")) => authority,
        Some(_) => return Err("it must not have a path"),
        None => rest,
    };
    if authority.contains(['@', '?', '#']) {
        return Err("it must be https://host[:port]");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unterminated '[' in the host")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after ']'")?),
        };
        let ip: std::net::Ipv6Addr = host.parse().map_err(|_| "bad IPv6 address in '[...]'")?;
        (San::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let san = match host.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => San::Ip(ip),
            Ok(IpAddr::V6(_)) => return Err("IPv6 addresses must be written in brackets"),
            Err(_) => {
                check_dns_subdomain(host)
                    .map_err(|_| "the host is not an IP address or DNS name")?;
                San::Dns(host.to_string())
            }
        };
        (san, port)
    };
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err("the port must be a number from 1 to 65535"),
        }
    }
    Ok(host)
}

/// An invalid [`PkiSpec`].
#[derive(Debug, thiserror::Error)]
pub enum PkiSpecError {
    /// `cluster_name` is empty, longer than 253 characters, or has characters
    /// other than ASCII letters, digits, `-`, `.` and `_`.
    #[error("invalid cluster name {name:?}: use 1-253 letters, digits, '-', '.' or '_'")]
    InvalidClusterName {
        /// The name given.
        name: String,
    },
    /// `node_name` is not a DNS-1123 subdomain.
    #[error(
        "invalid node name {name:?}: {reason}; node names must be lowercase DNS names (RFC 1123)"
    )]
    InvalidNodeName {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// `advertise_addresses` is empty.
    #[error("no advertise address: give the IP address this node serves the API on")]
    NoAdvertiseAddress,
    /// An advertise address is unspecified or multicast.
    #[error("invalid advertise address {address}: it must be a unicast address of this node")]
    InvalidAdvertiseAddress {
        /// The address given.
        address: IpAddr,
    },
    /// `service_cidr` is narrower than a /30 (IPv4) or a /126 (IPv6).
    #[error("service CIDR {cidr} is too small: it needs room for the kubernetes Service IP (at most /30 for IPv4, /126 for IPv6)")]
    ServiceCidrTooSmall {
        /// The CIDR given.
        cidr: IpNet,
    },
    /// `dns_domain` is not a DNS-1123 subdomain.
    #[error("invalid DNS domain {domain:?}: {reason}")]
    InvalidDnsDomain {
        /// The domain given.
        domain: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An entry of `extra_sans` is neither an IP address nor a DNS-1123
    /// subdomain (with an optional `*.` prefix).
    #[error("invalid extra SAN {san:?}: {reason}; use an IP address or a lowercase DNS name")]
    InvalidExtraSan {
        /// The entry given.
        san: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// `pki_dir` or `kubeconfig_dir` is a relative path.
    #[error("{field} must be an absolute path, got {}", path.display())]
    RelativeDir {
        /// The field's name (`pki_dir` or `kubeconfig_dir`).
        field: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// `api_endpoint` is not `https://host[:port]` with an IP address or DNS
    /// name as host.
    #[error("invalid API endpoint {endpoint:?}: {reason} (example: https://127.0.0.1:6443)")]
    InvalidApiEndpoint {
        /// The endpoint given.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl PkiSpecError {
    /// Whether a retry cannot help (exit 2): every variant: the desired PKI is inconsistent (bad input). An exhaustive match,
    /// so a new variant must be classified here.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            PkiSpecError::InvalidClusterName { .. }
            | PkiSpecError::InvalidNodeName { .. }
            | PkiSpecError::NoAdvertiseAddress
            | PkiSpecError::InvalidAdvertiseAddress { .. }
            | PkiSpecError::ServiceCidrTooSmall { .. }
            | PkiSpecError::InvalidDnsDomain { .. }
            | PkiSpecError::InvalidExtraSan { .. }
            | PkiSpecError::RelativeDir { .. }
            | PkiSpecError::InvalidApiEndpoint { .. } => true,
        }
    }
}
