//! The node-local balancer's API servers, learned from the cluster.
//!
//! Every API server publishes itself in the `kubernetes` EndpointSlice
//! (`default` namespace; the apiserver's lease endpoint reconciler adds a
//! server while it runs and drops it when its lease lapses). Every
//! [`PERIOD`] this task reads that slice with the kubelet's credentials
//! (a Role from `bootstrap::objects` lets nodes `get` it) and, when the set
//! of addresses differs, rewrites `var/lib/selfnode/apiservers`: the file
//! the balancer forwards to. The file stays on disk, so after a restart
//! with no API to ask the balancer still knows every API server it last
//! saw. An empty slice never empties the file.
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
use crate::cluster::{apiserver_addresses, HostCluster};
use crate::control::{ApiBackends, Component};
use crate::status::ComponentState;

const PERIOD: Duration = Duration::from_secs(5);
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
        let settled = HostCluster::load_async(&cx.paths)
            .await?
            .is_some_and(|c| c.settled());
        if !settled {
            return Ok(Outcome::Unchanged);
        }
        let Some(client) = cx.kubelet_client().await? else {
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
        let current: BTreeSet<SocketAddr> = ApiBackends::read(&cx.paths)
            .map(|b| b.addrs.into_iter().collect())
            .unwrap_or_default();
        let list = learned
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if current != learned {
            ApiBackends::new(learned.iter().copied()).write(
                &cx.paths,
                "learned from the kubernetes EndpointSlice by the selfnode agent",
            )?;
            tracing::info!(apiservers = ?learned, "api load balancer: learned the cluster's API servers");
        }
        if self.reported.as_ref() == Some(&learned) {
            return Ok(Outcome::Unchanged);
        }
        self.reported = Some(learned);
        Ok(Outcome::ready(format!(
            "learned from the cluster: the balancer forwards to {list}"
        )))
    }

    /// The API does not answer while the cluster comes back.
    fn quiet_errors(&self) -> bool {
        true
    }
}
