//! An in-memory [`Host`] for unit tests (ours, and other crates' through the
//! `fake` cargo feature). It behaves like the real one where tests can tell:
//! writes need an existing parent directory, compare-before-write reports
//! [`Written::Unchanged`], modes are recorded, and it can be told to fail
//! writes to simulate a crash part-way through a step.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::{Host, HostError, Written};

#[derive(Debug, Clone, PartialEq, Eq)]
struct MemFile {
    contents: Vec<u8>,
    mode: u32,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<PathBuf, MemFile>,
    dirs: BTreeMap<PathBuf, u32>,
    /// Every write that changed something, in order.
    changes: Vec<(PathBuf, Written)>,
    /// When set, this many more changing writes succeed; every later
    /// `write_file` call fails (a crash: nothing after it reaches the disk).
    writes_left: Option<usize>,
}

/// An in-memory file system. Cheap to create; one per test.
#[derive(Debug, Default)]
pub struct MemHost {
    state: Mutex<State>,
}

impl MemHost {
    /// An empty file system: no files, no directories.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock can only come from a failing test;
        // the state is still usable for its assertions.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a file in place (creating parent directories, mode 0755) without
    /// recording it as a change. For seeding a test.
    pub fn put(&self, path: impl AsRef<Path>, contents: impl Into<Vec<u8>>, mode: u32) {
        let path = path.as_ref();
        let mut st = self.lock();
        for dir in path.ancestors().skip(1) {
            st.dirs.entry(dir.to_path_buf()).or_insert(0o755);
        }
        st.files.insert(
            path.to_path_buf(),
            MemFile {
                contents: contents.into(),
                mode,
            },
        );
    }

    /// Removes a file; true if it existed.
    pub fn remove(&self, path: impl AsRef<Path>) -> bool {
        self.lock().files.remove(path.as_ref()).is_some()
    }

    /// The contents of a file, if it exists.
    pub fn file(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        self.lock()
            .files
            .get(path.as_ref())
            .map(|f| f.contents.clone())
    }

    /// The mode of a file, if it exists.
    pub fn mode(&self, path: impl AsRef<Path>) -> Option<u32> {
        self.lock().files.get(path.as_ref()).map(|f| f.mode)
    }

    /// Sets the mode of an existing file without recording a change.
    pub fn set_mode(&self, path: impl AsRef<Path>, mode: u32) {
        if let Some(f) = self.lock().files.get_mut(path.as_ref()) {
            f.mode = mode;
        }
    }

    /// The mode of a directory, if it exists.
    pub fn dir_mode(&self, path: impl AsRef<Path>) -> Option<u32> {
        self.lock().dirs.get(path.as_ref()).copied()
    }

    /// Every file path, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock().files.keys().cloned().collect()
    }

    /// Writes that changed something since the last [`MemHost::take_changes`].
    pub fn take_changes(&self) -> Vec<(PathBuf, Written)> {
        std::mem::take(&mut self.lock().changes)
    }

    /// Lets `n` more changing writes succeed, then fails every `write_file`
    /// call, like a process killed after its n-th write. `None` lifts it.
    pub fn fail_after_writes(&self, n: Option<usize>) {
        self.lock().writes_left = n;
    }
}

impl Host for MemHost {
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, HostError> {
        let st = self.lock();
        if st.dirs.contains_key(path) {
            return Err(HostError::Read {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::IsADirectory, "is a directory"),
            });
        }
        Ok(st.files.get(path).map(|f| f.contents.clone()))
    }

    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<Written, HostError> {
        let mut st = self.lock();
        let fail = |msg: &str| HostError::Write {
            path: path.to_path_buf(),
            source: io::Error::other(msg.to_string()),
        };
        if st.writes_left == Some(0) {
            return Err(fail("injected failure (simulated crash)"));
        }
        let parent_exists = path
            .parent()
            .is_some_and(|p| p.as_os_str().is_empty() || st.dirs.contains_key(p));
        if !parent_exists {
            return Err(HostError::Write {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotFound, "parent directory missing"),
            });
        }
        if st.dirs.contains_key(path) {
            return Err(fail("is a directory"));
        }
        let new = MemFile {
            contents: contents.to_vec(),
            mode,
        };
        let written = match st.files.get(path) {
            Some(old) if *old == new => return Ok(Written::Unchanged),
            Some(_) => Written::Updated,
            None => Written::Created,
        };
        st.files.insert(path.to_path_buf(), new);
        st.changes.push((path.to_path_buf(), written));
        if let Some(left) = st.writes_left.as_mut() {
            *left -= 1;
        }
        Ok(written)
    }

    fn ensure_dir(&self, path: &Path, mode: u32) -> Result<(), HostError> {
        let mut st = self.lock();
        if st.files.contains_key(path) {
            return Err(HostError::CreateDir {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::AlreadyExists, "a file is in the way"),
            });
        }
        for dir in path.ancestors().skip(1) {
            if dir.as_os_str().is_empty() {
                continue;
            }
            st.dirs.entry(dir.to_path_buf()).or_insert(mode);
        }
        st.dirs.insert(path.to_path_buf(), mode);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_before_write_and_modes() {
        let h = MemHost::new();
        let p = Path::new("/etc/x/file");
        assert!(h.write_file(p, b"a", 0o600).is_err(), "parent must exist");
        h.ensure_dir(Path::new("/etc/x"), 0o700).unwrap();
        assert_eq!(h.dir_mode("/etc/x"), Some(0o700));
        assert_eq!(h.write_file(p, b"a", 0o600).unwrap(), Written::Created);
        assert_eq!(h.write_file(p, b"a", 0o600).unwrap(), Written::Unchanged);
        assert_eq!(h.write_file(p, b"a", 0o644).unwrap(), Written::Updated);
        assert_eq!(h.write_file(p, b"b", 0o644).unwrap(), Written::Updated);
        assert_eq!(h.mode(p), Some(0o644));
        assert_eq!(h.read_file(p).unwrap(), Some(b"b".to_vec()));
        assert_eq!(h.read_file(Path::new("/nope")).unwrap(), None);
        assert_eq!(h.take_changes().len(), 3);
        assert!(h.take_changes().is_empty());
    }

    #[test]
    fn injected_failure_stops_writes() {
        let h = MemHost::new();
        h.ensure_dir(Path::new("/d"), 0o700).unwrap();
        h.fail_after_writes(Some(1));
        h.write_file(Path::new("/d/1"), b"1", 0o600).unwrap();
        // An unchanged write does not count, but once the budget is spent every call fails.
        let err = h.write_file(Path::new("/d/2"), b"2", 0o600).unwrap_err();
        assert!(err.to_string().contains("/d/2"), "{err}");
        h.fail_after_writes(None);
        h.write_file(Path::new("/d/2"), b"2", 0o600).unwrap();
    }
}
