//! One agent per host: an exclusive `flock` on `run/selfnode/agent.lock`.
//!
//! The kernel drops the lock when the holder dies (even by SIGKILL), so a stale
//! file never blocks a restart. The file holds the holder's PID for messages.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

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
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(open_err)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(open_err)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
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

/// The PID of a live agent holding the lock, or `None` when no agent runs.
pub fn running_agent(path: &Path) -> Option<String> {
    let file = OpenOptions::new().read(true).write(true).open(path).ok()?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_free) => None, // unlocked again when dropped
        Err(_) => Some(holder(path).unwrap_or_else(|| "unknown".into())),
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
        assert_eq!(running_agent(&p), Some(std::process::id().to_string()));
        drop(held);
        assert_eq!(running_agent(&p), None);
        acquire(&p).unwrap();
    }
}
