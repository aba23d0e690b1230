//! The host kernel settings the pod network needs: IP forwarding, and
//! bridged traffic passing through iptables (`br_netfilter`), which
//! kube-proxy's Service rules need for pod-to-Service traffic between two
//! pods on the same bridge.
//!
//! Paths are parameters (`/proc/sys`, `/lib/modules` in production) so the
//! logic runs against temporary directories in tests. Every function here
//! blocks (file I/O, `modprobe`): call it from `spawn_blocking`.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where sysctls live.
pub const DEFAULT_PROC_SYS: &str = "/proc/sys";
/// Where kernel modules live (mounted read-only into the agent's pod).
pub const DEFAULT_MODULES_DIR: &str = "/lib/modules";
/// The module that makes bridged traffic visible to iptables.
pub const BR_NETFILTER: &str = "br_netfilter";

/// Sets the sysctl `key` (a path under `proc_sys`, e.g.
/// `net/ipv4/ip_forward`) to `value` unless it already has it. Returns
/// whether it changed.
pub fn ensure_sysctl(proc_sys: &Path, key: &str, value: &str) -> Result<bool, KernelError> {
    let path = proc_sys.join(key);
    let name = key.replace('/', ".");
    let current = fs::read_to_string(&path).map_err(|source| KernelError::ReadSysctl {
        name: name.clone(),
        source,
    })?;
    if current.trim() == value {
        return Ok(false);
    }
    fs::write(&path, value).map_err(|source| KernelError::WriteSysctl {
        name,
        value: value.to_string(),
        source,
    })?;
    Ok(true)
}

/// Turns on forwarding for the cluster's IP family
/// (`net.ipv4.ip_forward` or `net.ipv6.conf.all.forwarding`), without
/// which nothing leaves a pod for another node or the outside. Returns
/// whether it changed.
pub fn enable_forwarding(proc_sys: &Path, ipv6: bool) -> Result<bool, KernelError> {
    if ipv6 {
        ensure_sysctl(proc_sys, "net/ipv6/conf/all/forwarding", "1")
    } else {
        ensure_sysctl(proc_sys, "net/ipv4/ip_forward", "1")
    }
}

/// How `br_netfilter` came to be present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleLoad {
    /// Loaded already (or built into the kernel).
    Present,
    /// Loaded by the host's `modprobe`.
    Modprobe,
    /// Loaded by selfnode itself from `modules.dep` (no `modprobe` in the
    /// image); the files loaded, dependencies first.
    Direct {
        /// The module files loaded, dependencies first.
        files: Vec<PathBuf>,
    },
}

/// Makes sure `br_netfilter` is loaded (its sysctls appear under
/// `net/bridge`) and sets `net.bridge.bridge-nf-call-iptables` (or
/// `-ip6tables`) to 1. Returns how the module came to be present and
/// whether the sysctl changed.
pub fn ensure_bridge_netfilter(
    proc_sys: &Path,
    modules_dir: &Path,
    ipv6: bool,
) -> Result<(ModuleLoad, bool), KernelError> {
    let bridge = proc_sys.join("net/bridge");
    let load = if bridge.exists() {
        ModuleLoad::Present
    } else {
        let load = load_module(BR_NETFILTER, proc_sys, modules_dir)?;
        if !bridge.exists() {
            return Err(KernelError::NoBridgeSysctls { path: bridge });
        }
        load
    };
    let key = if ipv6 {
        "net/bridge/bridge-nf-call-ip6tables"
    } else {
        "net/bridge/bridge-nf-call-iptables"
    };
    let changed = ensure_sysctl(proc_sys, key, "1")?;
    Ok((load, changed))
}

/// Loads kernel module `name` and its dependencies: with `modprobe` when
/// it is on `PATH`, otherwise (selfnode's image has none) directly with
/// `finit_module(2)` from `<modules_dir>/<release>/modules.dep`, the
/// release read from `<proc_sys>/kernel/osrelease`. Compressed modules
/// are handed to the kernel to decompress (Linux 6.4 and later).
pub fn load_module(
    name: &str,
    proc_sys: &Path,
    modules_dir: &Path,
) -> Result<ModuleLoad, KernelError> {
    let modprobe = match Command::new("modprobe").arg(name).output() {
        Ok(out) if out.status.success() => return Ok(ModuleLoad::Modprobe),
        Ok(out) => Some(format!(
            "modprobe {name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => Some(format!("cannot run modprobe: {e}")),
    };
    load_module_direct(name, proc_sys, modules_dir).map_err(|e| match (modprobe, e) {
        (Some(modprobe), KernelError::LoadModule { module, reason }) => KernelError::LoadModule {
            module,
            reason: format!("{modprobe}; {reason}"),
        },
        (_, e) => e,
    })
}

/// Loads `name` and its dependencies with `finit_module(2)` only (see
/// [`load_module`]); what selfnode's own `modprobe` runs.
pub fn load_module_direct(
    name: &str,
    proc_sys: &Path,
    modules_dir: &Path,
) -> Result<ModuleLoad, KernelError> {
    let fail = |reason: String| KernelError::LoadModule {
        module: name.to_string(),
        reason,
    };
    let release_path = proc_sys.join("kernel/osrelease");
    let release = fs::read_to_string(&release_path)
        .map_err(|e| fail(format!("cannot read {}: {e}", release_path.display())))?;
    let dir = modules_dir.join(release.trim());
    let dep_path = dir.join("modules.dep");
    let dep = fs::read_to_string(&dep_path).map_err(|e| {
        fail(format!(
            "cannot read {} (is the host's /lib/modules mounted?): {e}",
            dep_path.display()
        ))
    })?;
    let order = module_load_order(&dep, name)
        .ok_or_else(|| fail(format!("not listed in {}", dep_path.display())))?;
    let mut files = Vec::new();
    for rel in order {
        let path = dir.join(&rel);
        finit_module(&path).map_err(|e| fail(format!("cannot load {}: {e}", path.display())))?;
        files.push(path);
    }
    Ok(ModuleLoad::Direct { files })
}

/// The files to load for module `name`, dependencies first, from a
/// `modules.dep` text (lines `path: dep1 dep2 …`, where the deepest
/// dependency comes last, as modprobe reads them). Module names compare
/// with `-` and `_` as the same character.
pub fn module_load_order(modules_dep: &str, name: &str) -> Option<Vec<String>> {
    let want = normalize(name);
    for line in modules_dep.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        if module_name(path).map(normalize) != Some(want.clone()) {
            continue;
        }
        let mut order: Vec<String> = deps.split_whitespace().rev().map(str::to_string).collect();
        order.push(path.trim().to_string());
        return Some(order);
    }
    None
}

/// `kernel/net/bridge/br_netfilter.ko.xz` → `br_netfilter`.
fn module_name(path: &str) -> Option<&str> {
    let file = path.trim().rsplit('/').next()?;
    file.split_once(".ko").map(|(n, _)| n)
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `MODULE_INIT_COMPRESSED_FILE` of `finit_module(2)`.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

fn finit_module(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    let compressed = path
        .extension()
        .is_some_and(|e| e == "xz" || e == "zst" || e == "gz");
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    let params = CString::default();
    // SAFETY: finit_module reads the open file `file` (alive for the call)
    // and the NUL-terminated, empty parameter string `params`; it writes
    // no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        return Ok(()); // loaded already
    }
    Err(err)
}

/// A kernel setting the pod network needs cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A sysctl file cannot be read.
    #[error("cannot read sysctl {name}")]
    ReadSysctl {
        /// The sysctl, dotted, e.g. `net.ipv4.ip_forward`.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A sysctl file cannot be written.
    #[error("cannot set sysctl {name}={value} (the network agent must run privileged, with /proc/sys writable)")]
    WriteSysctl {
        /// The sysctl, dotted.
        name: String,
        /// The value wanted.
        value: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Neither `modprobe` nor a direct load from `modules.dep` worked.
    #[error("cannot load kernel module {module}: {reason}")]
    LoadModule {
        /// The module, e.g. `br_netfilter`.
        module: String,
        /// What each way of loading it answered.
        reason: String,
    },
    /// The module loaded but `net/bridge` did not appear under `/proc/sys`.
    #[error("{} is still missing after loading br_netfilter", path.display())]
    NoBridgeSysctls {
        /// The `net/bridge` directory.
        path: PathBuf,
    },
}

impl KernelError {
    /// False for every variant: a missing privilege, module or sysctl is
    /// the host's state, which may change (the agent retries); no input
    /// of ours is wrong.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            KernelError::ReadSysctl { .. }
            | KernelError::WriteSysctl { .. }
            | KernelError::LoadModule { .. }
            | KernelError::NoBridgeSysctls { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/llc/llc.ko.xz:
kernel/net/802/stp.ko.xz: kernel/net/llc/llc.ko.xz
kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/net/bridge/br_netfilter.ko.xz: kernel/net/bridge/bridge.ko.xz kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/drivers/net/dummy.ko:
";

    #[test]
    fn dependencies_load_first() {
        assert_eq!(
            module_load_order(DEP, "br_netfilter").unwrap(),
            [
                "kernel/net/llc/llc.ko.xz",
                "kernel/net/802/stp.ko.xz",
                "kernel/net/bridge/bridge.ko.xz",
                "kernel/net/bridge/br_netfilter.ko.xz",
            ]
        );
        assert_eq!(
            module_load_order(DEP, "br-netfilter").unwrap().len(),
            4,
            "- and _ are the same"
        );
        assert_eq!(
            module_load_order(DEP, "dummy").unwrap(),
            ["kernel/drivers/net/dummy.ko"]
        );
        assert_eq!(module_load_order(DEP, "bridge").unwrap().len(), 3);
        assert_eq!(module_load_order(DEP, "nope"), None);
        assert_eq!(module_load_order(DEP, "br"), None, "no prefix match");
    }

    fn proc_sys() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (k, v) in [
            ("net/ipv4/ip_forward", "0\n"),
            ("net/ipv6/conf/all/forwarding", "0\n"),
            ("kernel/osrelease", "6.1.0-test\n"),
        ] {
            let p = d.path().join(k);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, v).unwrap();
        }
        d
    }

    #[test]
    fn sysctls_are_written_only_when_different() {
        let d = proc_sys();
        assert!(enable_forwarding(d.path(), false).unwrap());
        assert_eq!(
            fs::read_to_string(d.path().join("net/ipv4/ip_forward")).unwrap(),
            "1"
        );
        assert!(!enable_forwarding(d.path(), false).unwrap());
        assert!(enable_forwarding(d.path(), true).unwrap());
        let e = ensure_sysctl(d.path(), "net/nope", "1")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "cannot read sysctl net.nope");
    }

    #[test]
    fn bridge_sysctl_is_set_when_the_module_is_there() {
        let d = proc_sys();
        let key = d.path().join("net/bridge/bridge-nf-call-iptables");
        fs::create_dir_all(key.parent().unwrap()).unwrap();
        fs::write(&key, "0\n").unwrap();
        let modules = tempfile::tempdir().unwrap();
        assert_eq!(
            ensure_bridge_netfilter(d.path(), modules.path(), false).unwrap(),
            (ModuleLoad::Present, true)
        );
        assert_eq!(fs::read_to_string(&key).unwrap(), "1");
        assert_eq!(
            ensure_bridge_netfilter(d.path(), modules.path(), false).unwrap(),
            (ModuleLoad::Present, false)
        );
    }

    #[test]
    fn a_missing_module_says_where_it_looked() {
        let d = proc_sys();
        let modules = tempfile::tempdir().unwrap();
        // Whether or not modprobe exists here, it cannot load a module
        // of this name, and the direct loader finds no modules.dep.
        let e = load_module("selfnode_no_such_module", d.path(), modules.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot load kernel module selfnode_no_such_module: "),
            "{e}"
        );
        assert!(e.contains("6.1.0-test/modules.dep"), "{e}");
        assert!(e.contains("is the host's /lib/modules mounted?"), "{e}");

        let release = modules.path().join("6.1.0-test");
        fs::create_dir_all(&release).unwrap();
        fs::write(release.join("modules.dep"), DEP).unwrap();
        let e = load_module("selfnode_no_such_module", d.path(), modules.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not listed in"), "{e}");
    }
}
