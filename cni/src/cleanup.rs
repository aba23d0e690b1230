//! What `selfnode reset` removes of the pod network on a host, so that the
//! next cluster (with other CIDRs, say) starts clean: the bridge (it keeps
//! the old gateway address otherwise, and the bridge plugin refuses a
//! different one), selfnode's host-gateway routes, and the NAT rules and
//! chains the bridge plugin's `ipMasq` added for pods that were never
//! deleted through CNI (a node stopped with its pods), and selfnode's
//! masquerade rule ([`crate::masq`]).
//!
//! Only what is selfnode's is touched: the named bridge, routes marked
//! [`ROUTE_PROTOCOL`](crate::routes::ROUTE_PROTOCOL), and `CNI-*` chains whose POSTROUTING rule carries
//! the network's name in its comment.

use tokio_stream::StreamExt;

use crate::iptables::{split_rule, IptablesError};
use crate::routes::RouteTable;

/// What [`remove_host_network`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkCleanup {
    /// The bridge existed and was deleted.
    pub bridge_removed: bool,
    /// How many of selfnode's routes were deleted.
    pub routes_removed: usize,
    /// The `CNI-*` NAT chains deleted (with their POSTROUTING rules).
    pub nat_chains_removed: Vec<String>,
    /// How many of selfnode's masquerade rules were deleted.
    pub masquerade_rules_removed: usize,
}

/// Removing the host's pod network failed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// The routing netlink socket could not be used.
    #[error("cannot remove the pod network's routes")]
    Routes(#[from] crate::routes::RouteError),
    /// The bridge could not be listed or deleted.
    #[error("cannot remove the bridge {bridge}: {reason}")]
    Bridge {
        /// The bridge's name.
        bridge: String,
        /// What the kernel said.
        reason: String,
    },
    /// `iptables` cannot be run or failed.
    #[error("cannot remove the pod network's NAT rules")]
    Nat(#[source] IptablesError),
}

impl CleanupError {
    /// Never: every variant is the host refusing, which a retry or a fix
    /// of the host may cure (exit 1).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            CleanupError::Routes(_) | CleanupError::Bridge { .. } | CleanupError::Nat(_) => false,
        }
    }
}

/// Removes bridge `bridge`, selfnode's routes and the NAT rules of network
/// `network` (the conflist's `name`). Idempotent: what is already gone is
/// not an error. Must run inside a tokio runtime.
pub async fn remove_host_network(
    bridge: &str,
    network: &str,
) -> Result<NetworkCleanup, CleanupError> {
    let table = RouteTable::open()?;
    let routes_removed = table.reconcile(&[]).await?.deleted.len();
    let bridge_removed = delete_link(bridge).await?;
    let nat_chains_removed = remove_nat_rules(network)?;
    let masquerade_rules_removed = crate::masq::remove_all().map_err(CleanupError::Nat)?;
    Ok(NetworkCleanup {
        bridge_removed,
        routes_removed,
        nat_chains_removed,
        masquerade_rules_removed,
    })
}

async fn delete_link(name: &str) -> Result<bool, CleanupError> {
    let err = |reason: String| CleanupError::Bridge {
        bridge: name.to_string(),
        reason,
    };
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| err(e.to_string()))?;
    let conn = tokio::spawn(connection);
    let result = async {
        let mut links = handle.link().get().match_name(name.to_string()).execute();
        let index = match links.next().await {
            Some(Ok(link)) => link.header.index,
            // ENODEV: no such link.
            Some(Err(rtnetlink::Error::NetlinkError(m)))
                if m.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
            {
                return Ok(false)
            }
            Some(Err(e)) => return Err(err(e.to_string())),
            None => return Ok(false),
        };
        handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(true)
    }
    .await;
    conn.abort();
    result
}

/// The `CNI-*` chains that POSTROUTING rules for `network` jump to, from
/// `iptables -t nat -S POSTROUTING` output; with each rule's spec (after
/// `-A POSTROUTING`) for deletion.
pub fn nat_rules_for(network: &str, postrouting: &str) -> Vec<(String, Vec<String>)> {
    let marker = format!("name: \\\"{network}\\\"");
    let plain = format!("name: \"{network}\"");
    postrouting
        .lines()
        .filter(|l| l.starts_with("-A POSTROUTING "))
        .filter(|l| l.contains(&marker) || l.contains(&plain))
        .filter_map(|l| {
            let words = split_rule(l.trim_start_matches("-A POSTROUTING "));
            let chain = words
                .windows(2)
                .find(|w| w[0] == "-j" && w[1].starts_with("CNI-"))
                .map(|w| w[1].clone())?;
            Some((chain, words))
        })
        .collect()
}

fn iptables(args: &[&str]) -> Result<String, CleanupError> {
    crate::iptables::run(false, args).map_err(CleanupError::Nat)
}

fn remove_nat_rules(network: &str) -> Result<Vec<String>, CleanupError> {
    let listing = iptables(&["-w", "-t", "nat", "-S", "POSTROUTING"])?;
    let mut removed = Vec::new();
    for (chain, rule) in nat_rules_for(network, &listing) {
        let mut args = vec!["-w", "-t", "nat", "-D", "POSTROUTING"];
        args.extend(rule.iter().map(String::as_str));
        iptables(&args)?;
        // The chain may be shared by several rules; flush and delete once.
        if !removed.contains(&chain) {
            iptables(&["-w", "-t", "nat", "-F", &chain])?;
            iptables(&["-w", "-t", "nat", "-X", &chain])?;
            removed.push(chain);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `err` and its causes as `{:#}` prints an anyhow chain.
    fn chain(err: &dyn std::error::Error) -> String {
        let mut out = err.to_string();
        let mut next = err.source();
        while let Some(cause) = next {
            out.push_str(": ");
            out.push_str(&cause.to_string());
            next = cause.source();
        }
        out
    }

    #[test]
    fn a_nat_failure_shows_each_layer_once() {
        let e = CleanupError::Nat(IptablesError::Failed {
            program: "iptables",
            args: "-w -t nat -F CNI-0123".into(),
            status: "exit status: 1".into(),
            stderr: "iptables: No chain/target/match by that name.".into(),
        });
        assert_eq!(
            chain(&e),
            "cannot remove the pod network's NAT rules: iptables -w -t nat -F CNI-0123 failed \
             (exit status: 1): iptables: No chain/target/match by that name."
        );
    }

    #[test]
    fn only_this_networks_masquerade_rules_are_picked() {
        let listing = r#"-P POSTROUTING ACCEPT
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -s 10.244.0.2/32 -m comment --comment "name: \"selfnode\" id: \"abc\"" -j CNI-0123456789abcdef01234567
-A POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \"podman\" id: \"def\"" -j CNI-ffffffffffffffffffffffff
"#;
        let rules = nat_rules_for("selfnode", listing);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].0, "CNI-0123456789abcdef01234567");
        assert_eq!(
            rules[0].1,
            [
                "-s",
                "10.244.0.2/32",
                "-m",
                "comment",
                "--comment",
                "name: \"selfnode\" id: \"abc\"",
                "-j",
                "CNI-0123456789abcdef01234567"
            ]
        );
    }
}
