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

use super::{AgentTask, Outcome, Schedule, TaskCx};
use crate::control::Component;
use crate::status::{now_unix, ComponentState, SnapshotStatus};

/// When scheduled snapshots are taken, how many are kept, and where.
#[derive(Debug, Clone)]
pub struct SnapshotSchedule {
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

/// How often the task looks whether a snapshot is due.
const TICK: Duration = Duration::from_secs(5);

/// The scheduled snapshots (see the module docs).
pub struct Snapshots {
    schedule: SnapshotSchedule,
    last_error: Option<String>,
}

impl Snapshots {
    pub fn new(schedule: SnapshotSchedule) -> Snapshots {
        Snapshots {
            schedule,
            last_error: None,
        }
    }
}

impl AgentTask for Snapshots {
    const COMPONENT: Component = Component::Snapshots;

    fn initial(&self) -> (ComponentState, &'static str) {
        (ComponentState::Ready, "no etcd member on this host")
    }

    fn schedule(&self) -> Schedule {
        Schedule::every(TICK)
    }

    /// A failed snapshot is a result, not an error of the pass: it is
    /// reported (the component turns unhealthy, `selfnode status` shows why)
    /// and tried again at the next tick.
    async fn pass(&mut self, cx: &mut TaskCx) -> anyhow::Result<Outcome> {
        let s = &self.schedule;
        if !s.member_manifest.exists() {
            return Ok(Outcome::Unchanged);
        }
        match due(s) {
            Ok(true) => match take(s).await {
                Ok(()) => self.last_error = None,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "scheduled etcd snapshot failed");
                    self.last_error = Some(format!("{e:#}"));
                }
            },
            Ok(false) => {}
            Err(e) => self.last_error = Some(format!("cannot list {}: {e}", s.dir.display())),
        }
        let described = describe(s, self.last_error.clone());
        let line = describe_line(&described);
        cx.status.set_snapshots(described);
        Ok(match &self.last_error {
            None => Outcome::ready(line),
            Some(_) => Outcome::Report(ComponentState::Unhealthy, line),
        })
    }
}

/// One line on the scheduled snapshots: the newest, how many, the schedule.
fn describe_line(s: &SnapshotStatus) -> String {
    let every = humantime::format_duration(Duration::from_secs(s.interval_seconds));
    match &s.last {
        Some(file) => format!(
            "last {}; {} kept (at most {}), every {every}",
            file.display(),
            s.count,
            s.keep
        ),
        None => format!("none yet; every {every}"),
    }
}

/// Whether the newest scheduled snapshot of this member is older than the
/// interval. Snapshots taken before the member's data directory was made
/// (a cluster this host had before `reset`; `reset` keeps them) do not
/// count: a new cluster gets its first snapshot at once, not up to an
/// interval later. Where the filesystem keeps no birth time, all count.
fn due(s: &SnapshotSchedule) -> std::io::Result<bool> {
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

async fn take(s: &SnapshotSchedule) -> anyhow::Result<()> {
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
    for rel in crate::cluster::CLUSTER_KEY_FILES {
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

fn describe(s: &SnapshotSchedule, last_error: Option<String>) -> SnapshotStatus {
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

    fn schedule(dir: &std::path::Path) -> SnapshotSchedule {
        SnapshotSchedule {
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

    fn snapshot_at(s: &SnapshotSchedule, at: SystemTime) {
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
