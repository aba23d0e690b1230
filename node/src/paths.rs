//! Where selfnode keeps things on a host.
//!
//! Every path the agent and the CLI touch is derived here from one root, so a
//! test (or the appliance image builder) can run a whole host under a temporary
//! directory with `--root DIR`, and mount-namespace test hosts get the real
//! layout with no flag at all.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    root: PathBuf,
}

/// The suffix of a removed member's data directory.
const REMOVED_SUFFIX: &str = ".removed-";

impl HostPaths {
    /// Paths for a host whose filesystem root is `root` (`/` on a real host).
    pub fn under(root: impl Into<PathBuf>) -> Self {
        HostPaths { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn join(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// Durable state owned by selfnode (checkpoint, containerd's content store).
    pub fn state_dir(&self) -> PathBuf {
        self.join("var/lib/selfnode")
    }

    /// Volatile state: lock, status, sockets. Wiped by a reboot or power cut.
    pub fn run_dir(&self) -> PathBuf {
        self.join("run/selfnode")
    }

    /// The kube-apiservers' audit logs on a control-plane host
    /// (`bootstrap::plane::DEFAULT_AUDIT_LOG_DIR` under the root).
    pub fn audit_log_dir(&self) -> PathBuf {
        self.join(bootstrap::plane::DEFAULT_AUDIT_LOG_DIR)
    }

    /// Per-component logs of the supervised children.
    pub fn log_dir(&self) -> PathBuf {
        self.join("var/log/selfnode")
    }

    pub fn agent_lock(&self) -> PathBuf {
        self.run_dir().join("agent.lock")
    }

    pub fn agent_status(&self) -> PathBuf {
        self.run_dir().join("agent.json")
    }

    /// The record of the bundle's last good checksum pass (JSON; see
    /// `dist::bundle::ChecksumRecord`): lets the agent's start skip files
    /// that did not change since.
    pub fn bundle_checksums(&self) -> PathBuf {
        self.state_dir().join("bundle-checksums.json")
    }

    /// The kube-apiservers the node-local load balancer forwards to.
    pub fn apiservers_file(&self) -> PathBuf {
        self.state_dir().join("apiservers")
    }

    /// Service files (`<name>.json`) the agent runs besides containerd and
    /// the kubelet: the temporary control plane, the host etcd.
    pub fn services_dir(&self) -> PathBuf {
        self.state_dir().join("services")
    }

    /// The node's name and address in its cluster (see `NodeIdentity`).
    /// This host's key pair for receiving the cluster's keys (0600).
    pub fn node_key(&self) -> PathBuf {
        self.state_dir().join("node-key")
    }

    pub fn node_identity_file(&self) -> PathBuf {
        self.state_dir().join("node.json")
    }

    /// The bundle this host runs, as `selfnode upgrade` last set it (one
    /// absolute path); absent until an upgrade (`control::HostBundle`).
    pub fn host_bundle_file(&self) -> PathBuf {
        self.state_dir().join("bundle")
    }

    /// The record of the last `selfnode upgrade apply` (JSON), and the
    /// snapshot taken before it, in `upgrade/`.
    pub fn upgrade_dir(&self) -> PathBuf {
        self.state_dir().join("upgrade")
    }

    /// Written when this host's address records move, removed once the
    /// agent's address task has converged the rest (`crate::address`).
    pub fn address_move_marker(&self) -> PathBuf {
        self.state_dir().join("address-moved")
    }

    /// The sled checkpoint: cluster identity, step records, pivot marker.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.state_dir().join("checkpoint")
    }

    /// The checkpoint's index of entry digests, beside the database
    /// (`Checkpoint` names it after its directory).
    pub fn checkpoint_index(&self) -> PathBuf {
        self.state_dir().join("checkpoint.index.json")
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.join("etc/kubernetes/pki")
    }

    /// The cluster CA's certificate (what the kubelet checks clients with).
    pub fn ca_cert(&self) -> PathBuf {
        self.pki_dir().join("ca.crt")
    }

    /// This host's etcd member's data (init's `PlaneSpec::etcd_data_dir`).
    pub fn etcd_data_dir(&self) -> PathBuf {
        self.state_dir().join("etcd")
    }

    /// Where a member's data goes when it leaves the control plane
    /// (`etcd.removed-<unix time>`): kept for inspection, never used again.
    pub fn removed_etcd_data_dir(&self, at: u64) -> PathBuf {
        self.state_dir().join(format!("etcd{REMOVED_SUFFIX}{at}"))
    }

    /// Every data directory of a member that left, oldest first.
    pub fn removed_etcd_data_dirs(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.state_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("etcd{REMOVED_SUFFIX}"))
            })
            .map(|e| e.path())
            .collect();
        found.sort();
        found
    }

    /// The temporary member's data during init's pivot, beside the member's.
    pub fn temp_etcd_data_dir(&self) -> PathBuf {
        bootstrap::plane::temp_etcd_data_dir_beside(&self.etcd_data_dir())
    }

    pub fn kubeconfig_dir(&self) -> PathBuf {
        self.join("etc/kubernetes")
    }

    pub fn containerd_root(&self) -> PathBuf {
        self.state_dir().join("containerd")
    }

    pub fn containerd_state(&self) -> PathBuf {
        self.run_dir().join("containerd")
    }

    pub fn containerd_config(&self) -> PathBuf {
        self.state_dir().join("containerd.toml")
    }

    /// The default containerd socket. Kept apart from `/run/containerd` so a
    /// distribution's own containerd on the same host is never touched.
    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd_state().join("containerd.sock")
    }

    pub fn kubelet_root(&self) -> PathBuf {
        self.join("var/lib/kubelet")
    }

    /// The KubeletConfiguration file (kubeadm's location, so users find it).
    pub fn kubelet_config(&self) -> PathBuf {
        self.kubelet_root().join("config.yaml")
    }

    /// The kubelet's kubeconfig. Absent until the node belongs to a cluster:
    /// without it the kubelet runs standalone (static pods only).
    pub fn kubelet_kubeconfig(&self) -> PathBuf {
        self.join("etc/kubernetes/kubelet.conf")
    }

    /// A joining kubelet's bootstrap kubeconfig (the token), 0600.
    pub fn bootstrap_kubelet_kubeconfig(&self) -> PathBuf {
        self.join("etc/kubernetes/bootstrap-kubelet.conf")
    }

    pub fn static_pod_dir(&self) -> PathBuf {
        self.join("etc/kubernetes/manifests")
    }

    /// The self-hosted etcd member's static pod: present while this host
    /// runs a member.
    pub fn etcd_manifest(&self) -> PathBuf {
        self.static_pod_dir().join("etcd.yaml")
    }

    /// Scheduled etcd snapshots (kept by `selfnode reset`).
    pub fn snapshot_dir(&self) -> PathBuf {
        self.state_dir().join("snapshots")
    }

    pub fn pod_logs_dir(&self) -> PathBuf {
        self.join("var/log/pods")
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.join("etc/cni/net.d")
    }

    /// The pod network's conflist, which selfnode's network agent writes.
    pub fn cni_conflist(&self) -> PathBuf {
        self.cni_conf_dir().join(cni::config::CONFLIST_FILE)
    }

    /// Where `selfnode init` and the README's set-up command put the bundle.
    pub fn default_bundle(&self) -> PathBuf {
        self.join("var/cache/selfnode/bundle")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The etcd directories reset removes are the ones init's plane spec
    /// uses (one derivation, in bootstrap, for the temporary member's).
    #[test]
    fn etcd_data_dirs_are_the_plane_specs() {
        let p = HostPaths::under("/");
        assert_eq!(
            p.etcd_data_dir(),
            Path::new(bootstrap::plane::DEFAULT_ETCD_DATA_DIR)
        );
        assert_eq!(
            p.temp_etcd_data_dir(),
            Path::new("/var/lib/selfnode/etcd-bootstrap")
        );
        assert_eq!(
            p.cni_conflist(),
            Path::new("/etc/cni/net.d/10-selfnode.conflist")
        );
    }

    #[test]
    fn paths_stay_under_the_root() {
        let p = HostPaths::under("/tmp/host1");
        assert_eq!(
            p.containerd_socket(),
            Path::new("/tmp/host1/run/selfnode/containerd/containerd.sock")
        );
        assert_eq!(
            p.kubelet_config(),
            Path::new("/tmp/host1/var/lib/kubelet/config.yaml")
        );
        assert_eq!(
            HostPaths::under("/").static_pod_dir(),
            Path::new("/etc/kubernetes/manifests")
        );
    }
}
