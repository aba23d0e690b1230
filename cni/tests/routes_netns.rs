//! The netlink side against a real kernel: `RouteTable::reconcile` and the
//! forwarding sysctl inside throwaway network namespaces (root needed).

mod support;

use cni::kernel;
use cni::routes::{PodRoute, RouteTable, ROUTE_PROTOCOL};
use support::Netns;

fn route(dst: &str, via: &str) -> PodRoute {
    PodRoute {
        destination: dst.parse().unwrap(),
        gateway: via.parse().unwrap(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn reconcile_adds_replaces_and_deletes_only_our_routes() {
    assert_eq!(ROUTE_PROTOCOL, 83);
    let ns = Netns::new("10.0.0.1/24");
    // Someone else's routes: one elsewhere, one to a destination we want.
    ns.ip(&[
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        "10.0.0.9",
        "proto",
        "static",
    ]);
    ns.ip(&["route", "add", "10.244.5.0/24", "via", "10.0.0.55"]);
    // Ours from an earlier run, for a node that is gone.
    ns.ip(&[
        "route",
        "add",
        "10.244.7.0/24",
        "via",
        "10.0.0.7",
        "proto",
        "83",
    ]);
    let foreign = strings(&[
        "10.244.5.0/24 via 10.0.0.55", // proto boot, which ip does not print
        "10.244.9.0/24 via 10.0.0.9 proto static",
    ]);

    ns.block_on(async {
        let table = RouteTable::open().unwrap();
        let want = vec![
            route("10.244.2.0/24", "10.0.0.2"),
            route("10.244.3.0/24", "10.0.0.3"),
            route("10.244.5.0/24", "10.0.0.5"),
        ];
        let c = table.reconcile(&want).await.unwrap();
        assert_eq!(c.added, want[..2]);
        assert_eq!(c.conflicts, want[2..]);
        assert_eq!(c.deleted.len(), 1);
        assert_eq!(c.deleted[0].destination.to_string(), "10.244.7.0/24");
        assert!(c.replaced.is_empty() && c.failed.is_empty(), "{c:?}");
        assert_eq!(
            ns.our_routes(false),
            ["10.244.2.0/24 via 10.0.0.2", "10.244.3.0/24 via 10.0.0.3"]
        );

        // Idempotent: the same wish changes nothing.
        let c = table.reconcile(&want).await.unwrap();
        assert!(!c.changed(), "{c:?}");
        assert_eq!(c.conflicts, want[2..]);

        // A node's address changed; another node left.
        let want = vec![route("10.244.2.0/24", "10.0.0.22")];
        let c = table.reconcile(&want).await.unwrap();
        assert_eq!(c.replaced, want);
        assert!(c.added.is_empty());
        assert_eq!(
            c.deleted
                .iter()
                .map(|r| r.destination.to_string())
                .collect::<Vec<_>>(),
            ["10.244.3.0/24"]
        );
        assert_eq!(ns.our_routes(false), ["10.244.2.0/24 via 10.0.0.22"]);

        // A gateway the kernel cannot reach is refused; the rest still
        // happens.
        let want = vec![
            route("10.244.2.0/24", "10.0.0.22"),
            route("10.244.4.0/24", "192.0.2.4"),
            route("10.244.6.0/24", "10.0.0.6"),
        ];
        let c = table.reconcile(&want).await.unwrap();
        assert_eq!(c.added, [want[2].clone()]);
        assert_eq!(c.failed.len(), 1, "{c:?}");
        assert_eq!(c.failed[0].action, "add");
        assert_eq!(c.failed[0].route, "10.244.4.0/24 via 192.0.2.4");
        assert!(
            c.failed[0].error.contains("unreachable"),
            "{}",
            c.failed[0].error
        );

        // Nothing wanted: all of ours go, nothing else does.
        let c = table.reconcile(&[]).await.unwrap();
        assert_eq!(c.deleted.len(), 2);
        assert!(ns.our_routes(false).is_empty());

        // Invalid wishes are refused before anything changes.
        let e = table
            .reconcile(&[route("10.244.2.0/24", "fd00::2")])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("different IP families"), "{e}");
    });
    let all = ns.all_routes();
    for f in &foreign {
        assert!(all.contains(f), "{f} was touched: {all:?}");
    }
}

#[test]
fn ipv6_routes_are_reconciled_too() {
    let ns = Netns::new("10.0.0.1/24");
    ns.ip(&["addr", "add", "fd00::1/64", "dev", "veth0", "nodad"]);
    ns.block_on(async {
        let table = RouteTable::open().unwrap();
        let want = vec![route("fd00:10:244:2::/64", "fd00::2")];
        let c = table.reconcile(&want).await.unwrap();
        assert_eq!(c.added, want);
        assert_eq!(ns.our_routes(true), ["fd00:10:244:2::/64 via fd00::2"]);
        let want = vec![route("fd00:10:244:2::/64", "fd00::3")];
        let c = table.reconcile(&want).await.unwrap();
        assert_eq!(c.replaced, want);
        assert!(c.deleted.is_empty() && c.failed.is_empty(), "{c:?}");
        assert_eq!(ns.our_routes(true), ["fd00:10:244:2::/64 via fd00::3"]);
        let c = table.reconcile(&[]).await.unwrap();
        assert_eq!(c.deleted.len(), 1);
        assert!(ns.our_routes(true).is_empty());
    });
}

#[test]
fn forwarding_is_turned_on_in_the_namespace_only() {
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let ns = Netns::new("10.0.0.1/24");
    // A new namespace copies IPv4 forwarding from the host's (the kernel's
    // default devconf_inherit_init_net=0 does that for IPv4), so start from 0.
    support::run(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "sh",
            "-c",
            "echo 0 > /proc/sys/net/ipv4/ip_forward",
        ],
    );
    assert_eq!(ns.cat("/proc/sys/net/ipv4/ip_forward"), "0");
    let changed = ns.block_on(async {
        let proc_sys = std::path::Path::new(kernel::DEFAULT_PROC_SYS);
        let first = kernel::enable_forwarding(proc_sys, false).unwrap();
        let second = kernel::enable_forwarding(proc_sys, false).unwrap();
        (first, second)
    });
    assert_eq!(changed, (true, false));
    assert_eq!(ns.cat("/proc/sys/net/ipv4/ip_forward"), "1");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_before,
        "the host's setting must not change"
    );
}
