//! The node-local part of the pod network: one CNI 1.0.0 conflist for the
//! standard plugins (`bridge` with `host-local` IPAM, then `portmap`),
//! written atomically into the directory containerd watches.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::json;

/// Name of the network in the conflist (what `ip netns`/CRI logs show).
pub const NETWORK_NAME: &str = "selfnode";
/// The file containerd reads; `10-` sorts it before most other configs.
pub const CONFLIST_FILE: &str = "10-selfnode.conflist";
/// The Linux bridge the `bridge` plugin creates on every node.
pub const DEFAULT_BRIDGE: &str = "selfnode0";
/// Where containerd's CRI plugin looks for CNI configs (selfnode's
/// containerd config names the same directory).
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// CNI spec version of the conflist: the highest that Debian's plugins
/// 1.1.1 and containerd 2.x both speak.
pub const CNI_VERSION: &str = "1.0.0";

/// What this node's CNI configuration must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniConfig {
    /// This node's pod subnet (`node.spec.podCIDR`): host-local hands out
    /// its addresses, the bridge takes the first one as the pods' gateway.
    pub pod_cidr: IpNet,
    /// The whole pod network (the controller-manager's `--cluster-cidr`):
    /// `pod_cidr` must lie inside it.
    pub cluster_cidr: IpNet,
    /// Name of the bridge (at most 15 bytes, a Linux interface name).
    pub bridge: String,
    /// MTU of the bridge and the pods' interfaces; `None`: the kernel's
    /// default (1500).
    pub mtu: Option<u32>,
    /// Directory of the conflist ([`DEFAULT_CONF_DIR`]).
    pub conf_dir: PathBuf,
}

impl CniConfig {
    /// A config with the defaults ([`DEFAULT_BRIDGE`], no MTU,
    /// [`DEFAULT_CONF_DIR`]).
    pub fn new(pod_cidr: IpNet, cluster_cidr: IpNet) -> Self {
        CniConfig {
            pod_cidr,
            cluster_cidr,
            bridge: DEFAULT_BRIDGE.to_string(),
            mtu: None,
            conf_dir: PathBuf::from(DEFAULT_CONF_DIR),
        }
    }

    /// Path of the conflist: `<conf_dir>/10-selfnode.conflist`.
    pub fn conflist_path(&self) -> PathBuf {
        self.conf_dir.join(CONFLIST_FILE)
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), CniError> {
        validate_bridge_name(&self.bridge)?;
        if self.pod_cidr.addr().is_ipv4() != self.cluster_cidr.addr().is_ipv4() {
            return Err(CniError::FamilyMismatch {
                pod_cidr: self.pod_cidr,
                cluster_cidr: self.cluster_cidr,
            });
        }
        if !self.cluster_cidr.contains(&self.pod_cidr) {
            return Err(CniError::PodCidrOutsideCluster {
                pod_cidr: self.pod_cidr,
                cluster_cidr: self.cluster_cidr,
            });
        }
        // host-local needs a gateway and at least one address to give out.
        let max = if self.pod_cidr.addr().is_ipv4() {
            30
        } else {
            126
        };
        if self.pod_cidr.prefix_len() > max {
            return Err(CniError::PodCidrTooSmall {
                pod_cidr: self.pod_cidr,
                max,
            });
        }
        if let Some(mtu) = self.mtu {
            let min = if self.pod_cidr.addr().is_ipv4() {
                576
            } else {
                1280
            };
            if !(min..=65535).contains(&mtu) {
                return Err(CniError::InvalidMtu { mtu, min });
            }
        }
        if !self.conf_dir.is_absolute() {
            return Err(CniError::RelativeConfDir {
                path: self.conf_dir.clone(),
            });
        }
        Ok(())
    }
}

/// A Linux interface name: 1 to 15 bytes, no `/`, no whitespace, not `.`
/// or `..` (the kernel's `dev_valid_name`).
pub fn validate_bridge_name(name: &str) -> Result<(), CniError> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        return Err(CniError::InvalidBridgeName {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// The conflist for `cfg` (pretty JSON, trailing newline). Deterministic:
/// the same config renders the same bytes, so [`write_conflist`] can
/// compare before writing.
///
/// - `bridge`: `isGateway` (the bridge holds the subnet's first address and
///   is the pods' default gateway), no `ipMasq` (it would masquerade pod
///   traffic to other nodes' pods too; the network agent masquerades only
///   what leaves the cluster network, [`crate::masq`]), `hairpinMode` (a pod
///   reaches itself through a Service). IPAM `host-local` over `pod_cidr`
///   with a default route.
/// - `portmap`: `hostPort`s (capability `portMappings`), with SNAT so a pod
///   can reach its own host port through localhost.
pub fn render_conflist(cfg: &CniConfig) -> String {
    let default_route = if cfg.pod_cidr.addr().is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    };
    let mut bridge = json!({
        "type": "bridge",
        "bridge": cfg.bridge,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": cfg.pod_cidr.trunc().to_string() }]],
            "routes": [{ "dst": default_route }],
        },
    });
    if let (Some(mtu), Some(obj)) = (cfg.mtu, bridge.as_object_mut()) {
        obj.insert("mtu".to_string(), json!(mtu));
    }
    let conflist = json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [
            bridge,
            {
                "type": "portmap",
                "capabilities": { "portMappings": true },
                "snat": true,
            },
        ],
    });
    // `{:#}` is serde_json's infallible pretty printer.
    format!("{conflist:#}\n")
}

/// Mode of the conflist: only containerd (root) reads it (CIS 1.1.9).
pub const CONFLIST_MODE: u32 = 0o600;

/// Writes `text` to `<dir>/10-selfnode.conflist` (mode [`CONFLIST_MODE`])
/// unless it already holds exactly that (then only a looser mode is
/// corrected): a temporary file in `dir` (a name containerd ignores),
/// fsync, rename over the conflist, fsync `dir`. Creates `dir` if needed.
/// Returns whether the file's contents changed.
pub fn write_conflist(dir: &Path, text: &str) -> Result<bool, CniError> {
    let path = dir.join(CONFLIST_FILE);
    match fs::read(&path) {
        Ok(current) if current == text.as_bytes() => {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(CONFLIST_MODE))
                .map_err(|source| CniError::Write { path, source })?;
            return Ok(false);
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(CniError::Read { path, source }),
    }
    fs::create_dir_all(dir).map_err(|source| CniError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    // A leading dot and a `.tmp` suffix: containerd only loads `*.conf`,
    // `*.conflist` and `*.json`, so a half-written file is never read.
    let tmp = dir.join(format!(".{CONFLIST_FILE}.tmp"));
    let write = |tmp: &Path| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(CONFLIST_MODE)
            .open(tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    if let Err(source) = write(&tmp) {
        // Best effort: a leftover temporary file is overwritten next time.
        let _ = fs::remove_file(&tmp);
        return Err(CniError::Write { path: tmp, source });
    }
    fs::rename(&tmp, &path).map_err(|source| CniError::Write {
        path: path.clone(),
        source,
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CniError::SyncDir {
            path: dir.to_path_buf(),
            source,
        })?;
    Ok(true)
}

/// The CNI configuration is invalid or cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// [`CniConfig::bridge`] is not a valid Linux interface name.
    #[error("invalid bridge name {name:?}: a Linux interface name has 1 to 15 characters, without '/', ':' or spaces")]
    InvalidBridgeName {
        /// The name given.
        name: String,
    },
    /// One CIDR is IPv4, the other IPv6.
    #[error("pod CIDR {pod_cidr} and cluster CIDR {cluster_cidr} are of different IP families; selfnode runs single-stack clusters")]
    FamilyMismatch {
        /// This node's pod CIDR.
        pod_cidr: IpNet,
        /// The cluster CIDR.
        cluster_cidr: IpNet,
    },
    /// The pod CIDR is not inside the cluster CIDR.
    #[error("this node's pod CIDR {pod_cidr} is not inside the cluster CIDR {cluster_cidr}; check the controller-manager's --cluster-cidr and the network agent's --cluster-cidr")]
    PodCidrOutsideCluster {
        /// This node's pod CIDR.
        pod_cidr: IpNet,
        /// The cluster CIDR.
        cluster_cidr: IpNet,
    },
    /// The pod CIDR has no room for a gateway and a pod.
    #[error("this node's pod CIDR {pod_cidr} is too small for a gateway and pods; it needs a prefix of /{max} or shorter")]
    PodCidrTooSmall {
        /// This node's pod CIDR.
        pod_cidr: IpNet,
        /// The longest usable prefix (30 for IPv4, 126 for IPv6).
        max: u8,
    },
    /// The MTU is below the family's minimum or above 65535.
    #[error("invalid MTU {mtu}: give a value from {min} to 65535")]
    InvalidMtu {
        /// The MTU given.
        mtu: u32,
        /// The family's minimum (576 for IPv4, 1280 for IPv6).
        min: u32,
    },
    /// [`CniConfig::conf_dir`] is relative.
    #[error("the CNI configuration directory must be an absolute path, got {}", path.display())]
    RelativeConfDir {
        /// The directory given.
        path: PathBuf,
    },
    /// The existing conflist cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The conflist.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The configuration directory cannot be created.
    #[error("cannot create the CNI configuration directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The temporary file cannot be written, or not renamed into place.
    #[error("cannot write {}", path.display())]
    Write {
        /// The temporary file, or the conflist for the rename.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The directory cannot be fsynced after the rename.
    #[error("cannot sync directory {}", path.display())]
    SyncDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl CniError {
    /// True when the configuration is wrong and a retry cannot help
    /// (`selfnode` exits 2): [`CniError::InvalidBridgeName`],
    /// [`CniError::FamilyMismatch`], [`CniError::PodCidrOutsideCluster`],
    /// [`CniError::PodCidrTooSmall`], [`CniError::InvalidMtu`] and
    /// [`CniError::RelativeConfDir`]. I/O errors are failures.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            CniError::InvalidBridgeName { .. }
            | CniError::FamilyMismatch { .. }
            | CniError::PodCidrOutsideCluster { .. }
            | CniError::PodCidrTooSmall { .. }
            | CniError::InvalidMtu { .. }
            | CniError::RelativeConfDir { .. } => true,
            CniError::Read { .. }
            | CniError::CreateDir { .. }
            | CniError::Write { .. }
            | CniError::SyncDir { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn cfg() -> CniConfig {
        CniConfig::new(
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        )
    }

    /// Compares `actual` with `tests/golden/<name>` (testkit).
    fn check_golden(name: &str, actual: &str) {
        testkit::golden(env!("CARGO_MANIFEST_DIR"), name, actual);
    }

    #[test]
    fn conflist_golden() {
        check_golden("10-selfnode.conflist", &render_conflist(&cfg()));
    }

    #[test]
    fn conflist_ipv6_with_mtu_golden() {
        let mut c = CniConfig::new(
            "fd00:10:244:1::/64".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        );
        c.mtu = Some(1450);
        c.validate().unwrap();
        check_golden("10-selfnode-ipv6-mtu.conflist", &render_conflist(&c));
    }

    #[test]
    fn conflist_is_the_cni_shape_the_plugins_read() {
        let v: serde_json::Value = serde_json::from_str(&render_conflist(&cfg())).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["name"], "selfnode");
        let plugins = v["plugins"].as_array().unwrap();
        let types: Vec<&str> = plugins
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
        let b = &plugins[0];
        assert_eq!(b["bridge"], "selfnode0");
        for k in ["isGateway", "hairpinMode"] {
            assert_eq!(b[k], true, "{k}");
        }
        assert_eq!(
            b["ipMasq"], false,
            "pod-to-pod across nodes keeps its source"
        );
        assert!(b.get("mtu").is_none());
        assert_eq!(b["ipam"]["type"], "host-local");
        assert_eq!(b["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(b["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(plugins[1]["capabilities"]["portMappings"], true);
        assert_eq!(plugins[1]["snat"], true);
    }

    #[test]
    fn host_bits_of_the_pod_cidr_are_dropped() {
        let mut c = cfg();
        c.pod_cidr = "10.244.1.7/24".parse().unwrap();
        assert_eq!(render_conflist(&c), render_conflist(&cfg()));
    }

    #[test]
    fn validation_names_the_problem() {
        let err = |c: CniConfig| c.validate().unwrap_err().to_string();
        cfg().validate().unwrap();

        let mut c = cfg();
        c.bridge = "a-very-long-bridge".into();
        assert!(err(c).contains("invalid bridge name"));
        for bad in ["", "a/b", "a b", ".."] {
            assert!(validate_bridge_name(bad).is_err(), "{bad:?}");
        }

        let mut c = cfg();
        c.pod_cidr = "10.245.1.0/24".parse().unwrap();
        let e = err(c);
        assert!(
            e.contains("not inside the cluster CIDR 10.244.0.0/16"),
            "{e}"
        );

        let mut c = cfg();
        c.pod_cidr = "fd00::/64".parse().unwrap();
        assert!(err(c).contains("different IP families"));

        let mut c = cfg();
        c.pod_cidr = "10.244.1.0/31".parse().unwrap();
        assert!(err(c).contains("too small"));

        let mut c = cfg();
        c.mtu = Some(100);
        assert!(err(c).contains("invalid MTU 100"));

        let mut c = cfg();
        c.conf_dir = "etc/cni".into();
        assert!(err(c).contains("absolute path"));
    }

    #[test]
    fn write_is_atomic_idempotent_and_replaces_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("etc/cni/net.d");
        let text = render_conflist(&cfg());
        assert!(write_conflist(&dir, &text).unwrap(), "first write");
        let path = dir.join(CONFLIST_FILE);
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        assert!(!write_conflist(&dir, &text).unwrap(), "unchanged");
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        // A file an older version wrote 0644: same contents, mode corrected.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!write_conflist(&dir, &text).unwrap(), "unchanged");
        assert_eq!(mode(&path), 0o600);

        let mut c = cfg();
        c.mtu = Some(1400);
        let changed = render_conflist(&c);
        assert!(write_conflist(&dir, &changed).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), changed);
        // Only the conflist is left: no temporary file.
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [CONFLIST_FILE]);
    }

    #[test]
    fn write_errors_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, "x").unwrap();
        let e = write_conflist(&file.join("net.d"), "{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not-a-dir/net.d"), "{e}");
    }
}
