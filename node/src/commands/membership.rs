//! `selfnode promote NODE` and `selfnode demote NODE`: the control-plane
//! role of a node, changed on purpose, from a control-plane host.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::MembershipArgs;
use crate::keys::Promotion;
use crate::paths::HostPaths;

/// The control-plane agents' client of this host, or why there is none.
async fn agent_client(paths: &HostPaths) -> anyhow::Result<kube::Client> {
    let kc = paths
        .kubeconfig_dir()
        .join(bootstrap::pki::names::CONTROL_PLANE_AGENT_CONF);
    if !kc.exists() || !crate::cluster::keys_here(&paths.pki_dir()) {
        anyhow::bail!(
            "this host holds no cluster keys ({} is missing): run this on a control-plane host",
            kc.display()
        );
    }
    crate::cluster::kube_client(&kc)
        .await
        .with_context(|| format!("using {}", kc.display()))
}

pub async fn promote(paths: &HostPaths, args: MembershipArgs) -> anyhow::Result<ExitCode> {
    let client = agent_client(paths).await?;
    let settings = crate::keys::cluster_settings(&client).await?;
    let started = Instant::now();
    loop {
        match crate::keys::promote(&client, &args.node, &paths.pki_dir(), settings.allow_workloads)
            .await?
        {
            Promotion::Done => break,
            Promotion::Waiting(why) if started.elapsed() < args.timeout => {
                eprintln!("[promote] waiting: {why}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Promotion::Waiting(why) => anyhow::bail!(
                "{} not promoted within {}s: {why} (is selfnode's agent running there, and has the host joined the cluster?)",
                args.node,
                args.timeout.as_secs()
            ),
        }
    }
    println!(
        "{} is a control-plane node: the cluster's keys are sealed to it and its label is set; its agent takes the keys, then adds its etcd member (see 'selfnode status' there, component etcd-member)",
        args.node
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn demote(paths: &HostPaths, args: MembershipArgs) -> anyhow::Result<ExitCode> {
    let client = agent_client(paths).await?;
    crate::keys::demote(&client, &args.node).await?;
    println!(
        "{} is no longer a control-plane node: its label is gone and it is marked demoted; its agent removes its etcd member (quorum-safely) and the cluster's keys from its disk within a minute",
        args.node
    );
    Ok(ExitCode::SUCCESS)
}
