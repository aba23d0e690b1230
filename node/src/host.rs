//! node's implementation of `bootstrap::host::Host`: the real filesystem,
//! with the durability rules of `fsutil`.

use std::path::Path;

use bootstrap::host::{Host, HostError, Written};

use crate::fsutil;

pub struct NodeHost;

impl Host for NodeHost {
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, HostError> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(HostError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<Written, HostError> {
        fsutil::write_atomic(path, contents, mode).map_err(|source| HostError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    fn ensure_dir(&self, path: &Path, mode: u32) -> Result<(), HostError> {
        fsutil::ensure_dir(path, mode).map_err(|source| HostError::CreateDir {
            path: path.to_path_buf(),
            source,
        })
    }
}
