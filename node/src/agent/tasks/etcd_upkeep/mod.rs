//! etcd's upkeep on hosts that run an etcd member: its size, the cluster's
//! alarms, defragmentation and NOSPACE.
//!
//! etcd gives a database file's free pages back only when the member is
//! defragmented, and its quota (`--quota-backend-bytes`, the cluster's
//! setting) is checked against the file's size: at the quota etcd raises
//! NOSPACE and the whole cluster takes no writes until the alarm is
//! disarmed. Compaction, which frees the pages, is the API server's (it
//! compacts every 5 minutes), except under NOSPACE. Every [`PERIOD`] this
//! task:
//!
//! - reads its own member's Status (file size, bytes in use, quota) and
//!   the cluster's alarms, and reports them; an alarm makes it unhealthy,
//!   with what the alarm means and what to do;
//! - **defragments its own member** when [`should_defragment`] says so,
//!   only while every member answers, and never two members at once: it
//!   holds the Lease [`ETCD_DEFRAG_LEASE`] (`kube-system`, holder = this
//!   node) through the control-plane agents' client while it defragments,
//!   and skips when the API does not answer (upkeep is not urgent). Under
//!   NOSPACE no Lease can be written (etcd refuses the API server's
//!   writes), so the members take turns by id instead ([`whose_turn`]);
//! - **compacts under NOSPACE**: the API server records each compaction
//!   with a write first, which etcd refuses then, so the pages of objects
//!   deleted to make room stay taken; this task compacts at the current
//!   revision (watchers behind it relist) on each pass while the alarm is
//!   raised, and defragments any member with [`NOSPACE_MIN_FREE`] free;
//! - **disarms NOSPACE** once every member is below its quota
//!   ([`may_disarm`]): before that the next write would raise it again.

mod lease;

use std::time::{Duration, Instant};

use bootstrap::objects::{ETCD_DEFRAG_LEASE, NAMESPACE};
use bytesize::ByteSize;
use etcd_mgr::maintenance::{self, Alarm, AlarmKind, Usage};
use etcd_mgr::{EtcdError, MemberStatus};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use self::lease::{release_lease, take_lease};
use super::{AgentTask, Outcome, Schedule, TaskCx};
use crate::cluster::HostCluster;
use crate::control::{Component, NodeIdentity};
use crate::status::ComponentState;

/// How often the member is looked at.
const PERIOD: Duration = Duration::from_secs(120);
/// From containerd being ready to the first look: the member starts first.
const FIRST: Duration = Duration::from_secs(30);

const MIB: i64 = 1024 * 1024;
/// A member is defragmented only when at least this much of its file is
/// free (or a tenth of its quota, if that is less): a defragmentation
/// stops the member for as long as it copies its data, which is worth it
/// for tens of MiB, not for a few pages.
pub const DEFRAG_MIN_FREE: i64 = 64 * MIB;
/// Under NOSPACE the cluster takes no writes anyway: a member with this
/// much free is defragmented, whatever the share.
pub const NOSPACE_MIN_FREE: i64 = MIB;
/// ... and when more than half of the file is free (a file twice the size
/// of its data: the space is lost for good until a defragmentation), or
/// the file has reached this share of the quota (in percent): the quota is
/// checked against the file, free pages included, so a file near it is
/// defragmented before etcd raises NOSPACE.
pub const DEFRAG_NEAR_QUOTA_PERCENT: i64 = 80;
/// How long one defragmentation may take: it rewrites the data in use
/// (at most the quota, 8 GiB by default) at disk speed.
const DEFRAG_TIMEOUT: Duration = Duration::from_secs(300);
/// The Lease's duration: longer than a defragmentation may take, so it
/// does not expire while one runs; released at once after one.
const LEASE_SECONDS: i32 = DEFRAG_TIMEOUT.as_secs() as i32 + 60;

/// The upkeep task (see the module docs).
#[derive(Default)]
pub struct EtcdUpkeep {
    /// The last defragmentation of this member: when, and the file's size
    /// before and after.
    last_defrag: Option<(Instant, i64, i64)>,
}

impl AgentTask for EtcdUpkeep {
    const COMPONENT: Component = Component::EtcdUpkeep;

    fn initial(&self) -> (ComponentState, &'static str) {
        (ComponentState::Ready, "no etcd member on this host")
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            first: FIRST,
            retry_first: Duration::from_secs(10),
            ..Schedule::every(PERIOD)
        }
    }

    /// A member that does not answer yet (the kubelet starts it after the
    /// agent, a restart, a pivot) is the etcd-member row's and status's to
    /// report; this task's failed passes show there as its last error. A
    /// failed defragmentation is logged as a warning where it happens.
    fn quiet_errors(&self) -> bool {
        true
    }

    async fn pass(&mut self, cx: &mut TaskCx) -> anyhow::Result<Outcome> {
        if !cx.paths.etcd_manifest().exists() {
            return Ok(Outcome::ready("no etcd member on this host"));
        }
        // While a sequence owns etcd (init before its pivot, a restore),
        // the member is not this task's.
        match HostCluster::load_async(&cx.paths).await? {
            Some(c) if c.settled() => {}
            _ => return Ok(Outcome::Unchanged),
        }
        let cfg = crate::etcd::config(&cx.paths);
        let mut own = maintenance::usage(&cfg).await?;
        let mut alarms = maintenance::alarms(&cfg).await?;
        let mut members = etcd_mgr::members(&cfg).await?;
        let mut notes = Vec::new();
        let nospace = alarms.iter().any(|a| a.kind == AlarmKind::NoSpace);

        if nospace {
            // The API server's compaction is refused under NOSPACE, so the
            // pages of what was deleted since stay taken until this.
            match maintenance::compact_to_current(&cfg, DEFRAG_TIMEOUT).await {
                Ok(revision) => {
                    own = maintenance::usage(&cfg).await?;
                    members = etcd_mgr::members(&cfg).await?;
                    notes.push(format!("compacted at revision {revision}"));
                }
                Err(e) => notes.push(format!("cannot compact: {:#}", anyhow::Error::new(e))),
            }
        }
        if should_defragment(&own)
            || (nospace && worth_under_nospace(own.db_size, own.db_size_in_use))
        {
            let before = self.last_defrag.map(|(at, _, _)| at);
            if let Some(note) = self.defragment(cx, &cfg, &own, &members, nospace).await? {
                notes.push(note);
            }
            if self.last_defrag.map(|(at, _, _)| at) != before {
                own = maintenance::usage(&cfg).await?;
                members = etcd_mgr::members(&cfg).await?;
            }
        }
        if nospace {
            match may_disarm(&members) {
                Ok(()) => {
                    let disarmed = maintenance::disarm_nospace(&cfg).await?;
                    if !disarmed.is_empty() {
                        tracing::info!(
                            "disarmed etcd's NOSPACE alarm: every member is below its quota"
                        );
                        notes.push("disarmed NOSPACE: every member is below its quota".into());
                    }
                    alarms = maintenance::alarms(&cfg).await?;
                }
                Err(why) => notes.push(format!("NOSPACE stays raised: {why}")),
            }
        }
        let mut detail = describe(&own, &alarms);
        if let Some((at, before, after)) = self.last_defrag {
            detail.push_str(&format!(
                "; defragmented {} ago ({} → {})",
                crate::status::human_age(0, at.elapsed().as_secs()),
                size(before),
                size(after)
            ));
        }
        for n in notes {
            detail.push_str("; ");
            detail.push_str(&n);
        }
        Ok(if alarms.is_empty() {
            Outcome::ready(detail)
        } else {
            Outcome::Report(ComponentState::Unhealthy, detail)
        })
    }
}

impl EtcdUpkeep {
    /// Defragments this host's member if every member answers and no other
    /// member is being defragmented; returns why not, or what it did.
    async fn defragment(
        &mut self,
        cx: &mut TaskCx,
        cfg: &etcd_mgr::EtcdConfig,
        own: &Usage,
        members: &[MemberStatus],
        nospace: bool,
    ) -> anyhow::Result<Option<String>> {
        if let Some(m) = members.iter().find(|m| !m.healthy) {
            return Ok(Some(format!(
                "defragmentation waits: etcd member {} ({}) does not answer, and a member being defragmented serves nothing",
                m.name, m.id
            )));
        }
        let url = cfg.endpoints[0].clone();
        let own_id = format!("{:x}", own.member_id);
        if nospace {
            // etcd refuses the API server's writes: no Lease. Turns by id.
            match whose_turn(members) {
                Some(m) if m.id == own_id => {}
                Some(m) => {
                    return Ok(Some(format!(
                    "defragmentation waits for etcd member {} ({}), first in turn under NOSPACE",
                    m.name, m.id
                )))
                }
                None => return Ok(None),
            }
            self.run(cfg, &url, own).await?;
            return Ok(None);
        }
        let Some(node) = NodeIdentity::read(&cx.paths.node_identity_file())? else {
            return Ok(None);
        };
        let client = match cx.agent_client().await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Ok(Some(format!(
                    "defragmentation skipped: this host has no {} to take the {ETCD_DEFRAG_LEASE} Lease with",
                    bootstrap::pki::names::CONTROL_PLANE_AGENT_CONF
                )))
            }
            Err(e) => {
                return Ok(Some(format!(
                    "defragmentation skipped: no API client to take the {ETCD_DEFRAG_LEASE} Lease with ({e:#})"
                )))
            }
        };
        let leases: Api<Lease> = Api::namespaced(client, NAMESPACE);
        match take_lease(&leases, &node.node_name).await {
            Ok(None) => {}
            Ok(Some(holder)) => {
                return Ok(Some(format!(
                    "defragmentation waits: {holder} holds the {ETCD_DEFRAG_LEASE} Lease"
                )))
            }
            Err(e) => {
                return Ok(Some(format!(
                    "defragmentation skipped: cannot take the {ETCD_DEFRAG_LEASE} Lease ({e:#})"
                )))
            }
        }
        let done = self.run(cfg, &url, own).await;
        // After a timeout etcd is still at it: the Lease stays until it
        // expires, so no other member starts meanwhile.
        if !done.as_ref().is_err_and(timed_out) {
            if let Err(e) = release_lease(&leases, &node.node_name).await {
                tracing::debug!(error = %format!("{e:#}"), "cannot release the etcd defragmentation Lease; it expires by itself");
            }
        }
        done.map(|()| None)
    }

    async fn run(
        &mut self,
        cfg: &etcd_mgr::EtcdConfig,
        url: &str,
        own: &Usage,
    ) -> anyhow::Result<()> {
        tracing::info!(
            db = %size(own.db_size),
            in_use = %size(own.db_size_in_use),
            "defragmenting this host's etcd member"
        );
        let started = Instant::now();
        if let Err(e) = maintenance::defragment(cfg, url, DEFRAG_TIMEOUT).await {
            let err = anyhow::Error::new(e).context("defragmenting this host's etcd member");
            tracing::warn!(error = %format!("{err:#}"), "etcd defragmentation failed");
            return Err(err);
        }
        let after = maintenance::usage(cfg).await?;
        tracing::info!(
            before = %size(own.db_size),
            after = %size(after.db_size),
            took = ?started.elapsed(),
            "defragmented this host's etcd member"
        );
        self.last_defrag = Some((Instant::now(), own.db_size, after.db_size));
        Ok(())
    }
}

/// Whether a defragmentation failed by its deadline (etcd goes on with it).
fn timed_out(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<EtcdError>(),
        Some(EtcdError::DefragTimeout { .. })
    )
}

/// Whether a member with this Status is worth defragmenting: at least
/// [`DEFRAG_MIN_FREE`] of its file is free, and either more than half of
/// the file is free or the file has reached [`DEFRAG_NEAR_QUOTA_PERCENT`]
/// of the quota.
pub fn should_defragment(u: &Usage) -> bool {
    fragmented(u.db_size, u.db_size_in_use, u.quota)
}

fn fragmented(db_size: i64, in_use: i64, quota: Option<i64>) -> bool {
    let free = (db_size - in_use).max(0);
    let min_free = quota.map_or(DEFRAG_MIN_FREE, |q| (q / 10).min(DEFRAG_MIN_FREE));
    free >= min_free
        && (free * 2 > db_size
            || quota.is_some_and(|q| db_size * 100 >= q * DEFRAG_NEAR_QUOTA_PERCENT))
}

/// Under NOSPACE: whether a member's file has free pages worth giving
/// back ([`NOSPACE_MIN_FREE`]).
fn worth_under_nospace(db_size: i64, in_use: i64) -> bool {
    db_size - in_use >= NOSPACE_MIN_FREE
}

/// Under NOSPACE (no Lease can be written): the member whose turn it is to
/// be defragmented, the one with free pages and the lowest id. Once it is
/// defragmented it has none and the next one's turn comes; every agent
/// sees the same members, so only one of them starts.
pub fn whose_turn(members: &[MemberStatus]) -> Option<&MemberStatus> {
    members
        .iter()
        .filter(|m| match (m.db_size, m.db_size_in_use) {
            (Some(s), Some(u)) => worth_under_nospace(s, u),
            _ => false,
        })
        .min_by_key(|m| u64::from_str_radix(&m.id, 16).unwrap_or(u64::MAX))
}

/// Whether NOSPACE may be disarmed: every member answered and its file is
/// below its quota. Otherwise which members are in the way, and why.
pub fn may_disarm(members: &[MemberStatus]) -> Result<(), String> {
    let mut blocking = Vec::new();
    for m in members {
        match (m.db_size, m.db_size_quota) {
            (Some(s), Some(q)) if s < q => {}
            (Some(s), Some(q)) => blocking.push(format!(
                "member {} ({}) is at {} of its {} quota",
                m.name,
                m.id,
                size(s),
                size(q)
            )),
            _ if !m.healthy => {
                blocking.push(format!("member {} ({}) does not answer", m.name, m.id))
            }
            _ => blocking.push(format!("member {} ({}) reports no quota", m.name, m.id)),
        }
    }
    if blocking.is_empty() {
        Ok(())
    } else {
        Err(blocking.join(", "))
    }
}

/// The status line: the member's size, and the alarms with what they mean.
fn describe(own: &Usage, alarms: &[Alarm]) -> String {
    let quota = own
        .quota
        .map(|q| format!(" of quota {}", size(q)))
        .unwrap_or_else(|| " (etcd reports no quota)".into());
    let mut out = format!(
        "db {} (in use {}){quota}",
        size(own.db_size),
        size(own.db_size_in_use)
    );
    if alarms.is_empty() {
        out.push_str("; no alarms");
        return out;
    }
    let list = |kind: AlarmKind| {
        alarms
            .iter()
            .filter(|a| a.kind == kind)
            .map(|a| format!("{:x}", a.member_id))
            .collect::<Vec<_>>()
    };
    let nospace = list(AlarmKind::NoSpace);
    if !nospace.is_empty() {
        out.push_str(&format!(
            "; NOSPACE raised (member {}): etcd's database reached its quota and the cluster is read-only, \
             it takes no writes but deletes; this task compacts, defragments the members one at a time and \
             disarms the alarm once every member is below its quota; if the data in use is near the quota, \
             delete objects the cluster no longer needs ('kubectl delete' works under NOSPACE) and the next \
             pass does the rest",
            nospace.join(", ")
        ));
    }
    let corrupt = list(AlarmKind::Corrupt);
    if !corrupt.is_empty() {
        out.push_str(&format!(
            "; CORRUPT raised (member {}): etcd found that member's data differs from the others' and the \
             cluster serves no requests; remove that member ('selfnode etcd remove-member ID') and add it \
             back ('selfnode demote', then 'selfnode promote' its node), or restore the cluster from a \
             snapshot ('selfnode etcd snapshot restore')",
            corrupt.join(", ")
        ));
    }
    for a in alarms
        .iter()
        .filter(|a| matches!(a.kind, AlarmKind::Other(_)))
    {
        out.push_str(&format!("; {a} raised"));
    }
    out
}

fn size(bytes: i64) -> String {
    ByteSize(bytes.max(0) as u64).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: i64 = 1024 * MIB;

    fn usage(db: i64, in_use: i64, quota: i64) -> Usage {
        Usage {
            member_id: 1,
            leader: 1,
            db_size: db,
            db_size_in_use: in_use,
            quota: Some(quota),
        }
    }

    #[test]
    fn defragment_when_much_and_most_of_the_file_is_free_or_near_the_quota() {
        let q = 8 * GIB;
        // Half and more free, above the floor.
        assert!(should_defragment(&usage(400 * MIB, 100 * MIB, q)));
        assert!(
            !should_defragment(&usage(400 * MIB, 200 * MIB, q)),
            "exactly half"
        );
        // Mostly free but little: a small cluster's file is left alone.
        assert!(!should_defragment(&usage(100 * MIB, 40 * MIB, q)));
        // Near the quota: less than half free is enough.
        assert!(should_defragment(&usage(7 * GIB, 6 * GIB, q)));
        assert!(
            !should_defragment(&usage(6 * GIB, 5 * GIB, q)),
            "75% of the quota"
        );
        // Near the quota but nothing to give back.
        assert!(!should_defragment(&usage(7 * GIB, 7 * GIB - 10 * MIB, q)));
        // No quota reported: only the share of free space counts.
        let mut u = usage(7 * GIB, 6 * GIB, q);
        u.quota = None;
        assert!(!should_defragment(&u));
        // etcd read the two at different moments.
        assert!(!should_defragment(&usage(100 * MIB, 120 * MIB, q)));
        // A small quota lowers the floor to a tenth of it.
        assert!(should_defragment(&usage(40 * MIB, 20 * MIB, 48 * MIB)));
        assert!(!should_defragment(&usage(8 * MIB, 5 * MIB, 48 * MIB)));
    }

    fn member(id: &str, db: Option<i64>, in_use: Option<i64>, quota: Option<i64>) -> MemberStatus {
        MemberStatus {
            id: id.into(),
            cluster_id: "c".into(),
            name: format!("cp-{id}"),
            peer_urls: vec![],
            client_urls: vec![],
            is_learner: false,
            healthy: db.is_some(),
            is_leader: false,
            db_size: db,
            db_size_in_use: in_use,
            db_size_quota: quota,
            error: None,
        }
    }

    #[test]
    fn disarm_only_when_every_member_is_below_its_quota() {
        let q = Some(GIB);
        let below = member("a1", Some(300 * MIB), Some(200 * MIB), q);
        assert_eq!(may_disarm(std::slice::from_ref(&below)), Ok(()));
        let full = member("b2", Some(GIB), Some(900 * MIB), q);
        let e = may_disarm(&[below.clone(), full]).unwrap_err();
        assert_eq!(e, "member cp-b2 (b2) is at 1.0 GiB of its 1.0 GiB quota");
        let down = member("c3", None, None, None);
        let e = may_disarm(&[below.clone(), down]).unwrap_err();
        assert_eq!(e, "member cp-c3 (c3) does not answer");
        let old = member("d4", Some(MIB), Some(MIB), None);
        assert!(may_disarm(&[below, old])
            .unwrap_err()
            .contains("reports no quota"));
    }

    #[test]
    fn under_nospace_the_fragmented_member_with_the_lowest_id_goes_first() {
        let q = Some(GIB);
        let frag = |id: &str| member(id, Some(GIB), Some(1000 * MIB), q);
        let compact = |id: &str| member(id, Some(300 * MIB), Some(300 * MIB - MIB / 2), q);
        let ms = [frag("c3"), compact("1a"), frag("b2")];
        assert_eq!(whose_turn(&ms).map(|m| m.id.as_str()), Some("b2"));
        // Once b2 is done, c3's turn.
        let ms = [frag("c3"), compact("1a"), compact("b2")];
        assert_eq!(whose_turn(&ms).map(|m| m.id.as_str()), Some("c3"));
        // Ids compare as numbers, not text.
        let ms = [frag("9"), frag("10")];
        assert_eq!(whose_turn(&ms).map(|m| m.id.as_str()), Some("9"));
        assert!(whose_turn(&[compact("1a"), member("2b", None, None, None)]).is_none());
    }

    #[test]
    fn a_defragmentation_that_timed_out_is_told_apart_through_its_context() {
        let e = anyhow::Error::new(EtcdError::DefragTimeout {
            endpoint: "https://127.0.0.1:2379".into(),
            timeout: DEFRAG_TIMEOUT,
        })
        .context("defragmenting this host's etcd member");
        assert!(timed_out(&e));
        let e = anyhow::Error::new(EtcdError::NoSuchMember { target: "x".into() })
            .context("defragmenting this host's etcd member");
        assert!(!timed_out(&e));
    }

    #[test]
    fn status_says_what_an_alarm_means_and_what_to_do() {
        let own = usage(120 * MIB, 80 * MIB, 8 * GIB);
        assert_eq!(
            describe(&own, &[]),
            "db 120.0 MiB (in use 80.0 MiB) of quota 8.0 GiB; no alarms"
        );
        let d = describe(
            &own,
            &[Alarm {
                member_id: 0xa1,
                kind: AlarmKind::NoSpace,
            }],
        );
        assert!(d.contains("NOSPACE raised (member a1)"), "{d}");
        assert!(d.contains("the cluster is read-only"), "{d}");
        assert!(
            d.contains("delete objects the cluster no longer needs"),
            "{d}"
        );
        assert!(
            d.contains("disarms the alarm once every member is below its quota"),
            "{d}"
        );
        let d = describe(
            &own,
            &[Alarm {
                member_id: 0xb2,
                kind: AlarmKind::Corrupt,
            }],
        );
        assert!(d.contains("CORRUPT raised (member b2)"), "{d}");
        assert!(d.contains("restore the cluster from a snapshot"), "{d}");
    }
}
