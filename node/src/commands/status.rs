//! `selfnode status`: this host's agent, its components, and etcd as etcd
//! itself sees it. It answers within seconds whatever the state of the
//! cluster: its one network call, to etcd, has a deadline
//! ([`ETCD_DEADLINE`]), and what did not answer is named (exit 1).

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::cli::Output;
use crate::control::{read_status, RunningAgent};
use crate::paths::HostPaths;
use crate::status::{human_age, now_unix, AgentStatus, ComponentState, SnapshotStatus};

/// How long etcd gets to answer, all members included.
const ETCD_DEADLINE: Duration = Duration::from_secs(5);

/// `selfnode status -o json`.
#[derive(Debug, Serialize)]
struct StatusDoc {
    agent: AgentDoc,
    healthy: bool,
    status: Option<AgentStatus>,
    /// `null` on a host with no etcd member.
    etcd: Option<EtcdDoc>,
}

#[derive(Debug, Serialize)]
struct AgentDoc {
    running: bool,
    pid: Option<u32>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum EtcdDoc {
    Members {
        members: Vec<etcd_mgr::MemberStatus>,
        /// The cluster's raised alarms (NOSPACE, CORRUPT), as etcd lists
        /// them now.
        alarms: Vec<etcd_mgr::maintenance::Alarm>,
        last_snapshot: Option<std::path::PathBuf>,
        last_snapshot_time: Option<u64>,
        snapshots: Option<SnapshotStatus>,
    },
    Error {
        error: String,
        snapshots: Option<SnapshotStatus>,
    },
}

/// Shows the agent's published status. Exit code 0 when the agent runs and
/// every component is ready, 1 otherwise, so scripts can wait on it.
pub async fn run(paths: &HostPaths, output: Output) -> anyhow::Result<ExitCode> {
    let running = RunningAgent::find(paths);
    let status = read_status(paths)?;
    // On a host with an etcd member (the self-hosted static pod, or the
    // temporary one the agent runs during init): the members as etcd itself
    // sees them.
    let runs_etcd = paths.etcd_manifest().exists()
        || (running.is_some()
            && status
                .as_ref()
                .is_some_and(|s| s.components.iter().any(|c| c.name == "etcd")));
    let etcd = if runs_etcd {
        Some(etcd_members(paths).await)
    } else {
        None
    };
    let snapshots = status.as_ref().and_then(|s| s.snapshots.clone());
    let etcd_healthy = match &etcd {
        Some(Ok((members, alarms))) => members.iter().all(|m| m.healthy) && alarms.is_empty(),
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
            let doc = StatusDoc {
                agent: AgentDoc {
                    running: running.is_some(),
                    pid: running.as_ref().and_then(|a| a.pid),
                },
                healthy,
                etcd: etcd.as_ref().map(|e| match e {
                    Ok((members, alarms)) => EtcdDoc::Members {
                        members: members.clone(),
                        alarms: alarms.clone(),
                        last_snapshot: snapshots.as_ref().and_then(|s| s.last.clone()),
                        last_snapshot_time: snapshots.as_ref().and_then(|s| s.last_time),
                        snapshots: snapshots.clone(),
                    },
                    Err(e) => EtcdDoc::Error {
                        error: e.clone(),
                        snapshots: snapshots.clone(),
                    },
                }),
                status,
            };
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Table => {
            print_table(running.as_ref(), status.as_ref(), paths);
            match &etcd {
                Some(Ok((members, alarms))) => {
                    for a in alarms {
                        println!("etcd alarm: {a} raised; 'selfnode status' of the etcd-upkeep component says what it means and what the agent does");
                    }
                    for m in members {
                        let size = match (m.db_size, m.db_size_in_use) {
                            (Some(s), Some(u)) => format!(
                                ", db {:.1} MB (in use {:.1} MB)",
                                s as f64 / 1e6,
                                u as f64 / 1e6
                            ),
                            (Some(s), None) => format!(", db {:.1} MB", s as f64 / 1e6),
                            _ => String::new(),
                        };
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

/// The members and the raised alarms as etcd sees them, within
/// [`ETCD_DEADLINE`]; the error names what did not answer.
async fn etcd_members(
    paths: &HostPaths,
) -> Result<
    (
        Vec<etcd_mgr::MemberStatus>,
        Vec<etcd_mgr::maintenance::Alarm>,
    ),
    String,
> {
    let mut cfg = crate::etcd::config(paths);
    cfg.timeout = Duration::from_secs(2);
    let both = async {
        let members = etcd_mgr::members(&cfg).await?;
        let alarms = etcd_mgr::maintenance::alarms(&cfg).await?;
        Ok::<_, etcd_mgr::EtcdError>((members, alarms))
    };
    match tokio::time::timeout(ETCD_DEADLINE, both).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => Err(format!("{:#}", anyhow::Error::new(e))),
        Err(_) => Err(format!(
            "no answer in {}s from the etcd member at {} (without a leader, for example with too few members for a quorum, etcd does not answer)",
            ETCD_DEADLINE.as_secs(),
            cfg.endpoints.join(", ")
        )),
    }
}

fn print_table(running: Option<&RunningAgent>, status: Option<&AgentStatus>, paths: &HostPaths) {
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
        (Some(agent), Some(st)) => println!(
            "agent: running, {agent}, up {}, bundle {}",
            human_age(st.started, now),
            st.bundle.display()
        ),
        (Some(agent), None) => {
            println!(
                "agent: running, {agent}, no status published yet ({})",
                paths.agent_status().display()
            );
            return;
        }
    }
    let Some(st) = status else { return };
    println!(
        "{:<14} {:<11} {:>8} {:>9} {:>8}  LOG / LAST ERROR",
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
            "{:<14} {:<11} {:>8} {:>9} {:>8}  {}",
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
fn describe_snapshots(s: &SnapshotStatus, now: u64) -> String {
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
        let mut s = SnapshotStatus {
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
