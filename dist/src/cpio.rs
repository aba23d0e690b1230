//! Deterministic initramfs archives: a [`LayerSpec`] written as a cpio
//! archive in the "newc" format the kernel unpacks (Documentation/
//! driver-api/early-userspace/buffer-format.rst).
//!
//! The same spec an image layer uses, so one set of rules covers both:
//! entries sorted by path, implicit parent directories (0755), mtime 0,
//! uid/gid 0 unless an entry says otherwise, inode numbers counted from 1
//! in that order, one link per entry. The same inputs always give the same
//! bytes. Host files stream through a fixed buffer.

use crate::layer::{copy_host_file, open_host_file, resolve, EntrySource, LayerError, LayerSpec};
use std::io::Write;

const COPY_BUFFER: usize = 256 * 1024;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Writes `spec` to `out` as a newc cpio archive with its `TRAILER!!!`;
/// returns the number of bytes written. Errors are [`LayerError`]s: an
/// invalid or repeated path, a host file that cannot be read or changes
/// while it is read, a failed write.
pub fn write_cpio<W: Write>(spec: &LayerSpec, mut out: W) -> Result<u64, LayerError> {
    let entries = resolve(spec)?;
    let mut w = Counting {
        out: &mut out,
        n: 0,
    };
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut ino: u32 = 0;
    for (rel, entry) in &entries {
        ino += 1;
        match &entry.source {
            EntrySource::Dir => {
                let mode = S_IFDIR | entry.mode.unwrap_or(0o755);
                header(&mut w, rel, ino, mode, entry.uid, entry.gid, 2, 0)?;
            }
            EntrySource::Symlink(target) => {
                let mode = S_IFLNK | 0o777;
                header(
                    &mut w,
                    rel,
                    ino,
                    mode,
                    entry.uid,
                    entry.gid,
                    1,
                    target.len() as u64,
                )?;
                w.put(target.as_bytes())?;
                w.align()?;
            }
            EntrySource::Bytes(data) => {
                let mode = S_IFREG | entry.mode.unwrap_or(0o644);
                header(
                    &mut w,
                    rel,
                    ino,
                    mode,
                    entry.uid,
                    entry.gid,
                    1,
                    data.len() as u64,
                )?;
                w.put(data)?;
                w.align()?;
            }
            EntrySource::HostFile(host) => {
                let (file, size, perm) = open_host_file(entry, host)?;
                header(
                    &mut w,
                    rel,
                    ino,
                    S_IFREG | perm,
                    entry.uid,
                    entry.gid,
                    1,
                    size,
                )?;
                copy_host_file(file, size, entry, host, &mut buf, |b| w.put(b))?;
                w.align()?;
            }
        }
    }
    header(&mut w, "TRAILER!!!", 0, 0, 0, 0, 1, 0)?;
    let n = w.n;
    out.flush().map_err(|source| LayerError::Write { source })?;
    Ok(n)
}

/// A writer that counts, for the format's 4-byte alignment.
struct Counting<'a, W: Write> {
    out: &'a mut W,
    n: u64,
}

impl<W: Write> Counting<'_, W> {
    fn put(&mut self, b: &[u8]) -> Result<(), LayerError> {
        self.out
            .write_all(b)
            .map_err(|source| LayerError::Write { source })?;
        self.n += b.len() as u64;
        Ok(())
    }

    fn align(&mut self) -> Result<(), LayerError> {
        let pad = (4 - (self.n % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }
}

/// One newc header (110 bytes of hex fields) and the NUL-terminated name.
#[allow(clippy::too_many_arguments)]
fn header<W: Write>(
    w: &mut Counting<'_, W>,
    name: &str,
    ino: u32,
    mode: u32,
    uid: u64,
    gid: u64,
    nlink: u32,
    size: u64,
) -> Result<(), LayerError> {
    let too_big = || LayerError::Write {
        source: std::io::Error::other(format!("{name}: over 4 GiB, more than cpio newc can hold")),
    };
    let size = u32::try_from(size).map_err(|_| too_big())?;
    let text = format!(
        "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}\
         {devmajor:08X}{devminor:08X}{rdevmajor:08X}{rdevminor:08X}{namesize:08X}{check:08X}",
        uid = uid as u32,
        gid = gid as u32,
        mtime = 0,
        devmajor = 0,
        devminor = 0,
        rdevmajor = 0,
        rdevminor = 0,
        namesize = name.len() + 1,
        check = 0,
    );
    w.put(text.as_bytes())?;
    w.put(name.as_bytes())?;
    w.put(&[0])?;
    w.align()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn spec(dir: &std::path::Path) -> LayerSpec {
        let host = dir.join("prog");
        std::fs::write(&host, b"#!x\n").unwrap();
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut s = LayerSpec::new();
        s.add_symlink("/sbin/init", "../init")
            .add_file(&host, "/init")
            .add_bytes(
                "/etc/selfnode/appliance.yaml",
                b"role: init\n".to_vec(),
                0o600,
            )
            .add_dir("/proc", 0o555);
        s
    }

    #[test]
    fn the_archive_is_newc_sorted_with_parents_and_the_same_bytes_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Vec::new();
        let n = write_cpio(&spec(dir.path()), &mut a).unwrap();
        assert_eq!(n as usize, a.len());
        assert_eq!(a.len() % 4, 0);
        let mut b = Vec::new();
        write_cpio(&spec(dir.path()), &mut b).unwrap();
        assert_eq!(a, b);
        // Walk it as the kernel does: names in order, modes, contents.
        let mut names = Vec::new();
        let mut at = 0;
        loop {
            let h = std::str::from_utf8(&a[at..at + 110]).unwrap();
            assert_eq!(&h[..6], "070701");
            let field = |i: usize| u32::from_str_radix(&h[6 + 8 * i..14 + 8 * i], 16).unwrap();
            let (mode, size, namesize) = (field(1), field(6), field(11));
            let name = std::str::from_utf8(&a[at + 110..at + 110 + namesize as usize - 1]).unwrap();
            at = (at + 110 + namesize as usize).div_ceil(4) * 4;
            let data = &a[at..at + size as usize];
            at = (at + size as usize).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                break;
            }
            match name {
                "init" => assert_eq!((mode, data), (S_IFREG | 0o755, &b"#!x\n"[..])),
                "etc/selfnode/appliance.yaml" => assert_eq!(mode, S_IFREG | 0o600),
                "sbin/init" => assert_eq!((mode, data), (S_IFLNK | 0o777, &b"../init"[..])),
                "proc" => assert_eq!(mode, S_IFDIR | 0o555),
                _ => assert_eq!(mode, S_IFDIR | 0o755, "{name}"),
            }
            names.push(name.to_string());
        }
        assert_eq!(at, a.len());
        assert_eq!(
            names,
            [
                "etc",
                "etc/selfnode",
                "etc/selfnode/appliance.yaml",
                "init",
                "proc",
                "sbin",
                "sbin/init"
            ]
        );
    }
}
