//! `selfnode recover`: brings back control-plane components a cluster lost
//! while this host still holds what they need (the checkpoint, the PKI,
//! etcd's data), as bootkube's `recover` did, with the node's own
//! checkpoint instead of etcd's contents.
//!
//! A plan over the sequences' runner, in dependency order; each step looks
//! first and acts only on what it finds missing, so on a healthy cluster it
//! does nothing, and a run killed anywhere resumes:
//! 1. `recover_etcd_manifest`: the member's static pod manifest, rewritten
//!    from the settings and the member identity recorded at the pivot when
//!    it is gone and the data directory is not. Without data there is
//!    nothing to rewrite: that is `--from-snapshot`.
//! 2. `recover_api_server`: when no API server answers through the node's
//!    balancer and none runs here, the kept copy is started as a static pod
//!    (the same copy a power cut brings back), then `/readyz` is awaited.
//! 3. `create_missing_objects`: every self-hosted object that no longer
//!    exists is created again from the recorded settings (never
//!    overwritten: [`bootstrap::objects::create_missing`]).
//! 4. `restore_control_plane_label`: the node's label, if it lost it.
//! 5. `start_missing_components`: when no Ready pod of the
//!    controller-manager or scheduler runs (deleted, crash-looping), its
//!    kept copy (or, without one, the pod its Deployment renders) runs as a
//!    static pod bound to this node: the scheduler that schedules the
//!    schedulers.
//! 6. `hand_back_copies`: each copy goes once its component has a Ready
//!    pod of its own; one that has none within `--timeout` keeps running
//!    (exit 1, and the report says why).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use bootstrap::config::InitSettings;
use bootstrap::objects::{Object, CONTROL_PLANE_LABEL, FIELD_MANAGER};
use bootstrap::plane::{EtcdInitial, InitialClusterState, PlaneSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde::Serialize;
use tokio::sync::OnceCell;

use crate::agent::control::{api_lb_port, RunningAgent};
use crate::agent::static_copy;
use crate::checkpoint::{Checkpoint, EtcdMemberIdentity, PodCheckpoint};
use crate::cluster::{HostCluster, NotInitHost};
use crate::paths::HostPaths;
use crate::readiness::{
    is_mirror, pod_ready, running_containers, status_is_current, RunningContainer,
};
use crate::sequences::plan::{steps, Action, Plan};
use crate::sequences::runner::{self, StepReport};

/// The components that run as Deployments and get a bound copy.
const DEPLOYMENTS: &[&str] = &["kube-controller-manager", "kube-scheduler"];
const API_SERVER: &str = "kube-apiserver";
const NAMESPACE: &str = "kube-system";

steps! {
    /// One step of `selfnode recover`.
    pub enum RecoverStep {
        RecoverEtcdManifest => "recover_etcd_manifest",
        RecoverApiServer => "recover_api_server",
        CreateMissingObjects => "create_missing_objects",
        RestoreControlPlaneLabel => "restore_control_plane_label",
        StartMissingComponents => "start_missing_components",
        HandBackCopies => "hand_back_copies",
    }
}

type Runner = runner::Runner<RecoverStep>;

/// Every step, in order: each one observes before it acts.
pub fn plan() -> Plan<RecoverStep> {
    let run = Some(Action::Run);
    Plan::one_lane(
        "recover",
        &[
            (RecoverStep::RecoverEtcdManifest, run),
            (RecoverStep::RecoverApiServer, run),
            (RecoverStep::CreateMissingObjects, run),
            (RecoverStep::RestoreControlPlaneLabel, run),
            (RecoverStep::StartMissingComponents, run),
            (RecoverStep::HandBackCopies, run),
        ],
    )
}

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
    /// One entry per step, in plan order.
    pub steps: Vec<StepReport>,
}

/// `recover --from-snapshot` on a cluster whose etcd serves. Exit code 3.
#[derive(Debug, thiserror::Error)]
pub enum RecoverRefused {
    #[error("etcd on this host serves the cluster's data: nothing to recover from a snapshot (that would throw away everything written since it). Run 'selfnode recover' for lost components; to roll the cluster back to a snapshot on purpose, 'selfnode etcd snapshot restore FILE --force'")]
    Healthy,
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

/// Reads the checkpoint once and closes it (the agent's checkpointer opens
/// it every few seconds). A damaged pod entry is an error here: nothing is
/// started from it. Refuses a host that did not make its cluster.
pub fn recorded(paths: &HostPaths) -> anyhow::Result<Recorded> {
    if !paths.checkpoint_dir().exists() {
        return Err(NotInitHost::NoCluster.into());
    }
    let cp = Checkpoint::open(&paths.checkpoint_dir())?;
    let cluster = HostCluster::read(&cp)?.ok_or(NotInitHost::NoCluster)?;
    if cluster.role().joined() {
        return Err(NotInitHost::Joined {
            cluster: cluster.identity.cluster_name,
        }
        .into());
    }
    Ok(Recorded {
        settings: cluster.settings.ok_or(NotInitHost::NoSettings)?,
        etcd_member: cluster.etcd_member,
        kept: cp.pods()?,
        pivoted: cluster.pivoted,
    })
}

/// What recover's steps share.
struct Recover<'a> {
    paths: &'a HostPaths,
    spec: PlaneSpec,
    rec: Recorded,
    /// Bounds each wait for a component to come back.
    wait: Duration,
    report: Mutex<RecoverReport>,
    client: OnceCell<kube::Client>,
}

impl Recover<'_> {
    /// Notes what was found and what was done about it, and says so on the
    /// step's line.
    fn found(&self, run: &Runner, step: RecoverStep, found: String, did: String) {
        run.say(step, &format!("{found}: {did}"));
        if let Ok(mut r) = self.report.lock() {
            r.found.push(found);
            r.did.push(did);
        }
    }

    fn did(&self, run: &Runner, step: RecoverStep, did: String) {
        run.say(step, &did);
        if let Ok(mut r) = self.report.lock() {
            r.did.push(did);
        }
    }

    /// The super-admin client, made once the API answers.
    async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = self.spec.kubeconfig_dir.join("super-admin.conf");
        self.client
            .get_or_try_init(|| crate::cluster::kube_client(&kc))
            .await
            .cloned()
    }

    fn objects(&self) -> anyhow::Result<Vec<Object>> {
        let files = bootstrap::objects::PlaneFiles::read(&crate::host::NodeHost, &self.spec)?;
        Ok(bootstrap::objects::self_hosted_objects(&self.spec, &files)?)
    }
}

/// Runs the recovery plan (see the module docs).
pub async fn run(paths: &HostPaths, wait: Duration, quiet: bool) -> anyhow::Result<RecoverReport> {
    let rec = recorded(paths)?;
    if !rec.pivoted {
        return Err(NotInitHost::NotPivoted.into());
    }
    RunningAgent::require(paths)?;
    let bundle = crate::cluster::open_bundle(paths, &rec.settings)?;
    let spec = crate::cluster::plane_spec(paths, &rec.settings, &bundle, api_lb_port(paths));
    let plan = plan();
    let run = Runner::new(&plan, quiet);
    let r = Recover {
        paths,
        spec,
        rec,
        wait,
        report: Mutex::new(RecoverReport::default()),
        client: OnceCell::new(),
    };
    let steps = runner::run_plan(&plan, &run, |step| execute(step, &run, &r)).await?;
    let mut report = r.report.into_inner().unwrap_or_default();
    report.steps = steps;
    report.seconds = run.elapsed().as_secs_f64();
    Ok(report)
}

async fn execute(step: RecoverStep, run: &Runner, r: &Recover<'_>) -> anyhow::Result<StepReport> {
    match step {
        RecoverStep::RecoverEtcdManifest => {
            run.converge(step, || async { recover_etcd(run, r) }).await
        }
        RecoverStep::RecoverApiServer => run.converge(step, || recover_api(run, r)).await,
        RecoverStep::CreateMissingObjects => {
            run.converge(step, || create_missing_objects(run, r)).await
        }
        RecoverStep::RestoreControlPlaneLabel => {
            run.converge(step, || restore_control_plane_label(run, r))
                .await
        }
        RecoverStep::StartMissingComponents => {
            run.converge(step, || start_missing_components(run, r))
                .await
        }
        RecoverStep::HandBackCopies => run.converge(step, || hand_back_copies(run, r)).await,
    }
}

/// `create_missing_objects`: every self-hosted object that is gone, made
/// again from the recorded settings; existing ones are never changed.
async fn create_missing_objects(run: &Runner, r: &Recover<'_>) -> anyhow::Result<bool> {
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
async fn restore_control_plane_label(run: &Runner, r: &Recover<'_>) -> anyhow::Result<bool> {
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
async fn start_missing_components(run: &Runner, r: &Recover<'_>) -> anyhow::Result<bool> {
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
async fn hand_back_copies(run: &Runner, r: &Recover<'_>) -> anyhow::Result<bool> {
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
fn recover_etcd(run: &Runner, r: &Recover<'_>) -> anyhow::Result<bool> {
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
async fn recover_api(run: &Runner, r: &Recover<'_>) -> anyhow::Result<bool> {
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
) -> anyhow::Result<crate::sequences::init::InitSummary> {
    let rec = recorded(paths)?;
    let bundle = crate::cluster::open_bundle(paths, &rec.settings)?;
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
    let ctx = crate::sequences::init::InitContext {
        paths: paths.clone(),
        settings: rec.settings,
        bundle,
        quiet,
        restore: Some(crate::sequences::init::RestoreSource {
            snapshot,
            pki,
            force: true,
            recover: true,
        }),
    };
    crate::sequences::init::run(ctx).await
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
        let (pod, files) = static_copy::static_copy(&cp, dir.path()).unwrap();
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
