//! `selfnode init` and `selfnode etcd snapshot restore`: the first node of
//! a cluster, from a plain host to a pivoted, self-hosted control plane.
//!
//! [`run`] validates everything it can from the input alone, then asks
//! [`plan::plan`] which steps to take and runs them on the uniform runner
//! ([`steps::Runner`]). The steps' bodies live by concern: the host's
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
pub mod steps;
mod temp_plane;
mod token;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use bootstrap::config::{HostIdentity, InitSettings};
use bootstrap::plane::{PlaneEnv, PlaneImages, PlaneSpec};

use crate::checkpoint::Checkpoint;
use crate::paths::HostPaths;
pub use plan::{Sequence, Step};
pub use restore::{RestoreConflict, RestoreInputError, RestoreSource};
use steps::{Runner, StepReport};
pub(crate) use temp_plane::reload_agent;

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

/// Host facts for the defaults: hostname and interface addresses.
pub fn host_identity() -> anyhow::Result<HostIdentity> {
    let hostname = nix::unistd::gethostname()
        .context("cannot read the hostname")?
        .to_string_lossy()
        .into_owned();
    let mut addresses = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("cannot list network interfaces")? {
        if let Some(addr) = ifa.address {
            if let Some(v4) = addr.as_sockaddr_in() {
                addresses.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                addresses.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    Ok(HostIdentity {
        hostname,
        addresses,
    })
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
        let settings = bootstrap::config::resolve(file, flags, &host_identity()?)?;
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

/// The desired control plane for these settings on this host: every
/// setting is mapped by `PlaneSpec::from_settings`; the host's paths and
/// the bundle's versions and images come in here.
pub fn plane_spec(
    paths: &HostPaths,
    settings: &InitSettings,
    bundle: &dist::bundle::Bundle,
) -> PlaneSpec {
    let v = bundle.versions();
    let images = PlaneImages {
        kube_apiserver: dist::images::kube_image("kube-apiserver", v),
        kube_controller_manager: dist::images::kube_image("kube-controller-manager", v),
        kube_scheduler: dist::images::kube_image("kube-scheduler", v),
        kube_proxy: dist::images::kube_image("kube-proxy", v),
        coredns: dist::images::coredns_image(v),
        etcd: dist::images::etcd_image(v),
        selfnode: dist::images::selfnode_image(),
    };
    PlaneSpec::from_settings(
        settings,
        PlaneEnv {
            kubernetes_version: v.kubernetes.clone(),
            images,
            pki_dir: paths.pki_dir(),
            kubeconfig_dir: paths.kubeconfig_dir(),
            etcd_data_dir: paths.etcd_data_dir(),
            audit_log_dir: paths.audit_log_dir(),
            cni_conf_dir: paths.cni_conf_dir(),
            api_load_balancer_port: agent_api_lb_port(paths),
        },
    )
}

/// The API load balancer port of this host's agent, from the status it
/// publishes; the agent's default when there is none yet (init refuses to
/// run without an agent anyway, after validating its input).
pub(crate) fn agent_api_lb_port(paths: &HostPaths) -> u16 {
    temp_plane::agent_status(paths)
        .ok()
        .and_then(|s| s.api_lb_port)
        .unwrap_or(crate::cli::DEFAULT_API_LB_PORT)
}

/// Refuses a host that already belongs to another cluster, before anything
/// is written. Exit code 3 (conflict).
#[derive(Debug, thiserror::Error)]
#[error("this host already belongs to cluster {existing:?} (node {node:?}, uid {uid}); run 'selfnode reset' first to leave it, or init with --cluster-name {existing}")]
pub struct InitConflict {
    pub existing: String,
    pub node: String,
    pub uid: String,
}

/// What the steps share while a sequence runs. Lanes of a phase run
/// concurrently on one task and share it by reference.
pub(crate) struct Seq<'a> {
    pub ctx: &'a InitContext,
    pub paths: &'a HostPaths,
    pub spec: PlaneSpec,
    pub checkpoint: Checkpoint,
    /// The running agent's pid, for SIGHUP after a service file changes.
    pub agent_pid: String,
    /// The cluster CA's pin, once `ensure_pki` has computed it.
    pub ca_hash: std::sync::Mutex<String>,
    client: tokio::sync::OnceCell<kube::Client>,
}

impl Seq<'_> {
    /// The API client (super-admin, through the node-local balancer);
    /// made on first use, after `ensure_pki` wrote its kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = self.spec.kubeconfig_dir.join("super-admin.conf");
        self.client
            .get_or_try_init(|| kube_client(&kc))
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
    let spec = plane_spec(paths, &ctx.settings, &ctx.bundle);
    spec.validate()?;
    if let Some(src) = &ctx.restore {
        restore::check_restore_inputs(src, &ctx.bundle, &paths.pki_dir())?;
    }
    let agent_pid = crate::agent::lock::running_agent(&paths.agent_lock()).with_context(|| {
        "the selfnode agent is not running on this host; start it first ('selfnode agent', or 'bash scripts/up.sh')".to_string()
    })?;
    let checkpoint = Checkpoint::open(&paths.checkpoint_dir())?;
    check_host_belongs(&ctx, &spec, &checkpoint).await?;

    let observed = plan::Observed {
        pivoted: checkpoint.pivot_committed()?,
        ..plan::Observed::default()
    };
    let plan = plan::plan(ctx.sequence(), observed);
    let run = Runner::new(&plan, ctx.quiet);
    let seq = Seq {
        ctx: &ctx,
        paths,
        spec,
        checkpoint,
        agent_pid,
        ca_hash: std::sync::Mutex::new(String::new()),
        client: tokio::sync::OnceCell::new(),
    };
    let reports = steps::run_plan(&plan, &run, |step| execute(step, &run, &seq)).await?;

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
/// [`Step`] does not compile until it has one.
async fn execute(step: Step, run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    match step {
        Step::RecordClusterIdentity => prepare::record_cluster_identity(run, seq).await,
        Step::RestorePki => prepare::restore_pki(run, seq).await,
        Step::EnsurePki => prepare::ensure_pki(run, seq).await,
        Step::EnsureEncryptionConfig => prepare::ensure_encryption_config(run, seq).await,
        Step::WriteNodeIdentity => prepare::write_node_identity(run, seq).await,
        Step::RestoreEtcdData => etcd_pivot::restore_etcd_data(run, seq).await,
        Step::StartTempEtcd
        | Step::StartTempApiserver
        | Step::StartTempControllerManager
        | Step::StartTempScheduler => temp_plane::start(step, run, seq).await,
        Step::WriteLbBackends => temp_plane::write_lb_backends(run, seq).await,
        Step::RegisterControlPlaneNode => ready::register_control_plane_node(run, seq).await,
        Step::AddEtcdLearner => etcd_pivot::add_etcd_learner(run, seq).await,
        Step::StartSelfHostedEtcd => etcd_pivot::start_self_hosted_etcd(run, seq).await,
        Step::PromoteEtcdMember => etcd_pivot::promote_etcd_member(run, seq).await,
        Step::AddSelfHostedToLb => temp_plane::add_self_hosted_to_lb(run, seq).await,
        Step::ApplySelfHostedObjects => pivot::apply_self_hosted_objects(run, seq).await,
        Step::WaitSelfHostedReady => ready::wait_self_hosted_ready(run, seq).await,
        Step::CommitPivot => pivot::commit_pivot(run, seq).await,
        Step::StopTempPlane => temp_plane::stop_temp_plane(run, seq).await,
        Step::PointLbAtSelfHosted => temp_plane::point_lb_at_self_hosted(run, seq).await,
        Step::WaitClusterReady => ready::wait_cluster_ready(run, seq).await,
        Step::CreateJoinToken => token::create_join_token(run, seq).await,
        Step::DiscoverCluster
        | Step::WriteBootstrapKubeconfig
        | Step::WaitNodeRegistered
        | Step::WaitNodeReady
        | Step::LabelControlPlane
        | Step::WaitControlPlane => anyhow::bail!("{step} is a step of join, not of init"),
    }
}

/// A host that belongs to another cluster is refused; a restore over the
/// cluster this host runs needs `--force`, and then takes its etcd out of
/// the way first.
async fn check_host_belongs(
    ctx: &InitContext,
    spec: &PlaneSpec,
    checkpoint: &Checkpoint,
) -> anyhow::Result<()> {
    let Some(id) = checkpoint.cluster_identity()? else {
        return Ok(());
    };
    let same =
        id.cluster_name == ctx.settings.cluster_name && id.node_name == ctx.settings.node_name;
    // A restore resumes an unfinished restore; over a running cluster
    // (pivoted, or an init) it needs --force.
    let restoring = id.role == "restore" && !checkpoint.pivot_committed()?;
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
            restore::clear_for_restore(&ctx.paths, spec, checkpoint, &id, ctx.quiet).await?;
        }
    }
    if !same {
        return Err(InitConflict {
            existing: id.cluster_name,
            node: id.node_name,
            uid: id.cluster_uid,
        }
        .into());
    }
    Ok(())
}

pub(crate) fn random_uid() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

/// A client from a kubeconfig file (admin.conf, kubelet.conf).
pub(crate) async fn kube_client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}
