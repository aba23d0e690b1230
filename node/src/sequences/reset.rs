//! `selfnode reset`: forget the cluster on this host, as a plan over the
//! sequences' runner. The agent must be stopped first (the caller holds its
//! lock, so none starts meanwhile). A control-plane host first leaves the
//! cluster's etcd (quorum-safe: refused, before anything else, when the
//! members that stay could not form a quorum), so the others do not keep a
//! member that will never answer again. Containers an agent stop left running
//! are stopped (as `selfnode stop` does) and their mounts released; then
//! the cluster's state goes, and what the cluster left in the host's
//! network (kube-proxy's rules, the pod bridge, selfnode's routes, the
//! pods' NAT rules). Kept: the bundle, containerd's images and the
//! scheduled etcd snapshots (what a restore starts from). Every step
//! converges, so a reset killed anywhere and run again finishes.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::paths::HostPaths;
use crate::sequences::plan::{steps, Action, Plan};
use crate::sequences::runner::{self, StepReport};

steps! {
    /// One step of `selfnode reset`.
    pub enum ResetStep {
        /// This host's etcd member, removed from a cluster that has others.
        LeaveEtcdCluster => "leave_etcd_cluster",
        /// Containers an agent stop left running, stopped through the
        /// bundle's containerd; their mounts and pod IP leases released.
        StopLeftovers => "stop_leftovers",
        /// The cluster's files on this host (see [`cluster_state`]).
        RemoveClusterState => "remove_cluster_state",
        /// kube-proxy's iptables rules (`kube-proxy --cleanup`).
        RemoveKubeProxyRules => "remove_kube_proxy_rules",
        /// The pod bridge, selfnode's routes, the pods' NAT rules and the
        /// kubelet's canary chains.
        RemovePodNetwork => "remove_pod_network",
    }
}

type Runner = runner::Runner<ResetStep>;

/// What reset runs with.
pub struct ResetContext {
    pub paths: HostPaths,
    /// Where the bundle is (its containerd stops leftover containers, its
    /// kube-proxy removes its rules).
    pub bundle_dir: PathBuf,
    pub quiet: bool,
}

/// Every step, in order: reset has nothing to skip.
pub fn plan() -> Plan<ResetStep> {
    let run = Some(Action::Run);
    Plan::one_lane(
        "reset",
        &[
            (ResetStep::LeaveEtcdCluster, run),
            (ResetStep::StopLeftovers, run),
            (ResetStep::RemoveClusterState, run),
            (ResetStep::RemoveKubeProxyRules, run),
            (ResetStep::RemovePodNetwork, run),
        ],
    )
}

/// The cluster's files on this host that exist now: what reset removes.
pub fn cluster_state(paths: &HostPaths) -> Vec<PathBuf> {
    let mut targets: Vec<PathBuf> = vec![
        paths.kubeconfig_dir(),
        paths.checkpoint_dir(),
        paths.checkpoint_index(),
        paths.services_dir(),
        paths.etcd_data_dir(),
        paths.temp_etcd_data_dir(),
        paths.etcd_manifest(),
        paths.apiservers_file(),
        paths.node_identity_file(),
        paths.address_move_marker(),
        // An upgrade's records: the next cluster starts from the agent's
        // --bundle, with no upgrade behind it.
        paths.host_bundle_file(),
        paths.upgrade_dir(),
        paths.kubelet_root(),
        paths.cni_conflist(),
        paths.agent_status(),
        // The cluster's container logs. The kubelet counts a static pod's
        // restarts from the files here when containerd has none, and a
        // static pod keeps its UID from cluster to cluster: left in place,
        // the next cluster's etcd showed the last one's 12 restarts.
        paths.pod_logs_dir(),
    ];
    // The data of members that left the cluster (moved aside by the agent
    // when the node lost its control-plane label): no member can use it.
    targets.extend(paths.removed_etcd_data_dirs());
    targets.retain(|p| p.exists());
    targets
}

/// Runs reset's plan (see the module docs).
pub async fn run(ctx: &ResetContext) -> anyhow::Result<Vec<StepReport>> {
    let plan = plan();
    let run = Runner::new(&plan, ctx.quiet);
    runner::run_plan(&plan, &run, |step| execute(step, &run, ctx)).await
}

async fn execute(step: ResetStep, run: &Runner, ctx: &ResetContext) -> anyhow::Result<StepReport> {
    match step {
        ResetStep::LeaveEtcdCluster => {
            run.converge(step, || leave_etcd_cluster(run, &ctx.paths))
                .await
        }
        ResetStep::StopLeftovers => {
            run.converge(step, || async {
                let stopped =
                    crate::agent::drain::stop_leftovers(&ctx.paths, Some(&ctx.bundle_dir)).await?;
                if stopped > 0 {
                    run.say(step, &format!("stopped {stopped} container(s)"));
                }
                Ok(stopped > 0)
            })
            .await
        }
        ResetStep::RemoveClusterState => {
            run.converge(step, || async { remove_cluster_state(run, &ctx.paths) })
                .await
        }
        ResetStep::RemoveKubeProxyRules => {
            run.converge(step, || async { remove_kube_proxy_rules(run, ctx) })
                .await
        }
        ResetStep::RemovePodNetwork => run.converge(step, || remove_pod_network(run)).await,
    }
}

/// `leave_etcd_cluster`: this host's member (recorded in its checkpoint)
/// out of the cluster's etcd, through this host's endpoint and every other
/// host's the balancer knows. Nothing to do for a host without a member,
/// a member already gone, or the cluster's last voting member (the cluster
/// goes with this host). A removal that would cost the others their quorum
/// is refused (etcd-mgr's check), and reset stops there. When no member
/// answers, or the cluster has no quorum to make the change, reset goes on
/// and says how to remove the member later.
async fn leave_etcd_cluster(run: &Runner, paths: &HostPaths) -> anyhow::Result<bool> {
    let step = ResetStep::LeaveEtcdCluster;
    let recorded = if paths.checkpoint_dir().exists() {
        crate::checkpoint::with_checkpoint(&paths.checkpoint_dir(), |c| c.etcd_member())
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let Some(member) = recorded else {
        return Ok(false);
    };
    let cfg = crate::etcd::cluster_config(paths, LEAVE_ASK);
    // Right after a membership change (a demote, another host's reset) etcd
    // may be electing a leader for a few seconds: ask again for a while
    // before leaving the member behind.
    let deadline = std::time::Instant::now() + LEAVE_ASK_FOR;
    let mut listed = etcd_mgr::members(&cfg).await;
    while listed.is_err() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        listed = etcd_mgr::members(&cfg).await;
    }
    let members = match listed {
        // Without a quorum no removal can be made; the member stays listed
        // and the host is reset (a cluster that lost its quorum is not
        // kept alive by refusing).
        Ok(m) | Err(etcd_mgr::EtcdError::NoLeader { members: m, .. })
            if !etcd_mgr::members::has_quorum(&m) =>
        {
            let answering = m.iter().filter(|m| m.healthy && !m.is_learner).count();
            let voters = m.iter().filter(|m| !m.is_learner).count();
            run.say(
                step,
                &format!(
                    "the cluster's etcd has no quorum ({answering} of {voters} voting members answer): this host's member {} ({}) stays in its list; once the cluster serves again, remove it on a control-plane host with 'selfnode etcd remove-member {}'",
                    member.name, member.id, member.name
                ),
            );
            return Ok(false);
        }
        Ok(m) | Err(etcd_mgr::EtcdError::NoLeader { members: m, .. }) => m,
        Err(e) => {
            run.say(
                step,
                &format!(
                    "no etcd member answers ({e}): this host's member {} ({}) stays in the cluster's list; once the cluster serves again, remove it on a control-plane host with 'selfnode etcd remove-member {}'",
                    member.name, member.id, member.name
                ),
            );
            return Ok(false);
        }
    };
    let Some(own) = members
        .iter()
        .find(|m| m.id.eq_ignore_ascii_case(&member.id) || m.name == member.name)
    else {
        return Ok(false);
    };
    let voters = members.iter().filter(|m| !m.is_learner).count();
    if !own.is_learner && voters <= 1 {
        run.say(
            step,
            "this host runs the cluster's only etcd member: the cluster goes with it",
        );
        return Ok(false);
    }
    match etcd_mgr::members::remove(&cfg, &own.id, LEAVE_TIMEOUT).await? {
        etcd_mgr::members::RemoveOutcome::Removed { id } => {
            run.say(
                step,
                &format!(
                    "removed this host's etcd member {} ({id:x}) from the cluster",
                    member.name
                ),
            );
            Ok(true)
        }
        etcd_mgr::members::RemoveOutcome::NotAMember => Ok(false),
    }
}

/// How long each etcd member is given to answer while leaving.
const LEAVE_ASK: std::time::Duration = std::time::Duration::from_secs(5);
/// How long the member list is asked for before the member is left
/// behind (an election after a membership change takes seconds).
const LEAVE_ASK_FOR: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the removal may be retried (etcd refuses it for a few seconds
/// after a peer connects).
const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `remove_cluster_state`: every file and directory of [`cluster_state`].
fn remove_cluster_state(run: &Runner, paths: &HostPaths) -> anyhow::Result<bool> {
    let present = cluster_state(paths);
    for p in &present {
        let result = if p.is_dir() {
            remove_dir(p)
        } else {
            std::fs::remove_file(p)
        };
        match result {
            Ok(()) => run.say(
                ResetStep::RemoveClusterState,
                &format!("removed {}", p.display()),
            ),
            // Inside a directory removed just before (the static pod in
            // etc/kubernetes).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
        }
    }
    Ok(!present.is_empty())
}

/// Removes a directory tree; a directory that is a mount point (the
/// kubelet's directory on its own disk) is emptied and kept.
fn remove_dir(dir: &Path) -> std::io::Result<()> {
    if !crate::agent::drain::is_mount_point(dir) {
        return std::fs::remove_dir_all(dir);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            remove_dir(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// `remove_kube_proxy_rules`: kube-proxy's own `--cleanup` (idempotent).
fn remove_kube_proxy_rules(run: &Runner, ctx: &ResetContext) -> anyhow::Result<bool> {
    let kube_proxy = ctx.bundle_dir.join("bin/kube-proxy");
    if !kube_proxy.is_file() {
        run.say(
            ResetStep::RemoveKubeProxyRules,
            &format!(
                "no {}: kube-proxy's iptables rules are left; pass --bundle DIR to remove them",
                kube_proxy.display()
            ),
        );
        return Ok(false);
    }
    let out = std::process::Command::new(&kube_proxy)
        .arg("--cleanup")
        .output()
        .with_context(|| format!("cannot run {}", kube_proxy.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "'{} --cleanup' failed: {}; kube-proxy's iptables rules may remain",
            kube_proxy.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(true)
}

/// `remove_pod_network`: the kubelet's canary chains, the pod bridge,
/// selfnode's routes and the pods' NAT rules. Says what it removed.
async fn remove_pod_network(run: &Runner) -> anyhow::Result<bool> {
    remove_kubelet_chains();
    let removed =
        cni::cleanup::remove_host_network(cni::config::DEFAULT_BRIDGE, cni::config::NETWORK_NAME)
            .await?;
    let mut what = Vec::new();
    if removed.bridge_removed {
        what.push(format!("the pod bridge {}", cni::config::DEFAULT_BRIDGE));
    }
    if removed.routes_removed > 0 {
        what.push(format!("{} pod network route(s)", removed.routes_removed));
    }
    if !removed.nat_chains_removed.is_empty() {
        what.push(format!(
            "{} pod NAT chain(s)",
            removed.nat_chains_removed.len()
        ));
    }
    if what.is_empty() {
        return Ok(false);
    }
    run.say(
        ResetStep::RemovePodNetwork,
        &format!("removed {}", what.join(", ")),
    );
    Ok(true)
}

/// The kubelet's iptables canaries (`KUBE-KUBELET-CANARY` in the mangle,
/// nat and filter tables, IPv4 and IPv6): empty, unreferenced chains it
/// creates to notice a flush. Missing chains and missing tools are fine.
fn remove_kubelet_chains() {
    for tool in ["iptables", "ip6tables"] {
        for table in ["mangle", "nat", "filter"] {
            let present = std::process::Command::new(tool)
                .args(["-w", "-t", table, "-S", "KUBE-KUBELET-CANARY"])
                .output()
                .is_ok_and(|o| o.status.success());
            if present {
                for op in ["-F", "-X"] {
                    let _ = std::process::Command::new(tool)
                        .args(["-w", "-t", table, op, "KUBE-KUBELET-CANARY"])
                        .output();
                }
            }
        }
    }
}
