//! A control-plane host's address changes (DHCP, re-addressing), end to end
//! on real components: three control-plane hosts; the third is moved to
//! another address on the test LAN while its agent is stopped (its
//! containers keep running on the old address), then its agent starts
//! again. It comes back as the same node at the new address: its Node's
//! InternalIP, its etcd member's peer URL (changed through the other
//! members' quorum), its API server in the `kubernetes` EndpointSlice, all
//! three etcd members healthy voters.

mod support;

use std::time::Duration;
use support::{retry, text, wait_voters, Lan, TestHost};

#[test]
fn a_control_plane_host_that_changes_address_comes_back_as_the_same_node() {
    let lan = Lan::create();
    let (first, _second, mut third, node1) = support::three_control_plane_hosts(&lan);
    let nodes_before = first.kubectl_ok(&["get", "nodes", "-o", "name"]);

    // The move: the agent stops (its containers keep running, on an address
    // the host no longer has), the address changes, the agent starts.
    let status = third.stop_agent(Duration::from_secs(60));
    assert!(status.success(), "agent stop: {status:?}");
    third.netns.as_mut().unwrap().readdress(&lan, 13);
    third.start_agent();

    retry(
        "Node node3 to show its new InternalIP 198.18.0.13",
        Duration::from_secs(180),
        || {
            let out = first.kubectl(&[
                "get",
                "node",
                "node3",
                "-o",
                "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
            ]);
            match text(&out).trim() {
                "198.18.0.13" => Ok(()),
                other => Err(other.to_string()),
            }
        },
    );
    retry(
        "node3's etcd member at https://198.18.0.13:2380",
        Duration::from_secs(240),
        || {
            let list = support::member_list(&first)?;
            let node3 = list.iter().find(|m| m["name"] == "node3");
            match node3.map(|m| m["peer_urls"].clone()) {
                Some(urls) if urls == serde_json::json!(["https://198.18.0.13:2380"]) => Ok(()),
                _ => Err(format!("{list:?}\n{}", third.agent_log())),
            }
        },
    );
    wait_voters(
        &first,
        &[&node1, "node2", "node3"],
        Duration::from_secs(240),
    );
    retry(
        "node3's API server in the kubernetes EndpointSlice at 198.18.0.13, not 198.18.0.3",
        Duration::from_secs(240),
        || {
            let out = first.kubectl(&[
                "get",
                "endpointslice",
                "kubernetes",
                "-n",
                "default",
                "-o",
                "jsonpath={.endpoints[*].addresses[*]}",
            ]);
            let addrs = text(&out);
            let list: Vec<&str> = addrs.split_whitespace().collect();
            if list.contains(&"198.18.0.13") && !list.contains(&"198.18.0.3") {
                Ok(())
            } else {
                Err(addrs)
            }
        },
    );
    // The same node, not a new one; the cluster writes.
    assert_eq!(
        first.kubectl_ok(&["get", "nodes", "-o", "name"]),
        nodes_before
    );
    first.kubectl_ok(&["create", "configmap", "after-the-move"]);
    let address = TestHost::component(&third.status(), "address").clone();
    assert!(
        address["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("198.18.0.13")),
        "{address}"
    );
    assert!(
        third
            .agent_log()
            .contains("this host's address changed while the agent was away"),
        "{}",
        third.agent_log()
    );
}
