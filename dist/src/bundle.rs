//! The bundle: a directory with the pinned upstream binaries selfnode runs
//! and builds images from.
//!
//! ```text
//! VERSION      KEY=value lines ('#' comments): KUBERNETES_VERSION, ETCD_VERSION,
//!              COREDNS_VERSION, PAUSE_VERSION, CONTAINERD_VERSION, BUNDLE_FORMAT
//! bin/         kube-*, kubelet, kubeadm, kubectl, etcd*, coredns, pause,
//!              containerd, containerd-shim-runc-v2, ctr, runc
//! cni/bin/     bridge host-local loopback portmap
//! images/      optional OCI archive tarballs (*.tar) imported with the bundle
//! SHA256SUMS   sha256sum format, paths relative to the bundle root
//! ```
//!
//! [`Bundle::open`] checks the layout (cheap: metadata only);
//! [`Bundle::verify_checksums`] reads every binary and checks SHA256SUMS;
//! [`Bundle::verify_checksums_since`] skips the files unchanged (size,
//! mtime) since the record of an earlier pass, for the agent's start.

use crate::oci::{Digest, HashingWriter};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The bundle layout version this code reads.
pub const BUNDLE_FORMAT: u32 = 1;

/// Where hosts keep the bundle unless told otherwise.
pub const DEFAULT_BUNDLE_DIR: &str = "/var/cache/selfnode/bundle";

/// Binaries every bundle has in `bin/`.
pub const REQUIRED_BINARIES: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubeadm",
    "kubectl",
    "etcd",
    "etcdctl",
    "etcdutl",
    "coredns",
    "pause",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
];

/// CNI plugins every bundle has in `cni/bin/`.
pub const REQUIRED_CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback", "portmap"];

const HINT: &str = "rebuild it with fixtures/build-bundle.sh or download the bundle again";

/// Errors of this module. Every message names the file and ends with what to do.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle directory is missing or not a directory.
    #[error("bundle directory {path} does not exist or is not a directory; {HINT}")]
    NoBundle {
        /// The directory given.
        path: PathBuf,
    },
    /// A bundle file or directory exists but cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line of `VERSION` is not `KEY=value`, or a key is set twice.
    #[error("{path}:{line}: {reason}; {HINT}")]
    VersionSyntax {
        /// The `VERSION` file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// `VERSION` lacks a required key.
    #[error("{path} does not set {key}; {HINT}")]
    MissingKey {
        /// The `VERSION` file.
        path: PathBuf,
        /// The key, e.g. `ETCD_VERSION`.
        key: &'static str,
    },
    /// A version value is not `[v]N.N[.N...][-suffix]`.
    #[error("{path} sets {key}={value:?}, which is not a version (expected something like {example}); {HINT}")]
    InvalidVersion {
        /// The `VERSION` file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// Its value as written.
        value: String,
        /// A valid value for that key, for the message.
        example: &'static str,
    },
    /// `BUNDLE_FORMAT` is not [`BUNDLE_FORMAT`].
    #[error("{path} has BUNDLE_FORMAT={found}, but this selfnode reads format {BUNDLE_FORMAT} only; use a bundle made for this selfnode version ({HINT})")]
    UnsupportedFormat {
        /// The `VERSION` file.
        path: PathBuf,
        /// The value found.
        found: String,
    },
    /// A required file does not exist.
    #[error("bundle file {path} is missing; {HINT}")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },
    /// A required file is a directory or a special file.
    #[error("bundle file {path} is not a regular file; {HINT}")]
    NotRegularFile {
        /// The file.
        path: PathBuf,
    },
    /// A binary or CNI plugin has no execute bit.
    #[error("bundle file {path} is not executable (mode {mode:o}); {HINT}")]
    NotExecutable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line of `SHA256SUMS` is not `<64 hex>  <relative path>`.
    #[error("{path}:{line}: expected '<sha256 hex>  <relative path>'; {HINT}")]
    ChecksumSyntax {
        /// The `SHA256SUMS` file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A required binary or plugin is not listed in `SHA256SUMS`.
    #[error("{sums} does not list {file}, so it cannot be verified; {HINT}")]
    NotInChecksums {
        /// The `SHA256SUMS` file.
        sums: PathBuf,
        /// The missing entry, relative to the bundle root, e.g. `bin/etcd`.
        file: String,
    },
    /// A file's SHA-256 differs from its `SHA256SUMS` line.
    #[error("checksum mismatch for {path}: SHA256SUMS says {expected}, the file has {actual}; the bundle is damaged, {HINT}")]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The hash listed, lowercase hex.
        expected: String,
        /// The file's hash, lowercase hex.
        actual: String,
    },
}

impl BundleError {
    /// True for every variant: a bundle that is missing, unreadable,
    /// malformed or damaged stays so on a retry (`selfnode` exits 2); the
    /// fix is another bundle. [`BundleError::Read`] is counted too, as
    /// `selfnode` always has.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            BundleError::NoBundle { .. }
            | BundleError::Read { .. }
            | BundleError::VersionSyntax { .. }
            | BundleError::MissingKey { .. }
            | BundleError::InvalidVersion { .. }
            | BundleError::UnsupportedFormat { .. }
            | BundleError::MissingFile { .. }
            | BundleError::NotRegularFile { .. }
            | BundleError::NotExecutable { .. }
            | BundleError::ChecksumSyntax { .. }
            | BundleError::NotInChecksums { .. }
            | BundleError::ChecksumMismatch { .. } => true,
        }
    }
}

/// The pinned versions of a bundle (from its `VERSION` file), as written
/// there (e.g. `v1.37.2`, `v3.7.3`, `3.10.2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// `KUBERNETES_VERSION`, e.g. `v1.37.2`.
    pub kubernetes: String,
    /// `ETCD_VERSION`, e.g. `v3.7.3`.
    pub etcd: String,
    /// `COREDNS_VERSION`, e.g. `v1.14.6`.
    pub coredns: String,
    /// `PAUSE_VERSION`, e.g. `3.10.2`.
    pub pause: String,
    /// `CONTAINERD_VERSION`, e.g. `v2.4.2`.
    pub containerd: String,
    /// `BUNDLE_FORMAT`; always [`BUNDLE_FORMAT`] once parsed.
    pub bundle_format: u32,
}

impl Versions {
    /// Parses the content of a `VERSION` file; `path` is only used in errors.
    /// Unknown keys are ignored (newer bundles may add some); duplicate keys,
    /// malformed lines and an unknown `BUNDLE_FORMAT` are refused.
    pub fn parse(text: &str, path: &Path) -> Result<Versions, BundleError> {
        let mut values: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |reason: String| BundleError::VersionSyntax {
                path: path.to_path_buf(),
                line: line_no,
                reason,
            };
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| syntax(format!("expected KEY=value, got {line:?}")))?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(syntax(format!("invalid key {key:?}")));
            }
            if value.is_empty() {
                return Err(syntax(format!("{key} has an empty value")));
            }
            if let Some((_, first)) = values.insert(key, (value, line_no)) {
                return Err(syntax(format!(
                    "{key} is set twice (first on line {first})"
                )));
            }
        }
        let get = |key: &'static str| -> Result<&str, BundleError> {
            values
                .get(key)
                .map(|(v, _)| *v)
                .ok_or(BundleError::MissingKey {
                    path: path.to_path_buf(),
                    key,
                })
        };
        // The format gates everything else: check it first.
        let format = get("BUNDLE_FORMAT")?;
        if format.parse::<u32>().ok() != Some(BUNDLE_FORMAT) {
            return Err(BundleError::UnsupportedFormat {
                path: path.to_path_buf(),
                found: format.to_string(),
            });
        }
        let version = |key: &'static str, example: &'static str| -> Result<String, BundleError> {
            let value = get(key)?;
            if is_version(value) {
                Ok(value.to_string())
            } else {
                Err(BundleError::InvalidVersion {
                    path: path.to_path_buf(),
                    key,
                    value: value.to_string(),
                    example,
                })
            }
        };
        Ok(Versions {
            kubernetes: version("KUBERNETES_VERSION", "v1.37.2")?,
            etcd: version("ETCD_VERSION", "v3.7.3")?,
            coredns: version("COREDNS_VERSION", "v1.14.6")?,
            pause: version("PAUSE_VERSION", "3.10.2")?,
            containerd: version("CONTAINERD_VERSION", "v2.4.2")?,
            bundle_format: BUNDLE_FORMAT,
        })
    }
}

/// `[v]N.N[.N...][-suffix]`, where the whole is a valid image tag.
fn is_version(value: &str) -> bool {
    let rest = value.strip_prefix('v').unwrap_or(value);
    let (numbers, suffix) = match rest.split_once('-') {
        Some((n, s)) => (n, Some(s)),
        None => (rest, None),
    };
    let parts: Vec<&str> = numbers.split('.').collect();
    parts.len() >= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && suffix.is_none_or(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        })
        && value.len() <= 128
}

/// The files a [`Bundle::verify_checksums_since`] pass found intact, for the
/// next pass to skip. Serialised as JSON by its keeper (the agent).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChecksumRecord {
    /// The bundle directory the record is of.
    pub root: PathBuf,
    /// By path relative to the root, as `SHA256SUMS` lists it.
    pub files: BTreeMap<String, FileStamp>,
}

/// One file as checked: the hash it matched and its metadata then.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime_s: i64,
    /// Modification time, nanoseconds within the second.
    pub mtime_ns: i64,
}

/// `SHA256SUMS` text (of the file at `sums_path`, for messages) as
/// (path relative to the bundle root, lowercase hex hash), checked to list
/// every required binary and CNI plugin. Paths are relative and never
/// climb (`..`): what a bundle fetched from another host may be told to
/// write.
pub fn parse_checksums(text: &str, sums_path: &Path) -> Result<Vec<(String, String)>, BundleError> {
    let sums_path = sums_path.to_path_buf();
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let syntax = || BundleError::ChecksumSyntax {
            path: sums_path.clone(),
            line: index + 1,
        };
        let (hash, rest) = raw.split_once(' ').ok_or_else(syntax)?;
        // "<hash>  <path>" (text mode) or "<hash> *<path>" (binary mode).
        let file = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .ok_or_else(syntax)?;
        let file = file.strip_prefix("./").unwrap_or(file);
        let hash_ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        let path_ok = !file.is_empty()
            && !file.starts_with('/')
            && !file.split('/').any(|c| c == ".." || c.is_empty());
        if !hash_ok || !path_ok {
            return Err(syntax());
        }
        wanted.push((file.to_string(), hash.to_ascii_lowercase()));
    }
    let listed: HashSet<&str> = wanted.iter().map(|(f, _)| f.as_str()).collect();
    let required = REQUIRED_BINARIES
        .iter()
        .map(|n| format!("bin/{n}"))
        .chain(REQUIRED_CNI_PLUGINS.iter().map(|n| format!("cni/bin/{n}")));
    for file in required {
        if !listed.contains(file.as_str()) {
            return Err(BundleError::NotInChecksums {
                sums: sums_path.clone(),
                file,
            });
        }
    }
    Ok(wanted)
}

/// An opened, layout-checked bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    root: PathBuf,
    versions: Versions,
}

impl Bundle {
    /// Opens the bundle at `dir`: parses `VERSION` and checks that every
    /// required binary and CNI plugin is a regular, executable file. Symlinks
    /// are followed. Does not read the binaries (see
    /// [`Bundle::verify_checksums`]).
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        if !dir.is_dir() {
            return Err(BundleError::NoBundle {
                path: dir.to_path_buf(),
            });
        }
        let version_path = dir.join("VERSION");
        let text = std::fs::read_to_string(&version_path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                BundleError::MissingFile {
                    path: version_path.clone(),
                }
            } else {
                BundleError::Read {
                    path: version_path.clone(),
                    source,
                }
            }
        })?;
        let versions = Versions::parse(&text, &version_path)?;
        let bundle = Bundle {
            root: dir.to_path_buf(),
            versions,
        };
        for name in REQUIRED_BINARIES {
            check_executable(&bundle.bin(name))?;
        }
        for name in REQUIRED_CNI_PLUGINS {
            check_executable(&bundle.cni_bin_dir().join(name))?;
        }
        check_regular(&bundle.root.join("SHA256SUMS"))?;
        Ok(bundle)
    }

    /// The bundle directory, as given to [`Bundle::open`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pinned versions from `VERSION`.
    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// `bin/<name>`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.root.join("bin").join(name)
    }

    /// `cni/bin`.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.root.join("cni").join("bin")
    }

    /// `images` (may not exist).
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The `images/*.tar` OCI archives, sorted by name. Other files there are
    /// ignored (and logged).
    pub fn image_archives(&self) -> Result<Vec<PathBuf>, BundleError> {
        let dir = self.images_dir();
        let read_err = |source| BundleError::Read {
            path: dir.clone(),
            source,
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read_err(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(read_err)?.path();
            if path.extension().is_some_and(|e| e == "tar") {
                check_regular(&path)?;
                out.push(path);
            } else {
                tracing::warn!(path = %path.display(), "ignoring file in the bundle's images/: only *.tar OCI archives are imported");
            }
        }
        out.sort();
        Ok(out)
    }

    /// Checks every line of `SHA256SUMS` against the files, and that every
    /// required binary and CNI plugin is listed. Reads all binaries (hundreds
    /// of MB): blocking, a few seconds; uses up to 4 threads.
    pub fn verify_checksums(&self) -> Result<(), BundleError> {
        self.check_files(&self.checksum_list()?)
    }

    /// [`Bundle::verify_checksums`] for a host that starts often: a file
    /// whose expected hash, size and modification time are those `earlier`
    /// recorded is not read again. Returns the record of this pass (every
    /// listed file; the caller keeps it for the next one) and how many files
    /// were read. A record of another bundle directory counts for nothing.
    ///
    /// What this skips is a re-read of an unchanged file: a file damaged in
    /// place with its size and mtime kept is not noticed until the record is
    /// lost. Errors: as [`Bundle::verify_checksums`].
    pub fn verify_checksums_since(
        &self,
        earlier: Option<&ChecksumRecord>,
    ) -> Result<(ChecksumRecord, usize), BundleError> {
        let earlier = earlier.filter(|r| r.root == self.root);
        let mut record = ChecksumRecord {
            root: self.root.clone(),
            files: BTreeMap::new(),
        };
        let mut todo = Vec::new();
        for (file, sha256) in self.checksum_list()? {
            let meta = check_regular(&self.root.join(&file))?;
            let stamp = FileStamp {
                sha256,
                size: meta.len(),
                mtime_s: meta.mtime(),
                mtime_ns: meta.mtime_nsec(),
            };
            if earlier.and_then(|r| r.files.get(&file)) != Some(&stamp) {
                todo.push((file.clone(), stamp.sha256.clone()));
            }
            record.files.insert(file, stamp);
        }
        self.check_files(&todo)?;
        Ok((record, todo.len()))
    }

    /// `SHA256SUMS` as (path relative to the root, lowercase hex hash),
    /// checked to list every required binary and CNI plugin.
    pub fn checksums(&self) -> Result<Vec<(String, String)>, BundleError> {
        self.checksum_list()
    }

    fn checksum_list(&self) -> Result<Vec<(String, String)>, BundleError> {
        let sums_path = self.root.join("SHA256SUMS");
        let text = std::fs::read_to_string(&sums_path).map_err(|source| BundleError::Read {
            path: sums_path.clone(),
            source,
        })?;
        parse_checksums(&text, &sums_path)
    }

    /// Hashes `wanted` (relative path, expected hash) on up to 4 threads.
    fn check_files(&self, wanted: &[(String, String)]) -> Result<(), BundleError> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4);
        let chunk = wanted.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = wanted
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || part.iter().try_for_each(|(f, h)| self.check_one(f, h)))
                })
                .collect();
            handles.into_iter().try_for_each(|h| match h.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            })
        })
    }

    fn check_one(&self, file: &str, expected: &str) -> Result<(), BundleError> {
        let path = self.root.join(file);
        let mut f = File::open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                BundleError::MissingFile { path: path.clone() }
            } else {
                BundleError::Read {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let mut hasher = HashingWriter::new(io::sink());
        io::copy(&mut f, &mut hasher).map_err(|source| BundleError::Read {
            path: path.clone(),
            source,
        })?;
        let (digest, _, _) = hasher.finish();
        if digest.hex() != expected {
            return Err(BundleError::ChecksumMismatch {
                path,
                expected: expected.to_string(),
                actual: digest.hex().to_string(),
            });
        }
        Ok(())
    }
}

fn check_regular(path: &Path) -> Result<std::fs::Metadata, BundleError> {
    let meta = std::fs::metadata(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            BundleError::MissingFile {
                path: path.to_path_buf(),
            }
        } else {
            BundleError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    if !meta.is_file() {
        return Err(BundleError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    Ok(meta)
}

fn check_executable(path: &Path) -> Result<(), BundleError> {
    let mode = check_regular(path)?.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(BundleError::NotExecutable {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Test helpers: a fake bundle with small script "binaries". Public so the
/// integration tests of this crate (and other crates' unit tests) can make
/// broken bundles without the real one.
pub mod testing {
    use super::*;
    use std::io::Write;

    /// Writes a complete, valid bundle with tiny shell scripts as binaries
    /// into `dir`.
    pub fn write_fake_bundle(dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir.join("bin"))?;
        std::fs::create_dir_all(dir.join("cni/bin"))?;
        std::fs::create_dir_all(dir.join("images"))?;
        std::fs::write(
            dir.join("VERSION"),
            "# test bundle\nKUBERNETES_VERSION=v1.37.2\nETCD_VERSION=v3.7.3\nCOREDNS_VERSION=v1.14.6\n\
             PAUSE_VERSION=3.10.2\nCONTAINERD_VERSION=v2.4.2\nBUNDLE_FORMAT=1\n",
        )?;
        let mut sums = File::create(dir.join("SHA256SUMS"))?;
        let files = REQUIRED_BINARIES
            .iter()
            .map(|n| format!("bin/{n}"))
            .chain(REQUIRED_CNI_PLUGINS.iter().map(|n| format!("cni/bin/{n}")));
        for rel in files {
            let content = format!("#!/bin/sh\necho {rel}\n");
            let path = dir.join(&rel);
            std::fs::write(&path, &content)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            writeln!(sums, "{}  {rel}", Digest::of(content.as_bytes()).hex())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::write_fake_bundle;
    use super::*;

    const GOOD: &str = "KUBERNETES_VERSION=v1.37.2\nETCD_VERSION=v3.7.3\nCOREDNS_VERSION=v1.14.6\nPAUSE_VERSION=3.10.2\nCONTAINERD_VERSION=v2.4.2\nBUNDLE_FORMAT=1\n";

    fn parse(text: &str) -> Result<Versions, String> {
        Versions::parse(text, Path::new("/b/VERSION")).map_err(|e| e.to_string())
    }

    #[test]
    fn version_file_parses() {
        let text = format!("# comment\n\n  {GOOD}FUTURE_KEY=x\n");
        let v = parse(&text).unwrap();
        assert_eq!(
            v,
            Versions {
                kubernetes: "v1.37.2".into(),
                etcd: "v3.7.3".into(),
                coredns: "v1.14.6".into(),
                pause: "3.10.2".into(),
                containerd: "v2.4.2".into(),
                bundle_format: 1,
            }
        );
    }

    #[test]
    fn version_file_errors_name_the_line_and_key() {
        let cases = [
            (
                format!("{GOOD}garbage\n"),
                "/b/VERSION:7: expected KEY=value, got \"garbage\"",
            ),
            (
                format!("{GOOD}ETCD_VERSION=v3.7.4\n"),
                "/b/VERSION:7: ETCD_VERSION is set twice (first on line 2)",
            ),
            (format!("{GOOD}X=\n"), "/b/VERSION:7: X has an empty value"),
            (
                format!("{GOOD}lower=1\n"),
                "/b/VERSION:7: invalid key \"lower\"",
            ),
            (
                GOOD.replace("ETCD_VERSION=v3.7.3\n", ""),
                "/b/VERSION does not set ETCD_VERSION",
            ),
            (
                GOOD.replace("BUNDLE_FORMAT=1\n", ""),
                "/b/VERSION does not set BUNDLE_FORMAT",
            ),
            (
                GOOD.replace("BUNDLE_FORMAT=1", "BUNDLE_FORMAT=2"),
                "/b/VERSION has BUNDLE_FORMAT=2, but this selfnode reads format 1 only",
            ),
            (
                GOOD.replace("BUNDLE_FORMAT=1", "BUNDLE_FORMAT=one"),
                "/b/VERSION has BUNDLE_FORMAT=one, but",
            ),
            (
                GOOD.replace("v1.37.2", "latest"),
                "/b/VERSION sets KUBERNETES_VERSION=\"latest\", which is not a version",
            ),
            (
                GOOD.replace("3.10.2", "3.10.2:x"),
                "PAUSE_VERSION=\"3.10.2:x\"",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            assert!(err.contains("fixtures/build-bundle.sh"), "{err}");
        }
    }

    #[test]
    fn open_accepts_a_complete_bundle() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_bundle(dir.path()).unwrap();
        let bundle = Bundle::open(dir.path()).unwrap();
        assert_eq!(bundle.versions().kubernetes, "v1.37.2");
        assert_eq!(bundle.bin("etcd"), dir.path().join("bin/etcd"));
        assert_eq!(bundle.cni_bin_dir(), dir.path().join("cni/bin"));
        assert_eq!(bundle.images_dir(), dir.path().join("images"));
        assert!(bundle.image_archives().unwrap().is_empty());
        bundle.verify_checksums().unwrap();
    }

    #[test]
    fn open_names_a_missing_binary() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_bundle(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("bin/kube-scheduler")).unwrap();
        let err = Bundle::open(dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "bundle file {}/bin/kube-scheduler is missing; rebuild it with fixtures/build-bundle.sh or download the bundle again",
                dir.path().display()
            )
        );
        std::fs::remove_file(dir.path().join("cni/bin/portmap")).unwrap();
        std::fs::write(dir.path().join("bin/kube-scheduler"), "x").unwrap();
        std::fs::set_permissions(
            dir.path().join("bin/kube-scheduler"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let err = Bundle::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cni/bin/portmap is missing"), "{err}");
    }

    #[test]
    fn open_names_a_non_executable_or_odd_binary() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_bundle(dir.path()).unwrap();
        let etcd = dir.path().join("bin/etcd");
        std::fs::set_permissions(&etcd, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Bundle::open(dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "bundle file {} is not executable (mode 644); rebuild it with fixtures/build-bundle.sh or download the bundle again",
                etcd.display()
            )
        );
        std::fs::remove_file(&etcd).unwrap();
        std::fs::create_dir(&etcd).unwrap();
        let err = Bundle::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "bundle file {} is not a regular file",
                etcd.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn open_refuses_missing_dir_and_version_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Bundle::open(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist or is not a directory"),
            "{err}"
        );
        write_fake_bundle(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("VERSION")).unwrap();
        let err = Bundle::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("/VERSION is missing"), "{err}");
    }

    #[test]
    fn checksum_mismatch_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_bundle(dir.path()).unwrap();
        let kubelet = dir.path().join("bin/kubelet");
        std::fs::write(&kubelet, "#!/bin/sh\necho tampered\n").unwrap();
        let bundle = Bundle::open(dir.path()).unwrap();
        let err = bundle.verify_checksums().unwrap_err();
        match &err {
            BundleError::ChecksumMismatch { path, .. } => assert_eq!(path, &kubelet),
            other => panic!("unexpected error {other}"),
        }
        assert!(err
            .to_string()
            .starts_with(&format!("checksum mismatch for {}", kubelet.display())));
    }

    #[test]
    fn a_checksum_record_skips_unchanged_files_and_rereads_changed_ones() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_bundle(dir.path()).unwrap();
        let bundle = Bundle::open(dir.path()).unwrap();
        let listed = bundle.checksum_list().unwrap().len();
        let (first, read) = bundle.verify_checksums_since(None).unwrap();
        assert_eq!(read, listed);
        assert_eq!(first.files.len(), listed);
        let (second, read) = bundle.verify_checksums_since(Some(&first)).unwrap();
        assert_eq!((read, &second), (0, &first));
        // A record of another directory is not trusted.
        let other = ChecksumRecord {
            root: "/elsewhere".into(),
            ..first.clone()
        };
        let (_, read) = bundle.verify_checksums_since(Some(&other)).unwrap();
        assert_eq!(read, listed);

        // Damage with a new mtime (what a copy or an edit leaves) is read
        // and found; the record of the good pass still names it.
        let kubelet = dir.path().join("bin/kubelet");
        std::fs::write(&kubelet, "#!/bin/sh\necho tampered\n").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        File::options()
            .write(true)
            .open(&kubelet)
            .unwrap()
            .set_modified(later)
            .unwrap();
        match bundle.verify_checksums_since(Some(&first)).unwrap_err() {
            BundleError::ChecksumMismatch { path, .. } => assert_eq!(path, kubelet),
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn checksums_must_cover_required_files_and_be_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_bundle(dir.path()).unwrap();
        let sums = dir.path().join("SHA256SUMS");
        let text = std::fs::read_to_string(&sums).unwrap();
        let without: String = text
            .lines()
            .filter(|l| !l.ends_with("bin/ctr"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&sums, &without).unwrap();
        let bundle = Bundle::open(dir.path()).unwrap();
        let err = bundle.verify_checksums().unwrap_err().to_string();
        assert!(err.contains("does not list bin/ctr"), "{err}");

        std::fs::write(&sums, format!("{text}nonsense\n")).unwrap();
        let err = bundle.verify_checksums().unwrap_err().to_string();
        assert!(err.contains("SHA256SUMS:21: expected"), "{err}");

        std::fs::write(&sums, format!("{text}{}  ../etc/passwd\n", "0".repeat(64))).unwrap();
        assert!(bundle.verify_checksums().is_err());

        std::fs::write(&sums, format!("{text}{} *bin/extra\n", "0".repeat(64))).unwrap();
        let err = bundle.verify_checksums().unwrap_err().to_string();
        assert!(err.contains("bin/extra is missing"), "{err}");
    }

    #[test]
    fn image_archives_lists_tar_files_only_sorted() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_bundle(dir.path()).unwrap();
        for name in ["b.tar", "a.tar", "notes.txt"] {
            std::fs::write(dir.path().join("images").join(name), "").unwrap();
        }
        let bundle = Bundle::open(dir.path()).unwrap();
        let names: Vec<String> = bundle
            .image_archives()
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.tar", "b.tar"]);
    }
}
