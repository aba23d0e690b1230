//! Scheduled etcd snapshots on hosts with an etcd member.
//!
//! Every `interval` (checked every few seconds, so a restarted agent picks
//! up where the files on disk say it is) the agent saves a snapshot of the
//! local member into the snapshot directory (0700; files 0600,
//! `etcd-<UTC time>.db`) through `etcd_mgr::snapshot::save`, which checks
//! etcd's checksum before it keeps the file, then prunes by count and age
//! (never the newest). What happened last is in the agent's status, which
//! `selfnode status` shows.
//!
//! A snapshot alone cannot be restored: the cluster's Secrets are encrypted
//! with a key from its PKI. So each snapshot also refreshes `pki/` in the
//! same directory (0700, files 0600) with the files a restore needs (the
//! CAs, the service-account keys, the encryption config), and `selfnode etcd
//! snapshot restore` uses it when `--pki` is not given and the host's own
//! PKI is gone (after a reset).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::supervisor::StatusHandle;
use crate::status::{now_unix, SnapshotStatus};

#[derive(Debug, Clone)]
pub struct Schedule {
    /// Zero: no scheduled snapshots.
    pub interval: Duration,
    pub keep: usize,
    pub max_age: Duration,
    pub dir: PathBuf,
    /// Present while this host runs an etcd member.
    pub member_manifest: PathBuf,
    /// The member's data directory: a snapshot older than it is of the
    /// cluster this host had before a reset (the directory kept them), not
    /// of this one.
    pub member_data_dir: PathBuf,
    /// The cluster's PKI directory, copied beside the snapshots.
    pub pki_dir: PathBuf,
    pub etcd: etcd_mgr::EtcdConfig,
}

/// How often the loop looks whether a snapshot is due.
const TICK: Duration = Duration::from_secs(5);

pub async fn run(schedule: Schedule, status: StatusHandle, stop: CancellationToken) {
    if schedule.interval.is_zero() {
        return;
    }
    let mut last_error: Option<String> = None;
    loop {
        if schedule.member_manifest.exists() {
            match due(&schedule) {
                Ok(true) => match take(&schedule).await {
                    Ok(()) => last_error = None,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "scheduled etcd snapshot failed");
                        last_error = Some(format!("{e:#}"));
                    }
                },
                Ok(false) => {}
                Err(e) => last_error = Some(format!("cannot list {}: {e}", schedule.dir.display())),
            }
            status.set_snapshots(describe(&schedule, last_error.clone()));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Whether the newest scheduled snapshot of this member is older than the
/// interval. Snapshots taken before the member's data directory was made
/// (a cluster this host had before `reset`; `reset` keeps them) do not
/// count: a new cluster gets its first snapshot at once, not up to an
/// interval later. Where the filesystem keeps no birth time, all count.
fn due(s: &Schedule) -> std::io::Result<bool> {
    let born = std::fs::metadata(&s.member_data_dir)
        .and_then(|m| m.created())
        .ok();
    let newest = etcd_mgr::snapshot::list_scheduled(&s.dir)?
        .into_iter()
        .map(|(_, at)| at)
        .filter(|at| born.is_none_or(|b| *at + Duration::from_secs(1) >= b))
        .max();
    Ok(match newest {
        None => true,
        Some(at) => SystemTime::now()
            .duration_since(at)
            .map(|age| age >= s.interval)
            .unwrap_or(false),
    })
}

async fn take(s: &Schedule) -> anyhow::Result<()> {
    crate::fsutil::ensure_dir(&s.dir, 0o700)?;
    let now = SystemTime::now();
    let file = s.dir.join(etcd_mgr::snapshot::scheduled_name(now));
    let info = etcd_mgr::snapshot::save(&s.etcd, &file).await?;
    tracing::info!(file = %info.path.display(), bytes = info.bytes, "saved a scheduled etcd snapshot");
    keep_pki(&s.pki_dir, &s.dir.join(PKI_COPY))?;
    for old in etcd_mgr::snapshot::prune(&s.dir, s.keep, s.max_age, now)? {
        tracing::info!(file = %old.display(), "removed an old etcd snapshot (retention)");
    }
    Ok(())
}

/// The directory beside the snapshots that holds what a restore needs.
pub const PKI_COPY: &str = "pki";

/// Copies the files a restore needs from `pki_dir` into `to` (0700, files
/// 0600); unchanged files are not rewritten.
pub fn keep_pki(pki_dir: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    for rel in crate::init::restore::RESTORE_PKI_FILES {
        let from = pki_dir.join(rel);
        let bytes = std::fs::read(&from).with_context(|| {
            format!(
                "cannot keep the PKI beside the snapshots: {}",
                from.display()
            )
        })?;
        let dest = to.join(rel);
        if let Some(dir) = dest.parent() {
            crate::fsutil::ensure_dir(dir, 0o700)?;
        }
        crate::fsutil::write_atomic(&dest, &bytes, 0o600)
            .with_context(|| format!("writing {}", dest.display()))?;
    }
    Ok(())
}

fn describe(s: &Schedule, last_error: Option<String>) -> SnapshotStatus {
    let files = etcd_mgr::snapshot::list_scheduled(&s.dir).unwrap_or_default();
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    SnapshotStatus {
        dir: s.dir.clone(),
        interval_seconds: s.interval.as_secs(),
        keep: s.keep,
        max_age_seconds: s.max_age.as_secs(),
        count: files.len(),
        last: files.last().map(|(p, _)| p.clone()),
        last_time: files.last().map(|(_, t)| unix(*t)),
        last_error,
        checked: now_unix(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(dir: &std::path::Path) -> Schedule {
        Schedule {
            interval: Duration::from_secs(6 * 3600),
            keep: 10,
            max_age: Duration::from_secs(7 * 24 * 3600),
            dir: dir.join("snapshots"),
            member_manifest: dir.join("etcd.json"),
            member_data_dir: dir.join("etcd"),
            pki_dir: dir.join("pki"),
            etcd: crate::etcd::config(&crate::paths::HostPaths::under(dir)),
        }
    }

    fn snapshot_at(s: &Schedule, at: SystemTime) {
        std::fs::create_dir_all(&s.dir).unwrap();
        std::fs::write(s.dir.join(etcd_mgr::snapshot::scheduled_name(at)), b"").unwrap();
    }

    /// A recent snapshot of this member's cluster is enough; one taken
    /// before its data directory existed (the cluster before a reset) is
    /// not, however recent.
    #[test]
    fn a_snapshot_of_the_cluster_before_a_reset_does_not_count() {
        let tmp = tempfile::tempdir().unwrap();
        let s = schedule(tmp.path());
        std::fs::create_dir_all(&s.member_data_dir).unwrap();
        if std::fs::metadata(&s.member_data_dir)
            .and_then(|m| m.created())
            .is_err()
        {
            // No birth times on this filesystem: the documented fallback,
            // every snapshot counts by its age.
            snapshot_at(&s, SystemTime::now() - Duration::from_secs(3600));
            assert!(!due(&s).unwrap(), "no birth time: an hour old counts");
            return;
        }
        assert!(due(&s).unwrap(), "no snapshot at all");
        snapshot_at(&s, SystemTime::now() - Duration::from_secs(3600));
        assert!(due(&s).unwrap(), "an hour old, older than the member");
        snapshot_at(&s, SystemTime::now());
        assert!(!due(&s).unwrap(), "one of this member, just taken");
    }

    /// Without a data directory to date them by, snapshots count by age.
    #[test]
    fn without_a_data_directory_the_newest_snapshot_counts_by_age() {
        let tmp = tempfile::tempdir().unwrap();
        let s = schedule(tmp.path());
        snapshot_at(&s, SystemTime::now() - Duration::from_secs(3600));
        assert!(!due(&s).unwrap(), "an hour old, the interval is 6 h");
        let t = schedule(&tmp.path().join("other"));
        snapshot_at(&t, SystemTime::now() - Duration::from_secs(7 * 3600));
        assert!(due(&t).unwrap(), "seven hours old");
    }
}
