//! Ground floor: restarting a control-plane component's containers on this
//! host, without the API.
//!
//! A host's own certificates, keys and kubeconfigs are hostPath files of
//! its control-plane pods; a running kube-controller-manager or
//! kube-scheduler reads its kubeconfig (with the client certificate in it)
//! once. After a renewal changes them, the host stops those containers
//! (SIGTERM, in containerd's `k8s.io` namespace) and the kubelet starts
//! them again in the same pods, reading the new files: no rollout across
//! the cluster, no API needed (a single control-plane host's API server is
//! one of them), as kubeadm asks its users to restart the static pods
//! after `certs renew`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::readiness::{running_containers, RunningContainer};
use crate::wait::until;

/// How long containerd is given for the kills.
const CALL: Duration = Duration::from_secs(10);

/// Stops every running container of this host whose name (in its pod) is
/// one of `names`; the kubelet starts each again. Returns the stopped
/// containers.
pub async fn restart_containers(
    socket: &Path,
    names: &[&str],
) -> anyhow::Result<Vec<RunningContainer>> {
    use containerd_client::services::v1::KillRequest;
    let targets: Vec<RunningContainer> = running_containers(socket)
        .await?
        .into_iter()
        .filter(|c| names.contains(&c.container.as_str()))
        .collect();
    if targets.is_empty() {
        return Ok(targets);
    }
    let kills = async {
        let client = dist::containerd::connect(socket, dist::containerd::K8S_NAMESPACE).await?;
        for c in &targets {
            let kill = KillRequest {
                container_id: c.id.clone(),
                exec_id: String::new(),
                signal: libc::SIGTERM as u32,
                all: true,
            };
            client
                .tasks()
                .kill(client.request(kill))
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot stop container {} ({}): {}",
                        c.container,
                        c.id,
                        e.message()
                    )
                })?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(CALL, kills).await.map_err(|_| {
        anyhow::anyhow!(
            "containerd at {} did not stop the containers within {}s",
            socket.display(),
            CALL.as_secs()
        )
    })??;
    Ok(targets)
}

/// Waits until each of `stopped`'s names runs again in a container other
/// than the stopped ones (the kubelet started it anew), at most `deadline`.
pub async fn wait_restarted(
    socket: &Path,
    stopped: &[RunningContainer],
    deadline: Duration,
) -> anyhow::Result<()> {
    let old: BTreeSet<&str> = stopped.iter().map(|c| c.id.as_str()).collect();
    let names: BTreeSet<&str> = stopped.iter().map(|c| c.container.as_str()).collect();
    until(
        &format!(
            "the kubelet to start {} again",
            names.iter().copied().collect::<Vec<_>>().join(", ")
        ),
        deadline,
        Duration::from_secs(1),
        || async {
            let running = running_containers(socket).await?;
            Ok(names.iter().all(|n| {
                running
                    .iter()
                    .any(|c| c.container == *n && !old.contains(c.id.as_str()))
            }))
        },
    )
    .await
}
