//! The control plane comes back with nothing to ask: the agent's checkpointer.
//!
//! The self-hosted API server is a DaemonSet pod, so its spec lives only in
//! the API: after a power cut the kubelet restarts etcd (a static pod) but
//! never the API server. This task closes that loop, as bootkube's
//! pod-checkpointer did, with the copy kept in the node's sled checkpoint:
//!
//! - **Keep** (every [`PERIOD`]): with the kubelet's own credentials (the
//!   Node authorizer lets it read its pods and what they mount), list the
//!   [`CHECKPOINTED`] pods bound to this node. A pod that is Ready in the API
//!   *and* has its containers running in containerd is kept, with the Secrets
//!   and ConfigMaps it mounts ([`PodCheckpoint`]); a pod that is not Ready is
//!   never kept, so a bad flag applied through the API is not what comes back
//!   (last known good).
//! - **Recover** (once, at agent start, when containerd is ready): if no API
//!   server container runs on this host (learned from containerd, never from
//!   the kubelet), the kept copy is written as a static pod
//!   (`<component>-checkpoint`), its Secrets and ConfigMaps as 0600 files
//!   under `etc/kubernetes/checkpoint-volumes`. The kubelet starts it, the API
//!   answers, and the kubelet then starts the self-hosted pods bound to it.
//!   The controller-manager's and scheduler's copies are not started here
//!   (their pods come back once the API does); `selfnode recover` starts them
//!   when their Deployments are gone or crash-looping (`crate::recover`).
//! - **Hand back**: once a self-hosted pod of a component with a running
//!   copy is Ready and running here, the static copy and its files go. Both
//!   bind the same port with `--permit-port-sharing`, so there is no gap.
//! - **Prune**: once the node has not carried the control-plane label for
//!   [`PRUNE_AFTER`] while the API answered (it left the control plane),
//!   its copies are deleted, so they never come back on a node that is not
//!   meant to serve the API.
//!
//! A corrupt checkpoint is reported in `selfnode status` and never used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{
    ConfigMap, HostPathVolumeSource, KeyToPath, Pod, PodSpec, Secret, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::services::NodeIdentity;
use super::supervisor::StatusHandle;
use crate::checkpoint::{Checkpoint, PodCheckpoint};
use crate::fsutil::{ensure_dir, write_atomic};
use crate::paths::HostPaths;
use crate::status::{now_unix, ComponentState};

/// The component's name in `selfnode status`.
pub const COMPONENT: &str = "checkpoint";
/// One control-plane component the checkpointer keeps.
pub struct Kept {
    /// The pods' `k8s-app` label and container name.
    pub component: &'static str,
    /// Started from the checkpoint at agent start when no container of it
    /// runs. Only the API server: once it answers, the kubelet restarts the
    /// controller-manager and scheduler pods bound to the node; their copies
    /// are for `selfnode recover` (deleted or crash-looping Deployments).
    pub at_agent_start: bool,
}

/// Control-plane components kept, by their pods' `k8s-app` label.
pub const CHECKPOINTED: &[Kept] = &[
    Kept {
        component: "kube-apiserver",
        at_agent_start: true,
    },
    Kept {
        component: "kube-controller-manager",
        at_agent_start: false,
    },
    Kept {
        component: "kube-scheduler",
        at_agent_start: false,
    },
];
/// How often the pods are looked at.
pub const PERIOD: Duration = Duration::from_secs(5);
/// How long the API must answer without the node's control-plane label
/// before its copies are pruned.
pub const PRUNE_AFTER: Duration = Duration::from_secs(600);
const NAMESPACE: &str = "kube-system";
/// Label and annotations of a static copy.
pub const COPY_LABEL: &str = "selfnode.dev/checkpoint-of";
const COPY_OF_POD: &str = "selfnode.dev/checkpoint-pod";
const COPY_OF_UID: &str = "selfnode.dev/checkpoint-uid";
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Where one component's static copy lives on the host.
pub struct CopyPaths {
    pub manifest: PathBuf,
    pub volumes: PathBuf,
}

pub fn copy_paths(paths: &HostPaths, component: &str) -> CopyPaths {
    CopyPaths {
        manifest: paths
            .static_pod_dir()
            .join(format!("{component}-checkpoint.json")),
        volumes: paths
            .kubeconfig_dir()
            .join("checkpoint-volumes")
            .join(component),
    }
}

/// The inputs the task needs, fixed for the agent's lifetime.
pub struct CheckpointerContext {
    pub paths: HostPaths,
    pub containerd_socket: PathBuf,
}

/// Runs until `stop`: recovery once containerd is ready, then keep and hand
/// back every [`PERIOD`].
pub async fn run(
    ctx: Arc<CheckpointerContext>,
    status: StatusHandle,
    mut containerd_ready: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    if !containerd_up(&mut containerd_ready, &stop).await {
        return;
    }
    match recover_at_start(&ctx).await {
        Ok(Some(note)) => {
            tracing::warn!(%note, "control plane recovery");
            set(&status, ComponentState::Starting, note);
        }
        Ok(None) => {}
        Err(err) => {
            let err = format!("{err:#}");
            tracing::error!(error = %err, "checkpoint not used");
            status.update(COMPONENT, |c| {
                c.state = ComponentState::Failed;
                c.last_error = Some(err);
                c.detail = None;
            });
        }
    }
    let mut client: Option<kube::Client> = None;
    // What sled holds, so an unchanged pod costs no open of the database.
    let mut kept: BTreeMap<String, PodCheckpoint> = BTreeMap::new();
    let mut unlabelled_since: Option<std::time::Instant> = None;
    loop {
        match keep_and_hand_back(&ctx, &mut client, &mut kept, &mut unlabelled_since).await {
            Ok(Some(note)) => set(&status, ComponentState::Ready, note),
            Ok(None) => {}
            Err(err) => {
                let err = format!("{err:#}");
                tracing::debug!(error = %err, "checkpointer: cannot look at the control plane now");
                // Not a failure of its own while the API is coming back;
                // kept as the reason for whatever state it is in.
                status.update(COMPONENT, |c| {
                    if c.state == ComponentState::Failed && c.detail.is_none() {
                        return;
                    }
                    c.last_error = Some(err);
                });
                client = None;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

fn set(status: &StatusHandle, state: ComponentState, note: String) {
    status.update(COMPONENT, |c| {
        c.state = state;
        c.detail = Some(note);
        c.last_error = None;
    });
}

/// Writes the static copies when no API server runs here. Returns what it
/// did, or `None` when there was nothing to do.
async fn recover_at_start(ctx: &CheckpointerContext) -> anyhow::Result<Option<String>> {
    let kept = match read_checkpoint(&ctx.paths).await? {
        Some(kept) if !kept.is_empty() => kept,
        _ => return Ok(None),
    };
    let running = running_containers(&ctx.containerd_socket).await?;
    let mut notes = Vec::new();
    for cp in &kept {
        let copy = copy_paths(&ctx.paths, &cp.component);
        if copy.manifest.exists() {
            notes.push(format!(
                "running the checkpoint copy of {} (left by the previous agent)",
                cp.describe()
            ));
            continue;
        }
        if running.iter().any(|c| c.container == cp.component) {
            continue; // an agent restart: the self-hosted pod kept running
        }
        if !CHECKPOINTED
            .iter()
            .any(|k| k.component == cp.component && k.at_agent_start)
        {
            continue;
        }
        activate(&ctx.paths, cp)?;
        notes.push(format!(
            "no {} container ran at agent start: started the checkpoint copy of {}, kept {}",
            cp.component,
            cp.describe(),
            crate::status::human_age(cp.observed_at, now_unix())
        ));
    }
    Ok((!notes.is_empty()).then(|| notes.join("; ")))
}

/// Opens the sled checkpoint briefly (init and other commands open it too),
/// retrying while another selfnode command holds it.
async fn read_checkpoint(paths: &HostPaths) -> anyhow::Result<Option<Vec<PodCheckpoint>>> {
    let dir = paths.checkpoint_dir();
    if !dir.exists() {
        return Ok(None);
    }
    with_checkpoint(paths, |cp| cp.pods()).await.map(Some)
}

/// Runs `f` on the sled checkpoint, opened for this call only (init and
/// other commands open it too; the open waits for them), off the runtime.
pub(crate) async fn with_checkpoint<T: Send + 'static>(
    paths: &HostPaths,
    f: impl FnOnce(&Checkpoint) -> Result<T, crate::checkpoint::CheckpointError> + Send + 'static,
) -> anyhow::Result<T> {
    let dir = paths.checkpoint_dir();
    tokio::task::spawn_blocking(move || {
        let cp = Checkpoint::open(&dir)?;
        f(&cp).map_err(anyhow::Error::from)
    })
    .await?
}

/// Writes one component's static copy: volumes first (0600 files in a 0700
/// tree), the manifest last and atomically, so the kubelet never sees a
/// manifest whose files are missing.
pub fn activate(paths: &HostPaths, cp: &PodCheckpoint) -> anyhow::Result<()> {
    let copy = copy_paths(paths, &cp.component);
    let (pod, files) = static_copy(cp, &copy.volumes)?;
    if copy.volumes.exists() {
        std::fs::remove_dir_all(&copy.volumes)
            .with_context(|| format!("cannot clear {}", copy.volumes.display()))?;
    }
    for (path, bytes) in files {
        if let Some(dir) = path.parent() {
            ensure_dir(dir, 0o700).with_context(|| format!("creating {}", dir.display()))?;
        }
        write_atomic(&path, &bytes, 0o600)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let json = serde_json::to_vec_pretty(&pod)?;
    ensure_dir(&paths.static_pod_dir(), 0o755)?;
    write_atomic(&copy.manifest, &json, 0o600)
        .with_context(|| format!("writing {}", copy.manifest.display()))?;
    tracing::info!(component = %cp.component, manifest = %copy.manifest.display(), "wrote the checkpoint copy as a static pod");
    Ok(())
}

pub fn deactivate(paths: &HostPaths, component: &str) -> anyhow::Result<()> {
    let copy = copy_paths(paths, component);
    match std::fs::remove_file(&copy.manifest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", copy.manifest.display())),
    }
    if copy.volumes.exists() {
        std::fs::remove_dir_all(&copy.volumes)
            .with_context(|| format!("removing {}", copy.volumes.display()))?;
    }
    Ok(())
}

/// One pass: keep what is Ready, hand back what the self-hosted pods serve,
/// prune what this node no longer runs. Returns the status note: what
/// changed, then every copy kept.
async fn keep_and_hand_back(
    ctx: &CheckpointerContext,
    client: &mut Option<kube::Client>,
    kept: &mut BTreeMap<String, PodCheckpoint>,
    unlabelled_since: &mut Option<std::time::Instant>,
) -> anyhow::Result<Option<String>> {
    let kubeconfig = ctx.paths.kubelet_kubeconfig();
    let Some(node) = NodeIdentity::read(&ctx.paths.node_identity_file())? else {
        return Ok(None);
    };
    if !kubeconfig.exists() {
        return Ok(None);
    }
    let client = kubelet_client(&kubeconfig, client).await?;
    if kept.is_empty() {
        // First pass: what an earlier agent kept (a damaged entry reads as
        // none and is written again).
        if let Ok(all) = with_checkpoint(&ctx.paths, |c| c.pods()).await {
            kept.extend(all.into_iter().map(|p| (p.component.clone(), p)));
        }
    }
    let mut notes = Vec::new();
    if is_control_plane_node(&client, &node.node_name).await? {
        *unlabelled_since = None;
    } else {
        // The node left the control plane (its label is gone, so the
        // DaemonSet took its API server away): its copies must not come
        // back after the next power cut. Only once the API has answered
        // without the label for PRUNE_AFTER: a label removed by mistake on
        // the only control-plane node takes the API down within moments,
        // and that node's copies are what `selfnode recover` needs then.
        let since = *unlabelled_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < PRUNE_AFTER || kept.is_empty() {
            return Ok(None);
        }
        for component in std::mem::take(kept).into_keys() {
            with_checkpoint(&ctx.paths, {
                let c = component.clone();
                move |cp| cp.remove_pod(&c)
            })
            .await?;
            tracing::info!(%component, "node is not a control-plane node: pruned its checkpoint copy");
            notes.push(format!(
                "pruned {component}: this node left the control plane"
            ));
        }
        return Ok((!notes.is_empty()).then(|| notes.join("; ")));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let running = running_containers(&ctx.containerd_socket).await?;
    for component in CHECKPOINTED.iter().map(|k| k.component) {
        let list = pods
            .list(
                &ListParams::default()
                    .labels(&format!("k8s-app={component}"))
                    .fields(&format!("spec.nodeName={}", node.node_name)),
            )
            .await
            .with_context(|| format!("listing the {component} pods of this node"))?;
        // The self-hosted pod (not a mirror of a static copy, not going
        // away) that is Ready in the API, by a status that names the
        // containers running here now: after a power cut the pod's status
        // says Ready for containers that are gone until the kubelet
        // reports again, and its restarted container (same pod UID) may
        // not serve yet. The rule `init` and `recover` wait by.
        let serving = list.items.iter().find(|p| {
            !is_mirror(p)
                && p.metadata.deletion_timestamp.is_none()
                && crate::init::ready::pod_ready(p)
                && crate::init::ready::status_is_current(p, &running).is_ok()
        });
        let Some(pod) = serving else { continue };
        let cp = fetch(&client, component, pod).await?;
        if !kept.get(component).is_some_and(|s| s.same_content(&cp)) {
            let copy = cp.clone();
            with_checkpoint(&ctx.paths, move |c| c.put_pod(&copy)).await?;
            tracing::info!(pod = %cp.describe(), "checkpointed: the last known good copy");
            notes.push(format!("kept {}", cp.describe()));
            kept.insert(component.to_string(), cp.clone());
        }
        if copy_paths(&ctx.paths, component).manifest.exists() {
            deactivate(&ctx.paths, component)?;
            tracing::info!(pod = %cp.describe(), "self-hosted pod Ready: removed the checkpoint copy");
            notes.push(format!(
                "self-hosted {} is Ready: the checkpoint copy is gone",
                cp.describe()
            ));
        }
    }
    if !kept.is_empty() {
        let copies: Vec<String> = kept.values().map(PodCheckpoint::describe).collect();
        notes.push(format!("last known good: {}", copies.join(", ")));
    }
    Ok((!notes.is_empty()).then(|| notes.join("; ")))
}

/// Waits until containerd is ready; false when `stop` comes first (or the
/// sender is gone). The agent's API tasks start with it.
pub(crate) async fn containerd_up(
    ready: &mut watch::Receiver<bool>,
    stop: &CancellationToken,
) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        r = ready.wait_for(|r| *r) => r.is_ok(),
    }
}

/// The kubelet's client (its own credentials, through the node's
/// balancer), made once and kept in `cache` by the agent's API tasks; a
/// task drops it after a failed pass, so a renewed certificate is read.
pub(crate) async fn kubelet_client(
    kubeconfig: &Path,
    cache: &mut Option<kube::Client>,
) -> anyhow::Result<kube::Client> {
    Ok(match cache {
        Some(c) => c.clone(),
        None => cache
            .insert(crate::init::kube_client(kubeconfig).await?)
            .clone(),
    })
}

/// Whether this node carries the control-plane label (what the API server
/// DaemonSet selects). The Node authorizer lets a kubelet read its own Node.
pub(crate) async fn is_control_plane_node(
    client: &kube::Client,
    node: &str,
) -> anyhow::Result<bool> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let n = nodes
        .get(node)
        .await
        .with_context(|| format!("reading Node {node}"))?;
    Ok(n.metadata
        .labels
        .is_some_and(|l| l.contains_key(bootstrap::objects::CONTROL_PLANE_LABEL)))
}

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

/// The pod with the Secrets and ConfigMaps its volumes name.
async fn fetch(client: &kube::Client, component: &str, pod: &Pod) -> anyhow::Result<PodCheckpoint> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or(NAMESPACE);
    let (secret_names, cm_names) = mounted_names(pod.spec.as_ref());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut out = PodCheckpoint {
        component: component.to_string(),
        pod: pod.clone(),
        secrets: Vec::new(),
        config_maps: Vec::new(),
        observed_at: now_unix(),
    };
    for name in secret_names {
        out.secrets.push(
            secrets
                .get(&name)
                .await
                .with_context(|| format!("reading Secret {ns}/{name}"))?,
        );
    }
    for name in cm_names {
        out.config_maps.push(
            cms.get(&name)
                .await
                .with_context(|| format!("reading ConfigMap {ns}/{name}"))?,
        );
    }
    Ok(out)
}

/// Secret and ConfigMap names a pod's volumes mount (also inside projected
/// volumes), each once.
fn mounted_names(spec: Option<&PodSpec>) -> (Vec<String>, Vec<String>) {
    let mut secrets = std::collections::BTreeSet::new();
    let mut cms = std::collections::BTreeSet::new();
    for v in spec.and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(name);
        }
        if let Some(cm) = &v.config_map {
            cms.insert(cm.name.clone());
        }
        for src in v
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some(s) = &src.secret {
                secrets.insert(s.name.clone());
            }
            if let Some(c) = &src.config_map {
                cms.insert(c.name.clone());
            }
        }
    }
    (secrets.into_iter().collect(), cms.into_iter().collect())
}

/// One file a static copy's volumes need: where, and its bytes.
pub type VolumeFile = (PathBuf, Vec<u8>);

/// The static pod for a kept copy, and the files (path, bytes) its volumes
/// need under `volumes_dir`. Secret and ConfigMap volumes become hostPath
/// volumes over those files (items and sub-paths keep their layout);
/// service-account token volumes are dropped (static pods cannot have
/// them); the pod loses what binds it to the API (node name, service
/// account, priority value, owner), and is labelled as a copy so no
/// controller adopts its mirror.
///
/// Errors: a volume names a Secret, ConfigMap or key the copy does not hold.
pub fn static_copy(
    cp: &PodCheckpoint,
    volumes_dir: &Path,
) -> anyhow::Result<(Pod, Vec<VolumeFile>)> {
    let mut spec = cp.pod.spec.clone().context("the kept pod has no spec")?;
    let secrets: BTreeMap<&str, BTreeMap<String, Vec<u8>>> = cp
        .secrets
        .iter()
        .map(|s| {
            let data = s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .chain(
                    s.string_data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
                )
                .collect();
            (s.metadata.name.as_deref().unwrap_or_default(), data)
        })
        .collect();
    let cms: BTreeMap<&str, BTreeMap<String, Vec<u8>>> = cp
        .config_maps
        .iter()
        .map(|c| {
            let data = c
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .chain(
                    c.binary_data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.0.clone())),
                )
                .collect();
            (c.metadata.name.as_deref().unwrap_or_default(), data)
        })
        .collect();
    let mut files = Vec::new();
    let mut dropped = Vec::new();
    let mut volumes = Vec::new();
    for v in spec.volumes.take().unwrap_or_default() {
        let dir = volumes_dir.join(&v.name);
        let mut layout = |source: &BTreeMap<String, Vec<u8>>,
                          items: Option<&Vec<KeyToPath>>,
                          what: &str|
         -> anyhow::Result<()> {
            match items {
                Some(items) => {
                    for it in items {
                        let bytes = source.get(&it.key).with_context(|| {
                            format!("volume {}: {what} has no key {}", v.name, it.key)
                        })?;
                        files.push((dir.join(&it.path), bytes.clone()));
                    }
                }
                None => {
                    for (k, bytes) in source {
                        files.push((dir.join(k), bytes.clone()));
                    }
                }
            }
            Ok(())
        };
        let host = |name: &str| Volume {
            name: name.to_string(),
            host_path: Some(HostPathVolumeSource {
                path: dir.display().to_string(),
                type_: Some("DirectoryOrCreate".to_string()),
            }),
            ..Volume::default()
        };
        // What the volume mounts from the API: (kind, name, items).
        let mut sources: Vec<(&str, &str, Option<&Vec<KeyToPath>>)> = Vec::new();
        if let Some(s) = &v.secret {
            let name = s.secret_name.as_deref().unwrap_or_default();
            sources.push(("Secret", name, s.items.as_ref()));
        } else if let Some(c) = &v.config_map {
            sources.push(("ConfigMap", c.name.as_str(), c.items.as_ref()));
        } else if let Some(p) = &v.projected {
            let projected = p.sources.as_deref().unwrap_or_default();
            if projected.iter().any(|s| s.service_account_token.is_some()) {
                dropped.push(v.name.clone());
                continue;
            }
            for src in projected {
                if let Some(s) = &src.secret {
                    sources.push(("Secret", s.name.as_str(), s.items.as_ref()));
                }
                if let Some(c) = &src.config_map {
                    sources.push(("ConfigMap", c.name.as_str(), c.items.as_ref()));
                }
            }
        } else {
            volumes.push(v);
            continue;
        }
        for (kind, name, items) in sources {
            let store = if kind == "Secret" { &secrets } else { &cms };
            let data = store.get(name).with_context(|| {
                format!("volume {}: {kind} {name} is not in the checkpoint", v.name)
            })?;
            layout(data, items, &format!("{kind} {name}"))?;
        }
        volumes.push(host(&v.name));
    }
    spec.volumes = Some(volumes);
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        if let Some(mounts) = c.volume_mounts.as_mut() {
            mounts.retain(|m| !dropped.contains(&m.name));
        }
    }
    // A static pod runs here by definition; the kubelet checks affinity and
    // selectors against the Node it knows, which after a power cut is its
    // own initial one, without the control-plane label.
    spec.node_name = None;
    spec.node_selector = None;
    spec.affinity = None;
    spec.service_account_name = None;
    spec.service_account = None;
    spec.automount_service_account_token = Some(false);
    spec.priority = None;
    let original = cp.pod.metadata.name.clone().unwrap_or_default();
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(format!("{}-checkpoint", cp.component)),
            namespace: Some(NAMESPACE.to_string()),
            labels: Some(BTreeMap::from([(
                COPY_LABEL.to_string(),
                cp.component.clone(),
            )])),
            annotations: Some(BTreeMap::from([
                (COPY_OF_POD.to_string(), original),
                (
                    COPY_OF_UID.to_string(),
                    cp.pod.metadata.uid.clone().unwrap_or_default(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    };
    Ok((pod, files))
}

/// A container running on this host, from containerd's CRI labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningContainer {
    /// containerd's container ID: the one a pod's status gives as
    /// `containerd://<id>`.
    pub id: String,
    /// The container's name in its pod (`io.kubernetes.container.name`).
    pub container: String,
}

/// The CRI containers whose task runs, in containerd's `k8s.io` namespace.
pub async fn running_containers(socket: &Path) -> anyhow::Result<Vec<RunningContainer>> {
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
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ProjectedVolumeSource, SecretVolumeSource, ServiceAccountTokenProjection,
        VolumeMount, VolumeProjection,
    };
    use k8s_openapi::ByteString;

    fn kept() -> PodCheckpoint {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some("kube-apiserver".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                ("ca.crt".to_string(), ByteString(b"CA".to_vec())),
                ("apiserver.key".to_string(), ByteString(b"KEY".to_vec())),
            ])),
            ..Secret::default()
        };
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("kube-apiserver-abcde".into()),
                uid: Some("u-1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("cp1".into()),
                node_selector: Some(BTreeMap::from([(
                    "node-role.kubernetes.io/control-plane".to_string(),
                    String::new(),
                )])),
                affinity: Some(k8s_openapi::api::core::v1::Affinity::default()),
                priority: Some(2_000_001_000),
                service_account_name: Some("default".into()),
                containers: vec![Container {
                    name: "kube-apiserver".into(),
                    volume_mounts: Some(vec![
                        VolumeMount {
                            name: "pki".into(),
                            mount_path: "/etc/kubernetes/pki".into(),
                            ..VolumeMount::default()
                        },
                        VolumeMount {
                            name: "token".into(),
                            mount_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                            ..VolumeMount::default()
                        },
                    ]),
                    ..Container::default()
                }],
                volumes: Some(vec![
                    Volume {
                        name: "pki".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some("kube-apiserver".into()),
                            items: Some(vec![KeyToPath {
                                key: "apiserver.key".into(),
                                path: "sub/apiserver.key".into(),
                                ..KeyToPath::default()
                            }]),
                            ..SecretVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                    Volume {
                        name: "token".into(),
                        projected: Some(ProjectedVolumeSource {
                            sources: Some(vec![VolumeProjection {
                                service_account_token: Some(ServiceAccountTokenProjection {
                                    path: "token".into(),
                                    ..ServiceAccountTokenProjection::default()
                                }),
                                ..VolumeProjection::default()
                            }]),
                            ..ProjectedVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                ]),
                ..PodSpec::default()
            }),
            status: None,
        };
        PodCheckpoint {
            component: "kube-apiserver".into(),
            pod,
            secrets: vec![secret],
            config_maps: vec![],
            observed_at: 1,
        }
    }

    #[test]
    fn a_static_copy_mounts_its_secrets_from_files_and_is_unbound_from_the_api() {
        let dir = Path::new("/x/vols");
        let (pod, files) = static_copy(&kept(), dir).unwrap();
        assert_eq!(
            files,
            vec![(dir.join("pki/sub/apiserver.key"), b"KEY".to_vec())],
            "only the items the volume names, at their paths"
        );
        let spec = pod.spec.unwrap();
        let vols = spec.volumes.unwrap();
        assert_eq!(vols.len(), 1, "the token volume is dropped");
        assert_eq!(vols[0].host_path.as_ref().unwrap().path, "/x/vols/pki");
        let mounts = spec.containers[0].volume_mounts.as_ref().unwrap();
        assert_eq!(mounts.len(), 1, "and its mount");
        assert_eq!(spec.node_name, None);
        assert_eq!(
            spec.node_selector, None,
            "the kubelet admits it without the API"
        );
        assert_eq!(spec.affinity, None);
        assert_eq!(spec.priority, None);
        assert_eq!(spec.service_account_name, None);
        assert_eq!(
            pod.metadata.name.as_deref(),
            Some("kube-apiserver-checkpoint")
        );
        assert_eq!(
            pod.metadata
                .labels
                .unwrap()
                .get(COPY_LABEL)
                .map(String::as_str),
            Some("kube-apiserver"),
            "labelled as a copy: no k8s-app label for a DaemonSet to adopt"
        );
    }

    #[test]
    fn a_volume_whose_secret_is_not_kept_is_an_error() {
        let mut cp = kept();
        cp.secrets.clear();
        let err = static_copy(&cp, Path::new("/x")).unwrap_err().to_string();
        assert!(
            err.contains("Secret kube-apiserver is not in the checkpoint"),
            "{err}"
        );
    }

    #[test]
    fn mounted_names_include_projected_sources() {
        let (s, c) = mounted_names(kept().pod.spec.as_ref());
        assert_eq!(s, vec!["kube-apiserver".to_string()]);
        assert!(c.is_empty());
    }
}
