//! One agent per host: an exclusive `flock` on `run/selfnode/agent.lock`.
//!
//! The kernel drops the lock when the holder dies (even by SIGKILL), so a stale
//! file never blocks a restart. The file holds the holder's PID for messages.
//! Only root may open it (0600 in a 0700 directory, tightened at every
//! start): `flock` needs only an open file, so a lock anyone could read,
//! anyone could hold, and keep the agent down.
//!
//! Commands that only ask whether an agent runs ([`running_agent`]: `status`,
//! `init`, `join`, `stop`) probe with a *shared* lock for a few microseconds.
//! An agent starting at that very moment would see its exclusive lock refused,
//! so [`acquire`] tries again for [`PROBE_GRACE`] before it says another agent
//! holds the lock: a probe is gone by then, an agent never is.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`acquire`] keeps trying while the lock is taken: far longer
/// than a [`running_agent`] probe holds it, short enough for a person.
pub const PROBE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another selfnode agent is already running on this host (pid {pid}, lock {path}); stop it first (kill -TERM {pid}) or check it with 'selfnode status'")]
    Held { pid: String, path: PathBuf },
    #[error("cannot open the agent lock {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
}

/// Holds the lock for as long as it lives.
#[derive(Debug)]
pub struct AgentLock {
    _lock: Flock<File>,
}

pub fn acquire(path: &Path) -> Result<AgentLock, LockError> {
    let open_err = |source| LockError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut file = crate::fsutil::open_lock_file(path).map_err(open_err)?;
    let deadline = Instant::now() + PROBE_GRACE;
    let taken = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(50));
            }
            other => break other,
        }
    };
    match taken {
        Ok(mut lock) => {
            lock.set_len(0).map_err(open_err)?;
            lock.rewind().map_err(open_err)?;
            write!(lock, "{}", std::process::id()).map_err(open_err)?;
            lock.sync_all().map_err(open_err)?;
            Ok(AgentLock { _lock: lock })
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Held {
            pid: holder(path).unwrap_or_else(|| "unknown".into()),
            path: path.to_path_buf(),
        }),
        Err((_, source)) => Err(LockError::Lock {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether a live agent holds the lock: `Some(pid)` (`Some(None)` while it
/// has not written its pid yet), or `None` when no agent runs. Probes with
/// a shared lock, so probes never refuse each other.
pub fn running_agent(path: &Path) -> Option<Option<u32>> {
    let file = File::open(path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => None, // unlocked again when dropped
        Err(_) => Some(holder(path).and_then(|p| p.parse().ok())),
    }
}

fn holder(path: &Path) -> Option<String> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run/agent.lock");
        let held = acquire(&p).unwrap();
        let err = acquire(&p).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        assert!(msg.contains("already running"), "{msg}");
        assert_eq!(running_agent(&p), Some(Some(std::process::id())));
        drop(held);
        assert_eq!(running_agent(&p), None);
        acquire(&p).unwrap();
    }

    #[test]
    fn the_lock_is_private_to_root_even_where_an_older_agent_left_it_open() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run/selfnode");
        let p = run.join("agent.lock");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _held = acquire(&p).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&run), 0o700);
        assert_eq!(mode(&p), 0o600);
    }

    /// The CI failure of 2026-12-01: the test harness polled `status` while
    /// the agent started, the probe held the lock at that instant, and the
    /// agent exited with "another selfnode agent is already running (pid
    /// unknown)".
    #[test]
    fn a_status_probe_at_the_agents_start_does_not_stop_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run/agent.lock");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "").unwrap();
        // A probe that holds its shared lock longer than any real one does.
        let probe = Flock::lock(File::open(&p).unwrap(), FlockArg::LockSharedNonblock).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(probe);
        });
        let started = Instant::now();
        let held = acquire(&p).expect("the agent waits out a probe");
        assert!(started.elapsed() >= Duration::from_millis(250));
        releaser.join().unwrap();
        assert_eq!(running_agent(&p), Some(Some(std::process::id())));
        drop(held);
        // Two probes at once do not take each other for an agent.
        let other = Flock::lock(File::open(&p).unwrap(), FlockArg::LockSharedNonblock).unwrap();
        assert_eq!(running_agent(&p), None);
        drop(other);
    }
}
