//! Ground floor: a host whose address changed (DHCP, re-addressing).
//!
//! A node's identity is its name, never its address. The address is
//! recorded twice: in `node.json` (the kubelet's `--node-ip`, every task's
//! view of the node) and, on a control-plane host, in its plane's settings
//! in the checkpoint (the certificates' names, etcd's flags and URLs). When
//! the recorded address is on no interface of the host any more, the host's
//! address is the one the kernel sends from toward the cluster (its other
//! API servers, else the default route), of the same family ([`find`]);
//! [`record`] moves both records to it, and everything else follows from
//! them: the agent's address task (`agent::tasks::address`) converges the
//! rest.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use bootstrap::config::HostIdentity;

use crate::checkpoint::Checkpoint;
use crate::control::NodeIdentity;
use crate::fsutil::write_atomic;
use crate::paths::HostPaths;

/// Where the recorded address stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// It is on an interface of this host.
    Here { at: IpAddr },
    /// It is gone; the host sends from `to` now.
    Moved { from: IpAddr, to: IpAddr },
    /// It is gone and no single address replaces it: `candidates` are the
    /// host's usable addresses of its family (none, or several with no
    /// route to tell them apart).
    Gone {
        from: IpAddr,
        candidates: Vec<IpAddr>,
    },
}

/// Beyond the default route: documentation addresses (RFC 5737, RFC 3849)
/// that no host owns, so the kernel's source for them is the default
/// route's.
const BEYOND_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
const BEYOND_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

/// Where `recorded` stands on `host`. `toward` are the cluster's other
/// addresses (its API servers) and `source` the kernel's source address
/// toward one ([`route_source`]); the first answer that is one of the
/// host's usable addresses of the same family wins, then the default
/// route's, then the only such address if there is one.
pub fn find(
    recorded: IpAddr,
    host: &HostIdentity,
    toward: &[IpAddr],
    source: impl Fn(IpAddr) -> Option<IpAddr>,
) -> Found {
    if host.addresses.contains(&recorded) {
        return Found::Here { at: recorded };
    }
    let same_family = |a: &IpAddr| a.is_ipv4() == recorded.is_ipv4();
    let candidates: Vec<IpAddr> = host
        .addresses
        .iter()
        .copied()
        .filter(|a| same_family(a) && bootstrap::config::usable(*a))
        .collect();
    let beyond = if recorded.is_ipv4() {
        BEYOND_V4
    } else {
        BEYOND_V6
    };
    let routed = toward
        .iter()
        .copied()
        .filter(|t| same_family(t) && *t != recorded && !host.addresses.contains(t))
        .chain(std::iter::once(beyond))
        .filter_map(&source)
        .find(|s| candidates.contains(s));
    let only = match candidates.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    match routed.or(only) {
        Some(to) => Found::Moved { from: recorded, to },
        None => Found::Gone {
            from: recorded,
            candidates,
        },
    }
}

/// The address the kernel sends from toward `dest` (a UDP socket's
/// `connect` picks the route and sends nothing); `None` without a route.
pub fn route_source(dest: IpAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if dest.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(SocketAddr::new(dest, 9)).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Moves this host's records to `to`: `node.json`, then the plane's
/// settings in the checkpoint (control-plane hosts). Idempotent; returns
/// whether anything changed. Called with the address `node.json` holds, it
/// finishes a move cut short between the two records. A change leaves
/// [`HostPaths::address_move_marker`] for the agent's address task.
pub fn record(paths: &HostPaths, to: IpAddr) -> anyhow::Result<bool> {
    let mut changed = false;
    let file = paths.node_identity_file();
    if let Some(mut node) = NodeIdentity::read(&file)? {
        if node.node_ip != to {
            // The marker first: a move cut short after it is finished by
            // the address task, however far the records got.
            write_atomic(
                &paths.address_move_marker(),
                format!("{} {to}\n", node.node_ip).as_bytes(),
                0o644,
            )?;
            node.node_ip = to;
            write_atomic(&file, &serde_json::to_vec_pretty(&node)?, 0o644)?;
            changed = true;
        }
    }
    if paths.checkpoint_dir().exists() {
        let cp = Checkpoint::open(&paths.checkpoint_dir())?;
        if let Some(mut settings) = cp.settings()? {
            if settings.advertise_address != to {
                write_atomic(
                    &paths.address_move_marker(),
                    format!("{} {to}\n", settings.advertise_address).as_bytes(),
                    0o644,
                )?;
                settings.advertise_address = to;
                cp.record_settings(&settings)?;
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// The address this host's records should hold, from what is recorded
/// and the host's interfaces now ([`find`] with the kernel's routes).
pub fn check(paths: &HostPaths, toward: &[IpAddr]) -> anyhow::Result<Option<Found>> {
    let Some(node) = NodeIdentity::read(&paths.node_identity_file())? else {
        return Ok(None);
    };
    let host = crate::cluster::host_identity()?;
    Ok(Some(find(node.node_ip, &host, toward, route_source)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(addrs: &[&str]) -> HostIdentity {
        HostIdentity {
            hostname: "h".into(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_still_here_stays() {
        let h = host(&["127.0.0.1", "10.0.0.5"]);
        assert_eq!(
            find(ip("10.0.0.5"), &h, &[], |_| None),
            Found::Here { at: ip("10.0.0.5") }
        );
    }

    #[test]
    fn the_route_toward_the_cluster_names_the_new_address() {
        let h = host(&["127.0.0.1", "10.0.0.9", "172.16.0.2", "fe80::1"]);
        // Toward the other API server the kernel sends from 10.0.0.9; the
        // default route would pick 172.16.0.2.
        let source = |d: IpAddr| {
            Some(if d == ip("10.0.0.7") {
                ip("10.0.0.9")
            } else {
                ip("172.16.0.2")
            })
        };
        assert_eq!(
            find(ip("10.0.0.5"), &h, &[ip("10.0.0.7")], source),
            Found::Moved {
                from: ip("10.0.0.5"),
                to: ip("10.0.0.9")
            }
        );
        // No other API server: the default route's.
        assert_eq!(
            find(ip("10.0.0.5"), &h, &[], source),
            Found::Moved {
                from: ip("10.0.0.5"),
                to: ip("172.16.0.2")
            }
        );
    }

    #[test]
    fn without_a_route_only_a_single_candidate_is_taken() {
        let one = host(&["127.0.0.1", "10.0.0.9", "fd00::2"]);
        assert_eq!(
            find(ip("10.0.0.5"), &one, &[], |_| None),
            Found::Moved {
                from: ip("10.0.0.5"),
                to: ip("10.0.0.9")
            }
        );
        let two = host(&["10.0.0.9", "10.1.0.9"]);
        assert_eq!(
            find(ip("10.0.0.5"), &two, &[], |_| None),
            Found::Gone {
                from: ip("10.0.0.5"),
                candidates: vec![ip("10.0.0.9"), ip("10.1.0.9")]
            }
        );
        // A route through an address of the other family, or loopback,
        // is no answer.
        assert_eq!(
            find(
                ip("10.0.0.5"),
                &host(&["127.0.0.1", "fd00::2"]),
                &[],
                |_| Some(ip("127.0.0.1"))
            ),
            Found::Gone {
                from: ip("10.0.0.5"),
                candidates: vec![]
            }
        );
    }
}
