//! The node-local balancer's API servers, learned from the cluster.
//!
//! Every API server publishes itself in the `kubernetes` EndpointSlice
//! (`default` namespace; the apiserver's lease endpoint reconciler adds a
//! server while it runs and drops it when its lease lapses). Every
//! [`PERIOD`] this task reads that slice with the kubelet's credentials
//! (a Role from `bootstrap::objects` lets nodes `get` it) and **merges** it
//! into `var/lib/selfnode/apiservers`, the file the balancer forwards to
//! (it checks each server's health itself, so a server that is down costs
//! nothing):
//! - a server in the slice is added, or its `seen` time refreshed;
//! - a server no longer in the slice stays for [`AGE_OUT`] after it was
//!   last seen: after a rolling outage (host 1 down past its lease, then
//!   hosts 2 and 3, then host 1 back alone) every node still knows host 1,
//!   and one bad write of the slice strands no node;
//! - the join string's endpoints (`keep=join`, written by `join`) and, on a
//!   control-plane host, its own API server (`keep=own`) are never dropped.
//!
//! The file stays on disk, so after a restart with no API to ask the
//! balancer still knows every API server it knew. An empty slice changes
//! nothing.
//!
//! Runs only once the host's cluster is settled (a joined host, or the
//! first host after the pivot); while `init` or a restore runs, their
//! sequence owns the file.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;

use super::{AgentTask, Outcome, Schedule, TaskCx};
use crate::cluster::apiserver_addresses;
use crate::control::{ApiBackends, BackendMark, Component, Keep, NodeIdentity};
use crate::status::ComponentState;

const PERIOD: Duration = Duration::from_secs(5);
/// How long a server not seen in the slice stays in the list.
pub const AGE_OUT: Duration = Duration::from_secs(12 * 3600);
/// How stale a `seen` time may get before the file is written again only
/// to refresh it (the file is not rewritten on every pass).
const REFRESH: Duration = Duration::from_secs(600);
/// The EndpointSlice (and Service) of the API servers.
const SLICE: &str = "kubernetes";

/// Learns the balancer's API servers (see the module docs).
#[derive(Default)]
pub struct ApiServers {
    /// The set last reported in status.
    reported: Option<BTreeSet<SocketAddr>>,
}

impl AgentTask for ApiServers {
    const COMPONENT: Component = Component::ApiServers;

    fn initial(&self) -> (ComponentState, &'static str) {
        (
            ComponentState::Ready,
            "no cluster settled on this host yet: the balancer's list is the sequence's",
        )
    }

    fn schedule(&self) -> Schedule {
        Schedule::every(PERIOD)
    }

    async fn pass(&mut self, cx: &mut TaskCx) -> anyhow::Result<Outcome> {
        let Some(client) = cx.settled_kubelet_client().await? else {
            return Ok(Outcome::Unchanged);
        };
        let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
        let slice = slices
            .get(SLICE)
            .await
            .context("reading the kubernetes EndpointSlice")?;
        // The slice's port is the last writer's: during init's pivot that
        // can be the temporary API server's (6444), which stops moments
        // later. The self-hosted API servers all serve on the DaemonSet's
        // port.
        let port = bootstrap::plane::PlanePorts::default().apiserver;
        let learned: BTreeSet<SocketAddr> = apiserver_addresses(&slice)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        if learned.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        // This host's own API server, on a control-plane host.
        let own = crate::cluster::keys_here(&cx.paths.pki_dir())
            .then(|| {
                NodeIdentity::read(&cx.paths.node_identity_file())
                    .ok()
                    .flatten()
            })
            .flatten()
            .map(|n| SocketAddr::new(n.node_ip, port));
        let current = ApiBackends::read(&cx.paths).unwrap_or_else(|| ApiBackends::new([]));
        let now = crate::status::now_unix();
        let merged = merge(&current, &learned, own, now);
        if needs_write(&current, &merged) {
            merged.write(
                &cx.paths,
                "merged by the selfnode agent from the kubernetes EndpointSlice",
            )?;
            if merged.addrs != current.addrs {
                tracing::info!(apiservers = ?merged.addrs, learned = ?learned, "api load balancer: the list of API servers changed");
            }
        }
        if self.reported.as_ref() == Some(&learned) {
            return Ok(Outcome::Unchanged);
        }
        let list = learned
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let others = merged.addrs.len() - learned.len().min(merged.addrs.len());
        self.reported = Some(learned);
        Ok(Outcome::ready(format!(
            "learned from the cluster: {list}; {others} more kept (own, join endpoints, or seen in the last {} h)",
            AGE_OUT.as_secs() / 3600
        )))
    }

    /// The API does not answer while the cluster comes back.
    fn quiet_errors(&self) -> bool {
        true
    }
}

/// `current` with what the cluster says now (see the module docs): sorted
/// by address.
fn merge(
    current: &ApiBackends,
    learned: &BTreeSet<SocketAddr>,
    own: Option<SocketAddr>,
    now: u64,
) -> ApiBackends {
    let mut marks: std::collections::BTreeMap<SocketAddr, BackendMark> = current
        .addrs
        .iter()
        .map(|a| {
            let mut m = current.marks.get(a).copied().unwrap_or_default();
            // A server a sequence wrote without a time: counted from now.
            m.seen.get_or_insert(now);
            if m.keep == Some(Keep::Own) {
                // Kept only while this host holds the keys (a demoted host
                // keeps it as any other server it saw).
                m.keep = None;
            }
            (*a, m)
        })
        .collect();
    for a in learned {
        marks.entry(*a).or_default().seen = Some(now);
    }
    if let Some(own) = own {
        let m = marks.entry(own).or_default();
        m.keep = Some(Keep::Own);
        m.seen.get_or_insert(now);
    }
    marks.retain(|_, m| {
        m.keep.is_some()
            || m.seen
                .is_some_and(|t| now.saturating_sub(t) <= AGE_OUT.as_secs())
    });
    ApiBackends {
        addrs: marks.keys().copied().collect(),
        marks,
    }
}

/// Whether `merged` differs from `current` in more than times refreshed
/// within [`REFRESH`].
fn needs_write(current: &ApiBackends, merged: &ApiBackends) -> bool {
    if current.addrs != merged.addrs {
        return true;
    }
    merged.marks.iter().any(|(a, m)| {
        let old = current.marks.get(a).copied().unwrap_or_default();
        old.keep != m.keep
            || match (old.seen, m.seen) {
                (Some(o), Some(n)) => n.saturating_sub(o) > REFRESH.as_secs(),
                (o, n) => o != n,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn set(addrs: &[&str]) -> BTreeSet<SocketAddr> {
        addrs.iter().map(|a| addr(a)).collect()
    }

    const T: u64 = 1_765_000_000;

    #[test]
    fn what_the_slice_no_longer_lists_stays_until_it_ages_out() {
        let first = merge(
            &ApiBackends::new([]),
            &set(&["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"]),
            None,
            T,
        );
        assert_eq!(first.addrs.len(), 3);
        // Host 1's lease lapsed: the slice lists 2 and 3 only.
        let later = merge(
            &first,
            &set(&["10.0.0.2:6443", "10.0.0.3:6443"]),
            None,
            T + 3600,
        );
        assert_eq!(later.addrs, first.addrs, "host 1 is kept");
        assert_eq!(later.marks[&addr("10.0.0.1:6443")].seen, Some(T));
        assert_eq!(later.marks[&addr("10.0.0.2:6443")].seen, Some(T + 3600));
        let aged = merge(
            &later,
            &set(&["10.0.0.2:6443", "10.0.0.3:6443"]),
            None,
            T + AGE_OUT.as_secs() + 1,
        );
        assert_eq!(
            aged.addrs,
            vec![addr("10.0.0.2:6443"), addr("10.0.0.3:6443")]
        );
    }

    #[test]
    fn join_endpoints_and_the_own_server_are_never_dropped() {
        let joined = ApiBackends::new([addr("10.0.0.1:6443")]).kept(Keep::Join);
        let much_later = T + 10 * AGE_OUT.as_secs();
        let m = merge(&joined, &set(&["10.0.0.2:6443"]), None, T);
        let m = merge(
            &m,
            &set(&["10.0.0.2:6443"]),
            Some(addr("10.0.0.5:6443")),
            much_later,
        );
        assert_eq!(
            m.addrs,
            vec![
                addr("10.0.0.1:6443"),
                addr("10.0.0.2:6443"),
                addr("10.0.0.5:6443")
            ]
        );
        assert_eq!(m.marks[&addr("10.0.0.1:6443")].keep, Some(Keep::Join));
        assert_eq!(m.marks[&addr("10.0.0.5:6443")].keep, Some(Keep::Own));
        // A host that no longer holds the keys stops keeping its own server.
        let demoted = merge(
            &m,
            &set(&["10.0.0.2:6443"]),
            None,
            much_later + AGE_OUT.as_secs() + 1,
        );
        assert!(!demoted.addrs.contains(&addr("10.0.0.5:6443")));
        assert!(demoted.addrs.contains(&addr("10.0.0.1:6443")));
    }

    #[test]
    fn a_list_written_without_times_is_counted_from_the_first_merge() {
        let init = ApiBackends::new([addr("10.0.0.1:6443")]);
        let m = merge(&init, &set(&["10.0.0.2:6443"]), None, T);
        assert_eq!(m.marks[&addr("10.0.0.1:6443")].seen, Some(T));
        assert!(needs_write(&init, &m));
    }

    #[test]
    fn the_file_is_rewritten_for_a_change_or_a_stale_time_only() {
        let m = merge(&ApiBackends::new([]), &set(&["10.0.0.1:6443"]), None, T);
        let again = merge(&m, &set(&["10.0.0.1:6443"]), None, T + 5);
        assert!(!needs_write(&m, &again));
        let stale = merge(
            &m,
            &set(&["10.0.0.1:6443"]),
            None,
            T + REFRESH.as_secs() + 1,
        );
        assert!(needs_write(&m, &stale));
        let grown = merge(&m, &set(&["10.0.0.2:6443"]), None, T + 5);
        assert!(needs_write(&m, &grown));
    }
}
