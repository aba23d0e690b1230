//! etcd's pivot: the self-hosted member (a static pod the kubelet starts
//! without an API server) joins the temporary one as a learner, catches up
//! and is promoted. Every write the temporary apiserver acknowledged is in
//! the raft log both replay. A restore first makes the temporary member's
//! data directory from the snapshot.

use std::time::Duration;

use bootstrap::host::Host;
use bootstrap::plane::{EtcdInitial, Placement};

use super::Runner;
use super::{InitStep, Seq};
use crate::checkpoint::EtcdMemberIdentity;
use crate::host::NodeHost;
use crate::sequences::runner::StepReport;
use crate::wait::until;

/// An etcd call retried for up to 30 s while it fails to connect or gets a
/// transport error: a member that has just started, or a connection reset
/// under it, is no reason to stop the sequence. Refusals etcd means (a bad
/// request, a quorum guard) come back at once.
pub(super) async fn etcd_retrying<T, F, Fut>(call: F) -> anyhow::Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_mgr::EtcdError>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(
                e @ (etcd_mgr::EtcdError::Connect { .. }
                | etcd_mgr::EtcdError::Rpc { .. }
                | etcd_mgr::EtcdError::Timeout { .. }
                | etcd_mgr::EtcdError::NoLeader { .. }),
            ) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %dist::error_chain(&e), "etcd call failed; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The temporary member, as the sequence reaches it.
fn temp_etcd(seq: &Seq<'_>) -> etcd_mgr::EtcdConfig {
    crate::etcd::config_at(seq.paths, seq.spec.ports.temp_etcd_client)
}

/// The self-hosted member as the temporary one lists it, if it does.
async fn self_hosted_member(seq: &Seq<'_>) -> anyhow::Result<Option<etcd_mgr::MemberStatus>> {
    let peer = seq.spec.etcd_peer_url(Placement::SelfHosted);
    let cfg = temp_etcd(seq);
    let members = etcd_retrying(|| etcd_mgr::members(&cfg)).await?;
    Ok(members.into_iter().find(|m| m.peer_urls.contains(&peer)))
}

/// `restore_etcd_data`: the temporary member's data directory, made from
/// the snapshot with the bundle's etcdutl.
pub(super) async fn restore_etcd_data(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let src = seq
        .ctx
        .restore
        .clone()
        .ok_or_else(|| anyhow::anyhow!("restore_etcd_data is planned without a snapshot"))?;
    let spec = &seq.spec;
    let target = etcd_mgr::restore::RestoreTarget {
        name: spec.etcd_member_name(Placement::Temporary),
        peer_url: spec.etcd_peer_url(Placement::Temporary),
        data_dir: spec.temp_etcd_data_dir(),
        cluster_token: format!("{}-restored", spec.cluster_name),
    };
    let etcdutl = seq.ctx.bundle.bin("etcdutl");
    run.step(
        InitStep::RestoreEtcdData,
        Duration::from_secs(120),
        || async { Ok(target.data_dir.join("member").is_dir()) },
        || async {
            let target = target.clone();
            tokio::task::spawn_blocking(move || {
                etcd_mgr::restore::restore_data_dir(&etcdutl, &src.snapshot, &target)
            })
            .await??;
            Ok(())
        },
    )
    .await
}

/// `add_etcd_learner`: the self-hosted member's peer URL as a learner of
/// the temporary member's cluster (a learner does not count for quorum).
pub(super) async fn add_etcd_learner(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let peer = seq.spec.etcd_peer_url(Placement::SelfHosted);
    let cfg = temp_etcd(seq);
    run.step(
        InitStep::AddEtcdLearner,
        Duration::from_secs(60),
        || async { Ok(self_hosted_member(seq).await?.is_some()) },
        || async {
            etcd_retrying(|| etcd_mgr::members::add_learner(&cfg, &peer)).await?;
            Ok(())
        },
    )
    .await
}

/// `start_self_hosted_etcd`: the member's static pod; done when the
/// manifest is the one rendered and the member answers.
pub(super) async fn start_self_hosted_etcd(
    run: &Runner,
    seq: &Seq<'_>,
) -> anyhow::Result<StepReport> {
    let spec = &seq.spec;
    let manifest = seq.paths.etcd_manifest();
    let pod = bootstrap::objects::etcd_static_pod_yaml(spec, &EtcdInitial::join_temporary(spec))?;
    let peer = spec.etcd_peer_url(Placement::SelfHosted);
    let done = || async {
        let same = std::fs::read(&manifest).ok().as_deref() == Some(pod.as_bytes());
        Ok(same && self_hosted_member(seq).await?.is_some_and(|m| m.healthy))
    };
    // The member is the first pod: its image and the pause image must be
    // in containerd before the kubelet is asked for it.
    if !done().await? {
        crate::sequences::bundle_images_imported(run, InitStep::StartSelfHostedEtcd, seq.paths)
            .await?;
    }
    run.step(
        InitStep::StartSelfHostedEtcd,
        Duration::from_secs(180),
        done,
        || async {
            // etcd wants its data private; the kubelet would make the
            // hostPath 0755.
            NodeHost.ensure_dir(&spec.etcd_data_dir, bootstrap::plane::ETCD_DATA_DIR_MODE)?;
            NodeHost.ensure_dir(&seq.paths.static_pod_dir(), 0o755)?;
            NodeHost.write_file(&manifest, pod.as_bytes(), 0o600)?;
            let waited = until(
                "the kubelet to start the etcd static pod",
                Duration::from_secs(170),
                Duration::from_millis(250),
                || async {
                    match self_hosted_member(seq).await? {
                        Some(m) if m.healthy => Ok(true),
                        Some(m) => anyhow::bail!(
                            "member {peer} does not answer yet{}",
                            m.error.map(|e| format!(": {e}")).unwrap_or_default()
                        ),
                        None => anyhow::bail!("member {peer} is gone from the member list"),
                    }
                },
            )
            .await;
            match waited {
                Ok(()) => Ok(()),
                // Why the pod is not up is the kubelet's to say.
                Err(e) => {
                    let kubelet = match seq.client().await {
                        Ok(c) => {
                            super::ready::static_pod_report(
                                &c,
                                bootstrap::objects::ETCD,
                                &spec.node_name,
                            )
                            .await
                        }
                        Err(c) => format!("cannot ask the API about the pod: {c:#}"),
                    };
                    Err(anyhow::anyhow!("{e:#}; {kubelet}"))
                }
            }
        },
    )
    .await
}

/// `promote_etcd_member`: the learner becomes a voter once in sync. The
/// promoted member's identity then goes into the checkpoint (again on a
/// resume: the record is idempotent).
pub(super) async fn promote_etcd_member(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let peer = seq.spec.etcd_peer_url(Placement::SelfHosted);
    let cfg = temp_etcd(seq);
    let report = run
        .step(
            InitStep::PromoteEtcdMember,
            Duration::from_secs(150),
            || async {
                Ok(self_hosted_member(seq)
                    .await?
                    .is_some_and(|m| !m.is_learner))
            },
            || async {
                etcd_mgr::members::promote(&cfg, &peer, Duration::from_secs(140)).await?;
                Ok(())
            },
        )
        .await?;
    if let Some(m) = self_hosted_member(seq).await? {
        seq.checkpoint()?.record_etcd_member(&EtcdMemberIdentity {
            name: m.name,
            id: m.id,
            cluster_id: m.cluster_id,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            data_dir: seq.spec.etcd_data_dir.clone(),
            recorded_at: crate::status::now_unix(),
        })?;
    }
    Ok(report)
}
