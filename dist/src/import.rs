//! Importing images into containerd: the bundle's component images (built
//! here) and its `images/*.tar` OCI archives.
//!
//! Per image, every step first looks at containerd and writes only what is
//! missing, so a re-import of identical images writes nothing and reports
//! [`ImageOutcome::AlreadyPresent`]:
//!
//! 1. layer blobs: `Content.Info`, else `Content.Write` (stat, write, commit
//!    with expected size and digest; containerd verifies the digest);
//! 2. unpack into the snapshotter (overlayfs): per layer, by chain ID,
//!    `Snapshots.Stat`, else `Prepare` → `Diff.Apply` → `Commit`;
//! 3. config blob, labelled `containerd.io/gc.ref.snapshot.<snapshotter>` =
//!    top chain ID; manifest blob labelled with `gc.ref.content.config` and
//!    `gc.ref.content.l.<i>`; for multi-platform archives the index blob,
//!    labelled `gc.ref.content.m.<i>`;
//! 4. the image record (name → target) with `io.cri-containerd.pinned=pinned`
//!    (the kubelet's image GC never removes it) and
//!    `io.cri-containerd.image=managed` (what CRI sets on images it pulls).
//!
//! Writes happen under a lease that expires by itself (so a crash leaves
//! nothing pinned forever) and is deleted at the end; content is referenced
//! by the image record before the lease goes. The image record is written
//! last, so a failed import leaves no record, only unreferenced content that
//! containerd's GC removes. Archives are verified completely (every blob
//! hashed) before anything is written for any image.

use crate::archive::{ArchiveError, OciArchive};
use crate::bundle::{Bundle, BundleError};
use crate::containerd::{self, Client, ContainerdError};
use crate::images::{build, component_images, BuildError, ImageSpec};
use crate::layer::{write_layer, LayerError, LayerSpec};
use crate::oci::{chain_ids, Descriptor, Digest};
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, Info as ContentInfo, InfoRequest,
    UpdateImageRequest, UpdateRequest as UpdateContentRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::Descriptor as CDescriptor;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Label that keeps the kubelet's image GC away from an image.
pub const PINNED_LABEL: (&str, &str) = ("io.cri-containerd.pinned", "pinned");
/// Label CRI puts on the images it manages.
pub const CRI_MANAGED_LABEL: (&str, &str) = ("io.cri-containerd.image", "managed");

/// Bytes per `Content.Write` message (containerd accepts up to 4 MiB).
const CHUNK: usize = 1024 * 1024;

/// How often to retry a blob whose ingest ref another client holds.
const LOCKED_RETRIES: u32 = 8;

/// Capped exponential backoff with jitter: ~0.25 s, 0.5 s, 1 s ... 8 s.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(1 << attempt.min(5));
    let capped = base.min(Duration::from_secs(8));
    capped.mul_f64(0.75 + rand::random::<f64>() * 0.5)
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// containerd cannot be reached (or the namespace is invalid).
    #[error(transparent)]
    Connect(ContainerdError),
    /// The bundle's `images/` cannot be listed.
    #[error("cannot list the bundle's image archives")]
    Bundle {
        /// Why.
        source: BundleError,
    },
    /// An archive fails verification; nothing was written.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A component image cannot be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A containerd call for an image failed.
    #[error("cannot import image {image}")]
    Containerd {
        /// The image name.
        image: String,
        /// containerd's error.
        source: ContainerdError,
    },
    /// A built layer cannot be generated a second time for upload.
    #[error("cannot import image {image}: layer {digest} could not be generated again for upload")]
    Layer {
        /// The image name.
        image: String,
        /// The layer's digest.
        digest: Digest,
        /// The layer writer's error.
        source: LayerError,
    },
    /// An archive blob cannot be read again for upload.
    #[error("cannot import image {image}: reading blob {digest} failed")]
    ReadBlob {
        /// The image name.
        image: String,
        /// The blob's digest.
        digest: Digest,
        /// Why.
        source: io::Error,
    },
    /// An uploaded blob's size or digest is not what was verified or built
    /// (containerd refused the commit, or the producer gave other bytes).
    #[error("cannot import image {image}: blob {digest} changed while it was imported ({reason}); make sure nothing modifies the bundle during the import and retry")]
    BlobChanged {
        /// The image name.
        image: String,
        /// The expected digest.
        digest: Digest,
        /// What differed.
        reason: String,
    },
    /// containerd's diff of an unpacked layer is not the config's diff ID.
    #[error("cannot import image {image}: unpacking layer {layer} gave diff ID {actual}, but the image config says {expected}; the image is corrupt")]
    DiffIdMismatch {
        /// The image name.
        image: String,
        /// The layer blob's digest.
        layer: Digest,
        /// The diff ID in the image config.
        expected: Digest,
        /// The diff ID containerd computed.
        actual: String,
    },
    /// Two sources define the same image name.
    #[error("image {name} is defined twice: by {first} and by {second}; rename or remove one of them from the bundle's images/")]
    NameConflict {
        /// The image name.
        name: String,
        /// The first source (an archive path, or the component images).
        first: String,
        /// The second source.
        second: String,
    },
    /// A blocking task or the upload stream ended unexpectedly.
    #[error("an import worker failed: {reason}")]
    Worker {
        /// What happened.
        reason: String,
    },
}

impl ImportError {
    /// True when the bundle, an archive or the request is unusable and a
    /// retry cannot help (`selfnode` exits 2): [`ImportError::Bundle`] and
    /// [`ImportError::Archive`]; [`ImportError::Connect`],
    /// [`ImportError::Build`], [`ImportError::Containerd`] and
    /// [`ImportError::Layer`] as their sources' `is_invalid_input` says
    /// (an invalid namespace; a missing host tool; a bad layer spec).
    /// Everything else is a failure a retry may fix, as `selfnode` always
    /// had it, [`ImportError::DiffIdMismatch`] and
    /// [`ImportError::NameConflict`] included.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ImportError::Bundle { .. } | ImportError::Archive(_) => true,
            ImportError::Connect(e) => e.is_invalid_input(),
            ImportError::Build(e) => e.is_invalid_input(),
            ImportError::Containerd { source, .. } => source.is_invalid_input(),
            ImportError::Layer { source, .. } => source.is_invalid_input(),
            ImportError::ReadBlob { .. }
            | ImportError::BlobChanged { .. }
            | ImportError::DiffIdMismatch { .. }
            | ImportError::NameConflict { .. }
            | ImportError::Worker { .. } => false,
        }
    }
}

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// containerd namespace; the kubelet's CRI uses `k8s.io`.
    pub namespace: String,
    /// Snapshotter to unpack into (the CRI default is `overlayfs`).
    pub snapshotter: String,
    /// After this, containerd's GC drops the import lease by itself (in case
    /// the importer dies before deleting it).
    pub lease_expiry: Duration,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            namespace: containerd::K8S_NAMESPACE.to_string(),
            snapshotter: "overlayfs".to_string(),
            lease_expiry: Duration::from_secs(3600),
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Built from the bundle's binaries (or a caller's [`ImageSpec`]).
    Built,
    /// From an OCI archive.
    Archive(PathBuf),
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::Built => f.write_str("built from the bundle"),
            ImageSource::Archive(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What an import did to one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOutcome {
    /// Something was written (blobs, snapshots, labels or the record).
    Imported,
    /// Everything was already there; nothing was written.
    AlreadyPresent,
}

/// The result for one image.
#[derive(Debug, Clone)]
pub struct ImportedImage {
    /// Full image name.
    pub name: String,
    /// Digest the image record points at.
    pub digest: Digest,
    /// Built here or from which archive.
    pub source: ImageSource,
    /// Whether anything was written.
    pub outcome: ImageOutcome,
    /// Blobs uploaded (not counting label-only updates).
    pub blobs_written: usize,
    /// Bytes of those blobs.
    pub bytes_written: u64,
    /// Snapshots unpacked.
    pub snapshots_created: usize,
    /// Label updates and record creations/updates.
    pub metadata_writes: usize,
    /// Wall time for this image.
    pub elapsed: Duration,
}

/// The result of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// One entry per image, in import order.
    pub images: Vec<ImportedImage>,
    /// Wall time of the whole import.
    pub elapsed: Duration,
}

impl ImportReport {
    /// True if nothing at all was written.
    pub fn nothing_written(&self) -> bool {
        self.images
            .iter()
            .all(|i| i.outcome == ImageOutcome::AlreadyPresent)
    }

    /// Blob bytes uploaded, all images together.
    pub fn bytes_written(&self) -> u64 {
        self.images.iter().map(|i| i.bytes_written).sum()
    }

    /// The result for image `name` (full name), if it was imported.
    pub fn image(&self, name: &str) -> Option<&ImportedImage> {
        self.images.iter().find(|i| i.name == name)
    }
}

/// Progress of an import, for one line per step in the CLI.
#[derive(Debug, Clone)]
pub enum ImportEvent {
    /// An archive was read and every blob in it verified.
    ArchiveVerified {
        /// The archive file.
        path: PathBuf,
        /// Names of the images in it, in index.json order.
        images: Vec<String>,
        /// Time spent reading and hashing it.
        elapsed: Duration,
    },
    /// Work on an image begins.
    ImageStarted {
        /// Full image name.
        name: String,
        /// Built here or from which archive.
        source: ImageSource,
    },
    /// An image is in containerd, with what it took.
    ImageFinished(ImportedImage),
}

/// Builds every component image of `bundle` (and selfnode's own from
/// `selfnode_exe`), imports them into containerd at `socket` in `namespace`,
/// then imports every `images/*.tar` archive of the bundle.
pub async fn import_bundle(
    socket: &Path,
    namespace: &str,
    bundle: &Bundle,
    selfnode_exe: &Path,
) -> Result<ImportReport, ImportError> {
    let options = ImportOptions {
        namespace: namespace.to_string(),
        ..ImportOptions::default()
    };
    import_bundle_with(socket, &options, bundle, selfnode_exe, |_| {}).await
}

/// [`import_bundle`] with options and a progress callback.
pub async fn import_bundle_with<F>(
    socket: &Path,
    options: &ImportOptions,
    bundle: &Bundle,
    selfnode_exe: &Path,
    progress: F,
) -> Result<ImportReport, ImportError>
where
    F: FnMut(&ImportEvent) + Send,
{
    let specs = component_images(bundle, selfnode_exe)?;
    let archives = bundle
        .image_archives()
        .map_err(|source| ImportError::Bundle { source })?;
    import_images(socket, options, specs, &archives, progress).await
}

/// Imports the images of `specs` (built here) and of the OCI archives
/// `archives`. All archives are verified before anything is written; image
/// names must be unique across all of them.
pub async fn import_images<F>(
    socket: &Path,
    options: &ImportOptions,
    specs: Vec<ImageSpec>,
    archives: &[PathBuf],
    mut progress: F,
) -> Result<ImportReport, ImportError>
where
    F: FnMut(&ImportEvent) + Send,
{
    let started = Instant::now();
    let client = containerd::connect(socket, &options.namespace)
        .await
        .map_err(ImportError::Connect)?;

    let mut opened: Vec<Arc<OciArchive>> = Vec::new();
    for path in archives {
        let t = Instant::now();
        let path_owned = path.clone();
        let archive = blocking(move || OciArchive::open(&path_owned)).await??;
        let images = archive.images().iter().map(|i| i.name.clone()).collect();
        tracing::info!(archive = %path.display(), elapsed = ?t.elapsed(), "verified OCI archive");
        progress(&ImportEvent::ArchiveVerified {
            path: path.clone(),
            images,
            elapsed: t.elapsed(),
        });
        opened.push(Arc::new(archive));
    }
    let mut names: HashMap<String, String> = HashMap::new();
    let all_names = specs
        .iter()
        .map(|s| (s.name.clone(), "the bundle's component images".to_string()))
        .chain(opened.iter().flat_map(|a| {
            a.images()
                .iter()
                .map(|i| (i.name.clone(), a.path().display().to_string()))
        }));
    for (name, origin) in all_names {
        if let Some(first) = names.insert(name.clone(), origin.clone()) {
            return Err(ImportError::NameConflict {
                name,
                first,
                second: origin,
            });
        }
    }

    let mut importer = Importer {
        client,
        leased: None,
        options: options.clone(),
    };
    let result = importer.run(specs, &opened, &mut progress).await;
    importer.release().await;
    let images = result?;
    Ok(ImportReport {
        images,
        elapsed: started.elapsed(),
    })
}

/// Imports the images of one OCI archive (verified before anything is
/// written).
pub async fn import_archive<F>(
    socket: &Path,
    options: &ImportOptions,
    archive: &Path,
    progress: F,
) -> Result<ImportReport, ImportError>
where
    F: FnMut(&ImportEvent) + Send,
{
    import_images(
        socket,
        options,
        Vec::new(),
        &[archive.to_path_buf()],
        progress,
    )
    .await
}

async fn blocking<T, F>(f: F) -> Result<T, ImportError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImportError::Worker {
            reason: e.to_string(),
        })
}

/// The bytes of a blob, produced on a blocking thread for upload.
#[derive(Clone)]
enum Body {
    Bytes(Vec<u8>),
    Layer(LayerSpec),
    Archive(Arc<OciArchive>),
}

struct Blob {
    desc: Descriptor,
    body: Body,
    labels: HashMap<String, String>,
}

/// Everything needed to import one image.
struct Plan {
    name: String,
    source: ImageSource,
    target: Descriptor,
    layers: Vec<Blob>,
    diff_ids: Vec<Digest>,
    config: Blob,
    manifest: Blob,
    index: Option<Blob>,
}

#[derive(Default)]
struct Counters {
    blobs: usize,
    bytes: u64,
    snapshots: usize,
    metadata: usize,
}

impl Counters {
    fn wrote_anything(&self) -> bool {
        self.blobs + self.snapshots + self.metadata > 0
    }
}

enum Uploaded {
    Written(u64),
    AlreadyExists,
}

fn to_cdesc(desc: &Descriptor) -> CDescriptor {
    CDescriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.to_string(),
        size: desc.size as i64,
        annotations: HashMap::new(),
    }
}

fn gc_content_label(kind: &str, index: usize) -> String {
    format!("containerd.io/gc.ref.content.{kind}.{index}")
}

/// Sends `WRITE` messages of up to [`CHUNK`] bytes from a blocking thread.
struct ChunkSender {
    tx: mpsc::Sender<WriteContentRequest>,
    reference: String,
    buf: Vec<u8>,
    offset: i64,
}

impl ChunkSender {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let len = data.len() as i64;
        self.tx
            .blocking_send(WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: self.reference.clone(),
                offset: self.offset,
                data,
                ..Default::default()
            })
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "containerd closed the upload stream",
                )
            })?;
        self.offset += len;
        Ok(())
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

enum ProduceError {
    Layer(LayerError),
    Io(io::Error),
}

/// Writes the bytes of `body` into `out`; returns how many.
fn produce(body: Body, digest: &Digest, out: &mut ChunkSender) -> Result<u64, ProduceError> {
    let n = match body {
        Body::Bytes(data) => {
            out.write_all(&data).map_err(ProduceError::Io)?;
            data.len() as u64
        }
        Body::Layer(spec) => write_layer(&spec, &mut *out).map_err(ProduceError::Layer)?,
        Body::Archive(archive) => {
            let mut reader = archive
                .blob_reader(digest)
                .map_err(|e| ProduceError::Io(io::Error::other(e.to_string())))?;
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            loop {
                let n = reader.read(&mut buf).map_err(ProduceError::Io)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(ProduceError::Io)?;
                total += n as u64;
            }
            total
        }
    };
    out.flush().map_err(ProduceError::Io)?;
    Ok(n)
}

struct Importer {
    client: Client,
    leased: Option<Client>,
    options: ImportOptions,
}

impl Importer {
    /// The client carrying the import lease, created on the first write so
    /// that a no-op import writes nothing at all.
    async fn leased(&mut self, image: &str) -> Result<Client, ImportError> {
        if let Some(client) = &self.leased {
            return Ok(client.clone());
        }
        let id = format!(
            "selfnode-import-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let client = self
            .client
            .with_new_lease(&id, self.options.lease_expiry)
            .await
            .map_err(|source| ImportError::Containerd {
                image: image.to_string(),
                source,
            })?;
        tracing::debug!(lease = %id, "created import lease");
        self.leased = Some(client.clone());
        Ok(client)
    }

    async fn release(&mut self) {
        if let Some(client) = self.leased.take() {
            if let Some(id) = client.lease() {
                if let Err(err) = self.client.delete_lease(id).await {
                    tracing::warn!(lease = %id, error = %err, "cannot delete the import lease; containerd drops it when it expires");
                }
            }
        }
    }

    async fn run<F>(
        &mut self,
        specs: Vec<ImageSpec>,
        archives: &[Arc<OciArchive>],
        progress: &mut F,
    ) -> Result<Vec<ImportedImage>, ImportError>
    where
        F: FnMut(&ImportEvent) + Send,
    {
        let mut done = Vec::new();
        for spec in specs {
            let t = Instant::now();
            progress(&ImportEvent::ImageStarted {
                name: spec.name.clone(),
                source: ImageSource::Built,
            });
            let built = blocking(move || build(&spec)).await??;
            let plan = Plan {
                name: built.name.clone(),
                source: ImageSource::Built,
                target: built.manifest.clone(),
                layers: built
                    .layers
                    .iter()
                    .map(|l| Blob {
                        desc: l.descriptor.clone(),
                        body: Body::Layer(l.spec.clone()),
                        labels: HashMap::new(),
                    })
                    .collect(),
                diff_ids: built.diff_ids(),
                config: Blob {
                    desc: built.config.clone(),
                    body: Body::Bytes(built.config_json.clone()),
                    labels: HashMap::new(),
                },
                manifest: Blob {
                    desc: built.manifest.clone(),
                    body: Body::Bytes(built.manifest_json.clone()),
                    labels: HashMap::new(),
                },
                index: None,
            };
            let image = self.import(plan, t).await?;
            progress(&ImportEvent::ImageFinished(image.clone()));
            done.push(image);
        }
        for archive in archives {
            for image in archive.images() {
                let t = Instant::now();
                let source = ImageSource::Archive(archive.path().to_path_buf());
                progress(&ImportEvent::ImageStarted {
                    name: image.name.clone(),
                    source: source.clone(),
                });
                let blob = |desc: &Descriptor| Blob {
                    desc: desc.clone(),
                    body: Body::Archive(archive.clone()),
                    labels: HashMap::new(),
                };
                let index = match image.manifest_position {
                    Some(position) => {
                        let mut index = blob(&image.target);
                        index.labels.insert(
                            gc_content_label("m", position),
                            image.manifest.digest.to_string(),
                        );
                        Some(index)
                    }
                    None => None,
                };
                let plan = Plan {
                    name: image.name.clone(),
                    source,
                    target: Descriptor::new(
                        &image.target.media_type,
                        image.target.digest.clone(),
                        image.target.size,
                    ),
                    layers: image.layers.iter().map(blob).collect(),
                    diff_ids: image.diff_ids.clone(),
                    config: blob(&image.config),
                    manifest: blob(&image.manifest),
                    index,
                };
                let done_image = self.import(plan, t).await?;
                progress(&ImportEvent::ImageFinished(done_image.clone()));
                done.push(done_image);
            }
        }
        Ok(done)
    }

    async fn import(
        &mut self,
        mut plan: Plan,
        started: Instant,
    ) -> Result<ImportedImage, ImportError> {
        let mut counters = Counters::default();
        let name = plan.name.clone();

        // 1. Layers.
        let layers: Vec<Descriptor> = plan.layers.iter().map(|l| l.desc.clone()).collect();
        for layer in std::mem::take(&mut plan.layers) {
            self.ensure_blob(&name, layer, &mut counters).await?;
        }

        // 2. Unpack.
        let chains = chain_ids(&plan.diff_ids);
        self.unpack(&name, &layers, &plan.diff_ids, &chains, &mut counters)
            .await?;

        // 3. Config, manifest, index, with their GC references.
        if let Some(top) = chains.last() {
            plan.config.labels.insert(
                format!("containerd.io/gc.ref.snapshot.{}", self.options.snapshotter),
                top.to_string(),
            );
        }
        plan.manifest.labels.insert(
            "containerd.io/gc.ref.content.config".to_string(),
            plan.config.desc.digest.to_string(),
        );
        for (i, layer) in layers.iter().enumerate() {
            plan.manifest
                .labels
                .insert(gc_content_label("l", i), layer.digest.to_string());
        }
        self.ensure_blob(&name, plan.config, &mut counters).await?;
        self.ensure_blob(&name, plan.manifest, &mut counters)
            .await?;
        if let Some(index) = plan.index {
            self.ensure_blob(&name, index, &mut counters).await?;
        }

        // 4. The image record, last.
        self.ensure_record(&name, &plan.target, &mut counters)
            .await?;

        let outcome = if counters.wrote_anything() {
            ImageOutcome::Imported
        } else {
            ImageOutcome::AlreadyPresent
        };
        let image = ImportedImage {
            name,
            digest: plan.target.digest.clone(),
            source: plan.source,
            outcome,
            blobs_written: counters.blobs,
            bytes_written: counters.bytes,
            snapshots_created: counters.snapshots,
            metadata_writes: counters.metadata,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            image = %image.name,
            digest = %image.digest,
            outcome = ?image.outcome,
            blobs = image.blobs_written,
            bytes = image.bytes_written,
            snapshots = image.snapshots_created,
            elapsed = ?image.elapsed,
            "imported image"
        );
        Ok(image)
    }

    fn rpc_err(
        image: &str,
        op: String,
    ) -> impl FnOnce(containerd_client::tonic::Status) -> ImportError + '_ {
        move |status| ImportError::Containerd {
            image: image.to_string(),
            source: ContainerdError::rpc(op, status),
        }
    }

    async fn info(&self, image: &str, digest: &Digest) -> Result<Option<ContentInfo>, ImportError> {
        match self
            .client
            .content()
            .info(self.client.request(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(response) => Ok(response.into_inner().info),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(Self::rpc_err(image, format!("Content.Info {digest}"))(
                status,
            )),
        }
    }

    /// Makes sure blob `blob` is in the content store with (at least) its
    /// labels.
    async fn ensure_blob(
        &mut self,
        image: &str,
        blob: Blob,
        counters: &mut Counters,
    ) -> Result<(), ImportError> {
        let digest = blob.desc.digest.clone();
        let labels = blob.labels.clone();
        let mut attempt = 0u32;
        let existing = loop {
            if let Some(info) = self.info(image, &digest).await? {
                break info;
            }
            match self.upload(image, &blob).await {
                Ok(Uploaded::Written(n)) => {
                    counters.blobs += 1;
                    counters.bytes += n;
                    tracing::debug!(image, digest = %digest, bytes = n, "uploaded blob");
                    return Ok(());
                }
                // Written concurrently, or shared from another namespace:
                // our labels may be missing.
                Ok(Uploaded::AlreadyExists) => {
                    break self.info(image, &digest).await?.unwrap_or_default();
                }
                // Another importer holds the ingest ref of this blob: wait
                // for it to finish (or give up), then look again.
                Err(ImportError::Containerd { source, .. })
                    if source.code() == Some(Code::Unavailable) && attempt < LOCKED_RETRIES =>
                {
                    attempt += 1;
                    let delay = backoff(attempt);
                    tracing::info!(image, digest = %digest, attempt, ?delay, "blob is being written by another client; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(err) => return Err(err),
            }
        };
        let missing: Vec<(&String, &String)> = labels
            .iter()
            .filter(|(k, v)| existing.labels.get(*k) != Some(*v))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let client = self.leased(image).await?;
        let paths = missing.iter().map(|(k, _)| format!("labels.{k}")).collect();
        let update = UpdateContentRequest {
            info: Some(ContentInfo {
                digest: digest.to_string(),
                labels: missing
                    .iter()
                    .map(|(k, v)| ((*k).clone(), (*v).clone()))
                    .collect(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        client
            .content()
            .update(client.request(update))
            .await
            .map_err(Self::rpc_err(image, format!("Content.Update {digest}")))?;
        counters.metadata += 1;
        Ok(())
    }

    /// Uploads one blob through `Content.Write`. The body is produced on a
    /// blocking thread and streamed in [`CHUNK`]-sized messages.
    async fn upload(&mut self, image: &str, blob: &Blob) -> Result<Uploaded, ImportError> {
        let client = self.leased(image).await?;
        let digest = blob.desc.digest.clone();
        let size = blob.desc.size;
        let reference = format!("selfnode-{digest}");
        let write_err = |status: containerd_client::tonic::Status| -> ImportError {
            match status.code() {
                Code::FailedPrecondition | Code::InvalidArgument
                    if status.message().contains("unexpected")
                        || status.message().contains("digest") =>
                {
                    ImportError::BlobChanged {
                        image: image.to_string(),
                        digest: digest.clone(),
                        reason: status.message().to_string(),
                    }
                }
                _ => Self::rpc_err(image, format!("Content.Write {digest}"))(status),
            }
        };

        let (tx, rx) = mpsc::channel::<WriteContentRequest>(4);
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.clone(),
            total: size as i64,
            expected: digest.to_string(),
            ..Default::default()
        };
        if tx.send(stat).await.is_err() {
            return Err(ImportError::Worker {
                reason: "upload channel closed".to_string(),
            });
        }
        let closed = |when: &str| ImportError::Containerd {
            image: image.to_string(),
            source: ContainerdError::Rpc {
                op: format!("Content.Write {digest}"),
                code: Code::Unknown,
                message: format!("stream closed {when}"),
            },
        };
        let mut responses = match client
            .content()
            .write(client.request(ReceiverStream::new(rx)))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(Uploaded::AlreadyExists),
            Err(s) => return Err(write_err(s)),
        };
        match responses.message().await {
            // A previous run may have left a partial upload under this ref;
            // the first write at offset 0 truncates it.
            Ok(Some(status)) if status.offset > 0 => {
                tracing::debug!(
                    image,
                    reference,
                    offset = status.offset,
                    "restarting a partial upload"
                );
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err(closed("before the stat reply")),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(Uploaded::AlreadyExists),
            Err(s) => return Err(write_err(s)),
        }

        let producer_tx = tx.clone();
        let producer_ref = reference.clone();
        let producer_digest = digest.clone();
        let body = blob.body.clone();
        let mut producer = tokio::task::spawn_blocking(move || {
            let mut sender = ChunkSender {
                tx: producer_tx,
                reference: producer_ref,
                buf: Vec::with_capacity(CHUNK),
                offset: 0,
            };
            produce(body, &producer_digest, &mut sender)
        });

        // Read the per-write replies while the producer runs, so neither side
        // waits on the other.
        let produced = loop {
            tokio::select! {
                joined = &mut producer => break joined,
                reply = responses.message() => match reply {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        drop(tx);
                        drop(responses);
                        let _ = producer.await;
                        return Err(closed("during the upload"));
                    }
                    Err(status) => {
                        drop(tx);
                        drop(responses);
                        let _ = producer.await;
                        return Err(write_err(status));
                    }
                },
            }
        };
        let written = match produced {
            Ok(Ok(n)) => n,
            Ok(Err(ProduceError::Layer(source))) => {
                return Err(ImportError::Layer {
                    image: image.to_string(),
                    digest,
                    source,
                })
            }
            Ok(Err(ProduceError::Io(source))) => {
                return Err(ImportError::ReadBlob {
                    image: image.to_string(),
                    digest,
                    source,
                })
            }
            Err(join) => {
                return Err(ImportError::Worker {
                    reason: join.to_string(),
                })
            }
        };
        if written != size {
            return Err(ImportError::BlobChanged {
                image: image.to_string(),
                digest,
                reason: format!("{written} bytes produced, {size} expected"),
            });
        }
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference.clone(),
            total: size as i64,
            offset: size as i64,
            expected: digest.to_string(),
            labels: blob.labels.clone(),
            ..Default::default()
        };
        if tx.send(commit).await.is_err() {
            // The stream is gone; the reply below says why.
            tracing::debug!(image, reference, "upload stream closed before commit");
        }
        loop {
            match responses.message().await {
                Ok(Some(reply)) if reply.action == WriteAction::Commit as i32 => break,
                Ok(Some(_)) => {}
                Ok(None) => return Err(closed("before the commit reply")),
                Err(s) if s.code() == Code::AlreadyExists => return Ok(Uploaded::AlreadyExists),
                Err(s) => return Err(write_err(s)),
            }
        }
        drop(tx);
        // Let the server finish the stream cleanly.
        while let Ok(Some(_)) = responses.message().await {}
        Ok(Uploaded::Written(written))
    }

    async fn snapshot_exists(&self, image: &str, key: &Digest) -> Result<bool, ImportError> {
        match self
            .client
            .snapshots()
            .stat(self.client.request(StatSnapshotRequest {
                snapshotter: self.options.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(Self::rpc_err(image, format!("Snapshots.Stat {key}"))(
                status,
            )),
        }
    }

    /// Unpacks the layers into the snapshotter, by chain ID, skipping what is
    /// there.
    async fn unpack(
        &mut self,
        image: &str,
        layers: &[Descriptor],
        diff_ids: &[Digest],
        chains: &[Digest],
        counters: &mut Counters,
    ) -> Result<(), ImportError> {
        match chains.last() {
            Some(top) if self.snapshot_exists(image, top).await? => return Ok(()),
            Some(_) => {}
            None => return Ok(()),
        }
        let snapshotter = self.options.snapshotter.clone();
        for (i, chain) in chains.iter().enumerate() {
            if self.snapshot_exists(image, chain).await? {
                continue;
            }
            let client = self.leased(image).await?;
            let key = format!("extract-{:016x}-{chain}", rand::random::<u64>());
            let parent = if i == 0 {
                String::new()
            } else {
                chains[i - 1].to_string()
            };
            let mounts = client
                .snapshots()
                .prepare(client.request(PrepareSnapshotRequest {
                    snapshotter: snapshotter.clone(),
                    key: key.clone(),
                    parent,
                    labels: HashMap::new(),
                }))
                .await
                .map_err(Self::rpc_err(image, format!("Snapshots.Prepare {key}")))?
                .into_inner()
                .mounts;
            let layer = &layers[i];
            let applied = client
                .diff()
                .apply(client.request(ApplyRequest {
                    diff: Some(to_cdesc(layer)),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                }))
                .await;
            let result = match applied {
                Ok(response) => {
                    let actual = response
                        .into_inner()
                        .applied
                        .map(|d| d.digest)
                        .unwrap_or_default();
                    if actual == diff_ids[i].as_str() {
                        Ok(())
                    } else {
                        Err(ImportError::DiffIdMismatch {
                            image: image.to_string(),
                            layer: layer.digest.clone(),
                            expected: diff_ids[i].clone(),
                            actual,
                        })
                    }
                }
                Err(status) => {
                    Err(Self::rpc_err(image, format!("Diff.Apply {}", layer.digest))(status))
                }
            };
            let result = match result {
                Ok(()) => match client
                    .snapshots()
                    .commit(client.request(CommitSnapshotRequest {
                        snapshotter: snapshotter.clone(),
                        name: chain.to_string(),
                        key: key.clone(),
                        labels: HashMap::new(),
                    }))
                    .await
                {
                    Ok(_) => {
                        counters.snapshots += 1;
                        tracing::debug!(image, chain = %chain, "unpacked layer");
                        Ok(true)
                    }
                    // Someone else unpacked the same layer meanwhile.
                    Err(status) if status.code() == Code::AlreadyExists => Ok(false),
                    Err(status) => Err(Self::rpc_err(image, format!("Snapshots.Commit {chain}"))(
                        status,
                    )),
                },
                Err(err) => Err(err),
            };
            if !matches!(result, Ok(true)) {
                // Remove the active snapshot; after a commit it is gone already.
                if let Err(status) = client
                    .snapshots()
                    .remove(client.request(RemoveSnapshotRequest {
                        snapshotter: snapshotter.clone(),
                        key: key.clone(),
                    }))
                    .await
                {
                    if status.code() != Code::NotFound {
                        tracing::warn!(image, key, error = %status.message(), "cannot remove an unused active snapshot; containerd's GC removes it with the lease");
                    }
                }
            }
            result?;
        }
        Ok(())
    }

    /// Creates or updates the image record so it points at `target` and
    /// carries the pinned and CRI labels.
    async fn ensure_record(
        &mut self,
        image: &str,
        target: &Descriptor,
        counters: &mut Counters,
    ) -> Result<(), ImportError> {
        let wanted: BTreeMap<&str, &str> = BTreeMap::from([PINNED_LABEL, CRI_MANAGED_LABEL]);
        let existing = match self
            .client
            .images()
            .get(self.client.request(GetImageRequest {
                name: image.to_string(),
            }))
            .await
        {
            Ok(response) => response.into_inner().image,
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => return Err(Self::rpc_err(image, format!("Images.Get {image}"))(status)),
        };
        let record = |labels: HashMap<String, String>| Image {
            name: image.to_string(),
            labels,
            target: Some(to_cdesc(target)),
            created_at: None,
            updated_at: None,
        };
        let wanted_labels: HashMap<String, String> = wanted
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match existing {
            Some(current) => {
                let same_target = current.target.as_ref().is_some_and(|t| {
                    t.digest == target.digest.as_str()
                        && t.media_type == target.media_type
                        && t.size == target.size as i64
                });
                let labels_ok = wanted
                    .iter()
                    .all(|(k, v)| current.labels.get(*k).map(String::as_str) == Some(*v));
                if same_target && labels_ok {
                    return Ok(());
                }
                self.update_record(image, record(wanted_labels), &wanted)
                    .await?;
            }
            None => {
                let created = self
                    .client
                    .images()
                    .create(self.client.request(CreateImageRequest {
                        image: Some(record(wanted_labels.clone())),
                        source_date_epoch: None,
                    }))
                    .await;
                match created {
                    Ok(_) => {}
                    Err(status) if status.code() == Code::AlreadyExists => {
                        self.update_record(image, record(wanted_labels), &wanted)
                            .await?;
                    }
                    Err(status) => {
                        return Err(Self::rpc_err(image, format!("Images.Create {image}"))(
                            status,
                        ))
                    }
                }
            }
        }
        counters.metadata += 1;
        Ok(())
    }

    async fn update_record(
        &self,
        image: &str,
        record: Image,
        wanted: &BTreeMap<&str, &str>,
    ) -> Result<(), ImportError> {
        let mut paths = vec!["target".to_string()];
        paths.extend(wanted.keys().map(|k| format!("labels.{k}")));
        self.client
            .images()
            .update(self.client.request(UpdateImageRequest {
                image: Some(record),
                update_mask: Some(prost_types::FieldMask { paths }),
                source_date_epoch: None,
            }))
            .await
            .map_err(Self::rpc_err(image, format!("Images.Update {image}")))?;
        Ok(())
    }
}
