//! The agent's published state: what `selfnode status` reads.
//!
//! The agent owns the file (`run/selfnode/agent.json`) and rewrites it
//! atomically whenever a component changes state, and every few seconds as a
//! heartbeat. Readers never trust it alone: the agent's lock tells whether the
//! writer is still alive.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentState {
    /// Not started yet (waiting for a component it depends on).
    Pending,
    /// Process running, readiness check not passed yet.
    Starting,
    /// Running and its readiness check passes.
    Ready,
    /// Running but its health check fails.
    Unhealthy,
    /// Exited; waiting out the back-off before the next start.
    Restarting,
    /// Stopped on purpose (agent shutting down).
    Stopped,
    /// A one-shot task (image import) that failed; it is retried.
    Failed,
}

impl ComponentState {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentState::Pending => "pending",
            ComponentState::Starting => "starting",
            ComponentState::Ready => "ready",
            ComponentState::Unhealthy => "unhealthy",
            ComponentState::Restarting => "restarting",
            ComponentState::Stopped => "stopped",
            ComponentState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub state: ComponentState,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Unix seconds of the last state change.
    pub since: u64,
    /// Why the last run ended, or why the last attempt failed.
    pub last_error: Option<String>,
    /// What it is doing, for people (the checkpoint: which copy serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// An agent task's passes so far (successful or not): what shows that
    /// it looked again. `None` for supervised processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passes: Option<u64>,
    pub log: Option<PathBuf>,
}

impl ComponentStatus {
    pub fn new(name: &str, log: Option<PathBuf>) -> Self {
        ComponentStatus {
            name: name.to_string(),
            state: ComponentState::Pending,
            pid: None,
            restarts: 0,
            since: now_unix(),
            last_error: None,
            detail: None,
            passes: None,
            log,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub version: String,
    pub started: u64,
    /// Unix seconds of the last write; a heartbeat.
    pub updated: u64,
    pub bundle: PathBuf,
    /// The API load balancer's port on loopback (`--api-lb-port`): what
    /// `init` writes into every kubeconfig. Absent in files of older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_lb_port: Option<u16>,
    pub components: Vec<ComponentStatus>,
    /// Scheduled etcd snapshots, on hosts with an etcd member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotStatus>,
}

/// The scheduled etcd snapshots as the agent last saw them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    pub dir: PathBuf,
    pub interval_seconds: u64,
    pub keep: usize,
    pub max_age_seconds: u64,
    /// Scheduled snapshots on disk.
    pub count: usize,
    /// The newest one and when it was taken (Unix seconds).
    pub last: Option<PathBuf>,
    pub last_time: Option<u64>,
    /// Why the last attempt failed; `None` after a success.
    pub last_error: Option<String>,
    /// Unix seconds of the agent's last look.
    pub checked: u64,
}

impl AgentStatus {
    pub fn component_mut(&mut self, name: &str) -> Option<&mut ComponentStatus> {
        self.components.iter_mut().find(|c| c.name == name)
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// "3s", "4m10s", "2h5m", "3d4h": how long ago `since` was.
pub fn human_age(since: u64, now: u64) -> String {
    let s = now.saturating_sub(since);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_age(100, 100), "0s");
        assert_eq!(human_age(0, 250), "4m10s");
        assert_eq!(human_age(0, 7500), "2h5m");
        assert_eq!(human_age(0, 3 * 86400 + 4 * 3600), "3d4h");
        assert_eq!(human_age(200, 100), "0s", "clock skew never underflows");
    }

    #[test]
    fn status_round_trips_through_json() {
        let mut st = AgentStatus {
            pid: 1,
            version: "0.1.0".into(),
            started: 5,
            updated: 6,
            bundle: "/b".into(),
            api_lb_port: Some(7445),
            components: vec![ComponentStatus::new("containerd", Some("/l".into()))],
            snapshots: None,
        };
        st.component_mut("containerd").unwrap().state = ComponentState::Ready;
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains(r#""state":"ready""#));
        assert_eq!(serde_json::from_str::<AgentStatus>(&json).unwrap(), st);
    }
}
