//! Certificate renewal, the agent's task: on every control-plane host with
//! the cluster's keys every [`PERIOD`] an ordinary pass (re-issues what has
//! less than 30 days left), a publish, and the restart of this host's
//! components onto what it renewed ([`crate::certs::agent_pass`]); on
//! every host the next certificate to
//! expire in `selfnode status`, which turns `unhealthy` once one has less
//! than 30 days left (renewal is not happening: the last error says why).

use std::time::Duration;

use super::{AgentTask, Outcome, Schedule, TaskCx};
use crate::certs::{agent_pass, expiration, next_to_expire, summary, RENEW_BEFORE_DAYS};
use crate::control::Component;
use crate::status::ComponentState;

/// How often the agent checks and renews.
pub const PERIOD: Duration = Duration::from_secs(3600);
/// The first check, after containerd is ready: long enough for the kubelet
/// to bring the API back after a reboot.
const FIRST_CHECK: Duration = Duration::from_secs(60);

/// The agent's certificate check (see the module docs).
pub struct CertRenewal;

impl AgentTask for CertRenewal {
    const COMPONENT: Component = Component::Certificates;

    fn initial(&self) -> (ComponentState, &'static str) {
        (
            ComponentState::Ready,
            "not checked yet: the first check is a minute after start",
        )
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            first: FIRST_CHECK,
            period: PERIOD,
            retry_first: Duration::from_secs(60),
            retry_max: Duration::from_secs(600),
        }
    }

    async fn pass(&mut self, cx: &mut TaskCx) -> anyhow::Result<Outcome> {
        let note = agent_pass(&cx.paths, cx.api_lb_port, &cx.containerd_socket).await?;
        let (state, rows_summary) = self.files(cx);
        Ok(Outcome::Report(state, note.unwrap_or(rows_summary)))
    }

    /// What the files say after a failed pass: a leaf with less than 30
    /// days left means renewal is not happening.
    fn after_error(&mut self, cx: &TaskCx) -> Option<Outcome> {
        let (state, rows_summary) = self.files(cx);
        Some(Outcome::Report(state, rows_summary))
    }
}

impl CertRenewal {
    /// The state and summary line from the files on this host now.
    fn files(&self, cx: &TaskCx) -> (ComponentState, String) {
        let rows = expiration(&cx.paths).unwrap_or_default();
        let state = if next_to_expire(&rows).is_some_and(|(days, _)| days < RENEW_BEFORE_DAYS) {
            ComponentState::Unhealthy
        } else {
            ComponentState::Ready
        };
        (state, summary(&rows, 0, &[]))
    }
}
