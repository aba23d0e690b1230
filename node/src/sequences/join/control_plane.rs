//! What a control-plane join adds: the control-plane label, set with the
//! control-plane token (kubelets may not set node-role labels), and the
//! wait for this node's etcd member (made by the agent's member
//! controller) and API server.

use std::time::Duration;

use anyhow::Context;
use bootstrap::objects::{ClusterSettings, CLUSTER_SETTINGS};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;

use super::discover::CONNECT_TIMEOUT;
use super::{node_client, Join, JoinStep, Runner};
use crate::agent::control::{api_lb_port, balancer_addr, NodeIdentity};
use crate::checkpoint::Checkpoint;
use crate::readiness::{is_mirror, pod_ready};
use crate::sequences::runner::StepReport;
use crate::wait::until;

/// The token's client through this node's balancer (the CA the host
/// pinned at discovery is on disk by now).
fn token_client_via_lb(join: &Join<'_>) -> anyhow::Result<kube::Client> {
    let paths = &join.ctx.paths;
    let ca_file = paths.ca_cert();
    let ca_pem =
        std::fs::read(&ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
    let node = NodeIdentity::read(&paths.node_identity_file())?
        .context("the node identity is not written yet")?;
    let server = format!(
        "https://{}",
        balancer_addr(node.node_ip, api_lb_port(paths))
    );
    let mut config = kube::Config::new(server.parse()?);
    config.root_cert = Some(bootstrap::join::certs_der(&ca_pem)?);
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.auth_info.token = Some(join.ctx.join.token.expose().into());
    Ok(kube::Client::try_from(config)?)
}

/// `label_control_plane`: the control-plane label (and taint, unless the
/// cluster allows workloads on control-plane nodes) on this Node, set with
/// the control-plane token (kubelets may not set node-role labels). Done
/// when the Node carries the label, read with the kubelet's credentials.
pub(super) async fn label_control_plane(
    run: &Runner,
    join: &Join<'_>,
) -> anyhow::Result<StepReport> {
    let name = &join.ctx.node_name;
    let paths = &join.ctx.paths;
    run.step(
        JoinStep::LabelControlPlane,
        Duration::from_secs(60),
        || async {
            let client = node_client(paths)
                .await?
                .context("the kubelet's kubeconfig is gone")?;
            crate::cluster::is_control_plane_node(&client, name).await
        },
        || async {
            let node = node_client(paths)
                .await?
                .context("the kubelet's kubeconfig is gone")?;
            let cms: Api<ConfigMap> = Api::namespaced(node, "kube-system");
            let settings = ClusterSettings::from_config_map(
                &cms.get(CLUSTER_SETTINGS)
                    .await
                    .with_context(|| format!("reading kube-system/{CLUSTER_SETTINGS}"))?,
            )?;
            bootstrap::objects::mark_control_plane(
                token_client_via_lb(join)?,
                name,
                bootstrap::objects::FIELD_MANAGER,
                !settings.allow_workloads,
            )
            .await
            .map_err(|e| {
                anyhow::Error::new(e).context(format!(
                    "labelling Node {name} a control-plane node with token {} (a token made with 'selfnode token create --control-plane' may)",
                    join.ctx.join.token.id()
                ))
            })?;
            Ok(())
        },
    )
    .await
}

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
