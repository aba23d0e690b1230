//! The pod network. See ARCHITECTURE.md.
//!
//! - [`config`]: the CNI 1.0.0 conflist for the standard plugins (`bridge`
//!   with `host-local` IPAM, `portmap`) and its atomic write.
//! - [`routes`]: host-gateway routes between nodes' pod CIDRs, computed
//!   purely and reconciled in the kernel over rtnetlink, marked with
//!   [`routes::ROUTE_PROTOCOL`].
//! - [`kernel`]: IP forwarding and `br_netfilter`.
//! - [`masq`]: the one NAT rule that masquerades pod traffic leaving the
//!   cluster network.
//! - [`cleanup`]: what `selfnode reset` removes of the pod network.
//! - [`iptables`]: running `iptables` and splitting its rules, for the two
//!   above.
//! - [`agent`]: the loop the `selfnode-network` DaemonSet runs on every
//!   node (`selfnode network-agent`), tying the three together.

#![warn(missing_docs)]

pub mod agent;
pub mod cleanup;
pub mod config;
pub mod iptables;
pub mod kernel;
pub mod masq;
pub mod routes;

pub use agent::{run, AgentConfig, AgentError};
pub use config::{render_conflist, write_conflist, CniConfig, CniError};
pub use routes::{desired_routes, NodeNetwork, PodRoute, RouteTable, ROUTE_PROTOCOL};
