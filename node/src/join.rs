//! `selfnode join`: a host joins a running cluster as a node, as `kubeadm
//! join` does, on init's plan and runner (`Sequence::Join`):
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

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context;
use bootstrap::join::{ClusterInfo, JoinString, CLUSTER_INFO, CLUSTER_INFO_NAMESPACE};
use bootstrap::objects::{ClusterSettings, CLUSTER_SETTINGS};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::Api;
use tokio::sync::OnceCell;

use crate::agent::services::NodeIdentity;
use crate::checkpoint::{Checkpoint, ClusterIdentity};
use crate::init::plan::{self, Sequence, Step};
use crate::init::steps::{self, until, Runner, StepReport};
use crate::paths::HostPaths;

/// The DNS name in every API server certificate (kubeadm's too).
const API_SERVER_NAME: &str = "kubernetes";

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
    pub role: String,
}

/// A control-plane join with a token made without `--control-plane`:
/// exit code 2, nothing written.
#[derive(Debug, thiserror::Error)]
#[error("token {token_id} is not a control-plane token (it cannot label this node a control-plane node); nothing was written. Make one on a control-plane host with 'selfnode token create --control-plane', or join as a worker without --control-plane")]
pub struct NotAControlPlaneToken {
    pub token_id: String,
}

/// What discovery found, shared by the steps after it.
struct Found {
    info: ClusterInfo,
    settings: ClusterSettings,
    /// The endpoints as socket addresses (for the balancer).
    endpoints: Vec<SocketAddr>,
    node_ip: IpAddr,
}

struct Join<'a> {
    ctx: &'a JoinContext,
    agent_pid: String,
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
    let agent_pid = crate::agent::lock::running_agent(&paths.agent_lock()).context(
        "the selfnode agent is not running on this host; start it first ('selfnode agent')",
    )?;
    let recorded = Checkpoint::open(&paths.checkpoint_dir())?.cluster_identity()?;
    if let Some(id) = &recorded {
        let same = id.role == "join"
            && id.cluster_uid == ctx.join.ca_hash
            && id.node_name == ctx.node_name;
        if !same {
            return Err(JoinConflict {
                cluster: id.cluster_name.clone(),
                node: id.node_name.clone(),
                role: id.role.clone(),
            }
            .into());
        }
    }
    let joined = recorded.is_some() && paths.kubelet_kubeconfig().exists();
    let plan = plan::plan(
        Sequence::Join,
        plan::Observed {
            joined,
            control_plane: ctx.control_plane,
            ..plan::Observed::default()
        },
    );
    let run = Runner::new(&plan, ctx.quiet);
    let join = Join {
        ctx: &ctx,
        agent_pid,
        found: OnceCell::new(),
    };
    let reports = steps::run_plan(&plan, &run, |step| execute(step, &run, &join)).await?;
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

async fn execute(step: Step, run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    match step {
        Step::DiscoverCluster => discover_cluster(run, join).await,
        Step::RecordClusterIdentity => record_cluster_identity(run, join).await,
        Step::WriteNodeIdentity => write_node_identity(run, join).await,
        Step::WriteBootstrapKubeconfig => write_bootstrap_kubeconfig(run, join).await,
        Step::WaitNodeRegistered => wait_node_registered(run, join).await,
        Step::WaitNodeReady => wait_node_ready(run, join).await,
        Step::LabelControlPlane => label_control_plane(run, join).await,
        Step::WaitControlPlane => wait_control_plane(run, join).await,
        other => anyhow::bail!("{other} is not a step of join"),
    }
}

/// How long an unsigned token is waited for: the bootstrap signer signs a
/// new token within moments; a token it never signs is unknown.
const SIGNATURE_WAIT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn discover_cluster(run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    run.wait(
        Step::DiscoverCluster,
        "the cluster's signed cluster-info",
        || async {
            let js = &join.ctx.join;
            let endpoints = resolve(&js.endpoints)?;
            let started = std::time::Instant::now();
            let (info, via) = loop {
                match fetch_cluster_info(&endpoints).await {
                    Ok((cm, via)) => match bootstrap::join::verify_cluster_info(&cm, js) {
                        Ok(info) => break (info, via),
                        Err(bootstrap::join::JoinError::UnknownToken { .. })
                            if started.elapsed() < SIGNATURE_WAIT =>
                        {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => return Err(e.into()),
                    },
                    Err(e) => return Err(e),
                }
            };
            let settings = read_settings(via, &info, js).await?;
            if join.ctx.control_plane {
                check_control_plane_token(via, &info, js).await?;
            }
            let node_ip = match join.ctx.advertise_address {
                Some(ip) => ip,
                None => local_address_towards(via)?,
            };
            join.found
                .set(Found {
                    info,
                    settings,
                    endpoints,
                    node_ip,
                })
                .map_err(|_| anyhow::anyhow!("discover_cluster ran twice"))?;
            Ok(())
        },
    )
    .await
}

fn resolve(endpoints: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for e in endpoints {
        let addrs = e
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve the API endpoint {e}"))?;
        out.extend(addrs);
    }
    Ok(out)
}

/// `cluster-info` from the first endpoint that answers, with TLS not
/// verified (nothing in it is trusted before `verify_cluster_info`).
async fn fetch_cluster_info(endpoints: &[SocketAddr]) -> anyhow::Result<(ConfigMap, SocketAddr)> {
    let mut errors = Vec::new();
    for addr in endpoints {
        let mut config = kube::Config::new(format!("https://{addr}").parse()?);
        config.accept_invalid_certs = true;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(CONNECT_TIMEOUT);
        let client = kube::Client::try_from(config)?;
        let cms: Api<ConfigMap> = Api::namespaced(client, CLUSTER_INFO_NAMESPACE);
        match cms.get(CLUSTER_INFO).await {
            Ok(cm) => return Ok((cm, *addr)),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    anyhow::bail!(
        "cannot read {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} from any API endpoint of the join string ({}); check that this host reaches the cluster's API servers and that the join string is current",
        errors.join("; ")
    )
}

/// The cluster's settings, read with the token over TLS verified against
/// the pinned CA: proof that the endpoint holds the CA-signed key.
async fn read_settings(
    via: SocketAddr,
    info: &ClusterInfo,
    js: &JoinString,
) -> anyhow::Result<ClusterSettings> {
    let client = token_client(&format!("https://{via}"), info, js)?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    let cm = cms.get(CLUSTER_SETTINGS).await.with_context(|| {
        format!("reading kube-system/{CLUSTER_SETTINGS} from {via} with the token (TLS verified with the cluster CA)")
    })?;
    Ok(ClusterSettings::from_config_map(&cm)?)
}

/// Whether the token carries the control-plane group (a SelfSubjectReview
/// says what the API server authenticated it as): refused before anything
/// is written otherwise.
async fn check_control_plane_token(
    via: SocketAddr,
    info: &ClusterInfo,
    js: &JoinString,
) -> anyhow::Result<()> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let client = token_client(&format!("https://{via}"), info, js)?;
    let reviews: Api<SelfSubjectReview> = Api::all(client);
    let review = reviews
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await
        .context("asking the API server what the token is (SelfSubjectReview)")?;
    let groups = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.groups)
        .unwrap_or_default();
    if groups
        .iter()
        .any(|g| g == bootstrap::join::CONTROL_PLANE_TOKEN_GROUP)
    {
        Ok(())
    } else {
        Err(NotAControlPlaneToken {
            token_id: js.token.id().to_string(),
        }
        .into())
    }
}

fn token_client(server: &str, info: &ClusterInfo, js: &JoinString) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::new(server.parse()?);
    config.root_cert = Some(bootstrap::join::certs_der(&info.ca_pem)?);
    // The name every API server's certificate carries: they share the
    // DaemonSet's one certificate, which names the first control-plane
    // node's address but not the others' (a join string lists them all).
    config.tls_server_name = Some(API_SERVER_NAME.to_string());
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.auth_info.token = Some(js.token.expose().into());
    Ok(kube::Client::try_from(config)?)
}

/// The host's address on the route to `peer` (what the kernel would use as
/// source): a connected UDP socket sends nothing.
fn local_address_towards(peer: SocketAddr) -> anyhow::Result<IpAddr> {
    let bind: SocketAddr = if peer.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let sock = std::net::UdpSocket::bind(bind)?;
    sock.connect(peer)
        .with_context(|| format!("no route from this host to {peer}"))?;
    Ok(sock.local_addr()?.ip())
}

async fn record_cluster_identity(run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    let found = join.found()?;
    run.step(
        Step::RecordClusterIdentity,
        Duration::from_secs(10),
        || async { Ok(join.checkpoint()?.cluster_identity()?.is_some()) },
        || async {
            let id = ClusterIdentity {
                cluster_name: found.settings.cluster_name.clone(),
                // A joined host knows its cluster by the CA it pinned.
                cluster_uid: join.ctx.join.ca_hash.clone(),
                node_name: join.ctx.node_name.clone(),
                role: "join".into(),
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
        Step::WriteNodeIdentity,
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
    let lb_port = crate::init::agent_api_lb_port(paths);
    let loopback: IpAddr = if found.node_ip.is_ipv6() {
        std::net::Ipv6Addr::LOCALHOST.into()
    } else {
        std::net::Ipv4Addr::LOCALHOST.into()
    };
    let files = [
        (paths.ca_cert(), found.info.ca_pem.clone(), 0o644),
        (
            paths.bootstrap_kubelet_kubeconfig(),
            bootstrap::join::bootstrap_kubeconfig(
                &format!("https://{}", SocketAddr::new(loopback, lb_port)),
                &found.info.ca_pem,
                &join.ctx.join.token,
            )
            .into_bytes(),
            0o600,
        ),
        (
            paths.apiservers_file(),
            std::iter::once(
                "# kube-apiservers for the node-local load balancer; written by selfnode join"
                    .to_string(),
            )
            .chain(found.endpoints.iter().map(SocketAddr::to_string))
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes(),
            0o644,
        ),
    ];
    let report = run
        .step(
            Step::WriteBootstrapKubeconfig,
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
    let lb = SocketAddr::new(loopback, lb_port);
    let deadline = std::time::Instant::now() + LB_OPEN_WAIT;
    while tokio::net::TcpStream::connect(lb).await.is_err() && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Always: a resumed run may follow a kill between the write and the
    // signal.
    crate::init::reload_agent(&join.agent_pid)?;
    Ok(report)
}

/// How long the kubelet's restart waits for the node's balancer to open
/// (it does once one of the join string's API servers answers).
const LB_OPEN_WAIT: Duration = Duration::from_secs(10);

async fn node_client(paths: &HostPaths) -> anyhow::Result<Option<kube::Client>> {
    let kc = paths.kubelet_kubeconfig();
    if !kc.exists() {
        return Ok(None);
    }
    Ok(Some(crate::init::kube_client(&kc).await?))
}

async fn wait_node_registered(run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    let name = &join.ctx.node_name;
    let paths = &join.ctx.paths;
    run.wait(
        Step::WaitNodeRegistered,
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
    crate::init::ready::bundle_images_imported(run, Step::WaitNodeReady, paths).await?;
    run.wait(
        Step::WaitNodeReady,
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
                    Ok(nodes
                        .get_opt(name)
                        .await?
                        .is_some_and(|n| crate::init::ready::node_ready(&n)))
                },
            )
            .await
        },
    )
    .await
}

/// The token's client through this node's balancer (the CA the host
/// pinned at discovery is on disk by now).
fn token_client_via_lb(join: &Join<'_>) -> anyhow::Result<kube::Client> {
    let paths = &join.ctx.paths;
    let ca_file = paths.ca_cert();
    let ca_pem =
        std::fs::read(&ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
    let node = NodeIdentity::read(&paths.node_identity_file())?
        .context("the node identity is not written yet")?;
    let loopback: IpAddr = if node.node_ip.is_ipv6() {
        std::net::Ipv6Addr::LOCALHOST.into()
    } else {
        std::net::Ipv4Addr::LOCALHOST.into()
    };
    let server = format!(
        "https://{}",
        SocketAddr::new(loopback, crate::init::agent_api_lb_port(paths))
    );
    let mut config = kube::Config::new(server.parse()?);
    config.root_cert = Some(bootstrap::join::certs_der(&ca_pem)?);
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.auth_info.token = Some(join.ctx.join.token.expose().into());
    Ok(kube::Client::try_from(config)?)
}

/// `label_control_plane`: the control-plane label (and taint, unless the
/// cluster allows workloads on control-plane nodes) on this Node, set with
/// the control-plane token (kubelets may not set node-role labels). Done
/// when the Node carries the label, read with the kubelet's credentials.
async fn label_control_plane(run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    let name = &join.ctx.node_name;
    let paths = &join.ctx.paths;
    run.step(
        Step::LabelControlPlane,
        Duration::from_secs(60),
        || async {
            let client = node_client(paths)
                .await?
                .context("the kubelet's kubeconfig is gone")?;
            crate::agent::checkpointer::is_control_plane_node(&client, name).await
        },
        || async {
            let node = node_client(paths)
                .await?
                .context("the kubelet's kubeconfig is gone")?;
            let cms: Api<ConfigMap> = Api::namespaced(node, "kube-system");
            let settings = ClusterSettings::from_config_map(
                &cms.get(CLUSTER_SETTINGS)
                    .await
                    .with_context(|| format!("reading kube-system/{CLUSTER_SETTINGS}"))?,
            )?;
            bootstrap::objects::mark_control_plane(
                token_client_via_lb(join)?,
                name,
                bootstrap::objects::FIELD_MANAGER,
                !settings.allow_workloads,
            )
            .await
            .map_err(|e| {
                anyhow::Error::new(e).context(format!(
                    "labelling Node {name} a control-plane node with token {} (a token made with 'selfnode token create --control-plane' may)",
                    join.ctx.join.token.id()
                ))
            })?;
            Ok(())
        },
    )
    .await
}

/// `wait_control_plane`: the agent's member controller has promoted this
/// node's etcd member (its identity is in the checkpoint) and the
/// kube-apiserver DaemonSet's pod is Ready here.
async fn wait_control_plane(run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    let name = &join.ctx.node_name;
    let paths = &join.ctx.paths;
    run.wait(
        Step::WaitControlPlane,
        &format!("the etcd member and kube-apiserver of {name}"),
        || async {
            until(
                &format!(
                    "the agent to add and promote this node's etcd member and the kube-apiserver pod on {name} to be Ready (see 'selfnode status' and {})",
                    paths.log_dir().join("agent.log").display()
                ),
                Duration::from_secs(300),
                Duration::from_secs(1),
                || async {
                    let member = Checkpoint::open(&paths.checkpoint_dir())?.etcd_member()?;
                    if member.is_none() {
                        anyhow::bail!("the etcd member is not promoted yet");
                    }
                    let client = node_client(paths)
                        .await?
                        .context("the kubelet's kubeconfig is gone")?;
                    let pods: Api<k8s_openapi::api::core::v1::Pod> =
                        Api::namespaced(client, "kube-system");
                    let list = pods
                        .list(
                            &kube::api::ListParams::default()
                                .labels("k8s-app=kube-apiserver")
                                .fields(&format!("spec.nodeName={name}")),
                        )
                        .await?;
                    Ok(list.items.iter().any(|p| {
                        !crate::agent::checkpointer::is_mirror(p)
                            && crate::init::ready::pod_ready(p)
                    }))
                },
            )
            .await
        },
    )
    .await
}
