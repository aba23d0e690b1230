//! The host's identity and keys: the cluster it belongs to, the PKI,
//! encryption at rest, and the kubelet's node identity.

use std::time::Duration;

use bootstrap::host::Host;

use super::Runner;
use super::{restore, InitStep, Seq};
use crate::checkpoint::ClusterIdentity;
use crate::control::NodeIdentity;
use crate::host::NodeHost;
use crate::sequences::runner::StepReport;

/// `record_cluster_identity`: the host belongs to this cluster from now
/// on, recorded before etcd starts, so it never bootstraps a second one.
pub(super) async fn record_cluster_identity(
    run: &Runner,
    seq: &Seq<'_>,
) -> anyhow::Result<StepReport> {
    let settings = &seq.ctx.settings;
    run.step(
        InitStep::RecordClusterIdentity,
        Duration::from_secs(10),
        || async { Ok(seq.checkpoint()?.cluster_identity()?.is_some()) },
        || async {
            let id = ClusterIdentity {
                cluster_name: settings.cluster_name.clone(),
                cluster_uid: crate::cluster::random_uid(),
                node_name: settings.node_name.clone(),
                role: seq.ctx.sequence().role(),
                created: crate::status::now_unix(),
            };
            Ok(seq.checkpoint()?.record_cluster_identity(&id)?)
        },
    )
    .await
}

/// `restore_pki`: the old cluster's keys, copied before `ensure_pki` so it
/// keeps them (and the snapshot's encrypted Secrets stay readable).
pub(super) async fn restore_pki(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let from = seq
        .ctx
        .restore
        .as_ref()
        .and_then(|r| r.pki.clone())
        .ok_or_else(|| anyhow::anyhow!("restore_pki is planned without --pki"))?;
    run.converge(InitStep::RestorePki, || async {
        restore::copy_pki(&NodeHost, &from, &seq.paths.pki_dir())
    })
    .await
}

/// `ensure_pki`: idempotent by construction (it reports what it changed).
/// Holds the PKI lock: after the pivot the agent renews certificates too.
pub(super) async fn ensure_pki(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    run.converge(InitStep::EnsurePki, || async {
        let _lock = crate::certs::PkiLock::acquire(seq.paths, Duration::from_secs(120)).await?;
        let report = bootstrap::pki::ensure_pki(
            &NodeHost,
            &seq.spec.pki_spec(),
            std::time::SystemTime::now(),
        )?;
        if let Ok(mut hash) = seq.ca_hash.lock() {
            hash.clone_from(&report.ca_cert_hash);
        }
        let changed = report.changed().next().is_some();
        Ok(changed)
    })
    .await
}

/// `ensure_encryption_config`: the key Secrets are encrypted with at rest.
pub(super) async fn ensure_encryption_config(
    run: &Runner,
    seq: &Seq<'_>,
) -> anyhow::Result<StepReport> {
    run.converge(InitStep::EnsureEncryptionConfig, || async {
        let report = bootstrap::plane::ensure_encryption_config(
            &NodeHost,
            &seq.spec.pki_dir,
            &mut rand::rng(),
        )?;
        Ok(report.created)
    })
    .await
}

/// `write_node_identity`: the kubelet's node name, IP and cluster DNS
/// (address and domain); the agent restarts the kubelet with them and with
/// its kubeconfig (written by `ensure_pki`).
pub(super) async fn write_node_identity(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let file = seq.paths.node_identity_file();
    let node_id = NodeIdentity {
        node_name: seq.spec.node_name.clone(),
        node_ip: seq.spec.advertise_address,
        cluster_dns: Some(seq.spec.dns_service_ip()?),
        cluster_domain: seq.spec.cluster_domain.clone(),
    };
    let report = run
        .step(
            InitStep::WriteNodeIdentity,
            Duration::from_secs(10),
            || async { Ok(NodeIdentity::read(&file)?.as_ref() == Some(&node_id)) },
            || async {
                NodeHost.write_file(&file, &serde_json::to_vec_pretty(&node_id)?, 0o644)?;
                Ok(())
            },
        )
        .await?;
    // Always, not only after a write: a resumed run may follow a kill
    // between the write and the signal.
    seq.agent.reload()?;
    Ok(report)
}
