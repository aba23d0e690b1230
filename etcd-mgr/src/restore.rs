//! A new data directory from a snapshot, for a one-member cluster that
//! others then join as learners. The bundle's `etcdutl snapshot restore`
//! builds it in a staging directory next to the target
//! (`.<dir name>.restore-<pid>`); only a complete, permission-fixed result
//! is renamed into place, so the target is either absent (or empty) or a
//! whole restored data directory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::info;

use crate::snapshot::{verify_file, SnapshotError};

/// The member the restored data directory belongs to.
#[derive(Debug, Clone)]
pub struct RestoreTarget {
    /// Member name (`--name`).
    pub name: String,
    /// Its peer URL (`--initial-advertise-peer-urls`).
    pub peer_url: String,
    /// Where the data directory goes; must be absent or empty.
    pub data_dir: PathBuf,
    /// `--initial-cluster-token`: give a restored cluster a new one, so its
    /// members never mistake the old cluster's members for their own.
    pub cluster_token: String,
}

/// A data directory cannot be restored from a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The snapshot file fails [`verify_file`].
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A field of [`RestoreTarget`] is unusable (empty or malformed name,
    /// peer URL or token; a data directory path without a file name).
    #[error("invalid restore target: {why}")]
    InvalidTarget {
        /// Which field and what is wrong with it.
        why: String,
    },
    /// The target data directory exists and has entries.
    #[error("refusing to restore into {path}: it exists and is not empty (it may hold the only copy of this member's data); move it aside, then run again")]
    DataDirNotEmpty {
        /// The data directory.
        path: PathBuf,
    },
    /// A file system operation on the target, its parent or the staging
    /// directory failed (including a missing parent).
    #[error("cannot {op} {path} while restoring etcd's data directory")]
    Io {
        /// What was being done, e.g. `rename into place`.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// `etcdutl` cannot be started.
    #[error("cannot run {etcdutl}")]
    Spawn {
        /// The `etcdutl` binary.
        etcdutl: PathBuf,
        /// Why it cannot be run.
        source: std::io::Error,
    },
    /// `etcdutl snapshot restore` failed, or succeeded without writing the
    /// staging directory.
    #[error("etcdutl snapshot restore of {snapshot} failed ({status}): {stderr}")]
    Etcdutl {
        /// The snapshot file.
        snapshot: PathBuf,
        /// Its exit status, e.g. `exit status: 1`.
        status: String,
        /// Its stderr (its stdout when stderr was empty), trimmed.
        stderr: String,
    },
}

impl RestoreError {
    /// True when the snapshot or the target is unusable and a retry
    /// cannot help (`selfnode` exits 2): [`RestoreError::InvalidTarget`],
    /// and [`RestoreError::Snapshot`] as [`SnapshotError::is_invalid_input`]
    /// says. I/O, `etcdutl` and conflict errors are not.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            RestoreError::Snapshot(e) => e.is_invalid_input(),
            RestoreError::InvalidTarget { .. } => true,
            RestoreError::DataDirNotEmpty { .. }
            | RestoreError::Io { .. }
            | RestoreError::Spawn { .. }
            | RestoreError::Etcdutl { .. } => false,
        }
    }

    /// True when existing state is in the way (`selfnode` exits 3):
    /// [`RestoreError::DataDirNotEmpty`], a data directory that may hold
    /// the only copy of a member's data. Nothing else is.
    pub fn is_conflict(&self) -> bool {
        match self {
            RestoreError::DataDirNotEmpty { .. } => true,
            RestoreError::Snapshot(_)
            | RestoreError::InvalidTarget { .. }
            | RestoreError::Io { .. }
            | RestoreError::Spawn { .. }
            | RestoreError::Etcdutl { .. } => false,
        }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError {
    let path = path.to_path_buf();
    move |source| RestoreError::Io { op, path, source }
}

/// Restores `snapshot` into `target.data_dir` with the real `etcdutl`: the
/// file is checked first ([`verify_file`]; `--skip-hash-check` is passed
/// only for a file without etcd's trailing hash), the target must be absent
/// or empty and its parent must exist. The result has directories 0700 and
/// files 0600 and its parent directory is fsynced after the rename. On any
/// failure the staging directory is removed and the target is untouched.
///
/// Blocking: call it from `spawn_blocking` in async code.
pub fn restore_data_dir(
    etcdutl: &Path,
    snapshot: &Path,
    target: &RestoreTarget,
) -> Result<(), RestoreError> {
    validate(target)?;
    let check = verify_file(snapshot)?;
    let data_dir = &target.data_dir;
    match fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RestoreError::DataDirNotEmpty {
                    path: data_dir.clone(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", data_dir)(e)),
    }
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(io("use the parent directory", parent)(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "it does not exist (create it first, mode 0700)",
        )));
    }
    let dir_name = data_dir
        .file_name()
        .ok_or_else(|| RestoreError::InvalidTarget {
            why: format!("{} does not name a directory", data_dir.display()),
        })?;
    let staging = parent.join(format!(
        ".{}.restore-{}",
        dir_name.to_string_lossy(),
        std::process::id()
    ));
    // Left over by a crash of an earlier process with the same pid.
    remove_staging(&staging)?;
    let result = restore_into(etcdutl, snapshot, target, check.has_hash, &staging, parent);
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

fn validate(t: &RestoreTarget) -> Result<(), RestoreError> {
    let why = if t.name.is_empty() || t.name.contains(['=', ',']) {
        format!(
            "member name {:?} must be non-empty without '=' or ','",
            t.name
        )
    } else if !(t.peer_url.starts_with("https://") || t.peer_url.starts_with("http://"))
        || t.peer_url.contains(',')
    {
        format!("peer URL {:?} must be one http(s) URL", t.peer_url)
    } else if t.cluster_token.is_empty() {
        "the cluster token is empty".into()
    } else {
        return Ok(());
    };
    Err(RestoreError::InvalidTarget { why })
}

fn remove_staging(staging: &Path) -> Result<(), RestoreError> {
    match fs::remove_dir_all(staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", staging)(e)),
        _ => Ok(()),
    }
}

/// How far a restore moves etcd's revision forward: the value the
/// Kubernetes documentation gives (more revisions than a cluster writes
/// between a snapshot and its restore).
pub const BUMP_REVISION: u64 = 1_000_000_000;

fn restore_into(
    etcdutl: &Path,
    snapshot: &Path,
    target: &RestoreTarget,
    has_hash: bool,
    staging: &Path,
    parent: &Path,
) -> Result<(), RestoreError> {
    let mut cmd = Command::new(etcdutl);
    cmd.arg("snapshot")
        .arg("restore")
        .arg(snapshot)
        .arg("--name")
        .arg(&target.name)
        .arg("--initial-cluster")
        .arg(format!("{}={}", target.name, target.peer_url))
        .arg("--initial-advertise-peer-urls")
        .arg(&target.peer_url)
        .arg("--initial-cluster-token")
        .arg(&target.cluster_token)
        .arg("--data-dir")
        .arg(staging)
        // What the Kubernetes docs ask for a restore under running clients:
        // the revision jumps past any a client has seen and is marked
        // compacted, so every watch (the kubelets', the controllers', the
        // apiservers' caches) fails with "compacted" and lists again.
        // Without it a watcher that saw a newer revision than the snapshot's
        // waits for that revision and never sees the restored objects: a
        // kubelet kept reporting nothing on pods whose restored status was
        // stale.
        .arg("--bump-revision")
        .arg(BUMP_REVISION.to_string())
        .arg("--mark-compacted");
    if !has_hash {
        cmd.arg("--skip-hash-check");
    }
    info!(snapshot = %snapshot.display(), data_dir = %target.data_dir.display(), has_hash, "restoring etcd's data directory with etcdutl");
    let out = cmd.output().map_err(|source| RestoreError::Spawn {
        etcdutl: etcdutl.to_path_buf(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let text = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        return Err(RestoreError::Etcdutl {
            snapshot: snapshot.to_path_buf(),
            status: out.status.to_string(),
            stderr: text.trim().to_string(),
        });
    }
    if !staging.is_dir() {
        return Err(RestoreError::Etcdutl {
            snapshot: snapshot.to_path_buf(),
            status: out.status.to_string(),
            stderr: format!("etcdutl succeeded but wrote no {}", staging.display()),
        });
    }
    private_tree(staging)?;
    fs::rename(staging, &target.data_dir).map_err(io("rename into place", &target.data_dir))?;
    fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", parent))?;
    info!(data_dir = %target.data_dir.display(), "restored etcd's data directory");
    Ok(())
}

/// Directories 0700, files 0600 (symbolic links are left alone), and every
/// directory fsynced so the new entries are durable before the rename.
fn private_tree(dir: &Path) -> Result<(), RestoreError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("chmod", dir))?;
    for entry in fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        let path = entry.path();
        let ty = entry.file_type().map_err(io("stat", &path))?;
        if ty.is_dir() {
            private_tree(&path)?;
        } else if ty.is_file() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(io("chmod", &path))?;
        }
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(dir: &Path) -> RestoreTarget {
        RestoreTarget {
            name: "cp-1".into(),
            peer_url: "https://127.0.0.1:23800".into(),
            data_dir: dir.join("etcd"),
            cluster_token: "restored-1".into(),
        }
    }

    #[test]
    fn targets_are_validated_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let no = Path::new("/nonexistent/etcdutl");
        let snap = dir.path().join("missing.db");
        let mut t = target(dir.path());
        t.name = "a=b".into();
        let e = restore_data_dir(no, &snap, &t).unwrap_err();
        assert!(matches!(e, RestoreError::InvalidTarget { .. }), "{e}");
        let mut t = target(dir.path());
        t.peer_url = "127.0.0.1:2380".into();
        assert!(matches!(
            restore_data_dir(no, &snap, &t),
            Err(RestoreError::InvalidTarget { .. })
        ));
        let mut t = target(dir.path());
        t.cluster_token.clear();
        assert!(matches!(
            restore_data_dir(no, &snap, &t),
            Err(RestoreError::InvalidTarget { .. })
        ));
        // A valid target: the snapshot is checked next.
        let e = restore_data_dir(no, &snap, &target(dir.path())).unwrap_err();
        assert!(
            matches!(e, RestoreError::Snapshot(SnapshotError::Unreadable { .. })),
            "{e}"
        );
        assert!(!dir.path().join("etcd").exists());
    }
}
