//! `selfnode init` and `selfnode etcd snapshot restore`: the first node of
//! a cluster, from a plain host to a pivoted, self-hosted control plane.
//!
//! [`run`] validates everything it can from the input alone, then asks
//! [`plan::plan`] which steps to take and runs them on the uniform runner
//! (`sequences::runner`). The steps' bodies live by concern: the host's
//! identity and keys (`prepare`), the temporary plane (`temp_plane`), etcd's
//! pivot (`etcd_pivot`), the pivot itself (`pivot`) and the waits for
//! readiness (`ready`). Before `commit_pivot` the temporary plane is
//! authoritative on resume; after it the self-hosted one is, and the plan
//! skips the temporary steps.

mod etcd_pivot;
mod pivot;
pub mod plan;
mod prepare;
pub(crate) mod ready;
pub(crate) mod restore;
mod temp_plane;
mod token;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use bootstrap::config::InitSettings;
use bootstrap::plane::PlaneSpec;

use crate::checkpoint::Checkpoint;
use crate::cluster::ClusterRole;
use crate::control::RunningAgent;
use crate::paths::HostPaths;
use crate::sequences::runner::{self, StepReport};
pub use plan::{InitStep, Sequence};
pub use restore::{RestoreConflict, RestoreInputError, RestoreSource};

/// The runner of init's steps.
pub(crate) type Runner = runner::Runner<InitStep>;

/// What `init` (or a restore) reports when it is done; `-o json` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitSummary {
    pub cluster_name: String,
    pub node_name: String,
    pub advertise_address: IpAddr,
    pub admin_kubeconfig: PathBuf,
    pub api_endpoint: String,
    /// `sha256:<hex>` of the cluster CA's public key: the join pin.
    pub ca_cert_hash: String,
    /// What `selfnode join` takes on the next host (holds a token valid
    /// for a day, made by init).
    pub join_string: String,
    pub seconds: f64,
    /// One entry per planned step, skipped ones included, in plan order.
    pub steps: Vec<StepReport>,
}

/// Everything a sequence runs with, validated.
pub struct InitContext {
    pub paths: HostPaths,
    pub settings: InitSettings,
    pub bundle: dist::bundle::Bundle,
    /// No progress lines (`-o json`).
    pub quiet: bool,
    /// `selfnode etcd snapshot restore`: the cluster starts from a snapshot.
    pub restore: Option<RestoreSource>,
}

impl InitContext {
    /// Reads the config file (if any), merges the flags over it and
    /// validates the result, and opens the bundle: everything from the
    /// input alone, before anything is written.
    pub fn from_input(
        paths: &HostPaths,
        config: Option<&Path>,
        flags: &bootstrap::config::InitFlags,
        quiet: bool,
        restore: Option<RestoreSource>,
    ) -> anyhow::Result<InitContext> {
        let file = match config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                Some(bootstrap::config::parse_file(path, &text)?)
            }
            None => None,
        };
        let settings = bootstrap::config::resolve(file, flags, &crate::cluster::host_identity()?)?;
        let bundle_dir = settings
            .bundle
            .clone()
            .unwrap_or_else(|| paths.default_bundle());
        let bundle = dist::bundle::Bundle::open(&bundle_dir)?;
        Ok(InitContext {
            paths: paths.clone(),
            settings,
            bundle,
            quiet,
            restore,
        })
    }

    fn sequence(&self) -> Sequence {
        match &self.restore {
            Some(src) if src.recover => Sequence::Recover {
                pki: src.pki.is_some(),
            },
            Some(src) => Sequence::Restore {
                pki: src.pki.is_some(),
            },
            None => Sequence::Init,
        }
    }
}

/// Refuses a host that already belongs to another cluster, before anything
/// is written. Exit code 3 (conflict).
#[derive(Debug, thiserror::Error)]
#[error("this host already belongs to cluster {existing:?} (node {node:?}, as {role}, uid {uid}); run 'selfnode reset' first to leave it{}", if role.joined() { String::new() } else { format!(", or init with --cluster-name {existing} --node-name {node}") })]
pub struct InitConflict {
    pub existing: String,
    pub node: String,
    pub role: ClusterRole,
    pub uid: String,
}

/// What the steps share while a sequence runs. Lanes of a phase run
/// concurrently on one task and share it by reference.
pub(crate) struct Seq<'a> {
    pub ctx: &'a InitContext,
    pub paths: &'a HostPaths,
    pub spec: PlaneSpec,
    /// The running agent, for SIGHUP after a service file changes.
    pub agent: RunningAgent,
    /// The cluster CA's pin, once `ensure_pki` has computed it.
    pub ca_hash: std::sync::Mutex<String>,
    client: tokio::sync::OnceCell<kube::Client>,
}

impl Seq<'_> {
    /// The checkpoint, opened for one step's reads and writes and closed
    /// with it: a sequence that waits (a repeated init waits for the
    /// self-hosted pods) never keeps the agent's tasks from it.
    pub fn checkpoint(&self) -> Result<Checkpoint, crate::checkpoint::CheckpointError> {
        Checkpoint::open(&self.paths.checkpoint_dir())
    }

    /// The API client (super-admin, through the node-local balancer);
    /// made on first use, after `ensure_pki` wrote its kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = self.spec.kubeconfig_dir.join("super-admin.conf");
        self.client
            .get_or_try_init(|| crate::cluster::kube_client(&kc))
            .await
            .cloned()
    }

    /// The temporary and the self-hosted kube-apiserver on this node.
    pub fn apiservers(&self) -> (SocketAddr, SocketAddr) {
        let s = &self.spec;
        (
            SocketAddr::new(s.advertise_address, s.ports.temp_apiserver),
            SocketAddr::new(s.advertise_address, s.ports.apiserver),
        )
    }
}

/// Runs `init` (or a restore) to the end: checks the input and the host,
/// plans, runs the plan. Every check that needs only the input happens
/// before the first write.
pub async fn run(ctx: InitContext) -> anyhow::Result<InitSummary> {
    let paths = &ctx.paths;
    let spec = crate::cluster::plane_spec(
        paths,
        &ctx.settings,
        &ctx.bundle,
        crate::control::api_lb_port(paths),
    );
    spec.validate()?;
    if let Some(src) = &ctx.restore {
        restore::check_restore_inputs(src, &ctx.bundle, &paths.pki_dir())?;
    }
    let agent = RunningAgent::require(paths)?;
    let checkpoint = Checkpoint::open(&paths.checkpoint_dir())?;
    let clear_for_restore = check_host_belongs(&ctx, &checkpoint)?;
    let pivoted = checkpoint.pivot_committed()?;
    drop(checkpoint);
    if let Some(src) = ctx.restore.as_ref().filter(|s| !s.discard_other_members) {
        // A restore beside a cluster other hosts still serve would start a
        // second one (split brain): refused before anything is written.
        let others = crate::sequences::others::others_serving(
            paths,
            ctx.settings.advertise_address,
            &ctx.settings.node_name,
        )
        .await;
        if !others.is_empty() {
            return Err(crate::sequences::others::OthersServe {
                command: if src.recover {
                    "recover --from-snapshot"
                } else {
                    "etcd snapshot restore"
                },
                others,
            }
            .into());
        }
    }

    let observed = plan::Observed {
        pivoted,
        clear_for_restore,
    };
    let plan = plan::plan(ctx.sequence(), observed);
    let run = Runner::new(&plan, ctx.quiet);
    let seq = Seq {
        ctx: &ctx,
        paths,
        spec,
        agent,
        ca_hash: std::sync::Mutex::new(String::new()),
        client: tokio::sync::OnceCell::new(),
    };
    let reports = runner::run_plan(&plan, &run, |step| execute(step, &run, &seq)).await?;

    let mut ca_hash = seq.ca_hash.lock().map(|h| h.clone()).unwrap_or_default();
    let api_ca = seq.spec.pki_dir.join("ca.crt");
    if ca_hash.is_empty() {
        ca_hash = bootstrap::pki::ca_cert_hash(&std::fs::read(&api_ca)?)?;
    }
    let (_, self_api) = seq.apiservers();
    let join_string = token::init_join_string(&seq).await?;
    Ok(InitSummary {
        cluster_name: ctx.settings.cluster_name.clone(),
        node_name: ctx.settings.node_name.clone(),
        advertise_address: ctx.settings.advertise_address,
        admin_kubeconfig: seq.spec.kubeconfig_dir.join("admin.conf"),
        api_endpoint: format!("https://{self_api}"),
        ca_cert_hash: ca_hash,
        join_string,
        seconds: run.elapsed().as_secs_f64(),
        steps: reports,
    })
}

/// One step's body: where each step lives. A closed match, so a new
/// [`InitStep`] does not compile until it has one.
async fn execute(step: InitStep, run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    match step {
        InitStep::PointLbAtTempApiserver => restore::point_lb_at_temp_apiserver(run, seq).await,
        InitStep::StopEtcdMember => restore::stop_etcd_member(run, seq).await,
        InitStep::MoveEtcdDataAside => restore::move_etcd_data_aside(run, seq).await,
        InitStep::BeginRestore => restore::begin_restore(run, seq).await,
        InitStep::RecordClusterIdentity => prepare::record_cluster_identity(run, seq).await,
        InitStep::RestorePki => prepare::restore_pki(run, seq).await,
        InitStep::EnsurePki => prepare::ensure_pki(run, seq).await,
        InitStep::EnsureEncryptionConfig => prepare::ensure_encryption_config(run, seq).await,
        InitStep::WriteNodeIdentity => prepare::write_node_identity(run, seq).await,
        InitStep::RestoreEtcdData => etcd_pivot::restore_etcd_data(run, seq).await,
        InitStep::StartTempEtcd
        | InitStep::StartTempApiserver
        | InitStep::StartTempControllerManager
        | InitStep::StartTempScheduler => temp_plane::start(step, run, seq).await,
        InitStep::WriteLbBackends => temp_plane::write_lb_backends(run, seq).await,
        InitStep::RegisterControlPlaneNode => ready::register_control_plane_node(run, seq).await,
        InitStep::AddEtcdLearner => etcd_pivot::add_etcd_learner(run, seq).await,
        InitStep::StartSelfHostedEtcd => etcd_pivot::start_self_hosted_etcd(run, seq).await,
        InitStep::PromoteEtcdMember => etcd_pivot::promote_etcd_member(run, seq).await,
        InitStep::AddSelfHostedToLb => temp_plane::add_self_hosted_to_lb(run, seq).await,
        InitStep::ApplySelfHostedObjects => pivot::apply_self_hosted_objects(run, seq).await,
        InitStep::WaitSelfHostedReady => ready::wait_self_hosted_ready(run, seq).await,
        InitStep::CommitPivot => pivot::commit_pivot(run, seq).await,
        InitStep::StopTempPlane => temp_plane::stop_temp_plane(run, seq).await,
        InitStep::PointLbAtSelfHosted => temp_plane::point_lb_at_self_hosted(run, seq).await,
        InitStep::WaitClusterReady => ready::wait_cluster_ready(run, seq).await,
        InitStep::CreateJoinToken => token::create_join_token(run, seq).await,
    }
}

/// A host that belongs to another cluster is refused; a restore over the
/// cluster this host runs needs `--force`, and then takes its etcd out of
/// the way first: `Ok(true)`. A host that joined a cluster is refused too.
fn check_host_belongs(ctx: &InitContext, checkpoint: &Checkpoint) -> anyhow::Result<bool> {
    let Some(id) = checkpoint.cluster_identity()? else {
        return Ok(false);
    };
    let same = id.cluster_name == ctx.settings.cluster_name
        && id.node_name == ctx.settings.node_name
        && !id.role.joined();
    // A restore resumes an unfinished restore; over a running cluster
    // (pivoted, or an init) it needs --force.
    let restoring = id.role == ClusterRole::Restore && !checkpoint.pivot_committed()?;
    if let (Some(src), false) = (&ctx.restore, restoring) {
        if !src.force {
            return Err(RestoreConflict {
                existing: id.cluster_name,
                node: id.node_name,
                pki_dir: ctx.paths.pki_dir(),
            }
            .into());
        }
        if same {
            return Ok(true);
        }
    }
    if !same {
        return Err(InitConflict {
            existing: id.cluster_name,
            node: id.node_name,
            role: id.role,
            uid: id.cluster_uid,
        }
        .into());
    }
    Ok(false)
}
