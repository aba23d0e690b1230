//! Deterministic, streamed layer tarballs.
//!
//! A [`LayerSpec`] lists what goes into one image layer: files copied from the
//! host, small files given as bytes, directories and symlinks. [`write_layer`]
//! turns it into an uncompressed tar stream with every entry sorted by path,
//! mtime 0, uid/gid 0 (unless an entry says otherwise) and no host user names,
//! so the same inputs always give the same bytes. Host files are streamed
//! through a fixed buffer; nothing holds a whole layer in memory.
//!
//! Parent directories are added implicitly (mode 0755), so a spec only names
//! the leaves it cares about.

use crate::oci::{Digest, HashingWriter};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const BLOCK: usize = 512;
const COPY_BUFFER: usize = 256 * 1024;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// An image path is relative, the root, or has empty, `.`, `..` or
    /// NUL components.
    #[error("invalid image path {path:?}: {reason}")]
    InvalidPath {
        /// The image path as given.
        path: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// Two entries of the spec have the same image path.
    #[error("image path {path:?} is given twice in one layer")]
    DuplicatePath {
        /// The image path.
        path: String,
    },
    /// An entry that is not a directory is the parent of another entry.
    #[error("image path {path:?} is used as a directory by {child:?} but is not a directory")]
    NotADirectory {
        /// The parent's image path.
        path: String,
        /// The entry below it.
        child: String,
    },
    /// A host file cannot be opened or read.
    #[error("cannot read {host} for image path {path:?}")]
    ReadHostFile {
        /// The host file.
        host: PathBuf,
        /// Its image path.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// A host file is a directory or a special file.
    #[error("{host} (for image path {path:?}) is not a regular file")]
    HostNotRegular {
        /// The host file.
        host: PathBuf,
        /// Its image path.
        path: String,
    },
    /// A host file's size changed while it was copied.
    #[error("{host} changed while the layer was being built (expected {expected} bytes); retry once nothing writes to it")]
    HostFileChanged {
        /// The host file.
        host: PathBuf,
        /// Its size when the copy began, bytes.
        expected: u64,
    },
    /// The tar header cannot hold the path or the symlink target (ustar
    /// limits).
    #[error("cannot write tar header for {path:?}")]
    Header {
        /// The image path.
        path: String,
        /// The tar library's error.
        source: io::Error,
    },
    /// The output writer failed.
    #[error("cannot write layer data")]
    Write {
        /// Why.
        source: io::Error,
    },
}

impl LayerError {
    /// True when the spec or a host file is unusable as it is and a retry
    /// cannot help (`selfnode` exits 2): [`LayerError::InvalidPath`],
    /// [`LayerError::DuplicatePath`], [`LayerError::NotADirectory`],
    /// [`LayerError::HostNotRegular`] and [`LayerError::Header`]. Read and
    /// write errors and [`LayerError::HostFileChanged`] are not.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            LayerError::InvalidPath { .. }
            | LayerError::DuplicatePath { .. }
            | LayerError::NotADirectory { .. }
            | LayerError::HostNotRegular { .. }
            | LayerError::Header { .. } => true,
            LayerError::ReadHostFile { .. }
            | LayerError::HostFileChanged { .. }
            | LayerError::Write { .. } => false,
        }
    }
}

/// Where the content of one layer entry comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntrySource {
    /// A file on the host, copied (following symlinks) at build time.
    HostFile(PathBuf),
    /// Literal content.
    Bytes(Vec<u8>),
    /// A directory.
    Dir,
    /// A symbolic link to the given target.
    Symlink(String),
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Absolute path inside the image, e.g. `/usr/local/bin/etcd`.
    pub path: String,
    /// Where its content comes from.
    pub source: EntrySource,
    /// Permission bits (including sticky/setuid bits). `None` for host files
    /// means 0755 if the host file has any execute bit, else 0644.
    pub mode: Option<u32>,
    /// Owner user id in the image (0 unless set).
    pub uid: u64,
    /// Owner group id in the image (0 unless set).
    pub gid: u64,
}

/// What goes into one layer. Order of insertion does not matter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerSpec {
    entries: Vec<LayerEntry>,
}

impl LayerSpec {
    /// An empty layer.
    pub fn new() -> LayerSpec {
        LayerSpec::default()
    }

    /// Copies host file `host` to `image_path` (mode 0755 if `host` is
    /// executable, else 0644).
    pub fn add_file(&mut self, host: impl Into<PathBuf>, image_path: &str) -> &mut Self {
        self.push(image_path, EntrySource::HostFile(host.into()), None)
    }

    /// Like [`LayerSpec::add_file`] with an explicit mode.
    pub fn add_file_with_mode(
        &mut self,
        host: impl Into<PathBuf>,
        image_path: &str,
        mode: u32,
    ) -> &mut Self {
        self.push(image_path, EntrySource::HostFile(host.into()), Some(mode))
    }

    /// Writes `data` to `image_path`.
    pub fn add_bytes(
        &mut self,
        image_path: &str,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> &mut Self {
        self.push(image_path, EntrySource::Bytes(data.into()), Some(mode))
    }

    /// Creates directory `image_path` owned by root.
    pub fn add_dir(&mut self, image_path: &str, mode: u32) -> &mut Self {
        self.push(image_path, EntrySource::Dir, Some(mode))
    }

    /// Creates directory `image_path` owned by `uid`:`gid`.
    pub fn add_dir_owned(&mut self, image_path: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
        self.entries.push(LayerEntry {
            path: image_path.to_string(),
            source: EntrySource::Dir,
            mode: Some(mode),
            uid,
            gid,
        });
        self
    }

    /// Creates symlink `image_path` -> `target`.
    pub fn add_symlink(&mut self, image_path: &str, target: &str) -> &mut Self {
        self.push(
            image_path,
            EntrySource::Symlink(target.to_string()),
            Some(0o777),
        )
    }

    fn push(&mut self, path: &str, source: EntrySource, mode: Option<u32>) -> &mut Self {
        self.entries.push(LayerEntry {
            path: path.to_string(),
            source,
            mode,
            uid: 0,
            gid: 0,
        });
        self
    }

    /// The entries as added (parents not added implicitly yet).
    pub fn entries(&self) -> &[LayerEntry] {
        &self.entries
    }

    /// True if nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The host files this layer reads.
    pub fn host_files(&self) -> impl Iterator<Item = &Path> {
        self.entries.iter().filter_map(|e| match &e.source {
            EntrySource::HostFile(p) => Some(p.as_path()),
            _ => None,
        })
    }
}

/// Normalises `/a/b` to `a/b`, refusing anything that is not a plain
/// absolute path.
fn normalise(path: &str) -> Result<String, LayerError> {
    let invalid = |reason| LayerError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    let rel = path
        .strip_prefix('/')
        .ok_or_else(|| invalid("must be absolute"))?;
    let rel = rel.strip_suffix('/').unwrap_or(rel);
    if rel.is_empty() {
        return Err(invalid("must not be the root directory"));
    }
    for component in rel.split('/') {
        match component {
            "" => return Err(invalid("must not contain empty components")),
            "." | ".." => return Err(invalid("must not contain . or ..")),
            _ => {}
        }
    }
    if rel.bytes().any(|b| b == 0) {
        return Err(invalid("must not contain NUL"));
    }
    Ok(rel.to_string())
}

/// The sorted, complete entry list (with implicit parents).
pub(crate) fn resolve(spec: &LayerSpec) -> Result<BTreeMap<String, LayerEntry>, LayerError> {
    let mut map: BTreeMap<String, LayerEntry> = BTreeMap::new();
    for entry in &spec.entries {
        let rel = normalise(&entry.path)?;
        if map.insert(rel.clone(), entry.clone()).is_some() {
            return Err(LayerError::DuplicatePath {
                path: entry.path.clone(),
            });
        }
    }
    let explicit: Vec<String> = map.keys().cloned().collect();
    for rel in explicit {
        let mut parent = rel.as_str();
        while let Some(pos) = parent.rfind('/') {
            parent = &parent[..pos];
            match map.get(parent) {
                Some(existing) if existing.source != EntrySource::Dir => {
                    return Err(LayerError::NotADirectory {
                        path: format!("/{parent}"),
                        child: format!("/{rel}"),
                    });
                }
                Some(_) => {}
                None => {
                    map.insert(
                        parent.to_string(),
                        LayerEntry {
                            path: format!("/{parent}"),
                            source: EntrySource::Dir,
                            mode: Some(0o755),
                            uid: 0,
                            gid: 0,
                        },
                    );
                }
            }
        }
    }
    Ok(map)
}

fn header_for(
    rel: &str,
    entry: &LayerEntry,
    size: u64,
    mode: u32,
) -> Result<tar::Header, LayerError> {
    let header_err = |source| LayerError::Header {
        path: entry.path.clone(),
        source,
    };
    let mut header = tar::Header::new_ustar();
    let (kind, name) = match &entry.source {
        EntrySource::Dir => (tar::EntryType::Directory, format!("{rel}/")),
        EntrySource::Symlink(_) => (tar::EntryType::Symlink, rel.to_string()),
        _ => (tar::EntryType::Regular, rel.to_string()),
    };
    header.set_entry_type(kind);
    header.set_path(&name).map_err(header_err)?;
    if let EntrySource::Symlink(target) = &entry.source {
        header.set_link_name(target).map_err(header_err)?;
    }
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(0);
    header.set_cksum();
    Ok(header)
}

fn pad<W: Write>(out: &mut W, size: u64) -> Result<(), LayerError> {
    let rem = (size % BLOCK as u64) as usize;
    if rem != 0 {
        out.write_all(&[0u8; BLOCK][..BLOCK - rem])
            .map_err(|source| LayerError::Write { source })?;
    }
    Ok(())
}

/// Opens host file `host` of `entry`: the file, its size, and the mode it
/// gets (the entry's, else 0755 if the host file has an execute bit, else
/// 0644). Shared with [`crate::cpio`].
pub(crate) fn open_host_file(
    entry: &LayerEntry,
    host: &Path,
) -> Result<(File, u64, u32), LayerError> {
    let read_err = |source| LayerError::ReadHostFile {
        host: host.to_path_buf(),
        path: entry.path.clone(),
        source,
    };
    let file = File::open(host).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(LayerError::HostNotRegular {
            host: host.to_path_buf(),
            path: entry.path.clone(),
        });
    }
    let mode = entry
        .mode
        .unwrap_or(if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        });
    Ok((file, meta.len(), mode))
}

/// Streams exactly `size` bytes of `file` to `put` through `buf`; a file
/// that shrank or grew since it was opened is an error.
pub(crate) fn copy_host_file(
    mut file: File,
    size: u64,
    entry: &LayerEntry,
    host: &Path,
    buf: &mut [u8],
    mut put: impl FnMut(&[u8]) -> Result<(), LayerError>,
) -> Result<(), LayerError> {
    let read_err = |source| LayerError::ReadHostFile {
        host: host.to_path_buf(),
        path: entry.path.clone(),
        source,
    };
    let changed = || LayerError::HostFileChanged {
        host: host.to_path_buf(),
        expected: size,
    };
    let mut left = size;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = file.read(&mut buf[..want]).map_err(read_err)?;
        if n == 0 {
            return Err(changed());
        }
        put(&buf[..n])?;
        left -= n as u64;
    }
    if file.read(&mut buf[..1]).map_err(read_err)? != 0 {
        return Err(changed());
    }
    Ok(())
}

/// Writes the layer tarball for `spec` to `out`; returns its size in bytes.
pub fn write_layer<W: Write>(spec: &LayerSpec, mut out: W) -> Result<u64, LayerError> {
    let entries = resolve(spec)?;
    let mut total: u64 = 0;
    let mut buf = vec![0u8; COPY_BUFFER];
    let write_err = |source| LayerError::Write { source };
    for (rel, entry) in &entries {
        match &entry.source {
            EntrySource::HostFile(host) => {
                let (file, size, mode) = open_host_file(entry, host)?;
                let header = header_for(rel, entry, size, mode)?;
                out.write_all(header.as_bytes()).map_err(write_err)?;
                copy_host_file(file, size, entry, host, &mut buf, |b| {
                    out.write_all(b).map_err(write_err)
                })?;
                pad(&mut out, size)?;
                total += BLOCK as u64 + size.div_ceil(BLOCK as u64) * BLOCK as u64;
            }
            EntrySource::Bytes(data) => {
                let size = data.len() as u64;
                let header = header_for(rel, entry, size, entry.mode.unwrap_or(0o644))?;
                out.write_all(header.as_bytes()).map_err(write_err)?;
                out.write_all(data).map_err(write_err)?;
                pad(&mut out, size)?;
                total += BLOCK as u64 + size.div_ceil(BLOCK as u64) * BLOCK as u64;
            }
            EntrySource::Dir => {
                let header = header_for(rel, entry, 0, entry.mode.unwrap_or(0o755))?;
                out.write_all(header.as_bytes()).map_err(write_err)?;
                total += BLOCK as u64;
            }
            EntrySource::Symlink(_) => {
                let header = header_for(rel, entry, 0, entry.mode.unwrap_or(0o777))?;
                out.write_all(header.as_bytes()).map_err(write_err)?;
                total += BLOCK as u64;
            }
        }
    }
    // End of archive: two zero blocks.
    out.write_all(&[0u8; 2 * BLOCK]).map_err(write_err)?;
    out.flush().map_err(write_err)?;
    Ok(total + 2 * BLOCK as u64)
}

/// Digest and size of the layer tarball for `spec`, computed by streaming it
/// through SHA-256 without keeping it.
pub fn hash_layer(spec: &LayerSpec) -> Result<(Digest, u64), LayerError> {
    let mut writer = HashingWriter::new(io::sink());
    write_layer(spec, &mut writer)?;
    let (digest, size, _) = writer.finish();
    Ok((digest, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn list(data: &[u8]) -> Vec<(String, u32, u64, u64, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(data);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut content = Vec::new();
                e.read_to_end(&mut content).unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mtime().unwrap(),
                    content,
                )
            })
            .collect()
    }

    #[test]
    fn entries_are_sorted_with_implicit_parents_and_zero_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("tool");
        std::fs::write(&host, b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut spec = LayerSpec::new();
        spec.add_file(&host, "/usr/local/bin/tool")
            .add_bytes("/etc/passwd", "root:x:0:0::/root:/sbin/nologin\n", 0o644)
            .add_dir("/tmp", 0o1777)
            .add_dir_owned("/home/nonroot", 0o700, 65532, 65532)
            .add_symlink("/bin", "usr/local/bin");
        let mut out = Vec::new();
        let size = write_layer(&spec, &mut out).unwrap();
        assert_eq!(size, out.len() as u64);
        assert_eq!(size % 512, 0);
        let entries = list(&out);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "etc/",
                "etc/passwd",
                "home/",
                "home/nonroot/",
                "tmp/",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/tool"
            ]
        );
        for (name, mode, uid, gid, mtime, content) in &entries {
            assert_eq!(*mtime, 0, "{name}");
            match name.as_str() {
                "usr/local/bin/tool" => {
                    assert_eq!(*mode, 0o755);
                    assert_eq!(content, b"#!/bin/sh\necho hi\n");
                }
                "tmp/" => assert_eq!(*mode, 0o1777),
                "home/nonroot/" => assert_eq!((*uid, *gid), (65532, 65532)),
                _ => assert_eq!((*uid, *gid), (0, 0), "{name}"),
            }
        }
    }

    #[test]
    fn same_content_gives_same_digest_whatever_the_mtime_order_or_owner() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("x"), vec![7u8; 100_000]).unwrap();
        std::fs::write(a.path().join("y"), b"y").unwrap();
        std::fs::write(b.path().join("y"), b"y").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(b.path().join("x"), vec![7u8; 100_000]).unwrap();
        let mut one = LayerSpec::new();
        one.add_file(a.path().join("x"), "/x")
            .add_file(a.path().join("y"), "/d/y");
        let mut two = LayerSpec::new();
        two.add_file(b.path().join("y"), "/d/y")
            .add_file(b.path().join("x"), "/x");
        let (d1, s1) = hash_layer(&one).unwrap();
        let (d2, s2) = hash_layer(&two).unwrap();
        assert_eq!((d1.clone(), s1), (d2, s2));
        let mut bytes = Vec::new();
        write_layer(&one, &mut bytes).unwrap();
        assert_eq!(Digest::of(&bytes), d1);

        std::fs::write(b.path().join("x"), vec![8u8; 100_000]).unwrap();
        assert_ne!(hash_layer(&two).unwrap().0, d1);
    }

    #[test]
    fn bad_specs_are_refused_with_the_path() {
        let cases: Vec<(LayerSpec, &str)> = vec![
            (
                {
                    let mut s = LayerSpec::new();
                    s.add_bytes("etc/x", "", 0o644);
                    s
                },
                "must be absolute",
            ),
            (
                {
                    let mut s = LayerSpec::new();
                    s.add_bytes("/a/../x", "", 0o644);
                    s
                },
                "must not contain . or ..",
            ),
            (
                {
                    let mut s = LayerSpec::new();
                    s.add_bytes("/", "", 0o644);
                    s
                },
                "root directory",
            ),
            (
                {
                    let mut s = LayerSpec::new();
                    s.add_bytes("/x", "", 0o644).add_dir("/x/", 0o755);
                    s
                },
                "given twice",
            ),
            (
                {
                    let mut s = LayerSpec::new();
                    s.add_bytes("/x", "", 0o644).add_bytes("/x/y", "", 0o644);
                    s
                },
                "is used as a directory by \"/x/y\"",
            ),
            (
                {
                    let mut s = LayerSpec::new();
                    s.add_file("/nonexistent/selfnode-test", "/x");
                    s
                },
                "cannot read /nonexistent/selfnode-test for image path \"/x\"",
            ),
            (
                {
                    let mut s = LayerSpec::new();
                    s.add_file("/tmp", "/x");
                    s
                },
                "/tmp (for image path \"/x\") is not a regular file",
            ),
        ];
        for (spec, want) in cases {
            let err = crate::error_chain(&hash_layer(&spec).unwrap_err());
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn empty_layer_is_two_zero_blocks() {
        let mut out = Vec::new();
        assert_eq!(write_layer(&LayerSpec::new(), &mut out).unwrap(), 1024);
        assert!(out.iter().all(|b| *b == 0));
    }
}
