//! Waiting for the cluster: the node's registration, the self-hosted
//! control plane's readiness, and the cluster's (node, kube-proxy,
//! CoreDNS). The predicates are `crate::readiness`'s.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams};

use super::Runner;
use super::{InitStep, Seq};
use crate::readiness::{
    all_ready, newest_warning, node_not_ready_reason, node_ready, pod_not_ready_reason, pod_ready,
    running_containers,
};
use crate::sequences::runner::StepReport;
use crate::wait::until;

/// `register_control_plane_node`: the kubelet registers the Node; it gets
/// the control-plane label, and the NoSchedule taint unless workloads are
/// allowed on it.
pub(super) async fn register_control_plane_node(
    run: &Runner,
    seq: &Seq<'_>,
) -> anyhow::Result<StepReport> {
    let node_name = &seq.spec.node_name;
    run.wait(
        InitStep::RegisterControlPlaneNode,
        &format!("node {node_name} to register"),
        || async {
            let client = seq.client().await?;
            let nodes: Api<Node> = Api::all(client.clone());
            until(
                "the kubelet to register the node",
                Duration::from_secs(180),
                Duration::from_millis(500),
                || async { Ok(nodes.get_opt(node_name).await?.is_some()) },
            )
            .await?;
            bootstrap::objects::mark_control_plane(
                client,
                node_name,
                bootstrap::objects::FIELD_MANAGER,
                !seq.spec.allow_workloads,
            )
            .await?;
            Ok(())
        },
    )
    .await
}

/// `wait_self_hosted_ready`: etcd's, the apiserver's, the
/// controller-manager's and the scheduler's pods Ready, and the self-hosted
/// apiserver's `/readyz` answering (verified against the cluster CA).
pub(super) async fn wait_self_hosted_ready(
    run: &Runner,
    seq: &Seq<'_>,
) -> anyhow::Result<StepReport> {
    let api_ca = seq.spec.pki_dir.join("ca.crt");
    let (_, self_api) = seq.apiservers();
    let (node, socket) = (&seq.spec.node_name, seq.paths.containerd_socket());
    run.wait(
        InitStep::WaitSelfHostedReady,
        "the self-hosted control-plane pods to be Ready",
        || async {
            let client = seq.client().await?;
            until(
                "etcd, kube-apiserver, kube-controller-manager and kube-scheduler pods Ready",
                Duration::from_secs(600),
                Duration::from_millis(500),
                || async { pods_ready(&client, "tier=control-plane", 4, node, &socket).await },
            )
            .await?;
            until(
                "the self-hosted kube-apiserver /readyz",
                Duration::from_secs(120),
                Duration::from_millis(250),
                || async {
                    crate::agent::probe::https_ok(self_api, "/readyz", Some(&api_ca), None).await?;
                    Ok(true)
                },
            )
            .await
        },
    )
    .await
}

/// `wait_cluster_ready`: the node, kube-proxy and CoreDNS Ready.
pub(super) async fn wait_cluster_ready(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let node_name = &seq.spec.node_name;
    let (node, socket) = (node_name, seq.paths.containerd_socket());
    run.wait(
        InitStep::WaitClusterReady,
        "the node, kube-proxy and CoreDNS to be Ready",
        || async {
            let client = seq.client().await?;
            let nodes: Api<Node> = Api::all(client.clone());
            until(
                "the node to be Ready",
                Duration::from_secs(300),
                Duration::from_millis(500),
                || async {
                    match nodes.get_opt(node_name).await? {
                        Some(n) if node_ready(&n) => Ok(true),
                        Some(n) => anyhow::bail!("{}", node_not_ready_reason(&n)),
                        None => anyhow::bail!("no Node {node_name} yet (the kubelet registers it)"),
                    }
                },
            )
            .await?;
            until(
                "kube-proxy Ready",
                Duration::from_secs(300),
                Duration::from_millis(500),
                || async { pods_ready(&client, "k8s-app=kube-proxy", 1, node, &socket).await },
            )
            .await?;
            until(
                "CoreDNS Ready",
                Duration::from_secs(300),
                Duration::from_millis(500),
                || async { pods_ready(&client, "k8s-app=kube-dns", 1, node, &socket).await },
            )
            .await
        },
    )
    .await
}

/// At least `min` pods in kube-system match `selector`, and all are Ready;
/// those on this node (`node`) also with a current status
/// ([`status_is_current`], from containerd at `socket`).
async fn pods_ready(
    client: &kube::Client,
    selector: &str,
    min: usize,
    node: &str,
    socket: &std::path::Path,
) -> anyhow::Result<bool> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let list = api.list(&ListParams::default().labels(selector)).await?;
    let running = running_containers(socket).await?;
    // The events of the pods whose status says nothing, fetched first so
    // the predicate stays synchronous.
    let mut warnings = std::collections::HashMap::new();
    for p in list
        .items
        .iter()
        .filter(|p| !pod_ready(p) && pod_not_ready_reason(p).is_empty())
    {
        let name = p.metadata.name.clone().unwrap_or_default();
        let w = last_warning(client, &name).await.unwrap_or_default();
        warnings.insert(name, w);
    }
    all_ready(&list.items, min, selector, Some((node, &running)), |name| {
        warnings.get(name).cloned().unwrap_or_default()
    })
}

/// What the kubelet reports about its static pod `name` on `node`: the
/// reason from its mirror pod's status (`<name>-<node>` in kube-system, see
/// [`pod_not_ready_reason`]) or that pod's newest Warning event (a sandbox
/// that cannot be made, an image that is not there), as one clause for an
/// error message. Says so when the kubelet has not written the mirror pod.
pub(crate) async fn static_pod_report(client: &kube::Client, name: &str, node: &str) -> String {
    let mirror = format!("{name}-{node}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    match pods.get_opt(&mirror).await {
        Err(e) => format!("cannot read pod kube-system/{mirror}: {e}"),
        Ok(None) => format!(
            "the kubelet has not reported pod kube-system/{mirror} (no mirror pod): see its log"
        ),
        Ok(Some(p)) => {
            let mut why = pod_not_ready_reason(&p);
            if why.is_empty() {
                why = last_warning(client, &mirror).await.unwrap_or_default();
            }
            if why.is_empty() {
                why = format!(
                    "phase {}, no reason given",
                    p.status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .unwrap_or("unknown")
                );
            }
            format!("the kubelet reports pod kube-system/{mirror}: {why}")
        }
    }
}

/// The newest Warning event about pod `name` in kube-system, as
/// `Reason: message`.
async fn last_warning(client: &kube::Client, name: &str) -> anyhow::Result<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), "kube-system");
    let list = events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Pod,involvedObject.name={name},type=Warning"
        )))
        .await?;
    Ok(newest_warning(&list.items))
}
