//! The network agent: the process the self-hosted `selfnode-network`
//! DaemonSet runs on every node (`selfnode network-agent`).
//!
//! It watches Nodes and, on every change and every [`AgentConfig::resync`],
//! converges this node: forwarding and `br_netfilter` on, host-gateway
//! routes to every other node's pod CIDR ([`crate::routes`]), and — once
//! the controller-manager gave this node a `spec.podCIDR` — the CNI
//! conflist ([`crate::config`]), whose appearance is what makes the
//! kubelet report the node's network ready. A failed pass is retried with
//! capped exponential back-off and jitter.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::time::{sleep_until, Instant};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{
    render_conflist, write_conflist, CniConfig, CniError, DEFAULT_BRIDGE, DEFAULT_CONF_DIR,
};
use crate::kernel::{self, KernelError, ModuleLoad, DEFAULT_MODULES_DIR, DEFAULT_PROC_SYS};
use crate::routes::{
    desired_routes, NodeNetwork, RouteChanges, RouteError, RouteFailure, RoutePlan, RouteTable,
    SkipReason,
};

/// How the agent runs; [`AgentConfig::new`] gives the production defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The whole pod network (the controller-manager's `--cluster-cidr`).
    pub cluster_cidr: IpNet,
    /// See [`CniConfig::bridge`].
    pub bridge: String,
    /// See [`CniConfig::mtu`].
    pub mtu: Option<u32>,
    /// Where the conflist goes (`/etc/cni/net.d`, a hostPath).
    pub conf_dir: PathBuf,
    /// `/proc/sys`.
    pub proc_sys: PathBuf,
    /// `/lib/modules` (the host's, mounted read-only).
    pub modules_dir: PathBuf,
    /// A full pass runs at least this often, even without Node events.
    pub resync: Duration,
    /// First retry delay after a failed pass; doubled per failure.
    pub min_backoff: Duration,
    /// Cap of the retry delay.
    pub max_backoff: Duration,
}

impl AgentConfig {
    /// The production defaults for the pod network `cluster_cidr`: bridge
    /// [`DEFAULT_BRIDGE`], the kernel's MTU, conflist in
    /// [`DEFAULT_CONF_DIR`], `/proc/sys`, `/lib/modules`, a resync every
    /// 30 s and retries after 1 s doubling up to 30 s.
    pub fn new(cluster_cidr: IpNet) -> Self {
        AgentConfig {
            cluster_cidr,
            bridge: DEFAULT_BRIDGE.to_string(),
            mtu: None,
            conf_dir: PathBuf::from(DEFAULT_CONF_DIR),
            proc_sys: PathBuf::from(DEFAULT_PROC_SYS),
            modules_dir: PathBuf::from(DEFAULT_MODULES_DIR),
            resync: Duration::from_secs(30),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }

    fn ipv6(&self) -> bool {
        self.cluster_cidr.addr().is_ipv6()
    }
}

/// After a Node event, wait this long for more before a pass (a node
/// joining updates its object several times in a row).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A whole route reconcile (a dump and one request per change); the kernel
/// answers netlink at once, so this only catches a wedged socket.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the agent for node `node_name` until `cancel` fires. Returns an
/// error only for what no retry can fix (an invalid configuration);
/// everything else is logged and retried.
pub async fn run(
    client: Client,
    node_name: String,
    cfg: AgentConfig,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    crate::config::validate_bridge_name(&cfg.bridge)?;
    if node_name.is_empty() {
        return Err(AgentError::NoNodeName);
    }
    info!(node = %node_name, cluster_cidr = %cfg.cluster_cidr, bridge = %cfg.bridge,
        conf_dir = %cfg.conf_dir.display(), "network agent starting");

    let (reader, writer) = reflector::store::<Node>();
    let nodes = reflector::reflector(
        writer,
        watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff(),
    );
    let mut nodes = std::pin::pin!(nodes);
    let mut agent = Agent::new(node_name, cfg);
    let mut listed = false;
    let mut due: Option<Instant> = None;
    let mut failures: u32 = 0;

    loop {
        let timer = async {
            match due {
                Some(t) => sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => {
                info!("network agent stopping");
                return Ok(());
            }
            event = nodes.next() => {
                let soon = Instant::now() + DEBOUNCE;
                match event {
                    Some(Ok(watcher::Event::InitDone)) => {
                        if !listed {
                            info!(nodes = reader.state().len(), "listed the cluster's nodes");
                        }
                        listed = true;
                        due = Some(due.map_or(soon, |d| if failures == 0 { d.min(soon) } else { d }));
                    }
                    Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) if listed => {
                        if failures == 0 {
                            due = Some(due.map_or(soon, |d| d.min(soon)));
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => warn!(error = %chain(&e), "watching nodes failed; retrying"),
                    None => return Err(AgentError::WatchEnded),
                }
            }
            _ = timer => {
                match agent.pass(&reader).await {
                    Ok(()) => {
                        if failures > 0 {
                            info!(after_failures = failures, "network converged again");
                        }
                        failures = 0;
                        due = Some(Instant::now() + agent.cfg.resync);
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let delay = backoff(&agent.cfg, failures);
                        warn!(error = %chain(&e), retry_in = ?delay, failures,
                            "network pass failed");
                        due = Some(Instant::now() + delay);
                    }
                }
            }
        }
    }
}

/// `min_backoff * 2^(failures-1)`, capped at `max_backoff`, times a
/// jitter factor in [0.8, 1.2).
fn backoff(cfg: &AgentConfig, failures: u32) -> Duration {
    let exp = cfg
        .min_backoff
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    exp.min(cfg.max_backoff)
        .mul_f64(rand::random_range(0.8..1.2))
}

/// `error: cause: cause` — tracing's `%e` shows only the outermost one.
fn chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// The agent's memory between passes: only what keeps the logs quiet
/// when nothing changes, and the netlink connection.
struct Agent {
    node_name: String,
    cfg: AgentConfig,
    table: Option<RouteTable>,
    last_plan: Option<RoutePlan>,
    last_conflicts: Vec<String>,
    last_waiting: Option<&'static str>,
    last_bridge_problem: Option<String>,
}

impl Agent {
    fn new(node_name: String, cfg: AgentConfig) -> Self {
        Agent {
            node_name,
            cfg,
            table: None,
            last_plan: None,
            last_conflicts: Vec::new(),
            last_waiting: None,
            last_bridge_problem: None,
        }
    }

    /// One convergence pass over the Nodes in `store`. Every step runs even
    /// when an earlier one failed; the first failure is returned.
    async fn pass(&mut self, store: &Store<Node>) -> Result<(), AgentError> {
        let nodes: Vec<Arc<Node>> = store.state();
        let mut first_err: Option<AgentError> = None;
        let fail = |e: AgentError, first: &mut Option<AgentError>| {
            if first.is_none() {
                *first = Some(e);
            } else {
                warn!(error = %chain(&e), "network pass step failed");
            }
        };

        if let Err(e) = self.kernel().await {
            fail(e, &mut first_err);
        }
        if let Err(e) = self.masquerade().await {
            fail(e, &mut first_err);
        }

        let networks: Vec<NodeNetwork> = nodes
            .iter()
            .map(|n| node_network(n, self.cfg.ipv6()))
            .collect();
        let plan = desired_routes(&self.node_name, self.cfg.cluster_cidr, &networks);
        self.log_plan(&plan);
        if let Err(e) = self.routes(&plan).await {
            fail(e, &mut first_err);
        }

        let me = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.node_name.as_str()));
        match me.map(|n| own_pod_cidr(n, self.cfg.ipv6())) {
            None => self.waiting("this node is not registered yet"),
            Some(Ok(None)) => self.waiting("this node has no spec.podCIDR yet"),
            Some(Ok(Some(pod_cidr))) => {
                self.last_waiting = None;
                if let Err(e) = self.conflist(pod_cidr).await {
                    fail(e, &mut first_err);
                }
            }
            Some(Err(e)) => fail(e, &mut first_err),
        }
        first_err.map_or(Ok(()), Err)
    }

    fn waiting(&mut self, why: &'static str) {
        if self.last_waiting != Some(why) {
            info!(node = %self.node_name, "waiting before writing the CNI config: {why}");
            self.last_waiting = Some(why);
        }
    }

    /// Forwarding (a failure fails the pass) and br_netfilter (a failure
    /// is logged once per distinct problem: it degrades Services between
    /// pods of one node, nothing else).
    async fn kernel(&mut self) -> Result<(), AgentError> {
        let proc_sys = self.cfg.proc_sys.clone();
        let modules = self.cfg.modules_dir.clone();
        let ipv6 = self.cfg.ipv6();
        let (forwarding, bridge) = tokio::task::spawn_blocking(move || {
            (
                kernel::enable_forwarding(&proc_sys, ipv6),
                kernel::ensure_bridge_netfilter(&proc_sys, &modules, ipv6),
            )
        })
        .await
        .map_err(|e| AgentError::Task {
            what: "kernel settings",
            reason: e.to_string(),
        })?;
        match bridge {
            Ok((load, changed)) => {
                if self.last_bridge_problem.take().is_some() || load != ModuleLoad::Present {
                    info!(?load, "br_netfilter is loaded");
                }
                if changed {
                    info!(
                        ipv6,
                        "bridged traffic now goes through iptables (bridge-nf-call)"
                    );
                }
            }
            Err(e) => {
                let text = chain(&e);
                if self.last_bridge_problem.as_deref() != Some(text.as_str()) {
                    warn!(error = %text,
                        "bridged traffic does not go through iptables: Services will not work between \
                         two pods of the same node. Load br_netfilter on the host ('modprobe br_netfilter', \
                         and list it in /etc/modules-load.d/) or mount the host's /lib/modules");
                    self.last_bridge_problem = Some(text);
                }
            }
        }
        if forwarding? {
            info!(ipv6, "IP forwarding turned on");
        }
        Ok(())
    }

    /// selfnode's masquerade rule for traffic leaving the cluster network
    /// ([`crate::masq`]).
    async fn masquerade(&mut self) -> Result<(), AgentError> {
        let cidr = self.cfg.cluster_cidr;
        let changed = tokio::task::spawn_blocking(move || crate::masq::ensure(cidr))
            .await
            .map_err(|e| AgentError::Task {
                what: "masquerade rule",
                reason: e.to_string(),
            })?
            .map_err(AgentError::Masquerade)?;
        if changed {
            info!(cluster_cidr = %cidr, "masquerading pod traffic that leaves the cluster network");
        }
        Ok(())
    }

    async fn routes(&mut self, plan: &RoutePlan) -> Result<(), AgentError> {
        let table = match self.table.take() {
            Some(t) => t,
            None => RouteTable::open()?,
        };
        // On an error or a timeout the table is dropped, which closes the
        // socket; the next pass opens a new one.
        let changes = tokio::time::timeout(NETLINK_TIMEOUT, table.reconcile(&plan.routes))
            .await
            .map_err(|_| AgentError::Timeout {
                what: "the kernel's answers to route changes",
                after: NETLINK_TIMEOUT,
            })??;
        self.table = Some(table);
        self.log_changes(&changes);
        match changes.failed.into_iter().next() {
            None => Ok(()),
            Some(first) => Err(AgentError::RoutesRefused { first }),
        }
    }

    async fn conflist(&mut self, pod_cidr: IpNet) -> Result<(), AgentError> {
        let cni = CniConfig {
            pod_cidr,
            cluster_cidr: self.cfg.cluster_cidr,
            bridge: self.cfg.bridge.clone(),
            mtu: self.cfg.mtu,
            conf_dir: self.cfg.conf_dir.clone(),
        };
        cni.validate()?;
        let text = render_conflist(&cni);
        let dir = cni.conf_dir.clone();
        let changed = tokio::task::spawn_blocking(move || write_conflist(&dir, &text))
            .await
            .map_err(|e| AgentError::Task {
                what: "CNI config write",
                reason: e.to_string(),
            })??;
        if changed {
            info!(path = %cni.conflist_path().display(), %pod_cidr, "wrote the CNI config");
        }
        Ok(())
    }

    fn log_plan(&mut self, plan: &RoutePlan) {
        if self.last_plan.as_ref() == Some(plan) {
            return;
        }
        for s in &plan.skipped {
            match s.reason {
                SkipReason::NoPodCidr => {
                    debug!(node = %s.node, "no route to node: {}", s.reason)
                }
                _ => warn!(node = %s.node, "no route to node: {}", s.reason),
            }
        }
        debug!(routes = plan.routes.len(), "desired routes");
        self.last_plan = Some(plan.clone());
    }

    fn log_changes(&mut self, changes: &RouteChanges) {
        for r in &changes.added {
            info!(route = %r, "added route");
        }
        for r in &changes.replaced {
            info!(route = %r, "replaced route (gateway changed)");
        }
        for r in &changes.deleted {
            info!(destination = %r.destination, gateway = ?r.gateway, "deleted stale route");
        }
        let conflicts: Vec<String> = changes.conflicts.iter().map(|r| r.to_string()).collect();
        if conflicts != self.last_conflicts {
            for r in &conflicts {
                warn!(route = %r, "not adding route: a route to the same destination that selfnode did not create exists; delete it to let selfnode route this node's pods");
            }
            self.last_conflicts = conflicts;
        }
    }
}

/// What routing needs of a Node: its InternalIP of the cluster's family
/// and its pod CIDR (`spec.podCIDR`, else the first of `spec.podCIDRs`
/// of the family). Unparsable values count as absent.
pub fn node_network(node: &Node, ipv6: bool) -> NodeNetwork {
    let internal_ip = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|addrs| {
            addrs
                .iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse::<IpAddr>().ok())
                .find(|ip| ip.is_ipv6() == ipv6)
        });
    NodeNetwork {
        name: node.metadata.name.clone().unwrap_or_default(),
        internal_ip,
        pod_cidr: own_pod_cidr(node, ipv6).ok().flatten(),
    }
}

/// The node's pod CIDR of the cluster's family: `Ok(None)` while the
/// controller-manager has not assigned one.
pub fn own_pod_cidr(node: &Node, ipv6: bool) -> Result<Option<IpNet>, AgentError> {
    let Some(spec) = node.spec.as_ref() else {
        return Ok(None);
    };
    let candidates = spec.pod_cidr.iter().chain(spec.pod_cidrs.iter().flatten());
    for c in candidates {
        let net: IpNet = c.parse().map_err(|_| AgentError::InvalidPodCidr {
            node: node.metadata.name.clone().unwrap_or_default(),
            value: c.clone(),
        })?;
        if net.addr().is_ipv6() == ipv6 {
            return Ok(Some(net));
        }
    }
    Ok(None)
}

/// The network agent failed (a pass, or for good).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The node name is empty.
    #[error("no node name given: pass the Node's name (the DaemonSet sets it from spec.nodeName)")]
    NoNodeName,
    /// The CNI configuration is invalid or cannot be written.
    #[error(transparent)]
    Cni(#[from] CniError),
    /// Forwarding or `br_netfilter` cannot be set up.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The kernel's routes cannot be read or changed.
    #[error(transparent)]
    Routes(#[from] RouteError),
    /// The kernel refused at least one route change (the others were made).
    #[error("the kernel refused to {} route {}: {}", first.action, first.route, first.error)]
    RoutesRefused {
        /// The first refusal.
        first: RouteFailure,
    },
    /// A Node's `spec.podCIDR` or `spec.podCIDRs` entry does not parse.
    #[error("node {node} has an invalid pod CIDR {value:?}")]
    InvalidPodCidr {
        /// The Node's name.
        node: String,
        /// The value found.
        value: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("the {what} task failed: {reason}")]
    Task {
        /// Which task, e.g. `CNI config write`.
        what: &'static str,
        /// The join error.
        reason: String,
    },
    /// The kernel did not answer in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// The Node watch stream ended (it should not).
    #[error("the Node watch ended")]
    WatchEnded,
    /// The masquerade rule cannot be read or added.
    #[error("cannot set up masquerading of pod traffic leaving the cluster network")]
    Masquerade(#[source] crate::iptables::IptablesError),
}

impl AgentError {
    /// True when the agent's configuration or the cluster's data is wrong
    /// and a retry cannot help (`selfnode` exits 2):
    /// [`AgentError::NoNodeName`] and [`AgentError::InvalidPodCidr`], and
    /// [`AgentError::Cni`], [`AgentError::Kernel`] and
    /// [`AgentError::Routes`] as their sources' `is_invalid_input` says.
    /// Refused routes, failed tasks, timeouts and a watch that ended are
    /// failures the next pass may fix.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            AgentError::NoNodeName | AgentError::InvalidPodCidr { .. } => true,
            AgentError::Cni(e) => e.is_invalid_input(),
            AgentError::Kernel(e) => e.is_invalid_input(),
            AgentError::Routes(e) => e.is_invalid_input(),
            AgentError::RoutesRefused { .. }
            | AgentError::Task { .. }
            | AgentError::Timeout { .. }
            | AgentError::WatchEnded
            | AgentError::Masquerade(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use kube::api::ObjectMeta;

    use super::*;

    fn node(name: &str, addrs: &[(&str, &str)], cidr: Option<&str>, cidrs: &[&str]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(str::to_string),
                pod_cidrs: (!cidrs.is_empty())
                    .then(|| cidrs.iter().map(|s| s.to_string()).collect()),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(
                    addrs
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                ..NodeStatus::default()
            }),
        }
    }

    #[test]
    fn internal_ip_and_pod_cidr_of_the_family() {
        let n = node(
            "n1",
            &[
                ("Hostname", "n1"),
                ("ExternalIP", "203.0.113.5"),
                ("InternalIP", "fd00::5"),
                ("InternalIP", "10.0.0.5"),
            ],
            Some("10.244.5.0/24"),
            &["10.244.5.0/24", "fd00:10:244:5::/64"],
        );
        assert_eq!(
            node_network(&n, false),
            NodeNetwork {
                name: "n1".into(),
                internal_ip: Some("10.0.0.5".parse().unwrap()),
                pod_cidr: Some("10.244.5.0/24".parse().unwrap()),
            }
        );
        let v6 = node_network(&n, true);
        assert_eq!(v6.internal_ip, Some("fd00::5".parse().unwrap()));
        assert_eq!(v6.pod_cidr, Some("fd00:10:244:5::/64".parse().unwrap()));
    }

    #[test]
    fn a_node_without_pod_cidr_or_internal_ip() {
        let n = node("n2", &[("ExternalIP", "203.0.113.5")], None, &[]);
        let net = node_network(&n, false);
        assert_eq!((net.internal_ip, net.pod_cidr), (None, None));
        assert_eq!(own_pod_cidr(&n, false).unwrap(), None);
        let bare = Node {
            metadata: ObjectMeta {
                name: Some("n3".into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        assert_eq!(node_network(&bare, false).pod_cidr, None);
    }

    #[test]
    fn an_invalid_pod_cidr_is_named() {
        let n = node("n4", &[], Some("10.244.x/24"), &[]);
        let e = own_pod_cidr(&n, false).unwrap_err().to_string();
        assert_eq!(e, "node n4 has an invalid pod CIDR \"10.244.x/24\"");
        assert_eq!(node_network(&n, false).pod_cidr, None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let cfg = AgentConfig::new("10.244.0.0/16".parse().unwrap());
        for (failures, base) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (5, 16.0),
            (6, 30.0),
            (40, 30.0),
        ] {
            let d = backoff(&cfg, failures).as_secs_f64();
            assert!(
                d >= base * 0.8 && d < base * 1.2,
                "failures {failures}: {d}s not near {base}s"
            );
        }
    }
}
