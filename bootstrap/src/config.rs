//! `selfnode init` settings: flags and an optional config file (YAML with
//! `apiVersion`/`kind`, like kubeadm's), merged and validated before anything
//! is written.
//!
//! Precedence: flag > file > default. Host facts (hostname, local addresses)
//! come in as a value, so the whole mapping is a pure function.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

/// The `apiVersion` a config file must have.
pub const API_VERSION: &str = "selfnode.dev/v1alpha1";
/// The `kind` a config file must have.
pub const INIT_KIND: &str = "InitConfiguration";
/// Cluster name when neither a flag nor the file sets one.
pub const DEFAULT_CLUSTER_NAME: &str = "selfnode";
/// Pod CIDR when neither a flag nor the file sets one.
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
/// Service CIDR when neither a flag nor the file sets one.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// Cluster DNS domain when the file sets none (there is no flag for it).
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// etcd's `--quota-backend-bytes` when neither a flag nor the file sets
/// one: 8 GiB, the largest size etcd's documentation recommends (etcd's own
/// default is 2 GiB, which a busy cluster reaches; at the quota etcd raises
/// NOSPACE and the cluster takes no writes).
pub const DEFAULT_ETCD_QUOTA_BACKEND_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// The smallest quota accepted: a fresh cluster's own objects take a few
/// MiB and grow with their history between compactions, so less would be
/// full at once; mostly it catches a size given without its unit.
pub const MIN_ETCD_QUOTA_BACKEND_BYTES: u64 = 32 * 1024 * 1024;

/// Invalid `init` input: a config file, a flag, or their combination. Every
/// variant is bad input (see [`ConfigError::is_invalid_input`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The config file is not YAML of [`InitFile`]'s shape (e.g. an unknown
    /// or mistyped field).
    #[error("config file {path}: {reason}")]
    File {
        /// The config file.
        path: PathBuf,
        /// The YAML parser's message.
        reason: String,
    },
    /// The file's `apiVersion` is not [`API_VERSION`].
    #[error(
        "config file {path}: apiVersion {found:?} is not supported; use apiVersion: {API_VERSION}"
    )]
    ApiVersion {
        /// The config file.
        path: PathBuf,
        /// The `apiVersion` it has.
        found: String,
    },
    /// The file's `kind` is not [`INIT_KIND`].
    #[error("config file {path}: kind {found:?} is not supported here; use kind: {INIT_KIND}")]
    Kind {
        /// The config file.
        path: PathBuf,
        /// The `kind` it has.
        found: String,
    },
    /// A CIDR setting does not parse.
    #[error("{field} {value:?} is not a valid CIDR (for example {example})")]
    Cidr {
        /// The setting, as the message names it (`pod CIDR`, `service CIDR`).
        field: &'static str,
        /// The text given.
        value: String,
        /// A valid value to show the user.
        example: &'static str,
    },
    /// A CIDR setting has host bits set (`10.244.1.5/16`).
    #[error("{field} {cidr} is a host address, not a network; did you mean {network}?")]
    CidrHostBits {
        /// The setting, as the message names it (`pod CIDR`, `service CIDR`).
        field: &'static str,
        /// The CIDR given.
        cidr: IpNet,
        /// The same prefix with the host bits cleared.
        network: IpNet,
    },
    /// The pod and service CIDRs overlap.
    #[error("the pod CIDR {pod} and the service CIDR {service} overlap; choose ranges that do not (defaults: {DEFAULT_POD_CIDR} and {DEFAULT_SERVICE_CIDR})")]
    Overlap {
        /// The pod CIDR.
        pod: IpNet,
        /// The service CIDR.
        service: IpNet,
    },
    /// The service CIDR (the field) has fewer than 4 host bits: narrower than
    /// a /28 for IPv4, a /124 for IPv6.
    #[error("the service CIDR {0} is too small: it needs room for the kubernetes and kube-dns Service IPs (use a /28 or larger)")]
    ServiceCidrTooSmall(IpNet),
    /// The IPv4 pod CIDR (the field) is narrower than a /24.
    #[error("the pod CIDR {0} is too small to give each node a /24; use a /16 for example")]
    PodCidrTooSmall(IpNet),
    /// The advertise address is not assigned to this host.
    #[error("the advertise address {address} is not assigned to any interface of this host (local addresses: {local}); pass one of them with --advertise-address")]
    AdvertiseNotLocal {
        /// The address given.
        address: IpAddr,
        /// This host's addresses, comma-separated, for the message.
        local: String,
    },
    /// The advertise address (the field) is loopback, unspecified, multicast,
    /// link-local or the IPv4 broadcast address.
    #[error("the advertise address {0} cannot be used: it must be a unicast address other nodes can reach (not loopback, unspecified or multicast)")]
    AdvertiseUnusable(IpAddr),
    /// No advertise address was given and the host has no usable IPv4 address
    /// to default to.
    #[error("no usable address on this host to advertise (found only loopback); pass --advertise-address")]
    NoAddress,
    /// The cluster name (the field) is not a DNS label (RFC 1123, at most 63
    /// characters).
    #[error("cluster name {0:?} is invalid: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit")]
    ClusterName(String),
    /// The node name (the field) is not a lowercase DNS subdomain.
    #[error("node name {0:?} is invalid: use a lowercase DNS name (letters, digits, '-', '.')")]
    NodeName(String),
    /// The node name (the field) is longer than a label value may be: the
    /// kubelet puts it in the Node's `kubernetes.io/hostname` label.
    #[error("node name {0:?} has {len} characters; the kubelet puts it in the node's kubernetes.io/hostname label, which allows at most 63: use a shorter --node-name", len = .0.len())]
    NodeNameTooLong(String),
    /// The cluster domain (the field) is not a lowercase DNS subdomain.
    #[error("cluster domain {0:?} is invalid: use a lowercase DNS name without a trailing dot, such as cluster.local")]
    ClusterDomain(String),
    /// The advertise address (the field, as given) does not parse as a bare
    /// IP address.
    #[error("the advertise address {0:?} is not an IP address: give a bare IP address of this host (no port, no brackets, no host name), such as 192.0.2.10")]
    AdvertiseNotIp(String),
    /// An extra SAN (the field) is neither an IP address nor a lowercase DNS
    /// subdomain.
    #[error("extra SAN {0:?} is neither an IP address nor a DNS name")]
    San(String),
    /// etcd's quota is not a byte size etcd can take, or is too small.
    #[error("etcd quota {value:?} cannot be used: {reason}; give a size such as 8GiB (the default), 4GiB or 512MiB, or a number of bytes (--etcd-quota-backend-bytes, etcdQuotaBackendBytes)")]
    EtcdQuota {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    /// Whether a retry cannot help (exit 2): every variant: a config file, a flag or their combination is wrong. An exhaustive match,
    /// so a new variant must be classified here.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ConfigError::File { .. }
            | ConfigError::ApiVersion { .. }
            | ConfigError::Kind { .. }
            | ConfigError::Cidr { .. }
            | ConfigError::CidrHostBits { .. }
            | ConfigError::Overlap { .. }
            | ConfigError::ServiceCidrTooSmall(..)
            | ConfigError::PodCidrTooSmall(..)
            | ConfigError::AdvertiseNotLocal { .. }
            | ConfigError::AdvertiseUnusable(..)
            | ConfigError::NoAddress
            | ConfigError::ClusterName(..)
            | ConfigError::NodeName(..)
            | ConfigError::NodeNameTooLong(..)
            | ConfigError::ClusterDomain(..)
            | ConfigError::AdvertiseNotIp(..)
            | ConfigError::San(..)
            | ConfigError::EtcdQuota { .. } => true,
        }
    }
}

/// The config file's shape. `apiVersion` and `kind` are required, every other
/// field is optional; unknown fields are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitFile {
    /// `apiVersion`; [`parse_file`] accepts only [`API_VERSION`].
    pub api_version: String,
    /// `kind`; [`parse_file`] accepts only [`INIT_KIND`].
    pub kind: String,
    /// `clusterName`.
    pub cluster_name: Option<String>,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `advertiseAddress`: an IP address of this host, as text.
    pub advertise_address: Option<String>,
    /// `podCidr`, as text.
    pub pod_cidr: Option<String>,
    /// `serviceCidr`, as text.
    pub service_cidr: Option<String>,
    /// `clusterDomain`; only the file can set it.
    pub cluster_domain: Option<String>,
    /// `extraSans`: extra API server certificate names (IP addresses or DNS
    /// names); merged with the flag's.
    #[serde(default)]
    pub extra_sans: Vec<String>,
    /// `bundle`: the bundle directory (binaries and images).
    pub bundle: Option<PathBuf>,
    /// Leave the control-plane node schedulable for ordinary pods (no
    /// `node-role.kubernetes.io/control-plane:NoSchedule` taint).
    #[serde(default)]
    pub allow_workloads: bool,
    /// `etcdQuotaBackendBytes`: etcd's quota, a byte size (`8GiB`) or a
    /// number of bytes.
    pub etcd_quota_backend_bytes: Option<ByteSizeText>,
}

/// A byte size in a config file: a number of bytes, or text with a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ByteSizeText {
    /// `8589934592`.
    Bytes(u64),
    /// `8GiB`, `512 MiB`.
    Text(String),
    /// A negative number: refused with the same message as bad text.
    Negative(i64),
}

impl ByteSizeText {
    fn into_text(self) -> String {
        match self {
            ByteSizeText::Bytes(n) => n.to_string(),
            ByteSizeText::Text(t) => t,
            ByteSizeText::Negative(n) => n.to_string(),
        }
    }
}

/// What the command line said (all optional).
#[derive(Debug, Default, Clone)]
pub struct InitFlags {
    /// `--cluster-name`.
    pub cluster_name: Option<String>,
    /// `--node-name`.
    pub node_name: Option<String>,
    /// `--advertise-address`: an IP address of this host, as text.
    pub advertise_address: Option<String>,
    /// `--pod-cidr`, as text.
    pub pod_cidr: Option<String>,
    /// `--service-cidr`, as text.
    pub service_cidr: Option<String>,
    /// `--apiserver-cert-extra-sans` (repeatable); added to the file's.
    pub extra_sans: Vec<String>,
    /// `--bundle`: the bundle directory (binaries and images).
    pub bundle: Option<PathBuf>,
    /// `--allow-workloads`; `false` leaves the file's setting in force.
    pub allow_workloads: bool,
    /// `--etcd-quota-backend-bytes`, as text (`8GiB`, or bytes).
    pub etcd_quota_backend_bytes: Option<String>,
}

/// Facts about the host the defaults come from.
#[derive(Debug, Clone)]
pub struct HostIdentity {
    /// The host name as the system reports it; the default node name is its
    /// lowercase form.
    pub hostname: String,
    /// Addresses assigned to this host's interfaces, in interface order.
    pub addresses: Vec<IpAddr>,
}

/// The validated settings `init` runs with. Serializable: the checkpoint
/// records them at the pivot, so `selfnode recover` renders the same
/// control plane without asking for the flags again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct InitSettings {
    /// Cluster name: a DNS label.
    pub cluster_name: String,
    /// This node's name: a lowercase DNS subdomain (default: the lowercased
    /// hostname).
    pub node_name: String,
    /// The address this node serves on: one of the host's addresses (default:
    /// its first usable IPv4 address).
    pub advertise_address: IpAddr,
    /// Pod network; does not overlap `service_cidr`.
    pub pod_cidr: IpNet,
    /// Service network; has at least 4 host bits.
    pub service_cidr: IpNet,
    /// Cluster DNS domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// Extra API server certificate names from the file and the flags: IP
    /// addresses or DNS names, sorted, without duplicates.
    pub extra_sans: Vec<String>,
    /// The bundle directory; `None`: the caller's default.
    pub bundle: Option<PathBuf>,
    /// Leave the control-plane node schedulable for ordinary pods; set when
    /// the flag or the file says so.
    pub allow_workloads: bool,
    /// etcd's `--quota-backend-bytes` on every member. Absent in the
    /// settings of clusters made before it was a setting: the default.
    #[serde(default = "default_etcd_quota")]
    pub etcd_quota_backend_bytes: u64,
}

fn default_etcd_quota() -> u64 {
    DEFAULT_ETCD_QUOTA_BACKEND_BYTES
}

/// etcd's quota from its text (`8GiB`, `512MiB`, `8G` = 8·10⁹, or bytes):
/// at least [`MIN_ETCD_QUOTA_BACKEND_BYTES`], at most what etcd's flag
/// (an int64) takes.
///
/// Errors: [`ConfigError::EtcdQuota`].
pub fn etcd_quota(text: &str) -> Result<u64, ConfigError> {
    let bad = |reason: String| ConfigError::EtcdQuota {
        value: text.to_string(),
        reason,
    };
    let bytes = text
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|_| bad("it is not a byte size".into()))?
        .as_u64();
    check_etcd_quota(bytes).map_err(bad)
}

/// `bytes` as an etcd quota: at least [`MIN_ETCD_QUOTA_BACKEND_BYTES`], at
/// most `i64::MAX`; otherwise why not.
pub fn check_etcd_quota(bytes: u64) -> Result<u64, String> {
    if bytes < MIN_ETCD_QUOTA_BACKEND_BYTES {
        return Err(format!(
            "{} is below the smallest quota, {}: the cluster's own objects would fill it",
            bytesize::ByteSize(bytes).display().iec(),
            bytesize::ByteSize(MIN_ETCD_QUOTA_BACKEND_BYTES)
                .display()
                .iec()
        ));
    }
    if i64::try_from(bytes).is_err() {
        return Err("it is larger than etcd can take".into());
    }
    Ok(bytes)
}

/// Parses a config file's text; `path` is only for messages.
///
/// Errors with [`ConfigError::File`], [`ConfigError::ApiVersion`] or
/// [`ConfigError::Kind`].
pub fn parse_file(path: &std::path::Path, text: &str) -> Result<InitFile, ConfigError> {
    let file: InitFile = serde_saphyr::from_str(text).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if file.api_version != API_VERSION {
        return Err(ConfigError::ApiVersion {
            path: path.to_path_buf(),
            found: file.api_version,
        });
    }
    if file.kind != INIT_KIND {
        return Err(ConfigError::Kind {
            path: path.to_path_buf(),
            found: file.kind,
        });
    }
    Ok(file)
}

/// A node's name: `given`, else the lowercased hostname; a lowercase DNS
/// subdomain of at most 63 characters (init and join).
///
/// Errors: [`ConfigError::NodeName`], [`ConfigError::NodeNameTooLong`].
pub fn node_name(given: Option<String>, host: &HostIdentity) -> Result<String, ConfigError> {
    let name = given.unwrap_or_else(|| host.hostname.to_lowercase());
    if !is_dns_subdomain(&name) {
        return Err(ConfigError::NodeName(name));
    }
    if name.len() > 63 {
        return Err(ConfigError::NodeNameTooLong(name));
    }
    Ok(name)
}

/// An advertise address as given: a bare IP, usable (unicast, not
/// loopback) and assigned to this host (init and join).
///
/// Errors: [`ConfigError::AdvertiseNotIp`], [`ConfigError::AdvertiseUnusable`],
/// [`ConfigError::AdvertiseNotLocal`].
pub fn advertise_address(text: &str, host: &HostIdentity) -> Result<IpAddr, ConfigError> {
    let addr: IpAddr = text
        .trim()
        .parse()
        .map_err(|_| ConfigError::AdvertiseNotIp(text.to_string()))?;
    if !usable(addr) {
        return Err(ConfigError::AdvertiseUnusable(addr));
    }
    if !host.addresses.contains(&addr) {
        return Err(ConfigError::AdvertiseNotLocal {
            address: addr,
            local: host
                .addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(addr)
}

/// Merges flags over the file over defaults and validates the result.
///
/// Errors with the [`ConfigError`] of the first setting found invalid.
pub fn resolve(
    file: Option<InitFile>,
    flags: &InitFlags,
    host: &HostIdentity,
) -> Result<InitSettings, ConfigError> {
    let file = file.unwrap_or_default();
    let pick = |flag: &Option<String>, from_file: Option<String>| flag.clone().or(from_file);

    let cluster_name =
        pick(&flags.cluster_name, file.cluster_name).unwrap_or_else(|| DEFAULT_CLUSTER_NAME.into());
    if !is_dns_label(&cluster_name) {
        return Err(ConfigError::ClusterName(cluster_name));
    }
    let node_name = node_name(pick(&flags.node_name, file.node_name), host)?;
    let pod_cidr = cidr(
        "pod CIDR",
        pick(&flags.pod_cidr, file.pod_cidr)
            .as_deref()
            .unwrap_or(DEFAULT_POD_CIDR),
        "10.244.0.0/16",
    )?;
    let service_cidr = cidr(
        "service CIDR",
        pick(&flags.service_cidr, file.service_cidr)
            .as_deref()
            .unwrap_or(DEFAULT_SERVICE_CIDR),
        "10.96.0.0/12",
    )?;
    if pod_cidr.contains(&service_cidr.network()) || service_cidr.contains(&pod_cidr.network()) {
        return Err(ConfigError::Overlap {
            pod: pod_cidr,
            service: service_cidr,
        });
    }
    if service_cidr.max_prefix_len() - service_cidr.prefix_len() < 4 {
        return Err(ConfigError::ServiceCidrTooSmall(service_cidr));
    }
    if pod_cidr.max_prefix_len() == 32 && pod_cidr.prefix_len() > 24 {
        return Err(ConfigError::PodCidrTooSmall(pod_cidr));
    }

    let advertise_address = match pick(&flags.advertise_address, file.advertise_address) {
        Some(text) => advertise_address(&text, host)?,
        None => host
            .addresses
            .iter()
            .copied()
            .find(|a| usable(*a) && a.is_ipv4())
            .ok_or(ConfigError::NoAddress)?,
    };

    let mut extra_sans = file.extra_sans;
    extra_sans.extend(flags.extra_sans.iter().cloned());
    extra_sans.sort();
    extra_sans.dedup();
    for san in &extra_sans {
        if san.parse::<IpAddr>().is_err() && !is_dns_subdomain(san) {
            return Err(ConfigError::San(san.clone()));
        }
    }
    let etcd_quota_backend_bytes = match pick(
        &flags.etcd_quota_backend_bytes,
        file.etcd_quota_backend_bytes.map(ByteSizeText::into_text),
    ) {
        Some(text) => etcd_quota(&text)?,
        None => DEFAULT_ETCD_QUOTA_BACKEND_BYTES,
    };
    let cluster_domain = file
        .cluster_domain
        .unwrap_or_else(|| DEFAULT_CLUSTER_DOMAIN.into());
    if !is_dns_subdomain(&cluster_domain) {
        return Err(ConfigError::ClusterDomain(cluster_domain));
    }
    Ok(InitSettings {
        cluster_name,
        node_name,
        advertise_address,
        pod_cidr,
        service_cidr,
        cluster_domain,
        extra_sans,
        bundle: flags.bundle.clone().or(file.bundle),
        allow_workloads: flags.allow_workloads || file.allow_workloads,
        etcd_quota_backend_bytes,
    })
}

fn cidr(field: &'static str, text: &str, example: &'static str) -> Result<IpNet, ConfigError> {
    let net: IpNet = text.trim().parse().map_err(|_| ConfigError::Cidr {
        field,
        value: text.to_string(),
        example,
    })?;
    if net.trunc() != net {
        return Err(ConfigError::CidrHostBits {
            field,
            cidr: net,
            network: net.trunc(),
        });
    }
    Ok(net)
}

/// An address a node can serve on: unicast, not loopback or link-local.
pub fn usable(a: IpAddr) -> bool {
    !(a.is_loopback() || a.is_unspecified() || a.is_multicast())
        && match a {
            IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_broadcast(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        }
}

/// An RFC 1123 label in lower case (1 to 63 of `a-z`, `0-9`, `-`, not
/// starting or ending with `-`): what a Node's name and its
/// `kubernetes.io/hostname` label take.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostIdentity {
        HostIdentity {
            hostname: "Node-1".into(),
            addresses: vec![
                "127.0.0.1".parse().unwrap(),
                "fe80::1".parse().unwrap(),
                "192.168.5.10".parse().unwrap(),
            ],
        }
    }

    fn check(flags: InitFlags) -> Result<InitSettings, ConfigError> {
        resolve(None, &flags, &host())
    }

    #[test]
    fn defaults_serve_a_plain_host() {
        let s = check(InitFlags::default()).unwrap();
        assert_eq!(s.cluster_name, "selfnode");
        assert_eq!(s.node_name, "node-1");
        assert_eq!(
            s.advertise_address.to_string(),
            "192.168.5.10",
            "first usable, not loopback or link-local"
        );
        assert_eq!(s.pod_cidr.to_string(), DEFAULT_POD_CIDR);
        assert_eq!(s.service_cidr.to_string(), DEFAULT_SERVICE_CIDR);
    }

    #[test]
    fn bad_input_gets_a_message_that_says_what_to_do() {
        let cases: Vec<(InitFlags, &str)> = vec![
            (InitFlags { pod_cidr: Some("10.244.0.0/33".into()), ..Default::default() }, "is not a valid CIDR"),
            (InitFlags { service_cidr: Some("banana".into()), ..Default::default() }, "is not a valid CIDR"),
            (InitFlags { pod_cidr: Some("10.244.1.5/16".into()), ..Default::default() }, "did you mean 10.244.0.0/16"),
            (InitFlags { pod_cidr: Some("10.0.0.0/8".into()), ..Default::default() }, "overlap"),
            (InitFlags { service_cidr: Some("10.244.8.0/24".into()), ..Default::default() }, "overlap"),
            (InitFlags { service_cidr: Some("10.96.0.0/30".into()), ..Default::default() }, "too small"),
            (InitFlags { advertise_address: Some("10.9.9.9".into()), ..Default::default() }, "not assigned to any interface of this host (local addresses: 127.0.0.1, fe80::1, 192.168.5.10)"),
            (InitFlags { advertise_address: Some("127.0.0.1".into()), ..Default::default() }, "must be a unicast address other nodes can reach"),
            (InitFlags { cluster_name: Some("My_Cluster".into()), ..Default::default() }, "cluster name \"My_Cluster\" is invalid"),
            (InitFlags { extra_sans: vec!["not a name".into()], ..Default::default() }, "neither an IP address nor a DNS name"),
            (InitFlags { node_name: Some("cp-01.rack-07.row-12.datacenter-west.example-company.internal.lab".into()), ..Default::default() }, "has 65 characters; the kubelet puts it in the node's kubernetes.io/hostname label, which allows at most 63"),
            (InitFlags { advertise_address: Some("cp1.lab.example".into()), ..Default::default() }, "the advertise address \"cp1.lab.example\" is not an IP address: give a bare IP address of this host"),
            (InitFlags { advertise_address: Some("192.0.2.10:6443".into()), ..Default::default() }, "the advertise address \"192.0.2.10:6443\" is not an IP address"),
            (InitFlags { advertise_address: Some("[2001:db8::10]".into()), ..Default::default() }, "the advertise address \"[2001:db8::10]\" is not an IP address"),
        ];
        for (flags, want) in cases {
            let err = check(flags.clone()).unwrap_err().to_string();
            assert!(err.contains(want), "{flags:?}: {err}");
        }
    }

    #[test]
    fn the_etcd_quota_is_a_byte_size_from_the_flag_or_the_file() {
        let gib = 1024 * 1024 * 1024;
        assert_eq!(
            check(InitFlags::default())
                .unwrap()
                .etcd_quota_backend_bytes,
            8 * gib
        );
        let quota = |text: &str| {
            check(InitFlags {
                etcd_quota_backend_bytes: Some(text.into()),
                ..Default::default()
            })
            .map(|s| s.etcd_quota_backend_bytes)
        };
        assert_eq!(quota("8GiB").unwrap(), 8 * gib);
        assert_eq!(quota("4 GiB").unwrap(), 4 * gib);
        assert_eq!(quota("512MiB").unwrap(), 512 * 1024 * 1024);
        assert_eq!(quota("2G").unwrap(), 2_000_000_000, "SI, as Kubernetes");
        assert_eq!(quota("4294967296").unwrap(), 4 * gib);
        for (bad, why) in [
            ("8", "8 B is below the smallest quota, 32.0 MiB"),
            ("16MiB", "is below the smallest quota"),
            ("lots", "it is not a byte size"),
            ("8 GiBs", "it is not a byte size"),
            ("-1", "it is not a byte size"),
            ("9999999EiB", "larger than etcd can take"),
        ] {
            let e = quota(bad).unwrap_err();
            assert!(matches!(e, ConfigError::EtcdQuota { .. }), "{bad}: {e:?}");
            assert!(e.is_invalid_input());
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("etcd quota {bad:?} cannot be used: ")),
                "{text}"
            );
            assert!(text.contains(why), "{bad}: {text}");
            assert!(text.contains("--etcd-quota-backend-bytes"), "{text}");
        }

        let p = std::path::Path::new("init.yaml");
        let head = "apiVersion: selfnode.dev/v1alpha1\nkind: InitConfiguration\n";
        let from_file = |line: &str| {
            let file = parse_file(p, &format!("{head}{line}\n")).unwrap();
            resolve(Some(file), &InitFlags::default(), &host()).map(|s| s.etcd_quota_backend_bytes)
        };
        assert_eq!(from_file("etcdQuotaBackendBytes: 4GiB").unwrap(), 4 * gib);
        assert_eq!(from_file("etcdQuotaBackendBytes: 1073741824").unwrap(), gib);
        assert!(matches!(
            from_file("etcdQuotaBackendBytes: -5"),
            Err(ConfigError::EtcdQuota { .. })
        ));
        // The flag wins over the file.
        let file = parse_file(p, &format!("{head}etcdQuotaBackendBytes: 4GiB\n")).unwrap();
        let flags = InitFlags {
            etcd_quota_backend_bytes: Some("6GiB".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve(Some(file), &flags, &host())
                .unwrap()
                .etcd_quota_backend_bytes,
            6 * gib
        );
    }

    /// Settings recorded before the quota was a setting read back with the
    /// default.
    #[test]
    fn settings_recorded_without_a_quota_get_the_default() {
        let mut json = serde_json::to_value(check(InitFlags::default()).unwrap()).unwrap();
        json.as_object_mut()
            .unwrap()
            .remove("etcd_quota_backend_bytes");
        let s: InitSettings = serde_json::from_value(json).unwrap();
        assert_eq!(s.etcd_quota_backend_bytes, DEFAULT_ETCD_QUOTA_BACKEND_BYTES);
    }

    #[test]
    fn a_bad_cluster_domain_is_reported_as_the_cluster_domain() {
        for domain in ["Lab.Internal", "lab.internal.", "lab_internal"] {
            let text = format!(
                "apiVersion: selfnode.dev/v1alpha1\nkind: InitConfiguration\nclusterDomain: {domain}\n"
            );
            let file = parse_file(std::path::Path::new("init.yaml"), &text).unwrap();
            let err = resolve(Some(file), &InitFlags::default(), &host()).unwrap_err();
            assert_eq!(err, ConfigError::ClusterDomain(domain.into()));
            assert!(
                err.to_string()
                    .starts_with(&format!("cluster domain {domain:?} is invalid")),
                "{err}"
            );
        }
    }

    #[test]
    fn flags_override_the_file_and_sans_merge() {
        let path = std::path::Path::new("/etc/selfnode/init.yaml");
        let file = parse_file(
            path,
            "apiVersion: selfnode.dev/v1alpha1\nkind: InitConfiguration\nclusterName: lab\npodCidr: 10.50.0.0/16\nextraSans: [api.lab.example]\n",
        )
        .unwrap();
        let flags = InitFlags {
            pod_cidr: Some("10.60.0.0/16".into()),
            extra_sans: vec!["10.1.2.3".into()],
            ..Default::default()
        };
        let s = resolve(Some(file), &flags, &host()).unwrap();
        assert_eq!(s.cluster_name, "lab");
        assert_eq!(s.pod_cidr.to_string(), "10.60.0.0/16");
        assert_eq!(
            s.extra_sans,
            vec!["10.1.2.3".to_string(), "api.lab.example".to_string()]
        );
    }

    #[test]
    fn config_files_are_checked_for_version_kind_and_unknown_fields() {
        let p = std::path::Path::new("c.yaml");
        let e = parse_file(
            p,
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("use apiVersion: selfnode.dev/v1alpha1"),
            "{e}"
        );
        let e = parse_file(
            p,
            "apiVersion: selfnode.dev/v1alpha1\nkind: JoinConfiguration\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("use kind: InitConfiguration"), "{e}");
        let e = parse_file(
            p,
            "apiVersion: selfnode.dev/v1alpha1\nkind: InitConfiguration\npodCIDR: 10.0.0.0/16\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("podCIDR"),
            "names the unknown field: {e}"
        );
    }
}
