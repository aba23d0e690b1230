//! Masquerading of pod traffic that leaves the cluster network, and only
//! that: one NAT rule per node,
//! `-s <cluster CIDR> ! -d <cluster CIDR> -j MASQUERADE`. Traffic between
//! pods of different nodes keeps the pod's source address (the bridge
//! plugin's own `ipMasq` would rewrite everything leaving the node's pod
//! subnet, pod-to-pod across nodes included; it is off in the conflist).
//!
//! The rule carries [`COMMENT`], which is how it is found again (the
//! network agent adds it, `selfnode reset` removes it).

use ipnet::IpNet;

use crate::iptables::{run, split_rule, IptablesError};

/// The comment of selfnode's masquerade rule.
pub const COMMENT: &str = "selfnode: pod traffic leaving the cluster network";

/// The rule's spec after `-A POSTROUTING`, for `cluster_cidr`.
pub fn rule(cluster_cidr: IpNet) -> Vec<String> {
    let cidr = cluster_cidr.trunc().to_string();
    [
        "-s",
        &cidr,
        "!",
        "-d",
        &cidr,
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        "MASQUERADE",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Adds the rule for `cluster_cidr` unless it is there, and removes
/// selfnode's rules for any other CIDR (a cluster made again with another
/// pod network). Returns whether it changed something.
///
/// Errors: the iptables tool cannot be run or failed.
pub fn ensure(cluster_cidr: IpNet) -> Result<bool, IptablesError> {
    let ipv6 = cluster_cidr.addr().is_ipv6();
    let want = rule(cluster_cidr);
    let mut changed = false;
    let listing = list(ipv6)?;
    for other in ours(&listing) {
        if other != want {
            delete(ipv6, &other)?;
            changed = true;
        }
    }
    if !ours(&listing).contains(&want) {
        let mut add = vec!["-w", "-t", "nat", "-A", "POSTROUTING"];
        add.extend(want.iter().map(String::as_str));
        run(ipv6, &add)?;
        changed = true;
    }
    Ok(changed)
}

/// Removes every selfnode masquerade rule (IPv4 and IPv6); returns how
/// many. A missing `ip6tables` or IPv6 NAT table is not an error.
pub fn remove_all() -> Result<usize, IptablesError> {
    let mut removed = 0;
    for ipv6 in [false, true] {
        let listing = match list(ipv6) {
            Ok(l) => l,
            Err(_) if ipv6 => continue,
            Err(e) => return Err(e),
        };
        for r in ours(&listing) {
            delete(ipv6, &r)?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn list(ipv6: bool) -> Result<String, IptablesError> {
    run(ipv6, &["-w", "-t", "nat", "-S", "POSTROUTING"])
}

fn delete(ipv6: bool, spec: &[String]) -> Result<(), IptablesError> {
    let mut args = vec!["-w", "-t", "nat", "-D", "POSTROUTING"];
    args.extend(spec.iter().map(String::as_str));
    run(ipv6, &args).map(|_| ())
}

/// selfnode's rules in `iptables -t nat -S POSTROUTING` output, each as its
/// spec after `-A POSTROUTING`.
pub fn ours(listing: &str) -> Vec<Vec<String>> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("-A POSTROUTING "))
        .map(split_rule)
        .filter(|words| words.iter().any(|w| w == COMMENT))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_spares_traffic_inside_the_cluster_network_and_is_found_again() {
        let cidr: IpNet = "10.244.0.0/16".parse().unwrap();
        let r = rule(cidr);
        assert_eq!(
            r.join(" "),
            format!(
                "-s 10.244.0.0/16 ! -d 10.244.0.0/16 -m comment --comment {COMMENT} -j MASQUERADE"
            )
        );
        // As iptables -S prints it (the comment quoted).
        let listing = format!(
            "-P POSTROUTING ACCEPT\n-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -m comment --comment \"{COMMENT}\" -j MASQUERADE\n"
        );
        assert_eq!(ours(&listing), vec![r]);
    }
}
