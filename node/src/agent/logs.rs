//! Per-component log files with a size cap.
//!
//! A child's stdout and stderr are piped into one file. When the file passes
//! `cap` bytes it is renamed to `<name>.1` (replacing the previous one) and a
//! fresh file is started, so a chatty kubelet never fills the disk.
//!
//! Files are 0640 in a 0750 directory (the audit's F19): they persist (on
//! an appliance, on its data disk) and are nobody else's business.

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
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)?;
        }
        let file = open_log(path)?;
        // A file an older version made with the umask's 0644.
        file.set_permissions(std::fs::Permissions::from_mode(LOG_MODE))?;
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
        self.file = open_log(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

const LOG_MODE: u32 = 0o640;

fn open_log(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_MODE)
        .open(path)
}

pub type SharedLog = Arc<Mutex<RotatingLog>>;

/// Longest line written whole, in bytes, its newline included. A child
/// that writes more without a newline gets the rest of that line dropped and
/// [`CUT_MARK`] in its place: the agent's memory stays bounded whatever a
/// child prints (the audit's F24).
pub const MAX_LINE: usize = 64 * 1024;
/// Ends a line cut at [`MAX_LINE`].
pub const CUT_MARK: &[u8] = b" [selfnode: line cut at 64 KiB]\n";

/// Copies `reader` line by line into `log` until EOF (the child closed it)
/// or a read error. Lines are cut at [`MAX_LINE`]; a last line without a
/// newline gets one. A log that cannot be written (a full disk) is reported
/// once, and once more when it works again, not on every line.
pub async fn pump(reader: impl AsyncRead + Unpin, log: SharedLog) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::with_capacity(512);
    // The line being read was cut: drop its bytes up to its newline.
    let mut dropping = false;
    let mut failing = false;
    loop {
        let Ok(buf) = reader.fill_buf().await else {
            return;
        };
        if buf.is_empty() {
            if !line.is_empty() {
                line.push(b'\n');
                write(&log, &line, &mut failing);
            }
            return;
        }
        let (part, ends) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let used = part.len();
        let mut full = false;
        if !dropping {
            let room = MAX_LINE - line.len();
            if part.len() > room {
                line.extend_from_slice(&part[..room]);
                line.extend_from_slice(CUT_MARK);
                dropping = !ends;
                full = true;
            } else {
                line.extend_from_slice(part);
                full = ends;
            }
        } else if ends {
            dropping = false;
        }
        reader.consume(used);
        if full {
            if !write(&log, &line, &mut failing) {
                return;
            }
            line.clear();
        }
    }
}

/// Writes one line; false only if the log's lock is poisoned (a panic
/// while it was held), when pumping stops.
fn write(log: &SharedLog, line: &[u8], failing: &mut bool) -> bool {
    let Ok(mut log) = log.lock() else {
        return false;
    };
    match log.write_line(line) {
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!(path = %log.path.display(), "component log written again");
        }
        Ok(()) => {}
        Err(err) if !*failing => {
            *failing = true;
            tracing::warn!(path = %log.path.display(), %err, "cannot write component log; its lines are dropped until it can be written again (a full disk?)");
        }
        Err(_) => {}
    }
    true
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

    #[test]
    fn logs_are_0640_in_a_0750_directory_also_after_rotation_and_upgrade() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("log/selfnode");
        let p = logs.join("etcd.log");
        let mut log = RotatingLog::open(&p, 4).unwrap();
        assert_eq!(mode(&logs), 0o750);
        assert_eq!(mode(&p), 0o640);
        log.write_line(b"12345\n").unwrap();
        log.write_line(b"rotated\n").unwrap();
        assert_eq!(mode(&p), 0o640);
        assert_eq!(mode(&logs.join("etcd.log.1")), 0o640);
        // A file an older version left world-readable.
        let old = logs.join("kubelet.log");
        std::fs::write(&old, b"x\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        RotatingLog::open(&old, 4).unwrap();
        assert_eq!(mode(&old), 0o640);
    }

    #[tokio::test]
    async fn long_lines_are_cut_with_a_mark_and_the_next_line_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kubelet.log");
        let log: SharedLog = Arc::new(Mutex::new(RotatingLog::open(&p, DEFAULT_CAP).unwrap()));
        let whole = [vec![b'w'; MAX_LINE - 1], b"\n".to_vec()].concat();
        let input = [
            b"short\n".to_vec(),
            whole.clone(),            // exactly MAX_LINE: kept whole
            vec![b'x'; 3 * MAX_LINE], // no newline for 192 KiB
            b"tail of the long line\n".to_vec(),
            [vec![b'y'; MAX_LINE], b"\n".to_vec()].concat(), // one byte too long
            b"next\n".to_vec(),
            b"no newline at EOF".to_vec(),
        ]
        .concat();
        pump(&input[..], log.clone()).await;
        let want = [
            b"short\n".to_vec(),
            whole,
            vec![b'x'; MAX_LINE],
            CUT_MARK.to_vec(),
            vec![b'y'; MAX_LINE],
            CUT_MARK.to_vec(),
            b"next\n".to_vec(),
            b"no newline at EOF\n".to_vec(),
        ]
        .concat();
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the log differs from the expected cut");
    }
}
