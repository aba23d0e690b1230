//! Small filesystem helpers with the durability rules of the house style:
//! compare before writing; write a temp file, fsync, rename, fsync the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub use bootstrap::host::Written;

/// Writes `contents` to `path` with `mode`, atomically and durably. Does nothing
/// (not even a rename) when the file already holds exactly these bytes with
/// this mode, so idempotent callers do not churn mtimes or wake watchers.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<Written> {
    let existed = match fs::metadata(path) {
        Ok(meta) => {
            if fs::read(path)? == contents {
                if meta.permissions().mode() & 0o7777 == mode {
                    return Ok(Written::Unchanged);
                }
                fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
                return Ok(Written::Updated);
            }
            true
        }
        Err(_) => false,
    };
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode at creation.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| {
        if existed {
            Written::Updated
        } else {
            Written::Created
        }
    })
}

/// Creates `dir` (and parents) and sets its mode.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// Mode of the directory of the host's lock files (`run/selfnode`).
pub const LOCK_DIR_MODE: u32 = 0o700;
/// Mode of a lock file.
pub const LOCK_FILE_MODE: u32 = 0o600;

/// Opens (creates) a lock file only root may open: its directory 0700 and
/// the file 0600, both tightened when they exist with wider modes (a lock
/// anyone can open, anyone can hold: `flock` ignores the open mode). Read
/// and write, never truncated.
pub fn open_lock_file(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        ensure_dir(dir, LOCK_DIR_MODE)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(LOCK_FILE_MODE)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(LOCK_FILE_MODE))?;
    Ok(file)
}

/// Proves `dir` can hold new files (creates it if needed). Used to fail early,
/// with the directory named, before a child process fails obscurely.
pub fn check_writable_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".selfnode-probe-{}", std::process::id()));
    File::create(&probe)?;
    fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_skips_identical_content_and_fixes_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.conf");
        assert_eq!(write_atomic(&p, b"x", 0o600).unwrap(), Written::Created);
        assert_eq!(write_atomic(&p, b"x", 0o600).unwrap(), Written::Unchanged);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(write_atomic(&p, b"x", 0o644).unwrap(), Written::Updated);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(write_atomic(&p, b"y", 0o644).unwrap(), Written::Updated);
        assert_eq!(fs::read(&p).unwrap(), b"y");
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn lock_files_are_private_and_wider_ones_are_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run/selfnode");
        let lock = dir.join("agent.lock");
        open_lock_file(&lock).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&lock), 0o600);
        // Left by an older selfnode: 0755 and 0644, with a pid in it.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&lock, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&lock, "42").unwrap();
        open_lock_file(&lock).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&lock), 0o600);
        assert_eq!(fs::read_to_string(&lock).unwrap(), "42", "never truncated");
    }
}
