//! Host-gateway routing between nodes: every other node's pod CIDR is
//! routed via that node's InternalIP in the kernel's main table.
//!
//! [`desired_routes`] is pure: nodes in, routes (and the nodes left out,
//! with why) out. [`RouteTable`] reconciles the kernel over rtnetlink:
//! it adds missing routes, replaces changed ones and deletes stale ones,
//! touching only routes carrying [`ROUTE_PROTOCOL`], the marker of the
//! routes selfnode created. Routes of anyone else are never changed.

mod netlink;

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

pub use netlink::{InstalledRoute, RouteChanges, RouteFailure, RouteTable};

/// The route protocol number (`ip route ... proto 0x53`, 83) marking the
/// routes selfnode's network agent created: ASCII `S`, not among
/// iproute2's `rt_protos` nor used by the common routing daemons and CNI
/// plugins. Only routes with this protocol are ever replaced or deleted.
pub const ROUTE_PROTOCOL: u8 = 0x53;

/// What the agent knows of one node: its name, its InternalIP of the
/// cluster's family (if any) and its `spec.podCIDR` (if assigned yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNetwork {
    /// The Node's name.
    pub name: String,
    /// Its InternalIP of the cluster's family, from `status.addresses`.
    pub internal_ip: Option<IpAddr>,
    /// Its `spec.podCIDR`.
    pub pod_cidr: Option<IpNet>,
}

/// One wanted route: `destination via gateway` (another node's pod CIDR
/// via its InternalIP).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRoute {
    /// The other node's pod CIDR.
    pub destination: IpNet,
    /// The other node's InternalIP.
    pub gateway: IpAddr,
}

impl fmt::Display for PodRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.destination, self.gateway)
    }
}

/// The routes this node wants, sorted by destination, and the other nodes
/// that get none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// The routes, sorted by destination.
    pub routes: Vec<PodRoute>,
    /// The other nodes without a route, in name order.
    pub skipped: Vec<SkippedNode>,
}

/// A node that gets no route, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedNode {
    /// The Node's name.
    pub node: String,
    /// Why it gets no route.
    pub reason: SkipReason,
}

/// Why [`desired_routes`] gives a node no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// No `spec.podCIDR` yet (the controller-manager assigns it shortly
    /// after the node registers): nothing to route.
    NoPodCidr,
    /// No InternalIP of the cluster's family in `status.addresses`.
    NoInternalIp,
    /// The pod CIDR is not inside the cluster CIDR: routing it could
    /// hijack traffic that is not the cluster's.
    OutsideCluster {
        /// The node's pod CIDR.
        pod_cidr: IpNet,
        /// The cluster CIDR.
        cluster_cidr: IpNet,
    },
    /// The pod CIDR overlaps this node's or an earlier node's (by name).
    Overlaps {
        /// The node's pod CIDR.
        pod_cidr: IpNet,
        /// The node whose CIDR it overlaps.
        other: String,
    },
    /// The node's InternalIP is this node's own address.
    GatewayIsThisNode {
        /// The shared address.
        ip: IpAddr,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NoPodCidr => f.write_str("it has no spec.podCIDR yet"),
            SkipReason::NoInternalIp => {
                f.write_str("it has no InternalIP of the cluster's IP family")
            }
            SkipReason::OutsideCluster {
                pod_cidr,
                cluster_cidr,
            } => write!(
                f,
                "its pod CIDR {pod_cidr} is not inside the cluster CIDR {cluster_cidr}"
            ),
            SkipReason::Overlaps { pod_cidr, other } => write!(
                f,
                "its pod CIDR {pod_cidr} overlaps the one of node {other}"
            ),
            SkipReason::GatewayIsThisNode { ip } => {
                write!(f, "its InternalIP {ip} is this node's own address")
            }
        }
    }
}

/// The routes node `self_name` needs: `podCIDR via InternalIP` for every
/// other node whose pod CIDR lies inside `cluster_cidr`; none for itself.
/// Nodes are taken in name order, so when two pod CIDRs overlap the
/// result does not depend on the order of `nodes`.
pub fn desired_routes(self_name: &str, cluster_cidr: IpNet, nodes: &[NodeNetwork]) -> RoutePlan {
    let me = nodes.iter().find(|n| n.name == self_name);
    let own_ip = me.and_then(|n| n.internal_ip);
    let mut claimed: Vec<(IpNet, &str)> = me
        .and_then(|n| n.pod_cidr)
        .map(|c| (c.trunc(), self_name))
        .into_iter()
        .collect();
    let mut others: Vec<&NodeNetwork> = nodes.iter().filter(|n| n.name != self_name).collect();
    others.sort_by(|a, b| a.name.cmp(&b.name));

    let mut plan = RoutePlan::default();
    for node in others {
        let skip = |reason| SkippedNode {
            node: node.name.clone(),
            reason,
        };
        let Some(pod_cidr) = node.pod_cidr.map(|c| c.trunc()) else {
            plan.skipped.push(skip(SkipReason::NoPodCidr));
            continue;
        };
        if !cluster_cidr.contains(&pod_cidr) {
            plan.skipped.push(skip(SkipReason::OutsideCluster {
                pod_cidr,
                cluster_cidr,
            }));
            continue;
        }
        let Some(ip) = node
            .internal_ip
            .filter(|ip| ip.is_ipv4() == pod_cidr.addr().is_ipv4())
        else {
            plan.skipped.push(skip(SkipReason::NoInternalIp));
            continue;
        };
        if Some(ip) == own_ip {
            plan.skipped
                .push(skip(SkipReason::GatewayIsThisNode { ip }));
            continue;
        }
        if let Some((_, other)) = claimed
            .iter()
            .find(|(c, _)| c.contains(&pod_cidr) || pod_cidr.contains(c))
        {
            plan.skipped.push(skip(SkipReason::Overlaps {
                pod_cidr,
                other: other.to_string(),
            }));
            continue;
        }
        claimed.push((pod_cidr, &node.name));
        plan.routes.push(PodRoute {
            destination: pod_cidr,
            gateway: ip,
        });
    }
    plan.routes.sort();
    plan
}

/// The kernel's routes cannot be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The netlink socket cannot be opened.
    #[error("cannot open a netlink route socket")]
    Open {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The route dump failed.
    #[error("cannot list the {family} routes of the main table")]
    Dump {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// The wanted routes are malformed: a destination wanted twice, or a
    /// gateway of another IP family than its destination.
    #[error("invalid route {route}: {reason}")]
    InvalidRoute {
        /// The route, as `ip route` would write it.
        route: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl RouteError {
    /// True when a route given to [`RouteTable::reconcile`] is malformed
    /// and a retry cannot help (`selfnode` exits 2):
    /// [`RouteError::InvalidRoute`]. Socket and dump errors are failures.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            RouteError::InvalidRoute { .. } => true,
            RouteError::Open { .. } | RouteError::Dump { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: Option<&str>, cidr: Option<&str>) -> NodeNetwork {
        NodeNetwork {
            name: name.into(),
            internal_ip: ip.map(|s| s.parse().unwrap()),
            pod_cidr: cidr.map(|s| s.parse().unwrap()),
        }
    }

    fn route(dst: &str, via: &str) -> PodRoute {
        PodRoute {
            destination: dst.parse().unwrap(),
            gateway: via.parse().unwrap(),
        }
    }

    fn cluster() -> IpNet {
        "10.244.0.0/16".parse().unwrap()
    }

    fn three() -> Vec<NodeNetwork> {
        vec![
            node("n3", Some("10.0.0.13"), Some("10.244.3.0/24")),
            node("n1", Some("10.0.0.11"), Some("10.244.1.0/24")),
            node("n2", Some("10.0.0.12"), Some("10.244.2.0/24")),
        ]
    }

    #[test]
    fn a_route_to_every_other_node_and_none_to_self() {
        let plan = desired_routes("n1", cluster(), &three());
        assert_eq!(
            plan.routes,
            [
                route("10.244.2.0/24", "10.0.0.12"),
                route("10.244.3.0/24", "10.0.0.13")
            ]
        );
        assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);
        let plan = desired_routes("n3", cluster(), &three());
        assert_eq!(
            plan.routes,
            [
                route("10.244.1.0/24", "10.0.0.11"),
                route("10.244.2.0/24", "10.0.0.12")
            ]
        );
    }

    #[test]
    fn a_single_node_or_an_unknown_self_needs_no_route_to_itself() {
        let one = vec![node("n1", Some("10.0.0.11"), Some("10.244.1.0/24"))];
        assert_eq!(desired_routes("n1", cluster(), &one), RoutePlan::default());
        assert_eq!(desired_routes("n1", cluster(), &[]), RoutePlan::default());
        // This node not registered yet: the others are still routed.
        let plan = desired_routes("n9", cluster(), &three());
        assert_eq!(plan.routes.len(), 3);
    }

    #[test]
    fn the_input_order_does_not_matter() {
        let mut nodes = three();
        nodes.push(node("n0", Some("10.0.0.10"), Some("10.244.2.0/25")));
        let a = desired_routes("n1", cluster(), &nodes);
        nodes.reverse();
        assert_eq!(desired_routes("n1", cluster(), &nodes), a);
        // n0 sorts first, so it wins the overlap with n2.
        assert_eq!(a.routes[0], route("10.244.2.0/25", "10.0.0.10"));
        assert_eq!(
            a.skipped,
            [SkippedNode {
                node: "n2".into(),
                reason: SkipReason::Overlaps {
                    pod_cidr: "10.244.2.0/24".parse().unwrap(),
                    other: "n0".into()
                }
            }]
        );
    }

    #[test]
    fn nodes_that_cannot_be_routed_are_skipped_with_a_reason() {
        let nodes = vec![
            node("me", Some("10.0.0.1"), Some("10.244.1.0/24")),
            node("no-cidr", Some("10.0.0.2"), None),
            node("no-ip", None, Some("10.244.3.0/24")),
            node("v6-ip", Some("fd00::4"), Some("10.244.4.0/24")),
            node("outside", Some("10.0.0.5"), Some("0.0.0.0/0")),
            node("same-ip", Some("10.0.0.1"), Some("10.244.6.0/24")),
            node("overlaps-me", Some("10.0.0.7"), Some("10.244.1.128/25")),
            node("good", Some("10.0.0.8"), Some("10.244.8.9/24")),
        ];
        let plan = desired_routes("me", cluster(), &nodes);
        assert_eq!(plan.routes, [route("10.244.8.0/24", "10.0.0.8")]);
        let reasons: Vec<String> = plan
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.node, s.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                "no-cidr: it has no spec.podCIDR yet",
                "no-ip: it has no InternalIP of the cluster's IP family",
                "outside: its pod CIDR 0.0.0.0/0 is not inside the cluster CIDR 10.244.0.0/16",
                "overlaps-me: its pod CIDR 10.244.1.128/25 overlaps the one of node me",
                "same-ip: its InternalIP 10.0.0.1 is this node's own address",
                "v6-ip: it has no InternalIP of the cluster's IP family",
            ]
        );
    }

    #[test]
    fn ipv6_routes() {
        let nodes = vec![
            node("a", Some("fd00::a"), Some("fd00:10:244:1::/64")),
            node("b", Some("fd00::b"), Some("fd00:10:244:2::/64")),
        ];
        let plan = desired_routes("a", "fd00:10:244::/56".parse().unwrap(), &nodes);
        assert_eq!(plan.routes, [route("fd00:10:244:2::/64", "fd00::b")]);
        assert_eq!(plan.routes[0].to_string(), "fd00:10:244:2::/64 via fd00::b");
    }
}
