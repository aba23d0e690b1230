//! Ground floor: restarting a control-plane component's containers on this
//! host, without the API.
//!
//! A host's own certificates, keys and kubeconfigs are hostPath files of
//! its control-plane pods, each mounted by itself: a file replaced by a
//! renewal (a new inode) is not what the container sees, and a running
//! kube-controller-manager or kube-scheduler reads its kubeconfig once
//! anyway. So a container older than its files is stopped (SIGTERM, in
//! containerd's `k8s.io` namespace) and the kubelet starts it again in the
//! same pod, reading the files as they are: no rollout across the cluster,
//! no API needed (a single control-plane host's API server is one of
//! them), as kubeadm asks its users to restart the static pods after
//! `certs renew`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::readiness::{running_containers, RunningContainer};
use crate::wait::until;

/// How long containerd is given for the kills.
const CALL: Duration = Duration::from_secs(10);

/// Stops every running container of this host named (in its pod) as one
/// of `older_than`'s components and created before that component's time
/// (the newest of the files it reads): the kubelet starts each again,
/// reading the files as they are now. Returns the stopped containers.
///
/// Why by time and not "after a renewal": the pods mount each file by
/// hostPath, and a renewal replaces the file (a new inode), which a
/// container that mounted the old one never sees; so a container older
/// than its files runs on what they were, whoever changed them and
/// whenever (a renewal whose restart failed, an agent restarted in
/// between).
pub async fn restart_containers_older_than(
    socket: &Path,
    older_than: &[(&str, SystemTime)],
) -> anyhow::Result<Vec<RunningContainer>> {
    use containerd_client::services::v1::KillRequest;
    let targets: Vec<RunningContainer> = running_containers(socket)
        .await?
        .into_iter()
        .filter(|c| {
            older_than.iter().any(|(name, files)| {
                c.container == *name && c.created.is_some_and(|created| created < *files)
            })
        })
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
