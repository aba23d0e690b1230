//! Bootable appliance images: a kernel, an initramfs in which selfnode is
//! `/init`, and a boot loader, as a hybrid ISO or a GPT disk image.
//!
//! The initramfs ([`initramfs_spec`]) holds everything a node runs, so the
//! first boot needs no network: selfnode as `/init`, the bundle (containerd,
//! runc, the kubelet, the control-plane binaries, the CNI plugins) at its
//! default path, this host's netfilter tools (for kube-proxy's image, as on
//! any node), `mount`/`umount` (the kubelet mounts its volumes with them) and
//! `mke2fs` (the data disk's first boot), the kernel modules a node and
//! common hardware need with their dependencies, and the node's
//! configuration. It is a deterministic cpio ([`crate::cpio`]) compressed with
//! gzip (no timestamp, no name), so the same inputs give the same bytes.
//!
//! Boot loaders are Debian's, called as programs:
//! - `iso`: ISOLINUX, written by `xorriso -as mkisofs` with the isohybrid
//!   MBR, so the same file boots from a CD and from a USB stick (BIOS);
//! - `raw`: a GPT disk (`sfdisk`) with a FAT boot partition (`mkfs.fat
//!   --invariant`, files copied with `mcopy`, SYSLINUX installed with
//!   `syslinux --install`, no mount needed), legacy-BIOS-bootable, behind
//!   SYSLINUX's `gptmbr.bin`; then an empty partition named
//!   [`DATA_PARTITION`] that the node formats on its first boot.
//!
//! All dates are [`ImageRequest::epoch`] (`SOURCE_DATE_EPOCH`), disk and
//! partition GUIDs are derived from the content, so building twice gives the
//! same checksum. UEFI boot is not built (yet): BIOS only.

use crate::bundle::Bundle;
use crate::hostfiles::{HostEntry, HostFiles};
use crate::layer::{LayerError, LayerSpec};
use crate::netfilter::{NetfilterError, NetfilterTools};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the node's configuration file is in the initramfs.
pub const CONFIG_PATH: &str = "/etc/selfnode/appliance.yaml";
/// The GPT partition name (and ext4 label) of the node's persistent storage.
pub const DATA_PARTITION: &str = "selfnode-data";
/// The kernel command line every image boots with (serial console first:
/// the tests and headless machines read it; the screen too).
pub const KERNEL_CMDLINE: &str = "console=tty0 console=ttyS0,115200 loglevel=4 panic=10";

/// The modules a node loads at boot (with their dependencies), by name:
/// the container runtime's and the pod network's, and the drivers of the
/// machines the images are made for (virtual ones, and common disks and
/// network cards). The node also loads what its devices ask for
/// (`modalias`), among the modules in the image.
pub const BOOT_MODULES: &[&str] = &[
    // checksums ext4 and netfilter ask the crypto API for
    "crc32c_generic",
    // containers and the pod network
    "overlay",
    "bridge",
    "br_netfilter",
    "veth",
    "nf_conntrack",
    "nf_nat",
    "iptable_nat",
    "iptable_filter",
    "iptable_mangle",
    "iptable_raw",
    "ip6table_nat",
    "ip6table_filter",
    "ip6table_mangle",
    "ip6table_raw",
    "xt_conntrack",
    "xt_comment",
    "xt_mark",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_multiport",
    "xt_nat",
    "xt_statistic",
    "xt_tcpudp",
    "xt_REDIRECT",
    "xt_set",
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_net",
    "xt_physdev",
    "nf_reject_ipv4",
    "ipt_REJECT",
    "nf_reject_ipv6",
    "ip6t_REJECT",
    "nft_compat",
    "nft_chain_nat",
    "nft_ct",
    "nft_reject_inet",
    "nft_masq",
    // storage and its file systems
    "ext4",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "sd_mod",
    "sr_mod",
    "virtio_blk",
    "virtio_scsi",
    "ahci",
    "ata_piix",
    "nvme",
    "usb_storage",
    "uas",
    "xhci_pci",
    "ehci_pci",
    // network cards
    "virtio_net",
    "e1000",
    "e1000e",
    "igb",
    "r8169",
    // virtio transport, hardware random number generators (TLS keys at
    // boot need the kernel's pool ready), power button, console input
    "virtio_pci",
    "virtio_rng",
    "button",
    "evdev",
];

/// Errors of this module. The input errors come first and are checked
/// before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    /// The kernel file is missing or not a bzImage.
    #[error("the kernel {path} {why}; give a Linux bzImage with --kernel, or fetch Debian's with `bash fixtures/fetch-kernel.sh` (it goes to /var/cache/selfnode/kernel/vmlinuz)")]
    Kernel {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The modules directory has no `modules.dep`.
    #[error("the kernel modules directory {path} has no modules.dep (run `depmod -b <root> <release>` on it)")]
    Modules {
        /// The directory.
        path: PathBuf,
    },
    /// A module the image needs is not in the modules directory.
    #[error("the kernel module {name} is not in {dir} (modules.dep); a kernel with it built in needs no modules directory")]
    ModuleMissing {
        /// The module's name.
        name: String,
        /// The modules directory.
        dir: PathBuf,
    },
    /// The output cannot be written there.
    #[error("cannot write the image to {path}")]
    Output {
        /// The output path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A boot loader file or program is not on this host.
    #[error("{what} is missing on this host; install it with `apt-get install {package}`")]
    Tool {
        /// The file or program.
        what: String,
        /// The Debian package with it.
        package: &'static str,
    },
    /// A host program the node needs is missing.
    #[error(transparent)]
    HostFiles(#[from] crate::hostfiles::HostFilesError),
    /// The netfilter tools are missing.
    #[error(transparent)]
    Netfilter(#[from] NetfilterError),
    /// Writing the initramfs failed.
    #[error("writing the initramfs")]
    Initramfs(#[from] LayerError),
    /// A tool failed.
    #[error("{program} failed ({status}): {stderr}")]
    ToolFailed {
        /// The command.
        program: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// Reading or writing a build file failed.
    #[error("cannot {op} {path} while building the appliance image")]
    Io {
        /// What was being done, e.g. `write`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ApplianceError {
    /// True if the user's input is at fault (exit 2): a bad kernel, modules
    /// directory or output path, a missing host package.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ApplianceError::Kernel { .. }
            | ApplianceError::Modules { .. }
            | ApplianceError::ModuleMissing { .. }
            | ApplianceError::Output { .. }
            | ApplianceError::Tool { .. } => true,
            ApplianceError::HostFiles(e) => e.is_invalid_input(),
            ApplianceError::Netfilter(e) => e.is_invalid_input(),
            ApplianceError::Initramfs(e) => e.is_invalid_input(),
            ApplianceError::ToolFailed { .. } | ApplianceError::Io { .. } => false,
        }
    }
}

/// The image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A hybrid ISO 9660 image: boots from a CD or a USB stick (BIOS).
    Iso,
    /// A GPT disk image for `dd` (BIOS), with an empty data partition.
    Raw,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    /// The image format.
    pub format: Format,
    /// The bundle to put in the image (opened, so its layout is checked).
    pub bundle: Bundle,
    /// The static selfnode binary that becomes `/init`.
    pub selfnode: PathBuf,
    /// The kernel (bzImage).
    pub kernel: PathBuf,
    /// The kernel's modules, `lib/modules/<release>` (with `modules.dep`),
    /// or `None` for a kernel with everything built in.
    pub modules: Option<PathBuf>,
    /// The node's configuration file, already validated, or `None` (then
    /// the kernel command line must carry it).
    pub config: Option<Vec<u8>>,
    /// The output file; written as `<out>.part`, then renamed.
    pub out: PathBuf,
    /// Where this host's programs are (`/`).
    pub host_root: PathBuf,
    /// Size of the raw image's data partition, bytes (rounded up to MiB).
    pub data_size: u64,
    /// Every date in the image, seconds since 1970 (`SOURCE_DATE_EPOCH`).
    pub epoch: u64,
}

/// What was built.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuiltImage {
    /// The image file.
    pub path: PathBuf,
    /// Its size, bytes.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// The compressed initramfs's size, bytes.
    pub initramfs_bytes: u64,
}

/// Checks everything [`build`] needs before anything is written: the
/// kernel is a bzImage, the modules directory is indexed and has every
/// [`BOOT_MODULES`] entry, the output directory is writable, the boot
/// loader files and programs are installed.
pub fn check(req: &ImageRequest) -> Result<(), ApplianceError> {
    check_kernel(&req.kernel)?;
    if let Some(dir) = &req.modules {
        module_closure(dir, BOOT_MODULES)?;
    }
    let parent = match req.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let out_err = |source| ApplianceError::Output {
        path: req.out.clone(),
        source,
    };
    if req.out.is_dir() {
        return Err(out_err(std::io::Error::other(
            "it is a directory; give a file name",
        )));
    }
    tempfile::Builder::new()
        .prefix(".selfnode-image-check")
        .tempfile_in(&parent)
        .map_err(out_err)?;
    // (file or program, the Debian package with it)
    type Needs = &'static [(&'static str, &'static str)];
    let (files, programs): (Needs, Needs) = match req.format {
        Format::Iso => (
            &[
                (ISOLINUX_BIN, "isolinux"),
                (ISOHDPFX, "isolinux"),
                (LDLINUX_C32, "syslinux-common"),
            ],
            &[("xorriso", "xorriso")],
        ),
        Format::Raw => (
            &[(GPTMBR, "syslinux-common")],
            &[
                ("mkfs.fat", "dosfstools"),
                ("mcopy", "mtools"),
                ("syslinux", "syslinux"),
                ("sfdisk", "fdisk"),
            ],
        ),
    };
    for (file, package) in files {
        if !Path::new(file).is_file() {
            return Err(ApplianceError::Tool {
                what: file.to_string(),
                package,
            });
        }
    }
    for (program, package) in programs {
        if which(program).is_none() {
            return Err(ApplianceError::Tool {
                what: format!("the program {program}"),
                package,
            });
        }
    }
    Ok(())
}

const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
const ISOHDPFX: &str = "/usr/lib/ISOLINUX/isohdpfx.bin";
const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";
const GPTMBR: &str = "/usr/lib/syslinux/mbr/gptmbr.bin";

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A Linux bzImage has "HdrS" at 0x202 (the boot protocol's header).
fn check_kernel(path: &Path) -> Result<(), ApplianceError> {
    let bad = |why: String| ApplianceError::Kernel {
        path: path.to_path_buf(),
        why,
    };
    let mut f = std::fs::File::open(path).map_err(|e| bad(format!("cannot be opened: {e}")))?;
    let mut head = [0u8; 0x206];
    f.read_exact(&mut head)
        .map_err(|_| bad("is too short to be a kernel".into()))?;
    if &head[0x202..0x206] != b"HdrS" {
        return Err(bad(
            "is not a Linux bzImage (no boot protocol header)".into()
        ));
    }
    Ok(())
}

/// Module files (relative to the modules directory) for `names` and every
/// module they depend on, from `modules.dep`. Names compare as the kernel
/// does (`-` and `_` alike).
pub fn module_closure(dir: &Path, names: &[&str]) -> Result<BTreeSet<String>, ApplianceError> {
    let dep =
        std::fs::read_to_string(dir.join("modules.dep")).map_err(|_| ApplianceError::Modules {
            path: dir.to_path_buf(),
        })?;
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let key = |path: &str| -> String {
        let file = path.rsplit('/').next().unwrap_or(path);
        let stem = file.split(".ko").next().unwrap_or(file);
        stem.replace('-', "_")
    };
    let mut by_name = std::collections::BTreeMap::new();
    for line in dep.lines() {
        if let Some((module, deps)) = line.split_once(':') {
            let deps: Vec<String> = deps.split_whitespace().map(str::to_string).collect();
            by_name.insert(key(module), (module.to_string(), deps));
        }
    }
    let builtin: BTreeSet<String> = builtin.lines().map(key).collect();
    let mut out = BTreeSet::new();
    for name in names {
        let name = name.replace('-', "_");
        if builtin.contains(&name) {
            continue;
        }
        let Some((file, deps)) = by_name.get(&name) else {
            return Err(ApplianceError::ModuleMissing {
                name,
                dir: dir.to_path_buf(),
            });
        };
        out.insert(file.clone());
        out.extend(deps.iter().cloned());
    }
    Ok(out)
}

/// The initramfs's content. See the module documentation.
pub fn initramfs_spec(req: &ImageRequest) -> Result<LayerSpec, ApplianceError> {
    let mut spec = LayerSpec::new();
    spec.add_file_with_mode(&req.selfnode, "/init", 0o755);
    spec.add_symlink("/usr/local/bin/selfnode", "/init");
    // selfnode answers as modprobe too (the kernel's on-demand loads).
    spec.add_symlink("/usr/sbin/modprobe", "/init");
    for dir in [
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/var/lib",
        "/etc/kubernetes",
        "/root",
        "/mnt",
    ] {
        spec.add_dir(dir, 0o755);
    }
    spec.add_dir("/tmp", 0o1777);
    // The bundle at its default path: the agent finds it without flags.
    // Its dynamically linked programs (runc: libseccomp, libc) get their
    // libraries from this host, as they do when they run here.
    let bundle_root = req.bundle.root();
    let mut bundle_libs = HostFiles::new(
        &req.host_root,
        "the bundle's programs run with this host's libraries: install the package that has it (runc needs `apt-get install libseccomp2`)",
    );
    add_tree(
        &mut spec,
        &mut bundle_libs,
        bundle_root,
        crate::bundle::DEFAULT_BUNDLE_DIR,
    )?;
    // This host's tools, with their libraries.
    let tools = NetfilterTools::from_host(&req.host_root)?;
    let mut files = HostFiles::new(
        &req.host_root,
        "install it with `apt-get install util-linux e2fsprogs`",
    );
    for program in ["/usr/bin/mount", "/usr/bin/umount", "/usr/sbin/mke2fs"] {
        files.add_elf(program)?;
    }
    let mut entries = tools.entries();
    entries.extend(bundle_libs.entries().clone());
    entries.extend(files.entries().clone());
    let dirs: BTreeSet<String> = spec.entries().iter().map(|e| e.path.clone()).collect();
    for (path, entry) in &entries {
        match entry {
            HostEntry::File(host) => spec.add_file(host, path),
            HostEntry::Symlink(target) => spec.add_symlink(path, target),
            HostEntry::Dir if dirs.contains(path) => continue,
            HostEntry::Dir => spec.add_dir(path, 0o755),
        };
    }
    for (path, text) in [
        ("/etc/os-release", "NAME=\"selfnode appliance\"\nID=selfnode\n"),
        ("/etc/nsswitch.conf", "hosts: files dns\n"),
        ("/etc/passwd", "root:x:0:0:root:/root:/init\n"),
        ("/etc/group", "root:x:0:\n"),
        ("/etc/mke2fs.conf", "[defaults]\n\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr\n\tblocksize = 4096\n\tinode_ratio = 16384\n[fs_types]\n\text4 = {\n\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize\n\t}\n"),
    ] {
        spec.add_bytes(path, text.as_bytes().to_vec(), 0o644);
    }
    if let Some(config) = &req.config {
        spec.add_bytes(CONFIG_PATH, config.clone(), 0o600);
    }
    if let Some(dir) = &req.modules {
        let release = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let base = format!("/usr/lib/modules/{release}");
        for file in module_closure(dir, BOOT_MODULES)? {
            spec.add_file(dir.join(&file), &format!("{base}/{file}"));
        }
        for index in [
            "modules.dep",
            "modules.alias",
            "modules.builtin",
            "modules.softdep",
        ] {
            if dir.join(index).is_file() {
                spec.add_file(dir.join(index), &format!("{base}/{index}"));
            }
        }
    }
    Ok(spec)
}

/// Adds every file, link and directory under host dir `from` at `to`,
/// following the link `from` itself is, and to `libs` the libraries its
/// executable files need.
fn add_tree(
    spec: &mut LayerSpec,
    libs: &mut HostFiles,
    from: &Path,
    to: &str,
) -> Result<(), ApplianceError> {
    let from = std::fs::canonicalize(from).map_err(|source| ApplianceError::Io {
        op: "resolve",
        path: from.to_path_buf(),
        source,
    })?;
    let mut stack = vec![(from, to.to_string())];
    while let Some((dir, at)) = stack.pop() {
        spec.add_dir(&at, 0o755);
        let rd = std::fs::read_dir(&dir).map_err(|source| ApplianceError::Io {
            op: "list",
            path: dir.clone(),
            source,
        })?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let target = format!("{at}/{name}");
            let ft = e.file_type().map_err(|source| ApplianceError::Io {
                op: "inspect",
                path: path.clone(),
                source,
            })?;
            if ft.is_dir() {
                stack.push((path, target));
            } else if ft.is_symlink() {
                let link = std::fs::read_link(&path).map_err(|source| ApplianceError::Io {
                    op: "read the link",
                    path: path.clone(),
                    source,
                })?;
                spec.add_symlink(&target, &link.to_string_lossy());
            } else if name != ".lock" {
                let executable = e.metadata().is_ok_and(|m| {
                    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                });
                if executable {
                    libs.add_libraries_for(&path, &target)?;
                }
                spec.add_file(path, &target);
            }
        }
    }
    Ok(())
}

/// Writes the gzip-compressed initramfs for `spec` to `path`; its size.
fn write_initramfs(spec: &LayerSpec, path: &Path) -> Result<u64, ApplianceError> {
    let io = |source| ApplianceError::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    // No name, mtime 0 (the builder's defaults): the same bytes every time.
    let mut gz =
        flate2::GzBuilder::new().write(std::io::BufWriter::new(file), flate2::Compression::fast());
    crate::cpio::write_cpio(spec, &mut gz)?;
    let mut w = gz.finish().map_err(io)?;
    w.flush().map_err(io)?;
    Ok(std::fs::metadata(path).map_err(io)?.len())
}

/// Builds the image: [`check`], the initramfs, the boot loader, the image
/// file (written beside `out` and renamed, so `out` is whole or absent).
/// `progress` gets one line per step.
pub fn build(
    req: &ImageRequest,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage, ApplianceError> {
    check(req)?;
    let parent = req
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".selfnode-image-")
        .tempdir_in(parent)
        .map_err(|source| ApplianceError::Output {
            path: req.out.clone(),
            source,
        })?;
    let stage = work.path().join("stage");
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|source| ApplianceError::Io {
            op: "create",
            path: p.to_path_buf(),
            source,
        })
    };
    mkdir(&stage.join("boot"))?;
    progress("collecting the initramfs: selfnode as /init, the bundle, host tools, kernel modules");
    let spec = initramfs_spec(req)?;
    let initrd = stage.join("boot/initrd.img");
    progress("writing the initramfs (cpio, gzip)");
    let initramfs_bytes = write_initramfs(&spec, &initrd)?;
    copy(&req.kernel, &stage.join("boot/vmlinuz"))?;
    let part = work.path().join("image.part");
    match req.format {
        Format::Iso => {
            progress("writing the hybrid ISO (xorriso, ISOLINUX)");
            build_iso(req, &stage, &part)?
        }
        Format::Raw => {
            progress("writing the GPT disk image (FAT boot partition, SYSLINUX, data partition)");
            build_raw(req, &stage, work.path(), &part)?
        }
    }
    std::fs::rename(&part, &req.out).map_err(|source| ApplianceError::Output {
        path: req.out.clone(),
        source,
    })?;
    let (bytes, sha256) = digest(&req.out)?;
    Ok(BuiltImage {
        path: req.out.clone(),
        bytes,
        sha256,
        initramfs_bytes,
    })
}

fn copy(from: &Path, to: &Path) -> Result<(), ApplianceError> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|source| ApplianceError::Io {
            op: "copy",
            path: from.to_path_buf(),
            source,
        })
}

fn write(path: &Path, text: &str) -> Result<(), ApplianceError> {
    std::fs::write(path, text).map_err(|source| ApplianceError::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    })
}

fn digest(path: &Path) -> Result<(u64, String), ApplianceError> {
    let io = |source| ApplianceError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// Runs a tool with the image's dates; its failure names it and quotes it.
fn run(cmd: &mut Command, epoch: u64) -> Result<(), ApplianceError> {
    let program = format!("{cmd:?}");
    let out = cmd
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("TZ", "UTC")
        .output()
        .map_err(|e| ApplianceError::ToolFailed {
            program: program.clone(),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ApplianceError::ToolFailed {
            program,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Sets every file's and directory's mtime under `dir` to `epoch`.
fn touch_tree(dir: &Path, epoch: u64) -> Result<(), ApplianceError> {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .map_err(|source| ApplianceError::Io {
                op: "list",
                path: d.clone(),
                source,
            })?
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            let f = std::fs::File::open(&p).map_err(|source| ApplianceError::Io {
                op: "open",
                path: p.clone(),
                source,
            })?;
            f.set_modified(time).map_err(|source| ApplianceError::Io {
                op: "set the modification time of",
                path: p.clone(),
                source,
            })?;
        }
    }
    let f = std::fs::File::open(dir).map_err(|source| ApplianceError::Io {
        op: "open",
        path: dir.to_path_buf(),
        source,
    })?;
    f.set_modified(time).map_err(|source| ApplianceError::Io {
        op: "set the modification time of",
        path: dir.to_path_buf(),
        source,
    })
}

fn boot_config(prefix: &str) -> String {
    format!(
        "SERIAL 0 115200\nDEFAULT selfnode\nTIMEOUT 1\nPROMPT 0\nLABEL selfnode\n  KERNEL {prefix}/vmlinuz\n  INITRD {prefix}/initrd.img\n  APPEND {KERNEL_CMDLINE}\n"
    )
}

fn build_iso(req: &ImageRequest, stage: &Path, out: &Path) -> Result<(), ApplianceError> {
    let iso = stage.join("isolinux");
    std::fs::create_dir_all(&iso).map_err(|source| ApplianceError::Io {
        op: "create",
        path: iso.clone(),
        source,
    })?;
    copy(Path::new(ISOLINUX_BIN), &iso.join("isolinux.bin"))?;
    copy(Path::new(LDLINUX_C32), &iso.join("ldlinux.c32"))?;
    write(&iso.join("isolinux.cfg"), &boot_config("/boot"))?;
    touch_tree(stage, req.epoch)?;
    let date = format_date(req.epoch);
    run(
        Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-o"])
            .arg(out)
            .args(["-V", "SELFNODE", "-R", "-J"])
            .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
            .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
            .args(["-isohybrid-mbr", ISOHDPFX])
            .args(["--modification-date=".to_string() + &date])
            .arg(stage),
        req.epoch,
    )
}

/// `YYYYMMDDhhmmss00` for xorriso (UTC).
fn format_date(epoch: u64) -> String {
    let (y, mo, d, h, mi, s) = crate::containerd::utc_civil(epoch);
    format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}00")
}

const MIB: u64 = 1 << 20;

/// A GUID from `seed` and `what`, stable for the same content.
fn guid(seed: &[u8], what: &str) -> String {
    let mut h = Sha256::new();
    h.update(seed);
    h.update(what.as_bytes());
    let b = h.finalize();
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[..16]);
    g[6] = (g[6] & 0x0f) | 0x40; // version 4 layout
    g[8] = (g[8] & 0x3f) | 0x80;
    let x = hex::encode_upper(g);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

fn build_raw(
    req: &ImageRequest,
    stage: &Path,
    work: &Path,
    out: &Path,
) -> Result<(), ApplianceError> {
    let boot = stage.join("boot");
    write(&stage.join("syslinux.cfg"), &boot_config("/boot"))?;
    touch_tree(stage, req.epoch)?;
    let content: u64 = ["vmlinuz", "initrd.img"]
        .iter()
        .map(|f| {
            std::fs::metadata(boot.join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    // FAT32 with room for the boot loader and a newer initramfs.
    let fat_bytes = (content + 64 * MIB).div_ceil(MIB) * MIB;
    let fat = work.join("boot.fat");
    let (_, seed) = digest(&boot.join("initrd.img"))?;
    let volume_id = &seed[..8];
    run(
        Command::new("mkfs.fat")
            .args([
                "--invariant",
                "-F",
                "32",
                "-n",
                "SELFNODE",
                "-i",
                volume_id,
                "-C",
            ])
            .arg(&fat)
            .arg((fat_bytes / 1024).to_string()),
        req.epoch,
    )?;
    run(
        Command::new("mcopy")
            .args(["-s", "-m", "-i"])
            .arg(&fat)
            .arg(&boot)
            .arg(stage.join("syslinux.cfg"))
            .arg("::/"),
        req.epoch,
    )?;
    run(
        Command::new("syslinux").args(["--install"]).arg(&fat),
        req.epoch,
    )?;

    let data_bytes = req.data_size.div_ceil(MIB) * MIB;
    let first = MIB; // LBA 2048
    let total = first + fat_bytes + data_bytes + MIB;
    let io = |source| ApplianceError::Io {
        op: "write",
        path: out.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(out)
        .map_err(io)?;
    file.set_len(total).map_err(io)?;
    drop(file);
    let mut script = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\
         start=2048, size={}, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, uuid={}, name=\"selfnode-boot\", attrs=\"LegacyBIOSBootable\"\n",
        guid(seed.as_bytes(), "disk"),
        fat_bytes / 512,
        guid(seed.as_bytes(), "boot"),
    );
    if data_bytes > 0 {
        script.push_str(&format!(
            "start={}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={}, name=\"{DATA_PARTITION}\"\n",
            (first + fat_bytes) / 512,
            data_bytes / 512,
            guid(seed.as_bytes(), "data"),
        ));
    }
    let mut child = Command::new("sfdisk")
        .args([
            "--quiet",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe",
            "never",
        ])
        .arg(out)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| ApplianceError::ToolFailed {
            program: "sfdisk".into(),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(io)?;
    let result = child.wait_with_output().map_err(io)?;
    if !result.status.success() {
        return Err(ApplianceError::ToolFailed {
            program: format!("sfdisk {}", out.display()),
            status: result.status.to_string(),
            stderr: String::from_utf8_lossy(&result.stderr).trim().to_string(),
        });
    }
    // The boot partition's bytes, then SYSLINUX's GPT MBR code (440 bytes:
    // the partition table after it stays sfdisk's protective one).
    let mut disk = std::fs::OpenOptions::new()
        .write(true)
        .open(out)
        .map_err(io)?;
    let mut src = std::fs::File::open(&fat).map_err(io)?;
    disk.seek(SeekFrom::Start(first)).map_err(io)?;
    std::io::copy(&mut src, &mut disk).map_err(io)?;
    let mbr = std::fs::read(GPTMBR).map_err(io)?;
    disk.seek(SeekFrom::Start(0)).map_err(io)?;
    disk.write_all(&mbr[..mbr.len().min(440)]).map_err(io)?;
    disk.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_for_xorriso_are_utc_calendar_dates() {
        assert_eq!(format_date(0), "1970010100000000");
        assert_eq!(format_date(1_764_547_200), "2025120100000000");
        assert_eq!(format_date(951_782_400 + 3661), "2000022901010100");
    }

    #[test]
    fn guids_are_stable_for_the_same_content_and_differ_by_use() {
        assert_eq!(guid(b"a", "disk"), guid(b"a", "disk"));
        assert_ne!(guid(b"a", "disk"), guid(b"a", "boot"));
        assert_ne!(guid(b"a", "disk"), guid(b"b", "disk"));
        assert_eq!(guid(b"a", "disk").len(), 36);
    }

    #[test]
    fn a_module_comes_with_its_dependencies_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/802/stp.ko\n\
             kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko\nkernel/net/802/stp.ko:\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\n",
        )
        .unwrap();
        let got = module_closure(dir.path(), &["br-netfilter", "ext4"]).unwrap();
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [
                "kernel/net/802/stp.ko",
                "kernel/net/bridge/br_netfilter.ko",
                "kernel/net/bridge/bridge.ko"
            ]
        );
        let err = module_closure(dir.path(), &["veth"]).unwrap_err();
        assert!(err.to_string().contains("veth"), "{err}");
        assert!(err.is_invalid_input());
    }

    #[test]
    fn a_file_that_is_no_bzimage_is_refused_as_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinuz");
        std::fs::write(&k, vec![0u8; 4096]).unwrap();
        let err = check_kernel(&k).unwrap_err();
        assert!(err.to_string().contains("not a Linux bzImage"), "{err}");
        assert!(check_kernel(&dir.path().join("none"))
            .unwrap_err()
            .to_string()
            .contains("cannot be opened"));
    }
}
