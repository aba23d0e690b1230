//! The agent as a child subreaper.
//!
//! containerd starts each shim with a double fork, so shims (and, when a shim
//! dies, the containers under it) would be re-parented to PID 1 and outlive the
//! agent. As a subreaper the agent adopts them instead: it reaps their zombies
//! (tokio only reaps the children it spawned itself) and, on a full stop, can
//! terminate every descendant it still has. The same code makes selfnode a
//! correct PID 1 in the appliance image.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// PIDs the supervisor spawned through tokio; tokio reaps those itself, so the
/// reaper must leave them alone.
pub type ManagedPids = Arc<Mutex<HashSet<u32>>>;

/// Makes this process a child subreaper (see prctl(2), PR_SET_CHILD_SUBREAPER).
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument and
    // touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Direct children of this process, with their state letter from /proc.
fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may contain spaces and parentheses: parse after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut fields = rest.split(' ');
        let state = fields.next()?.chars().next()?;
        let ppid: u32 = fields.next()?.parse().ok()?;
        (ppid == me).then_some((pid, state))
    })
    .collect()
}

/// Reaps adopted children that have exited. Returns how many were reaped.
pub fn reap_adopted(managed: &ManagedPids) -> usize {
    let managed = managed.lock().map(|m| m.clone()).unwrap_or_default();
    let mut reaped = 0;
    for (pid, state) in children() {
        if state == 'Z'
            && !managed.contains(&pid)
            && waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)).is_ok()
        {
            reaped += 1;
        }
    }
    reaped
}

/// Live adopted children (not spawned by the supervisor, not zombies).
pub fn adopted(managed: &ManagedPids) -> Vec<u32> {
    let managed = managed.lock().map(|m| m.clone()).unwrap_or_default();
    children()
        .into_iter()
        .filter(|(pid, state)| *state != 'Z' && !managed.contains(pid))
        .map(|(pid, _)| pid)
        .collect()
}

/// Terminates every adopted descendant: SIGTERM, then SIGKILL after `grace`.
/// Killing a shim re-parents its containers to us, so this repeats until no
/// adopted child is left (bounded, so a wedged process cannot hang shutdown).
pub async fn terminate_adopted(managed: &ManagedPids, grace: Duration) {
    for round in 0..10 {
        reap_adopted(managed);
        let pids = adopted(managed);
        if pids.is_empty() {
            return;
        }
        tracing::info!(?pids, round, "stopping processes left behind by containerd");
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            reap_adopted(managed);
            if pids.iter().all(|p| !adopted(managed).contains(p)) {
                break;
            }
        }
        for pid in adopted(managed) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reap_adopted(managed);
}
