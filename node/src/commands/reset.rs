use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::agent::lock;
use crate::cli::ResetArgs;
use crate::paths::HostPaths;

/// `selfnode reset`: forget the cluster on this host. The agent must be
/// stopped first; containers an agent stop left running are stopped (as
/// `selfnode stop` does) and their mounts released; reset then removes the cluster's state and what the cluster
/// left in the host's network (the pod bridge, selfnode's routes, the pods'
/// NAT rules, kube-proxy's rules) and the pods' logs, and keeps the bundle, containerd's
/// images and the scheduled etcd snapshots (they are what a restore starts
/// from).
pub async fn run(paths: &HostPaths, args: ResetArgs) -> anyhow::Result<ExitCode> {
    if let Some(agent) = crate::agent::control::RunningAgent::find(paths) {
        anyhow::bail!(
            "the selfnode agent is running ({agent}); stop the node first ('selfnode stop', or systemctl stop selfnode-agent), then run reset again"
        );
    }
    // No agent may start while the host is taken apart.
    let _lock = lock::acquire(&paths.agent_lock())?;
    let mut targets: Vec<PathBuf> = vec![
        paths.kubeconfig_dir(),
        paths.checkpoint_dir(),
        paths.state_dir().join("checkpoint.index.json"),
        paths.services_dir(),
        paths.etcd_data_dir(),
        paths.temp_etcd_data_dir(),
        paths.etcd_manifest(),
        paths.apiservers_file(),
        paths.node_identity_file(),
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
    if let Ok(entries) = std::fs::read_dir(paths.state_dir()) {
        let mut removed: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("etcd.removed-"))
            .map(|e| e.path())
            .collect();
        removed.sort();
        targets.extend(removed);
    }
    let present: Vec<&PathBuf> = targets.iter().filter(|p| p.exists()).collect();
    if present.is_empty() {
        super::stop::stop_leftovers(paths, args.bundle.as_deref()).await?;
        reset_network(paths, args.bundle.as_deref()).await?;
        println!("nothing to reset: this host holds no cluster state");
        return Ok(ExitCode::SUCCESS);
    }
    if !args.force {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("reset deletes this host's cluster state (certificates, etcd data, kubelet state); pass --force to confirm");
        }
        eprintln!("This deletes the cluster state of this host:");
        for p in &present {
            eprintln!("  {}", p.display());
        }
        eprint!("Continue? [y/N] ");
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer).ok();
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("reset aborted; nothing changed");
            return Ok(ExitCode::from(1));
        }
    }
    // An agent stop leaves the containers running; the kubelet leaves pod
    // volume mounts when it is stopped abruptly.
    super::stop::stop_leftovers(paths, args.bundle.as_deref()).await?;
    for p in present {
        let result = if p.is_dir() {
            remove_dir(p)
        } else {
            std::fs::remove_file(p)
        };
        match result {
            Ok(()) => eprintln!("[reset] removed {}", p.display()),
            // Inside a directory removed just before (the static pod in
            // etc/kubernetes).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
        }
    }
    reset_network(paths, args.bundle.as_deref()).await?;
    println!("this host no longer belongs to a cluster; 'selfnode init' or 'selfnode join' can start again");
    Ok(ExitCode::SUCCESS)
}

/// Removes a directory tree; a directory that is a mount point (the
/// kubelet's directory on its own disk) is emptied and kept.
fn remove_dir(dir: &std::path::Path) -> std::io::Result<()> {
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

/// What the cluster left in the host's network: kube-proxy's rules (its
/// own `--cleanup`), then the pod network's bridge, routes and NAT rules.
/// Idempotent; says what it removed.
async fn reset_network(paths: &HostPaths, bundle: Option<&std::path::Path>) -> anyhow::Result<()> {
    let bundle = bundle.map_or_else(|| paths.default_bundle(), std::path::Path::to_path_buf);
    let kube_proxy = bundle.join("bin/kube-proxy");
    if kube_proxy.is_file() {
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
        eprintln!("[reset] removed kube-proxy's rules (kube-proxy --cleanup)");
    } else {
        eprintln!(
            "[reset] no {}: kube-proxy's iptables rules are left; pass --bundle DIR to remove them",
            kube_proxy.display()
        );
    }
    remove_kubelet_chains();
    let removed =
        cni::cleanup::remove_host_network(cni::config::DEFAULT_BRIDGE, cni::config::NETWORK_NAME)
            .await?;
    if removed.bridge_removed {
        eprintln!(
            "[reset] removed the pod bridge {}",
            cni::config::DEFAULT_BRIDGE
        );
    }
    if removed.routes_removed > 0 {
        eprintln!(
            "[reset] removed {} pod network route(s)",
            removed.routes_removed
        );
    }
    if !removed.nat_chains_removed.is_empty() {
        eprintln!(
            "[reset] removed {} pod NAT chain(s)",
            removed.nat_chains_removed.len()
        );
    }
    Ok(())
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
