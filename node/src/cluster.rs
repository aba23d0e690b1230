//! Ground floor: this host's cluster, as it recorded it.
//!
//! Every part of `node` that asks "which cluster does this host belong to,
//! in which role, with which settings" asks [`HostCluster::load`]; every
//! part that needs the desired control plane of this host asks
//! [`plane_spec`]; every API client is made by [`kube_client`]. Nothing
//! here imports the agent's runtime or a sequence.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use bootstrap::config::{HostIdentity, InitSettings};
use bootstrap::objects::ClusterSettings;
use bootstrap::plane::{PlaneEnv, PlaneImages, PlaneSpec};

pub use crate::checkpoint::ClusterRole;
use crate::checkpoint::{Checkpoint, CheckpointError, ClusterIdentity, EtcdMemberIdentity};
use crate::control::NodeIdentity;
use crate::paths::HostPaths;

/// This host's cluster as its checkpoint records it, read in one open.
#[derive(Debug, Clone)]
pub struct HostCluster {
    pub identity: ClusterIdentity,
    /// The pivot is committed (an init host after its pivot; false while a
    /// restore or a recovery from a snapshot is under way).
    pub pivoted: bool,
    /// The settings recorded at the pivot (init hosts only).
    pub settings: Option<InitSettings>,
    /// This host's etcd member, once promoted.
    pub etcd_member: Option<EtcdMemberIdentity>,
}

/// Why a command that needs the cluster's keys and settings cannot run on
/// this host. Exit code 3: the host's state is in the way.
#[derive(Debug, thiserror::Error)]
pub enum NotControlPlaneHost {
    #[error("this host belongs to no cluster ('selfnode init' makes one; 'selfnode etcd snapshot restore FILE' brings one back from a snapshot)")]
    NoCluster,
    #[error("this host joined its cluster ({cluster:?}) as a worker: this runs on a control-plane host, which holds the cluster's keys and settings ('selfnode promote NODE' on one makes this host one)")]
    Joined { cluster: String },
    #[error("the cluster on this host has not pivoted yet: run 'selfnode init' again, it resumes where it stopped")]
    NotPivoted,
    #[error("this host's checkpoint holds no settings of its cluster (it was made by an older selfnode): run 'selfnode init' with the flags it was made with instead")]
    NoSettings,
}

impl HostCluster {
    /// Reads the checkpoint once and closes it; `None` when the host
    /// belongs to no cluster (no checkpoint, or no identity in it).
    pub fn load(paths: &HostPaths) -> Result<Option<HostCluster>, CheckpointError> {
        if !paths.checkpoint_dir().exists() {
            return Ok(None);
        }
        let cp = Checkpoint::open(&paths.checkpoint_dir())?;
        Self::read(&cp)
    }

    /// The same from an open checkpoint.
    pub fn read(cp: &Checkpoint) -> Result<Option<HostCluster>, CheckpointError> {
        let Some(identity) = cp.cluster_identity()? else {
            return Ok(None);
        };
        Ok(Some(HostCluster {
            pivoted: cp.pivot_committed()?,
            settings: cp.settings()?,
            etcd_member: cp.etcd_member()?,
            identity,
        }))
    }

    /// [`load`](Self::load) off the async runtime (sled blocks; the agent's
    /// tasks open the checkpoint every few seconds).
    pub async fn load_async(paths: &HostPaths) -> anyhow::Result<Option<HostCluster>> {
        let paths = paths.clone();
        Ok(tokio::task::spawn_blocking(move || HostCluster::load(&paths)).await??)
    }

    pub fn role(&self) -> ClusterRole {
        self.identity.role
    }

    /// The host's cluster is settled: it joined, or its pivot is committed.
    /// Before that a sequence (init, a restore) owns etcd and the
    /// balancer's list.
    pub fn settled(&self) -> bool {
        self.role().joined() || self.pivoted
    }

    /// The host that holds the cluster's keys and settings, pivoted: the
    /// settings, or why this host is not one.
    pub fn init_settings(&self) -> Result<&InitSettings, NotControlPlaneHost> {
        if self.role().joined() {
            return Err(NotControlPlaneHost::Joined {
                cluster: self.identity.cluster_name.clone(),
            });
        }
        if !self.pivoted {
            return Err(NotControlPlaneHost::NotPivoted);
        }
        self.settings
            .as_ref()
            .ok_or(NotControlPlaneHost::NoSettings)
    }
}

/// A control-plane host with the cluster's keys and the settings of its
/// plane, with its bundle: what `certs` and the agent's renewal start from.
/// The host that ran init (pivoted), or a joined control-plane host that
/// received the keys and recorded its settings: nothing depends on the
/// init host existing.
pub struct ControlPlaneHost {
    pub cluster: HostCluster,
    pub settings: InitSettings,
    pub bundle: dist::bundle::Bundle,
    /// A control-plane host that joined (its PKI never holds a CA of its
    /// own making, nor a kubelet.conf: `ensure_joined_control_plane_pki`).
    pub joined: bool,
}

impl ControlPlaneHost {
    /// Loads the checkpoint; refuses a host that is not a pivoted init
    /// host or a joined control-plane host with the keys ([`NotControlPlaneHost`]).
    pub fn load(paths: &HostPaths) -> anyhow::Result<ControlPlaneHost> {
        let cluster = HostCluster::load(paths)?.ok_or(NotControlPlaneHost::NoCluster)?;
        let joined = cluster.role().joined();
        let settings = if joined {
            match &cluster.settings {
                Some(s) if keys_here(&paths.pki_dir()) => s.clone(),
                _ => {
                    return Err(NotControlPlaneHost::Joined {
                        cluster: cluster.identity.cluster_name.clone(),
                    }
                    .into())
                }
            }
        } else {
            cluster.init_settings()?.clone()
        };
        let bundle = open_bundle(paths, &settings)?;
        Ok(ControlPlaneHost {
            cluster,
            settings,
            bundle,
            joined,
        })
    }

    /// This host's desired control plane.
    pub fn plane_spec(&self, paths: &HostPaths, api_lb_port: u16) -> PlaneSpec {
        plane_spec(paths, &self.settings, &self.bundle, api_lb_port)
    }
}

/// The bundle this host's control plane is rendered from: the one an
/// upgrade last recorded (`control::HostBundle`), else the one the cluster
/// was made with (init's `--bundle`), else the host's default.
pub fn open_bundle(
    paths: &HostPaths,
    settings: &InitSettings,
) -> Result<dist::bundle::Bundle, dist::bundle::BundleError> {
    let dir = crate::control::HostBundle::read(paths)
        .or_else(|| settings.bundle.clone())
        .unwrap_or_else(|| paths.default_bundle());
    dist::bundle::Bundle::open(&dir)
}

/// The desired control plane for these settings on this host: every
/// setting is mapped by `PlaneSpec::from_settings`; the host's paths, the
/// bundle's versions and images and the agent's balancer port come in here.
pub fn plane_spec(
    paths: &HostPaths,
    settings: &InitSettings,
    bundle: &dist::bundle::Bundle,
    api_lb_port: u16,
) -> PlaneSpec {
    let v = bundle.versions();
    let images = PlaneImages {
        kube_apiserver: dist::images::kube_image("kube-apiserver", v),
        kube_controller_manager: dist::images::kube_image("kube-controller-manager", v),
        kube_scheduler: dist::images::kube_image("kube-scheduler", v),
        kube_proxy: dist::images::kube_image("kube-proxy", v),
        coredns: dist::images::coredns_image(v),
        etcd: dist::images::etcd_image(v),
        selfnode: dist::images::selfnode_image(),
    };
    PlaneSpec::from_settings(
        settings,
        PlaneEnv {
            kubernetes_version: v.kubernetes.clone(),
            images,
            pki_dir: paths.pki_dir(),
            kubeconfig_dir: paths.kubeconfig_dir(),
            etcd_data_dir: paths.etcd_data_dir(),
            audit_log_dir: paths.audit_log_dir(),
            cni_conf_dir: paths.cni_conf_dir(),
            api_load_balancer_port: api_lb_port,
        },
    )
}

/// The settings of a joined control-plane host: the cluster's, as
/// published in the `selfnode-cluster` ConfigMap, with this node's name
/// and address. Names and addresses only this host knows (extra SANs, a
/// `--bundle`) are not part of a joined host's plane.
pub fn joined_settings(
    cluster: ClusterSettings,
    node: &NodeIdentity,
) -> anyhow::Result<InitSettings> {
    Ok(InitSettings {
        cluster_name: cluster.cluster_name,
        node_name: node.node_name.clone(),
        advertise_address: node.node_ip,
        pod_cidr: cluster
            .pod_cidr
            .parse()
            .context("the cluster's pod CIDR in its selfnode-cluster ConfigMap")?,
        service_cidr: cluster
            .service_cidr
            .parse()
            .context("the cluster's Service CIDR in its selfnode-cluster ConfigMap")?,
        cluster_domain: cluster.cluster_domain,
        extra_sans: Vec::new(),
        bundle: None,
        allow_workloads: cluster.allow_workloads,
        etcd_quota_backend_bytes: bootstrap::config::check_etcd_quota(
            cluster.etcd_quota_backend_bytes,
        )
        .map_err(|why| {
            anyhow::anyhow!(
                "the cluster's etcd quota in its selfnode-cluster ConfigMap cannot be used: {why}"
            )
        })?,
    })
}

/// The files without which the cluster's data cannot be read or its
/// identities signed: the CAs and keys, the service-account pair and the
/// encryption config. A restore needs them; a renewal refuses without them
/// (new ones would cut off every node and token); the scheduled snapshots
/// keep a copy of them.
pub const CLUSTER_KEY_FILES: [&str; 9] = [
    "ca.crt",
    "ca.key",
    "front-proxy-ca.crt",
    "front-proxy-ca.key",
    "etcd/ca.crt",
    "etcd/ca.key",
    "sa.key",
    "sa.pub",
    bootstrap::plane::ENCRYPTION_CONFIG_FILE,
];

/// Whether every key file of the cluster is on this host.
pub fn keys_here(pki_dir: &Path) -> bool {
    CLUSTER_KEY_FILES.iter().all(|f| pki_dir.join(f).is_file())
}

/// Host facts for the defaults: hostname and interface addresses.
pub fn host_identity() -> anyhow::Result<HostIdentity> {
    let hostname = nix::unistd::gethostname()
        .context("cannot read the hostname")?
        .to_string_lossy()
        .into_owned();
    let mut addresses = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("cannot list network interfaces")? {
        if let Some(addr) = ifa.address {
            if let Some(v4) = addr.as_sockaddr_in() {
                addresses.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                addresses.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    Ok(HostIdentity {
        hostname,
        addresses,
    })
}

/// A random 128-bit identifier, hex (a cluster's uid).
pub fn random_uid() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

/// How long any one API request may take before it is given up: a command
/// never hangs on an API server that accepted the connection and went
/// silent.
pub const API_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A client from a kubeconfig file (admin.conf, kubelet.conf), with
/// connect and read deadlines.
pub async fn kube_client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .with_context(|| format!("{} is not a usable kubeconfig", kubeconfig.display()))?;
    config.connect_timeout = Some(std::time::Duration::from_secs(10));
    config.read_timeout = Some(API_REQUEST_TIMEOUT);
    config.write_timeout = Some(API_REQUEST_TIMEOUT);
    // The read deadline counts from each request, not from when a pooled
    // connection went idle (the agent's tasks keep their client for hours).
    config.reset_reader_on_write = true;
    Ok(kube::Client::try_from(config)?)
}

/// A client kept in `cache` between passes of an agent task (the
/// kubelet's credentials); the task drops it after a failed pass, so a
/// renewed certificate is read.
pub async fn cached_client(
    kubeconfig: &Path,
    cache: &mut Option<kube::Client>,
) -> anyhow::Result<kube::Client> {
    Ok(match cache {
        Some(c) => c.clone(),
        None => cache.insert(kube_client(kubeconfig).await?).clone(),
    })
}

/// Whether every file `kubeconfig` names for its credentials exists: a
/// joining kubelet writes its kubeconfig, naming
/// `kubelet-client-current.pem`, before its certificate is approved.
pub fn kubeconfig_usable(kubeconfig: &Path) -> bool {
    let Ok(config) = kube::config::Kubeconfig::read_from(kubeconfig) else {
        return false;
    };
    let usable = config
        .auth_infos
        .iter()
        .filter_map(|a| a.auth_info.as_ref())
        .flat_map(|a| [&a.client_certificate, &a.client_key])
        .flatten()
        .all(|file| Path::new(file).exists());
    usable
}

/// Whether Node `node` carries the control-plane label (what the API
/// server DaemonSet selects). The Node authorizer lets a kubelet read its
/// own Node.
pub async fn is_control_plane_node(client: &kube::Client, node: &str) -> anyhow::Result<bool> {
    Ok(node_role(client, node).await? == NodeRole::ControlPlane)
}

/// Node annotation set by `selfnode demote`: this node left the control
/// plane on purpose; its role is not given back (a promotion clears it).
pub const DEMOTED_ANNOTATION: &str = "selfnode.dev/demoted";

/// What a Node says of its place in the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// It carries the control-plane label.
    ControlPlane,
    /// No label, and `selfnode demote` took it out on purpose
    /// ([`DEMOTED_ANNOTATION`]).
    Demoted,
    /// No label (never had one, or it was removed by hand).
    Unlabelled,
}

/// The Node's [`NodeRole`], read through `client`.
pub async fn node_role(client: &kube::Client, node: &str) -> anyhow::Result<NodeRole> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let n = nodes
        .get(node)
        .await
        .with_context(|| format!("reading Node {node}"))?;
    let labelled = n
        .metadata
        .labels
        .is_some_and(|l| l.contains_key(bootstrap::objects::CONTROL_PLANE_LABEL));
    let demoted = n
        .metadata
        .annotations
        .is_some_and(|a| a.contains_key(DEMOTED_ANNOTATION));
    Ok(match (labelled, demoted) {
        (true, _) => NodeRole::ControlPlane,
        (false, true) => NodeRole::Demoted,
        (false, false) => NodeRole::Unlabelled,
    })
}

/// The address of every endpoint the `kubernetes` EndpointSlice lists:
/// every API server publishes itself there while its lease holds (not only
/// the Ready ones: the balancer checks each itself, and a server that is
/// starting should be known before it is Ready). Each self-hosted API
/// server runs beside its etcd member.
pub fn apiserver_addresses(
    slice: &k8s_openapi::api::discovery::v1::EndpointSlice,
) -> std::collections::BTreeSet<IpAddr> {
    slice
        .endpoints
        .iter()
        .flatten()
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_naming_a_certificate_not_yet_written_is_not_usable() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("kubelet-client-current.pem");
        let conf = dir.path().join("kubelet.conf");
        std::fs::write(
            &conf,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers:\n- name: default-auth\n  user:\n    client-certificate: {0}\n    client-key: {0}\n",
                cert.display()
            ),
        )
        .unwrap();
        assert!(!kubeconfig_usable(&conf));
        std::fs::write(&cert, "pem").unwrap();
        assert!(kubeconfig_usable(&conf));
        assert!(!kubeconfig_usable(&dir.path().join("absent.conf")));
    }

    #[test]
    fn roles_keep_the_names_checkpoints_on_disk_hold() {
        for (role, name) in [
            (ClusterRole::Init, "\"init\""),
            (ClusterRole::Restore, "\"restore\""),
            (ClusterRole::Recover, "\"recover\""),
            (ClusterRole::Join, "\"join\""),
        ] {
            assert_eq!(serde_json::to_string(&role).unwrap(), name);
            assert_eq!(serde_json::from_str::<ClusterRole>(name).unwrap(), role);
            assert_eq!(format!("\"{role}\""), name);
        }
        assert!(serde_json::from_str::<ClusterRole>("\"boss\"").is_err());
    }

    #[test]
    fn every_address_of_the_slice() {
        use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(vec![
                Endpoint {
                    addresses: vec!["198.18.0.1".into()],
                    ..Endpoint::default()
                },
                Endpoint {
                    addresses: vec!["198.18.0.2".into(), "not-an-ip".into()],
                    ..Endpoint::default()
                },
            ]),
            ports: Some(vec![EndpointPort {
                port: Some(6444),
                ..EndpointPort::default()
            }]),
            ..EndpointSlice::default()
        };
        let got: Vec<String> = apiserver_addresses(&slice)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["198.18.0.1", "198.18.0.2"]);
        assert!(apiserver_addresses(&EndpointSlice::default()).is_empty());
    }

    fn cluster(role: ClusterRole, pivoted: bool, settings: bool) -> HostCluster {
        HostCluster {
            identity: ClusterIdentity {
                cluster_name: "c".into(),
                cluster_uid: "u".into(),
                node_name: "n".into(),
                role,
                created: 1,
            },
            pivoted,
            settings: settings.then(|| {
                bootstrap::config::resolve(
                    None,
                    &bootstrap::config::InitFlags::default(),
                    &HostIdentity {
                        hostname: "n".into(),
                        addresses: vec!["10.0.0.1".parse().unwrap()],
                    },
                )
                .unwrap()
            }),
            etcd_member: None,
        }
    }

    #[test]
    fn only_a_pivoted_init_host_with_settings_is_an_init_host() {
        assert!(cluster(ClusterRole::Init, true, true)
            .init_settings()
            .is_ok());
        assert!(cluster(ClusterRole::Restore, true, true)
            .init_settings()
            .is_ok());
        assert!(matches!(
            cluster(ClusterRole::Join, true, false).init_settings(),
            Err(NotControlPlaneHost::Joined { .. })
        ));
        assert!(matches!(
            cluster(ClusterRole::Init, false, false).init_settings(),
            Err(NotControlPlaneHost::NotPivoted)
        ));
        assert!(matches!(
            cluster(ClusterRole::Init, true, false).init_settings(),
            Err(NotControlPlaneHost::NoSettings)
        ));
        assert!(cluster(ClusterRole::Join, false, false).settled());
        assert!(!cluster(ClusterRole::Restore, false, true).settled());
    }
}
