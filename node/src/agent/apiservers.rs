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
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::paths::HostPaths;

const PERIOD: Duration = Duration::from_secs(5);
/// The EndpointSlice (and Service) of the API servers.
const SLICE: &str = "kubernetes";

/// Runs until `stop`.
pub async fn run(
    paths: HostPaths,
    mut containerd_ready: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    if !super::checkpointer::containerd_up(&mut containerd_ready, &stop).await {
        return;
    }
    let mut client: Option<kube::Client> = None;
    loop {
        if let Err(err) = pass(&paths, &mut client).await {
            tracing::debug!(error = %format!("{err:#}"), "api servers: cannot learn them now");
            client = None;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

async fn pass(paths: &HostPaths, client: &mut Option<kube::Client>) -> anyhow::Result<()> {
    let kubeconfig = paths.kubelet_kubeconfig();
    let settled = super::member::recorded(paths)
        .await?
        .is_some_and(|r| r.settled);
    if !kubeconfig.exists() || !settled {
        return Ok(());
    }
    let client = super::checkpointer::kubelet_client(&kubeconfig, client).await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let slice = slices
        .get(SLICE)
        .await
        .context("reading the kubernetes EndpointSlice")?;
    // The slice's port is the last writer's: during init's pivot that can
    // be the temporary API server's (6444), which stops moments later. The
    // self-hosted API servers all serve on the DaemonSet's port.
    let port = bootstrap::plane::PlanePorts::default().apiserver;
    let learned: BTreeSet<SocketAddr> = addresses(&slice)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    if learned.is_empty() {
        return Ok(());
    }
    let file = paths.apiservers_file();
    let current: BTreeSet<SocketAddr> = std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| super::apilb::parse_backends(&t).ok())
        .unwrap_or_default()
        .into_iter()
        .collect();
    if current == learned {
        return Ok(());
    }
    let text = std::iter::once(
        "# kube-apiservers for the node-local load balancer; learned from the kubernetes EndpointSlice by the selfnode agent".to_string(),
    )
    .chain(learned.iter().map(SocketAddr::to_string))
    .collect::<Vec<_>>()
    .join("\n")
        + "\n";
    crate::fsutil::write_atomic(&file, text.as_bytes(), 0o644)?;
    tracing::info!(apiservers = ?learned, "api load balancer: learned the cluster's API servers");
    Ok(())
}

/// The address of every endpoint the slice lists (not only the Ready
/// ones: the balancer checks each itself, and a server that is starting
/// should be known before it is Ready).
pub fn addresses(slice: &EndpointSlice) -> BTreeSet<IpAddr> {
    slice
        .endpoints
        .iter()
        .flatten()
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};

    #[test]
    fn every_address_of_the_slice() {
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(vec![
                Endpoint {
                    addresses: vec!["198.18.0.1".into()],
                    ..Endpoint::default()
                },
                Endpoint {
                    addresses: vec!["198.18.0.2".into(), "not-an-ip".into()],
                    ..Endpoint::default()
                },
            ]),
            ports: Some(vec![EndpointPort {
                port: Some(6444),
                ..EndpointPort::default()
            }]),
            ..EndpointSlice::default()
        };
        let got: Vec<String> = addresses(&slice).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["198.18.0.1", "198.18.0.2"]);
        assert!(addresses(&EndpointSlice::default()).is_empty());
    }
}
