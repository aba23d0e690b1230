//! What a control-plane join adds: the wait for its promotion (a
//! control-plane host's agent seals the cluster's keys to this host and
//! sets the control-plane label: the token proves the intent, and it alone
//! can change no Node), and the wait for this node's etcd member (made by
//! the agent's member controller) and API server.

use std::time::Duration;

use anyhow::Context;
use kube::api::Api;

use super::{node_client, Join, JoinStep, Runner};
use crate::checkpoint::Checkpoint;
use crate::readiness::{is_mirror, pod_ready};
use crate::sequences::runner::StepReport;
use crate::wait::until;

/// `wait_promoted`: a control-plane host's agent approved this host's
/// certificate for a control-plane token and promotes it: the cluster's
/// keys sealed to this host (this host's agent takes them) and the
/// control-plane label on its Node. Done when the Node carries the label
/// and the keys are on this host.
pub(super) async fn wait_promoted(run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    let name = &join.ctx.node_name;
    let paths = &join.ctx.paths;
    run.wait(
        JoinStep::WaitPromoted,
        &format!("a control-plane host to promote {name}"),
        || async {
            until(
                &format!(
                    "a control-plane host's agent to seal the cluster's keys to this host and label Node {name} (see 'selfnode status' here and on the control-plane hosts: components promoter and approver)"
                ),
                PROMOTION_WAIT,
                Duration::from_secs(1),
                || async {
                    let client = node_client(paths)
                        .await?
                        .context("the kubelet's kubeconfig is gone")?;
                    if !crate::cluster::is_control_plane_node(&client, name).await? {
                        anyhow::bail!("Node {name} has no control-plane label yet");
                    }
                    if !crate::cluster::keys_here(&paths.pki_dir()) {
                        anyhow::bail!("labelled; the agent has not taken the cluster's keys yet");
                    }
                    Ok(true)
                },
            )
            .await
        },
    )
    .await
}

/// How long a control-plane join waits for its promotion.
const PROMOTION_WAIT: Duration = Duration::from_secs(300);

/// `wait_control_plane`: the agent's member controller has promoted this
/// node's etcd member (its identity is in the checkpoint) and the
/// kube-apiserver DaemonSet's pod is Ready here.
pub(super) async fn wait_control_plane(
    run: &Runner,
    join: &Join<'_>,
) -> anyhow::Result<StepReport> {
    let name = &join.ctx.node_name;
    let paths = &join.ctx.paths;
    run.wait(
        JoinStep::WaitControlPlane,
        &format!("the etcd member and kube-apiserver of {name}"),
        || async {
            until(
                &format!(
                    "the agent to add and promote this node's etcd member and the kube-apiserver pod on {name} to be Ready (see 'selfnode status' and {})",
                    paths.log_dir().join("agent.log").display()
                ),
                Duration::from_secs(300),
                Duration::from_secs(1),
                || async {
                    let member = Checkpoint::open(&paths.checkpoint_dir())?.etcd_member()?;
                    if member.is_none() {
                        anyhow::bail!("the etcd member is not promoted yet");
                    }
                    let client = node_client(paths)
                        .await?
                        .context("the kubelet's kubeconfig is gone")?;
                    let pods: Api<k8s_openapi::api::core::v1::Pod> =
                        Api::namespaced(client, "kube-system");
                    let list = pods
                        .list(
                            &kube::api::ListParams::default()
                                .labels("k8s-app=kube-apiserver")
                                .fields(&format!("spec.nodeName={name}")),
                        )
                        .await?;
                    Ok(list.items.iter().any(|p| {
                        !is_mirror(p) && pod_ready(p)
                    }))
                },
            )
            .await
        },
    )
    .await
}
