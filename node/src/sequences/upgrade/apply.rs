//! `selfnode upgrade apply --bundle DIR`: the cluster to the bundle's
//! versions, in the order of the version skew policy, each step waiting
//! on real health before the next. Every step observes first, so a run
//! cut short anywhere (kill -9, an agent restart, a power cut) is resumed
//! by running the command again.
//!
//! 1. `check_cluster`: every check of `upgrade plan` must hold (exit 2 for
//!    the input, 3 for the cluster's state). A run that resumes an
//!    unfinished upgrade to the same bundle needs only the bundle check:
//!    the cluster is half-way by then, as the upgrade left it.
//! 2. `record_upgrade`: `var/lib/selfnode/upgrade/upgrade.json` (from,
//!    to, both bundles), before anything changes.
//! 3. `snapshot_etcd`: a verified snapshot beside the record, what a
//!    rollback past etcd's own data format goes back to.
//! 4. `import_images`: the target bundle's images into this host's
//!    containerd (no registry: the pods of every later step need them).
//! 5. `stage_bundle`: the bundle onto every other host (`upgrade stage`:
//!    each host's agent fetches it from this one over mutual TLS, checked
//!    against its `SHA256SUMS`, and imports its images). Nothing on a
//!    cluster of this host alone.
//! 6. `upgrade_etcd`: this host's etcd static pod on the new image, then
//!    the member answering at the new server version; then every other
//!    member, one at a time, by its host's agent when the
//!    `kube-system/selfnode-upgrade` ConfigMap names it
//!    (`agent::tasks::upgrade`), each waited on until it answers at the
//!    new version and the API serves.
//! 7. `upgrade_apiservers`, `upgrade_controller_managers`,
//!    `upgrade_schedulers`: each workload applied from the target bundle
//!    (server-side apply, as init made it) and waited on until every pod
//!    is updated and ready. The API servers' DaemonSet surges one pod per
//!    node beside the old one (`--permit-port-sharing`).
//! 8. `apply_cluster_objects`: the rest of the self-hosted objects (RBAC,
//!    configuration, the pod network), then `upgrade_kube_proxy` and
//!    `upgrade_coredns`.
//! 9. `upgrade_hosts`: every other host, one at a time, by its agent (the
//!    fetched bundle recorded, the agent started again in place on it),
//!    each waited on until its Node is Ready with the new kubelet; then
//!    this host: the bundle it runs is recorded (`control::HostBundle`) and
//!    the agent starts again in place on it (the kubelet and containerd
//!    from the new bundle, containers kept). Last, so that no kubelet is
//!    newer than an API server.
//! 10. `finish_upgrade`: no agent follows the upgrade any more (the
//!     ConfigMap goes), and the record says when it finished.
//!
//! Rollback (`rollback.rs`) is one host only so far.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};

use bootstrap::objects::Object;
use bootstrap::plane::PlaneSpec;

use super::UpgradeRefused;
use crate::cluster::ControlPlaneHost;
use crate::paths::HostPaths;
use crate::sequences::plan::{steps, Plan, Step};
use crate::sequences::runner::{self, StepReport};

steps! {
    /// `selfnode upgrade apply`'s steps (module docs).
    pub enum UpgradeStep {
        CheckCluster => "check_cluster",
        RecordUpgrade => "record_upgrade",
        SnapshotEtcd => "snapshot_etcd",
        ImportImages => "import_images",
        StageBundle => "stage_bundle",
        UpgradeEtcd => "upgrade_etcd",
        UpgradeApiservers => "upgrade_apiservers",
        UpgradeControllerManagers => "upgrade_controller_managers",
        UpgradeSchedulers => "upgrade_schedulers",
        ApplyClusterObjects => "apply_cluster_objects",
        UpgradeKubeProxy => "upgrade_kube_proxy",
        UpgradeCoredns => "upgrade_coredns",
        UpgradeHosts => "upgrade_hosts",
        FinishUpgrade => "finish_upgrade",
    }
}

type Runner = runner::Runner<UpgradeStep>;

/// How long one workload may take to roll, and the host to come back.
const ROLL_DEADLINE: Duration = Duration::from_secs(10 * 60);

/// The record of an upgrade (`var/lib/selfnode/upgrade/upgrade.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRecord {
    /// The cluster's version before (its oldest control-plane workload).
    pub from: String,
    pub to: String,
    pub from_bundle: PathBuf,
    pub to_bundle: PathBuf,
    /// The verified snapshot taken before anything changed.
    pub snapshot: PathBuf,
    pub started: u64,
    /// Unix seconds; `None` while the upgrade is under way.
    pub finished: Option<u64>,
    /// Unix seconds: when `upgrade rollback` brought the cluster back to
    /// `from` (it starts by setting `rollback_started`).
    #[serde(default)]
    pub rollback_started: Option<u64>,
    #[serde(default)]
    pub rolled_back: Option<u64>,
}

impl UpgradeRecord {
    fn path(paths: &HostPaths) -> PathBuf {
        paths.upgrade_dir().join("upgrade.json")
    }

    /// The last upgrade's record, if any.
    pub fn read(paths: &HostPaths) -> anyhow::Result<Option<UpgradeRecord>> {
        let path = Self::path(paths);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("{} is not an upgrade record", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub(super) fn write(&self, paths: &HostPaths) -> anyhow::Result<()> {
        let path = Self::path(paths);
        crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(self)?, 0o600)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// An upgrade to `bundle` that has not finished: what a run resumes.
    fn resumes(&self, bundle: &Path) -> bool {
        self.finished.is_none() && self.rollback_started.is_none() && self.to_bundle == bundle
    }
}

/// What apply runs with.
pub struct ApplyContext {
    pub paths: HostPaths,
    /// The target bundle's directory, absolute.
    pub bundle_dir: PathBuf,
    pub quiet: bool,
}

/// What `upgrade apply -o json` prints.
#[derive(Debug, Serialize)]
pub struct ApplyReport {
    pub from: String,
    pub to: String,
    pub steps: Vec<StepReport>,
    pub seconds: f64,
    /// Every component ran the bundle's versions already: nothing was done.
    pub up_to_date: bool,
}

/// Every step runs; each observes first.
pub fn plan() -> Plan<UpgradeStep> {
    Plan::every_step("upgrade")
}

/// What the steps share, loaded once.
pub(super) struct Seq<'a> {
    pub(super) ctx: &'a ApplyContext,
    pub(super) target: dist::bundle::Bundle,
    pub(super) host: ControlPlaneHost,
    /// The plane as the target bundle renders it.
    pub(super) spec: PlaneSpec,
    pub(super) client: kube::Client,
    /// The plan `run` made before the first step, or `check_cluster`
    /// made: what `record_upgrade` records the cluster's version from.
    plan: std::sync::Mutex<Option<super::UpgradePlan>>,
}

impl<'a> Seq<'a> {
    /// Loads what the steps share, for the bundle at `ctx.bundle_dir`.
    pub(super) async fn load(ctx: &'a ApplyContext) -> anyhow::Result<Seq<'a>> {
        let target = dist::bundle::Bundle::open(&ctx.bundle_dir).map_err(|e| UpgradeRefused {
            reason: format!("bundle: {e}"),
            refusal: super::Refusal::Input,
        })?;
        let host = ControlPlaneHost::load(&ctx.paths)?;
        let port = crate::control::api_lb_port(&ctx.paths);
        let spec = crate::cluster::plane_spec(&ctx.paths, &host.settings, &target, port);
        let client =
            crate::cluster::kube_client(&spec.kubeconfig_dir.join("super-admin.conf")).await?;
        Ok(Seq {
            ctx,
            target,
            host,
            spec,
            client,
            plan: std::sync::Mutex::new(None),
        })
    }

    /// Refuses a cluster of more than one node (module docs).
    pub(super) async fn refuse_more_than_one_node(&self) -> anyhow::Result<()> {
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .context("listing the Nodes")?
            .items;
        if nodes.len() > 1 {
            return Err(UpgradeRefused {
                reason: format!(
                    "the cluster has {} nodes, and 'upgrade' changes one-host clusters only in this version: the other hosts' etcd members, kubelets and bundles would be left behind ('upgrade plan' lists every step it would take)",
                    nodes.len()
                ),
                refusal: super::Refusal::State,
            }
            .into());
        }
        Ok(())
    }
}

/// Runs the upgrade (module docs).
pub async fn run(ctx: &ApplyContext) -> anyhow::Result<ApplyReport> {
    let seq = Seq::load(ctx).await?;
    // A run that resumes after a kill may come while etcd or an API server
    // restarts: the checks need the API.
    crate::wait::api_ready(&seq.client, Duration::from_secs(3 * 60)).await?;
    // Every component at the bundle's versions already, and no upgrade to
    // finish: nothing to do, and nothing written (a second run of a
    // finished upgrade ends here).
    let made = super::plan(&ctx.paths, &ctx.bundle_dir).await?;
    let resuming = UpgradeRecord::read(&ctx.paths)?.is_some_and(|r| r.resumes(&ctx.bundle_dir));
    if !resuming && made.exit_code() == 0 && made.steps.is_empty() {
        return Ok(ApplyReport {
            from: made.current,
            to: made.target,
            steps: Vec::new(),
            seconds: 0.0,
            up_to_date: true,
        });
    }
    *seq.plan.lock().unwrap_or_else(|e| e.into_inner()) = Some(made);
    let plan = plan();
    let run = Runner::new(&plan, ctx.quiet);
    let reports = runner::run_plan(&plan, &run, |step| execute(step, &run, &seq)).await?;
    let record = UpgradeRecord::read(&ctx.paths)?.context("the upgrade's record is gone")?;
    Ok(ApplyReport {
        from: record.from,
        to: record.to,
        steps: reports,
        seconds: run.elapsed().as_secs_f64(),
        up_to_date: false,
    })
}

async fn execute(step: UpgradeStep, run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    use UpgradeStep as S;
    match step {
        S::CheckCluster => check_cluster(run, seq).await,
        S::RecordUpgrade => record_upgrade(run, seq).await,
        S::SnapshotEtcd => snapshot_etcd(run, seq).await,
        S::ImportImages => super::import_images(run, &seq.ctx.paths, &seq.target, step).await,
        S::StageBundle => stage_bundle(run, seq).await,
        S::UpgradeEtcd => etcd_to_target(run, seq, step).await,
        S::UpgradeApiservers => roll(run, seq, step, Workload::DaemonSet("kube-apiserver")).await,
        S::UpgradeControllerManagers => {
            roll(
                run,
                seq,
                step,
                Workload::Deployment("kube-controller-manager"),
            )
            .await
        }
        S::UpgradeSchedulers => roll(run, seq, step, Workload::Deployment("kube-scheduler")).await,
        S::ApplyClusterObjects => apply_cluster_objects(run, seq, step).await,
        S::UpgradeKubeProxy => roll(run, seq, step, Workload::DaemonSet("kube-proxy")).await,
        S::UpgradeCoredns => roll(run, seq, step, Workload::Deployment("coredns")).await,
        S::UpgradeHosts => hosts_to_target(run, seq).await,
        S::FinishUpgrade => finish_upgrade(run, seq).await,
    }
}

/// The workloads the steps roll, by kind and name in kube-system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Workload {
    DaemonSet(&'static str),
    Deployment(&'static str),
}

/// Every workload a step of its own rolls; `apply_cluster_objects` applies
/// all the other objects.
const ROLLED: [Workload; 5] = [
    Workload::DaemonSet("kube-apiserver"),
    Workload::Deployment("kube-controller-manager"),
    Workload::Deployment("kube-scheduler"),
    Workload::DaemonSet("kube-proxy"),
    Workload::Deployment("coredns"),
];

impl Workload {
    fn is(&self, o: &Object) -> bool {
        match (self, o) {
            (Workload::DaemonSet(n), Object::DaemonSet(_))
            | (Workload::Deployment(n), Object::Deployment(_)) => o.name() == *n,
            _ => false,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Workload::DaemonSet(n) | Workload::Deployment(n) => n,
        }
    }
}

/// The target's self-hosted objects, from this host's files.
fn target_objects(seq: &Seq<'_>) -> anyhow::Result<Vec<Object>> {
    let files = bootstrap::objects::PlaneFiles::read(&crate::host::NodeHost, &seq.spec)?;
    Ok(bootstrap::objects::self_hosted_objects(&seq.spec, &files)?)
}

async fn check_cluster(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    run.converge(UpgradeStep::CheckCluster, || async {
        let paths = &seq.ctx.paths;
        let made = seq.plan.lock().unwrap_or_else(|e| e.into_inner()).take();
        let plan = match made {
            Some(p) => p,
            None => super::plan(paths, &seq.ctx.bundle_dir).await?,
        };
        let resuming = UpgradeRecord::read(paths)?.is_some_and(|r| r.resumes(&seq.ctx.bundle_dir));
        let failed: Vec<&super::Check> = plan
            .checks
            .iter()
            .filter(|c| !c.ok && (!resuming || c.name == "bundle"))
            .collect();
        if let Some(worst) = failed.iter().map(|c| c.refusal).min_by_key(|r| match r {
            super::Refusal::Input => 0,
            super::Refusal::State => 1,
        }) {
            return Err(UpgradeRefused {
                reason: failed
                    .iter()
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect::<Vec<_>>()
                    .join("; "),
                refusal: worst,
            }
            .into());
        }
        if !resuming && !seq.ctx.quiet {
            eprintln!(
                "[upgrade] {} to {} ({}), bundle {}",
                plan.current,
                plan.target,
                plan.change,
                seq.ctx.bundle_dir.display()
            );
        }
        *seq.plan.lock().unwrap_or_else(|e| e.into_inner()) = Some(plan);
        Ok(false)
    })
    .await
}

async fn record_upgrade(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let paths = &seq.ctx.paths;
    run.converge(UpgradeStep::RecordUpgrade, || async {
        if UpgradeRecord::read(paths)?.is_some_and(|r| r.resumes(&seq.ctx.bundle_dir)) {
            return Ok(false);
        }
        let from = seq
            .plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.current.clone())
            .context("check_cluster made no plan")?;
        let to = seq.target.versions().kubernetes.clone();
        UpgradeRecord {
            from,
            snapshot: paths.upgrade_dir().join(format!("etcd-before-{to}.db")),
            to,
            from_bundle: seq.host.bundle.root().to_path_buf(),
            to_bundle: seq.ctx.bundle_dir.clone(),
            started: crate::status::now_unix(),
            finished: None,
            rollback_started: None,
            rolled_back: None,
        }
        .write(paths)?;
        Ok(true)
    })
    .await
}

async fn snapshot_etcd(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let paths = &seq.ctx.paths;
    let record = UpgradeRecord::read(paths)?.context("no upgrade record")?;
    let file = record.snapshot.clone();
    run.step(
        UpgradeStep::SnapshotEtcd,
        Duration::from_secs(5 * 60),
        || {
            let file = file.clone();
            async move { Ok(file.exists() && etcd_mgr::snapshot::verify_file(&file).is_ok()) }
        },
        || async {
            let cfg = crate::etcd::config(paths);
            let info = etcd_mgr::snapshot::save(&cfg, &file).await?;
            run.say(
                UpgradeStep::SnapshotEtcd,
                &format!("{} ({} bytes)", file.display(), info.bytes),
            );
            Ok(())
        },
    )
    .await
}

/// `upgrade_etcd`: this host's member on the target's image.
/// This host's etcd member to the bundle's etcd: its static pod on the
/// bundle's image, waited on until the member answers at that version.
/// Going back a minor (a rollback), etcd's own downgrade is enabled first
/// and waited on until the member's storage is at the older minor.
pub(super) async fn etcd_to_target<S: Step>(
    run: &runner::Runner<S>,
    seq: &Seq<'_>,
    step: S,
) -> anyhow::Result<StepReport> {
    let paths = &seq.ctx.paths;
    let want = seq
        .target
        .versions()
        .etcd
        .trim_start_matches('v')
        .to_string();
    let image = seq.spec.images.etcd.clone();
    let at_target = || {
        let (want, image) = (want.clone(), image.clone());
        async move {
            let manifest = std::fs::read_to_string(paths.etcd_manifest()).unwrap_or_default();
            if !manifest.contains(&image) {
                return Ok(false);
            }
            let cfg = crate::etcd::config(paths);
            if !etcd_mgr::maintenance::server_version(&cfg)
                .await
                .is_ok_and(|v| v == want)
            {
                return Ok(false);
            }
            for m in other_members(seq).await? {
                if !member_at(paths, &m, &want).await {
                    return Ok(false);
                }
            }
            Ok(crate::wait::api_answers(&seq.client).await)
        }
    };
    run.step(step, ROLL_DEADLINE, at_target, || async {
        let member = seq
            .host
            .cluster
            .etcd_member
            .clone()
            .context("this host has no etcd member on record")?;
        let manifest = std::fs::read_to_string(paths.etcd_manifest()).unwrap_or_default();
        if !manifest.contains(&image) {
            let cfg = crate::etcd::config(paths);
            let running = etcd_mgr::maintenance::server_version(&cfg).await?;
            if minor_of(&running) > minor_of(&want) {
                let to = format!("{}.{}", major_of(&want), minor_of(&want));
                run.say(
                    step,
                    &format!(
                        "etcd's downgrade to {to} enabled; waiting for its storage to be at {to}"
                    ),
                );
                etcd_mgr::maintenance::enable_downgrade(&cfg, &to).await?;
                crate::wait::until(
                    &format!("etcd's storage version at {to}"),
                    ROLL_DEADLINE,
                    Duration::from_secs(2),
                    || async {
                        let v = etcd_mgr::maintenance::storage_version(&cfg).await?;
                        Ok(v.starts_with(&format!("{to}.")))
                    },
                )
                .await?;
            }
            crate::etcd::write_member_manifest(paths, &seq.spec, &member)?;
        }
        run.say(
            step,
            &format!("waiting for etcd {want} to answer (the kubelet restarts its static pod)"),
        );
        crate::wait::until(
            &format!("this host's etcd member at {want}"),
            ROLL_DEADLINE,
            Duration::from_secs(2),
            || async {
                let cfg = crate::etcd::config(paths);
                Ok(etcd_mgr::maintenance::server_version(&cfg).await? == want)
            },
        )
        .await?;
        // The API servers reconnect to it: the step ends when they serve.
        crate::wait::api_ready(&seq.client, ROLL_DEADLINE).await?;
        // The other members, one at a time, each by its host's agent
        // (`agent::tasks::upgrade`), each waited on before the next.
        let others = other_members(seq).await?;
        if others.is_empty() {
            return Ok(());
        }
        let id = dist::share::bundle_id(&seq.target)?;
        for m in &others {
            if member_at(paths, m, &want).await {
                continue;
            }
            run.say(
                step,
                &format!("etcd member {} to {want}, by its host's agent", m.name),
            );
            crate::share::set_turns(
                &seq.client,
                &crate::share::UpgradeTurns {
                    bundle: id.clone(),
                    etcd: vec![m.name.clone()],
                    hosts: Vec::new(),
                },
            )
            .await?;
            crate::wait::until(
                &format!("etcd member {} at {want}", m.name),
                ROLL_DEADLINE,
                Duration::from_secs(2),
                || async { Ok(member_at(paths, m, &want).await) },
            )
            .await?;
            crate::wait::api_ready(&seq.client, ROLL_DEADLINE).await?;
        }
        crate::share::set_turns(
            &seq.client,
            &crate::share::UpgradeTurns {
                bundle: id,
                ..Default::default()
            },
        )
        .await
    })
    .await
}

/// The voting etcd members of the other control-plane hosts.
async fn other_members(seq: &Seq<'_>) -> anyhow::Result<Vec<etcd_mgr::members::MemberStatus>> {
    let me = seq.spec.node_name.as_str();
    Ok(etcd_mgr::members(&crate::etcd::cluster_config(
        &seq.ctx.paths,
        Duration::from_secs(5),
    ))
    .await?
    .into_iter()
    .filter(|m| !m.is_learner && m.name != me)
    .collect())
}

/// Whether member `m` answers at etcd `version`.
async fn member_at(paths: &HostPaths, m: &etcd_mgr::members::MemberStatus, version: &str) -> bool {
    let cfg = crate::etcd::member_config(paths, &m.client_urls);
    etcd_mgr::maintenance::server_version(&cfg)
        .await
        .is_ok_and(|v| v == version)
}

/// `stage_bundle`: the target bundle onto every other host (`upgrade
/// stage`, run as part of this), so that each host's agent moves onto it
/// when its turn comes. Nothing to do on a cluster of this host alone.
async fn stage_bundle(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let staged = || async {
        let id = dist::share::bundle_id(&seq.target)?;
        let nodes = Api::<Node>::all(seq.client.clone())
            .list(&ListParams::default())
            .await
            .context("listing the Nodes")?
            .items;
        Ok(nodes.len() <= 1
            || nodes.iter().all(|n| {
                n.metadata.name.as_deref() == Some(seq.spec.node_name.as_str())
                    || crate::share::held(n) == Some(id.as_str())
            }))
    };
    run.step(UpgradeStep::StageBundle, STAGE_DEADLINE, staged, || async {
        super::stage::run(&super::stage::StageContext {
            paths: seq.ctx.paths.clone(),
            bundle_dir: seq.ctx.bundle_dir.clone(),
            timeout: STAGE_DEADLINE,
            quiet: seq.ctx.quiet,
        })
        .await
        .map(|_| ())
    })
    .await
}

/// How long the other hosts have to fetch the bundle.
const STAGE_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// `3` of `3.6.17`.
fn major_of(v: &str) -> u32 {
    v.split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// `6` of `3.6.17`.
fn minor_of(v: &str) -> u32 {
    v.split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// The first container's image of a pod template.
fn template_image(t: &k8s_openapi::api::core::v1::PodTemplateSpec) -> Option<&str> {
    t.spec.as_ref()?.containers.first()?.image.as_deref()
}

/// Whether `w` runs the target's image on every pod, all updated and ready.
async fn rolled(client: &kube::Client, w: Workload, image: &str) -> anyhow::Result<bool> {
    let ns = bootstrap::objects::NAMESPACE;
    Ok(match w {
        Workload::DaemonSet(name) => {
            let ds = Api::<DaemonSet>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .with_context(|| format!("reading DaemonSet {ns}/{name}"))?;
            let st = ds.status.clone().unwrap_or_default();
            template_image(&ds.spec.template) == Some(image)
                && st.observed_generation >= ds.metadata.generation
                && st.updated_number_scheduled == Some(st.desired_number_scheduled)
                && st.number_available == Some(st.desired_number_scheduled)
                && st.number_unavailable.unwrap_or(0) == 0
                && st.current_number_scheduled == st.desired_number_scheduled
        }
        Workload::Deployment(name) => {
            let d = Api::<Deployment>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .with_context(|| format!("reading Deployment {ns}/{name}"))?;
            let spec = &d.spec;
            let want = spec.replicas.unwrap_or(1);
            let st = d.status.clone().unwrap_or_default();
            template_image(&spec.template) == Some(image)
                && st.observed_generation >= d.metadata.generation
                && st.updated_replicas == Some(want)
                && st.ready_replicas == Some(want)
                && st.replicas == Some(want)
        }
    })
}

/// One workload to the target: applied, then waited on until rolled.
pub(super) async fn roll<S: Step>(
    run: &runner::Runner<S>,
    seq: &Seq<'_>,
    step: S,
    w: Workload,
) -> anyhow::Result<StepReport> {
    let objects = target_objects(seq)?;
    let obj = objects
        .into_iter()
        .find(|o| w.is(o))
        .with_context(|| format!("the target bundle renders no {}", w.name()))?;
    let image = match &obj {
        Object::DaemonSet(ds) => template_image(&ds.spec.template),
        Object::Deployment(d) => template_image(&d.spec.template),
        _ => None,
    }
    .map(str::to_string)
    .with_context(|| format!("{} has no image", w.name()))?;
    let client = &seq.client;
    run.step(
        step,
        ROLL_DEADLINE,
        // An API that does not answer yet (etcd or an API server just
        // restarted) reads as "not rolled": the apply waits for it.
        || async { Ok(rolled(client, w, &image).await.unwrap_or(false)) },
        || async {
            apply_when_the_api_answers(client, std::slice::from_ref(&obj)).await?;
            run.say(
                step,
                &format!("waiting for every {} pod on {image}", w.name()),
            );
            crate::wait::until(
                &format!("{} rolled to {image}", w.name()),
                ROLL_DEADLINE,
                Duration::from_secs(2),
                || rolled(client, w, &image),
            )
            .await
        },
    )
    .await
}

pub(super) async fn apply_cluster_objects<S: Step>(
    run: &runner::Runner<S>,
    seq: &Seq<'_>,
    step: S,
) -> anyhow::Result<StepReport> {
    run.converge(step, || async {
        let rest: Vec<Object> = target_objects(seq)?
            .into_iter()
            .filter(|o| !ROLLED.iter().any(|w| w.is(o)))
            .collect();
        apply_when_the_api_answers(&seq.client, &rest).await
    })
    .await
}

/// Server-side apply of `objects`, retried while the API does not answer
/// (a step after one that restarted etcd or an API server); whether any
/// object changed.
async fn apply_when_the_api_answers(
    client: &kube::Client,
    objects: &[Object],
) -> anyhow::Result<bool> {
    let changed = std::sync::atomic::AtomicBool::new(false);
    crate::wait::until(
        "the API server to take the target's objects",
        Duration::from_secs(3 * 60),
        Duration::from_secs(2),
        || async {
            let applied = bootstrap::objects::apply_all(
                client.clone(),
                objects,
                bootstrap::objects::FIELD_MANAGER,
            )
            .await?;
            if applied
                .iter()
                .any(|a| a.outcome != bootstrap::objects::ApplyOutcome::Unchanged)
            {
                changed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(true)
        },
    )
    .await?;
    Ok(changed.into_inner())
}

/// Whether this host runs the target bundle: the agent on it, its kubelet
/// ready and the Node reporting the target's kubelet version.
async fn host_at_target(seq: &Seq<'_>) -> anyhow::Result<bool> {
    let paths = &seq.ctx.paths;
    let Some(status) = crate::control::read_status(paths)? else {
        return Ok(false);
    };
    let kubelet = crate::control::Component::Kubelet.as_str();
    if status.bundle != seq.ctx.bundle_dir
        || !crate::control::component_ready(paths, kubelet, kubelet).unwrap_or(false)
    {
        return Ok(false);
    }
    let node = crate::control::NodeIdentity::read(&paths.node_identity_file())?
        .context("this host has no node identity (var/lib/selfnode/node.json)")?;
    let n = Api::<Node>::all(seq.client.clone())
        .get(&node.node_name)
        .await
        .with_context(|| format!("reading Node {}", node.node_name))?;
    Ok(n.status
        .and_then(|s| s.node_info)
        .is_some_and(|i| i.kubelet_version == seq.target.versions().kubernetes))
}

/// This host to the bundle: recorded (`control::HostBundle`), the agent
/// started again on it in place, waited on until the Node reports its
/// kubelet's version.
pub(super) async fn host_to_target<S: Step>(
    run: &runner::Runner<S>,
    seq: &Seq<'_>,
    step: S,
) -> anyhow::Result<StepReport> {
    run.step(
        step,
        ROLL_DEADLINE,
        || async { Ok(host_at_target(seq).await.unwrap_or(false)) },
        || this_host_to_target(run, seq, step),
    )
    .await
}

/// What [`host_to_target`] does when this host is not at the target yet.
async fn this_host_to_target<S: Step>(
    run: &runner::Runner<S>,
    seq: &Seq<'_>,
    step: S,
) -> anyhow::Result<()> {
    let paths = &seq.ctx.paths;
    crate::control::HostBundle::write(paths, &seq.ctx.bundle_dir)
        .context("recording the bundle this host runs")?;
    let status = crate::control::read_status(paths)?;
    if status.is_none_or(|s| s.bundle != seq.ctx.bundle_dir) {
        crate::control::RunningAgent::require(paths)?.restart()?;
        run.say(
            step,
            "the agent starts again on the bundle: kubelet and containerd; containers keep running",
        );
    }
    crate::wait::until(
        "this host's agent, kubelet and Node on the bundle",
        ROLL_DEADLINE,
        Duration::from_secs(2),
        || host_at_target(seq),
    )
    .await
}

/// The other nodes' names, sorted.
async fn other_nodes(seq: &Seq<'_>) -> anyhow::Result<Vec<Node>> {
    let mut nodes: Vec<Node> = Api::<Node>::all(seq.client.clone())
        .list(&ListParams::default())
        .await
        .context("listing the Nodes")?
        .items
        .into_iter()
        .filter(|n| n.metadata.name.as_deref() != Some(seq.spec.node_name.as_str()))
        .collect();
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(nodes)
}

/// Whether Node `n` is Ready with the target's kubelet.
fn node_at_target(seq: &Seq<'_>, n: &Node) -> bool {
    let st = n.status.as_ref();
    let ready = st
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready
        && st
            .and_then(|s| s.node_info.as_ref())
            .is_some_and(|i| i.kubelet_version == seq.target.versions().kubernetes)
}

/// `upgrade_hosts`: every other host, one at a time, by its agent
/// (`agent::tasks::upgrade`: the fetched bundle recorded, the agent started
/// again in place on it), each waited on until its Node is Ready with the
/// new kubelet; then this host ([`host_to_target`]). Last, so that no
/// kubelet is newer than an API server.
async fn hosts_to_target(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let step = UpgradeStep::UpgradeHosts;
    let all_at_target = || async {
        let others = other_nodes(seq).await?;
        Ok(others.iter().all(|n| node_at_target(seq, n)) && host_at_target(seq).await?)
    };
    // Every host may take as long as one host's move.
    let deadline = ROLL_DEADLINE * (1 + other_nodes(seq).await?.len() as u32);
    run.step(step, deadline, all_at_target, || async {
        let id = dist::share::bundle_id(&seq.target)?;
        for n in other_nodes(seq).await? {
            let name = n.metadata.name.clone().unwrap_or_default();
            if node_at_target(seq, &n) {
                continue;
            }
            run.say(
                step,
                &format!("host {name} to the bundle, by its agent (kubelet, containerd; containers keep running)"),
            );
            crate::share::set_turns(
                &seq.client,
                &crate::share::UpgradeTurns {
                    bundle: id.clone(),
                    etcd: Vec::new(),
                    hosts: vec![name.clone()],
                },
            )
            .await?;
            crate::wait::until(
                &format!("Node {name} Ready with kubelet {}", seq.target.versions().kubernetes),
                ROLL_DEADLINE,
                Duration::from_secs(2),
                || async {
                    let n = Api::<Node>::all(seq.client.clone())
                        .get(&name)
                        .await
                        .with_context(|| format!("reading Node {name}"))?;
                    Ok(node_at_target(seq, &n))
                },
            )
            .await?;
        }
        if !host_at_target(seq).await.unwrap_or(false) {
            this_host_to_target(run, seq, step).await?;
        }
        Ok(())
    })
    .await
}

async fn finish_upgrade(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let paths = &seq.ctx.paths;
    run.converge(UpgradeStep::FinishUpgrade, || async {
        // No agent follows this upgrade any more.
        crate::share::clear_turns(&seq.client).await?;
        let mut record = UpgradeRecord::read(paths)?.context("no upgrade record")?;
        if record.finished.is_some() {
            return Ok(false);
        }
        record.finished = Some(crate::status::now_unix());
        record.write(paths)?;
        Ok(true)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rolled_workload_has_its_step_and_the_rest_is_applied_once() {
        let names: Vec<&str> = ROLLED.iter().map(Workload::name).collect();
        assert_eq!(
            names,
            [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kube-proxy",
                "coredns"
            ]
        );
        let order: Vec<&str> = UpgradeStep::ALL.iter().map(|s| s.name()).collect();
        let at = |n: &str| order.iter().position(|s| *s == n).unwrap();
        // The skew policy's order: etcd, API servers, controller-managers,
        // schedulers, the node components, the kubelet last.
        assert!(at("snapshot_etcd") < at("upgrade_etcd"));
        assert!(at("upgrade_etcd") < at("upgrade_apiservers"));
        assert!(at("upgrade_apiservers") < at("upgrade_controller_managers"));
        assert!(at("upgrade_controller_managers") < at("upgrade_schedulers"));
        assert!(at("upgrade_schedulers") < at("upgrade_kube_proxy"));
        assert!(at("upgrade_kube_proxy") < at("upgrade_hosts"));
        assert!(at("import_images") < at("stage_bundle"));
        assert!(at("stage_bundle") < at("upgrade_etcd"));
    }

    #[test]
    fn a_record_resumes_only_its_own_unfinished_upgrade() {
        let r = UpgradeRecord {
            from: "v1.36.3".into(),
            to: "v1.37.2".into(),
            from_bundle: "/b/old".into(),
            to_bundle: "/b/new".into(),
            snapshot: "/s".into(),
            started: 1,
            finished: None,
            rollback_started: None,
            rolled_back: None,
        };
        assert!(r.resumes(Path::new("/b/new")));
        assert!(!r.resumes(Path::new("/b/other")));
        let done = UpgradeRecord {
            finished: Some(2),
            ..r
        };
        assert!(!done.resumes(Path::new("/b/new")));
    }
}
