//! Snapshots: streamed from etcd into a temporary file next to the target,
//! verified (etcd appends the SHA-256 of the database to the stream), made
//! 0600, fsynced and renamed into place; a failed save leaves nothing.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{EtcdConfig, EtcdError};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("cannot write the snapshot {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the snapshot from etcd is corrupt ({why}); nothing was saved, try again")]
    Corrupt { why: String },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub bytes: u64,
    /// SHA-256 of the whole file.
    pub sha256: String,
}

/// Checks etcd's trailing checksum: the last 32 bytes are the SHA-256 of
/// everything before them.
pub fn verify_integrity(data: &[u8]) -> Result<(), String> {
    if data.len() <= 32 {
        return Err(format!(
            "{} bytes is too short for an etcd snapshot",
            data.len()
        ));
    }
    let (db, sum) = data.split_at(data.len() - 32);
    if Sha256::digest(db).as_slice() == sum {
        Ok(())
    } else {
        Err("the trailing SHA-256 does not match the data".into())
    }
}

pub async fn save(cfg: &EtcdConfig, path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let mut client = crate::connect(cfg, &cfg.endpoints).await?;
    let mut stream = client.snapshot().await.map_err(|source| EtcdError::Rpc {
        op: "snapshot",
        source,
    })?;
    let mut data = Vec::new();
    while let Some(msg) = stream.message().await.map_err(|source| EtcdError::Rpc {
        op: "snapshot",
        source,
    })? {
        data.extend_from_slice(msg.blob());
    }
    verify_integrity(&data).map_err(|why| SnapshotError::Corrupt { why })?;
    let write_err = |source| SnapshotError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| write_err(std::io::Error::other("not a file name")))?;
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    Ok(SnapshotInfo {
        path: path.to_path_buf(),
        bytes: data.len() as u64,
        sha256: hex::encode(Sha256::digest(&data)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_is_the_trailing_sha256() {
        let mut good = b"pretend this is a bolt database".to_vec();
        let sum = Sha256::digest(&good);
        good.extend_from_slice(&sum);
        assert_eq!(verify_integrity(&good), Ok(()));
        let mut bad = good.clone();
        bad[3] ^= 1;
        assert!(verify_integrity(&bad)
            .unwrap_err()
            .contains("does not match"));
        assert!(verify_integrity(&good[..20])
            .unwrap_err()
            .contains("too short"));
    }
}
