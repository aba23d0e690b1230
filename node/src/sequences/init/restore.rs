//! `selfnode etcd snapshot restore`: what a restore adds to the init
//! sequence. Its inputs are checked before anything is written
//! ([`check_restore_inputs`]); `--force` takes the running cluster's etcd
//! out of the way (four steps before the rest: `point_lb_at_temp_apiserver`,
//! `stop_etcd_member`, `move_etcd_data_aside`, `begin_restore`); the old
//! PKI is copied in
//! ([`copy_pki`]). The sequence itself, with its `restore_pki` and
//! `restore_etcd_data` steps, is `super::run`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bootstrap::host::Host;

use super::{InitStep, Runner, Seq};
use crate::checkpoint::ClusterIdentity;
use crate::cluster::{random_uid, ClusterRole};
use crate::control::ApiBackends;
use crate::host::NodeHost;
use crate::sequences::runner::StepReport;
use crate::wait::until;

/// Where a restore's data and keys come from.
#[derive(Debug, Clone)]
pub struct RestoreSource {
    /// An etcd snapshot (`selfnode etcd snapshot save`, a scheduled one, or
    /// upstream `etcdctl snapshot save`).
    pub snapshot: PathBuf,
    /// A copy of the old control plane's PKI directory; `None`: the host's
    /// own PKI directory must hold it.
    pub pki: Option<PathBuf>,
    /// Restore over the cluster this host runs (its etcd data is moved
    /// aside, not deleted).
    pub force: bool,
    /// Run as `selfnode recover --from-snapshot` (its own progress prefix).
    pub recover: bool,
    /// Go ahead while other hosts still serve the cluster
    /// (`--discard-other-members`; see `sequences::others`).
    pub discard_other_members: bool,
}

/// A restore that cannot start: bad snapshot contents or missing keys.
/// Exit code 2; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RestoreInputError {
    #[error("{snapshot} is a snapshot of an empty etcd (revision {revision}): it holds no Kubernetes objects, so there is nothing to restore; use a snapshot of the cluster's etcd")]
    EmptySnapshot { snapshot: PathBuf, revision: i64 },
    #[error("restoring needs the cluster's PKI (its CAs, the service-account key and the key its Secrets are encrypted with), and {missing} is missing; pass --pki DIR with a copy of the old control plane's {pki_dir}")]
    NoPki { missing: PathBuf, pki_dir: PathBuf },
    #[error("cannot inspect {snapshot} with etcdutl: {why}")]
    Inspect { snapshot: PathBuf, why: String },
}

/// A restore onto a host that runs a cluster. Exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("this host runs cluster {existing:?} (node {node:?}); a restore builds the cluster from the snapshot and replaces its etcd data. Pass --force to do that here (the current etcd data is moved aside, not deleted; the PKI in {pki_dir} is kept unless you pass --pki), or restore on a reset host")]
pub struct RestoreConflict {
    pub existing: String,
    pub node: String,
    pub pki_dir: PathBuf,
}

/// Checks a restore's inputs before anything is written: the snapshot file
/// (etcd-mgr's checks, then its revision: a never-written etcd has nothing
/// to restore) and the PKI it needs.
pub(super) fn check_restore_inputs(
    src: &RestoreSource,
    bundle: &dist::bundle::Bundle,
    pki_dir: &Path,
) -> anyhow::Result<()> {
    etcd_mgr::snapshot::verify_file(&src.snapshot)?;
    let out = std::process::Command::new(bundle.bin("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(&src.snapshot)
        .output()
        .with_context(|| format!("cannot run {}", bundle.bin("etcdutl").display()))?;
    let inspect = |why: String| RestoreInputError::Inspect {
        snapshot: src.snapshot.clone(),
        why,
    };
    if !out.status.success() {
        return Err(inspect(String::from_utf8_lossy(&out.stderr).trim().to_string()).into());
    }
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| inspect(e.to_string()))?;
    let revision = status["revision"].as_i64().unwrap_or(0);
    if revision <= 1 {
        return Err(RestoreInputError::EmptySnapshot {
            snapshot: src.snapshot.clone(),
            revision,
        }
        .into());
    }
    let from = src.pki.as_deref().unwrap_or(pki_dir);
    for f in crate::cluster::CLUSTER_KEY_FILES {
        if !from.join(f).is_file() {
            return Err(RestoreInputError::NoPki {
                missing: from.join(f),
                pki_dir: pki_dir.to_path_buf(),
            }
            .into());
        }
    }
    Ok(())
}

// A forced restore takes the running cluster's etcd out of the way first,
// in four steps: new connections go to the temporary apiserver; the
// member's static pod goes (the kubelet stops it); its data directory is
// renamed aside; then the checkpoint says "restoring, not pivoted" in one
// write. Each converges, so a kill anywhere and a re-run with `--force`
// finish it; after `begin_restore` a re-run resumes the restore. The
// cluster's pods keep running; the LB sends nothing to an apiserver that is
// not ready, and they serve the restored data once the new self-hosted
// member is promoted.

/// `point_lb_at_temp_apiserver`: new connections go to the temporary
/// apiserver from now on (the agent re-reads the list within 2 s); the
/// running ones lose their etcd.
pub(super) async fn point_lb_at_temp_apiserver(
    run: &Runner,
    seq: &Seq<'_>,
) -> anyhow::Result<StepReport> {
    let (temp_api, _) = seq.apiservers();
    run.converge(InitStep::PointLbAtTempApiserver, || async {
        Ok(ApiBackends::new([temp_api])
            .write(seq.paths, "written by selfnode etcd snapshot restore")?)
    })
    .await
}

/// `stop_etcd_member`: the member's static pod goes and the step waits
/// until etcd no longer serves on this host.
pub(super) async fn stop_etcd_member(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let spec = &seq.spec;
    let manifest = seq.paths.etcd_manifest();
    let client = SocketAddr::new(spec.loopback(), spec.ports.etcd_client);
    let stopped = || async { Ok(tokio::net::TcpStream::connect(client).await.is_err()) };
    run.step(
        InitStep::StopEtcdMember,
        Duration::from_secs(120),
        || async { Ok(!manifest.exists() && stopped().await?) },
        || async {
            match std::fs::remove_file(&manifest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context(format!("cannot remove {}", manifest.display())),
            }
            until(
                "the etcd member to stop",
                Duration::from_secs(90),
                Duration::from_millis(500),
                stopped,
            )
            .await
        },
    )
    .await
}

/// `move_etcd_data_aside`: the member's data directory, renamed aside.
pub(super) async fn move_etcd_data_aside(
    run: &Runner,
    seq: &Seq<'_>,
) -> anyhow::Result<StepReport> {
    let data = &seq.spec.etcd_data_dir;
    run.converge(InitStep::MoveEtcdDataAside, || async {
        if !data.exists() {
            return Ok(false);
        }
        let aside = PathBuf::from(format!(
            "{}.before-restore-{}",
            data.display(),
            crate::status::now_unix()
        ));
        std::fs::rename(data, &aside)
            .with_context(|| format!("cannot move {} aside", data.display()))?;
        run.say(
            InitStep::MoveEtcdDataAside,
            &format!("the previous etcd data is kept in {}", aside.display()),
        );
        Ok(true)
    })
    .await
}

/// `begin_restore`: the checkpoint says "restoring, not pivoted"
/// (identity and marker in one write).
pub(super) async fn begin_restore(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    run.converge(InitStep::BeginRestore, || async {
        let cp = seq.checkpoint()?;
        let Some(id) = cp.cluster_identity()? else {
            anyhow::bail!("the checkpoint holds no cluster identity to restore over");
        };
        if id.role == ClusterRole::Restore && !cp.pivot_committed()? {
            return Ok(false);
        }
        cp.begin_restore(&ClusterIdentity {
            role: ClusterRole::Restore,
            cluster_uid: random_uid(),
            created: crate::status::now_unix(),
            ..id
        })?;
        Ok(true)
    })
    .await
}

/// Copies the old cluster's PKI into `pki_dir`, keeping each file's mode;
/// returns whether anything changed.
pub(super) fn copy_pki(host: &NodeHost, from: &Path, pki_dir: &Path) -> anyhow::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = false;
    let mut stack = vec![from.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let path = entry?.path();
            let rel = path.strip_prefix(from)?;
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                host.ensure_dir(&pki_dir.join(rel), 0o700)?;
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path)?;
                let written = host.write_file(
                    &pki_dir.join(rel),
                    &bytes,
                    meta.permissions().mode() & 0o777,
                )?;
                changed |= written != bootstrap::host::Written::Unchanged;
            }
        }
    }
    Ok(changed)
}
