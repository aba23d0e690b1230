//! `selfnode join`: a host joins a running cluster as a node, as `kubeadm
//! join` does, on its own plan ([`plan`]) over the sequences' runner:
//!
//! 1. `discover_cluster`: reads `kube-public/cluster-info` anonymously
//!    (TLS not verified yet: nothing is trusted from it until checked),
//!    checks the bootstrap signer's signature for the join string's token
//!    and the CA against the string's pin, then reads the cluster's settings
//!    (`kube-system/selfnode-cluster`) with the token over TLS verified with
//!    that CA. Writes nothing.
//! 2. `record_cluster_identity`: the host belongs to this cluster from now
//!    on (refused if it belongs to another one; an interrupted join resumes,
//!    it never inits).
//! 3. `write_node_identity`, `write_bootstrap_kubeconfig`: the kubelet's
//!    name, address and cluster DNS; the CA, the bootstrap kubeconfig (the
//!    token) and the node-local balancer's API servers. The agent restarts
//!    the kubelet, which asks for its client certificate (a CSR the
//!    controller-manager approves for bootstrap tokens).
//! 4. `wait_node_registered`, `wait_node_ready`.
//! 5. A control-plane join adds `wait_promoted` and `wait_control_plane`
//!    (`control_plane.rs`): the token proves the intent, a control-plane
//!    host's agent hands over the keys and sets the label.

mod control_plane;
mod discover;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use bootstrap::join::{ClusterInfo, JoinString};
use bootstrap::objects::ClusterSettings;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use tokio::sync::OnceCell;

use crate::checkpoint::{Checkpoint, ClusterIdentity};
use crate::cluster::ClusterRole;
use crate::control::{api_lb_port, balancer_addr, ApiBackends, Keep, NodeIdentity, RunningAgent};
use crate::paths::HostPaths;
use crate::readiness::node_ready;
use crate::sequences::plan::{run_unless, steps, Action, Plan};
use crate::sequences::runner::{self, StepReport};
use crate::wait::until;

steps! {
    /// One step of `selfnode join`.
    pub enum JoinStep {
        /// `cluster-info` read, its signature and CA pin checked, the
        /// cluster's settings read over TLS verified with that CA. Writes
        /// nothing.
        DiscoverCluster => "discover_cluster",
        /// The host belongs to this cluster from now on (refused if it
        /// belongs to another one).
        RecordClusterIdentity => "record_cluster_identity",
        /// The kubelet's name, address and cluster DNS.
        WriteNodeIdentity => "write_node_identity",
        /// The cluster CA, the kubelet's bootstrap kubeconfig (the token)
        /// and the balancer's API servers; the agent restarts the kubelet.
        WriteBootstrapKubeconfig => "write_bootstrap_kubeconfig",
        /// The kubelet has its client certificate (TLS bootstrap) and its
        /// Node exists.
        WaitNodeRegistered => "wait_node_registered",
        /// Control-plane join: a control-plane host's agent, having
        /// approved this host's certificate for a control-plane token,
        /// seals the cluster's keys to this host and labels its Node; this
        /// host's agent takes the keys.
        WaitPromoted => "wait_promoted",
        /// The Node is Ready (the pod network runs on it).
        WaitNodeReady => "wait_node_ready",
        /// Control-plane join: the agent's etcd member is promoted and the
        /// DaemonSet's kube-apiserver is Ready on this node.
        WaitControlPlane => "wait_control_plane",
    }
}

/// The runner of join's steps.
type Runner = runner::Runner<JoinStep>;

/// What the host looked like when the plan was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    /// The host recorded this cluster and its kubelet has its own
    /// credentials (the token is no longer needed).
    pub joined: bool,
    /// As a control-plane node.
    pub control_plane: bool,
}

/// Why a joined host's run skips the steps that need the token.
const JOINED: &str = "the host has joined: its kubelet has its own credentials";

/// `selfnode join`, one lane: discover (writes nothing), then the host
/// records its cluster before it writes anything else, then the kubelet's
/// TLS bootstrap. Every step checks first, so a re-run resumes; once the
/// host has joined, a re-run needs no valid token (it may have expired)
/// and only waits.
///
/// A control-plane join adds wait_promoted after the registration (a
/// control-plane host promotes the node: its keys, then the label, which
/// brings the apiserver DaemonSet's pod and, through the agent, an etcd
/// member) and wait_control_plane at the end.
pub fn plan(observed: Observed) -> Plan<JoinStep> {
    let before = Some(run_unless(observed.joined, JOINED));
    let run = Some(Action::Run);
    let cp = if observed.control_plane { run } else { None };
    Plan::one_lane(
        "join",
        &[
            (JoinStep::DiscoverCluster, before),
            (JoinStep::RecordClusterIdentity, before),
            (JoinStep::WriteNodeIdentity, before),
            (JoinStep::WriteBootstrapKubeconfig, before),
            (JoinStep::WaitNodeRegistered, run),
            (JoinStep::WaitPromoted, cp),
            (JoinStep::WaitNodeReady, run),
            (JoinStep::WaitControlPlane, cp),
        ],
    )
}

/// The validated input of a join.
pub struct JoinContext {
    pub paths: HostPaths,
    pub join: JoinString,
    /// This node's name (a DNS subdomain; default: the lowercased hostname).
    pub node_name: String,
    /// The address the node serves on (default: the host's address on the
    /// route to the cluster's first endpoint).
    pub advertise_address: Option<IpAddr>,
    /// Join as a control-plane node (`--control-plane`, or a join string
    /// ending in `/control-plane`).
    pub control_plane: bool,
    pub quiet: bool,
}

/// What `join` reports; `-o json` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JoinSummary {
    pub cluster_name: String,
    pub node_name: String,
    pub node_ip: IpAddr,
    /// The API servers the node-local balancer forwards to.
    pub api_endpoints: Vec<String>,
    /// Joined as a control-plane node (etcd member and kube-apiserver).
    pub control_plane: bool,
    pub seconds: f64,
    pub steps: Vec<StepReport>,
}

/// This host already belongs to a cluster: exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("this host already belongs to cluster {cluster:?} (node {node:?}, as {role}); nothing was written. Run 'selfnode stop' and 'selfnode reset' first to leave it")]
pub struct JoinConflict {
    pub cluster: String,
    pub node: String,
    pub role: ClusterRole,
}

/// The cluster has a Node of this name already: exit code 3, nothing
/// written.
#[derive(Debug, thiserror::Error)]
#[error("the cluster has a Node named {node:?} already; nothing was written. A join token makes new nodes only: join with another --node-name, or, if that node is gone for good, delete it first ('kubectl delete node {node}' on a control-plane host)")]
pub struct NodeNameTaken {
    pub node: String,
}

/// A control-plane join with a token made without `--control-plane`:
/// exit code 2, nothing written.
#[derive(Debug, thiserror::Error)]
#[error("token {token_id} is not a control-plane token (it cannot label this node a control-plane node); nothing was written. Make one on a control-plane host with 'selfnode token create --control-plane', or join as a worker without --control-plane")]
pub struct NotAControlPlaneToken {
    pub token_id: String,
}

/// What discovery found, shared by the steps after it.
pub(super) struct Found {
    pub info: ClusterInfo,
    pub settings: ClusterSettings,
    /// The endpoints as socket addresses (for the balancer).
    pub endpoints: Vec<SocketAddr>,
    pub node_ip: IpAddr,
}

pub(super) struct Join<'a> {
    pub ctx: &'a JoinContext,
    agent: RunningAgent,
    found: OnceCell<Found>,
}

impl Join<'_> {
    /// The checkpoint, opened for one call (the agent's checkpointer opens
    /// it too; holding it through the join would stall it).
    fn checkpoint(&self) -> anyhow::Result<Checkpoint> {
        Ok(Checkpoint::open(&self.ctx.paths.checkpoint_dir())?)
    }
}

impl Join<'_> {
    fn found(&self) -> anyhow::Result<&Found> {
        self.found
            .get()
            .context("discover_cluster has not run before this step")
    }
}

/// Runs the join to the end (see the module docs).
pub async fn run(ctx: JoinContext) -> anyhow::Result<JoinSummary> {
    let paths = &ctx.paths;
    let agent = RunningAgent::require(paths)?;
    let recorded = Checkpoint::open(&paths.checkpoint_dir())?.cluster_identity()?;
    if let Some(id) = &recorded {
        let same = id.role == ClusterRole::Join
            && id.cluster_uid == ctx.join.ca_hash
            && id.node_name == ctx.node_name;
        if !same {
            return Err(JoinConflict {
                cluster: id.cluster_name.clone(),
                node: id.node_name.clone(),
                role: id.role,
            }
            .into());
        }
    }
    let joined = recorded.is_some() && paths.kubelet_kubeconfig().exists();
    let plan = plan(Observed {
        joined,
        control_plane: ctx.control_plane,
    });
    let run = Runner::new(&plan, ctx.quiet);
    let join = Join {
        ctx: &ctx,
        agent,
        found: OnceCell::new(),
    };
    let reports = runner::run_plan(&plan, &run, |step| execute(step, &run, &join)).await?;
    // A joined host's run skipped discovery: what it recorded says the rest.
    let (cluster_name, node_ip) = match join.found.get() {
        Some(f) => (f.settings.cluster_name.clone(), f.node_ip),
        None => {
            let node = NodeIdentity::read(&paths.node_identity_file())?.context(
                "this host joined but its node identity is gone; 'selfnode reset' and join again",
            )?;
            let cluster = recorded.map(|id| id.cluster_name).unwrap_or_default();
            (cluster, node.node_ip)
        }
    };
    Ok(JoinSummary {
        cluster_name,
        node_name: ctx.node_name.clone(),
        node_ip,
        api_endpoints: ctx.join.endpoints.clone(),
        control_plane: ctx.control_plane,
        seconds: run.elapsed().as_secs_f64(),
        steps: reports,
    })
}

/// One step's body: a closed match over join's own steps.
async fn execute(step: JoinStep, run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    match step {
        JoinStep::DiscoverCluster => discover::discover_cluster(run, join).await,
        JoinStep::RecordClusterIdentity => record_cluster_identity(run, join).await,
        JoinStep::WriteNodeIdentity => write_node_identity(run, join).await,
        JoinStep::WriteBootstrapKubeconfig => write_bootstrap_kubeconfig(run, join).await,
        JoinStep::WaitNodeRegistered => wait_node_registered(run, join).await,
        JoinStep::WaitNodeReady => wait_node_ready(run, join).await,
        JoinStep::WaitPromoted => control_plane::wait_promoted(run, join).await,
        JoinStep::WaitControlPlane => control_plane::wait_control_plane(run, join).await,
    }
}

async fn record_cluster_identity(run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    let found = join.found()?;
    run.step(
        JoinStep::RecordClusterIdentity,
        Duration::from_secs(10),
        || async { Ok(join.checkpoint()?.cluster_identity()?.is_some()) },
        || async {
            let id = ClusterIdentity {
                cluster_name: found.settings.cluster_name.clone(),
                // A joined host knows its cluster by the CA it pinned.
                cluster_uid: join.ctx.join.ca_hash.clone(),
                node_name: join.ctx.node_name.clone(),
                role: ClusterRole::Join,
                created: crate::status::now_unix(),
            };
            Ok(join.checkpoint()?.record_cluster_identity(&id)?)
        },
    )
    .await
}

async fn write_node_identity(run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    let found = join.found()?;
    let file = join.ctx.paths.node_identity_file();
    let node_id = NodeIdentity {
        node_name: join.ctx.node_name.clone(),
        node_ip: found.node_ip,
        cluster_dns: Some(
            found
                .settings
                .cluster_dns
                .parse()
                .context("the cluster's clusterDNS is not an IP address")?,
        ),
        cluster_domain: found.settings.cluster_domain.clone(),
    };
    run.step(
        JoinStep::WriteNodeIdentity,
        Duration::from_secs(10),
        || async { Ok(NodeIdentity::read(&file)?.as_ref() == Some(&node_id)) },
        || async {
            crate::fsutil::write_atomic(&file, &serde_json::to_vec_pretty(&node_id)?, 0o644)?;
            Ok(())
        },
    )
    .await
}

async fn write_bootstrap_kubeconfig(run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    let found = join.found()?;
    let paths = &join.ctx.paths;
    let lb = balancer_addr(found.node_ip, api_lb_port(paths));
    let files = [
        (paths.ca_cert(), found.info.ca_pem.clone(), 0o644),
        (
            paths.bootstrap_kubelet_kubeconfig(),
            bootstrap::join::bootstrap_kubeconfig(
                &format!("https://{lb}"),
                &found.info.ca_pem,
                &join.ctx.join.token,
            )
            .into_bytes(),
            0o600,
        ),
        (
            paths.apiservers_file(),
            ApiBackends::new(found.endpoints.iter().copied())
                .kept(Keep::Join)
                .render("written by selfnode join")
                .into_bytes(),
            0o644,
        ),
    ];
    let report = run
        .step(
            JoinStep::WriteBootstrapKubeconfig,
            Duration::from_secs(10),
            || async {
                // Done once the kubelet has its own credentials, or when the
                // files are as they would be written.
                Ok(paths.kubelet_kubeconfig().exists()
                    || files
                        .iter()
                        .all(|(p, bytes, _)| std::fs::read(p).ok().as_ref() == Some(bytes)))
            },
            || async {
                crate::fsutil::ensure_dir(&paths.pki_dir(), 0o755)?;
                for (path, bytes, mode) in &files {
                    crate::fsutil::write_atomic(path, bytes, *mode)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                Ok(())
            },
        )
        .await?;
    // The balancer reads its list every 250 ms while it has no healthy
    // API server; the kubelet restarted before its port opens would be
    // refused and back off for seconds. So the signal waits (briefly) for
    // the port.
    let deadline = std::time::Instant::now() + LB_OPEN_WAIT;
    while tokio::net::TcpStream::connect(lb).await.is_err() && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Always: a resumed run may follow a kill between the write and the
    // signal.
    join.agent.reload()?;
    Ok(report)
}

/// How long the kubelet's restart waits for the node's balancer to open
/// (it does once one of the join string's API servers answers).
const LB_OPEN_WAIT: Duration = Duration::from_secs(10);

pub(super) async fn node_client(paths: &HostPaths) -> anyhow::Result<Option<kube::Client>> {
    let kc = paths.kubelet_kubeconfig();
    if !kc.exists() {
        return Ok(None);
    }
    Ok(Some(crate::cluster::kube_client(&kc).await?))
}

async fn wait_node_registered(run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    let name = &join.ctx.node_name;
    let paths = &join.ctx.paths;
    run.wait(
        JoinStep::WaitNodeRegistered,
        &format!("the kubelet's client certificate and Node {name}"),
        || async {
            until(
                &format!("the kubelet to bootstrap its credentials and register Node {name} (see {}; on a control-plane host 'kubectl get csr' shows its request)", paths.log_dir().join("kubelet.log").display()),
                Duration::from_secs(180),
                Duration::from_millis(500),
                || async {
                    let Some(client) = node_client(paths).await? else {
                        anyhow::bail!("{} is not written yet", paths.kubelet_kubeconfig().display());
                    };
                    let nodes: Api<Node> = Api::all(client);
                    Ok(nodes.get_opt(name).await?.is_some())
                },
            )
            .await?;
            // The kubelet has its own credentials: the token (valid for
            // hours, able to add nodes) leaves the disk, as with kubeadm.
            match std::fs::remove_file(paths.bootstrap_kubelet_kubeconfig()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e)
                    .with_context(|| format!("removing {}", paths.bootstrap_kubelet_kubeconfig().display())),
                _ => Ok(()),
            }
        },
    )
    .await
}

async fn wait_node_ready(run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    let name = &join.ctx.node_name;
    let paths = &join.ctx.paths;
    // The node's first pods (the pod network's, kube-proxy) need the
    // bundle's images: no registry is asked.
    crate::sequences::bundle_images_imported(run, JoinStep::WaitNodeReady, paths).await?;
    run.wait(
        JoinStep::WaitNodeReady,
        &format!("Node {name} to be Ready"),
        || async {
            until(
                &format!(
                    "Node {name} to be Ready (it needs the pod network's DaemonSet pod on it)"
                ),
                Duration::from_secs(300),
                Duration::from_millis(500),
                || async {
                    let client = node_client(paths)
                        .await?
                        .context("the kubelet's kubeconfig is gone")?;
                    let nodes: Api<Node> = Api::all(client);
                    Ok(nodes.get_opt(name).await?.is_some_and(|n| node_ready(&n)))
                },
            )
            .await
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequences::plan::{Planned, Step as _};

    fn names(
        plan: &Plan<JoinStep>,
        pred: impl Fn(&Planned<JoinStep>) -> bool,
    ) -> Vec<&'static str> {
        plan.steps()
            .filter(|p| pred(p))
            .map(|p| p.step.name())
            .collect()
    }

    #[test]
    fn join_discovers_then_records_the_cluster_before_it_writes_anything() {
        let p = plan(Observed::default());
        assert_eq!(
            names(&p, |s| s.action == Action::Run),
            [
                "discover_cluster",
                "record_cluster_identity",
                "write_node_identity",
                "write_bootstrap_kubeconfig",
                "wait_node_registered",
                "wait_node_ready",
            ]
        );
        assert_eq!(p.sequence, "join");
        let joined = plan(Observed {
            joined: true,
            ..Observed::default()
        });
        assert_eq!(
            names(&joined, |s| s.action == Action::Run),
            ["wait_node_registered", "wait_node_ready"]
        );
    }

    #[test]
    fn a_control_plane_join_labels_after_registering_and_waits_for_its_member() {
        let cp = Observed {
            control_plane: true,
            ..Observed::default()
        };
        let p = plan(cp);
        assert_eq!(
            names(&p, |s| s.action == Action::Run),
            [
                "discover_cluster",
                "record_cluster_identity",
                "write_node_identity",
                "write_bootstrap_kubeconfig",
                "wait_node_registered",
                "wait_promoted",
                "wait_node_ready",
                "wait_control_plane",
            ]
        );
        let numbers: Vec<usize> = p.steps().map(|s| s.number).collect();
        assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
        let rerun = plan(Observed { joined: true, ..cp });
        assert_eq!(
            names(&rerun, |s| s.action == Action::Run),
            [
                "wait_node_registered",
                "wait_promoted",
                "wait_node_ready",
                "wait_control_plane"
            ]
        );
    }
}
