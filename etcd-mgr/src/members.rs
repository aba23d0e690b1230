//! Membership: the member list with each member's own Status, and changes
//! by etcd's learner flow. Every change is idempotent, so a caller that was
//! interrupted simply runs it again:
//! - [`add_learner`] adds a non-voting member (or finds it already there);
//! - the caller starts that member with `--initial-cluster-state existing`;
//! - [`promote`] makes it a voter once it has caught up with the leader;
//! - [`remove`] takes a member out, refusing what would cost the quorum.
//!
//! etcd refuses some changes for a while (a learner not yet in sync, a
//! removal within ~5 s of a peer connecting); those answers are retried with
//! capped exponential backoff and jitter until the caller's timeout.
//!
//! After its removal a member's etcd exits by itself (status 0); started
//! again on its old data directory it exits at once (status 1). So whoever
//! runs it stops its service and deletes its data directory. When the
//! leader is the one removed, [`remove`] first hands its leadership to a
//! healthy voter that stays (etcd's MoveLeader), so the cluster keeps a
//! leader; if that fails the others elect one after an election timeout,
//! and writes fail meanwhile.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use etcd_client::{Client, MemberAddOptions};
use tracing::{debug, info};

use crate::{chain, connect, within, EtcdConfig, EtcdError};

/// One member as `selfnode etcd members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberStatus {
    /// Hex, as etcdctl prints it.
    pub id: String,
    /// The ID of the etcd cluster the member belongs to (hex), from the
    /// member list's response header.
    pub cluster_id: String,
    /// Empty until the member has started and published itself.
    pub name: String,
    /// Peer URLs, e.g. `https://10.0.0.1:2380`.
    pub peer_urls: Vec<String>,
    /// Empty until the member has started.
    pub client_urls: Vec<String>,
    /// A non-voting member (added by [`add_learner`], not promoted yet).
    pub is_learner: bool,
    /// Answered a Status call on one of its client URLs.
    pub healthy: bool,
    /// The member's own Status names it as the leader.
    pub is_leader: bool,
    /// Size of its database file in bytes, from its Status; `None` when
    /// it did not answer.
    pub db_size: Option<i64>,
    /// Bytes of that file holding data (etcd's `dbSizeInUse`); the rest is
    /// free pages that only a defragmentation gives back. `None` when it
    /// did not answer.
    pub db_size_in_use: Option<i64>,
    /// Its backend quota in bytes (`--quota-backend-bytes`; etcd reports
    /// it since 3.6); `None` when it did not answer or did not report one.
    pub db_size_quota: Option<i64>,
    /// Why it is not healthy.
    pub error: Option<String>,
}

/// What [`remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RemoveOutcome {
    /// The member with this id (etcd prints it in hex: `{id:x}`) was removed.
    Removed {
        /// The removed member's id.
        id: u64,
    },
    /// No member matched: already removed (or never added).
    NotAMember,
}

/// The member list, with each member's own health, leadership and DB size.
///
/// Returns within twice [`EtcdConfig::timeout`]: one for the member list,
/// one for the members' Status calls, made side by side. Errors with
/// [`EtcdError::NoLeader`] when no member that answered knows a leader
/// (etcd cannot serve then; the error carries the members as observed),
/// and with [`EtcdError::Timeout`] when the member list gets no answer
/// (an etcd restarted while a majority of its members are down accepts
/// connections and never answers).
pub async fn members(cfg: &EtcdConfig) -> Result<Vec<MemberStatus>, EtcdError> {
    let seen = members_via(cfg, &cfg.endpoints).await?;
    if seen.leader_known {
        return Ok(seen.members);
    }
    let voters: Vec<&MemberStatus> = seen.members.iter().filter(|m| !m.is_learner).collect();
    let unreachable: Vec<String> = voters
        .iter()
        .filter(|m| !m.healthy)
        .map(|m| format!("{} ({})", label(m), m.id))
        .collect();
    Err(EtcdError::NoLeader {
        answered: voters.iter().filter(|m| m.healthy).count(),
        voters: voters.len(),
        unreachable: unreachable.join(", "),
        timeout: cfg.timeout,
        members: seen.members,
    })
}

/// The members as [`members_via`] saw them.
struct Observed {
    members: Vec<MemberStatus>,
    /// A member that answered its Status call named a leader.
    leader_known: bool,
}

/// The member list as the member `endpoints` lead to answers it.
async fn member_list(
    cfg: &EtcdConfig,
    endpoints: &[String],
) -> Result<etcd_client::MemberListResponse, EtcdError> {
    let mut client = connect(cfg, endpoints).await?;
    within(cfg, "member list", endpoints, client.member_list()).await
}

async fn members_via(cfg: &EtcdConfig, endpoints: &[String]) -> Result<Observed, EtcdError> {
    let list = match member_list(cfg, endpoints).await {
        Ok(list) => list,
        // The client picks one endpoint per call: one that refuses (a host
        // demoted or gone) fails the call. Each alone, then.
        Err(first) if endpoints.len() > 1 => {
            let mut answered = None;
            for url in endpoints {
                if let Ok(list) = member_list(cfg, std::slice::from_ref(url)).await {
                    answered = Some(list);
                    break;
                }
            }
            answered.ok_or(first)?
        }
        Err(e) => return Err(e),
    };
    let cluster_id = format!("{:x}", list.header().map_or(0, |h| h.cluster_id()));
    let statuses = futures::future::join_all(
        list.members()
            .iter()
            .map(|m| member_status(cfg, m.client_urls())),
    )
    .await;
    let mut leader_known = false;
    let mut out = Vec::new();
    for (m, status) in list.members().iter().zip(statuses) {
        let mut st = MemberStatus {
            id: format!("{:x}", m.id()),
            cluster_id: cluster_id.clone(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            is_learner: m.is_learner(),
            healthy: false,
            is_leader: false,
            db_size: None,
            db_size_in_use: None,
            db_size_quota: None,
            error: None,
        };
        match status {
            Some(Ok(s)) => {
                st.healthy = true;
                st.is_leader = s.leader == m.id();
                st.db_size = Some(s.db_size);
                st.db_size_in_use = Some(s.db_size_in_use);
                st.db_size_quota = s.quota;
                leader_known |= s.leader != 0;
            }
            Some(Err(e)) => st.error = Some(chain(&e)),
            None => st.error = Some("not started yet: it has published no client URL".into()),
        }
        out.push(st);
    }
    Ok(Observed {
        members: out,
        leader_known,
    })
}

/// A member's own Status; `None` for a member without client URLs (not
/// started yet).
async fn member_status(
    cfg: &EtcdConfig,
    urls: &[String],
) -> Option<Result<crate::maintenance::Usage, EtcdError>> {
    if urls.is_empty() {
        return None;
    }
    Some(crate::maintenance::usage_via(cfg, urls).await)
}

/// Whether the voting members that answered their Status call are a
/// majority of the voting members: what a quorum needs. Counted, not read
/// from a member's idea of its leader, which a member that lost its peers
/// keeps for a while.
pub fn has_quorum(members: &[MemberStatus]) -> bool {
    let voters = members.iter().filter(|m| !m.is_learner).count();
    let answering = members
        .iter()
        .filter(|m| !m.is_learner && m.healthy)
        .count();
    voters > 0 && answering > voters / 2
}

/// Adds the member that will serve `peer_url` as a learner and returns its
/// id. If a member (learner or voter) already has that peer URL, returns its
/// id and adds nothing. etcd allows one learner at a time by default
/// (`--max-learners`): a second one is refused until the first is promoted.
pub async fn add_learner(cfg: &EtcdConfig, peer_url: &str) -> Result<u64, EtcdError> {
    let mut client = connect(cfg, &cfg.endpoints).await?;
    if let Some(m) = find_by_peer_url(cfg, &mut client, peer_url).await? {
        info!(member = %format!("{:x}", m.id), peer_url, learner = m.is_learner, "etcd member already present");
        return Ok(m.id);
    }
    let added = within(
        cfg,
        "member add",
        &cfg.endpoints,
        client.member_add([peer_url], Some(MemberAddOptions::new().with_is_learner())),
    )
    .await;
    match added {
        Ok(resp) => {
            if let Some(m) = resp.member() {
                info!(member = %format!("{:x}", m.id()), peer_url, "added etcd learner");
                return Ok(m.id());
            }
        }
        // Lost a race with another caller adding the same member.
        Err(EtcdError::Rpc { source, .. })
            if message(&source).contains("Peer URLs already exists") => {}
        Err(e) => return Err(e),
    }
    match find_by_peer_url(cfg, &mut client, peer_url).await? {
        Some(m) => Ok(m.id),
        None => Err(EtcdError::NoSuchMember {
            target: peer_url.to_string(),
        }),
    }
}

/// Promotes the learner serving `peer_url` to a voting member. Returns at
/// once if it is already a voter. While etcd answers that the learner is not
/// in sync with the leader yet (also what it says before the learner has
/// started), or that the cluster is not ready, retries until `timeout`.
pub async fn promote(cfg: &EtcdConfig, peer_url: &str, timeout: Duration) -> Result<(), EtcdError> {
    let mut client = connect(cfg, &cfg.endpoints).await?;
    let mut retry = Retry::new(
        timeout,
        "waiting for the etcd learner to catch up before promoting it",
        peer_url,
    );
    loop {
        let last = match find_by_peer_url(cfg, &mut client, peer_url).await {
            Ok(None) => {
                return Err(EtcdError::NoSuchMember {
                    target: peer_url.to_string(),
                })
            }
            Ok(Some(m)) if !m.is_learner => return Ok(()),
            Ok(Some(m)) => {
                let promoted = within(
                    cfg,
                    "member promote",
                    &cfg.endpoints,
                    client.member_promote(m.id),
                )
                .await;
                match promoted {
                    Ok(_) => {
                        info!(member = %format!("{:x}", m.id), peer_url, "promoted etcd learner");
                        return Ok(());
                    }
                    Err(EtcdError::Rpc { ref source, .. }) if is_not_a_learner(source) => {
                        return Ok(())
                    }
                    Err(e) => transient_answer(&e).ok_or(e)?,
                }
            }
            Err(e) => transient_answer(&e).ok_or(e)?,
        };
        retry
            .again(last, |last| EtcdError::PromoteTimeout {
                peer_url: peer_url.to_string(),
                timeout,
                last,
            })
            .await?;
    }
}

/// Removes the member `target` (its hex id, its name or one of its peer
/// URLs). Refuses, before asking etcd, to remove the last voting member or a
/// voter whose removal would leave fewer healthy voters than a quorum of
/// those that remain ([`check_remove_safe`]); removing a learner is always
/// allowed. etcd's own transient refusals (a peer connected less than ~5 s
/// ago, "unhealthy cluster") are retried until `timeout`.
///
/// The request goes to the healthy members that stay, so a member can be
/// removed through its own endpoint. Once a member is gone, its endpoint
/// stops answering: callers that re-run a removal must use the endpoints of
/// members that remain.
pub async fn remove(
    cfg: &EtcdConfig,
    target: &str,
    timeout: Duration,
) -> Result<RemoveOutcome, EtcdError> {
    let mut endpoints = cfg.endpoints.clone();
    let mut sent: Option<u64> = None;
    let mut retry = Retry::new(
        timeout,
        "etcd refused the member removal for now; retrying",
        target,
    );
    loop {
        let last = match members_via(cfg, &endpoints).await {
            // Nothing asked of etcd yet: report the failure as it is.
            Err(e) if sent.is_none() => return Err(e),
            Err(e) => chain(&e),
            Ok(Observed { members: list, .. }) => {
                let Some(m) = find_target(&list, target) else {
                    return Ok(gone(sent, target));
                };
                check_remove_safe(&list, &m.id)?;
                let id = parse_id(&m.id).ok_or_else(|| EtcdError::NoSuchMember {
                    target: target.to_string(),
                })?;
                let staying: Vec<String> = list
                    .iter()
                    .filter(|o| o.id != m.id && o.healthy)
                    .flat_map(|o| o.client_urls.iter().cloned())
                    .collect();
                if !staying.is_empty() {
                    endpoints = staying;
                }
                if m.is_leader && sent.is_none() {
                    hand_over_leadership(cfg, &list, m).await;
                }
                sent = Some(id);
                let answer = remove_via(cfg, &endpoints, id).await;
                match answer {
                    Ok(()) => {
                        info!(member = %m.id, name = %m.name, "removed etcd member");
                        return Ok(RemoveOutcome::Removed { id });
                    }
                    Err(EtcdError::Rpc { source, .. })
                        if message(&source).contains("member not found") =>
                    {
                        return Ok(RemoveOutcome::Removed { id })
                    }
                    Err(e) => transient_answer(&e).ok_or(e)?,
                }
            }
        };
        retry
            .again(last, |last| EtcdError::RemoveTimeout {
                target: target.to_string(),
                timeout,
                last,
            })
            .await?;
    }
}

/// Sets the peer URLs of the member `target` (its hex id, its name or one
/// of its peer URLs) to `peer_urls`: etcd's runtime reconfiguration for a
/// member whose host changed address. The member keeps its id and data; it
/// serves at the new URLs once it runs with the matching listen flags.
/// Returns whether etcd's record changed (`Ok(false)`: it already says so).
///
/// A membership change needs a quorum. The moved member's own endpoint is
/// often cut off from its peers (they still send to the old address), so
/// each endpoint that answers the member list is tried alone until one
/// applies the change.
pub async fn update_peer_urls(
    cfg: &EtcdConfig,
    target: &str,
    peer_urls: &[String],
) -> Result<bool, EtcdError> {
    let Observed { members: list, .. } = members_via(cfg, &cfg.endpoints).await?;
    let m = find_target(&list, target).ok_or_else(|| EtcdError::NoSuchMember {
        target: target.to_string(),
    })?;
    if same_urls(&m.peer_urls, peer_urls) {
        return Ok(false);
    }
    let id = parse_id(&m.id).ok_or_else(|| EtcdError::NoSuchMember {
        target: target.to_string(),
    })?;
    // Members that answered first: they are with the quorum.
    let mut endpoints: Vec<String> = list
        .iter()
        .filter(|o| o.healthy && o.id != m.id)
        .flat_map(|o| o.client_urls.iter().cloned())
        .collect();
    endpoints.extend(cfg.endpoints.iter().cloned());
    endpoints.dedup();
    let mut last = None;
    for url in &endpoints {
        let one = std::slice::from_ref(url);
        let answer = async {
            let mut client = connect(cfg, one).await?;
            within(
                cfg,
                "member update",
                one,
                client.member_update(id, peer_urls.to_vec()),
            )
            .await
        }
        .await;
        match answer {
            Ok(_) => {
                info!(member = %m.id, name = %m.name, from = ?m.peer_urls, to = ?peer_urls, "updated the etcd member's peer URLs");
                return Ok(true);
            }
            Err(e) => {
                debug!(endpoint = %url, error = %chain(&e), "member update through this endpoint failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(EtcdError::NoSuchMember {
        target: target.to_string(),
    }))
}

/// The same set of URLs, whatever the order and trailing slashes.
fn same_urls(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|u| b.iter().any(|v| same_url(u, v)))
}

/// Before the leader `m` is removed, makes a healthy voter that stays the
/// leader (etcd's MoveLeader, sent to `m`), so the cluster has a leader
/// throughout: otherwise the others notice the leader gone only after an
/// election timeout (5-10 s with selfnode's 5 s timeout) and writes fail
/// meanwhile. Best effort: when it fails the removal goes on and the others
/// elect a leader themselves.
async fn hand_over_leadership(cfg: &EtcdConfig, list: &[MemberStatus], m: &MemberStatus) {
    let Some(next) = list
        .iter()
        .find(|o| o.id != m.id && o.healthy && !o.is_learner)
    else {
        return;
    };
    let Some(next_id) = parse_id(&next.id) else {
        return;
    };
    let call = async {
        let mut c = connect(cfg, &m.client_urls).await?;
        within(cfg, "move leader", &m.client_urls, c.move_leader(next_id)).await
    };
    match call.await {
        Ok(_) => {
            info!(from = %m.name, to = %next.name, "moved etcd leadership before removing the leader")
        }
        Err(e) => {
            debug!(error = %chain(&e), "cannot move etcd leadership; the others will elect a leader")
        }
    }
}

async fn remove_via(cfg: &EtcdConfig, endpoints: &[String], id: u64) -> Result<(), EtcdError> {
    let mut client = connect(cfg, endpoints).await?;
    within(cfg, "member remove", endpoints, client.member_remove(id))
        .await
        .map(drop)
}

fn gone(sent: Option<u64>, target: &str) -> RemoveOutcome {
    match sent {
        // An earlier attempt was applied although its answer was lost.
        Some(id) => {
            info!(member = %format!("{id:x}"), "removed etcd member");
            RemoveOutcome::Removed { id }
        }
        None => {
            info!(target, "not an etcd member; nothing to remove");
            RemoveOutcome::NotAMember
        }
    }
}

/// Whether removing the member `target_id` (hex) from `members` keeps etcd
/// serving: a learner can always go; a voter only if it is not the last one
/// and the voters that remain and answer Status are at least a quorum
/// (a majority) of the voters that remain.
pub fn check_remove_safe(members: &[MemberStatus], target_id: &str) -> Result<(), EtcdError> {
    let target = members
        .iter()
        .find(|m| same_id(&m.id, target_id))
        .ok_or_else(|| EtcdError::NoSuchMember {
            target: target_id.to_string(),
        })?;
    if target.is_learner {
        return Ok(());
    }
    let remaining: Vec<&MemberStatus> = members
        .iter()
        .filter(|m| !m.is_learner && !same_id(&m.id, &target.id))
        .collect();
    if remaining.is_empty() {
        return Err(EtcdError::LastVotingMember {
            id: target.id.clone(),
            name: label(target),
        });
    }
    let healthy = remaining.iter().filter(|m| m.healthy).count();
    let quorum = remaining.len() / 2 + 1;
    if healthy < quorum {
        let unreachable: Vec<String> = remaining
            .iter()
            .filter(|m| !m.healthy)
            .map(|m| format!("{} ({})", label(m), m.id))
            .collect();
        return Err(EtcdError::QuorumAtRisk {
            id: target.id.clone(),
            name: label(target),
            remaining: remaining.len(),
            healthy,
            quorum,
            unreachable: unreachable.join(", "),
        });
    }
    Ok(())
}

fn label(m: &MemberStatus) -> String {
    if m.name.is_empty() {
        "(not started)".into()
    } else {
        m.name.clone()
    }
}

fn parse_id(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn same_id(a: &str, b: &str) -> bool {
    match (parse_id(a), parse_id(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a.eq_ignore_ascii_case(b),
    }
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// By id first, then by name, then by peer URL.
fn find_target<'a>(list: &'a [MemberStatus], target: &str) -> Option<&'a MemberStatus> {
    let t = target.trim();
    list.iter()
        .find(|m| parse_id(t).is_some() && same_id(&m.id, t))
        .or_else(|| list.iter().find(|m| !m.name.is_empty() && m.name == t))
        .or_else(|| {
            list.iter()
                .find(|m| m.peer_urls.iter().any(|u| same_url(u, t)))
        })
}

struct Listed {
    id: u64,
    is_learner: bool,
}

async fn find_by_peer_url(
    cfg: &EtcdConfig,
    client: &mut Client,
    peer_url: &str,
) -> Result<Option<Listed>, EtcdError> {
    let list = within(cfg, "member list", &cfg.endpoints, client.member_list()).await?;
    Ok(list
        .members()
        .iter()
        .find(|m| m.peer_urls().iter().any(|u| same_url(u, peer_url)))
        .map(|m| Listed {
            id: m.id(),
            is_learner: m.is_learner(),
        }))
}

/// What etcd said, without etcd-client's wrapping.
fn message(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}

/// etcd's answers that mean "not now" rather than "no".
const TRANSIENT: &[&str] = &[
    "in sync with leader",
    "not enough started members",
    "unhealthy cluster",
    "leader changed",
    "no leader",
    "request timed out",
    "too many requests",
];

fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ) || TRANSIENT.iter().any(|t| s.message().contains(t))
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// etcd's answer if `e` is worth retrying: a refusal that means "not now",
/// or no answer in time.
fn transient_answer(e: &EtcdError) -> Option<String> {
    match e {
        EtcdError::Rpc { source, .. } | EtcdError::Connect { source, .. } => {
            is_transient(source).then(|| message(source))
        }
        EtcdError::Timeout { .. } => Some(e.to_string()),
        EtcdError::Read { .. }
        | EtcdError::NoLeader { .. }
        | EtcdError::NoSuchMember { .. }
        | EtcdError::LastVotingMember { .. }
        | EtcdError::QuorumAtRisk { .. }
        | EtcdError::PromoteTimeout { .. }
        | EtcdError::RemoveTimeout { .. }
        | EtcdError::DefragTimeout { .. } => None,
    }
}

/// "can only promote a learner member" (a prefix of the not-in-sync answer).
fn is_not_a_learner(e: &etcd_client::Error) -> bool {
    let m = message(e);
    m.contains("can only promote a learner member") && !m.contains("in sync")
}

/// The tries of one request etcd refuses for now (promote, remove): what
/// is being waited for and on what, the deadline, and the jittered
/// back-off between tries ([`Backoff`]). The first refusal is logged at
/// info, the rest at debug.
struct Retry<'a> {
    what: &'static str,
    subject: &'a str,
    deadline: Instant,
    backoff: Backoff,
    announced: bool,
}

impl<'a> Retry<'a> {
    fn new(timeout: Duration, what: &'static str, subject: &'a str) -> Self {
        Retry {
            what,
            subject,
            deadline: Instant::now() + timeout,
            backoff: Backoff::new(),
            announced: false,
        }
    }

    /// Sleeps before the next try after etcd's answer `last`; once the
    /// deadline has passed, the error `timed_out` makes of `last` instead.
    async fn again(
        &mut self,
        last: String,
        timed_out: impl FnOnce(String) -> EtcdError,
    ) -> Result<(), EtcdError> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(timed_out(last));
        }
        let (what, subject) = (self.what, self.subject);
        if !self.announced {
            info!(subject, answer = %last, "{what}");
            self.announced = true;
        }
        let wait = self.backoff.step().min(self.deadline - now);
        debug!(subject, answer = %last, ?wait, "{what}");
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// Capped exponential backoff (200 ms doubling to 2 s) with ±20 % jitter.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const CAP: Duration = Duration::from_secs(2);

    fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        // A fresh RandomState is randomly keyed: enough entropy for jitter.
        let r = RandomState::new().build_hasher().finish() % 1000;
        base.mul_f64(0.8 + 0.4 * (r as f64 / 1000.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quorum_is_a_majority_of_the_voters_answering() {
        let m = |healthy: bool, is_learner: bool| member("1", "n", is_learner, healthy);
        assert!(has_quorum(&[m(true, false)]));
        assert!(!has_quorum(&[
            m(true, false),
            m(false, false),
            m(false, false)
        ]));
        assert!(has_quorum(&[
            m(true, false),
            m(true, false),
            m(false, false)
        ]));
        // A learner neither votes nor counts.
        assert!(!has_quorum(&[
            m(true, false),
            m(false, false),
            m(true, true)
        ]));
        assert!(!has_quorum(&[]));
    }

    fn member(id: &str, name: &str, learner: bool, healthy: bool) -> MemberStatus {
        MemberStatus {
            id: id.into(),
            cluster_id: "c1".into(),
            name: name.into(),
            peer_urls: vec![format!("https://10.0.0.{}:2380", id.len())],
            client_urls: vec![],
            is_learner: learner,
            healthy,
            is_leader: false,
            db_size: None,
            db_size_in_use: None,
            db_size_quota: None,
            error: None,
        }
    }

    #[test]
    fn the_last_voter_is_never_removed() {
        let one = [member("a1", "cp-1", false, true)];
        let e = check_remove_safe(&one, "a1").unwrap_err();
        assert!(matches!(e, EtcdError::LastVotingMember { .. }), "{e}");
        assert!(e.to_string().contains("last voting member"), "{e}");
        // A learner does not count as a voter that would remain.
        let with_learner = [
            member("a1", "cp-1", false, true),
            member("b2", "cp-2", true, true),
        ];
        assert!(matches!(
            check_remove_safe(&with_learner, "a1"),
            Err(EtcdError::LastVotingMember { .. })
        ));
    }

    #[test]
    fn two_voters_need_the_other_one_healthy() {
        let both = [
            member("a1", "cp-1", false, true),
            member("b2", "cp-2", false, true),
        ];
        assert!(check_remove_safe(&both, "a1").is_ok());
        assert!(check_remove_safe(&both, "b2").is_ok());
        let other_down = [
            member("a1", "cp-1", false, true),
            member("b2", "cp-2", false, false),
        ];
        let e = check_remove_safe(&other_down, "a1").unwrap_err();
        match &e {
            EtcdError::QuorumAtRisk {
                remaining,
                healthy,
                quorum,
                unreachable,
                ..
            } => {
                assert_eq!((*remaining, *healthy, *quorum), (1, 0, 1));
                assert_eq!(unreachable, "cp-2 (b2)");
            }
            other => panic!("{other}"),
        }
        assert!(
            e.to_string().contains("fewer than the 1 a quorum needs"),
            "{e}"
        );
        // Removing the member that is down is what fixes this cluster.
        assert!(check_remove_safe(&other_down, "b2").is_ok());
    }

    #[test]
    fn three_voters_one_down() {
        let ms = [
            member("a1", "cp-1", false, true),
            member("b2", "cp-2", false, true),
            member("c3", "cp-3", false, false),
        ];
        // Left: cp-2 (up) and cp-3 (down): 1 of 2 answer, a quorum of 2 is 2.
        assert!(matches!(
            check_remove_safe(&ms, "a1"),
            Err(EtcdError::QuorumAtRisk {
                remaining: 2,
                healthy: 1,
                quorum: 2,
                ..
            })
        ));
        // Left: cp-1 and cp-2, both up.
        assert!(check_remove_safe(&ms, "c3").is_ok());
        // Three voters all up: any one can go.
        let up = [
            member("a1", "cp-1", false, true),
            member("b2", "cp-2", false, true),
            member("c3", "cp-3", false, true),
        ];
        assert!(check_remove_safe(&up, "b2").is_ok());
        // Five voters, two down: removing a healthy one leaves 2 of 4 (< 3).
        let five = [
            member("a1", "cp-1", false, true),
            member("b2", "cp-2", false, true),
            member("c3", "cp-3", false, true),
            member("d4", "cp-4", false, false),
            member("e5", "cp-5", false, false),
        ];
        assert!(check_remove_safe(&five, "a1").is_err());
        assert!(check_remove_safe(&five, "d4").is_ok());
    }

    #[test]
    fn learners_can_always_go() {
        let ms = [
            member("a1", "cp-1", false, false),
            member("b2", "", true, false),
        ];
        assert!(check_remove_safe(&ms, "b2").is_ok());
        assert!(check_remove_safe(&ms, "B2").is_ok());
    }

    #[test]
    fn unknown_ids_are_named() {
        let ms = [member("a1", "cp-1", false, true)];
        let e = check_remove_safe(&ms, "ffff").unwrap_err();
        assert!(matches!(e, EtcdError::NoSuchMember { .. }));
        assert!(e.to_string().contains("ffff"), "{e}");
    }

    #[test]
    fn targets_match_by_id_then_name_then_peer_url() {
        let mut a = member("8e9e05c52164694d", "cp-1", false, true);
        a.peer_urls = vec!["https://10.0.0.1:2380".into()];
        let mut b = member("91bc3c398fb3c146", "cp-2", false, true);
        b.peer_urls = vec!["https://10.0.0.2:2380".into()];
        let ms = [a, b];
        let id = |t: &str| find_target(&ms, t).map(|m| m.name.as_str());
        assert_eq!(id("91bc3c398fb3c146"), Some("cp-2"));
        assert_eq!(id("91BC3C398FB3C146"), Some("cp-2"));
        assert_eq!(id("cp-1"), Some("cp-1"));
        assert_eq!(id("https://10.0.0.2:2380/"), Some("cp-2"));
        assert_eq!(id("cp-3"), None);
        assert_eq!(id("https://10.0.0.3:2380"), None);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new();
        let steps: Vec<Duration> = (0..10).map(|_| b.step()).collect();
        assert!(steps[0] >= Duration::from_millis(160) && steps[0] <= Duration::from_millis(240));
        assert!(steps.iter().all(|d| *d <= Duration::from_millis(2400)));
        assert!(steps[9] >= Duration::from_millis(1600));
    }
}
