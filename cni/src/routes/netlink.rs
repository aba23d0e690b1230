//! The kernel side of [`super::desired_routes`]: reconcile the main table
//! over rtnetlink.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteVia,
};
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::{PodRoute, RouteError, ROUTE_PROTOCOL};

const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// A route of the kernel's main table, as far as reconciling cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledRoute {
    /// The destination prefix.
    pub destination: IpNet,
    /// The next hop; `None` for a directly connected route.
    pub gateway: Option<IpAddr>,
    /// The route's protocol number ([`ROUTE_PROTOCOL`] for selfnode's).
    pub protocol: u8,
    /// The metric, when the kernel reports one.
    pub priority: Option<u32>,
}

impl InstalledRoute {
    /// True if selfnode created it (its protocol is [`ROUTE_PROTOCOL`]).
    pub fn is_ours(&self) -> bool {
        self.protocol == ROUTE_PROTOCOL
    }
}

/// What one [`RouteTable::reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteChanges {
    /// Wanted routes that were missing and were added.
    pub added: Vec<PodRoute>,
    /// Our route to the destination had another gateway.
    pub replaced: Vec<PodRoute>,
    /// Our routes no longer wanted (node gone, gateway changed, duplicate).
    pub deleted: Vec<InstalledRoute>,
    /// Wanted routes left out because a route we did not create has the
    /// same destination: that route is left alone (someone put it there).
    pub conflicts: Vec<PodRoute>,
    /// Changes the kernel refused; the others were still made.
    pub failed: Vec<RouteFailure>,
}

impl RouteChanges {
    /// Whether anything in the table changed.
    pub fn changed(&self) -> bool {
        !(self.added.is_empty() && self.replaced.is_empty() && self.deleted.is_empty())
    }
}

/// A change the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFailure {
    /// `add`, `replace` or `delete`.
    pub action: &'static str,
    /// The route, as `ip route` would write it.
    pub route: String,
    /// The kernel's answer, e.g. `Network is unreachable (os error 101)`.
    pub error: String,
}

/// A netlink connection to the routing tables of the network namespace
/// the calling thread was in when it was opened. The connection runs as a
/// task on the current tokio runtime and is stopped on drop.
pub struct RouteTable {
    handle: Handle,
    connection: JoinHandle<()>,
}

impl Drop for RouteTable {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl RouteTable {
    /// Opens the connection. Must be called inside a tokio runtime.
    pub fn open() -> Result<Self, RouteError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| RouteError::Open { source })?;
        Ok(RouteTable {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    /// Every route of the main table, both IP families.
    pub async fn main_table(&self) -> Result<Vec<InstalledRoute>, RouteError> {
        let mut out = Vec::new();
        let queries = [
            ("IPv4", RouteMessageBuilder::<Ipv4Addr>::new().build()),
            ("IPv6", RouteMessageBuilder::<Ipv6Addr>::new().build()),
        ];
        for (family, query) in queries {
            let mut dump = self.handle.route().get(query).execute();
            while let Some(msg) = dump.next().await {
                let msg = msg.map_err(|source| RouteError::Dump { family, source })?;
                out.extend(parse_route(&msg));
            }
        }
        Ok(out)
    }

    /// Makes selfnode's routes in the main table exactly `desired`: adds
    /// what is missing, replaces routes whose gateway changed and deletes
    /// our routes no longer wanted. Routes whose protocol is not
    /// [`ROUTE_PROTOCOL`] are never touched; a wanted destination that one
    /// of them already has is reported as a conflict.
    ///
    /// Fails only when the table cannot be read; refused changes are in
    /// [`RouteChanges::failed`], and every other change is still made.
    pub async fn reconcile(&self, desired: &[PodRoute]) -> Result<RouteChanges, RouteError> {
        let installed = self.main_table().await?;
        let (ours, foreign): (Vec<_>, Vec<_>) =
            installed.into_iter().partition(InstalledRoute::is_ours);
        let mut wanted = BTreeSet::new();
        for want in desired {
            if !wanted.insert(want.destination.trunc()) {
                return Err(RouteError::InvalidRoute {
                    route: want.to_string(),
                    reason: "the destination is wanted twice".to_string(),
                });
            }
            if want.destination.addr().is_ipv4() != want.gateway.is_ipv4() {
                return Err(RouteError::InvalidRoute {
                    route: want.to_string(),
                    reason: "destination and gateway are of different IP families".to_string(),
                });
            }
        }

        let mut changes = RouteChanges::default();
        let mut keep: Vec<&InstalledRoute> = Vec::new();
        for want in desired {
            let want = PodRoute {
                destination: want.destination.trunc(),
                gateway: want.gateway,
            };
            if foreign.iter().any(|r| r.destination == want.destination) {
                changes.conflicts.push(want);
                continue;
            }
            let mine: Vec<&InstalledRoute> = ours
                .iter()
                .filter(|r| r.destination == want.destination)
                .collect();
            if let Some(same) = mine.iter().find(|r| r.gateway == Some(want.gateway)) {
                keep.push(same);
                continue;
            }
            let add = self.handle.route().add(route_message(&want));
            let (action, request) = if mine.is_empty() {
                ("add", add)
            } else {
                ("replace", add.replace())
            };
            match request.execute().await {
                Ok(()) if mine.is_empty() => changes.added.push(want),
                Ok(()) => changes.replaced.push(want),
                Err(e) => changes.failed.push(RouteFailure {
                    action,
                    route: want.to_string(),
                    error: error_text(e),
                }),
            }
        }

        // Ours that are not kept: gone nodes, conflicts, old gateways and
        // duplicates. The one a replace overwrote in place is gone already
        // (the kernel answers ESRCH, which is skipped).
        for r in &ours {
            if keep.iter().any(|k| std::ptr::eq(*k, r)) {
                continue;
            }
            match self.handle.route().del(delete_message(r)).execute().await {
                Ok(()) => changes.deleted.push(r.clone()),
                Err(e) if is_not_found(&e) => {}
                Err(e) => changes.failed.push(RouteFailure {
                    action: "delete",
                    route: describe(r),
                    error: error_text(e),
                }),
            }
        }
        Ok(changes)
    }
}

fn describe(r: &InstalledRoute) -> String {
    match r.gateway {
        Some(gw) => format!("{} via {gw} proto {}", r.destination, r.protocol),
        None => format!("{} proto {}", r.destination, r.protocol),
    }
}

/// `destination via gateway proto 0x53` in the main table.
fn route_message(r: &PodRoute) -> RouteMessage {
    let mut b = RouteMessageBuilder::<IpAddr>::new().protocol(RouteProtocol::from(ROUTE_PROTOCOL));
    let m = b.get_mut();
    m.header.address_family = if r.destination.addr().is_ipv4() {
        rtnetlink::packet_route::AddressFamily::Inet
    } else {
        rtnetlink::packet_route::AddressFamily::Inet6
    };
    m.header.destination_prefix_length = r.destination.prefix_len();
    m.attributes
        .push(RouteAttribute::Destination(r.destination.addr().into()));
    m.attributes.push(RouteAttribute::Gateway(r.gateway.into()));
    b.build()
}

/// Deletes exactly `r`: the kernel matches destination, protocol,
/// gateway and metric, so neither a route of someone else nor our own
/// route with another gateway can go with it.
fn delete_message(r: &InstalledRoute) -> RouteMessage {
    let mut b = RouteMessageBuilder::<IpAddr>::new().protocol(RouteProtocol::from(r.protocol));
    let m = b.get_mut();
    m.header.address_family = if r.destination.addr().is_ipv4() {
        rtnetlink::packet_route::AddressFamily::Inet
    } else {
        rtnetlink::packet_route::AddressFamily::Inet6
    };
    m.header.destination_prefix_length = r.destination.prefix_len();
    if r.destination.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(r.destination.addr().into()));
    }
    if let Some(gw) = r.gateway {
        m.attributes.push(RouteAttribute::Gateway(gw.into()));
    }
    if let Some(p) = r.priority {
        m.attributes.push(RouteAttribute::Priority(p));
    }
    b.build()
}

/// The main-table unicast route in `msg`, if it is one.
fn parse_route(msg: &RouteMessage) -> Option<InstalledRoute> {
    let mut table = u32::from(msg.header.table);
    let mut destination = None;
    let mut gateway = None;
    let mut priority = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => destination = ip(a),
            RouteAttribute::Gateway(a) => gateway = ip(a),
            RouteAttribute::Via(RouteVia::Inet(v4)) => gateway = Some(IpAddr::V4(*v4)),
            RouteAttribute::Via(RouteVia::Inet6(v6)) => gateway = Some(IpAddr::V6(*v6)),
            RouteAttribute::Priority(p) => priority = Some(*p),
            _ => {}
        }
    }
    if table != MAIN_TABLE {
        return None;
    }
    let len = msg.header.destination_prefix_length;
    let addr = match (destination, msg.header.address_family) {
        (Some(a), _) => a,
        (None, rtnetlink::packet_route::AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, rtnetlink::packet_route::AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    let destination = IpNet::new(addr, len).ok()?.trunc();
    Some(InstalledRoute {
        destination,
        gateway,
        protocol: u8::from(msg.header.protocol),
        priority,
    })
}

fn ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn error_text(e: rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

/// ESRCH: the route went away between the dump and the delete.
fn is_not_found(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.map(|c| -c.get()) == Some(libc::ESRCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_route_message_round_trips_through_the_parser() {
        let r = PodRoute {
            destination: "10.244.2.0/24".parse().unwrap(),
            gateway: "10.0.0.12".parse().unwrap(),
        };
        let parsed = parse_route(&route_message(&r)).unwrap();
        assert_eq!(
            parsed,
            InstalledRoute {
                destination: r.destination,
                gateway: Some(r.gateway),
                protocol: ROUTE_PROTOCOL,
                priority: None,
            }
        );
        assert!(parsed.is_ours());
        let v6 = PodRoute {
            destination: "fd00:10:244:2::/64".parse().unwrap(),
            gateway: "fd00::b".parse().unwrap(),
        };
        let parsed = parse_route(&route_message(&v6)).unwrap();
        assert_eq!(parsed.destination, v6.destination);
        assert_eq!(parsed.gateway, Some(v6.gateway));
    }

    #[test]
    fn other_tables_and_default_routes() {
        let mut m = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(255)
            .destination_prefix(Ipv4Addr::new(127, 0, 0, 1), 32)
            .build();
        assert_eq!(parse_route(&m), None, "local table");
        m = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(1000)
            .build();
        assert_eq!(parse_route(&m), None, "table id in an attribute");
        m = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(Ipv4Addr::new(10, 0, 0, 1))
            .build();
        let r = parse_route(&m).unwrap();
        assert_eq!(r.destination, "0.0.0.0/0".parse::<IpNet>().unwrap());
        assert_eq!(r.protocol, 4, "static");
        assert!(!r.is_ours());
    }
}
