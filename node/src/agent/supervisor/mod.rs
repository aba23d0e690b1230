//! Supervision of long-running children (containerd, kubelet).
//!
//! One tokio task per service runs the loop: build the spec (re-read at every
//! start, so a kubeconfig written by `init` changes the kubelet's flags on its
//! next start), spawn in its own process group with stdout/stderr piped into a
//! capped log file, probe readiness, and on exit restart with capped
//! exponential back-off and jitter. A service that was ready and then fails
//! its health check for [`UNHEALTHY_RESTART`] without a break (wedged: it
//! accepts connections but does not answer) is stopped and started again,
//! as a systemd watchdog or a liveness probe would. Cancellation stops the
//! child with SIGTERM, then SIGKILL after the grace period. Children also
//! get PR_SET_PDEATHSIG, so an agent killed with SIGKILL takes containerd
//! and the kubelet with it.

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rand::Rng;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::logs::{self, RotatingLog, SharedLog};
use super::reaper::ManagedPids;
use crate::status::{now_unix, AgentStatus, ComponentState};

/// How to tell that a service is ready (and, later, still healthy).
pub type ProbeFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

pub struct ServiceSpec {
    /// Digest of the configuration files the builder wrote; with the command
    /// line it decides whether a reload must restart the service.
    pub config_digest: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub probe: ProbeFn,
    pub stop_grace: Duration,
}

/// Builds a service's spec at each start; an error is reported and retried.
pub type SpecFn = Arc<dyn Fn() -> anyhow::Result<ServiceSpec> + Send + Sync>;

/// Shared, published agent state. Every change wakes the status writer.
#[derive(Clone)]
pub struct StatusHandle {
    inner: Arc<Mutex<AgentStatus>>,
    changed: Arc<tokio::sync::Notify>,
}

impl StatusHandle {
    pub fn new(status: AgentStatus) -> Self {
        StatusHandle {
            inner: Arc::new(Mutex::new(status)),
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    pub fn update(&self, name: &str, f: impl FnOnce(&mut crate::status::ComponentStatus)) {
        if let Ok(mut st) = self.inner.lock() {
            if let Some(c) = st.component_mut(name) {
                let before = c.state;
                f(c);
                if c.state != before {
                    c.since = now_unix();
                }
            }
        }
        self.changed.notify_one();
    }

    pub fn add_component(&self, c: crate::status::ComponentStatus) {
        if let Ok(mut st) = self.inner.lock() {
            st.components.retain(|x| x.name != c.name);
            st.components.push(c);
        }
        self.changed.notify_one();
    }

    pub fn set_snapshots(&self, snapshots: crate::status::SnapshotStatus) {
        if let Ok(mut st) = self.inner.lock() {
            if st.snapshots.as_ref() == Some(&snapshots) {
                return;
            }
            st.snapshots = Some(snapshots);
        }
        self.changed.notify_one();
    }

    pub fn remove_component(&self, name: &str) {
        if let Ok(mut st) = self.inner.lock() {
            st.components.retain(|x| x.name != name);
        }
        self.changed.notify_one();
    }

    /// Marks every component stopped: the agent's last word before it exits.
    pub fn stop_all(&self) {
        if let Ok(mut st) = self.inner.lock() {
            let now = now_unix();
            for c in st
                .components
                .iter_mut()
                .filter(|c| c.state != ComponentState::Stopped)
            {
                c.state = ComponentState::Stopped;
                c.pid = None;
                c.since = now;
            }
        }
        self.changed.notify_one();
    }

    pub fn snapshot(&self) -> Option<AgentStatus> {
        self.inner.lock().ok().map(|s| s.clone())
    }

    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// Restart back-off: 1s doubling to 30s, ±20% jitter; reset after a run of
/// at least `STABLE_RUN` so one crash a day does not wait 30s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
const STABLE_RUN: Duration = Duration::from_secs(60);

/// How long a service that was ready may fail every health check before it
/// is restarted. Generous on purpose: the kubelet's liveness probe of etcd
/// allows 80 s; under QEMU's emulation a loaded etcd or kubelet answers
/// late for minutes and still makes progress. A wedged one restarts at
/// most this often (it has to be ready again first).
pub const UNHEALTHY_RESTART: Duration = Duration::from_secs(5 * 60);

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The delay before the next start, given how long the last run lasted.
    pub fn after_run(&mut self, ran: Duration) -> Duration {
        if ran >= STABLE_RUN {
            self.next = BACKOFF_MIN;
        }
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let jitter = rand::rng().random_range(0.8..1.2);
        base.mul_f64(jitter)
    }
}

pub struct Service {
    pub name: String,
    pub spec: SpecFn,
}

impl ServiceSpec {
    /// What must be equal for a running service to be left alone on reload.
    pub fn fingerprint(&self) -> String {
        format!(
            "{:?}|{:?}|{:?}|{}",
            self.program, self.args, self.env, self.config_digest
        )
    }
}

/// Runs `svc` until `cancel`; publishes readiness on `ready`.
pub async fn run(
    svc: Service,
    status: StatusHandle,
    managed: ManagedPids,
    cancel: CancellationToken,
    ready: watch::Sender<bool>,
    reload: watch::Receiver<u64>,
    tracker: TaskTracker,
) {
    let name = svc.name.as_str();
    let cx = Ctx {
        name,
        svc: &svc,
        status: &status,
        managed: &managed,
        cancel: &cancel,
        ready: &ready,
        tracker: &tracker,
    };
    let mut backoff = Backoff::default();
    loop {
        let started = tokio::time::Instant::now();
        let outcome = match (svc.spec)() {
            Ok(spec) => run_once(&cx, &spec, reload.clone()).await,
            Err(err) => RunOutcome::Failed(format!("cannot prepare {name}: {err:#}")),
        };
        ready.send_replace(false);
        match outcome {
            RunOutcome::Reloaded => {
                tracing::info!(service = name, "configuration changed; restarted");
                continue;
            }
            RunOutcome::Cancelled => {
                status.update(name, |c| {
                    c.state = ComponentState::Stopped;
                    c.pid = None;
                });
                return;
            }
            RunOutcome::Failed(why) => {
                let delay = backoff.after_run(started.elapsed());
                tracing::warn!(service = name, reason = %why, retry_in = ?delay, "service stopped; restarting after back-off");
                status.update(name, |c| {
                    c.state = ComponentState::Restarting;
                    c.pid = None;
                    c.restarts += 1;
                    c.last_error = Some(why);
                });
                tokio::select! {
                    _ = cancel.cancelled() => {
                        status.update(name, |c| c.state = ComponentState::Stopped);
                        return;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// What each run of one service shares with the loop around it.
struct Ctx<'a> {
    name: &'a str,
    svc: &'a Service,
    status: &'a StatusHandle,
    managed: &'a ManagedPids,
    cancel: &'a CancellationToken,
    ready: &'a watch::Sender<bool>,
    tracker: &'a TaskTracker,
}

enum RunOutcome {
    Cancelled,
    /// Stopped because its spec changed on reload; start again at once.
    Reloaded,
    Failed(String),
}

async fn run_once(cx: &Ctx<'_>, spec: &ServiceSpec, reload: watch::Receiver<u64>) -> RunOutcome {
    let Ctx {
        name,
        status,
        managed,
        tracker,
        ..
    } = *cx;
    let log: SharedLog = match RotatingLog::open(&spec.log, logs::DEFAULT_CAP) {
        Ok(l) => Arc::new(Mutex::new(l)),
        Err(err) => {
            return RunOutcome::Failed(format!("cannot open log {}: {err}", spec.log.display()))
        }
    };
    let mut child = match spawn(spec) {
        Ok(c) => c,
        Err(err) => {
            return RunOutcome::Failed(format!("cannot start {}: {err}", spec.program.display()))
        }
    };
    let Some(pid) = child.id() else {
        return RunOutcome::Failed("exited before it could be watched".into());
    };
    if let Ok(mut m) = managed.lock() {
        m.insert(pid);
    }
    logs::note(
        &log,
        &format!("started {} (pid {pid})", spec.program.display()),
    );
    if let Some(out) = child.stdout.take() {
        tracker.spawn(logs::pump(out, log.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tracker.spawn(logs::pump(err, log.clone()));
    }
    tracing::info!(service = name, pid, "started");
    status.update(name, |c| {
        c.state = ComponentState::Starting;
        c.pid = Some(pid);
    });

    let outcome = watch_child(cx, spec, &mut child, pid, reload).await;
    if let Ok(mut m) = managed.lock() {
        m.remove(&pid);
    }
    let msg = match &outcome {
        RunOutcome::Cancelled => "stopped".to_string(),
        RunOutcome::Reloaded => "stopped to apply a new configuration".to_string(),
        RunOutcome::Failed(why) => why.clone(),
    };
    logs::note(&log, &msg);
    outcome
}

async fn watch_child(
    cx: &Ctx<'_>,
    spec: &ServiceSpec,
    child: &mut Child,
    pid: u32,
    mut reload: watch::Receiver<u64>,
) -> RunOutcome {
    let Ctx {
        name,
        svc,
        status,
        cancel,
        ready,
        ..
    } = *cx;
    let mut is_ready = false;
    let mut failures = 0u32;
    let mut unhealthy_since: Option<tokio::time::Instant> = None;
    loop {
        // Probe quickly until ready, then every few seconds as a health check.
        let period = if is_ready {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(250)
        };
        tokio::select! {
            exit = child.wait() => {
                return RunOutcome::Failed(describe_exit(exit));
            }
            _ = cancel.cancelled() => {
                stop_child(name, child, pid, spec.stop_grace).await;
                return RunOutcome::Cancelled;
            }
            Ok(()) = reload.changed() => {
                match (svc.spec)() {
                    Ok(new) if new.fingerprint() != spec.fingerprint() => {
                        stop_child(name, child, pid, spec.stop_grace).await;
                        return RunOutcome::Reloaded;
                    }
                    Ok(_) => tracing::debug!(service = name, "reload: configuration unchanged"),
                    Err(err) => tracing::warn!(service = name, error = %format!("{err:#}"), "reload: cannot prepare the new configuration; keeping the running one"),
                }
            }
            _ = tokio::time::sleep(period) => {
                let probe = tokio::time::timeout(Duration::from_secs(3), (spec.probe)()).await;
                let result = probe
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("health check timed out after 3s")))
                    .map_err(|e| format!("{e:#}"));
                match result {
                    Ok(()) => {
                        failures = 0;
                        unhealthy_since = None;
                        if !is_ready {
                            is_ready = true;
                            tracing::info!(service = name, pid, "ready");
                            status.update(name, |c| c.state = ComponentState::Ready);
                            ready.send_replace(true);
                        }
                    }
                    Err(why) if is_ready => {
                        failures += 1;
                        if failures == 3 {
                            tracing::warn!(service = name, pid, reason = %why, "health check failing");
                            status.update(name, |c| {
                                c.state = ComponentState::Unhealthy;
                                c.last_error = Some(why);
                            });
                            is_ready = false;
                            ready.send_replace(false);
                            unhealthy_since = Some(tokio::time::Instant::now());
                        }
                    }
                    Err(why) => {
                        if unhealthy_since.is_some_and(|t| t.elapsed() >= UNHEALTHY_RESTART) {
                            let why = format!(
                                "failed every health check for {}, restarted (last: {why})",
                                humantime::format_duration(UNHEALTHY_RESTART)
                            );
                            tracing::warn!(service = name, pid, reason = %why, "restarting a wedged service");
                            stop_child(name, child, pid, spec.stop_grace).await;
                            return RunOutcome::Failed(why);
                        }
                    }
                }
            }
        }
    }
}

fn spawn(spec: &ServiceSpec) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The agent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// SIGTERM to the child's process group, SIGKILL after `grace`.
async fn stop_child(name: &str, child: &mut Child, pid: u32, grace: Duration) {
    tracing::info!(service = name, pid, grace = ?grace, "stopping");
    let pgid = Pid::from_raw(pid as i32);
    let _ = killpg(pgid, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(
            service = name,
            pid,
            "did not stop within the grace period; sending SIGKILL"
        );
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

pub fn describe_exit(exit: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match exit {
        Ok(st) => match (st.code(), st.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => {
                let name = Signal::try_from(sig)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown");
                format!("killed by signal {sig} ({name})")
            }
            _ => "exited".to_string(),
        },
        Err(err) => format!("cannot wait for the process: {err}"),
    }
}

#[cfg(test)]
mod tests;
