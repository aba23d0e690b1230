//! The kernel settings the kubelet wants (`vm.overcommit_memory=1`,
//! `kernel.panic=10`, ...), set by the agent before each kubelet start so
//! the kubelet can run with `protectKernelDefaults: true`.
//!
//! Without that option the kubelet sets these same values itself at start
//! (upstream `setupKernelTunables`, mode "modify"); with it, the kubelet
//! refuses to start when one differs. The agent setting them first changes
//! nothing on the host that the kubelet would not have changed, and lets
//! the kubelet refuse to run where they were changed behind its back. Where
//! the agent cannot set them (a read-only `/proc/sys` in a container, a user
//! namespace), the option stays off and the kubelet behaves as before.

use std::path::{Path, PathBuf};

/// What the kubelet checks, relative to `/proc/sys`, and its values
/// (k8s.io/component-helpers `node/util/sysctl`, v0.37.2).
pub const KUBELET_SYSCTLS: [(&str, i64); 6] = [
    ("vm/overcommit_memory", 1),
    ("vm/panic_on_oom", 0),
    ("kernel/panic", 10),
    ("kernel/panic_on_oops", 1),
    ("kernel/keys/root_maxkeys", 1_000_000),
    ("kernel/keys/root_maxbytes", 25_000_000),
];

/// Where the kernel's settings are.
pub const PROC_SYS: &str = "/proc/sys";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds {text:?}, not a number", path.display())]
    NotANumber { path: PathBuf, text: String },
    #[error("cannot set {} to {value} (the kubelet's value): {source}", path.display())]
    Write {
        path: PathBuf,
        value: i64,
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<i64, KernelError> {
    let text = std::fs::read_to_string(path).map_err(|source| KernelError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.trim().parse().map_err(|_| KernelError::NotANumber {
        path: path.to_path_buf(),
        text: text.trim().to_string(),
    })
}

/// Whether every one of [`KUBELET_SYSCTLS`] under `proc_sys` holds the
/// kubelet's value. Changes nothing.
pub fn kubelet_sysctls_hold(proc_sys: &Path) -> bool {
    KUBELET_SYSCTLS
        .iter()
        .all(|(name, want)| read(&proc_sys.join(name)).is_ok_and(|v| v == *want))
}

/// Sets every one of [`KUBELET_SYSCTLS`] under `proc_sys` that differs
/// from the kubelet's value; returns the names it changed.
///
/// Errors with [`KernelError`] at the first one it cannot read or set.
pub fn ensure_kubelet_sysctls(proc_sys: &Path) -> Result<Vec<&'static str>, KernelError> {
    let mut changed = Vec::new();
    for (name, want) in KUBELET_SYSCTLS {
        let path = proc_sys.join(name);
        if read(&path)? == want {
            continue;
        }
        std::fs::write(&path, want.to_string()).map_err(|source| KernelError::Write {
            path: path.clone(),
            value: want,
            source,
        })?;
        changed.push(name);
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc_sys(values: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, _) in KUBELET_SYSCTLS {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let v = values
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("0\n", |(_, v)| *v);
            std::fs::write(p, v).unwrap();
        }
        dir
    }

    #[test]
    fn what_differs_is_set_and_what_holds_is_left_alone() {
        let dir = fake_proc_sys(&[("vm/overcommit_memory", "1\n"), ("kernel/panic", "0\n")]);
        assert!(!kubelet_sysctls_hold(dir.path()));
        let changed = ensure_kubelet_sysctls(dir.path()).unwrap();
        assert_eq!(
            changed,
            [
                "kernel/panic",
                "kernel/panic_on_oops",
                "kernel/keys/root_maxkeys",
                "kernel/keys/root_maxbytes"
            ]
        );
        assert!(kubelet_sysctls_hold(dir.path()));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("kernel/keys/root_maxbytes")).unwrap(),
            "25000000"
        );
        assert!(ensure_kubelet_sysctls(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_missing_setting_is_an_error_naming_it() {
        let dir = fake_proc_sys(&[]);
        std::fs::remove_file(dir.path().join("kernel/keys/root_maxkeys")).unwrap();
        let err = ensure_kubelet_sysctls(dir.path()).unwrap_err().to_string();
        assert!(err.contains("kernel/keys/root_maxkeys"), "{err}");
        assert!(!kubelet_sysctls_hold(dir.path()));
    }
}
