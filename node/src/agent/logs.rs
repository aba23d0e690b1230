//! Per-component log files with a size cap.
//!
//! A child's stdout and stderr are piped into one file. When the file passes
//! `cap` bytes it is renamed to `<name>.1` (replacing the previous one) and a
//! fresh file is started, so a chatty kubelet never fills the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

pub const DEFAULT_CAP: u64 = 10 * 1024 * 1024;

#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    cap: u64,
    file: File,
    size: u64,
}

impl RotatingLog {
    pub fn open(path: &Path, cap: u64) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            cap,
            file,
            size,
        })
    }

    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size >= self.cap {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

pub type SharedLog = Arc<Mutex<RotatingLog>>;

/// Copies `reader` line by line into `log` until EOF (the child closed it).
pub async fn pump(reader: impl AsyncRead + Unpin, log: SharedLog) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::with_capacity(512);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let Ok(mut log) = log.lock() else { return };
                if let Err(err) = log.write_line(&line) {
                    tracing::warn!(path = %log.path.display(), %err, "cannot write component log");
                }
            }
        }
    }
}

/// A marker line from the agent itself (start, exit) in a component's log.
pub fn note(log: &SharedLog, msg: &str) {
    if let Ok(mut log) = log.lock() {
        let _ = log.write_line(format!("--- selfnode agent: {msg}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_cap_and_keeps_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kubelet.log");
        let mut log = RotatingLog::open(&p, 10).unwrap();
        log.write_line(b"0123456789\n").unwrap(); // reaches the cap
        log.write_line(b"second\n").unwrap(); // rotates first
        log.write_line(b"third\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second\nthird\n");
        assert_eq!(
            std::fs::read(dir.path().join("kubelet.log.1")).unwrap(),
            b"0123456789\n"
        );
    }
}
