//! The kubelet's cgroup root (`--cgroup-root`): the kubelet refuses a
//! cgroupRoot that does not exist, so the agent makes it first.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::config::CgroupVersion;

const CGROUP_FS: &str = "/sys/fs/cgroup";

/// Makes `root` (an absolute cgroup path, `/a/b`) in every hierarchy: on
/// cgroup v1 in each controller's mount (the cpuset controller's new
/// groups get their parent's CPUs and memory nodes, or no task could join
/// them); on v2 in the unified tree. Idempotent.
pub fn ensure(root: &str, version: CgroupVersion) -> anyhow::Result<()> {
    let rel = root.trim_start_matches('/');
    let bases: Vec<PathBuf> = match version {
        CgroupVersion::V2 => vec![PathBuf::from(CGROUP_FS)],
        CgroupVersion::V1 => v1_hierarchies()?,
    };
    for base in bases {
        let mut dir = base.clone();
        for part in rel.split('/') {
            let parent = dir.clone();
            dir.push(part);
            if !dir.is_dir() {
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            // Also when the directory exists: a kill between its creation
            // and these writes leaves an empty cpuset no task can join.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let here = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
                if !here.trim().is_empty() {
                    continue;
                }
                if let Ok(value) = std::fs::read_to_string(parent.join(file)) {
                    std::fs::write(dir.join(file), value.trim())
                        .with_context(|| format!("writing {}", dir.join(file).display()))?;
                }
            }
        }
    }
    Ok(())
}

/// The mount points of the cgroup v1 controllers (one per hierarchy).
fn v1_hierarchies() -> anyhow::Result<Vec<PathBuf>> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup" && Path::new(point).starts_with(CGROUP_FS))
                .then(|| PathBuf::from(point))
        })
        .collect())
}
