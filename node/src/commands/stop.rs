//! `selfnode stop`: a node stop. The agent (if one runs) is asked to stop
//! every container with it; containers an earlier agent stop left running
//! are stopped without an agent. Afterwards nothing of the node runs.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::agent::drain;
use crate::cli::StopArgs;
use crate::control::lock;
use crate::control::RunningAgent;
use crate::paths::HostPaths;

pub async fn run(paths: &HostPaths, args: StopArgs) -> anyhow::Result<ExitCode> {
    let lock_file = paths.agent_lock();
    if let Some(agent) = RunningAgent::find(paths) {
        agent.signal(crate::agent::NODE_STOP_SIGNAL)?;
        eprintln!(
            "[stop] asked the agent ({agent}) to stop the node: kubelet, containers, containerd"
        );
        let started = Instant::now();
        while lock::running_agent(&lock_file).is_some() {
            if started.elapsed() > args.timeout {
                anyhow::bail!(
                    "the agent ({agent}) has not stopped within {}s; see its log, or run 'selfnode stop' again with a longer --timeout",
                    args.timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "[stop] the agent stopped after {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    // Hold the lock so no agent starts while containers are being stopped.
    let _lock = lock::acquire(&lock_file)?;
    let stopped = drain::stop_leftovers(paths, args.bundle.as_deref()).await?;
    if stopped > 0 {
        eprintln!("[stop] stopped {stopped} container(s) left running by an agent stop");
    }
    println!("node stopped: no container of this host runs; start it with 'selfnode agent' (or systemctl start selfnode-agent)");
    Ok(ExitCode::SUCCESS)
}
