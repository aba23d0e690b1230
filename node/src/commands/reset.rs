use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use crate::cli::ResetArgs;
use crate::control::lock;
use crate::control::RunningAgent;
use crate::paths::HostPaths;
use crate::sequences::reset::{self, ResetContext};

/// `selfnode reset`: forget the cluster on this host (the plan is
/// `sequences::reset`). Refused while the agent runs; asks before it
/// deletes anything unless `--force`.
pub async fn run(paths: &HostPaths, args: ResetArgs) -> anyhow::Result<ExitCode> {
    if let Some(agent) = RunningAgent::find(paths) {
        anyhow::bail!(
            "the selfnode agent is running ({agent}); stop the node first ('selfnode stop', or systemctl stop selfnode-agent), then run reset again"
        );
    }
    // No agent may start while the host is taken apart.
    let _lock = lock::acquire(&paths.agent_lock())?;
    let present = reset::cluster_state(paths);
    if !present.is_empty() && !args.force {
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
    let ctx = ResetContext {
        paths: paths.clone(),
        bundle_dir: args.bundle.unwrap_or_else(|| paths.default_bundle()),
        quiet: false,
    };
    reset::run(&ctx).await?;
    if present.is_empty() {
        println!("nothing to reset: this host held no cluster state");
    } else {
        println!("this host no longer belongs to a cluster; 'selfnode init' or 'selfnode join' can start again");
    }
    Ok(ExitCode::SUCCESS)
}
