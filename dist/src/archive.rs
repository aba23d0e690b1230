//! OCI image archives: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`) in a tar file, as written by `ctr export`,
//! `skopeo copy ... oci-archive:` and `docker save` (Docker 25+).
//!
//! [`OciArchive::open`] reads the whole tar once, hashing every blob, and
//! refuses the archive if any blob does not match its name, if the tar is
//! truncated, or if anything an image needs is missing. Only then does the
//! importer write anything to containerd, so a bad archive leaves nothing
//! half-imported. Blob contents are not kept: their offsets in the tar are,
//! and [`OciArchive::blob_reader`] reads them again for the upload.

use crate::images::BuiltImage;
use crate::layer::write_layer;
use crate::oci::{
    host_platform, is_index_media_type, is_layer_media_type, is_manifest_media_type, Descriptor,
    Digest, HashingWriter, ImageConfig, Index, Manifest, Platform,
    ANNOTATION_CONTAINERD_IMAGE_NAME, ANNOTATION_REF_NAME, MEDIA_TYPE_INDEX,
};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Largest JSON document (index, manifest, config) read into memory.
const JSON_LIMIT: u64 = 4 * 1024 * 1024;

const HINT: &str = "export the image again (ctr export, skopeo copy ... oci-archive:, docker save)";

/// Errors of this module; each names the archive and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive cannot be opened or read.
    #[error("cannot read OCI archive {archive}")]
    Read {
        /// The archive file.
        archive: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The archive starts with the gzip magic.
    #[error(
        "{archive} is gzip-compressed; decompress it (gunzip) so it is a plain .tar OCI archive"
    )]
    Compressed {
        /// The archive file.
        archive: PathBuf,
    },
    /// The tar stream is malformed, or has no entries.
    #[error("{archive} is not a valid tar file (corrupt or truncated); {HINT}")]
    NotTar {
        /// The archive file.
        archive: PathBuf,
        /// The tar reader's error.
        source: io::Error,
    },
    /// The file ends inside an entry.
    #[error("{archive} is truncated: {entry} should have {expected} bytes but the file ends after {got}; {HINT}")]
    Truncated {
        /// The archive file.
        archive: PathBuf,
        /// The entry's path in the tar.
        entry: String,
        /// The entry's size from its header, bytes.
        expected: u64,
        /// Bytes actually there.
        got: u64,
    },
    /// A blob's SHA-256 is not the one in its file name.
    #[error("{archive} is corrupt: blob {entry} hashes to {actual}, not to its name; {HINT}")]
    BlobDigestMismatch {
        /// The archive file.
        archive: PathBuf,
        /// The blob's path in the tar.
        entry: String,
        /// The digest of its content.
        actual: Digest,
    },
    /// A file under `blobs/` is not `blobs/sha256/<64 lowercase hex>`.
    #[error("{archive} has an unexpected blob file {entry} (expected blobs/sha256/<64 lowercase hex>); {HINT}")]
    BadBlobName {
        /// The archive file.
        archive: PathBuf,
        /// Its path in the tar.
        entry: String,
    },
    /// The archive has no `index.json`.
    #[error("{archive} is not an OCI image archive: it has no index.json (a 'docker save' from Docker before 25 is not supported); {HINT}")]
    MissingIndex {
        /// The archive file.
        archive: PathBuf,
    },
    /// `oci-layout` has an `imageLayoutVersion` other than `1.0.0`.
    #[error("{archive} has an unsupported oci-layout: {reason}")]
    BadLayout {
        /// The archive file.
        archive: PathBuf,
        /// The version found.
        reason: String,
    },
    /// A JSON document (layout, index, manifest, config) does not parse.
    #[error("{archive}: {what} is not valid")]
    Json {
        /// The archive file.
        archive: PathBuf,
        /// Which document, e.g. `manifest of image docker.io/library/busybox:1.36`.
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A JSON document is larger than 4 MiB.
    #[error("{archive}: {what} is larger than {JSON_LIMIT} bytes")]
    TooLarge {
        /// The archive file.
        archive: PathBuf,
        /// Which document.
        what: String,
    },
    /// `index.json` lists no manifests.
    #[error("{archive} contains no images (index.json lists no manifests)")]
    Empty {
        /// The archive file.
        archive: PathBuf,
    },
    /// A descriptor names a blob the archive does not have.
    #[error("{archive}: {referenced_by} needs blob {digest}, which is not in the archive; {HINT}")]
    MissingBlob {
        /// The archive file.
        archive: PathBuf,
        /// The blob's digest.
        digest: Digest,
        /// What refers to it, e.g. `layer 0 of image ...`.
        referenced_by: String,
    },
    /// A blob's size differs from its descriptor's.
    #[error(
        "{archive}: blob {digest} has {actual} bytes but {referenced_by} says {expected}; {HINT}"
    )]
    SizeMismatch {
        /// The archive file.
        archive: PathBuf,
        /// The blob's digest.
        digest: Digest,
        /// What refers to it.
        referenced_by: String,
        /// Size in the descriptor, bytes.
        expected: u64,
        /// Size in the archive, bytes.
        actual: u64,
    },
    /// A manifest, index or layer has a media type selfnode cannot import.
    #[error("{archive}: {what} has unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// The archive file.
        archive: PathBuf,
        /// Which descriptor.
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// An `index.json` entry has no usable name annotation.
    #[error("{archive}: index.json entry {digest} has no image name (annotation {ANNOTATION_REF_NAME} with a full name like registry.example/app:1.0, or {ANNOTATION_CONTAINERD_IMAGE_NAME}); export it with a name")]
    NoName {
        /// The archive file.
        archive: PathBuf,
        /// The entry's digest.
        digest: Digest,
    },
    /// A name annotation fails [`normalise_reference`].
    #[error("{archive}: image name {name:?} is not valid: {reason}")]
    BadName {
        /// The archive file.
        archive: PathBuf,
        /// The name as annotated.
        name: String,
        /// Why [`normalise_reference`] refused it.
        reason: &'static str,
    },
    /// Two `index.json` entries normalise to the same name.
    #[error("{archive}: image {name} is listed twice in index.json")]
    DuplicateName {
        /// The archive file.
        archive: PathBuf,
        /// The normalised name.
        name: String,
    },
    /// A multi-platform image has no manifest for this host.
    #[error("{archive}: image {name} has no manifest for {platform} (it has: {available})")]
    NoMatchingPlatform {
        /// The archive file.
        archive: PathBuf,
        /// The image name.
        name: String,
        /// This host, `os/architecture`.
        platform: String,
        /// The platforms it has, comma-separated.
        available: String,
    },
    /// A single-platform image's config is for another `os/architecture`.
    #[error("{archive}: image {name} is for {found}, this host is {platform}")]
    WrongPlatform {
        /// The archive file.
        archive: PathBuf,
        /// The image name.
        name: String,
        /// The config's `os/architecture`.
        found: String,
        /// This host, `os/architecture`.
        platform: String,
    },
    /// The manifest's layer count differs from the config's diff IDs.
    #[error(
        "{archive}: image {name} has {layers} layers but its config lists {diff_ids} diff IDs"
    )]
    LayerCountMismatch {
        /// The archive file.
        archive: PathBuf,
        /// The image name.
        name: String,
        /// Layers in the manifest.
        layers: usize,
        /// Diff IDs in the config.
        diff_ids: usize,
    },
    /// [`write_archive`] cannot write, sync or rename the file.
    #[error("cannot write OCI archive {archive}")]
    Write {
        /// The archive file.
        archive: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// [`write_archive`] generated a layer whose size or digest differs
    /// from its descriptor (a host file changed since the build).
    #[error("cannot write OCI archive {archive}: a layer of {image} changed while it was written ({expected} bytes expected, {actual} written)")]
    LayerChanged {
        /// The archive file.
        archive: PathBuf,
        /// The image the layer belongs to.
        image: String,
        /// Size in the descriptor, bytes.
        expected: u64,
        /// Bytes generated.
        actual: u64,
    },
    /// [`write_archive`] cannot generate a layer.
    #[error("cannot write OCI archive {archive}")]
    Layer {
        /// The archive file.
        archive: PathBuf,
        /// The layer writer's error.
        source: crate::layer::LayerError,
    },
}

impl ArchiveError {
    /// True for every variant (`selfnode` exits 2), as `selfnode` always
    /// has: an archive that cannot be read or is malformed stays so on a
    /// retry, the fix is another export. The [`write_archive`] variants
    /// ([`ArchiveError::Write`], [`ArchiveError::LayerChanged`],
    /// [`ArchiveError::Layer`]) are counted too; only tests write archives.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ArchiveError::Read { .. }
            | ArchiveError::Compressed { .. }
            | ArchiveError::NotTar { .. }
            | ArchiveError::Truncated { .. }
            | ArchiveError::BlobDigestMismatch { .. }
            | ArchiveError::BadBlobName { .. }
            | ArchiveError::MissingIndex { .. }
            | ArchiveError::BadLayout { .. }
            | ArchiveError::Json { .. }
            | ArchiveError::TooLarge { .. }
            | ArchiveError::Empty { .. }
            | ArchiveError::MissingBlob { .. }
            | ArchiveError::SizeMismatch { .. }
            | ArchiveError::UnsupportedMediaType { .. }
            | ArchiveError::NoName { .. }
            | ArchiveError::BadName { .. }
            | ArchiveError::DuplicateName { .. }
            | ArchiveError::NoMatchingPlatform { .. }
            | ArchiveError::WrongPlatform { .. }
            | ArchiveError::LayerCountMismatch { .. }
            | ArchiveError::Write { .. }
            | ArchiveError::LayerChanged { .. }
            | ArchiveError::Layer { .. } => true,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct BlobLocation {
    offset: u64,
    size: u64,
}

/// One image found in an archive, resolved to this host's platform.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    /// Normalised full name, e.g. `docker.io/library/busybox:1.36`.
    pub name: String,
    /// What the image record points at: the index.json entry (a manifest,
    /// or an index for multi-platform images).
    pub target: Descriptor,
    /// For an index target: the position of [`ArchiveImage::manifest`] in
    /// its `manifests` (for the GC reference label).
    pub manifest_position: Option<usize>,
    /// The manifest for this host's platform.
    pub manifest: Descriptor,
    /// The config blob of that manifest.
    pub config: Descriptor,
    /// The layers of that manifest, bottom first.
    pub layers: Vec<Descriptor>,
    /// From the config's `rootfs.diff_ids`, bottom first.
    pub diff_ids: Vec<Digest>,
}

/// A verified OCI archive.
#[derive(Debug)]
pub struct OciArchive {
    path: PathBuf,
    blobs: HashMap<Digest, BlobLocation>,
    images: Vec<ArchiveImage>,
}

fn entry_name(raw: &str) -> &str {
    let mut name = raw;
    loop {
        if let Some(rest) = name.strip_prefix("./") {
            name = rest;
        } else if let Some(rest) = name.strip_prefix('/') {
            name = rest;
        } else {
            return name;
        }
    }
}

impl OciArchive {
    /// Reads and verifies the archive at `path` (blocking; reads the whole
    /// file once). See the module docs for what is checked.
    pub fn open(path: &Path) -> Result<OciArchive, ArchiveError> {
        let archive = path.to_path_buf();
        let read_err = |source| ArchiveError::Read {
            archive: archive.clone(),
            source,
        };
        let mut file = File::open(path).map_err(read_err)?;
        let mut magic = [0u8; 2];
        let n = file.read(&mut magic).map_err(read_err)?;
        if n == 2 && magic == [0x1f, 0x8b] {
            return Err(ArchiveError::Compressed { archive });
        }
        file.seek(SeekFrom::Start(0)).map_err(read_err)?;

        let mut blobs = HashMap::new();
        let mut index_json: Option<Vec<u8>> = None;
        let mut layout_json: Option<Vec<u8>> = None;
        let mut tar = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
        let not_tar = |source| ArchiveError::NotTar {
            archive: archive.clone(),
            source,
        };
        let mut buf = vec![0u8; 256 * 1024];
        let mut entries_seen = 0usize;
        for entry in tar.entries().map_err(not_tar)? {
            let mut entry = entry.map_err(not_tar)?;
            entries_seen += 1;
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind == tar::EntryType::Continuous) {
                continue;
            }
            let raw_path = entry
                .path()
                .map_err(not_tar)?
                .to_string_lossy()
                .into_owned();
            let name = entry_name(&raw_path).to_string();
            let size = entry.size();
            let offset = entry.raw_file_position();
            let truncated = |got| ArchiveError::Truncated {
                archive: archive.clone(),
                entry: name.clone(),
                expected: size,
                got,
            };
            if name == "index.json" || name == "oci-layout" {
                if size > JSON_LIMIT {
                    return Err(ArchiveError::TooLarge {
                        archive,
                        what: name,
                    });
                }
                let mut data = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut data).map_err(not_tar)?;
                if (data.len() as u64) < size {
                    return Err(truncated(data.len() as u64));
                }
                if name == "index.json" {
                    index_json = Some(data);
                } else {
                    layout_json = Some(data);
                }
                continue;
            }
            let Some(hex) = name.strip_prefix("blobs/") else {
                tracing::debug!(archive = %archive.display(), entry = %name, "ignoring archive entry outside the OCI layout");
                continue;
            };
            let digest = hex
                .strip_prefix("sha256/")
                .and_then(|h| Digest::parse(&format!("sha256:{h}")).ok())
                .ok_or_else(|| ArchiveError::BadBlobName {
                    archive: archive.clone(),
                    entry: name.clone(),
                })?;
            let mut hasher = HashingWriter::new(io::sink());
            loop {
                let n = entry.read(&mut buf).map_err(not_tar)?;
                if n == 0 {
                    break;
                }
                hasher.write_all(&buf[..n]).map_err(read_err)?;
            }
            let (actual, got, _) = hasher.finish();
            if got < size {
                return Err(truncated(got));
            }
            if actual != digest {
                return Err(ArchiveError::BlobDigestMismatch {
                    archive,
                    entry: name,
                    actual,
                });
            }
            blobs.insert(digest, BlobLocation { offset, size });
        }
        if entries_seen == 0 {
            return Err(ArchiveError::NotTar {
                archive: archive.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, "no tar entries"),
            });
        }
        if let Some(layout) = layout_json {
            let value: serde_json::Value =
                serde_json::from_slice(&layout).map_err(|source| ArchiveError::Json {
                    archive: archive.clone(),
                    what: "oci-layout".to_string(),
                    source,
                })?;
            let version = value.get("imageLayoutVersion").and_then(|v| v.as_str());
            if version != Some("1.0.0") {
                return Err(ArchiveError::BadLayout {
                    archive,
                    reason: format!("imageLayoutVersion is {version:?}, expected \"1.0.0\""),
                });
            }
        }
        let index_json = index_json.ok_or_else(|| ArchiveError::MissingIndex {
            archive: archive.clone(),
        })?;
        let mut out = OciArchive {
            path: archive,
            blobs,
            images: Vec::new(),
        };
        out.images = out.resolve(&index_json)?;
        Ok(out)
    }

    /// The archive file, as given to [`OciArchive::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The images of the archive, in index.json order.
    pub fn images(&self) -> &[ArchiveImage] {
        &self.images
    }

    /// A reader of blob `digest` (exactly its bytes).
    pub fn blob_reader(&self, digest: &Digest) -> Result<impl Read + use<>, ArchiveError> {
        let location = self
            .blobs
            .get(digest)
            .ok_or_else(|| ArchiveError::MissingBlob {
                archive: self.path.clone(),
                digest: digest.clone(),
                referenced_by: "the importer".to_string(),
            })?;
        let read_err = |source| ArchiveError::Read {
            archive: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(read_err)?;
        file.seek(SeekFrom::Start(location.offset))
            .map_err(read_err)?;
        Ok(BufReader::with_capacity(1 << 20, file).take(location.size))
    }

    /// The whole content of a small blob.
    pub fn read_blob(&self, desc: &Descriptor, what: &str) -> Result<Vec<u8>, ArchiveError> {
        let location = self.check(desc, what)?;
        if location.size > JSON_LIMIT {
            return Err(ArchiveError::TooLarge {
                archive: self.path.clone(),
                what: what.to_string(),
            });
        }
        let mut data = Vec::with_capacity(location.size as usize);
        self.blob_reader(&desc.digest)?
            .read_to_end(&mut data)
            .map_err(|source| ArchiveError::Read {
                archive: self.path.clone(),
                source,
            })?;
        Ok(data)
    }

    fn check(&self, desc: &Descriptor, what: &str) -> Result<BlobLocation, ArchiveError> {
        let location = *self
            .blobs
            .get(&desc.digest)
            .ok_or_else(|| ArchiveError::MissingBlob {
                archive: self.path.clone(),
                digest: desc.digest.clone(),
                referenced_by: what.to_string(),
            })?;
        if location.size != desc.size {
            return Err(ArchiveError::SizeMismatch {
                archive: self.path.clone(),
                digest: desc.digest.clone(),
                referenced_by: what.to_string(),
                expected: desc.size,
                actual: location.size,
            });
        }
        Ok(location)
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        data: &[u8],
        what: &str,
    ) -> Result<T, ArchiveError> {
        serde_json::from_slice(data).map_err(|source| ArchiveError::Json {
            archive: self.path.clone(),
            what: what.to_string(),
            source,
        })
    }

    fn resolve(&self, index_json: &[u8]) -> Result<Vec<ArchiveImage>, ArchiveError> {
        let index: Index = self.json(index_json, "index.json")?;
        if index.manifests.is_empty() {
            return Err(ArchiveError::Empty {
                archive: self.path.clone(),
            });
        }
        let host = host_platform();
        let mut images: Vec<ArchiveImage> = Vec::new();
        for target in &index.manifests {
            let name = self.image_name(target)?;
            if images.iter().any(|i| i.name == name) {
                return Err(ArchiveError::DuplicateName {
                    archive: self.path.clone(),
                    name,
                });
            }
            let what = format!("image {name}");
            let (manifest, position) = if is_index_media_type(&target.media_type) {
                let data = self.read_blob(target, &format!("index of {what}"))?;
                let nested: Index = self.json(&data, &format!("index of {what}"))?;
                self.select_platform(&name, &nested, &host)?
            } else if is_manifest_media_type(&target.media_type) {
                (target.clone(), None)
            } else {
                return Err(ArchiveError::UnsupportedMediaType {
                    archive: self.path.clone(),
                    what: format!("index.json entry for {name}"),
                    media_type: target.media_type.clone(),
                });
            };
            let (parsed, config, image_config) = self.manifest_and_config(&name, &manifest)?;
            let found = format!("{}/{}", image_config.os, image_config.architecture);
            if image_config.os != host.os || image_config.architecture != host.architecture {
                return Err(ArchiveError::WrongPlatform {
                    archive: self.path.clone(),
                    name,
                    found,
                    platform: format!("{}/{}", host.os, host.architecture),
                });
            }
            if parsed.layers.len() != image_config.rootfs.diff_ids.len() {
                return Err(ArchiveError::LayerCountMismatch {
                    archive: self.path.clone(),
                    name,
                    layers: parsed.layers.len(),
                    diff_ids: image_config.rootfs.diff_ids.len(),
                });
            }
            for (i, layer) in parsed.layers.iter().enumerate() {
                let what = format!("layer {i} of image {name}");
                if !is_layer_media_type(&layer.media_type) {
                    return Err(ArchiveError::UnsupportedMediaType {
                        archive: self.path.clone(),
                        what,
                        media_type: layer.media_type.clone(),
                    });
                }
                self.check(layer, &what)?;
            }
            images.push(ArchiveImage {
                name,
                target: target.clone(),
                manifest_position: position,
                manifest,
                config,
                layers: parsed.layers,
                diff_ids: image_config.rootfs.diff_ids,
            });
        }
        Ok(images)
    }

    fn manifest_and_config(
        &self,
        name: &str,
        manifest: &Descriptor,
    ) -> Result<(Manifest, Descriptor, ImageConfig), ArchiveError> {
        let what = format!("manifest of image {name}");
        let data = self.read_blob(manifest, &what)?;
        let parsed: Manifest = self.json(&data, &what)?;
        let what = format!("config of image {name}");
        let config_data = self.read_blob(&parsed.config, &what)?;
        let config: ImageConfig = self.json(&config_data, &what)?;
        let config_desc = parsed.config.clone();
        Ok((parsed, config_desc, config))
    }

    fn select_platform(
        &self,
        name: &str,
        index: &Index,
        host: &Platform,
    ) -> Result<(Descriptor, Option<usize>), ArchiveError> {
        let mut available = Vec::new();
        for (position, child) in index.manifests.iter().enumerate() {
            if !is_manifest_media_type(&child.media_type) {
                continue;
            }
            let platform = match &child.platform {
                Some(p) => (p.os.clone(), p.architecture.clone()),
                // No platform in the index: ask the config, if the blob is here.
                None => match self.manifest_and_config(name, child) {
                    Ok((_, _, config)) => (config.os, config.architecture),
                    Err(_) => continue,
                },
            };
            if platform.0 == host.os
                && platform.1 == host.architecture
                && self.blobs.contains_key(&child.digest)
            {
                return Ok((child.clone(), Some(position)));
            }
            available.push(format!("{}/{}", platform.0, platform.1));
        }
        Err(ArchiveError::NoMatchingPlatform {
            archive: self.path.clone(),
            name: name.to_string(),
            platform: format!("{}/{}", host.os, host.architecture),
            available: if available.is_empty() {
                "nothing usable".to_string()
            } else {
                available.join(", ")
            },
        })
    }

    fn image_name(&self, target: &Descriptor) -> Result<String, ArchiveError> {
        let full = target
            .annotation(ANNOTATION_CONTAINERD_IMAGE_NAME)
            .or_else(|| {
                target
                    .annotation(ANNOTATION_REF_NAME)
                    .filter(|n| n.contains(['/', ':', '@']))
            })
            .ok_or_else(|| ArchiveError::NoName {
                archive: self.path.clone(),
                digest: target.digest.clone(),
            })?;
        normalise_reference(full).map_err(|reason| ArchiveError::BadName {
            archive: self.path.clone(),
            name: full.to_string(),
            reason,
        })
    }
}

/// Normalises an image reference the way containerd and Docker do:
/// `busybox` → `docker.io/library/busybox:latest`, `me/app:1` →
/// `docker.io/me/app:1`, `registry.k8s.io/pause:3.10.2` unchanged.
pub fn normalise_reference(name: &str) -> Result<String, &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1 to 255 characters");
    }
    let (without_digest, digest) = match name.split_once('@') {
        Some((n, d)) => {
            Digest::parse(d).map_err(|_| "the part after @ is not a sha256 digest")?;
            (n, Some(d))
        }
        None => (name, None),
    };
    let last_slash = without_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (repo, tag) = match without_digest[last_slash..].rfind(':') {
        Some(i) => (
            &without_digest[..last_slash + i],
            Some(&without_digest[last_slash + i + 1..]),
        ),
        None => (without_digest, None),
    };
    if let Some(tag) = tag {
        if tag.is_empty()
            || tag.len() > 128
            || tag.starts_with(['.', '-'])
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        {
            return Err("the tag must be 1 to 128 of [A-Za-z0-9_.-], not starting with . or -");
        }
    }
    let mut parts: Vec<&str> = repo.split('/').collect();
    let has_domain = parts.len() > 1
        && (parts[0].contains(['.', ':'])
            || parts[0] == "localhost"
            || parts[0].bytes().any(|b| b.is_ascii_uppercase()));
    let domain = if has_domain {
        parts.remove(0)
    } else {
        "docker.io"
    };
    let (host, port) = match domain.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if !host_ok || !port_ok {
        return Err("the registry part must be host or host:port");
    }
    if domain == "docker.io" && parts.len() == 1 {
        parts.insert(0, "library");
    }
    for part in &parts {
        let ok = !part.is_empty()
            && part.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
            })
            && part.as_bytes()[0].is_ascii_alphanumeric()
            && part.as_bytes()[part.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return Err(
                "repository path components must be lowercase letters, digits and separators",
            );
        }
    }
    let mut out = format!("{domain}/{}", parts.join("/"));
    match (tag, digest) {
        (Some(tag), _) => {
            out.push(':');
            out.push_str(tag);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
    Ok(out)
}

/// Writes `images` as an OCI archive at `path` (through a temp file renamed
/// into place): `oci-layout`, `index.json` naming each image with both
/// annotations, and every blob once. Deterministic: same images, same bytes.
/// Layers are generated again from their specs and streamed.
pub fn write_archive(path: &Path, images: &[BuiltImage]) -> Result<(), ArchiveError> {
    let archive = path.to_path_buf();
    let write_err = |source| ArchiveError::Write {
        archive: archive.clone(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut out = io::BufWriter::new(File::create(&tmp).map_err(write_err)?);
        let mut index = Index {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: None,
        };
        // Small blobs by digest (sorted, deduplicated), layers by digest.
        let mut small: BTreeMap<Digest, &[u8]> = BTreeMap::new();
        let mut layers: BTreeMap<Digest, (&crate::images::BuiltLayer, &str)> = BTreeMap::new();
        for image in images {
            let mut target = image.manifest.clone();
            target.annotations = Some(BTreeMap::from([
                (
                    ANNOTATION_CONTAINERD_IMAGE_NAME.to_string(),
                    image.name.clone(),
                ),
                (ANNOTATION_REF_NAME.to_string(), image.name.clone()),
            ]));
            index.manifests.push(target);
            small.insert(image.manifest.digest.clone(), &image.manifest_json);
            small.insert(image.config.digest.clone(), &image.config_json);
            for layer in &image.layers {
                layers.insert(layer.descriptor.digest.clone(), (layer, &image.name));
            }
        }
        let index_json = serde_json::to_vec(&index).map_err(|e| write_err(io::Error::other(e)))?;
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        append(&mut out, "oci-layout", layout).map_err(write_err)?;
        append(&mut out, "index.json", &index_json).map_err(write_err)?;
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut header = base_header(dir, 0);
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_cksum();
            out.write_all(header.as_bytes()).map_err(write_err)?;
        }
        for (digest, data) in &small {
            append(&mut out, &format!("blobs/sha256/{}", digest.hex()), data).map_err(write_err)?;
        }
        for (digest, (layer, image)) in &layers {
            let size = layer.descriptor.size;
            let header = base_header(&format!("blobs/sha256/{}", digest.hex()), size);
            out.write_all(header.as_bytes()).map_err(write_err)?;
            let mut counter = HashingWriter::new(&mut out);
            write_layer(&layer.spec, &mut counter).map_err(|source| ArchiveError::Layer {
                archive: archive.clone(),
                source,
            })?;
            let (actual_digest, actual, _) = counter.finish();
            if actual != size || &actual_digest != digest {
                return Err(ArchiveError::LayerChanged {
                    archive: archive.clone(),
                    image: image.to_string(),
                    expected: size,
                    actual,
                });
            }
            pad(&mut out, size).map_err(write_err)?;
        }
        out.write_all(&[0u8; 1024]).map_err(write_err)?;
        let file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn base_header(path: &str, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    // Paths here are short constants or blobs/sha256/<64 hex>: always fit.
    let _ = header.set_path(path);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    header
}

fn append<W: Write>(out: &mut W, path: &str, data: &[u8]) -> io::Result<()> {
    out.write_all(base_header(path, data.len() as u64).as_bytes())?;
    out.write_all(data)?;
    pad(out, data.len() as u64)
}

fn pad<W: Write>(out: &mut W, size: u64) -> io::Result<()> {
    let rem = (size % 512) as usize;
    if rem != 0 {
        out.write_all(&[0u8; 512][..512 - rem])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::{build, ImageSpec};

    fn sample_images(dir: &Path) -> Vec<BuiltImage> {
        let bin = dir.join("hello");
        std::fs::write(&bin, vec![42u8; 70_000]).unwrap();
        let mut a = ImageSpec::new("hello", "registry.example/hello:1.0");
        a.add_file(&bin, "/usr/local/bin/hello");
        let mut b = ImageSpec::new("other", "registry.example/other:2");
        b.top_layer().add_bytes("/etc/other", "x", 0o644);
        vec![build(&a).unwrap(), build(&b).unwrap()]
    }

    fn sample_archive(dir: &Path) -> PathBuf {
        let path = dir.join("apps.tar");
        write_archive(&path, &sample_images(dir)).unwrap();
        path
    }

    fn open_err(path: &Path) -> String {
        crate::error_chain(&OciArchive::open(path).unwrap_err())
    }

    /// Byte offset of `member`'s data in the tar at `path`.
    fn member_offset(path: &Path, member: &str) -> (u64, u64) {
        let mut tar = tar::Archive::new(File::open(path).unwrap());
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            if entry.path().unwrap().to_string_lossy() == member {
                return (entry.raw_file_position(), entry.size());
            }
        }
        panic!("{member} not in {}", path.display());
    }

    #[test]
    fn written_archive_round_trips_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let images = sample_images(dir.path());
        let path = sample_archive(dir.path());
        let archive = OciArchive::open(&path).unwrap();
        let found: Vec<&str> = archive.images().iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            found,
            ["registry.example/hello:1.0", "registry.example/other:2"]
        );
        let hello = &archive.images()[0];
        assert_eq!(hello.manifest.digest, images[0].manifest.digest);
        assert_eq!(
            hello.target.annotation(ANNOTATION_REF_NAME),
            Some("registry.example/hello:1.0")
        );
        assert_eq!(hello.diff_ids, images[0].diff_ids());
        assert_eq!(hello.layers.len(), 2);
        assert!(hello.manifest_position.is_none());
        let mut layer = Vec::new();
        archive
            .blob_reader(&hello.layers[1].digest)
            .unwrap()
            .read_to_end(&mut layer)
            .unwrap();
        assert_eq!(Digest::of(&layer), hello.layers[1].digest);

        let again = dir.path().join("again.tar");
        write_archive(&again, &images).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&again).unwrap()
        );
    }

    #[test]
    fn truncated_archive_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample_archive(dir.path());
        let data = std::fs::read(&path).unwrap();
        // Cut inside the big layer blob.
        let layers = OciArchive::open(&path).unwrap().images()[0].layers.clone();
        let (offset, _) = member_offset(&path, &format!("blobs/sha256/{}", layers[1].digest.hex()));
        std::fs::write(&path, &data[..offset as usize + 1000]).unwrap();
        let err = open_err(&path);
        assert!(err.contains(" is truncated: blobs/sha256/"), "{err}");
        assert!(err.contains("but the file ends after 1000"), "{err}");
        // Cut inside a header.
        std::fs::write(&path, &data[..700]).unwrap();
        let err = open_err(&path);
        assert!(
            err.contains("is not a valid tar file") || err.contains("is truncated"),
            "{err}"
        );
    }

    #[test]
    fn blob_with_wrong_digest_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample_archive(dir.path());
        let image = OciArchive::open(&path).unwrap().images()[0].clone();
        let member = format!("blobs/sha256/{}", image.layers[1].digest.hex());
        let (offset, _) = member_offset(&path, &member);
        let mut data = std::fs::read(&path).unwrap();
        data[offset as usize + 600] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let err = open_err(&path);
        assert!(
            err.starts_with(&format!(
                "{} is corrupt: blob {member} hashes to sha256:",
                path.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn missing_index_and_non_tar_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("noindex.tar");
        {
            let mut builder = tar::Builder::new(File::create(&path).unwrap());
            let data = b"{\"imageLayoutVersion\":\"1.0.0\"}";
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder
                .append_data(&mut header, "oci-layout", &data[..])
                .unwrap();
            builder.finish().unwrap();
        }
        let err = open_err(&path);
        assert!(
            err.contains("noindex.tar is not an OCI image archive: it has no index.json"),
            "{err}"
        );

        let junk = dir.path().join("junk.tar");
        std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
        let err = open_err(&junk);
        assert!(err.contains("junk.tar is not a valid tar file"), "{err}");

        let empty = dir.path().join("empty.tar");
        std::fs::write(&empty, b"").unwrap();
        assert!(open_err(&empty).contains("is not a valid tar file"));

        let gz = dir.path().join("gz.tar");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0]).unwrap();
        assert!(open_err(&gz).contains("is gzip-compressed"));

        assert!(open_err(&dir.path().join("absent.tar")).contains("cannot read OCI archive"));
    }

    #[test]
    fn references_are_normalised_like_containerd() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("me/app:1", "docker.io/me/app:1"),
            (
                "registry.k8s.io/pause:3.10.2",
                "registry.k8s.io/pause:3.10.2",
            ),
            ("localhost/selfnode:0.1.0", "localhost/selfnode:0.1.0"),
            ("reg:5000/a/b", "reg:5000/a/b:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(normalise_reference(input).unwrap(), want, "{input}");
        }
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalise_reference(&format!("reg.io/x@{digest}")).unwrap(),
            format!("reg.io/x@{digest}")
        );
        for bad in [
            "",
            "UPPER",
            "a/b:",
            "a:b:c/d",
            "x@sha256:1",
            "a//b",
            "a/b:-x",
        ] {
            assert!(normalise_reference(bad).is_err(), "{bad}");
        }
    }
}
