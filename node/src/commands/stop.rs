//! `selfnode stop`: a node stop. The agent (if one runs) is asked to stop
//! every container with it; containers an earlier agent stop left running
//! are stopped without an agent. Afterwards nothing of the node runs.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::agent::control::RunningAgent;
use crate::agent::{drain, lock};
use crate::cli::StopArgs;
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
    stop_leftovers(paths, args.bundle.as_deref()).await?;
    println!("node stopped: no container of this host runs; start it with 'selfnode agent' (or systemctl start selfnode-agent)");
    Ok(ExitCode::SUCCESS)
}

/// Stops what an agent stop left running (the caller holds the agent lock)
/// and says what it did. Shared by `stop` and `reset`.
pub(crate) async fn stop_leftovers(
    paths: &HostPaths,
    bundle: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let tasks = drain::live_tasks(paths);
    if tasks.is_empty() {
        drain::release_host(paths);
        return Ok(());
    }
    let dir = bundle.map_or_else(|| paths.default_bundle(), std::path::Path::to_path_buf);
    let bundle = dist::bundle::Bundle::open(&dir).with_context(|| {
        format!(
            "{} container(s) of an earlier agent still run and stopping them needs the bundle's containerd; pass --bundle DIR",
            tasks.len()
        )
    })?;
    eprintln!(
        "[stop] {} container(s) left running by an agent stop: stopping them through containerd",
        tasks.len()
    );
    let stopped = drain::drain_without_agent(paths, &bundle).await?;
    eprintln!("[stop] stopped {stopped} container(s)");
    Ok(())
}
