//! The agent's control loops, on one contract.
//!
//! Each loop is a controller (Talos's controllers, kube-rs's `Controller`):
//! it names its [`Component`] in `selfnode status`, says what status shows
//! before its first pass, when its passes run and how it backs off, and
//! implements one [`AgentTask::pass`] that observes, then converges. The
//! runner ([`spawn`]) owns everything else: waiting for containerd, the
//! schedule, the back-off with jitter after a failed pass, reporting to
//! status, and stopping. A new loop is one file implementing [`AgentTask`],
//! registered in [`spawn_all`].
//!
//! Invariant: a task never imports a sequence (`crate::init`, `join`,
//! `recover`): tasks sit below them and share only the ground floor.

pub mod address;
pub mod apiservers;
pub mod approver;
pub mod bundles;
pub mod certs;
pub mod checkpointer;
pub mod etcd_upkeep;
pub mod member;
pub mod promoter;
pub mod snapshots;
pub mod upgrade;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::supervisor::StatusHandle;
use crate::control::Component;
use crate::paths::HostPaths;
use crate::status::{ComponentState, ComponentStatus};

/// What a pass found, for `selfnode status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing new: the status stays as it is.
    Unchanged,
    /// The component's state and what it is doing, for people. Clears the
    /// last error.
    Report(ComponentState, String),
}

impl Outcome {
    /// Ready, doing `what`.
    pub fn ready(what: impl Into<String>) -> Outcome {
        Outcome::Report(ComponentState::Ready, what.into())
    }
}

/// When a task runs and how it backs off.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// From containerd being ready to the first pass.
    pub first: Duration,
    /// Between passes that succeed.
    pub period: Duration,
    /// After a failed pass: `retry_first`, doubled per failure, at most
    /// `retry_max` (each ±20% jitter).
    pub retry_first: Duration,
    pub retry_max: Duration,
}

impl Schedule {
    /// Every `period`, retrying after failures from 1 s up to `period`.
    pub const fn every(period: Duration) -> Schedule {
        Schedule {
            first: Duration::ZERO,
            period,
            retry_first: Duration::from_secs(1),
            retry_max: period,
        }
    }
}

/// What every task shares: fixed for the agent's lifetime, plus the
/// kubelet's API client, kept between passes and dropped after a failed
/// one (so a rotated certificate is read again).
pub struct TaskCx {
    pub paths: HostPaths,
    pub bundle: dist::bundle::Bundle,
    pub containerd_socket: PathBuf,
    /// The agent's balancer port (`--api-lb-port`).
    pub api_lb_port: u16,
    pub status: StatusHandle,
    /// Bumps the agent's reload generation: services re-read their
    /// configuration (the kubelet its `--node-ip`), as on SIGHUP.
    reload: std::sync::Arc<watch::Sender<u64>>,
    client: Option<kube::Client>,
    agent: Option<kube::Client>,
}

impl TaskCx {
    pub fn new(
        paths: HostPaths,
        bundle: dist::bundle::Bundle,
        containerd_socket: PathBuf,
        api_lb_port: u16,
        status: StatusHandle,
        reload: std::sync::Arc<watch::Sender<u64>>,
    ) -> TaskCx {
        TaskCx {
            paths,
            bundle,
            containerd_socket,
            api_lb_port,
            status,
            reload,
            client: None,
            agent: None,
        }
    }

    /// Services re-read their configuration (see the field).
    pub fn reload(&self) {
        self.reload.send_modify(|g| *g += 1);
    }

    /// The control-plane agents' client (`selfnode-agent.conf`, made with
    /// the PKI on hosts that hold the cluster's keys); `None` elsewhere.
    pub async fn agent_client(&mut self) -> anyhow::Result<Option<kube::Client>> {
        let kubeconfig = self
            .paths
            .kubeconfig_dir()
            .join(bootstrap::pki::names::CONTROL_PLANE_AGENT_CONF);
        if !kubeconfig.exists() {
            return Ok(None);
        }
        crate::cluster::cached_client(&kubeconfig, &mut self.agent)
            .await
            .map(Some)
    }

    /// The kubelet's client once the host is settled in its cluster (a
    /// joined host, or the first host after the pivot): `None` before, and
    /// while the kubelet has no credentials (see [`TaskCx::kubelet_client`]).
    pub async fn settled_kubelet_client(&mut self) -> anyhow::Result<Option<kube::Client>> {
        let settled = crate::cluster::HostCluster::load_async(&self.paths)
            .await?
            .is_some_and(|c| c.settled());
        if !settled {
            return Ok(None);
        }
        self.kubelet_client().await
    }

    /// The kubelet's client (its own credentials, through the node's
    /// balancer); `None` while the kubelet has no credentials yet (the host
    /// belongs to no cluster, or is joining and its certificate is not
    /// approved yet).
    pub async fn kubelet_client(&mut self) -> anyhow::Result<Option<kube::Client>> {
        let kubeconfig = self.paths.kubelet_kubeconfig();
        if !crate::cluster::kubeconfig_usable(&kubeconfig) {
            return Ok(None);
        }
        crate::cluster::cached_client(&kubeconfig, &mut self.client)
            .await
            .map(Some)
    }
}

/// One of the agent's control loops (see the module docs).
pub trait AgentTask: Send + 'static {
    /// Its name in `selfnode status`.
    const COMPONENT: Component;

    /// What status shows before the first pass.
    fn initial(&self) -> (ComponentState, &'static str);

    fn schedule(&self) -> Schedule;

    /// Runs once before the first pass (the checkpointer's recovery at
    /// agent start). A failure marks the component failed.
    fn start(&mut self, _cx: &mut TaskCx) -> impl Future<Output = anyhow::Result<Outcome>> + Send {
        async { Ok(Outcome::Unchanged) }
    }

    /// One pass: observe, then converge.
    fn pass(&mut self, cx: &mut TaskCx) -> impl Future<Output = anyhow::Result<Outcome>> + Send;

    /// A failed pass is expected while the cluster comes back (the API
    /// does not answer yet): logged at debug, not warn.
    fn quiet_errors(&self) -> bool {
        false
    }

    /// What status shows after a failed pass, besides the error (`None`:
    /// the state stays).
    fn after_error(&mut self, _cx: &TaskCx) -> Option<Outcome> {
        None
    }
}

/// Whether the API server answered and refused (forbidden, invalid, not
/// found): a fault of ours or the cluster's that no retry mends, so it is
/// logged even by a task whose errors are quiet while the cluster comes back.
fn refused_by_the_api(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(e.downcast_ref::<kube::Error>(),
            Some(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 409 && s.code != 429)
    })
}

/// The component's status row before the task's first pass.
pub fn initial_status<T: AgentTask>(task: &T) -> ComponentStatus {
    let (state, detail) = task.initial();
    let mut c = ComponentStatus::new(T::COMPONENT.as_str(), None);
    c.state = state;
    c.detail = Some(detail.to_string());
    c
}

/// Runs `task` on `tracker` until `stop`: once containerd is ready, its
/// `start`, then a pass on its schedule.
pub fn spawn<T: AgentTask>(
    mut task: T,
    mut cx: TaskCx,
    mut containerd_ready: watch::Receiver<bool>,
    stop: CancellationToken,
    tracker: &TaskTracker,
) {
    cx.status.add_component(initial_status(&task));
    tracker.spawn(async move {
        let name = T::COMPONENT.as_str();
        tokio::select! {
            _ = stop.cancelled() => return,
            r = containerd_ready.wait_for(|r| *r) => if r.is_err() { return },
        }
        match task.start(&mut cx).await {
            Ok(outcome) => report(&cx.status, name, outcome),
            Err(err) => {
                let err = format!("{err:#}");
                // "checkpoint not used": what a damaged checkpoint reads as.
                tracing::error!(task = name, error = %err, "{name} not used: its start failed");
                cx.status.update(name, |c| {
                    c.state = ComponentState::Failed;
                    c.detail = None;
                    c.last_error = Some(err);
                });
            }
        }
        let schedule = task.schedule();
        let mut wait = schedule.first;
        let mut retry = schedule.retry_first;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let outcome = task.pass(&mut cx).await;
            cx.status
                .update(name, |c| c.passes = Some(c.passes.unwrap_or(0) + 1));
            match outcome {
                Ok(outcome) => {
                    report(&cx.status, name, outcome);
                    retry = schedule.retry_first;
                    wait = schedule.period;
                }
                Err(err) => {
                    let refused = refused_by_the_api(&err);
                    let err = format!("{err:#}");
                    wait = jitter(retry);
                    retry = (retry * 2).min(schedule.retry_max);
                    if task.quiet_errors() && !refused {
                        tracing::debug!(task = name, error = %err, retry_in = ?wait, "pass failed");
                    } else {
                        tracing::warn!(task = name, error = %err, retry_in = ?wait, "pass failed; retrying");
                    }
                    cx.client = None;
                    cx.agent = None;
                    if let Some(outcome) = task.after_error(&cx) {
                        report(&cx.status, name, outcome);
                    }
                    cx.status.update(name, |c| c.last_error = Some(err));
                }
            }
        }
    });
}

fn report(status: &StatusHandle, name: &str, outcome: Outcome) {
    if let Outcome::Report(state, detail) = outcome {
        status.update(name, |c| {
            c.state = state;
            c.detail = Some(detail);
            c.last_error = None;
        });
    }
}

/// `d` ±20%, so the loops of many nodes do not fall into step.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// What [`spawn_all`] needs besides the shared context.
pub struct TaskOptions {
    pub snapshots: snapshots::SnapshotSchedule,
    /// `--checkpoint-verify-interval`.
    pub checkpoint_verify: Duration,
}

/// Starts every task of the agent.
pub fn spawn_all(
    cx: impl Fn() -> TaskCx,
    opts: TaskOptions,
    containerd_ready: &watch::Receiver<bool>,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) {
    let go = |t| (cx(), containerd_ready.clone(), stop.clone(), t);
    let (c, r, s, t) = go(tracker);
    spawn(
        checkpointer::Checkpointer::new(opts.checkpoint_verify),
        c,
        r,
        s,
        t,
    );
    let (c, r, s, t) = go(tracker);
    spawn(member::MemberController::default(), c, r, s, t);
    let (c, r, s, t) = go(tracker);
    spawn(etcd_upkeep::EtcdUpkeep::default(), c, r, s, t);
    let (c, r, s, t) = go(tracker);
    spawn(apiservers::ApiServers::default(), c, r, s, t);
    let (c, r, s, t) = go(tracker);
    spawn(certs::CertRenewal, c, r, s, t);
    let (c, r, s, t) = go(tracker);
    spawn(approver::Approver::default(), c, r, s, t);
    let (c, r, s, t) = go(tracker);
    spawn(promoter::Promoter::default(), c, r, s, t);
    let (c, r, s, t) = go(tracker);
    spawn(address::AddressTask::default(), c, r, s, t);
    let (c, r, s, t) = go(tracker);
    spawn(bundles::Bundles::default(), c, r, s, t);
    let (c, r, s, t) = go(tracker);
    spawn(upgrade::FollowUpgrade, c, r, s, t);
    if !opts.snapshots.interval.is_zero() {
        let (c, r, s, t) = go(tracker);
        spawn(snapshots::Snapshots::new(opts.snapshots), c, r, s, t);
    }
}
