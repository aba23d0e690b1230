//! Ground floor: readiness, as the rest of `node` judges it.
//!
//! Pure predicates over API objects (a Node or Pod is Ready; why it is
//! not; a rollout is complete, as `kubectl rollout status` decides), and
//! the one observation they are held against: which containers run in
//! this host's containerd now. A pod on this host counts as Ready only if
//! its status names containers that run here ([`status_is_current`]): the
//! rule `init`'s and `recover`'s waits and the agent's checkpointer share.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Event, Node, Pod};

/// Label of a checkpoint copy's static pod (the component it copies).
pub const COPY_LABEL: &str = "selfnode.dev/checkpoint-of";
/// The kubelet's annotation on the mirror pod of a static pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Why something is not (yet) in the state awaited, for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotYet(pub String);

impl NotYet {
    pub fn new(why: &str) -> NotYet {
        NotYet(why.to_string())
    }
}

/// How long one containerd call of [`running_containers`] may take.
const CONTAINERD_CALL: Duration = Duration::from_secs(10);

/// The Node's `Ready` condition is `True`.
pub fn node_ready(n: &Node) -> bool {
    let conditions = n.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why a Node is not Ready, for people: its `Ready` condition's reason and
/// message, and every pressure condition that is `True` (the kubelet's
/// disk pressure on a nearly full disk taints the node and keeps pods off).
pub fn node_not_ready_reason(n: &Node) -> String {
    let conditions = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut parts = Vec::new();
    for c in &conditions {
        let pressure = c.type_.ends_with("Pressure") && c.status == "True";
        if (c.type_ == "Ready" && c.status != "True") || pressure {
            parts.push(format!(
                "{}={} {}: {}",
                c.type_,
                c.status,
                c.reason.as_deref().unwrap_or_default(),
                c.message.as_deref().unwrap_or_default()
            ));
        }
    }
    if parts.is_empty() {
        "the Node has no Ready condition yet".to_string()
    } else {
        parts.join("; ")
    }
}

/// The Pod's `Ready` condition is `True`.
pub fn pod_ready(p: &Pod) -> bool {
    let conditions = p.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `Ok(true)` when at least `min` of `pods` exist and all are Ready;
/// otherwise an error naming the pods that are not and why (from
/// [`pod_not_ready_reason`], or `warning(name)` when the status says
/// nothing).
///
/// With `here` (this node's name and the containers running in its
/// containerd), a Ready pod on this node counts only if its status is
/// current ([`status_is_current`]).
pub fn all_ready<'p>(
    pods: &'p [Pod],
    min: usize,
    selector: &str,
    here: Option<(&str, &[RunningContainer])>,
    mut warning: impl FnMut(&'p str) -> String,
) -> anyhow::Result<bool> {
    if pods.len() < min {
        anyhow::bail!("{} of {min} pods ({selector}) exist", pods.len());
    }
    let mut not_ready = Vec::new();
    for p in pods {
        let stale = match here {
            Some((node, running)) if on_node(p, node) => {
                status_is_current(p, running).err().map(|e| e.0)
            }
            _ => None,
        };
        let ready = pod_ready(p);
        if ready && stale.is_none() {
            continue;
        }
        let name = p.metadata.name.as_deref().unwrap_or_default();
        // A pod that says it is not Ready says why itself; the stale-status
        // reason is for the one that says Ready.
        let mut why = if ready {
            stale.unwrap_or_default()
        } else {
            pod_not_ready_reason(p)
        };
        if why.is_empty() {
            why = warning(name);
        }
        not_ready.push(if why.is_empty() {
            name.to_string()
        } else {
            format!("{name} ({why})")
        });
    }
    if !not_ready.is_empty() {
        anyhow::bail!("not Ready yet: {}", not_ready.join("; "));
    }
    Ok(true)
}

/// Whether `p` is bound to `node`.
fn on_node(p: &Pod, node: &str) -> bool {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
}

/// Whether `p`'s status describes containers that run on this node now:
/// every container status names a containerd ID (`containerd://<id>`) that
/// is among `running`. `Err` says which does not. A status can be older
/// than the containers: after a restore every pod's status is the
/// snapshot's (Ready, with the IDs of containers that a reset removed)
/// until the kubelet reports again; after the API was down, a container
/// that died meanwhile still says Ready.
pub fn status_is_current(p: &Pod, running: &[RunningContainer]) -> Result<(), NotYet> {
    let statuses = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    if statuses.is_empty() {
        return Err(NotYet::new(
            "the kubelet has not reported its containers yet",
        ));
    }
    for c in statuses {
        let id = c.container_id.as_deref().unwrap_or_default();
        let bare = id.split_once("://").map_or(id, |(_, bare)| bare);
        if bare.is_empty() || !running.iter().any(|r| r.id == bare) {
            let short: String = bare.chars().take(13).collect();
            return Err(NotYet(format!(
                "its status names container {} {short}, which does not run on this node (a status from before the kubelet's next report)",
                c.name
            )));
        }
    }
    Ok(())
}

/// Why a pod is not Ready, from its own status: a container's waiting or
/// last termination reason and message, its restart count, or the
/// scheduling condition's message. Empty when the status says nothing
/// useful (a pod whose sandbox cannot be made only shows
/// `ContainerCreating`; the reason is then in its events, see
/// [`last_warning`]).
pub fn pod_not_ready_reason(p: &Pod) -> String {
    let Some(status) = p.status.as_ref() else {
        return String::new();
    };
    let mut parts = Vec::new();
    for c in status.container_statuses.iter().flatten() {
        let state = c.state.as_ref();
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("waiting");
            if reason != "ContainerCreating" || w.message.is_some() {
                parts.push(format!(
                    "{}: {reason}{}",
                    c.name,
                    w.message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ));
            }
        }
        if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            parts.push(format!(
                "{}: restarted {} times, last exit {}{}",
                c.name,
                c.restart_count,
                t.exit_code,
                t.message
                    .as_deref()
                    .map(|m| format!(": {}", m.trim()))
                    .unwrap_or_default()
            ));
        }
        if state.and_then(|s| s.running.as_ref()).is_some() && !c.ready {
            parts.push(format!("{}: running, readiness probe not passing", c.name));
        }
    }
    if parts.is_empty() && status.phase.as_deref() == Some("Pending") {
        if let Some(c) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status != "True")
        {
            parts.push(format!(
                "not scheduled: {}",
                c.message.as_deref().unwrap_or("no reason given")
            ));
        }
    }
    parts.join(", ")
}

/// `Reason: message` of the newest event (by last timestamp or event time).
pub fn newest_warning(events: &[Event]) -> String {
    events
        .iter()
        .max_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0))
        })
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.as_deref().unwrap_or("Warning"),
                e.message.as_deref().unwrap_or("").trim()
            )
        })
        .unwrap_or_default()
}

/// Whether a DaemonSet's rollout is complete, as `kubectl rollout status`
/// decides: `Err` says what it still waits for.
pub fn daemonset_rolled(d: &DaemonSet) -> Result<(), NotYet> {
    let generation = d.metadata.generation.unwrap_or(0);
    let s = d.status.clone().unwrap_or_default();
    if s.observed_generation.unwrap_or(0) < generation {
        return Err(NotYet::new("the controller has not seen the change yet"));
    }
    let want = s.desired_number_scheduled;
    let updated = s.updated_number_scheduled.unwrap_or(0);
    if updated < want {
        return Err(NotYet(format!("{updated} of {want} pods updated")));
    }
    let available = s.number_available.unwrap_or(0);
    if available < want {
        return Err(NotYet(format!(
            "{available} of {want} updated pods available"
        )));
    }
    Ok(())
}

/// Whether a Deployment's rollout is complete, as `kubectl rollout status`
/// decides: `Err` says what it still waits for.
pub fn deployment_rolled(d: &Deployment) -> Result<(), NotYet> {
    let generation = d.metadata.generation.unwrap_or(0);
    let s = d.status.clone().unwrap_or_default();
    if s.observed_generation.unwrap_or(0) < generation {
        return Err(NotYet::new("the controller has not seen the change yet"));
    }
    let want = d.spec.replicas.unwrap_or(1);
    let updated = s.updated_replicas.unwrap_or(0);
    if updated < want {
        return Err(NotYet(format!("{updated} of {want} replicas updated")));
    }
    let total = s.replicas.unwrap_or(0);
    if total > updated {
        return Err(NotYet(format!(
            "{} old replicas still terminating",
            total - updated
        )));
    }
    let available = s.available_replicas.unwrap_or(0);
    if available < updated {
        return Err(NotYet(format!(
            "{available} of {updated} updated replicas available"
        )));
    }
    Ok(())
}

/// A mirror pod (the kubelet's report of a static pod) or a checkpoint
/// copy: never the self-hosted pod itself.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
        || pod
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(COPY_LABEL))
}

/// A container running on this host, from containerd's CRI labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningContainer {
    /// containerd's container ID: the one a pod's status gives as
    /// `containerd://<id>`.
    pub id: String,
    /// The container's name in its pod (`io.kubernetes.container.name`).
    pub container: String,
    /// When containerd created it (the kubelet creates a new container for
    /// each start).
    pub created: Option<std::time::SystemTime>,
}

/// The CRI containers whose task runs, in containerd's `k8s.io` namespace
/// (at most [`CONTAINERD_CALL`]: a containerd that accepts and hangs is an
/// error, not a wait).
pub async fn running_containers(socket: &Path) -> anyhow::Result<Vec<RunningContainer>> {
    tokio::time::timeout(CONTAINERD_CALL, list_running(socket))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "containerd at {} did not list its containers within {}s",
                socket.display(),
                CONTAINERD_CALL.as_secs()
            )
        })?
}

async fn list_running(socket: &Path) -> anyhow::Result<Vec<RunningContainer>> {
    use containerd_client::services::v1::{ListContainersRequest, ListTasksRequest};
    use containerd_client::types::v1::Status;
    let client = dist::containerd::connect(socket, dist::containerd::K8S_NAMESPACE).await?;
    let tasks = client
        .tasks()
        .list(client.request(ListTasksRequest {
            filter: String::new(),
        }))
        .await
        .map_err(|e| anyhow::anyhow!("cannot list containerd tasks: {}", e.message()))?
        .into_inner()
        .tasks;
    let running: std::collections::HashSet<String> = tasks
        .into_iter()
        .filter(|t| t.status == Status::Running as i32)
        .map(|t| {
            if t.container_id.is_empty() {
                t.id
            } else {
                t.container_id
            }
        })
        .collect();
    let containers = client
        .containers()
        .list(client.request(ListContainersRequest { filters: vec![] }))
        .await
        .map_err(|e| anyhow::anyhow!("cannot list containerd containers: {}", e.message()))?
        .into_inner()
        .containers;
    Ok(containers
        .into_iter()
        .filter(|c| running.contains(&c.id))
        .filter_map(|c| {
            let label = |k: &str| c.labels.get(k).cloned();
            Some(RunningContainer {
                id: c.id.clone(),
                container: label("io.kubernetes.container.name")?,
                created: c.created_at.as_ref().map(|t| {
                    std::time::UNIX_EPOCH
                        + std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
                }),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests;
