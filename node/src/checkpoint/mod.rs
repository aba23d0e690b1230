//! The node's durable memory, in sled: what cannot be observed again.
//!
//! The cluster identity ("this host initialised / joined cluster X"),
//! recorded before etcd starts so a host never bootstraps a second cluster by
//! accident; the pivot commit marker; and, on control-plane nodes, the last
//! known good copy of each checkpointed control-plane pod with the Secrets and
//! ConfigMaps it mounts ([`PodCheckpoint`], written by the agent's
//! checkpointer), from which the agent brings the API back after a power cut.
//!
//! Every value is stored as `{"sha256": <hex of data>, "data": <json>}` and a
//! mismatch is reported as corruption, never trusted. `meta/format_version`
//! is written on creation; an unknown version is refused. Every write is
//! flushed before it returns. sled stays behind this module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bootstrap::config::InitSettings;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const FORMAT_VERSION: u32 = 1;
/// How long an open waits for another process that holds the database.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const FORMAT_KEY: &str = "meta/format_version";
const IDENTITY_KEY: &str = "cluster/identity";
const PIVOT_KEY: &str = "init/pivot_committed";
const SETTINGS_KEY: &str = "init/settings";
const ETCD_MEMBER_KEY: &str = "etcd/member";
const POD_PREFIX: &str = "pods/";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("the checkpoint at {path} is held by another selfnode command (init, restore, or the agent's checkpointer) for over {}s; wait for it to end, then run this again", LOCK_WAIT.as_secs())]
    Locked { path: PathBuf },
    #[error("the checkpoint database at {path} is damaged ({source}); nothing in it is used. Move it aside and run 'selfnode init' again (it resumes), or 'selfnode reset' if the host must be rebuilt")]
    Damaged { path: PathBuf, source: sled::Error },
    #[error("cannot open the checkpoint at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("checkpoint index {path}: {source}")]
    Index {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {source}")]
    Io { path: PathBuf, source: sled::Error },
    #[error("checkpoint {path} has format version {found}, this selfnode understands {FORMAT_VERSION}; use a matching selfnode version")]
    Version { path: PathBuf, found: String },
    #[error("checkpoint {path}: entry {key} is corrupt ({why}); it is not used. Inspect the host, then 'selfnode reset' if it must be rebuilt")]
    Corrupt {
        path: PathBuf,
        key: String,
        why: String,
    },
}

/// How this host came to its cluster, as recorded in the checkpoint. The
/// serialised names are what checkpoints on disk hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    /// `selfnode init`: the first control-plane host, which made the PKI.
    Init,
    /// `selfnode etcd snapshot restore`: the cluster was made again from a
    /// snapshot on this host (an init host from then on).
    Restore,
    /// `selfnode recover --from-snapshot`: likewise, from the recorded
    /// settings.
    Recover,
    /// `selfnode join`: a host that joined a running cluster.
    Join,
}

impl ClusterRole {
    /// The name recorded in the checkpoint and shown in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterRole::Init => "init",
            ClusterRole::Restore => "restore",
            ClusterRole::Recover => "recover",
            ClusterRole::Join => "join",
        }
    }

    /// A host that joined (it holds no CA keys and recorded no settings).
    pub fn joined(self) -> bool {
        self == ClusterRole::Join
    }
}

impl std::fmt::Display for ClusterRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    pub cluster_name: String,
    /// Random, made at init: tells two clusters with the same name apart.
    pub cluster_uid: String,
    pub node_name: String,
    /// How the host came to the cluster.
    pub role: ClusterRole,
    pub created: u64,
}

/// This host's etcd member as the cluster knows it: what its static pod
/// must say to rejoin the same cluster, kept so that a recovery never
/// depends on the API or on an address read again from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMemberIdentity {
    pub name: String,
    /// The member ID, hex, as `etcdctl member list` prints it.
    pub id: String,
    /// The etcd cluster ID, hex.
    pub cluster_id: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub data_dir: PathBuf,
    /// Unix seconds when recorded.
    pub recorded_at: u64,
}

/// The last known good copy of one control-plane pod bound to this node:
/// kept only after it was seen Running and Ready (in the API, and running in
/// containerd), with the ConfigMaps it mounts. Never a Secret: the keys the
/// pod mounts are the host's files (hostPath), and a pod that mounts a
/// Secret is not kept. Not `Debug`, never logged whole.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct PodCheckpoint {
    /// The component, the key of the entry (`kube-apiserver`).
    pub component: String,
    /// The pod as the API served it.
    pub pod: k8s_openapi::api::core::v1::Pod,
    pub config_maps: Vec<k8s_openapi::api::core::v1::ConfigMap>,
    /// Unix seconds when it was seen Running and Ready.
    pub observed_at: u64,
}

impl PodCheckpoint {
    /// What identifies this copy in messages: pod name and UID, never data.
    pub fn describe(&self) -> String {
        format!(
            "{} (pod {}, uid {})",
            self.component,
            self.pod.metadata.name.as_deref().unwrap_or("?"),
            self.pod.metadata.uid.as_deref().unwrap_or("?")
        )
    }

    /// Equal but for when it was observed: nothing to write.
    pub fn same_content(&self, other: &PodCheckpoint) -> bool {
        self.component == other.component
            && self.pod.metadata.uid == other.pod.metadata.uid
            && self.pod.spec == other.pod.spec
            && self
                .config_maps
                .iter()
                .map(|c| (&c.data, &c.binary_data))
                .eq(other.config_maps.iter().map(|c| (&c.data, &c.binary_data)))
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    sha256: String,
    data: serde_json::Value,
}

pub struct Checkpoint {
    db: sled::Db,
    path: PathBuf,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Checkpoint, CheckpointError> {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        // Owner-only before sled writes its first file into it: the
        // directory's mode is what keeps every later file private, including
        // the snapshot files sled writes on its own (with the umask's mode).
        {
            use std::os::unix::fs::DirBuilderExt;
            let _ = std::fs::DirBuilder::new().mode(0o700).create(path);
        }
        // sled takes an exclusive file lock; the agent's checkpointer and
        // the commands open the database briefly, so a short wait is normal.
        let started = std::time::Instant::now();
        let db = loop {
            match sled::open(path) {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if started.elapsed() > LOCK_WAIT {
                        return Err(CheckpointError::Locked {
                            path: path.to_path_buf(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(source @ sled::Error::Corruption { .. }) => {
                    return Err(CheckpointError::Damaged {
                        path: path.to_path_buf(),
                        source,
                    })
                }
                Err(source) => {
                    return Err(CheckpointError::Open {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        };
        let cp = Checkpoint {
            db,
            path: path.to_path_buf(),
        };
        match cp.db.get(FORMAT_KEY).map_err(|e| cp.io(e))? {
            None => {
                cp.db
                    .insert(FORMAT_KEY, FORMAT_VERSION.to_string().as_bytes())
                    .map_err(|e| cp.io(e))?;
                cp.flush()?;
            }
            Some(v) if v.as_ref() == FORMAT_VERSION.to_string().as_bytes() => {}
            Some(v) => {
                return Err(CheckpointError::Version {
                    path: path.to_path_buf(),
                    found: String::from_utf8_lossy(&v).into_owned(),
                })
            }
        }
        // sled writes a new snapshot file when it opens a database with a
        // log to replay: every open tightens what it finds.
        restrict(path);
        Ok(cp)
    }

    fn io(&self, source: sled::Error) -> CheckpointError {
        CheckpointError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn flush(&self) -> Result<(), CheckpointError> {
        self.db.flush().map(|_| ()).map_err(|e| self.io(e))
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CheckpointError> {
        let Some(raw) = self.db.get(key).map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        let corrupt = |why: String| CheckpointError::Corrupt {
            path: self.path.clone(),
            key: key.to_string(),
            why,
        };
        let env: Envelope =
            serde_json::from_slice(&raw).map_err(|e| corrupt(format!("not an envelope: {e}")))?;
        let data = serde_json::to_vec(&env.data).map_err(|e| corrupt(e.to_string()))?;
        if hex::encode(Sha256::digest(&data)) != env.sha256 {
            return Err(corrupt("checksum mismatch".into()));
        }
        serde_json::from_value(env.data)
            .map(Some)
            .map_err(|e| corrupt(e.to_string()))
    }

    /// A value in its checksummed envelope, as stored.
    fn encode<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, CheckpointError> {
        let data = serde_json::to_value(value).map_err(|e| CheckpointError::Corrupt {
            path: self.path.clone(),
            key: key.to_string(),
            why: e.to_string(),
        })?;
        let bytes = serde_json::to_vec(&data).unwrap_or_default();
        let env = Envelope {
            sha256: hex::encode(Sha256::digest(&bytes)),
            data,
        };
        Ok(serde_json::to_vec(&env).unwrap_or_default())
    }

    fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), CheckpointError> {
        let raw = self.encode(key, value)?;
        self.write_indexed(&[(key, Some(raw))])
    }

    /// Writes (`Some`) or removes (`None`) `entries` in one batch, with the
    /// index beside the database in step: it accepts the old and the new
    /// bytes while the batch is under way, then only the new, so a crash in
    /// between is not taken for damage; a removed entry leaves the index
    /// first, so a crash leaves a stale entry, never one reported as lost.
    fn write_indexed(&self, entries: &[(&str, Option<Vec<u8>>)]) -> Result<(), CheckpointError> {
        let digest = |raw: &[u8]| hex::encode(Sha256::digest(raw));
        let mut index = self.read_index()?;
        let mut batch = sled::Batch::default();
        for (key, raw) in entries {
            match raw {
                Some(raw) => {
                    index.entry(key.to_string()).or_default().push(digest(raw));
                    batch.insert(key.as_bytes(), raw.clone());
                }
                None => {
                    index.remove(*key);
                    batch.remove(key.as_bytes());
                }
            }
        }
        self.write_index(&index)?;
        self.db.apply_batch(batch).map_err(|e| self.io(e))?;
        self.flush()?;
        for (key, raw) in entries {
            if let Some(raw) = raw {
                index.insert(key.to_string(), vec![digest(raw)]);
            }
        }
        self.write_index(&index)?;
        restrict(&self.path);
        Ok(())
    }

    /// Every entry the index lists (under `prefix`) is in the database as
    /// written. sled stops reading its log at the first damaged record,
    /// silently, so a flipped byte shows up as a lost or older entry, never
    /// as a checksum error: only this comparison finds it.
    fn check_index(&self, prefix: &str) -> Result<usize, CheckpointError> {
        let index = self.read_index()?;
        let mut checked = 0;
        for (key, accepted) in index.iter().filter(|(k, _)| k.starts_with(prefix)) {
            let found = self.db.get(key).map_err(|e| self.io(e))?;
            let why = match found {
                Some(raw) if accepted.contains(&hex::encode(Sha256::digest(&raw))) => {
                    checked += 1;
                    continue;
                }
                Some(_) => "it is not what was written last (a damaged log)",
                None => "the database lost it (a damaged log)",
            };
            return Err(CheckpointError::Corrupt {
                path: self.path.clone(),
                key: key.clone(),
                why: why.into(),
            });
        }
        Ok(checked)
    }

    /// Reads everything back from disk and checks it: every entry the
    /// index lists is there as written, and every value's checksum holds.
    /// Returns how many entries were checked. The agent's checkpointer runs
    /// it every hour, so damage shows in `selfnode status` before the power
    /// cut that would need the checkpoint.
    pub fn verify(&self) -> Result<usize, CheckpointError> {
        let indexed = self.check_index("")?;
        self.cluster_identity()?;
        self.pivot_committed()?;
        self.settings()?;
        self.etcd_member()?;
        self.pods()?;
        Ok(indexed)
    }

    /// A forced restore starts: the new identity and "not pivoted" in one
    /// atomic batch, so a kill leaves either the old cluster's record or the
    /// restore's, never a mix.
    pub fn begin_restore(&self, id: &ClusterIdentity) -> Result<(), CheckpointError> {
        self.write_indexed(&[
            (IDENTITY_KEY, Some(self.encode(IDENTITY_KEY, id)?)),
            (PIVOT_KEY, None),
        ])
    }

    pub fn cluster_identity(&self) -> Result<Option<ClusterIdentity>, CheckpointError> {
        self.get(IDENTITY_KEY)
    }

    pub fn record_cluster_identity(&self, id: &ClusterIdentity) -> Result<(), CheckpointError> {
        self.put(IDENTITY_KEY, id)
    }

    /// The pivot's commit point: after it, the self-hosted plane is authoritative.
    pub fn pivot_committed(&self) -> Result<bool, CheckpointError> {
        Ok(self.get::<u64>(PIVOT_KEY)?.is_some())
    }

    /// Commits the pivot and records the settings the self-hosted plane was
    /// made with, in one batch.
    pub fn commit_pivot(&self, settings: &InitSettings) -> Result<(), CheckpointError> {
        self.write_indexed(&[
            (SETTINGS_KEY, Some(self.encode(SETTINGS_KEY, settings)?)),
            (
                PIVOT_KEY,
                Some(self.encode(PIVOT_KEY, &crate::status::now_unix())?),
            ),
        ])
    }

    /// The settings of this host's control plane: recorded at the pivot on
    /// the host that ran init, and by a joined control-plane host when it
    /// received the cluster's keys ([`Checkpoint::record_settings`]).
    /// `None` before, or on a host of a selfnode that did not record them.
    pub fn settings(&self) -> Result<Option<InitSettings>, CheckpointError> {
        self.get(SETTINGS_KEY)
    }

    /// Records the settings of a joined control-plane host's plane (the
    /// cluster's, with this node's name and address), so that renewal and
    /// recovery on that host need no API to ask.
    pub fn record_settings(&self, settings: &InitSettings) -> Result<(), CheckpointError> {
        self.put(SETTINGS_KEY, settings)
    }

    /// This host's etcd member, recorded once it is promoted.
    pub fn etcd_member(&self) -> Result<Option<EtcdMemberIdentity>, CheckpointError> {
        self.get(ETCD_MEMBER_KEY)
    }

    pub fn record_etcd_member(&self, member: &EtcdMemberIdentity) -> Result<(), CheckpointError> {
        self.put(ETCD_MEMBER_KEY, member)
    }

    /// This host's etcd member left the cluster: nothing to bring back.
    pub fn forget_etcd_member(&self) -> Result<(), CheckpointError> {
        self.write_indexed(&[(ETCD_MEMBER_KEY, None)])
    }

    /// Every pod checkpoint, by component. A corrupt entry is an error: the
    /// caller reports it and uses none of them. So is an entry the index
    /// lists that the database does not hold as written: sled stops reading
    /// its log at the first damaged record, silently, so a flipped byte
    /// shows up as a lost or older entry, never as a checksum error.
    pub fn pods(&self) -> Result<Vec<PodCheckpoint>, CheckpointError> {
        self.check_index(POD_PREFIX)?;
        let mut out = Vec::new();
        for item in self.db.scan_prefix(POD_PREFIX) {
            let (key, _) = item.map_err(|e| self.io(e))?;
            let key = String::from_utf8_lossy(&key).into_owned();
            if let Some(pod) = self.get::<PodCheckpoint>(&key)? {
                out.push(pod);
            }
        }
        Ok(out)
    }

    /// Keeps `pod` as its component's last known good copy. The index
    /// beside the database accepts the old and the new bytes while the write
    /// is under way, then only the new, so a crash in between is not taken
    /// for damage.
    pub fn put_pod(&self, pod: &PodCheckpoint) -> Result<(), CheckpointError> {
        let key = format!("{POD_PREFIX}{}", pod.component);
        let raw = self.encode(&key, pod)?;
        self.write_indexed(&[(&key, Some(raw))])
    }

    /// Forgets a component's copy (its pod left this node for good).
    pub fn remove_pod(&self, component: &str) -> Result<(), CheckpointError> {
        self.write_indexed(&[(&format!("{POD_PREFIX}{component}"), None)])
    }

    /// `<checkpoint>.index.json`: for each pod entry, the SHA-256 of the
    /// stored bytes the database must hold.
    fn index_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".index.json");
        self.path.with_file_name(name)
    }

    fn read_index(&self) -> Result<BTreeMap<String, Vec<String>>, CheckpointError> {
        let path = self.index_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
                path: path.clone(),
                key: "(index)".into(),
                why: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(CheckpointError::Index { path, source: e }),
        }
    }

    fn write_index(&self, index: &BTreeMap<String, Vec<String>>) -> Result<(), CheckpointError> {
        let path = self.index_path();
        let bytes = serde_json::to_vec(index).unwrap_or_default();
        crate::fsutil::write_atomic(&path, &bytes, 0o600)
            .map(|_| ())
            .map_err(|source| CheckpointError::Index { path, source })
    }
}

/// The checkpoint holds what brings the control plane back: owner-only.
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.path().is_file() {
                let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600));
            }
        }
    }
}

/// Runs `f` on the checkpoint at `dir`, opened for this call only and off
/// the async runtime (sled blocks; init and other commands open it too, and
/// the open waits for them).
pub async fn with_checkpoint<T: Send + 'static>(
    dir: &Path,
    f: impl FnOnce(&Checkpoint) -> Result<T, CheckpointError> + Send + 'static,
) -> anyhow::Result<T> {
    let dir = dir.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || {
        let cp = Checkpoint::open(&dir)?;
        f(&cp)
    })
    .await??)
}

#[cfg(test)]
mod tests;
