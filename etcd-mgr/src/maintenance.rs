//! Upkeep of etcd's backend: how big a member's database file is and how
//! much of it holds data, the cluster's alarms, disarming NOSPACE,
//! compacting the key space, and defragmenting one member.
//!
//! etcd's backend (bbolt) never gives a file's space back by itself: the
//! pages freed by compaction (the API server compacts every 5 minutes) are
//! reused, but the file only shrinks when a member is defragmented, which
//! rewrites it. The quota (`--quota-backend-bytes`) is checked against the
//! file's size: once a write would take a member above it, etcd raises the
//! NOSPACE alarm and the whole cluster refuses writes until the alarm is
//! disarmed; disarming it while a member is still above the quota only
//! raises it again at the next write.
//!
//! Every call is bounded by [`EtcdConfig::timeout`], except a
//! defragmentation, which takes as long as rewriting the file takes and so
//! gets its own deadline from the caller.

use std::time::Duration;

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, CompactionOptions};
use tracing::info;

use crate::{connect, connect_with, within, EtcdConfig, EtcdError};

/// One member's own Status: its place in the cluster and its backend's
/// size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// The member that answered.
    pub member_id: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
    /// Size of its database file in bytes.
    pub db_size: i64,
    /// Bytes of that file holding data; the rest is free pages.
    pub db_size_in_use: i64,
    /// Its quota in bytes (`--quota-backend-bytes`), from its Status (etcd
    /// 3.6 and later report it); `None` when it reports none.
    pub quota: Option<i64>,
}

impl Usage {
    /// Bytes of the file a defragmentation would give back.
    pub fn free(&self) -> i64 {
        (self.db_size - self.db_size_in_use).max(0)
    }
}

/// What kind of alarm a member raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AlarmKind {
    /// A member's database reached its quota: the cluster refuses every
    /// write that adds data (puts, lease grants); reads, deletes and
    /// compaction still work.
    NoSpace,
    /// A member's data differs from the others' (etcd's corruption check).
    Corrupt,
    /// A kind this crate does not know (etcd's number for it).
    Other(i32),
}

impl std::fmt::Display for AlarmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AlarmKind::NoSpace => f.write_str("NOSPACE"),
            AlarmKind::Corrupt => f.write_str("CORRUPT"),
            AlarmKind::Other(n) => write!(f, "alarm {n}"),
        }
    }
}

/// A raised alarm: which member raised it, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Alarm {
    /// The member that raised it.
    pub member_id: u64,
    /// What it is.
    pub kind: AlarmKind,
}

impl std::fmt::Display for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (member {:x})", self.kind, self.member_id)
    }
}

/// The Status of the member at [`EtcdConfig::endpoints`] (the first that
/// answers; give one endpoint to ask one member).
pub async fn usage(cfg: &EtcdConfig) -> Result<Usage, EtcdError> {
    usage_via(cfg, &cfg.endpoints).await
}

/// The etcd server version (`3.6.17`) of the member `cfg` reaches first:
/// what an upgrade waits for after it restarts a member on a new image.
pub async fn server_version(cfg: &EtcdConfig) -> Result<String, EtcdError> {
    let mut c = connect(cfg, &cfg.endpoints).await?;
    let s = within(cfg, "status", &cfg.endpoints, c.status()).await?;
    Ok(s.version().to_string())
}

/// The storage version (`3.6.0`) of the member `cfg` reaches first: the
/// format of its data, which etcd moves down a minor only through its own
/// downgrade ([`enable_downgrade`]).
pub async fn storage_version(cfg: &EtcdConfig) -> Result<String, EtcdError> {
    let mut c = connect(cfg, &cfg.endpoints).await?;
    let s = within(cfg, "status", &cfg.endpoints, c.status()).await?;
    Ok(s.storage_version().to_string())
}

/// etcd's downgrade to `target` (`3.6`: major and minor), validated then
/// enabled (etcd 3.6 and later); nothing when it is enabled to that target
/// already. The members then move their storage to the older format, after
/// which each can run the older release; the downgrade ends by itself once
/// every member does.
pub async fn enable_downgrade(cfg: &EtcdConfig, target: &str) -> Result<(), EtcdError> {
    use etcd_client::DowngradeOptions;
    let mut c = connect(cfg, &cfg.endpoints).await?;
    let s = within(cfg, "status", &cfg.endpoints, c.status()).await?;
    if s.downgrade_info()
        .is_some_and(|d| d.enabled() && d.target_version().starts_with(target))
    {
        return Ok(());
    }
    let version = format!("{target}.0");
    within(
        cfg,
        "downgrade validate",
        &cfg.endpoints,
        c.maintenance_client()
            .downgrade(DowngradeOptions::Validate(version.clone())),
    )
    .await?;
    within(
        cfg,
        "downgrade enable",
        &cfg.endpoints,
        c.maintenance_client()
            .downgrade(DowngradeOptions::Enable(version)),
    )
    .await?;
    info!(target, "etcd downgrade enabled");
    Ok(())
}

pub(crate) async fn usage_via(cfg: &EtcdConfig, urls: &[String]) -> Result<Usage, EtcdError> {
    let mut c = connect(cfg, urls).await?;
    let s = within(cfg, "status", urls, c.status()).await?;
    Ok(Usage {
        member_id: s.header().map_or(0, |h| h.member_id()),
        leader: s.leader(),
        db_size: s.db_size(),
        db_size_in_use: s.raft_used_db_size(),
        quota: Some(s.db_size_quota()).filter(|q| *q > 0),
    })
}

/// The alarms raised in the cluster (any member answers for all).
pub async fn alarms(cfg: &EtcdConfig) -> Result<Vec<Alarm>, EtcdError> {
    let mut c = connect(cfg, &cfg.endpoints).await?;
    let resp = within(
        cfg,
        "alarm list",
        &cfg.endpoints,
        c.alarm(AlarmAction::Get, AlarmType::None, None),
    )
    .await?;
    Ok(resp
        .alarms()
        .iter()
        .map(|a| Alarm {
            member_id: a.member_id(),
            kind: kind(a.alarm()),
        })
        .collect())
}

fn kind(t: AlarmType) -> AlarmKind {
    match t {
        AlarmType::Nospace => AlarmKind::NoSpace,
        AlarmType::Corrupt => AlarmKind::Corrupt,
        other => AlarmKind::Other(other as i32),
    }
}

/// Disarms every NOSPACE alarm (etcd keeps one per member that raised it)
/// and returns those it disarmed; none raised: nothing to do. Other alarms
/// stay. The caller checks first that every member is below its quota
/// (otherwise the next write raises the alarm again).
pub async fn disarm_nospace(cfg: &EtcdConfig) -> Result<Vec<Alarm>, EtcdError> {
    let raised: Vec<Alarm> = alarms(cfg)
        .await?
        .into_iter()
        .filter(|a| a.kind == AlarmKind::NoSpace)
        .collect();
    if raised.is_empty() {
        return Ok(raised);
    }
    let mut c = connect(cfg, &cfg.endpoints).await?;
    for a in &raised {
        let mut member = AlarmOptions::new();
        member.with_member(a.member_id);
        within(
            cfg,
            "alarm disarm",
            &cfg.endpoints,
            c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(member)),
        )
        .await?;
        info!(member = %format!("{:x}", a.member_id), "disarmed etcd's NOSPACE alarm");
    }
    Ok(raised)
}

/// Compacts the key space at the cluster's current revision and returns
/// that revision: the history of every key before it goes (a watcher
/// behind it relists), and the pages it took become free on every member,
/// for a defragmentation to give back. Physical: returns once the member
/// that answered has applied it (the others apply it as they apply the
/// log). Bounded by `timeout` (as for a defragmentation,
/// it takes as long as the members take to free the pages).
///
/// The API server compacts every 5 minutes by itself, but it records each
/// compaction with a write first, which etcd refuses under NOSPACE; so
/// under NOSPACE nothing frees the pages of deleted objects but this.
/// A revision compacted already (another member's agent was first) is not
/// an error.
pub async fn compact_to_current(cfg: &EtcdConfig, timeout: Duration) -> Result<i64, EtcdError> {
    let mut c = connect_with(cfg, &cfg.endpoints, timeout).await?;
    let status = within(cfg, "status", &cfg.endpoints, c.status()).await?;
    let revision = status.header().map_or(0, |h| h.revision());
    if revision <= 1 {
        return Ok(revision);
    }
    let call = c.compact(revision, Some(CompactionOptions::new().with_physical()));
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(_)) => {
            info!(revision, "compacted etcd's key space");
            Ok(revision)
        }
        Ok(Err(source)) if compacted_already(&source) => Ok(revision),
        Ok(Err(source)) => Err(EtcdError::Rpc {
            op: "compact",
            source,
        }),
        Err(_) => Err(EtcdError::Timeout {
            op: "compact",
            endpoint: cfg.endpoints.join(","),
            timeout,
        }),
    }
}

/// etcd's answer to a compaction at or before the last one.
fn compacted_already(err: &etcd_client::Error) -> bool {
    err.to_string()
        .contains("required revision has been compacted")
}

/// Defragments the member serving `client_url`: etcd rewrites its database
/// file without the free pages. The member serves no reads or writes while
/// it does (so the caller does one member at a time, and only while the
/// others are healthy); the cluster goes on with the others.
///
/// Bounded by `timeout` (connecting by [`EtcdConfig::timeout`]): rewriting
/// takes about as long as copying the data in use. etcd goes on with a
/// defragmentation whose caller stopped waiting, so after
/// [`EtcdError::DefragTimeout`] the member may still be busy with it.
pub async fn defragment(
    cfg: &EtcdConfig,
    client_url: &str,
    timeout: Duration,
) -> Result<(), EtcdError> {
    let urls = [client_url.to_string()];
    let mut c = connect_with(cfg, &urls, timeout).await?;
    match tokio::time::timeout(timeout, c.defragment()).await {
        Ok(Ok(_)) => {
            info!(member = client_url, "defragmented etcd member");
            Ok(())
        }
        Ok(Err(source)) => Err(EtcdError::Rpc {
            op: "defragment",
            source,
        }),
        Err(_) => Err(EtcdError::DefragTimeout {
            endpoint: client_url.to_string(),
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_is_the_file_less_what_is_in_use() {
        let u = Usage {
            member_id: 1,
            leader: 1,
            db_size: 100,
            db_size_in_use: 30,
            quota: Some(1000),
        };
        assert_eq!(u.free(), 70);
        // etcd reads the two at different moments: never negative.
        let u = Usage {
            db_size_in_use: 120,
            ..u
        };
        assert_eq!(u.free(), 0);
    }

    #[test]
    fn alarms_are_named_as_etcdctl_names_them() {
        assert_eq!(kind(AlarmType::Nospace), AlarmKind::NoSpace);
        assert_eq!(kind(AlarmType::Corrupt), AlarmKind::Corrupt);
        let a = Alarm {
            member_id: 0x8e9e05c52164694d,
            kind: AlarmKind::NoSpace,
        };
        assert_eq!(a.to_string(), "NOSPACE (member 8e9e05c52164694d)");
    }
}
