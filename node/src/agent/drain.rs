//! A node stop leaves nothing behind: every containerd task is killed and
//! deleted through containerd's API (which also unmounts its root
//! filesystem) before containerd itself is stopped, and the mounts the kubelet
//! and containerd made under their directories are released afterwards.
//!
//! An agent stop (SIGTERM, a crash, an upgrade) is not a node stop: it leaves
//! containerd's shims and their containers running for the next agent to
//! adopt. What such a stop left behind is drained later, without an agent, by
//! [`drain_without_agent`] (`selfnode stop`, `selfnode reset`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::paths::HostPaths;

use containerd_client::services::v1::{
    DeleteTaskRequest, KillRequest, ListNamespacesRequest, ListTasksRequest,
};
use containerd_client::types::v1::Status;

/// Kills and deletes every task in every namespace. Returns how many tasks
/// were stopped. Bounded by `timeout`; a task that will not die is reported
/// and left for the subreaper.
pub async fn drain_tasks(socket: &Path, timeout: Duration) -> anyhow::Result<usize> {
    let work = async {
        let root = dist::containerd::connect(socket, "default").await?;
        let namespaces = root
            .namespaces()
            .list(root.request(ListNamespacesRequest {
                filter: String::new(),
            }))
            .await
            .map_err(|e| anyhow::anyhow!("cannot list containerd namespaces: {}", e.message()))?
            .into_inner()
            .namespaces;
        let mut stopped = 0;
        for ns in namespaces {
            let client = dist::containerd::connect(socket, &ns.name).await?;
            stopped += drain_namespace(&client).await?;
        }
        Ok(stopped)
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {timeout:?}")))
}

async fn drain_namespace(client: &dist::containerd::Client) -> anyhow::Result<usize> {
    let list = || async {
        client
            .tasks()
            .list(client.request(ListTasksRequest {
                filter: String::new(),
            }))
            .await
            .map(|r| r.into_inner().tasks)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot list tasks in {}: {}",
                    client.namespace(),
                    e.message()
                )
            })
    };
    let tasks = list().await?;
    for task in tasks.iter().filter(|t| t.status != Status::Stopped as i32) {
        let kill = KillRequest {
            container_id: task_id(task),
            exec_id: String::new(),
            signal: 9,
            all: true,
        };
        if let Err(e) = client.tasks().kill(client.request(kill)).await {
            tracing::warn!(namespace = client.namespace(), task = %task_id(task), error = %e.message(), "cannot kill task");
        }
    }
    // Wait for the kills to land before deleting (delete refuses running tasks).
    for _ in 0..50 {
        if list()
            .await?
            .iter()
            .all(|t| t.status == Status::Stopped as i32)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in &tasks {
        let delete = DeleteTaskRequest {
            container_id: task_id(task),
        };
        if let Err(e) = client.tasks().delete(client.request(delete)).await {
            tracing::warn!(namespace = client.namespace(), task = %task_id(task), error = %e.message(), "cannot delete task");
        }
    }
    if !tasks.is_empty() {
        tracing::info!(
            namespace = client.namespace(),
            tasks = tasks.len(),
            "stopped containers"
        );
    }
    Ok(tasks.len())
}

/// ListTasks fills `id` with the container's ID and leaves `container_id`
/// empty (containerd 1.6 and 2.x alike); accept either.
fn task_id(task: &containerd_client::types::v1::Process) -> String {
    if task.container_id.is_empty() {
        task.id.clone()
    } else {
        task.container_id.clone()
    }
}

/// Releases what containers held on the host once none runs: the mounts under
/// containerd's state and the kubelet's directory, and the pod network's IP
/// leases (host-local IPAM keeps them outside any `--root`; stale leases
/// would exhaust the node's range over time). Returns how many mounts were
/// released. Idempotent.
pub fn release_host(paths: &HostPaths) -> usize {
    let unmounted = unmount_under(&paths.containerd_state()) + unmount_under(&paths.kubelet_root());
    if unmounted > 0 {
        tracing::info!(
            mounts = unmounted,
            "released mounts of containerd and the kubelet"
        );
    }
    let leases = Path::new("/var/lib/cni/networks").join(cni::config::NETWORK_NAME);
    if leases.exists() {
        if let Err(err) = std::fs::remove_dir_all(&leases) {
            tracing::warn!(path = %leases.display(), %err, "cannot release pod IP leases");
        }
    }
    unmounted
}

/// The containerd tasks whose shims may still run on this host, as
/// `namespace/id`, from containerd's runtime state
/// (`<state>/io.containerd.runtime.v2.task/<ns>/<id>`). Empty after a
/// clean node stop, and after a power cut (the state lives under `/run`).
pub fn live_tasks(paths: &HostPaths) -> Vec<String> {
    let base = paths
        .containerd_state()
        .join("io.containerd.runtime.v2.task");
    let mut out = Vec::new();
    let Ok(namespaces) = std::fs::read_dir(&base) else {
        return out;
    };
    for ns in namespaces.flatten() {
        let Ok(tasks) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for task in tasks.flatten() {
            out.push(format!(
                "{}/{}",
                ns.file_name().to_string_lossy(),
                task.file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

/// Stops the containers an agent stop left running, with no agent on the
/// host (the caller holds the agent lock): starts containerd from the
/// agent's last configuration so it reconnects to its shims, kills and
/// deletes every task through its API, stops it, and releases the host's
/// mounts and leases. For a host whose [`live_tasks`] are not empty (the
/// caller looks first: with none, [`release_host`] is all there is to do).
/// Returns how many tasks were stopped.
///
/// Errors: containerd cannot start or does not answer within 30 s, or a task
/// cannot be stopped; the message names containerd's log.
pub async fn drain_without_agent(
    paths: &HostPaths,
    bundle: &dist::bundle::Bundle,
) -> anyhow::Result<usize> {
    let config = paths.containerd_config();
    let socket = containerd_socket(paths);
    let log_path = paths.log_dir().join("containerd.log");
    crate::fsutil::ensure_dir(&paths.log_dir(), 0o755)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut child = tokio::process::Command::new(bundle.bin("containerd"))
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("PATH", super::services::child_path(bundle))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bundle.bin("containerd").display()))?;
    let pid = child.id();
    let result = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if dist::containerd::version(&socket).await.is_ok() {
                break;
            }
            if let Ok(Some(exit)) = child.try_wait() {
                anyhow::bail!(
                    "containerd {}; see {}",
                    super::supervisor::describe_exit(Ok(exit)),
                    log_path.display()
                );
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "containerd did not answer on {} within 30s; see {}",
                    socket.display(),
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drain_tasks(&socket, Duration::from_secs(60))
            .await
            .map_err(|e| anyhow::anyhow!("cannot stop every container: {e}"))
    }
    .await;
    if let Some(pid) = pid {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    let stopped = result?;
    release_host(paths);
    Ok(stopped)
}

/// Lazily unmounts every mount point under `dir`, deepest first; never
/// `dir` itself: a kubelet directory on its own disk (or bind mount) is
/// the host's, and what the pods mounted is below it.
pub fn unmount_under(dir: &Path) -> usize {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    let mut n = 0;
    for p in mounts_below(&info, dir) {
        match nix::mount::umount2(Path::new(&p), nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => n += 1,
            Err(err) => tracing::warn!(mount = %p, %err, "cannot unmount"),
        }
    }
    n
}

/// One line of `/proc/self/mountinfo`: id, parent id, device, the root of
/// the mount within its filesystem, the mount point (unescaped).
struct MountLine {
    id: String,
    parent: String,
    dev: String,
    root: PathBuf,
    point: PathBuf,
}

fn mount_lines(mountinfo: &str) -> Vec<MountLine> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            Some(MountLine {
                id: f.next()?.to_string(),
                parent: f.next()?.to_string(),
                dev: f.next()?.to_string(),
                root: PathBuf::from(unescape_mountinfo(f.next()?)),
                point: PathBuf::from(unescape_mountinfo(f.next()?)),
            })
        })
        .collect()
}

/// Whether `dir` is a mount point in this process's mount namespace.
pub fn is_mount_point(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| mount_lines(&info).iter().any(|m| m.point == dir))
        .unwrap_or(false)
}

/// Whether mount `m` binds the directory under it onto itself: its parent
/// mount is of the same filesystem and shows the same directory there.
fn self_bind(lines: &[MountLine], m: &MountLine) -> bool {
    lines.iter().any(|p| {
        p.id == m.parent
            && p.dev == m.dev
            && m.point
                .strip_prefix(&p.point)
                .is_ok_and(|rel| p.root.join(rel) == m.root)
    })
}

/// What `unmount_under(dir)` unmounts, deepest first: every mount strictly
/// below `dir`, and at `dir` itself only a bind of the directory onto
/// itself (the kubelet makes its root directory such a mount, to make it
/// shared). A mount of another filesystem or directory at `dir` (the
/// kubelet's directory on its own disk, or bound from elsewhere) is the
/// host's and stays.
fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<String> {
    let lines = mount_lines(mountinfo);
    let mut points: Vec<String> = lines
        .iter()
        .filter(|m| m.point.starts_with(dir) && (m.point != dir || self_bind(&lines, m)))
        .map(|m| m.point.display().to_string())
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    points
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&digits, 8) {
                out.push(v as char);
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// The socket this host's containerd listens on, as the agent last
/// configured it (`--containerd-socket`), for commands that run beside it.
pub fn containerd_socket(paths: &HostPaths) -> PathBuf {
    std::fs::read_to_string(paths.containerd_config())
        .ok()
        .and_then(|text| super::config::containerd_socket_in(&text))
        .unwrap_or_else(|| paths.containerd_socket())
}

/// Stops what an agent stop left running (the caller holds the agent
/// lock): every container through the bundle's containerd, then the
/// mounts and the pod IP leases. Returns how many containers it stopped.
/// Used by `selfnode stop` and `reset`.
pub async fn stop_leftovers(paths: &HostPaths, bundle: Option<&Path>) -> anyhow::Result<usize> {
    let tasks = live_tasks(paths);
    if tasks.is_empty() {
        release_host(paths);
        return Ok(0);
    }
    let dir = bundle.map_or_else(|| paths.default_bundle(), Path::to_path_buf);
    let bundle = dist::bundle::Bundle::open(&dir).with_context(|| {
        format!(
            "{} container(s) of an earlier agent still run and stopping them needs the bundle's containerd; pass --bundle DIR",
            tasks.len()
        )
    })?;
    drain_without_agent(paths, &bundle).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/var/lib/a\040b"), "/var/lib/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn the_kubelets_bind_of_its_directory_onto_itself_goes_with_what_is_below() {
        let info = "\
36 25 8:1 / / rw - ext4 /dev/sda1 rw
90 36 8:1 /var/lib/kubelet /var/lib/kubelet rw shared:5 - ext4 /dev/sda1 rw
91 90 0:50 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/s rw - tmpfs tmpfs rw
";
        assert_eq!(
            mounts_below(info, Path::new("/var/lib/kubelet")),
            [
                "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/s",
                "/var/lib/kubelet",
            ]
        );
        // Bound from elsewhere, with the kubelet's self-bind on top: only
        // the self-bind goes.
        let info = "\
36 25 8:1 / / rw - ext4 /dev/sda1 rw
90 36 8:1 /srv/k/kubelet /var/lib/kubelet rw - ext4 /dev/sda1 rw
95 90 8:1 /srv/k/kubelet /var/lib/kubelet rw shared:5 - ext4 /dev/sda1 rw
";
        let got = mounts_below(info, Path::new("/var/lib/kubelet"));
        assert_eq!(got, ["/var/lib/kubelet"], "one of the two mounts");
        let lines = mount_lines(info);
        let is = |id: &str| self_bind(&lines, lines.iter().find(|m| m.id == id).unwrap());
        assert!(is("95") && !is("90"));
    }

    #[test]
    fn the_kubelet_directory_itself_is_never_unmounted_only_what_is_below_it() {
        // /var/lib/kubelet on its own disk, with a pod's tmpfs under it, and
        // a sibling whose name merely starts the same.
        let info = "\
36 25 8:1 / / rw - ext4 /dev/sda1 rw
90 36 8:17 / /var/lib/kubelet rw - ext4 /dev/sdb1 rw
91 90 0:50 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/s rw - tmpfs tmpfs rw
92 91 0:51 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/s/deeper rw - tmpfs tmpfs rw
93 36 0:52 / /var/lib/kubelet-other rw - tmpfs tmpfs rw
";
        assert_eq!(
            mounts_below(info, Path::new("/var/lib/kubelet")),
            [
                "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/s/deeper",
                "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/s",
            ]
        );
    }
}
