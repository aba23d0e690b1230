//! `selfnode recover`: brings back control-plane components a cluster lost
//! while this host still holds what they need (the checkpoint, the PKI,
//! etcd's data), as bootkube's `recover` did, with the node's own
//! checkpoint instead of etcd's contents.
//!
//! One pass, in dependency order; each part looks first and acts only on
//! what it finds missing, so on a healthy cluster it does nothing:
//! 1. etcd: the member's static pod manifest, rewritten from the settings
//!    and the member identity recorded at the pivot when it is gone and the
//!    data directory is not. Without data there is nothing to rewrite:
//!    that is `--from-snapshot`.
//! 2. The API: when no API server answers through the node's balancer and
//!    none runs here, the kept copy is started as a static pod (the same
//!    copy a power cut brings back), then `/readyz` is awaited.
//! 3. The objects: every self-hosted object that no longer exists is
//!    created again from the recorded settings (never overwritten:
//!    [`bootstrap::objects::create_missing`]); the node gets its
//!    control-plane label back if it lost it.
//! 4. The controller-manager and scheduler: when no Ready pod of one runs
//!    (deleted, crash-looping), its kept copy (or, without one, the pod its
//!    Deployment renders) runs as a static pod bound to this node, the
//!    scheduler that schedules the schedulers, until the Deployment has a
//!    Ready pod of its own; then the copy goes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bootstrap::config::InitSettings;
use bootstrap::objects::{Object, CONTROL_PLANE_LABEL, FIELD_MANAGER};
use bootstrap::plane::{EtcdInitial, InitialClusterState, PlaneSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::agent::checkpointer;
use crate::checkpoint::{Checkpoint, EtcdMemberIdentity, PodCheckpoint};
use crate::paths::HostPaths;

/// The components that run as Deployments and get a bound copy.
const DEPLOYMENTS: &[&str] = &["kube-controller-manager", "kube-scheduler"];
const API_SERVER: &str = "kube-apiserver";
const NAMESPACE: &str = "kube-system";

/// What `recover` found and did; `-o json` prints it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoverReport {
    /// What was missing or broken, one line each.
    pub found: Vec<String>,
    /// What recover did about it, one line each.
    pub did: Vec<String>,
    /// Copies still running because their component has no Ready pod of
    /// its own yet (the command exits 1 then).
    pub left_running: Vec<String>,
    pub seconds: f64,
}

/// Why `recover` does not start: this host has no pivoted cluster to
/// recover, or recorded nothing to recover it from. Exit code 3.
#[derive(Debug, thiserror::Error)]
pub enum RecoverRefused {
    #[error("this host belongs to no cluster: nothing to recover. 'selfnode init' creates one; 'selfnode etcd snapshot restore FILE' brings one back from a snapshot")]
    NoCluster,
    #[error("the cluster on this host has not pivoted yet: run 'selfnode init' again, it resumes where it stopped")]
    NotPivoted,
    #[error("this host's checkpoint holds no settings of its cluster (it was made by an older selfnode): run 'selfnode init' with the flags it was made with instead")]
    NoSettings,
    #[error("etcd on this host serves the cluster's data: nothing to recover from a snapshot (that would throw away everything written since it). Run 'selfnode recover' for lost components; to roll the cluster back to a snapshot on purpose, 'selfnode etcd snapshot restore FILE --force'")]
    Healthy,
    #[error("this host joined its cluster ({cluster:?}); recover runs on the host that ran 'selfnode init', which holds the cluster's keys and settings (a joined control-plane host brings back its own etcd member and API server by itself: its agent and checkpoint)")]
    NotControlPlane { cluster: String },
}

/// What this host recorded about its cluster at the pivot.
pub struct Recorded {
    pub settings: InitSettings,
    pub etcd_member: Option<EtcdMemberIdentity>,
    pub kept: Vec<PodCheckpoint>,
    /// The pivot is committed (false while a restore or recovery from a
    /// snapshot is under way).
    pub pivoted: bool,
}

impl Recorded {
    /// The bundle the cluster was made with (the recorded `--bundle`, else
    /// the host's default).
    fn bundle(&self, paths: &HostPaths) -> anyhow::Result<dist::bundle::Bundle> {
        let dir = self
            .settings
            .bundle
            .clone()
            .unwrap_or_else(|| paths.default_bundle());
        Ok(dist::bundle::Bundle::open(&dir)?)
    }
}

/// Reads the checkpoint once and closes it (the agent's checkpointer opens
/// it every few seconds). A damaged pod entry is an error here: nothing is
/// started from it.
pub fn recorded(paths: &HostPaths) -> anyhow::Result<Recorded> {
    if !paths.checkpoint_dir().exists() {
        return Err(RecoverRefused::NoCluster.into());
    }
    let cp = Checkpoint::open(&paths.checkpoint_dir())?;
    match cp.cluster_identity()? {
        None => return Err(RecoverRefused::NoCluster.into()),
        Some(id) if id.role == "join" => {
            return Err(RecoverRefused::NotControlPlane {
                cluster: id.cluster_name,
            }
            .into())
        }
        Some(_) => {}
    }
    let settings = cp.settings()?.ok_or(RecoverRefused::NoSettings)?;
    Ok(Recorded {
        settings,
        etcd_member: cp.etcd_member()?,
        kept: cp.pods()?,
        pivoted: cp.pivot_committed()?,
    })
}

/// Prints one progress line (not with `-o json`).
struct Progress {
    quiet: bool,
    started: Instant,
}

impl Progress {
    fn line(&self, text: &str) {
        if !self.quiet {
            println!(
                "[recover] {text} ({:.1}s)",
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Runs one recovery pass (see the module docs). `wait` bounds each wait
/// for a component to come back.
pub async fn run(paths: &HostPaths, wait: Duration, quiet: bool) -> anyhow::Result<RecoverReport> {
    let progress = Progress {
        quiet,
        started: Instant::now(),
    };
    let rec = recorded(paths)?;
    if !rec.pivoted {
        return Err(RecoverRefused::NotPivoted.into());
    }
    crate::agent::lock::running_agent(&paths.agent_lock()).context(
        "the selfnode agent is not running on this host; start it first ('selfnode agent')",
    )?;
    let bundle = rec.bundle(paths)?;
    let spec = crate::init::plane_spec(paths, &rec.settings, &bundle);
    let mut report = RecoverReport::default();

    recover_etcd(
        paths,
        &spec,
        rec.etcd_member.as_ref(),
        &mut report,
        &progress,
    )?;
    recover_api(paths, &spec, &rec.kept, wait, &mut report, &progress).await?;

    let client = crate::init::kube_client(&spec.kubeconfig_dir.join("super-admin.conf")).await?;
    let files = bootstrap::objects::PlaneFiles::read(&crate::host::NodeHost, &spec)?;
    let objects = bootstrap::objects::self_hosted_objects(&spec, &files)?;
    for a in bootstrap::objects::create_missing(client.clone(), &objects, FIELD_MANAGER).await? {
        if a.outcome == bootstrap::objects::ApplyOutcome::Created {
            let what = format!(
                "{} {}/{}",
                a.kind,
                a.namespace.as_deref().unwrap_or(""),
                a.name
            );
            report.found.push(format!("{what} was gone"));
            report.did.push(format!("created {what} again"));
            progress.line(&format!("{what} was gone: created it again"));
        }
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let labelled = nodes
        .get_opt(&spec.node_name)
        .await?
        .and_then(|n| n.metadata.labels)
        .is_some_and(|l| l.contains_key(CONTROL_PLANE_LABEL));
    if !labelled {
        bootstrap::objects::mark_control_plane(
            client.clone(),
            &spec.node_name,
            FIELD_MANAGER,
            !spec.allow_workloads,
        )
        .await?;
        report.found.push(format!(
            "node {} had lost its control-plane label",
            spec.node_name
        ));
        report.did.push(format!("labelled node {}", spec.node_name));
        progress.line(&format!(
            "node {} had lost its control-plane label: labelled it",
            spec.node_name
        ));
    }

    let mut copies = Vec::new();
    for component in DEPLOYMENTS {
        if ready_pod(&client, component, None).await? {
            continue;
        }
        let (cp, source) = match rec.kept.iter().find(|k| k.component == *component) {
            Some(k) => (
                k.clone(),
                format!("the checkpoint copy of {}", k.describe()),
            ),
            None => (
                rendered_copy(&objects, component)?,
                format!("the pod its Deployment renders (no copy of {component} is kept)"),
            ),
        };
        checkpointer::activate(paths, &cp)?;
        report
            .found
            .push(format!("no Ready {component} pod in the cluster"));
        report.did.push(format!(
            "started {source} as a static pod on node {}",
            spec.node_name
        ));
        progress.line(&format!(
            "no Ready {component} pod: started {source} on this node"
        ));
        copies.push(*component);
    }
    let pending = {
        let mut all = copies.clone();
        if checkpointer::copy_paths(paths, API_SERVER)
            .manifest
            .exists()
        {
            all.push(API_SERVER);
        }
        all
    };
    let socket = crate::agent::drain::containerd_socket(paths);
    for component in pending {
        let deadline = Instant::now() + wait;
        let mut back = false;
        while Instant::now() < deadline {
            let running = if component == API_SERVER {
                checkpointer::running_containers(&socket).await?
            } else {
                Vec::new()
            };
            let node = (component == API_SERVER).then_some((spec.node_name.as_str(), &running[..]));
            if ready_pod(&client, component, node).await.unwrap_or(false) {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if back {
            checkpointer::deactivate(paths, component)?;
            report.did.push(format!(
                "{component} has a Ready pod of its own: removed its copy"
            ));
            progress.line(&format!(
                "{component} has a Ready pod of its own: removed its copy"
            ));
        } else {
            report.left_running.push(format!(
                "{component}: no Ready pod of its own after {}s; its copy keeps running on this node and goes once one is Ready (see 'kubectl -n kube-system describe pods -l k8s-app={component}'; 'kubectl -n kube-system rollout undo' if a change broke it)",
                wait.as_secs()
            ));
        }
    }
    report.seconds = progress.started.elapsed().as_secs_f64();
    Ok(report)
}

/// Step 1: etcd's manifest, when it is gone but the member's data is not.
fn recover_etcd(
    paths: &HostPaths,
    spec: &PlaneSpec,
    member: Option<&EtcdMemberIdentity>,
    report: &mut RecoverReport,
    progress: &Progress,
) -> anyhow::Result<()> {
    let manifest = paths.etcd_manifest();
    if manifest.exists() {
        return Ok(());
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
    report.found.push(format!(
        "etcd's static pod manifest {} was gone (its data is there)",
        manifest.display()
    ));
    report
        .did
        .push(format!("wrote the manifest of etcd member {name} again"));
    progress.line(&format!(
        "etcd's manifest was gone: wrote it again for member {name}"
    ));
    Ok(())
}

/// Step 2: the API, from the kept copy when no API server runs here.
async fn recover_api(
    paths: &HostPaths,
    spec: &PlaneSpec,
    kept: &[PodCheckpoint],
    wait: Duration,
    report: &mut RecoverReport,
    progress: &Progress,
) -> anyhow::Result<()> {
    if api_ready(spec).await.is_ok() {
        return Ok(());
    }
    let socket = crate::agent::drain::containerd_socket(paths);
    let copy = checkpointer::copy_paths(paths, API_SERVER);
    report
        .found
        .push("no API server answers through this node's balancer".into());
    progress.line(
        "no API server answers: waiting for /readyz (the kept copy starts when none runs here)",
    );
    let deadline = Instant::now() + wait;
    loop {
        // An API server that is going away (its pod deleted) still runs
        // for a while: the copy starts once none does.
        let running = checkpointer::running_containers(&socket).await?;
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
            checkpointer::activate(paths, cp)?;
            report.did.push(format!(
                "started the checkpoint copy of {} as a static pod",
                cp.describe()
            ));
            progress.line(&format!(
                "no API server runs here: started the checkpoint copy of {}",
                cp.describe()
            ));
        }
        match api_ready(spec).await {
            Ok(()) => break,
            Err(why) if Instant::now() >= deadline => anyhow::bail!(
                "the API server did not become ready within {}s ({why}); check etcd ('selfnode etcd members') and 'selfnode status'",
                wait.as_secs()
            ),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    progress.line("the API server answers");
    Ok(())
}

/// `/readyz` through this node's API load balancer, verified against the
/// cluster CA.
async fn api_ready(spec: &PlaneSpec) -> Result<(), String> {
    let lb = std::net::SocketAddr::new(spec.loopback(), spec.ports.api_load_balancer);
    let ca: PathBuf = spec.pki_dir.join("ca.crt");
    match tokio::time::timeout(
        Duration::from_secs(5),
        crate::agent::probe::https_ok(lb, "/readyz", Some(&ca), None),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err("/readyz did not answer within 5s".into()),
    }
}

/// Whether a self-hosted pod of `component` (not a checkpoint copy, not
/// terminating) is Ready, anywhere or on `node`. On this node the
/// containers its status names must also run in containerd (`running`,
/// see [`crate::init::ready::status_is_current`]): right after the API
/// comes back, a pod whose container died while it was down still says
/// Ready (the kubelet could not report), such as the pod of a deleted
/// DaemonSet.
async fn ready_pod(
    client: &kube::Client,
    component: &str,
    node: Option<(&str, &[checkpointer::RunningContainer])>,
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
        !checkpointer::is_mirror(p)
            && p.metadata.deletion_timestamp.is_none()
            && crate::init::ready::pod_ready(p)
            && node.is_none_or(|(_, running)| {
                crate::init::ready::status_is_current(p, running).is_ok()
            })
    }))
}

/// A copy of `component` made from the rendered objects, for a cluster
/// whose checkpoint kept none: the Deployment's pod with the Secrets and
/// ConfigMaps rendered beside it.
fn rendered_copy(objects: &[Object], component: &str) -> anyhow::Result<PodCheckpoint> {
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
        secrets: objects
            .iter()
            .filter_map(|o| match o {
                Object::Secret(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
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

/// `--from-snapshot`: the restore's plan with the recorded settings, on a
/// host whose control plane is gone (refused while it is healthy).
pub async fn from_snapshot(
    paths: &HostPaths,
    snapshot: PathBuf,
    pki: Option<PathBuf>,
    quiet: bool,
) -> anyhow::Result<crate::init::InitSummary> {
    let rec = recorded(paths)?;
    let bundle = rec.bundle(paths)?;
    if rec.pivoted {
        // etcd serving means the data is there: a restore would throw away
        // everything written since the snapshot; plain recover is the tool.
        let etcd_ok = match etcd_mgr::members(&crate::etcd::config(paths)).await {
            Ok(m) | Err(etcd_mgr::EtcdError::NoLeader { members: m, .. }) => {
                m.iter().any(|m| m.healthy)
            }
            Err(_) => false,
        };
        if etcd_ok {
            return Err(RecoverRefused::Healthy.into());
        }
    }
    let ctx = crate::init::InitContext {
        paths: paths.clone(),
        settings: rec.settings,
        bundle,
        quiet,
        restore: Some(crate::init::RestoreSource {
            snapshot,
            pki,
            force: true,
            recover: true,
        }),
    };
    crate::init::run(ctx).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_copy_carries_the_deployment_pod_and_what_it_mounts() {
        let image = |n: &str| format!("registry.k8s.io/{n}:v1.37.2");
        let images = bootstrap::plane::PlaneImages {
            kube_apiserver: image("kube-apiserver"),
            kube_controller_manager: image("kube-controller-manager"),
            kube_scheduler: image("kube-scheduler"),
            kube_proxy: image("kube-proxy"),
            coredns: image("coredns"),
            etcd: image("etcd"),
            selfnode: image("selfnode"),
        };
        let spec = PlaneSpec::new("cp-1", "10.0.0.10".parse().unwrap(), "v1.37.2", images);
        let mut files = bootstrap::objects::PlaneFiles::new();
        for p in bootstrap::objects::PlaneFiles::required(&spec) {
            files.insert(p, b"contents".to_vec());
        }
        let objects = bootstrap::objects::self_hosted_objects(&spec, &files).unwrap();
        let cp = rendered_copy(&objects, "kube-scheduler").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (pod, files) = checkpointer::static_copy(&cp, dir.path()).unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.containers[0].name, "kube-scheduler");
        assert_eq!(spec.node_name, None);
        assert!(
            !files.is_empty(),
            "the scheduler's kubeconfig Secret becomes files"
        );
        assert!(rendered_copy(&objects, "kube-nothing").is_err());
    }
}
