use std::process::ExitCode;

use anyhow::Context;

use crate::agent::lock;
use crate::cli::Output;
use crate::paths::HostPaths;
use crate::status::{human_age, now_unix, AgentStatus, ComponentState};

/// Shows the agent's published status. Exit code 0 when the agent runs and
/// every component is ready, 1 otherwise, so scripts can wait on it.
pub async fn run(paths: &HostPaths, output: Output) -> anyhow::Result<ExitCode> {
    let running = lock::running_agent(&paths.agent_lock());
    let file = paths.agent_status();
    let status: Option<AgentStatus> = match std::fs::read(&file) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not valid agent status", file.display()))?,
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", file.display())),
    };
    // On a host with an etcd member (the self-hosted static pod, or the
    // temporary one the agent runs during init): the members as etcd itself
    // sees them.
    let runs_etcd = paths.etcd_manifest().exists()
        || (running.is_some()
            && status
                .as_ref()
                .is_some_and(|s| s.components.iter().any(|c| c.name == "etcd")));
    let etcd = if runs_etcd {
        let mut cfg = crate::etcd::config(paths);
        cfg.timeout = std::time::Duration::from_secs(2);
        Some(
            etcd_mgr::members(&cfg)
                .await
                .map_err(|e| dist::error_chain(&e)),
        )
    } else {
        None
    };
    let snapshots = status.as_ref().and_then(|s| s.snapshots.clone());
    let etcd_healthy = match &etcd {
        Some(Ok(members)) => members.iter().all(|m| m.healthy),
        Some(Err(_)) => false,
        None => true,
    } && snapshots.as_ref().is_none_or(|s| s.last_error.is_none());
    let healthy = etcd_healthy
        && running.is_some()
        && status.as_ref().is_some_and(|s| {
            s.components
                .iter()
                .all(|c| c.state == ComponentState::Ready)
        });

    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "agent": {
                    "running": running.is_some(),
                    "pid": running.as_deref().and_then(|p| p.parse::<u32>().ok()),
                },
                "healthy": healthy,
                "status": status,
                "etcd": match &etcd {
                    Some(Ok(members)) => serde_json::json!({
                        "members": members,
                        "last_snapshot": snapshots.as_ref().and_then(|s| s.last.clone()),
                        "last_snapshot_time": snapshots.as_ref().and_then(|s| s.last_time),
                        "snapshots": snapshots,
                    }),
                    Some(Err(e)) => serde_json::json!({ "error": e, "snapshots": snapshots }),
                    None => serde_json::Value::Null,
                },
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Table => {
            print_table(running.as_deref(), status.as_ref(), paths);
            match &etcd {
                Some(Ok(members)) => {
                    for m in members {
                        let size = m
                            .db_size
                            .map(|s| format!(", db {:.1} MB", s as f64 / 1e6))
                            .unwrap_or_default();
                        let state = if m.healthy { "healthy" } else { "unhealthy" };
                        let leader = if m.is_leader { ", leader" } else { "" };
                        println!("etcd member {} ({}): {state}{leader}{size}", m.name, m.id);
                    }
                }
                Some(Err(e)) => println!("etcd: {e}"),
                None => {}
            }
            if let (Some(_), Some(s)) = (&etcd, &snapshots) {
                println!("{}", describe_snapshots(s, now_unix()));
            }
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_table(running: Option<&str>, status: Option<&AgentStatus>, paths: &HostPaths) {
    let now = now_unix();
    match (running, status) {
        (None, _) => {
            println!("agent: not running (start it with 'selfnode agent')");
            if let Some(st) = status {
                println!("last published state, {} ago:", human_age(st.updated, now));
            } else {
                return;
            }
        }
        (Some(pid), Some(st)) => println!(
            "agent: running, pid {pid}, up {}, bundle {}",
            human_age(st.started, now),
            st.bundle.display()
        ),
        (Some(pid), None) => {
            println!(
                "agent: running, pid {pid}, no status published yet ({})",
                paths.agent_status().display()
            );
            return;
        }
    }
    let Some(st) = status else { return };
    println!(
        "{:<12} {:<11} {:>8} {:>9} {:>8}  LOG / LAST ERROR",
        "COMPONENT", "STATE", "PID", "RESTARTS", "SINCE"
    );
    for c in &st.components {
        let state = if running.is_none() && c.state != ComponentState::Stopped {
            "unknown"
        } else {
            c.state.as_str()
        };
        let pid = c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let mut detail = c
            .log
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if let Some(d) = &c.detail {
            detail = d.clone();
        }
        if c.state != ComponentState::Ready {
            if let Some(e) = &c.last_error {
                detail = if detail.is_empty() {
                    e.clone()
                } else {
                    format!("{detail} ({e})")
                };
            }
        }
        println!(
            "{:<12} {:<11} {:>8} {:>9} {:>8}  {}",
            c.name,
            state,
            pid,
            c.restarts,
            human_age(c.since, now),
            detail
        );
    }
}

/// One line on the scheduled snapshots: the newest, how many, the schedule,
/// and the last failure if the last attempt failed.
fn describe_snapshots(s: &crate::status::SnapshotStatus, now: u64) -> String {
    let every = humantime::format_duration(std::time::Duration::from_secs(s.interval_seconds));
    let last = match (&s.last, s.last_time) {
        (Some(file), Some(t)) => format!("last {} ({} ago)", file.display(), human_age(t, now)),
        _ => "none yet".to_string(),
    };
    let mut line = format!(
        "etcd snapshots: {last}; {} kept (at most {}), every {every}",
        s.count, s.keep
    );
    if let Some(e) = &s.last_error {
        line.push_str(&format!("; LAST ATTEMPT FAILED: {e}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_line_says_when_and_what_failed() {
        let mut s = crate::status::SnapshotStatus {
            dir: "/var/lib/selfnode/snapshots".into(),
            interval_seconds: 6 * 3600,
            keep: 10,
            max_age_seconds: 7 * 86400,
            count: 2,
            last: Some("/var/lib/selfnode/snapshots/etcd-20261125T150000Z.db".into()),
            last_time: Some(1000),
            last_error: None,
            checked: 1100,
        };
        assert_eq!(
            describe_snapshots(&s, 1125),
            "etcd snapshots: last /var/lib/selfnode/snapshots/etcd-20261125T150000Z.db (2m5s ago); 2 kept (at most 10), every 6h"
        );
        s.last_error = Some("cannot reach etcd".into());
        s.last = None;
        s.last_time = None;
        assert!(describe_snapshots(&s, 1125).starts_with("etcd snapshots: none yet;"));
        assert!(describe_snapshots(&s, 1125).ends_with("LAST ATTEMPT FAILED: cannot reach etcd"));
    }
}
