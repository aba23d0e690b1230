//! Waiting for the cluster: the node's registration, the self-hosted
//! control plane's readiness, and the cluster's (node, kube-proxy,
//! CoreDNS). The predicates are pure functions of API objects, so they are
//! unit-tested on hand-written values.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams};

use super::steps::{until, Runner, StepReport};
use super::{Seq, Step};
use crate::agent::checkpointer::{running_containers, RunningContainer};

/// `register_control_plane_node`: the kubelet registers the Node; it gets
/// the control-plane label, and the NoSchedule taint unless workloads are
/// allowed on it.
pub(super) async fn register_control_plane_node(
    run: &Runner,
    seq: &Seq<'_>,
) -> anyhow::Result<StepReport> {
    let node_name = &seq.spec.node_name;
    run.wait(
        Step::RegisterControlPlaneNode,
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
        Step::WaitSelfHostedReady,
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
                    let probe =
                        crate::agent::probe::https_ok(self_api, "/readyz", Some(&api_ca), None);
                    match tokio::time::timeout(Duration::from_secs(5), probe).await {
                        Ok(r) => r.map(|()| true).map_err(anyhow::Error::msg),
                        Err(_) => anyhow::bail!("/readyz did not answer within 5s"),
                    }
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
        Step::WaitClusterReady,
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

/// The Node's `Ready` condition is `True`.
pub(crate) fn node_ready(n: &Node) -> bool {
    let conditions = n.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why a Node is not Ready, for people: its `Ready` condition's reason and
/// message, and every pressure condition that is `True` (the kubelet's
/// disk pressure on a nearly full disk taints the node and keeps pods off).
pub(crate) fn node_not_ready_reason(n: &Node) -> String {
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
pub(crate) fn pod_ready(p: &Pod) -> bool {
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
pub(crate) fn all_ready<'p>(
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
            Some((node, running)) if on_node(p, node) => status_is_current(p, running).err(),
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
pub(crate) fn status_is_current(p: &Pod, running: &[RunningContainer]) -> Result<(), String> {
    let statuses = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    if statuses.is_empty() {
        return Err("the kubelet has not reported its containers yet".to_string());
    }
    for c in statuses {
        let id = c.container_id.as_deref().unwrap_or_default();
        let bare = id.split_once("://").map_or(id, |(_, bare)| bare);
        if bare.is_empty() || !running.iter().any(|r| r.id == bare) {
            let short: String = bare.chars().take(13).collect();
            return Err(format!(
                "its status names container {} {short}, which does not run on this node (a status from before the kubelet's next report)",
                c.name
            ));
        }
    }
    Ok(())
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

/// Why a pod is not Ready, from its own status: a container's waiting or
/// last termination reason and message, its restart count, or the
/// scheduling condition's message. Empty when the status says nothing
/// useful (a pod whose sandbox cannot be made only shows
/// `ContainerCreating`; the reason is then in its events, see
/// [`last_warning`]).
pub(crate) fn pod_not_ready_reason(p: &Pod) -> String {
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

/// How long a sequence waits for the agent to import the bundle's images:
/// seconds on a host, about ten minutes in an emulated appliance (QEMU
/// without KVM).
pub(crate) const IMAGES_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Waits until the agent reports the bundle's images imported (its
/// `images` component Ready), before `step` asks the kubelet for a pod: no
/// registry is reachable, so a pod whose image (or the pause image of its
/// sandbox) is not imported yet fails with a pull error and the kubelet's
/// back-off. Says so on the step's line when it has to wait.
pub(crate) async fn bundle_images_imported(
    run: &Runner,
    step: Step,
    paths: &crate::paths::HostPaths,
) -> anyhow::Result<()> {
    let imported =
        || super::temp_plane::component_ready(paths, crate::agent::IMAGES, "the image import");
    if imported().unwrap_or(false) {
        return Ok(());
    }
    run.say(step, "waiting for the agent to import the bundle's images");
    until(
        &format!(
            "the agent to import the bundle's images (see 'selfnode status' and {})",
            paths.log_dir().join("agent.log").display()
        ),
        IMAGES_DEADLINE,
        Duration::from_secs(1),
        || async { imported() },
    )
    .await
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

/// `Reason: message` of the newest event (by last timestamp or event time).
pub(crate) fn newest_warning(events: &[Event]) -> String {
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

#[cfg(test)]
mod node_reason_tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};

    #[test]
    fn a_node_under_disk_pressure_says_so() {
        let cond = |t: &str, st: &str, reason: &str, msg: &str| NodeCondition {
            type_: t.into(),
            status: st.into(),
            reason: Some(reason.into()),
            message: Some(msg.into()),
            ..Default::default()
        };
        let n = Node {
            status: Some(NodeStatus {
                conditions: Some(vec![
                    cond(
                        "MemoryPressure",
                        "False",
                        "KubeletHasSufficientMemory",
                        "ok",
                    ),
                    cond(
                        "DiskPressure",
                        "True",
                        "KubeletHasDiskPressure",
                        "kubelet has disk pressure",
                    ),
                    cond(
                        "Ready",
                        "False",
                        "KubeletNotReady",
                        "container runtime network not ready",
                    ),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let why = node_not_ready_reason(&n);
        assert!(
            why.contains("DiskPressure=True KubeletHasDiskPressure"),
            "{why}"
        );
        assert!(why.contains("container runtime network not ready"), "{why}");
        assert!(!why.contains("MemoryPressure"), "{why}");
        assert_eq!(
            node_not_ready_reason(&Node::default()),
            "the Node has no Ready condition yet"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a valid Pod")
    }

    fn ready_pod(name: &str) -> Pod {
        pod(serde_json::json!({
            "metadata": {"name": name},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
    }

    #[test]
    fn a_node_is_ready_only_with_a_true_ready_condition() {
        let node = |conds: serde_json::Value| -> Node {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "n"}, "status": {"conditions": conds}}),
            )
            .unwrap()
        };
        assert!(node_ready(&node(serde_json::json!([
            {"type": "MemoryPressure", "status": "False"},
            {"type": "Ready", "status": "True"}
        ]))));
        assert!(!node_ready(&node(
            serde_json::json!([{"type": "Ready", "status": "False"}])
        )));
        assert!(!node_ready(&node(
            serde_json::json!([{"type": "Ready", "status": "Unknown"}])
        )));
        assert!(!node_ready(
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "n"}})).unwrap()
        ));
    }

    #[test]
    fn too_few_pods_is_not_ready_and_says_how_many() {
        let err = all_ready(&[ready_pod("a")], 4, "tier=control-plane", None, |_| {
            String::new()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "1 of 4 pods (tier=control-plane) exist");
        assert!(
            all_ready(&[ready_pod("a"), ready_pod("b")], 2, "x", None, |_| {
                String::new()
            })
            .unwrap()
        );
    }

    #[test]
    fn a_crash_looping_container_is_named_with_its_last_exit() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "kube-apiserver-cp1"},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{
                    "name": "kube-apiserver", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": "bad flag --foo\n"}}
                }]
            }
        }));
        let err = all_ready(&[p, ready_pod("b")], 2, "x", None, |_| String::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not Ready yet: kube-apiserver-cp1 (kube-apiserver: CrashLoopBackOff: back-off 40s, \
             kube-apiserver: restarted 3 times, last exit 1: bad flag --foo)"
        );
    }

    #[test]
    fn a_running_container_failing_readiness_and_an_unscheduled_pod_say_so() {
        let running = pod(serde_json::json!({
            "metadata": {"name": "coredns-1"},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "coredns", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"running": {}}
            }]}
        }));
        assert_eq!(
            pod_not_ready_reason(&running),
            "coredns: running, readiness probe not passing"
        );
        let pending = pod(serde_json::json!({
            "metadata": {"name": "coredns-2"},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False",
                "message": "0/1 nodes are available: 1 node(s) had untolerated taint"
            }]}
        }));
        assert_eq!(
            pod_not_ready_reason(&pending),
            "not scheduled: 0/1 nodes are available: 1 node(s) had untolerated taint"
        );
    }

    #[test]
    fn a_pod_whose_status_says_nothing_gets_its_newest_warning() {
        let creating = pod(serde_json::json!({
            "metadata": {"name": "coredns-3"},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "coredns", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}
            }]}
        }));
        assert_eq!(pod_not_ready_reason(&creating), "");
        let events: Vec<Event> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "e1"}, "involvedObject": {}, "reason": "FailedCreatePodSandBox",
             "message": "old", "lastTimestamp": "2026-11-30T10:00:00Z"},
            {"metadata": {"name": "e2"}, "involvedObject": {}, "reason": "FailedCreatePodSandBox",
             "message": " bridge has 10.244.0.1/24 \n", "lastTimestamp": "2026-11-30T10:00:05Z"}
        ]))
        .unwrap();
        let w = newest_warning(&events);
        assert_eq!(w, "FailedCreatePodSandBox: bridge has 10.244.0.1/24");
        let err = all_ready(&[creating], 1, "k8s-app=kube-dns", None, |name| {
            assert_eq!(name, "coredns-3");
            w.clone()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "not Ready yet: coredns-3 (FailedCreatePodSandBox: bridge has 10.244.0.1/24)"
        );
        assert_eq!(newest_warning(&[]), "");
    }

    #[test]
    fn a_ready_status_naming_containers_that_do_not_run_here_is_not_believed() {
        let running = |id: &str| RunningContainer {
            id: id.to_string(),
            container: "kube-apiserver".to_string(),
        };
        let restored = pod(serde_json::json!({
            "metadata": {"name": "kube-apiserver-x", "uid": "u1"},
            "spec": {"nodeName": "cp1", "containers": []},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{
                    "name": "kube-apiserver", "image": "i", "imageID": "", "ready": true,
                    "restartCount": 0, "containerID": "containerd://0123456789abcdef0123",
                    "state": {"running": {}}
                }]
            }
        }));
        let check = |node: &str, here: &[RunningContainer]| {
            all_ready(
                std::slice::from_ref(&restored),
                1,
                "x",
                Some((node, here)),
                |_| String::new(),
            )
        };
        // The snapshot's status, after a reset: its container is gone.
        let new = [running("fedcba9876543210")];
        assert_eq!(
            check("cp1", &new).unwrap_err().to_string(),
            "not Ready yet: kube-apiserver-x (its status names container kube-apiserver \
             0123456789abc, which does not run on this node (a status from before the \
             kubelet's next report))"
        );
        // The kubelet's own report: the container runs.
        let same = [running("0123456789abcdef0123")];
        assert!(check("cp1", &same).unwrap());
        // A pod on another node is not checked against this node's containers.
        assert!(check("cp2", &new).unwrap());
        // A Ready status without container statuses is not a kubelet's report.
        let bare = ready_pod("b");
        assert_eq!(
            status_is_current(&bare, &same).unwrap_err(),
            "the kubelet has not reported its containers yet"
        );
        assert_eq!(status_is_current(&restored, &same), Ok(()));
    }
}
