//! The network agent end to end: a real `kube::Client` on a fake API
//! serving Nodes, the agent running inside a throwaway network namespace
//! (root needed), its conflist in a temporary directory, its routes and
//! sysctls in the namespace's kernel.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use kube::api::ObjectMeta;
use tokio_util::sync::CancellationToken;

use cni::config::CONFLIST_FILE;
use cni::AgentConfig;
use support::fake_api::FakeApi;
use support::{eventually, Netns};

fn node(name: &str, ip: &str, pod_cidr: Option<&str>) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: pod_cidr.map(str::to_string),
            pod_cidrs: pod_cidr.map(|c| vec![c.to_string()]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
            ]),
            ..NodeStatus::default()
        }),
    }
}

#[test]
fn agent_writes_the_conflist_and_follows_nodes_with_routes() {
    support::init_logs();
    let ns = Netns::new("10.0.0.1/24");
    // A route of ours left from before (its node is gone) and one of
    // someone else's.
    ns.ip(&[
        "route",
        "add",
        "10.244.7.0/24",
        "via",
        "10.0.0.7",
        "proto",
        "83",
    ]);
    ns.ip(&[
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        "10.0.0.9",
        "proto",
        "static",
    ]);
    let conf = tempfile::tempdir().unwrap();
    let conflist = conf.path().join("net.d").join(CONFLIST_FILE);

    // This node has no podCIDR yet; n2 has one; n3 has none yet.
    let api = FakeApi::new(vec![
        node("n1", "10.0.0.1", None),
        node("n2", "10.0.0.2", Some("10.244.2.0/24")),
        node("n3", "10.0.0.3", None),
    ]);
    let mut cfg = AgentConfig::new("10.244.0.0/16".parse().unwrap());
    cfg.conf_dir = conf.path().join("net.d");
    // Long: every change below must come from a Node event, not the timer.
    cfg.resync = Duration::from_secs(600);

    ns.block_on(async {
        let cancel = CancellationToken::new();
        let agent = tokio::spawn(cni::run(
            api.client(),
            "n1".to_string(),
            cfg,
            cancel.clone(),
        ));

        eventually("the route to n2 and the stale route gone", 10, || {
            ns.our_routes(false) == ["10.244.2.0/24 via 10.0.0.2"]
        })
        .await;
        assert_eq!(ns.cat("/proc/sys/net/ipv4/ip_forward"), "1");
        assert!(
            !conflist.exists(),
            "no conflist before this node has a podCIDR"
        );

        api.apply(node("n1", "10.0.0.1", Some("10.244.1.0/24")));
        eventually("the conflist", 10, || conflist.exists()).await;
        let text = std::fs::read_to_string(&conflist).unwrap();
        let want = cni::render_conflist(&cni::CniConfig {
            conf_dir: conf.path().join("net.d"),
            ..cni::CniConfig::new(
                "10.244.1.0/24".parse().unwrap(),
                "10.244.0.0/16".parse().unwrap(),
            )
        });
        assert_eq!(text, want);
        // Pod traffic is masqueraded only when it leaves the cluster network.
        let nat = support::run(
            "ip",
            &[
                "netns",
                "exec",
                &ns.name,
                "iptables",
                "-w",
                "-t",
                "nat",
                "-S",
                "POSTROUTING",
            ],
        );
        assert_eq!(
            cni::masq::ours(&nat),
            vec![cni::masq::rule("10.244.0.0/16".parse().unwrap())],
            "{nat}"
        );

        api.apply(node("n3", "10.0.0.3", Some("10.244.3.0/24")));
        eventually("the route to n3", 10, || {
            ns.our_routes(false) == ["10.244.2.0/24 via 10.0.0.2", "10.244.3.0/24 via 10.0.0.3"]
        })
        .await;

        api.apply(node("n2", "10.0.0.22", Some("10.244.2.0/24")));
        eventually("n2's route via its new address", 10, || {
            ns.our_routes(false) == ["10.244.2.0/24 via 10.0.0.22", "10.244.3.0/24 via 10.0.0.3"]
        })
        .await;

        api.delete("n3");
        eventually("n3's route gone", 10, || {
            ns.our_routes(false) == ["10.244.2.0/24 via 10.0.0.22"]
        })
        .await;

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), agent)
            .await
            .expect("the agent stops when cancelled")
            .unwrap()
            .unwrap();
    });
    assert!(
        ns.all_routes()
            .contains(&"10.244.9.0/24 via 10.0.0.9 proto static".to_string()),
        "someone else's route was touched"
    );
}

#[test]
fn agent_refuses_an_invalid_configuration() {
    let api = FakeApi::new(vec![]);
    let mut cfg = AgentConfig::new("10.244.0.0/16".parse().unwrap());
    cfg.bridge = "a/b".into();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(async {
            cni::run(api.client(), "n1".into(), cfg, CancellationToken::new()).await
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid bridge name"), "{e}");
}
