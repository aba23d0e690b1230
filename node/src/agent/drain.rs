//! A full stop leaves nothing behind: every containerd task is killed and
//! deleted through containerd's API (which also unmounts its root
//! filesystem) before containerd itself is stopped, and the mounts the kubelet
//! and containerd made under their directories are released afterwards.

use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::{
    DeleteTaskRequest, KillRequest, ListNamespacesRequest, ListTasksRequest,
};
use containerd_client::types::v1::Status;

/// Kills and deletes every task in every namespace. Returns how many tasks
/// were stopped. Bounded by `timeout`; a task that will not die is reported
/// and left for the subreaper.
pub async fn drain_tasks(socket: &Path, timeout: Duration) -> Result<usize, String> {
    let work = async {
        let root = dist::containerd::connect(socket, "default")
            .await
            .map_err(|e| e.to_string())?;
        let namespaces = root
            .namespaces()
            .list(root.request(ListNamespacesRequest {
                filter: String::new(),
            }))
            .await
            .map_err(|e| format!("cannot list containerd namespaces: {}", e.message()))?
            .into_inner()
            .namespaces;
        let mut stopped = 0;
        for ns in namespaces {
            let client = dist::containerd::connect(socket, &ns.name)
                .await
                .map_err(|e| e.to_string())?;
            stopped += drain_namespace(&client).await?;
        }
        Ok(stopped)
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
}

async fn drain_namespace(client: &dist::containerd::Client) -> Result<usize, String> {
    let list = || async {
        client
            .tasks()
            .list(client.request(ListTasksRequest {
                filter: String::new(),
            }))
            .await
            .map(|r| r.into_inner().tasks)
            .map_err(|e| {
                format!(
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

/// Lazily unmounts every mount point under `dir`, deepest first.
pub fn unmount_under(dir: &Path) -> usize {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    let mut n = 0;
    for p in points {
        match nix::mount::umount2(Path::new(&p), nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => n += 1,
            Err(err) => tracing::warn!(mount = %p, %err, "cannot unmount"),
        }
    }
    n
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/var/lib/a\040b"), "/var/lib/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
