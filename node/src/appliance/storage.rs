//! The appliance's persistent storage: one ext4 file system labelled
//! [`dist::appliance::DATA_PARTITION`], mounted at `/mnt/data`, with
//! `/var/lib`, `/etc/kubernetes` and `/var/log` bound from it, so a reboot
//! keeps the node (its checkpoint, etcd, containerd's images, the
//! kubelet's credentials) and the logs of the boots before (the agent's,
//! its components', the pods').
//!
//! Which device, in this order: `dataDevice` (configured); the GPT
//! partition named `selfnode-data` (the raw image has one); a file system
//! labelled `selfnode-data`; a whole disk that is blank. A device is
//! formatted only when its first and last MiB are all zeros: one that holds
//! anything else is refused, never formatted.

use anyhow::{bail, Context};
use dist::appliance::DATA_PARTITION;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// What the storage step found and did.
#[derive(Debug, Clone)]
pub struct Storage {
    /// The device, e.g. `/dev/vdb`.
    pub device: String,
    /// True if it was formatted on this boot (the node's first).
    pub formatted: bool,
}

const EXT_MAGIC_OFFSET: u64 = 1024 + 0x38;
const EXT_LABEL_OFFSET: u64 = 1024 + 0x78;
const MIB: usize = 1 << 20;

/// What a device holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// All zeros at both ends: never used.
    Blank,
    /// An ext2/3/4 file system with this label.
    Ext(String),
    /// Something else: data that is not ours.
    Other,
}

/// Reads the start and end of `dev` to tell [`Content`].
pub fn content(dev: &Path) -> anyhow::Result<Content> {
    let mut f = std::fs::File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let size = f.seek(SeekFrom::End(0))?;
    let mut head = vec![0u8; MIB.min(size as usize)];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut head)?;
    if head.len() as u64 > EXT_LABEL_OFFSET + 16 {
        let magic = u16::from_le_bytes([
            head[EXT_MAGIC_OFFSET as usize],
            head[EXT_MAGIC_OFFSET as usize + 1],
        ]);
        if magic == 0xEF53 {
            let raw = &head[EXT_LABEL_OFFSET as usize..EXT_LABEL_OFFSET as usize + 16];
            let label = String::from_utf8_lossy(raw)
                .trim_end_matches('\0')
                .to_string();
            return Ok(Content::Ext(label));
        }
    }
    if head.iter().any(|b| *b != 0) {
        return Ok(Content::Other);
    }
    let tail_len = MIB.min(size as usize);
    let mut tail = vec![0u8; tail_len];
    f.seek(SeekFrom::Start(size - tail_len as u64))?;
    f.read_exact(&mut tail)?;
    Ok(if tail.iter().all(|b| *b == 0) {
        Content::Blank
    } else {
        Content::Other
    })
}

fn uevent(sys: &Path, name: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(sys.join("class/block").join(name).join("uevent")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

fn block_devices(sys: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sys.join("class/block"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.retain(|n| {
        !n.starts_with("loop")
            && !n.starts_with("ram")
            && !n.starts_with("sr")
            && !n.starts_with("zram")
    });
    v
}

/// Picks the device (see the module documentation), waiting up to `wait`
/// for disks to appear. `None`: no candidate (the node runs from memory).
pub fn pick(
    sys: &Path,
    dev: &Path,
    want: Option<&str>,
    wait: std::time::Duration,
) -> anyhow::Result<Option<PathBuf>> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(w) = want {
            if Path::new(w).exists() {
                return Ok(Some(PathBuf::from(w)));
            }
        } else {
            let devices = block_devices(sys);
            if let Some(p) = devices
                .iter()
                .find(|n| uevent(sys, n, "PARTNAME").as_deref() == Some(DATA_PARTITION))
            {
                return Ok(Some(dev.join(p)));
            }
            for n in &devices {
                if let Ok(Content::Ext(label)) = content(&dev.join(n)) {
                    if label == DATA_PARTITION {
                        return Ok(Some(dev.join(n)));
                    }
                }
            }
            if std::time::Instant::now() >= deadline {
                // A whole, writable disk of at least 1 GiB with no partitions, blank.
                for n in &devices {
                    let base = sys.join("class/block").join(n);
                    let whole = !base.join("partition").exists();
                    let ro = std::fs::read_to_string(base.join("ro"))
                        .unwrap_or_default()
                        .trim()
                        == "1";
                    let sectors: u64 = std::fs::read_to_string(base.join("size"))
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(0);
                    let has_parts = std::fs::read_dir(&base)
                        .map(|rd| {
                            rd.flatten()
                                .any(|e| e.file_name().to_string_lossy().starts_with(n.as_str()))
                        })
                        .unwrap_or(false);
                    if whole && !ro && !has_parts && sectors * 512 >= 1 << 30 {
                        if let Ok(Content::Blank) = content(&dev.join(n)) {
                            return Ok(Some(dev.join(n)));
                        }
                    }
                }
                return Ok(None);
            }
        }
        if std::time::Instant::now() >= deadline {
            bail!("dataDevice {} does not exist", want.unwrap_or_default());
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Formats `device` if blank (refuses one holding anything else), mounts
/// it at `mnt` and binds `var-lib`, `etc-kubernetes` and `var-log` from it
/// over `/var/lib`, `/etc/kubernetes` and `/var/log`.
pub fn prepare(device: &Path, mnt: &Path, say: &dyn Fn(&str)) -> anyhow::Result<Storage> {
    let formatted = match content(device)? {
        Content::Ext(_) => false,
        Content::Blank => {
            say(&format!("formatting {} as ext4 ({DATA_PARTITION}): the node's first boot", device.display()));
            let out = std::process::Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-L", DATA_PARTITION])
                .arg(device)
                .env("MKE2FS_CONFIG", "/etc/mke2fs.conf")
                .output()
                .context("running mke2fs")?;
            if !out.status.success() {
                bail!("mke2fs {} failed: {}", device.display(), String::from_utf8_lossy(&out.stderr).trim());
            }
            true
        }
        Content::Other => bail!(
            "{} holds data that is not a selfnode file system: it is never formatted. Give an empty disk, or name the right one with dataDevice (selfnode.data=)",
            device.display()
        ),
    };
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(mnt)?;
    mount(
        Some(device),
        mnt,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting {} on {}", device.display(), mnt.display()))?;
    for (sub, at) in [
        ("var-lib", "/var/lib"),
        ("etc-kubernetes", "/etc/kubernetes"),
        ("var-log", "/var/log"),
    ] {
        let from = mnt.join(sub);
        std::fs::create_dir_all(&from)?;
        std::fs::create_dir_all(at)?;
        mount(
            Some(&from),
            at,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("binding {} on {at}", from.display()))?;
    }
    Ok(Storage {
        device: device.display().to_string(),
        formatted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_ext_and_foreign_devices_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        std::fs::write(&p, vec![0u8; 4 * MIB]).unwrap();
        assert_eq!(content(&p).unwrap(), Content::Blank);
        let mut bytes = vec![0u8; 4 * MIB];
        bytes[EXT_MAGIC_OFFSET as usize] = 0x53;
        bytes[EXT_MAGIC_OFFSET as usize + 1] = 0xEF;
        bytes[EXT_LABEL_OFFSET as usize..EXT_LABEL_OFFSET as usize + 13]
            .copy_from_slice(b"selfnode-data");
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(content(&p).unwrap(), Content::Ext("selfnode-data".into()));
        let mut bytes = vec![0u8; 4 * MIB];
        bytes[4 * MIB - 1] = 1; // a backup GPT at the end, say
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(content(&p).unwrap(), Content::Other);
    }
}
