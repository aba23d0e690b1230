//! Scheduled etcd snapshots on hosts with an etcd member.
//!
//! Every `interval` (checked every few seconds, so a restarted agent picks
//! up where the files on disk say it is) the agent saves a snapshot of the
//! local member into the snapshot directory (0700; files 0600,
//! `etcd-<UTC time>.db`) through `etcd_mgr::snapshot::save`, which checks
//! etcd's checksum before it keeps the file, then prunes by count and age
//! (never the newest). What happened last is in the agent's status, which
//! `selfnode status` shows.

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
    for old in etcd_mgr::snapshot::prune(&s.dir, s.keep, s.max_age, now)? {
        tracing::info!(file = %old.display(), "removed an old etcd snapshot (retention)");
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
