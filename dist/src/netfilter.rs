//! The host's iptables and conntrack tools, for the kube-proxy image.
//!
//! In iptables mode kube-proxy runs `iptables`, `iptables-save`,
//! `iptables-restore` and their `ip6tables` twins, and `conntrack`; upstream
//! ships them in its distroless-iptables base image. selfnode has no
//! registry to pull that from, so the image gets them from the machine that
//! builds it, from the Debian packages `iptables` and `conntrack`
//! (scripts/install-deps.sh installs them):
//!
//! - `/usr/sbin/xtables-legacy-multi`, `/usr/sbin/xtables-nft-multi`,
//!   `/usr/sbin/conntrack`, with every library they need (see
//!   [`crate::hostfiles`]);
//! - the `{iptables,ip6tables}-{legacy,nft}{,-save,-restore}` links as Debian
//!   installs them (→ `xtables-*-multi`);
//! - the extension modules in `/usr/lib/<multiarch>/xtables/` (loaded with
//!   dlopen, so no `DT_NEEDED` names them) and their libraries;
//! - `/run`, where iptables-legacy takes its lock (`/run/xtables.lock`;
//!   kube-proxy's DaemonSet mounts the host's file there).
//!
//! # Which backend `iptables` is
//!
//! Rules must be written through the same kernel interface (legacy
//! `ip_tables` or `nf_tables`) as the rest of the host's, or their ordering
//! is undefined. The kubelet, which creates the `KUBE-IPTABLES-HINT` and
//! `KUBE-KUBELET-CANARY` chains, runs on the host and executes the host's
//! `iptables`, which Debian's alternatives point at one backend. So the
//! image's unversioned `iptables*` (and, separately, `ip6tables*`) links
//! point at the backend the host's alternatives select when the image is
//! built. selfnode builds its images on each node when it imports them (at
//! agent start and `selfnode images import`), so every node's kube-proxy
//! matches that node. After `update-alternatives --set iptables ...` the
//! next import rebuilds the image; a running kube-proxy keeps the old
//! choice until its pod is recreated.
//!
//! Upstream's `iptables-wrapper` decides at run time instead: it runs
//! `xtables-nft-multi iptables-save -t mangle` (then ip6tables), and the
//! legacy `iptables-save` without `-t` (so as not to create the table),
//! looks for the kubelet's `KUBE-IPTABLES-HINT`/`KUBE-KUBELET-CANARY`
//! chains, defaults to nft, and re-points the links before exec'ing the
//! real command. Doing the same here would need a program in the image to
//! run those commands (selfnode itself could be one, dispatching on `argv[0]`,
//! at the cost of its size in every kube-proxy image); the build-time choice
//! gives the same answer on a node whose kubelet follows the alternatives.

use crate::hostfiles::{multiarch, HostEntry, HostFiles, HostFilesError};
use crate::layer::LayerSpec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The Debian packages the tools come from.
pub const PACKAGES: &str = "iptables conntrack";

/// The image label that records the backend of the image's `iptables`.
pub const BACKEND_LABEL: &str = "selfnode.iptables-backend";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    /// A tool, library or link cannot be collected from the host.
    #[error(transparent)]
    HostFiles(#[from] HostFilesError),
    /// The alternatives link (`/usr/sbin/iptables` or `ip6tables`) is missing.
    #[error("cannot tell which iptables backend this host uses: {path} is missing; install the tools with `apt-get install {PACKAGES}`")]
    NoSelection {
        /// The link (host path).
        path: PathBuf,
    },
    /// The alternatives link resolves to neither multi-call binary.
    #[error("cannot tell which iptables backend this host uses: {path} resolves to {target}, which is neither xtables-legacy-multi nor xtables-nft-multi; select one with `update-alternatives --set {command} /usr/sbin/{command}-nft` (or `-legacy`)")]
    UnknownBackend {
        /// The link (host path).
        path: PathBuf,
        /// What it resolves to.
        target: String,
        /// `iptables` or `ip6tables`.
        command: &'static str,
    },
}

impl NetfilterError {
    /// True when the host's tools are missing or not selected and a retry
    /// cannot help until someone fixes the host (`selfnode` exits 2):
    /// [`NetfilterError::NoSelection`], [`NetfilterError::UnknownBackend`],
    /// and [`NetfilterError::HostFiles`] as
    /// [`HostFilesError::is_invalid_input`] says.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            NetfilterError::HostFiles(e) => e.is_invalid_input(),
            NetfilterError::NoSelection { .. } | NetfilterError::UnknownBackend { .. } => true,
        }
    }
}

/// An iptables backend (the kernel interface iptables 1.8 programs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesBackend {
    /// The `ip_tables`/`ip6_tables` kernel API (`xtables-legacy-multi`).
    Legacy,
    /// nf_tables (`xtables-nft-multi`).
    Nft,
}

impl IptablesBackend {
    /// `legacy` or `nft`, as in `iptables-nft`.
    pub fn as_str(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "legacy",
            IptablesBackend::Nft => "nft",
        }
    }

    fn multi_binary(self) -> &'static str {
        match self {
            IptablesBackend::Legacy => "xtables-legacy-multi",
            IptablesBackend::Nft => "xtables-nft-multi",
        }
    }
}

impl std::fmt::Display for IptablesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const BACKENDS: [IptablesBackend; 2] = [IptablesBackend::Legacy, IptablesBackend::Nft];
const COMMANDS: [&str; 2] = ["iptables", "ip6tables"];
const SUFFIXES: [&str; 3] = ["", "-save", "-restore"];

/// The tools collected from a host, ready to go into a layer.
#[derive(Debug, Clone)]
pub struct NetfilterTools {
    /// What the image's `iptables`, `iptables-save` and `iptables-restore` run.
    pub iptables: IptablesBackend,
    /// What the image's `ip6tables*` run.
    pub ip6tables: IptablesBackend,
    files: HostFiles,
    links: BTreeMap<String, String>,
}

impl NetfilterTools {
    /// Collects the tools from host root `root` (`/` in production) and
    /// reads which backend the host's alternatives select.
    pub fn from_host(root: &Path) -> Result<NetfilterTools, NetfilterError> {
        let hint = format!("install it with `apt-get install {PACKAGES}`");
        let mut files = HostFiles::new(root, &hint);
        for program in ["xtables-legacy-multi", "xtables-nft-multi", "conntrack"] {
            files.add_elf(&format!("/usr/sbin/{program}"))?;
        }
        for command in COMMANDS {
            for backend in BACKENDS {
                for suffix in SUFFIXES {
                    files.add_file(&format!("/usr/sbin/{command}-{backend}{suffix}"))?;
                }
            }
        }
        files.add_tree(&format!("/usr/lib/{}/xtables", multiarch()))?;

        let iptables = host_backend(&files, "iptables")?;
        let ip6tables = host_backend(&files, "ip6tables")?;
        let mut links = BTreeMap::new();
        for (command, backend) in [("iptables", iptables), ("ip6tables", ip6tables)] {
            for suffix in SUFFIXES {
                links.insert(
                    format!("/usr/sbin/{command}{suffix}"),
                    format!("{command}-{backend}{suffix}"),
                );
            }
        }
        Ok(NetfilterTools {
            iptables,
            ip6tables,
            files,
            links,
        })
    }

    /// Every image path this adds, with what it is (host files, links and
    /// `/run`).
    pub fn entries(&self) -> BTreeMap<String, HostEntry> {
        let mut all = self.files.entries().clone();
        for (path, target) in &self.links {
            all.insert(path.clone(), HostEntry::Symlink(target.clone()));
        }
        all.insert("/run".to_string(), HostEntry::Dir);
        all
    }

    /// Adds the tools to `layer`.
    pub fn add_to(&self, layer: &mut LayerSpec) {
        self.files.add_to(layer);
        for (path, target) in &self.links {
            layer.add_symlink(path, target);
        }
        layer.add_dir("/run", 0o755);
    }
}

/// The backend the host's `/usr/sbin/<command>` runs, from where its links
/// end (Debian: `iptables` → `/etc/alternatives/iptables` →
/// `iptables-nft` → `xtables-nft-multi`).
fn host_backend(
    files: &HostFiles,
    command: &'static str,
) -> Result<IptablesBackend, NetfilterError> {
    let path = format!("/usr/sbin/{command}");
    let target = files
        .canonical(&path)?
        .ok_or_else(|| NetfilterError::NoSelection {
            path: files.host_path(&path),
        })?;
    let name = target.rsplit('/').next().unwrap_or_default();
    BACKENDS
        .into_iter()
        .find(|b| b.multi_binary() == name)
        .ok_or(NetfilterError::UnknownBackend {
            path: files.host_path(&path),
            target,
            command,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_tools() -> NetfilterTools {
        NetfilterTools::from_host(Path::new("/")).unwrap_or_else(|e| {
            panic!(
                "the host's iptables tools: {}; scripts/install-deps.sh installs them",
                crate::error_chain(&e)
            )
        })
    }

    /// What `update-alternatives` says on this host, e.g. `nft`.
    fn alternatives_backend(command: &str) -> String {
        let link = std::fs::read_link(format!("/etc/alternatives/{command}")).unwrap();
        let name = link.file_name().unwrap().to_str().unwrap().to_string();
        name.rsplit('-').next().unwrap().to_string()
    }

    #[test]
    fn the_hosts_tools_with_their_libraries_and_the_hosts_backend() {
        let tools = host_tools();
        assert_eq!(tools.iptables.as_str(), alternatives_backend("iptables"));
        assert_eq!(tools.ip6tables.as_str(), alternatives_backend("ip6tables"));
        let entries = tools.entries();
        let t = multiarch();
        let file = |p: &str| matches!(entries.get(p), Some(HostEntry::File(_)));
        let link = |p: &str| match entries.get(p) {
            Some(HostEntry::Symlink(target)) => target.clone(),
            other => panic!("{p} is {other:?}, not a link"),
        };
        for program in ["xtables-legacy-multi", "xtables-nft-multi", "conntrack"] {
            assert!(file(&format!("/usr/sbin/{program}")), "{program}");
        }
        assert_eq!(
            link("/usr/sbin/iptables-legacy-save"),
            "xtables-legacy-multi"
        );
        assert_eq!(link("/usr/sbin/ip6tables-nft-restore"), "xtables-nft-multi");
        let backend = tools.iptables.as_str();
        assert_eq!(link("/usr/sbin/iptables"), format!("iptables-{backend}"));
        assert_eq!(
            link("/usr/sbin/iptables-restore"),
            format!("iptables-{backend}-restore")
        );
        // Libraries of the programs, of the libraries, and of the modules
        // (libm only through libxt_statistic and friends).
        for lib in [
            "libxtables.so.12",
            "libip4tc.so.2",
            "libip6tc.so.2",
            "libnftnl.so.11",
            "libmnl.so.0",
            "libnetfilter_conntrack.so.3",
            "libnfnetlink.so.0",
            "libm.so.6",
            "libc.so.6",
        ] {
            let resolved = tools.files.canonical(&format!("/lib/{t}/{lib}")).unwrap();
            let resolved = resolved.unwrap_or_else(|| panic!("{lib} not on the host"));
            assert!(file(&resolved), "{lib} ({resolved}) is not in the image");
        }
        assert!(entries.contains_key("/lib64"), "the loader's path");
        let loader = tools
            .files
            .canonical("/lib64/ld-linux-x86-64.so.2")
            .unwrap()
            .unwrap();
        assert!(file(&loader), "{loader}");
        let modules = entries
            .keys()
            .filter(|p| p.starts_with(&format!("/usr/lib/{t}/xtables/lib")))
            .count();
        assert!(modules > 100, "{modules} xtables modules");
        assert!(file(&format!("/usr/lib/{t}/xtables/libxt_comment.so")));
        assert_eq!(entries.get("/run"), Some(&HostEntry::Dir));

        // Deterministic: the same layer twice.
        let layer = |tools: &NetfilterTools| {
            let mut layer = LayerSpec::new();
            tools.add_to(&mut layer);
            crate::layer::hash_layer(&layer).unwrap()
        };
        assert_eq!(layer(&tools), layer(&host_tools()));
    }

    #[test]
    fn backends_follow_the_links_and_a_missing_tool_is_named() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        std::fs::create_dir_all(root.join("etc/alternatives")).unwrap();
        // Collecting from a root without the tools names the first one.
        let err = NetfilterTools::from_host(root).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}/usr/sbin/xtables-legacy-multi is missing on this host; install it with `apt-get install iptables conntrack`",
                root.display()
            )
        );

        let files = HostFiles::new(root, "hint");
        let err = host_backend(&files, "iptables").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot tell which iptables backend this host uses: {}/usr/sbin/iptables is missing; install the tools with `apt-get install iptables conntrack`",
                root.display()
            )
        );
        std::fs::write(root.join("usr/sbin/xtables-legacy-multi"), "").unwrap();
        std::fs::write(root.join("usr/sbin/xtables-nft-multi"), "").unwrap();
        symlink(
            "xtables-legacy-multi",
            root.join("usr/sbin/iptables-legacy"),
        )
        .unwrap();
        symlink("xtables-nft-multi", root.join("usr/sbin/ip6tables-nft")).unwrap();
        symlink("/etc/alternatives/iptables", root.join("usr/sbin/iptables")).unwrap();
        symlink(
            "/usr/sbin/iptables-legacy",
            root.join("etc/alternatives/iptables"),
        )
        .unwrap();
        symlink("ip6tables-nft", root.join("usr/sbin/ip6tables")).unwrap();
        assert_eq!(
            host_backend(&files, "iptables").unwrap(),
            IptablesBackend::Legacy
        );
        assert_eq!(
            host_backend(&files, "ip6tables").unwrap(),
            IptablesBackend::Nft
        );
        std::fs::remove_file(root.join("usr/sbin/ip6tables")).unwrap();
        std::fs::write(root.join("usr/sbin/ip6tables"), "").unwrap();
        let err = host_backend(&files, "ip6tables").unwrap_err().to_string();
        assert!(
            err.ends_with("/usr/sbin/ip6tables resolves to /usr/sbin/ip6tables, which is neither xtables-legacy-multi nor xtables-nft-multi; select one with `update-alternatives --set ip6tables /usr/sbin/ip6tables-nft` (or `-legacy`)"),
            "{err}"
        );
    }
}
