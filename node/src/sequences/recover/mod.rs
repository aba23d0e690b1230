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
use std::time::Duration;

use bootstrap::config::InitSettings;
use bootstrap::objects::Object;
use bootstrap::plane::PlaneSpec;
use serde::Serialize;
use tokio::sync::OnceCell;

use crate::checkpoint::{Checkpoint, EtcdMemberIdentity, PodCheckpoint};
use crate::cluster::{HostCluster, NotControlPlaneHost};
use crate::control::{api_lb_port, RunningAgent};
use crate::paths::HostPaths;
use crate::sequences::plan::{steps, Action, Plan};
use crate::sequences::runner::{self, StepReport};

pub mod force_new;
mod parts;
use parts::{
    create_missing_objects, hand_back_copies, recover_api, recover_etcd,
    restore_control_plane_label, start_missing_components,
};

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
/// started from it. Refuses a host without the cluster's keys and settings
/// (a worker).
pub fn recorded(paths: &HostPaths) -> anyhow::Result<Recorded> {
    if !paths.checkpoint_dir().exists() {
        return Err(NotControlPlaneHost::NoCluster.into());
    }
    let cp = Checkpoint::open(&paths.checkpoint_dir())?;
    let cluster = HostCluster::read(&cp)?.ok_or(NotControlPlaneHost::NoCluster)?;
    // A joined control-plane host recovers too once it holds the keys and
    // has recorded its plane's settings (nothing depends on the init host).
    let joined_with_keys = cluster.role().joined()
        && cluster.settings.is_some()
        && crate::cluster::keys_here(&paths.pki_dir());
    if cluster.role().joined() && !joined_with_keys {
        return Err(NotControlPlaneHost::Joined {
            cluster: cluster.identity.cluster_name,
        }
        .into());
    }
    Ok(Recorded {
        pivoted: cluster.pivoted || joined_with_keys,
        settings: cluster.settings.ok_or(NotControlPlaneHost::NoSettings)?,
        etcd_member: cluster.etcd_member,
        kept: cp.pods()?,
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
        return Err(NotControlPlaneHost::NotPivoted.into());
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

/// `--from-snapshot`: the restore's plan with the recorded settings, on a
/// host whose control plane is gone (refused while it is healthy).
pub async fn from_snapshot(
    paths: &HostPaths,
    snapshot: PathBuf,
    pki: Option<PathBuf>,
    discard_other_members: bool,
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
            discard_other_members,
        }),
    };
    crate::sequences::init::run(ctx).await
}

#[cfg(test)]
mod tests {
    use super::parts::rendered_copy;
    use super::*;
    use crate::agent::static_copy;

    #[test]
    fn a_rendered_copy_carries_the_deployment_pod_and_mounts_the_hosts_files() {
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
            files.is_empty(),
            "nothing to write: no Secret, no ConfigMap"
        );
        let kubeconfig = spec
            .volumes
            .iter()
            .flatten()
            .find_map(|v| v.host_path.as_ref())
            .unwrap();
        assert_eq!(
            kubeconfig.path, "/etc/kubernetes/scheduler.conf",
            "the scheduler's kubeconfig is the host's file"
        );
        assert!(rendered_copy(&objects, "kube-nothing").is_err());
    }
}
