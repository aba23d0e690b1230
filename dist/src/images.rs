//! The images selfnode builds from the bundle's binaries, and how an
//! [`ImageSpec`] becomes OCI blobs.
//!
//! Names and tags are upstream's, so kubeadm, users' manifests and air-gap
//! workflows find them without rewriting:
//!
//! | image | content |
//! |---|---|
//! | `registry.k8s.io/kube-{apiserver,controller-manager,scheduler}:<k8s>` | `/usr/local/bin/<name>` |
//! | `registry.k8s.io/kube-proxy:<k8s>` | `/usr/local/bin/kube-proxy`, and this host's iptables, ip6tables and conntrack with their libraries ([`crate::netfilter`]) |
//! | `registry.k8s.io/etcd:<etcd without v>-0` | `/usr/local/bin/{etcd,etcdctl,etcdutl}` |
//! | `registry.k8s.io/coredns/coredns:<coredns>` | `/coredns` |
//! | `registry.k8s.io/pause:<pause>` | `/pause` |
//! | `localhost/selfnode:<selfnode version>` | `/usr/local/bin/selfnode` |
//!
//! Every image has two layers: a base layer shared by all of them (passwd and
//! group with root and nonroot 65532, nsswitch.conf, /tmp 1777, home
//! directories), identical bytes everywhere so it is stored and unpacked once,
//! and the image's own files on top.
//!
//! Building is deterministic (see [`crate::layer`]) and streams: [`build`]
//! hashes each layer without keeping it, and the importer generates the layer
//! a second time while uploading. That costs a second read of the binaries
//! (from the page cache, usually) but needs no scratch space: a temp copy of
//! every layer would transiently double the disk use of an import on small
//! edge disks, and when containerd already has a layer (re-import, upgrade
//! with unchanged components) the second pass never happens at all.
//! containerd verifies the digest of every upload, so a binary that changes
//! between the passes makes the import fail instead of storing a bad layer.

use crate::bundle::{Bundle, Versions};
use crate::layer::{hash_layer, LayerError, LayerSpec};
use crate::netfilter::{NetfilterError, NetfilterTools, BACKEND_LABEL};
use crate::oci::{
    chain_ids, ContainerConfig, Descriptor, Digest, History, ImageConfig, Manifest, RootFs,
    MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER, MEDIA_TYPE_MANIFEST,
};
use std::collections::BTreeMap;
use std::path::Path;

/// The version of selfnode (the workspace version), used as the tag of
/// `localhost/selfnode`.
pub const SELFNODE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `PATH` in every image built here.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The timestamp written into configs: the epoch, for reproducibility.
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A layer cannot be generated (bad spec, unreadable host file).
    #[error("cannot build image {image}")]
    Layer {
        /// The image name.
        image: String,
        /// The layer writer's error.
        source: LayerError,
    },
    /// kube-proxy's iptables and conntrack cannot be collected from this host.
    #[error("cannot build image {image}")]
    HostTools {
        /// The image name.
        image: String,
        /// What is missing or wrong on the host.
        source: NetfilterError,
    },
    /// Every layer of the spec is empty.
    #[error("cannot build image {image}: it has no layers")]
    NoLayers {
        /// The image name.
        image: String,
    },
    /// The config or manifest cannot be serialised.
    #[error("cannot encode the {what} of image {image}")]
    Encode {
        /// The image name.
        image: String,
        /// `config` or `manifest`.
        what: &'static str,
        /// serde_json's error.
        source: serde_json::Error,
    },
}

impl BuildError {
    /// True when the spec, the bundle or the host is unusable and a retry
    /// cannot help (`selfnode` exits 2): [`BuildError::NoLayers`], and
    /// [`BuildError::Layer`] and [`BuildError::HostTools`] as their sources'
    /// `is_invalid_input` says. [`BuildError::Encode`] is a failure.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            BuildError::Layer { source, .. } => source.is_invalid_input(),
            BuildError::HostTools { source, .. } => source.is_invalid_input(),
            BuildError::NoLayers { .. } => true,
            BuildError::Encode { .. } => false,
        }
    }
}

/// What one image consists of (desired state). Layers are bottom first;
/// [`ImageSpec::add_file`] adds to the top one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Short component name (`kube-proxy`, `etcd`, `pause`, ...), so callers
    /// can find a spec without parsing image names.
    pub component: String,
    /// Full image reference, e.g. `registry.k8s.io/kube-proxy:v1.37.2`.
    pub name: String,
    /// Layers, bottom first; the first is [`base_layer`] from
    /// [`ImageSpec::new`].
    pub layers: Vec<LayerSpec>,
    /// The config's `Entrypoint`, e.g. `["/usr/local/bin/etcd"]`.
    pub entrypoint: Vec<String>,
    /// The config's `Cmd` (arguments after the entrypoint).
    pub cmd: Vec<String>,
    /// The config's `Env`, `KEY=value` ([`DEFAULT_PATH`] from
    /// [`ImageSpec::new`]).
    pub env: Vec<String>,
    /// The config's `WorkingDir` (`/` from [`ImageSpec::new`]).
    pub working_dir: Option<String>,
    /// The config's `User` (`uid[:gid]` or a name); `None`: root.
    pub user: Option<String>,
    /// The config's `Labels`.
    pub labels: BTreeMap<String, String>,
}

impl ImageSpec {
    /// A spec with the shared base layer and an empty top layer.
    pub fn new(component: &str, name: &str) -> ImageSpec {
        ImageSpec {
            component: component.to_string(),
            name: name.to_string(),
            layers: vec![base_layer(), LayerSpec::new()],
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: vec![DEFAULT_PATH.to_string()],
            working_dir: Some("/".to_string()),
            user: None,
            labels: BTreeMap::new(),
        }
    }

    /// Adds host file `host` at `image_path` in the top layer (e.g. iptables
    /// and its libraries for kube-proxy).
    pub fn add_file(&mut self, host: impl Into<std::path::PathBuf>, image_path: &str) -> &mut Self {
        self.top_layer().add_file(host, image_path);
        self
    }

    /// The top layer, for adding symlinks, directories or literal files.
    pub fn top_layer(&mut self) -> &mut LayerSpec {
        if self.layers.is_empty() {
            self.layers.push(LayerSpec::new());
        }
        let last = self.layers.len() - 1;
        &mut self.layers[last]
    }
}

/// The base layer every image gets: `/etc/passwd` and `/etc/group` with root
/// and nonroot (65532), `/etc/nsswitch.conf`, `/tmp` (1777), `/root` and
/// `/home/nonroot`.
pub fn base_layer() -> LayerSpec {
    let mut layer = LayerSpec::new();
    layer
        .add_bytes(
            "/etc/passwd",
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
            0o644,
        )
        .add_bytes("/etc/group", "root:x:0:\nnonroot:x:65532:\n", 0o644)
        .add_bytes(
            "/etc/nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n",
            0o644,
        )
        .add_dir("/tmp", 0o1777)
        .add_dir("/root", 0o700)
        .add_dir_owned("/home/nonroot", 0o700, 65532, 65532);
    layer
}

fn strip_v(v: &str) -> &str {
    v.strip_prefix('v').unwrap_or(v)
}

fn with_v(v: &str) -> String {
    format!("v{}", strip_v(v))
}

/// `registry.k8s.io/pause:<pause>`: the sandbox image for the kubelet and
/// containerd's CRI config.
pub fn pause_image(versions: &Versions) -> String {
    format!("registry.k8s.io/pause:{}", strip_v(&versions.pause))
}

/// `registry.k8s.io/<component>:<kubernetes>` for kube-apiserver,
/// kube-controller-manager, kube-scheduler and kube-proxy.
pub fn kube_image(component: &str, versions: &Versions) -> String {
    format!(
        "registry.k8s.io/{component}:{}",
        with_v(&versions.kubernetes)
    )
}

/// `registry.k8s.io/etcd:<X.Y.Z>-0`, kubeadm's tag form.
pub fn etcd_image(versions: &Versions) -> String {
    format!("registry.k8s.io/etcd:{}-0", strip_v(&versions.etcd))
}

/// `registry.k8s.io/coredns/coredns:<coredns>`.
pub fn coredns_image(versions: &Versions) -> String {
    format!(
        "registry.k8s.io/coredns/coredns:{}",
        with_v(&versions.coredns)
    )
}

/// `localhost/selfnode:<selfnode version>`.
pub fn selfnode_image() -> String {
    format!("localhost/selfnode:{SELFNODE_VERSION}")
}

/// The control-plane kube-* components that get an image.
pub const KUBE_COMPONENTS: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
];

/// Specs of every image selfnode builds from `bundle`, plus selfnode's own
/// image from `selfnode_exe` (normally the running executable).
///
/// Only the host's iptables tools are looked at here (their ELF headers, to
/// find their libraries, and which backend the alternatives select; see
/// [`crate::netfilter`]), so a host without them fails now, naming what to
/// install. The bundle's binaries are read when the image is built, where
/// missing ones surface.
pub fn component_images(
    bundle: &Bundle,
    selfnode_exe: &Path,
) -> Result<Vec<ImageSpec>, BuildError> {
    let versions = bundle.versions();
    let mut specs = Vec::new();
    // In the order the node needs them, as the import goes in this order:
    // the pause image (every pod's sandbox) and etcd (the first pod) first.
    let mut pause = ImageSpec::new("pause", &pause_image(versions));
    pause.add_file(bundle.bin("pause"), "/pause");
    pause.entrypoint = vec!["/pause".to_string()];
    labels(&mut pause, &versions.pause);
    specs.push(pause);

    let mut etcd = ImageSpec::new("etcd", &etcd_image(versions));
    for bin in ["etcd", "etcdctl", "etcdutl"] {
        etcd.add_file(bundle.bin(bin), &format!("/usr/local/bin/{bin}"));
    }
    etcd.top_layer().add_dir("/var/lib/etcd", 0o700);
    etcd.entrypoint = vec!["/usr/local/bin/etcd".to_string()];
    labels(&mut etcd, &versions.etcd);
    specs.push(etcd);

    for component in KUBE_COMPONENTS {
        let mut spec = ImageSpec::new(component, &kube_image(component, versions));
        let path = format!("/usr/local/bin/{component}");
        spec.add_file(bundle.bin(component), &path);
        spec.entrypoint = vec![path];
        labels(&mut spec, &versions.kubernetes);
        if *component == "kube-proxy" {
            add_netfilter_tools(&mut spec)?;
        }
        specs.push(spec);
    }

    let mut coredns = ImageSpec::new("coredns", &coredns_image(versions));
    coredns.add_file(bundle.bin("coredns"), "/coredns");
    coredns.entrypoint = vec!["/coredns".to_string()];
    labels(&mut coredns, &versions.coredns);
    specs.push(coredns);

    let mut selfnode = ImageSpec::new("selfnode", &selfnode_image());
    selfnode.add_file(selfnode_exe, "/usr/local/bin/selfnode");
    selfnode.entrypoint = vec!["/usr/local/bin/selfnode".to_string()];
    labels(&mut selfnode, SELFNODE_VERSION);
    // The network agent keeps the masquerade rule for pod traffic that
    // leaves the cluster network, with the same tools as kube-proxy.
    add_netfilter_tools(&mut selfnode)?;
    specs.push(selfnode);
    Ok(specs)
}

/// The host's iptables tools (the backend its alternatives select) in the
/// image's top layer, labelled with the backend.
fn add_netfilter_tools(spec: &mut ImageSpec) -> Result<(), BuildError> {
    let tools =
        NetfilterTools::from_host(Path::new("/")).map_err(|source| BuildError::HostTools {
            image: spec.name.clone(),
            source,
        })?;
    tools.add_to(spec.top_layer());
    spec.labels
        .insert(BACKEND_LABEL.to_string(), tools.iptables.to_string());
    tracing::debug!(
        image = %spec.name,
        iptables = %tools.iptables,
        ip6tables = %tools.ip6tables,
        "added the host's iptables tools"
    );
    Ok(())
}

fn labels(spec: &mut ImageSpec, version: &str) {
    spec.labels.insert(
        "org.opencontainers.image.title".into(),
        spec.component.clone(),
    );
    spec.labels.insert(
        "org.opencontainers.image.version".into(),
        version.to_string(),
    );
    spec.labels.insert(
        "org.opencontainers.image.vendor".into(),
        "selfnode (built locally from the bundle)".into(),
    );
}

/// A built layer: its descriptor (uncompressed, so digest == diff ID) and
/// the spec to generate its bytes again for upload.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    /// Media type [`MEDIA_TYPE_LAYER`], digest and size of the tarball.
    pub descriptor: Descriptor,
    /// What generates the tarball again.
    pub spec: LayerSpec,
}

/// An image whose digests are known: manifest and config bytes in memory,
/// layers as specs.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Full image reference, as in [`ImageSpec::name`].
    pub name: String,
    /// Descriptor of `manifest_json`.
    pub manifest: Descriptor,
    /// The manifest, serialised.
    pub manifest_json: Vec<u8>,
    /// Descriptor of `config_json`.
    pub config: Descriptor,
    /// The image config, serialised.
    pub config_json: Vec<u8>,
    /// The non-empty layers, bottom first.
    pub layers: Vec<BuiltLayer>,
}

impl BuiltImage {
    /// Diff IDs of the layers, bottom first.
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers
            .iter()
            .map(|l| l.descriptor.digest.clone())
            .collect()
    }

    /// Chain IDs of the layers, bottom first (the snapshot names).
    pub fn chain_ids(&self) -> Vec<Digest> {
        chain_ids(&self.diff_ids())
    }
}

/// Hashes every layer of `spec` (streaming; blocking: call it from
/// `spawn_blocking` in async code) and produces the config and manifest.
/// Empty layers are skipped.
pub fn build(spec: &ImageSpec) -> Result<BuiltImage, BuildError> {
    let mut layers = Vec::new();
    let mut history = Vec::new();
    for (index, layer) in spec.layers.iter().enumerate() {
        if layer.is_empty() {
            continue;
        }
        let (digest, size) = hash_layer(layer).map_err(|source| BuildError::Layer {
            image: spec.name.clone(),
            source,
        })?;
        history.push(History {
            created: Some(EPOCH.to_string()),
            created_by: Some(if index == 0 {
                "selfnode: base files".to_string()
            } else {
                format!("selfnode: {} files from the bundle", spec.component)
            }),
        });
        layers.push(BuiltLayer {
            descriptor: Descriptor::new(MEDIA_TYPE_LAYER, digest, size),
            spec: layer.clone(),
        });
    }
    if layers.is_empty() {
        return Err(BuildError::NoLayers {
            image: spec.name.clone(),
        });
    }
    let platform = crate::oci::host_platform();
    let config = ImageConfig {
        created: Some(EPOCH.to_string()),
        architecture: platform.architecture,
        os: platform.os,
        config: Some(ContainerConfig {
            user: spec.user.clone(),
            env: spec.env.clone(),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.cmd.clone(),
            working_dir: spec.working_dir.clone(),
            labels: spec.labels.clone(),
        }),
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids: layers.iter().map(|l| l.descriptor.digest.clone()).collect(),
        },
        history,
    };
    let encode = |what, source| BuildError::Encode {
        image: spec.name.clone(),
        what,
        source,
    };
    let config_json = serde_json::to_vec(&config).map_err(|e| encode("config", e))?;
    let config_desc = Descriptor::of(MEDIA_TYPE_CONFIG, &config_json);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.to_string()),
        config: config_desc.clone(),
        layers: layers.iter().map(|l| l.descriptor.clone()).collect(),
        annotations: None,
    };
    let manifest_json = serde_json::to_vec(&manifest).map_err(|e| encode("manifest", e))?;
    Ok(BuiltImage {
        name: spec.name.clone(),
        manifest: Descriptor::of(MEDIA_TYPE_MANIFEST, &manifest_json),
        manifest_json,
        config: config_desc,
        config_json,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::testing::write_fake_bundle;

    fn fake_bundle() -> (tempfile::TempDir, Bundle) {
        let dir = tempfile::tempdir().unwrap();
        write_fake_bundle(dir.path()).unwrap();
        let bundle = Bundle::open(dir.path()).unwrap();
        (dir, bundle)
    }

    /// Names as upstream and kubeadm give them, in the import order: the
    /// pause image and etcd first (the node's first pod needs both).
    #[test]
    fn names_follow_upstream_and_kubeadm() {
        let (_dir, bundle) = fake_bundle();
        let exe = bundle.bin("kubectl");
        let names: Vec<String> = component_images(&bundle, &exe)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            [
                "registry.k8s.io/pause:3.10.2",
                "registry.k8s.io/etcd:3.7.3-0",
                "registry.k8s.io/kube-apiserver:v1.37.2",
                "registry.k8s.io/kube-controller-manager:v1.37.2",
                "registry.k8s.io/kube-scheduler:v1.37.2",
                "registry.k8s.io/kube-proxy:v1.37.2",
                "registry.k8s.io/coredns/coredns:v1.14.6",
                &format!("localhost/selfnode:{SELFNODE_VERSION}"),
            ]
        );
        assert_eq!(
            pause_image(bundle.versions()),
            "registry.k8s.io/pause:3.10.2"
        );
    }

    #[test]
    fn built_images_are_deterministic_and_share_the_base_layer() {
        let (dir, bundle) = fake_bundle();
        let exe = bundle.bin("kubectl");
        let first: Vec<BuiltImage> = component_images(&bundle, &exe)
            .unwrap()
            .iter()
            .map(|s| build(s).unwrap())
            .collect();

        // A copy of the bundle with other mtimes, modes other than 0755 and another path.
        let copy = tempfile::tempdir().unwrap();
        write_fake_bundle(copy.path()).unwrap();
        for entry in std::fs::read_dir(copy.path().join("bin")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o711))
                .unwrap();
        }
        let copy_bundle = Bundle::open(copy.path()).unwrap();
        let second: Vec<BuiltImage> = component_images(&copy_bundle, &copy_bundle.bin("kubectl"))
            .unwrap()
            .iter()
            .map(|s| build(s).unwrap())
            .collect();
        for (a, b) in first.iter().zip(&second) {
            assert_eq!(a.manifest, b.manifest, "{}", a.name);
            assert_eq!(a.config, b.config);
        }
        let base = &first[0].layers[0].descriptor;
        assert!(first.iter().all(|i| &i.layers[0].descriptor == base));
        assert!(first.iter().all(|i| i.layers.len() == 2));
        assert_eq!(first[0].layers[1].descriptor.media_type, MEDIA_TYPE_LAYER);

        // A changed binary changes only its own images.
        std::fs::write(dir.path().join("bin/etcdctl"), "#!/bin/sh\necho new\n").unwrap();
        let third: Vec<BuiltImage> = component_images(&bundle, &exe)
            .unwrap()
            .iter()
            .map(|s| build(s).unwrap())
            .collect();
        for (a, c) in first.iter().zip(&third) {
            assert_eq!(
                a.manifest == c.manifest,
                !a.name.contains("/etcd:"),
                "{}",
                a.name
            );
        }
    }

    #[test]
    fn config_and_manifest_have_the_oci_shape() {
        let (_dir, bundle) = fake_bundle();
        let specs = component_images(&bundle, &bundle.bin("kubectl")).unwrap();
        let coredns = specs.iter().find(|s| s.component == "coredns").unwrap();
        let built = build(coredns).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&built.config_json).unwrap();
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/coredns"])
        );
        assert_eq!(config["config"]["Env"], serde_json::json!([DEFAULT_PATH]));
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        let manifest: serde_json::Value = serde_json::from_slice(&built.manifest_json).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MEDIA_TYPE_MANIFEST);
        assert_eq!(manifest["config"]["digest"], built.config.digest.as_str());
        assert_eq!(manifest["layers"][1]["mediaType"], MEDIA_TYPE_LAYER);
        assert_eq!(built.chain_ids()[0], built.layers[0].descriptor.digest);
    }

    #[test]
    fn extra_files_go_into_the_top_layer() {
        let (_dir, bundle) = fake_bundle();
        let mut specs = component_images(&bundle, &bundle.bin("kubectl")).unwrap();
        let proxy = specs
            .iter_mut()
            .find(|s| s.component == "kube-proxy")
            .unwrap();
        let before = build(proxy).unwrap();
        proxy.add_file(bundle.bin("runc"), "/usr/sbin/extra");
        proxy
            .top_layer()
            .add_symlink("/usr/sbin/extra-save", "extra");
        let after = build(proxy).unwrap();
        assert_eq!(before.layers[0].descriptor, after.layers[0].descriptor);
        assert_ne!(before.layers[1].descriptor, after.layers[1].descriptor);
    }

    #[test]
    fn kube_proxy_gets_the_hosts_iptables_tools() {
        let (_dir, bundle) = fake_bundle();
        let specs = component_images(&bundle, &bundle.bin("kubectl")).unwrap();
        let proxy = specs.iter().find(|s| s.component == "kube-proxy").unwrap();
        let tools = NetfilterTools::from_host(Path::new("/")).unwrap();
        assert_eq!(
            proxy.labels.get(BACKEND_LABEL),
            Some(&tools.iptables.to_string())
        );
        let paths: Vec<&str> = proxy.layers[1]
            .entries()
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        for path in tools.entries().keys() {
            assert!(paths.contains(&path.as_str()), "{path}");
        }
        assert!(paths.contains(&"/usr/local/bin/kube-proxy"));
        // Only kube-proxy: the others stay a single binary.
        let scheduler = specs
            .iter()
            .find(|s| s.component == "kube-scheduler")
            .unwrap();
        assert_eq!(scheduler.layers[1].entries().len(), 1);
        assert!(!scheduler.labels.contains_key(BACKEND_LABEL));
        build(proxy).unwrap();
    }

    #[test]
    fn a_missing_selfnode_exe_is_named() {
        let (_dir, bundle) = fake_bundle();
        let specs = component_images(&bundle, Path::new("/nonexistent/selfnode")).unwrap();
        let err = crate::error_chain(&build(specs.last().unwrap()).unwrap_err());
        assert!(
            err.starts_with(&format!("cannot build image localhost/selfnode:{SELFNODE_VERSION}: cannot read /nonexistent/selfnode")),
            "{err}"
        );
    }
}
