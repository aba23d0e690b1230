//! Copying programs from the host into an image, with everything the
//! dynamic loader will look for inside the container.
//!
//! [`HostFiles`] collects image entries from a host root (`/` in production,
//! a fake root in tests):
//!
//! - every path keeps its host location, and every symbolic link met while
//!   resolving it, component by component, becomes the same link in the image
//!   (`/lib64` → `usr/lib64`, `libxtables.so.12` → `libxtables.so.12.7.0`),
//!   so the names the loader and the programs use resolve the same way;
//! - for an ELF file, its program interpreter and its `DT_NEEDED` libraries,
//!   transitively, found the way glibc's loader finds them in a container
//!   without `/etc/ld.so.cache`: the object's `DT_RUNPATH`/`DT_RPATH`, then
//!   the system directories (`/lib/<multiarch>`, `/usr/lib/<multiarch>`,
//!   `/lib`, `/usr/lib`), skipping libraries of another class or machine.
//!
//! Entries are kept sorted by image path, so the layer they go into is
//! deterministic (the layer writer sorts again and zeroes the metadata).
//! A missing file is an error that names it and says what to install.

use crate::elf::{self, ElfError, ElfInfo};
use crate::layer::LayerSpec;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::PathBuf;

/// The loader follows at most this many symbolic links per path (Linux's
/// own limit is 40).
const MAX_LINKS: usize = 40;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum HostFilesError {
    /// A path asked for does not exist under the host root.
    #[error("{path} is missing on this host; {hint}")]
    Missing {
        /// The host path (under the host root).
        path: PathBuf,
        /// What to install, from [`HostFiles::new`].
        hint: String,
    },
    /// A `DT_NEEDED` library is in none of the search directories.
    #[error("{name} (needed by {needed_by}) is not on this host: looked in {searched}; {hint}")]
    LibraryNotFound {
        /// The library's name, e.g. `libxtables.so.12`.
        name: String,
        /// The ELF file that needs it (host path).
        needed_by: PathBuf,
        /// The directories searched, comma-separated.
        searched: String,
        /// What to install, from [`HostFiles::new`].
        hint: String,
    },
    /// A file, directory or link exists but cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The host path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file that starts like ELF cannot be parsed.
    #[error("cannot read the ELF headers of {path}")]
    Elf {
        /// The host path.
        path: PathBuf,
        /// What the ELF reader found.
        source: ElfError,
    },
    /// A path asked for as a file is a directory or a special file.
    #[error("{path} is not a regular file")]
    NotRegular {
        /// The host path.
        path: PathBuf,
    },
    /// A path asked for as a directory is not one.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The host path.
        path: PathBuf,
    },
    /// Resolving a path met more than 40 symbolic links.
    #[error("too many levels of symbolic links resolving {path}")]
    SymlinkLoop {
        /// The host path being resolved.
        path: PathBuf,
    },
    /// A symbolic link's target is not UTF-8, so no image entry can hold it.
    #[error("the target of symbolic link {path} is not UTF-8")]
    NonUtf8 {
        /// The link (host path).
        path: PathBuf,
    },
    /// Two host paths would give one image path different entries.
    #[error("image path {path} would be both {first:?} and {second:?}")]
    Conflict {
        /// The image path.
        path: String,
        /// The entry collected first.
        first: HostEntry,
        /// The entry that disagrees with it.
        second: HostEntry,
    },
}

impl HostFilesError {
    /// True when the host lacks or has unusable files and a retry cannot
    /// help until someone changes the host (`selfnode` exits 2): every
    /// variant but [`HostFilesError::Read`] (an I/O failure);
    /// [`HostFilesError::Elf`] as [`ElfError::is_invalid_input`] says.
    /// [`HostFilesError::Conflict`] is invalid input too, not a conflict
    /// with existing state: the two entries come from this host's files.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            HostFilesError::Elf { source, .. } => source.is_invalid_input(),
            HostFilesError::Missing { .. }
            | HostFilesError::LibraryNotFound { .. }
            | HostFilesError::NotRegular { .. }
            | HostFilesError::NotADirectory { .. }
            | HostFilesError::SymlinkLoop { .. }
            | HostFilesError::NonUtf8 { .. }
            | HostFilesError::Conflict { .. } => true,
            HostFilesError::Read { .. } => false,
        }
    }
}

/// One image entry taken from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEntry {
    /// A regular file, copied from this host path.
    File(PathBuf),
    /// A symbolic link with this target, as on the host.
    Symlink(String),
    /// A directory.
    Dir,
}

/// Debian's multiarch directory name for this build's architecture, e.g.
/// `x86_64-linux-gnu` (right for x86_64, aarch64, riscv64 and s390x).
pub fn multiarch() -> String {
    format!("{}-linux-gnu", std::env::consts::ARCH)
}

/// The directories glibc's loader searches when there is no ld.so.cache
/// (what `ld.so --help` lists as the system search path).
pub fn system_library_dirs() -> Vec<String> {
    let triplet = multiarch();
    vec![
        format!("/lib/{triplet}"),
        format!("/usr/lib/{triplet}"),
        "/lib".to_string(),
        "/usr/lib".to_string(),
    ]
}

/// A path resolved on the host: where it ends, and the links on the way.
struct Resolved {
    path: String,
    links: Vec<(String, String)>,
}

/// Image entries collected from a host root (desired state of part of a
/// layer). See the module documentation.
#[derive(Debug, Clone)]
pub struct HostFiles {
    root: PathBuf,
    hint: String,
    library_dirs: Vec<String>,
    entries: BTreeMap<String, HostEntry>,
    /// Canonical paths of the ELF files whose dependencies were added.
    walked: BTreeSet<String>,
    /// Parsed ELF headers by canonical path (`None`: not ELF).
    parsed: BTreeMap<String, Option<ElfInfo>>,
}

impl HostFiles {
    /// Collects from host root `root` (normally `/`). `hint` ends the
    /// message of a missing-file error, e.g. ``install it with `apt-get
    /// install iptables` ``.
    pub fn new(root: impl Into<PathBuf>, hint: &str) -> HostFiles {
        HostFiles {
            root: root.into(),
            hint: hint.to_string(),
            library_dirs: system_library_dirs(),
            entries: BTreeMap::new(),
            walked: BTreeSet::new(),
            parsed: BTreeMap::new(),
        }
    }

    /// The collected entries by image path (e.g. `/usr/sbin/conntrack`).
    pub fn entries(&self) -> &BTreeMap<String, HostEntry> {
        &self.entries
    }

    /// Adds every entry to `layer`. Directories get mode 0755; files keep
    /// only whether they are executable (see [`LayerSpec::add_file`]).
    pub fn add_to(&self, layer: &mut LayerSpec) {
        for (path, entry) in &self.entries {
            match entry {
                HostEntry::File(host) => layer.add_file(host, path),
                HostEntry::Symlink(target) => layer.add_symlink(path, target),
                HostEntry::Dir => layer.add_dir(path, 0o755),
            };
        }
    }

    /// The host path of image path `path`.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Where `path` ends on the host after following every link, or `None`
    /// when it does not exist. Records nothing.
    pub fn canonical(&self, path: &str) -> Result<Option<String>, HostFilesError> {
        Ok(self.resolve(path)?.map(|r| r.path))
    }

    /// Resolves `path` component by component inside the root (absolute
    /// link targets are taken relative to the root).
    fn resolve(&self, path: &str) -> Result<Option<Resolved>, HostFilesError> {
        let mut todo: Vec<String> = path.split('/').rev().map(str::to_string).collect();
        let mut current = String::new();
        let mut links = Vec::new();
        while let Some(component) = todo.pop() {
            match component.as_str() {
                "" | "." => continue,
                ".." => {
                    let parent = current.rfind('/').unwrap_or(0);
                    current.truncate(parent);
                    continue;
                }
                _ => {}
            }
            let candidate = format!("{current}/{component}");
            let host = self.host_path(&candidate);
            let meta = match fs::symlink_metadata(&host) {
                Ok(meta) => meta,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    return Ok(None)
                }
                Err(source) => return Err(HostFilesError::Read { path: host, source }),
            };
            if !meta.file_type().is_symlink() {
                current = candidate;
                continue;
            }
            if links.len() >= MAX_LINKS {
                return Err(HostFilesError::SymlinkLoop {
                    path: self.host_path(path),
                });
            }
            let target = fs::read_link(&host).map_err(|source| HostFilesError::Read {
                path: host.clone(),
                source,
            })?;
            let target = target
                .to_str()
                .ok_or(HostFilesError::NonUtf8 { path: host })?
                .to_string();
            if target.starts_with('/') {
                current.clear();
            }
            todo.extend(target.split('/').rev().map(str::to_string));
            links.push((candidate, target));
        }
        if current.is_empty() {
            current.push('/');
        }
        Ok(Some(Resolved {
            path: current,
            links,
        }))
    }

    fn record(&mut self, path: &str, entry: HostEntry) -> Result<(), HostFilesError> {
        match self.entries.get(path) {
            Some(existing) if *existing != entry => Err(HostFilesError::Conflict {
                path: path.to_string(),
                first: existing.clone(),
                second: entry,
            }),
            Some(_) => Ok(()),
            None => {
                self.entries.insert(path.to_string(), entry);
                Ok(())
            }
        }
    }

    fn missing(&self, path: &str) -> HostFilesError {
        HostFilesError::Missing {
            path: self.host_path(path),
            hint: self.hint.clone(),
        }
    }

    /// Adds the file at `path` and the links leading to it, without its
    /// libraries. Returns its canonical path.
    pub fn add_file(&mut self, path: &str) -> Result<String, HostFilesError> {
        let resolved = self.resolve(path)?.ok_or_else(|| self.missing(path))?;
        let host = self.host_path(&resolved.path);
        let meta = fs::metadata(&host).map_err(|source| HostFilesError::Read {
            path: host.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(HostFilesError::NotRegular { path: host });
        }
        for (link, target) in resolved.links {
            self.record(&link, HostEntry::Symlink(target))?;
        }
        self.record(&resolved.path, HostEntry::File(host))?;
        Ok(resolved.path)
    }

    /// Adds the ELF program or library at `path` with its interpreter and
    /// every library it needs, transitively. A file that is not ELF is an
    /// error (a script would need an interpreter this does not know about).
    pub fn add_elf(&mut self, path: &str) -> Result<(), HostFilesError> {
        let canonical = self.add_file(path)?;
        if self.elf_info(&canonical)?.is_none() {
            return Err(HostFilesError::Elf {
                path: self.host_path(&canonical),
                source: ElfError::NotElf,
            });
        }
        self.add_dependencies(&canonical)
    }

    /// Adds directory `dir` and everything in it, recursively: ELF files
    /// with their libraries (for modules loaded with dlopen, like iptables'
    /// extensions), other files as they are.
    pub fn add_tree(&mut self, dir: &str) -> Result<(), HostFilesError> {
        let resolved = self.resolve(dir)?.ok_or_else(|| self.missing(dir))?;
        let host = self.host_path(&resolved.path);
        if !fs::metadata(&host).map(|m| m.is_dir()).unwrap_or(false) {
            return Err(HostFilesError::NotADirectory { path: host });
        }
        for (link, target) in resolved.links {
            self.record(&link, HostEntry::Symlink(target))?;
        }
        self.record(&resolved.path, HostEntry::Dir)?;
        let read_err = |source| HostFilesError::Read {
            path: host.clone(),
            source,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&host).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let name = entry.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| HostFilesError::NonUtf8 { path: entry.path() })?;
            names.push(name.to_string());
        }
        names.sort();
        for name in names {
            let path = format!("{}/{name}", resolved.path.trim_end_matches('/'));
            let meta = fs::symlink_metadata(self.host_path(&path)).map_err(|source| {
                HostFilesError::Read {
                    path: self.host_path(&path),
                    source,
                }
            })?;
            if meta.is_dir() {
                self.add_tree(&path)?;
                continue;
            }
            let canonical = self.add_file(&path)?;
            if self.elf_info(&canonical)?.is_some() {
                self.add_dependencies(&canonical)?;
            }
        }
        Ok(())
    }

    /// The ELF headers of the file at canonical path `canonical` (`None` if
    /// it is not ELF), read once.
    fn elf_info(&mut self, canonical: &str) -> Result<Option<ElfInfo>, HostFilesError> {
        if let Some(info) = self.parsed.get(canonical) {
            return Ok(info.clone());
        }
        let host = self.host_path(canonical);
        let data = fs::read(&host).map_err(|source| HostFilesError::Read {
            path: host.clone(),
            source,
        })?;
        let info = match elf::parse(&data) {
            Ok(info) => Some(info),
            Err(ElfError::NotElf) => None,
            Err(source) => return Err(HostFilesError::Elf { path: host, source }),
        };
        self.parsed.insert(canonical.to_string(), info.clone());
        Ok(info)
    }

    /// Adds, from the root, the loader and every library (transitively)
    /// that ELF file `file` needs, when `file` itself comes from elsewhere:
    /// a bundle's program, placed at image path `at` (for `$ORIGIN`). A file
    /// that is not ELF, or a static program, adds nothing. The appliance's
    /// initramfs uses this: the bundle's runc needs libseccomp and libc.
    pub fn add_libraries_for(
        &mut self,
        file: &std::path::Path,
        at: &str,
    ) -> Result<(), HostFilesError> {
        let data = fs::read(file).map_err(|source| HostFilesError::Read {
            path: file.to_path_buf(),
            source,
        })?;
        let info = match elf::parse(&data) {
            Ok(info) => info,
            Err(ElfError::NotElf) => return Ok(()),
            Err(source) => {
                return Err(HostFilesError::Elf {
                    path: file.to_path_buf(),
                    source,
                })
            }
        };
        self.add_needed(at, &info).map_err(|e| match e {
            // The program is not under the root: name it where it is.
            HostFilesError::LibraryNotFound {
                name,
                needed_by,
                searched,
                hint,
            } if needed_by == self.host_path(at) => HostFilesError::LibraryNotFound {
                name,
                needed_by: file.to_path_buf(),
                searched,
                hint,
            },
            e => e,
        })
    }

    fn add_dependencies(&mut self, canonical: &str) -> Result<(), HostFilesError> {
        if !self.walked.insert(canonical.to_string()) {
            return Ok(());
        }
        let Some(info) = self.elf_info(canonical)? else {
            return Ok(());
        };
        self.add_needed(canonical, &info)
    }

    /// Adds the libraries and the loader that `info` (the object at image
    /// path `needed_by`) names, with theirs.
    fn add_needed(&mut self, needed_by: &str, info: &ElfInfo) -> Result<(), HostFilesError> {
        for name in &info.needed {
            let found = self.find_library(name, needed_by, info)?;
            let library = self.add_file(&found)?;
            self.add_dependencies(&library)?;
        }
        if let Some(interpreter) = &info.interpreter {
            let loader = self.add_file(interpreter)?;
            self.add_dependencies(&loader)?;
        }
        Ok(())
    }

    /// Where the loader finds library `name` for the object at canonical
    /// path `needed_by` (the path as the loader would open it, links not
    /// resolved).
    fn find_library(
        &mut self,
        name: &str,
        needed_by: &str,
        requester: &ElfInfo,
    ) -> Result<String, HostFilesError> {
        let origin = needed_by.rsplit_once('/').map_or("", |(dir, _)| dir);
        let dirs: Vec<String> = if name.contains('/') {
            Vec::new()
        } else {
            requester
                .runpath
                .iter()
                .map(|dir| dir.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))
                .chain(self.library_dirs.iter().cloned())
                .collect()
        };
        // A name with a slash is a path and is not searched for; a relative
        // one depends on the working directory, so it is never found here.
        let candidates: Vec<String> = if name.starts_with('/') {
            vec![name.to_string()]
        } else if name.contains('/') {
            Vec::new()
        } else {
            dirs.iter()
                .map(|dir| format!("{}/{name}", dir.trim_end_matches('/')))
                .collect()
        };
        for candidate in &candidates {
            let Some(resolved) = self.resolve(candidate)? else {
                continue;
            };
            if !fs::metadata(self.host_path(&resolved.path)).is_ok_and(|m| m.is_file()) {
                continue;
            }
            // Like the loader: a library of another class or machine (a
            // 32-bit one in /usr/lib, say) is passed over.
            match self.elf_info(&resolved.path)? {
                Some(lib)
                    if lib.class64 == requester.class64 && lib.machine == requester.machine =>
                {
                    return Ok(candidate.clone())
                }
                _ => continue,
            }
        }
        let searched = if dirs.is_empty() {
            name.to_string()
        } else {
            dirs.iter()
                .map(|d| self.host_path(d).display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(HostFilesError::LibraryNotFound {
            name: name.to_string(),
            needed_by: self.host_path(needed_by),
            searched,
            hint: self.hint.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::testing::elf64;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    const HINT: &str = "install it with `apt-get install iptables conntrack`";

    fn file(root: &Path, path: &str, data: &[u8]) {
        let host = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(host.parent().unwrap()).unwrap();
        fs::write(host, data).unwrap();
    }

    fn link(root: &Path, path: &str, target: &str) {
        let host = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(host.parent().unwrap()).unwrap();
        symlink(target, host).unwrap();
    }

    /// A merged-/usr root like Debian 12's: /lib and /lib64 are links.
    fn merged_usr_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let t = multiarch();
        fs::create_dir_all(root.join("usr/lib64")).unwrap();
        link(root, "/lib", "usr/lib");
        link(root, "/lib64", "usr/lib64");
        link(
            root,
            "/usr/lib64/ld-linux-x86-64.so.2",
            &format!("/lib/{t}/ld-linux-x86-64.so.2"),
        );
        file(
            root,
            &format!("/usr/lib/{t}/ld-linux-x86-64.so.2"),
            &elf64(None, &[], None),
        );
        file(
            root,
            &format!("/usr/lib/{t}/libc.so.6"),
            &elf64(None, &["ld-linux-x86-64.so.2"], None),
        );
        dir
    }

    #[test]
    fn links_and_libraries_keep_their_host_paths() {
        let dir = merged_usr_root();
        let root = dir.path();
        let t = multiarch();
        file(
            root,
            &format!("/usr/lib/{t}/libfoo.so.1.2.3"),
            &elf64(None, &["libc.so.6"], None),
        );
        link(
            root,
            &format!("/usr/lib/{t}/libfoo.so.1"),
            "libfoo.so.1.2.3",
        );
        // A library found through the program's RUNPATH ($ORIGIN-relative).
        file(root, "/opt/tool/lib/libown.so", &elf64(None, &[], None));
        file(
            root,
            "/opt/tool/bin/tool",
            &elf64(
                Some("/lib64/ld-linux-x86-64.so.2"),
                &["libfoo.so.1", "libown.so", "libc.so.6"],
                Some("$ORIGIN/../lib"),
            ),
        );
        link(root, "/usr/sbin/tool", "../../opt/tool/bin/tool");

        let mut files = HostFiles::new(root, HINT);
        files.add_elf("/usr/sbin/tool").unwrap();
        let got: Vec<(String, HostEntry)> = files
            .entries()
            .iter()
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect();
        let f = |p: &str| HostEntry::File(root.join(p.trim_start_matches('/')));
        let l = |t: &str| HostEntry::Symlink(t.to_string());
        let want = vec![
            ("/lib".to_string(), l("usr/lib")),
            ("/lib64".to_string(), l("usr/lib64")),
            ("/opt/tool/bin/tool".to_string(), f("/opt/tool/bin/tool")),
            (
                "/opt/tool/lib/libown.so".to_string(),
                f("/opt/tool/lib/libown.so"),
            ),
            (
                format!("/usr/lib/{t}/ld-linux-x86-64.so.2"),
                f(&format!("/usr/lib/{t}/ld-linux-x86-64.so.2")),
            ),
            (
                format!("/usr/lib/{t}/libc.so.6"),
                f(&format!("/usr/lib/{t}/libc.so.6")),
            ),
            (format!("/usr/lib/{t}/libfoo.so.1"), l("libfoo.so.1.2.3")),
            (
                format!("/usr/lib/{t}/libfoo.so.1.2.3"),
                f(&format!("/usr/lib/{t}/libfoo.so.1.2.3")),
            ),
            (
                "/usr/lib64/ld-linux-x86-64.so.2".to_string(),
                l(&format!("/lib/{t}/ld-linux-x86-64.so.2")),
            ),
            ("/usr/sbin/tool".to_string(), l("../../opt/tool/bin/tool")),
        ];
        assert_eq!(got, want);

        // The entries make a layer that builds.
        let mut layer = LayerSpec::new();
        files.add_to(&mut layer);
        crate::layer::hash_layer(&layer).unwrap();
    }

    /// The appliance's case: the bundle's runc is not in the root, its
    /// libraries are; a static program adds nothing; a library the root
    /// lacks is named with the program's own path.
    #[test]
    fn a_program_from_outside_the_root_gets_its_libraries_from_the_root() {
        let dir = merged_usr_root();
        let root = dir.path();
        let t = multiarch();
        file(
            root,
            &format!("/usr/lib/{t}/libseccomp.so.2"),
            &elf64(None, &["libc.so.6"], None),
        );
        let bundle = tempfile::tempdir().unwrap();
        let runc = bundle.path().join("runc");
        fs::write(
            &runc,
            elf64(
                Some("/lib64/ld-linux-x86-64.so.2"),
                &["libseccomp.so.2", "libc.so.6"],
                None,
            ),
        )
        .unwrap();
        let static_one = bundle.path().join("kubelet");
        fs::write(&static_one, elf64(None, &[], None)).unwrap();
        let not_elf = bundle.path().join("VERSIONS");
        fs::write(&not_elf, "etcd v3\n").unwrap();

        let mut files = HostFiles::new(root, HINT);
        files
            .add_libraries_for(&static_one, "/b/bin/kubelet")
            .unwrap();
        files.add_libraries_for(&not_elf, "/b/VERSIONS").unwrap();
        assert!(files.entries().is_empty(), "{:?}", files.entries());
        files.add_libraries_for(&runc, "/b/bin/runc").unwrap();
        let got: Vec<&str> = files.entries().keys().map(String::as_str).collect();
        let seccomp = format!("/usr/lib/{t}/libseccomp.so.2");
        let libc = format!("/usr/lib/{t}/libc.so.6");
        let loader = format!("/usr/lib/{t}/ld-linux-x86-64.so.2");
        assert_eq!(
            got,
            vec![
                "/lib",
                "/lib64",
                loader.as_str(),
                libc.as_str(),
                seccomp.as_str(),
                "/usr/lib64/ld-linux-x86-64.so.2"
            ]
        );
        // The program itself is not added: it is the caller's.
        assert!(!files.entries().contains_key("/b/bin/runc"));

        fs::remove_file(root.join(seccomp.trim_start_matches('/'))).unwrap();
        let err = HostFiles::new(root, HINT)
            .add_libraries_for(&runc, "/b/bin/runc")
            .unwrap_err()
            .to_string();
        assert!(err.contains("libseccomp.so.2"), "{err}");
        assert!(err.contains(&runc.display().to_string()), "{err}");
    }

    #[test]
    fn a_missing_library_is_named_with_what_needs_it_and_what_to_install() {
        let dir = merged_usr_root();
        let root = dir.path();
        let t = multiarch();
        // The host's real program, but none of its iptables libraries.
        let real = fs::read("/usr/sbin/xtables-legacy-multi")
            .unwrap_or_else(|e| panic!("cannot read /usr/sbin/xtables-legacy-multi ({e}): {HINT}"));
        file(root, "/usr/sbin/xtables-legacy-multi", &real);
        let err = HostFiles::new(root, HINT)
            .add_elf("/usr/sbin/xtables-legacy-multi")
            .unwrap_err();
        let r = root.display();
        assert_eq!(
            err.to_string(),
            format!(
                "libxtables.so.12 (needed by {r}/usr/sbin/xtables-legacy-multi) is not on this host: \
                 looked in {r}/lib/{t}, {r}/usr/lib/{t}, {r}/lib, {r}/usr/lib; {HINT}"
            )
        );

        // A missing program, and a link that points nowhere.
        let err = HostFiles::new(root, HINT)
            .add_elf("/usr/sbin/conntrack")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{r}/usr/sbin/conntrack is missing on this host; {HINT}")
        );
        link(root, "/usr/sbin/iptables", "/etc/alternatives/iptables");
        let err = HostFiles::new(root, HINT)
            .add_file("/usr/sbin/iptables")
            .unwrap_err();
        assert!(matches!(err, HostFilesError::Missing { .. }), "{err}");
    }

    #[test]
    fn libraries_of_another_class_or_machine_are_passed_over() {
        let dir = merged_usr_root();
        let root = dir.path();
        let t = multiarch();
        // An aarch64 libbar in the first directory searched, the right one
        // in a later one.
        let mut arm = elf64(None, &[], None);
        arm[18..20].copy_from_slice(&183u16.to_le_bytes());
        file(root, &format!("/usr/lib/{t}/libbar.so"), &arm);
        file(root, "/usr/lib/libbar.so", &elf64(None, &[], None));
        file(
            root,
            "/usr/bin/prog",
            &elf64(Some("/lib64/ld-linux-x86-64.so.2"), &["libbar.so"], None),
        );
        let mut files = HostFiles::new(root, HINT);
        files.add_elf("/usr/bin/prog").unwrap();
        assert!(files.entries().contains_key("/usr/lib/libbar.so"));
        assert!(!files
            .entries()
            .contains_key(&format!("/usr/lib/{t}/libbar.so")));
    }

    #[test]
    fn trees_scripts_and_loops() {
        let dir = merged_usr_root();
        let root = dir.path();
        let t = multiarch();
        file(
            root,
            &format!("/usr/lib/{t}/mods/libx_a.so"),
            &elf64(None, &["libc.so.6"], None),
        );
        file(root, &format!("/usr/lib/{t}/mods/README"), b"not ELF\n");
        link(root, &format!("/usr/lib/{t}/mods/libx_b.so"), "libx_a.so");
        let mut files = HostFiles::new(root, HINT);
        files.add_tree(&format!("/lib/{t}/mods")).unwrap();
        let e = files.entries();
        assert_eq!(e[&format!("/usr/lib/{t}/mods")], HostEntry::Dir);
        assert!(matches!(
            e[&format!("/usr/lib/{t}/mods/README")],
            HostEntry::File(_)
        ));
        assert_eq!(
            e[&format!("/usr/lib/{t}/mods/libx_b.so")],
            HostEntry::Symlink("libx_a.so".into())
        );
        assert!(e.contains_key(&format!("/usr/lib/{t}/libc.so.6")));
        assert!(e.contains_key(&format!("/usr/lib/{t}/ld-linux-x86-64.so.2")));

        // A script is not an ELF program.
        file(root, "/usr/sbin/wrapper", b"#!/bin/sh\nexit 0\n");
        let err = files.add_elf("/usr/sbin/wrapper").unwrap_err();
        assert_eq!(
            crate::error_chain(&err),
            format!(
                "cannot read the ELF headers of {}/usr/sbin/wrapper: not an ELF file (no \\x7fELF magic)",
                root.display()
            )
        );

        link(root, "/usr/sbin/a", "b");
        link(root, "/usr/sbin/b", "a");
        let err = files.add_file("/usr/sbin/a").unwrap_err();
        assert!(matches!(err, HostFilesError::SymlinkLoop { .. }), "{err}");
    }
}
