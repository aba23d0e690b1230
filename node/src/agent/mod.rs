//! `selfnode agent`: the long-running host agent.
//!
//! Start-up order: take the host lock (before anything is written), open the
//! bundle and check its files against `SHA256SUMS`, become the subreaper,
//! write configs, start containerd, import the bundle's images once
//! containerd is ready, start the kubelet.
//!
//! Two ways to stop ([`StopKind`]):
//! - SIGTERM or SIGINT (`systemctl stop`/`restart`, an upgrade of the
//!   binary) is an *agent stop*: the kubelet and containerd stop, and
//!   containerd's shims keep every container running. The next agent adopts
//!   them: containerd reconnects to its shims and the kubelet finds its pods
//!   through the CRI, so the control plane never goes down. An agent killed
//!   with SIGKILL ends the same way (its children get PR_SET_PDEATHSIG).
//! - SIGUSR1 (`selfnode stop`) is a *node stop*: the kubelet, then every
//!   container through containerd's API, then containerd, then whatever
//!   containerd left behind (shims), the mounts and the pod IP leases, so
//!   nothing outlives the agent.

pub mod apilb;
pub mod cgroups;
pub mod config;
pub mod drain;
pub mod extra;
pub mod kernel;
pub mod logs;
pub mod probe;
pub mod reaper;
pub mod services;
pub mod static_copy;
pub mod supervisor;
pub mod tasks;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::Component;
use crate::fsutil::write_atomic;
use crate::paths::HostPaths;
use crate::status::{now_unix, AgentStatus, ComponentState, ComponentStatus};
use services::ServiceContext;
use supervisor::{Service, StatusHandle};

/// The agent's inputs, mapped from flags by the CLI.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub paths: HostPaths,
    pub bundle: PathBuf,
    pub containerd_socket: Option<PathBuf>,
    pub kubelet_healthz_port: u16,
    /// The node-local API load balancer's port on 127.0.0.1.
    pub api_lb_port: u16,
    /// The kubelet's cgroupRoot (`--cgroup-root`); `None`: the root cgroup.
    pub cgroup_root: Option<String>,
    /// The running selfnode binary, packed into selfnode's own image.
    pub selfnode_exe: PathBuf,
    pub snapshots: tasks::snapshots::SnapshotSchedule,
    /// How often the checkpointer reads the checkpoint back and checks it.
    pub checkpoint_verify: std::time::Duration,
}

const CONTAINERD: &str = Component::Containerd.as_str();
const IMAGES: &str = Component::Images.as_str();
const KUBELET: &str = Component::Kubelet.as_str();

/// Checks the bundle's files against its `SHA256SUMS` before any of them
/// runs (the audit's F05): all of them on a first start (about 660 MB, a
/// second or two here), then only those whose size or mtime changed since
/// the last good pass, whose record it keeps. Errors: a damaged or
/// incomplete bundle (exit 2: a restart would not mend it).
async fn verify_bundle(
    bundle: &dist::bundle::Bundle,
    paths: &crate::paths::HostPaths,
) -> anyhow::Result<()> {
    let record_path = paths.bundle_checksums();
    let earlier: Option<dist::bundle::ChecksumRecord> = std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let started = std::time::Instant::now();
    let b = bundle.clone();
    let (record, read) =
        tokio::task::spawn_blocking(move || b.verify_checksums_since(earlier.as_ref()))
            .await
            .context("the bundle's checksum pass panicked")??;
    tracing::info!(
        read,
        listed = record.files.len(),
        ms = started.elapsed().as_millis() as u64,
        "bundle checksums verified"
    );
    let json = serde_json::to_vec_pretty(&record).context("cannot encode the checksum record")?;
    if let Err(err) = crate::fsutil::write_atomic(&record_path, &json, 0o600) {
        tracing::warn!(path = %record_path.display(), %err, "cannot keep the bundle's checksum record; the next start reads every file again");
    }
    Ok(())
}

pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let paths = opts.paths.clone();
    // The lock comes first: a second agent must change nothing on disk.
    let _lock = crate::control::lock::acquire(&paths.agent_lock())?;
    // An upgrade's record outranks --bundle: the host runs what the
    // upgrade (or its rollback) chose, across agent restarts and reboots.
    let bundle_dir = match crate::control::HostBundle::read(&paths) {
        Some(dir) if dir != opts.bundle => {
            tracing::info!(bundle = %dir.display(), flag = %opts.bundle.display(), "running the bundle the last upgrade recorded (var/lib/selfnode/bundle), not --bundle");
            dir
        }
        _ => opts.bundle.clone(),
    };
    let socket = opts
        .containerd_socket
        .clone()
        .unwrap_or_else(|| paths.containerd_socket());
    services::check_socket_dir(&socket)?;
    reaper::become_subreaper().context("cannot become a child subreaper")?;
    let facts = config::HostFacts::detect(paths.root());
    tracing::info!(cgroup = ?facts.cgroup, driver = facts.driver.as_str(), bundle = %bundle_dir.display(), "agent starting");

    let log_dir = paths.log_dir();
    let status = StatusHandle::new(AgentStatus {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started: now_unix(),
        updated: now_unix(),
        bundle: bundle_dir.clone(),
        api_lb_port: Some(opts.api_lb_port),
        components: vec![
            ComponentStatus::new(CONTAINERD, Some(log_dir.join("containerd.log"))),
            ComponentStatus::new(IMAGES, None),
            ComponentStatus::new(KUBELET, Some(log_dir.join("kubelet.log"))),
            ComponentStatus::new(apilb::COMPONENT, None),
        ],
        snapshots: None,
    });
    let tracker = TaskTracker::new();
    let managed = reaper::ManagedPids::default();
    let stop_background = CancellationToken::new();
    tracker.spawn(reap_loop(managed.clone(), stop_background.clone()));
    let lb = apilb::ApiLb {
        listen: vec![
            std::net::SocketAddr::from(([127, 0, 0, 1], opts.api_lb_port)),
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, opts.api_lb_port)),
        ],
        backends_file: paths.apiservers_file(),
        ca_file: paths.ca_cert(),
    };
    tracker.spawn(apilb::run(
        lb,
        status.clone(),
        stop_background.clone(),
        tracker.clone(),
    ));
    // The balancer first: after a restart in place onto a new bundle
    // (`selfnode upgrade`), its clients wait only for it, not for the
    // new bundle's checksums too.
    let bundle = dist::bundle::Bundle::open(&bundle_dir)?;
    verify_bundle(&bundle, &paths).await?;
    let ctx = Arc::new(ServiceContext {
        paths: paths.clone(),
        bundle: bundle.clone(),
        facts,
        containerd_socket: socket.clone(),
        kubelet_healthz_port: opts.kubelet_healthz_port,
        cgroup_root: opts.cgroup_root.clone(),
    });

    // SIGHUP (and `selfnode init`, and the address task) bump this:
    // services re-read their config.
    let (reload_tx, reload) = watch::channel(0u64);
    let reload_tx = Arc::new(reload_tx);
    tracker.spawn(hup_loop(reload_tx.clone(), stop_background.clone()));
    // Before the kubelet first reads node.json: a host whose address
    // changed while the agent was away starts it with the new one.
    tasks::address::follow_at_start(&paths);
    let (containerd_ready_tx, containerd_ready) = watch::channel(false);
    let (kubelet_ready_tx, _kubelet_ready) = watch::channel(false);
    let stop_containerd = CancellationToken::new();
    let stop_kubelet = CancellationToken::new();

    let containerd_task = tracker.spawn(supervisor::run(
        Service {
            name: CONTAINERD.into(),
            spec: services::containerd(ctx.clone()),
        },
        status.clone(),
        managed.clone(),
        stop_containerd.clone(),
        containerd_ready_tx,
        reload.clone(),
        tracker.clone(),
    ));
    tasks::spawn_all(
        || {
            tasks::TaskCx::new(
                paths.clone(),
                bundle.clone(),
                socket.clone(),
                opts.api_lb_port,
                status.clone(),
                reload_tx.clone(),
            )
        },
        tasks::TaskOptions {
            snapshots: opts.snapshots.clone(),
            checkpoint_verify: opts.checkpoint_verify,
        },
        &containerd_ready,
        &stop_background,
        &tracker,
    );
    // Every task has its line now: the first status written names them all,
    // so a reader never sees a component missing that appears a moment later.
    tracker.spawn(write_status_loop(
        status.clone(),
        paths.agent_status(),
        stop_background.clone(),
    ));
    let images_task = tracker.spawn(import_images(
        ctx.clone(),
        opts.selfnode_exe.clone(),
        containerd_ready.clone(),
        status.clone(),
        stop_kubelet.clone(),
    ));
    let kubelet_task = tracker.spawn({
        let (status, managed, stop, tracker2) = (
            status.clone(),
            managed.clone(),
            stop_kubelet.clone(),
            tracker.clone(),
        );
        let mut containerd_ready = containerd_ready.clone();
        let spec = services::kubelet(ctx.clone());
        let reload = reload.clone();
        async move {
            // Start order: the kubelet needs the CRI socket.
            tokio::select! {
                _ = stop.cancelled() => {
                    status.update(KUBELET, |c| c.state = ComponentState::Stopped);
                    return;
                }
                _ = containerd_ready.wait_for(|r| *r) => {}
            }
            supervisor::run(
                Service {
                    name: KUBELET.into(),
                    spec,
                },
                status,
                managed,
                stop,
                kubelet_ready_tx,
                reload,
                tracker2,
            )
            .await
        }
    });
    let stop_extra = CancellationToken::new();
    let extra_task = tracker.spawn(extra::run(
        extra::ExtraContext {
            dir: paths.services_dir(),
            bin_dir: bundle.root().join("bin"),
            log_dir: log_dir.clone(),
            path_env: services::child_path(&bundle),
        },
        status.clone(),
        managed.clone(),
        reload.clone(),
        stop_extra.clone(),
        tracker.clone(),
    ));

    let kind = wait_for_stop_signal().await?;
    match kind {
        StopKind::Agent => tracing::info!("agent stop: kubelet, then containerd; containers keep running for the next agent ('selfnode stop' stops them)"),
        StopKind::Restart => tracing::info!("agent restart: kubelet, then containerd, then this agent starts again in place (same pid) on the bundle now recorded; containers keep running"),
        StopKind::Node => tracing::info!("node stop: kubelet, then every container, then containerd and anything it left behind"),
    }
    stop_kubelet.cancel();
    let _ = kubelet_task.await;
    let _ = images_task.await;
    stop_extra.cancel();
    let _ = extra_task.await;
    if kind == StopKind::Node && *containerd_ready.borrow() {
        if let Err(err) = drain::drain_tasks(&socket, Duration::from_secs(30)).await {
            tracing::warn!(error = %err, "could not stop every container through containerd; killing what is left");
        }
    }
    stop_containerd.cancel();
    let _ = containerd_task.await;
    if kind == StopKind::Node {
        reaper::terminate_adopted(&managed, Duration::from_secs(5)).await;
        drain::release_host(&paths);
    }
    stop_background.cancel();
    tracker.close();
    tracker.wait().await;
    // Every task has ended: this is the last word, nothing can overwrite it.
    status.stop_all();
    write_status(&status, &paths.agent_status());
    if kind == StopKind::Restart {
        drop(_lock);
        return Err(restart_in_place());
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// Replaces this process with a new agent: the same executable and
/// arguments, the same pid (so systemd, a test harness or `selfnode stop`
/// still find it). Returns only when the exec failed.
fn restart_in_place() -> anyhow::Error {
    use std::os::unix::ffi::OsStrExt;
    let exe = match std::fs::read_link("/proc/self/exe") {
        Ok(p) => p,
        Err(e) => {
            return anyhow::anyhow!("cannot find this agent's executable to start again: {e}")
        }
    };
    // A binary replaced on disk reads as "<path> (deleted)": start the new one.
    let exe = exe
        .to_str()
        .and_then(|s| s.strip_suffix(" (deleted)"))
        .map(PathBuf::from)
        .unwrap_or(exe);
    let cstr = |b: &[u8]| std::ffi::CString::new(b.to_vec());
    let (Ok(path), Ok(args)) = (
        cstr(exe.as_os_str().as_bytes()),
        std::env::args_os()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>(),
    ) else {
        return anyhow::anyhow!("this agent's executable path or arguments hold a NUL byte");
    };
    tracing::info!(exe = %exe.display(), "agent starting again in place");
    match nix::unistd::execv(&path, &args) {
        Err(e) => anyhow::anyhow!(
            "cannot start the agent again from {}: {e}; start it by hand",
            exe.display()
        ),
        Ok(never) => match never {},
    }
}

/// Each SIGHUP bumps the reload generation.
async fn hup_loop(reload: Arc<watch::Sender<u64>>, stop: CancellationToken) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(%err, "cannot handle SIGHUP; reload by restarting the agent");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup.recv() => {
                tracing::info!("received SIGHUP: re-reading configuration");
                reload.send_modify(|g| *g += 1);
            }
        }
    }
}

/// What a stop signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// SIGTERM, SIGINT: the agent goes, the containers stay for the next one.
    Agent,
    /// SIGUSR1 (`selfnode stop`): every container goes too.
    Node,
    /// SIGUSR2 (`selfnode upgrade`): as `Agent`, then the agent starts
    /// again in place, on the bundle recorded now (`control::HostBundle`).
    Restart,
}

/// The signal that asks the agent for a node stop (`selfnode stop` sends it).
pub const NODE_STOP_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR1;

async fn wait_for_stop_signal() -> anyhow::Result<StopKind> {
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?;
    Ok(tokio::select! {
        _ = term.recv() => { tracing::info!("received SIGTERM"); StopKind::Agent }
        _ = int.recv() => { tracing::info!("received SIGINT"); StopKind::Agent }
        _ = usr1.recv() => { tracing::info!("received SIGUSR1"); StopKind::Node }
        _ = usr2.recv() => { tracing::info!("received SIGUSR2"); StopKind::Restart }
    })
}

/// Imports the bundle's images once containerd is ready, retrying with
/// back-off until it succeeds (containerd may restart under it).
async fn import_images(
    ctx: Arc<ServiceContext>,
    selfnode_exe: PathBuf,
    mut containerd_ready: watch::Receiver<bool>,
    status: StatusHandle,
    stop: CancellationToken,
) {
    let mut backoff = supervisor::Backoff::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = containerd_ready.wait_for(|r| *r) => if r.is_err() { return },
        }
        status.update(IMAGES, |c| c.state = ComponentState::Starting);
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = dist::import::import_bundle(&ctx.containerd_socket, dist::containerd::K8S_NAMESPACE, &ctx.bundle, &selfnode_exe) => r,
        };
        match result {
            Ok(report) => {
                tracing::info!(images = report.images.len(), took = ?started.elapsed(), "bundle images present in containerd");
                status.update(IMAGES, |c| {
                    c.state = ComponentState::Ready;
                    c.last_error = None;
                });
                return;
            }
            Err(err) => {
                let delay = backoff.after_run(started.elapsed());
                let err = dist::error_chain(&err);
                tracing::warn!(error = %err, retry_in = ?delay, "image import failed");
                status.update(IMAGES, |c| {
                    c.state = ComponentState::Failed;
                    c.restarts += 1;
                    c.last_error = Some(err);
                });
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Publishes the status on every change, and every 5s as a heartbeat.
async fn write_status_loop(status: StatusHandle, path: PathBuf, stop: CancellationToken) {
    loop {
        write_status(&status, &path);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = status.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

fn write_status(status: &StatusHandle, path: &std::path::Path) {
    let Some(mut snap) = status.snapshot() else {
        return;
    };
    snap.updated = now_unix();
    match serde_json::to_vec_pretty(&snap) {
        Ok(bytes) => {
            if let Err(err) = write_atomic(path, &bytes, 0o640) {
                tracing::warn!(path = %path.display(), %err, "cannot write agent status");
            }
        }
        Err(err) => tracing::warn!(%err, "cannot encode agent status"),
    }
}

/// Reaps adopted zombies on SIGCHLD and on a slow timer (signals coalesce).
async fn reap_loop(managed: reaper::ManagedPids, stop: CancellationToken) {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(%err, "cannot watch SIGCHLD; reaping on a timer only");
            None
        }
    };
    loop {
        reaper::reap_adopted(&managed);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = async { match sigchld.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
