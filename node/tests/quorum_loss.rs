//! Quorum lost for good, end to end on real components: a three-host
//! control plane loses two hosts at once and for good; `selfnode recover
//! --force-new-cluster` on the survivor makes a one-member etcd from its own
//! data (nothing written before the loss is lost, however new), and two
//! fresh hosts join as control plane until etcd has three voters again.

mod support;

use std::time::Duration;
use support::{join_control_plane, text, wait_voters, Lan, TestHost};

#[test]
fn the_survivor_of_a_quorum_loss_keeps_its_data_and_the_cluster_grows_back() {
    let lan = Lan::create();
    let (first, mut second, mut third, node1) = support::three_control_plane_hosts(&lan);

    // While the cluster has its quorum, --force-new-cluster is refused.
    let out = first
        .selfnode()
        .args(["recover", "--force-new-cluster"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("etcd has a quorum") && text(&out).contains("node2"),
        "{}",
        text(&out)
    );

    // A snapshot, then an object newer than it: what a restore would lose.
    first.snapshot_save("before-the-loss.db");
    first.kubectl_ok(&[
        "create",
        "configmap",
        "newer-than-the-snapshot",
        "--from-literal=written=before-the-loss",
    ]);

    // Two hosts gone at once, for good: no quorum, no API.
    second.power_cut();
    third.power_cut();
    support::retry("the API to stop serving", Duration::from_secs(120), || {
        let out = first.kubectl(&["get", "--raw", "/readyz", "--request-timeout=5s"]);
        if out.status.success() {
            Err("the API still serves".into())
        } else {
            Ok(())
        }
    });
    drop(second);
    drop(third);

    let out = first
        .selfnode()
        .args(["recover", "--force-new-cluster"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "recover --force-new-cluster: {}\n{}",
        text(&out),
        first.agent_log()
    );
    wait_voters(&first, &[&node1], Duration::from_secs(60));
    let written = first.kubectl_ok(&[
        "get",
        "configmap",
        "newer-than-the-snapshot",
        "-o",
        "jsonpath={.data.written}",
    ]);
    assert_eq!(written.trim(), "before-the-loss");
    // Run again, it converges: nothing to do but say so.
    let out = first
        .selfnode()
        .args(["recover", "--force-new-cluster"])
        .output()
        .unwrap();
    assert!(out.status.success(), "again: {}", text(&out));
    assert!(
        text(&out).contains("already this member alone"),
        "{}",
        text(&out)
    );

    // Two fresh hosts join as control plane: three voters again. The lost
    // hosts' Nodes go first (their names are taken otherwise).
    first.kubectl_ok(&["delete", "node", "node2", "node3"]);
    let mut fourth = TestHost::in_netns(&first, &lan, 4);
    join_control_plane(&first, &mut fourth, "node4");
    let mut fifth = TestHost::in_netns(&first, &lan, 5);
    join_control_plane(&first, &mut fifth, "node5");
    wait_voters(
        &first,
        &[&node1, "node4", "node5"],
        Duration::from_secs(300),
    );
    first.kubectl_ok(&["get", "--raw", "/readyz"]);
}
