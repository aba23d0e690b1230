//! The port through which `bootstrap` touches the host.
//!
//! `bootstrap` decides *what* must be on the machine; it never performs I/O
//! itself. `node` implements [`Host`] over its own file helpers (and, in later
//! milestones, its supervisor and image store); unit tests use
//! `fake::MemHost`. Keep this trait narrow: every method is a capability the
//! real implementation must provide with the guarantees written on it.

use std::io;
use std::path::{Path, PathBuf};

#[cfg(any(test, feature = "fake"))]
pub mod fake;

/// What a [`Host::write_file`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The file did not exist and was created.
    Created,
    /// The file existed and its contents or its mode were changed.
    Updated,
    /// The file already had exactly these contents and this mode: nothing was touched.
    Unchanged,
}

/// Everything `bootstrap` needs from the machine it runs on.
pub trait Host {
    /// Reads a whole file. `Ok(None)` when the file does not exist.
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, HostError>;

    /// Writes a whole file with permission bits `mode` (e.g. `0o600`).
    ///
    /// Contract: compare before writing (same contents and mode: touch nothing,
    /// return [`Written::Unchanged`]; same contents, other mode: only fix the
    /// mode); otherwise write atomically (temporary file in the same directory,
    /// fsync, rename, fsync the directory), so a crash leaves either the old
    /// or the new file, never a torn one. The parent directory must exist.
    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<Written, HostError>;

    /// Creates `path` and any missing parents with permission bits `mode`;
    /// when `path` already exists it must be a directory and its mode is set to
    /// `mode` (parents that already exist are left alone).
    fn ensure_dir(&self, path: &Path, mode: u32) -> Result<(), HostError>;
}

/// A failed host operation.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// [`Host::read_file`] failed for another reason than a missing file.
    #[error("failed to read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// [`Host::write_file`] failed.
    #[error("failed to write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// [`Host::ensure_dir`] failed.
    #[error("failed to create directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
}

impl HostError {
    /// The path the failed operation was about.
    pub fn path(&self) -> &Path {
        match self {
            HostError::Read { path, .. }
            | HostError::Write { path, .. }
            | HostError::CreateDir { path, .. } => path,
        }
    }
}
