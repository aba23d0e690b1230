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
                        tracing::warn!(error = %e, "scheduled etcd snapshot failed");
                        last_error = Some(e.to_string());
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

/// Whether the newest scheduled snapshot is older than the interval.
fn due(s: &Schedule) -> std::io::Result<bool> {
    let newest = etcd_mgr::snapshot::list_scheduled(&s.dir)?
        .last()
        .map(|(_, at)| *at);
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
