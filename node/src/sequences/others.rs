//! Who else serves this host's cluster right now: what a restore must not
//! start a second cluster beside.
//!
//! `etcd snapshot restore --force` and `recover --from-snapshot` build a
//! one-member etcd from a snapshot on this host. On a host of a
//! three-member cluster whose own member is broken, the other two still
//! form a quorum: a restore there would run a second etcd cluster beside
//! theirs, with the same keys, and every node's balancer would mix the two
//! clusters' API servers. So before anything is written the restore asks
//! every other host it knows of (the balancer's list of API servers, and
//! the members etcd lists when any member answers) and refuses while any of
//! them serves, naming them, unless the user says those will be discarded.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::control::ApiBackends;
use crate::paths::HostPaths;

/// How long each host is given to answer.
const ASK: Duration = Duration::from_secs(3);

/// Other hosts that serve the cluster.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OthersServing {
    /// Voting etcd members that answered: `name (client URL)`.
    pub members: Vec<String>,
    /// API servers that answered `/livez`.
    pub apiservers: Vec<SocketAddr>,
}

impl OthersServing {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.apiservers.is_empty()
    }
}

/// A restore while other hosts serve the cluster. Exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("{command} would start a second cluster beside the one other hosts still serve ({}): etcd members answering: {}; API servers answering: {}. Run it on a host of that cluster only when the others are gone for good; to keep their newer data instead, use 'selfnode recover' on this host (or 'selfnode demote' it and join it again). If the others must go, stop them first, or pass --discard-other-members: the restore then goes ahead and those hosts must be reset and joined again", self.others.members.len() + self.others.apiservers.len(), list(&self.others.members), list(&self.others.apiservers))]
pub struct OthersServe {
    pub command: &'static str,
    pub others: OthersServing,
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Asks every other host this one knows of; `own_ip` and `own_name` are
/// this host's. Unreachable hosts are not serving; nothing here fails.
pub async fn others_serving(paths: &HostPaths, own_ip: IpAddr, own_name: &str) -> OthersServing {
    let backends = ApiBackends::read(paths)
        .map(|b| b.addrs)
        .unwrap_or_default();
    let (members, apiservers) = tokio::join!(
        members_serving(paths, own_ip, own_name),
        apiservers_serving(paths, &backends, own_ip),
    );
    OthersServing {
        members,
        apiservers,
    }
}

/// Voting members other than this host's that answer, asked through this
/// host's member and every other host's client port
/// ([`crate::etcd::cluster_config`]).
async fn members_serving(paths: &HostPaths, own_ip: IpAddr, own_name: &str) -> Vec<String> {
    let cfg = crate::etcd::cluster_config(paths, ASK);
    let members = match etcd_mgr::members(&cfg).await {
        Ok(m) => m,
        // Members that answer without a quorum still hold the cluster's
        // data; they count.
        Err(etcd_mgr::EtcdError::NoLeader { members, .. }) => members,
        Err(_) => return Vec::new(),
    };
    let own_peer = format!(":{}", bootstrap::plane::PlanePorts::default().etcd_peer);
    let is_own = |m: &etcd_mgr::MemberStatus| {
        m.name == own_name
            || m.peer_urls.iter().any(|u| {
                u.strip_prefix("https://")
                    .and_then(|rest| rest.strip_suffix(&own_peer))
                    .is_some_and(|host| {
                        host.trim_matches(|c| c == '[' || c == ']')
                            .parse::<IpAddr>()
                            .is_ok_and(|ip| ip == own_ip)
                    })
            })
    };
    members
        .into_iter()
        .filter(|m| m.healthy && !m.is_learner && !is_own(m))
        .map(|m| format!("{} ({})", m.name, m.client_urls.join(", ")))
        .collect()
}

/// API servers of the balancer's list on other hosts that answer `/livez`
/// (alive, even without etcd).
async fn apiservers_serving(
    paths: &HostPaths,
    backends: &[SocketAddr],
    own_ip: IpAddr,
) -> Vec<SocketAddr> {
    let ca = paths.pki_dir().join("ca.crt");
    let asks = backends
        .iter()
        .filter(|a| a.ip() != own_ip && !a.ip().is_loopback())
        .map(|a| {
            let ca = ca.clone();
            async move {
                let ok = tokio::time::timeout(
                    ASK,
                    crate::agent::probe::https_ok(*a, "/livez", Some(&ca), None),
                )
                .await
                .is_ok_and(|r| r.is_ok());
                ok.then_some(*a)
            }
        });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_every_host_that_serves() {
        let e = OthersServe {
            command: "etcd snapshot restore --force",
            others: OthersServing {
                members: vec!["node2 (https://10.0.0.2:2379)".into()],
                apiservers: vec!["10.0.0.2:6443".parse().unwrap()],
            },
        }
        .to_string();
        assert!(e.starts_with("etcd snapshot restore --force would start a second cluster"));
        assert!(e.contains("etcd members answering: node2 (https://10.0.0.2:2379)"));
        assert!(e.contains("API servers answering: 10.0.0.2:6443"));
        assert!(e.contains("--discard-other-members"));
    }

    #[tokio::test]
    async fn a_host_that_knows_no_other_finds_none() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::under(dir.path());
        let got = others_serving(&paths, "10.0.0.1".parse().unwrap(), "node1").await;
        assert!(got.is_empty(), "{got:?}");
    }
}
