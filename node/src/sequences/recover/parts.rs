//! The bodies of `selfnode recover`'s steps (the plan is in `mod.rs`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bootstrap::objects::{Object, CONTROL_PLANE_LABEL, FIELD_MANAGER};
use bootstrap::plane::{EtcdInitial, InitialClusterState, PlaneSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

use super::{Recover, RecoverStep, Runner, API_SERVER, DEPLOYMENTS, NAMESPACE};
use crate::agent::static_copy;
use crate::checkpoint::PodCheckpoint;
use crate::readiness::{
    is_mirror, pod_ready, running_containers, status_is_current, RunningContainer,
};

/// `create_missing_objects`: every self-hosted object that is gone, made
/// again from the recorded settings; existing ones are never changed.
pub(super) async fn create_missing_objects(run: &Runner, r: &Recover<'_>) -> anyhow::Result<bool> {
    let client = r.client().await?;
    let objects = r.objects()?;
    let mut changed = false;
    for a in bootstrap::objects::create_missing(client, &objects, FIELD_MANAGER).await? {
        if a.outcome == bootstrap::objects::ApplyOutcome::Created {
            let what = format!(
                "{} {}/{}",
                a.kind,
                a.namespace.as_deref().unwrap_or(""),
                a.name
            );
            r.found(
                run,
                RecoverStep::CreateMissingObjects,
                format!("{what} was gone"),
                format!("created {what} again"),
            );
            changed = true;
        }
    }
    Ok(changed)
}

/// `restore_control_plane_label`: the node's label, if it lost it.
pub(super) async fn restore_control_plane_label(
    run: &Runner,
    r: &Recover<'_>,
) -> anyhow::Result<bool> {
    let client = r.client().await?;
    let node = &r.spec.node_name;
    let nodes: Api<Node> = Api::all(client.clone());
    let labelled = nodes
        .get_opt(node)
        .await?
        .and_then(|n| n.metadata.labels)
        .is_some_and(|l| l.contains_key(CONTROL_PLANE_LABEL));
    if labelled {
        return Ok(false);
    }
    bootstrap::objects::mark_control_plane(client, node, FIELD_MANAGER, !r.spec.allow_workloads)
        .await?;
    r.found(
        run,
        RecoverStep::RestoreControlPlaneLabel,
        format!("node {node} had lost its control-plane label"),
        format!("labelled node {node}"),
    );
    Ok(true)
}

/// `start_missing_components`: a copy of the controller-manager or
/// scheduler bound to this node while no Ready pod of it runs (one whose
/// copy runs already is left alone).
pub(super) async fn start_missing_components(
    run: &Runner,
    r: &Recover<'_>,
) -> anyhow::Result<bool> {
    let client = r.client().await?;
    let mut changed = false;
    for component in DEPLOYMENTS {
        if static_copy::copy_paths(r.paths, component)
            .manifest
            .exists()
            || ready_pod(&client, component, None).await?
        {
            continue;
        }
        let (cp, source) = match r.rec.kept.iter().find(|k| k.component == *component) {
            Some(k) => (
                k.clone(),
                format!("the checkpoint copy of {}", k.describe()),
            ),
            None => (
                rendered_copy(&r.objects()?, component)?,
                format!("the pod its Deployment renders (no copy of {component} is kept)"),
            ),
        };
        static_copy::activate(r.paths, &cp)?;
        r.found(
            run,
            RecoverStep::StartMissingComponents,
            format!("no Ready {component} pod in the cluster"),
            format!(
                "started {source} as a static pod on node {}",
                r.spec.node_name
            ),
        );
        changed = true;
    }
    Ok(changed)
}

/// `hand_back_copies`: every running copy goes once its component has a
/// Ready pod of its own; those that have none within the wait are left
/// running and reported.
pub(super) async fn hand_back_copies(run: &Runner, r: &Recover<'_>) -> anyhow::Result<bool> {
    let client = r.client().await?;
    let socket = crate::agent::drain::containerd_socket(r.paths);
    let mut changed = false;
    for component in DEPLOYMENTS.iter().copied().chain([API_SERVER]) {
        if !static_copy::copy_paths(r.paths, component)
            .manifest
            .exists()
        {
            continue;
        }
        run.say(
            RecoverStep::HandBackCopies,
            &format!(
                "waiting for a Ready {component} pod of its own (up to {}s)",
                r.wait.as_secs()
            ),
        );
        let deadline = Instant::now() + r.wait;
        let mut back = false;
        while Instant::now() < deadline {
            let running = if component == API_SERVER {
                running_containers(&socket).await?
            } else {
                Vec::new()
            };
            let here =
                (component == API_SERVER).then_some((r.spec.node_name.as_str(), &running[..]));
            if ready_pod(&client, component, here).await.unwrap_or(false) {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if back {
            static_copy::deactivate(r.paths, component)?;
            r.did(
                run,
                RecoverStep::HandBackCopies,
                format!("{component} has a Ready pod of its own: removed its copy"),
            );
            changed = true;
        } else if let Ok(mut rep) = r.report.lock() {
            rep.left_running.push(format!(
                "{component}: no Ready pod of its own after {}s; its copy keeps running on this node and goes once one is Ready (see 'kubectl -n kube-system describe pods -l k8s-app={component}'; 'kubectl -n kube-system rollout undo' if a change broke it)",
                r.wait.as_secs()
            ));
        }
    }
    Ok(changed)
}

/// `recover_etcd_manifest`: etcd's manifest, when it is gone but the
/// member's data is not.
pub(super) fn recover_etcd(run: &Runner, r: &Recover<'_>) -> anyhow::Result<bool> {
    let (paths, spec, member) = (r.paths, &r.spec, r.rec.etcd_member.as_ref());
    let manifest = paths.etcd_manifest();
    if manifest.exists() {
        return Ok(false);
    }
    let data = member.map_or_else(|| spec.etcd_data_dir.clone(), |m| m.data_dir.clone());
    if !data.join("member").is_dir() {
        anyhow::bail!(
            "etcd's static pod manifest {} and its data directory {} are both gone: this host's etcd member is lost. Bring the cluster back from a snapshot: 'selfnode recover --from-snapshot FILE' (scheduled snapshots are in {})",
            manifest.display(),
            data.display(),
            paths.snapshot_dir().display()
        );
    }
    // With a data directory etcd takes its membership from there; the
    // initial flags only have to name this member as it was.
    let (name, peer) = match member {
        Some(m) => (
            m.name.clone(),
            m.peer_urls
                .first()
                .cloned()
                .unwrap_or_else(|| spec.etcd_peer_url(bootstrap::plane::Placement::SelfHosted)),
        ),
        None => (
            spec.etcd_member_name(bootstrap::plane::Placement::SelfHosted),
            spec.etcd_peer_url(bootstrap::plane::Placement::SelfHosted),
        ),
    };
    let initial = EtcdInitial {
        members: vec![(name.clone(), peer)],
        state: InitialClusterState::Existing,
    };
    let pod = bootstrap::objects::etcd_static_pod_yaml(spec, &initial)?;
    crate::fsutil::ensure_dir(&paths.static_pod_dir(), 0o755)?;
    crate::fsutil::write_atomic(&manifest, pod.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", manifest.display()))?;
    r.found(
        run,
        RecoverStep::RecoverEtcdManifest,
        format!(
            "etcd's static pod manifest {} was gone (its data is there)",
            manifest.display()
        ),
        format!("wrote the manifest of etcd member {name} again"),
    );
    Ok(true)
}

/// `recover_api_server`: the API, from the kept copy when no API server
/// runs here.
pub(super) async fn recover_api(run: &Runner, r: &Recover<'_>) -> anyhow::Result<bool> {
    let (paths, spec, kept, wait) = (r.paths, &r.spec, &r.rec.kept, r.wait);
    if api_ready(spec).await.is_ok() {
        return Ok(false);
    }
    let step = RecoverStep::RecoverApiServer;
    let socket = crate::agent::drain::containerd_socket(paths);
    let copy = static_copy::copy_paths(paths, API_SERVER);
    if let Ok(mut rep) = r.report.lock() {
        rep.found
            .push("no API server answers through this node's balancer".into());
    }
    run.say(
        step,
        "no API server answers: waiting for /readyz (the kept copy starts when none runs here)",
    );
    if copy.manifest.exists() {
        // The agent's checkpointer got there first (it starts the copy
        // when a pass finds no API and no API server running here).
        if let Ok(mut rep) = r.report.lock() {
            rep.found.push(format!(
                "the agent had started the checkpoint copy of {API_SERVER} already"
            ));
        }
    }
    let deadline = Instant::now() + wait;
    loop {
        // An API server that is going away (its pod deleted) still runs
        // for a while: the copy starts once none does.
        let running = running_containers(&socket).await?;
        if !running.iter().any(|c| c.container == API_SERVER) && !copy.manifest.exists() {
            let cp = kept
                .iter()
                .find(|k| k.component == API_SERVER)
                .with_context(|| {
                    format!(
                        "no API server runs on this host and the checkpoint holds no copy of it (is {} a control-plane node?)",
                        spec.node_name
                    )
                })?;
            static_copy::activate(paths, cp)?;
            r.did(
                run,
                step,
                format!(
                    "no API server runs here: started the checkpoint copy of {} as a static pod",
                    cp.describe()
                ),
            );
        }
        match api_ready(spec).await {
            Ok(()) => break,
            Err(why) if Instant::now() >= deadline => anyhow::bail!(
                "the API server did not become ready within {}s ({:#}); check etcd ('selfnode etcd members') and 'selfnode status'",
                wait.as_secs(),
                anyhow::Error::new(why)
            ),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    run.say(step, "the API server answers");
    Ok(true)
}

/// `/readyz` through this node's API load balancer, verified against the
/// cluster CA.
async fn api_ready(spec: &PlaneSpec) -> Result<(), crate::agent::probe::ProbeError> {
    let lb = std::net::SocketAddr::new(spec.loopback(), spec.ports.api_load_balancer);
    let ca: PathBuf = spec.pki_dir.join("ca.crt");
    crate::agent::probe::https_ok(lb, "/readyz", Some(&ca), None).await
}

/// Whether a self-hosted pod of `component` (not a checkpoint copy, not
/// terminating) is Ready, anywhere or on `node`. On this node the
/// containers its status names must also run in containerd (`running`,
/// see [`crate::sequences::init::ready::status_is_current`]): right after the API
/// comes back, a pod whose container died while it was down still says
/// Ready (the kubelet could not report), such as the pod of a deleted
/// DaemonSet.
async fn ready_pod(
    client: &kube::Client,
    component: &str,
    node: Option<(&str, &[RunningContainer])>,
) -> anyhow::Result<bool> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut lp = ListParams::default().labels(&format!("k8s-app={component}"));
    if let Some((node, _)) = node {
        lp = lp.fields(&format!("spec.nodeName={node}"));
    }
    let list = pods
        .list(&lp)
        .await
        .with_context(|| format!("listing the {component} pods"))?;
    Ok(list.items.iter().any(|p| {
        !is_mirror(p)
            && p.metadata.deletion_timestamp.is_none()
            && pod_ready(p)
            && node.is_none_or(|(_, running)| status_is_current(p, running).is_ok())
    }))
}

/// A copy of `component` made from the rendered objects, for a cluster
/// whose checkpoint kept none: the Deployment's pod with the
/// ConfigMaps rendered beside it.
pub(super) fn rendered_copy(objects: &[Object], component: &str) -> anyhow::Result<PodCheckpoint> {
    let spec = objects
        .iter()
        .find_map(|o| match o {
            Object::Deployment(d) if o.name() == component => d.spec.template.spec.clone(),
            _ => None,
        })
        .with_context(|| format!("no Deployment {component} among the self-hosted objects"))?;
    Ok(PodCheckpoint {
        component: component.to_string(),
        pod: Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(component.to_string()),
                namespace: Some(NAMESPACE.to_string()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        },
        config_maps: objects
            .iter()
            .filter_map(|o| {
                if let Object::ConfigMap(c) = o {
                    Some(c.clone())
                } else {
                    None
                }
            })
            .collect(),
        observed_at: crate::status::now_unix(),
    })
}
