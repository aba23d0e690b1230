//! `selfnode upgrade rollback`: the cluster back to the bundle it ran
//! before the last `upgrade apply` (finished or cut short), in place: the
//! upgrade's steps in the reverse order, so the skew policy holds at every
//! step (a kubelet never newer than an API server, etcd last).
//!
//! 1. `check_rollback`: the record of an upgrade not rolled back yet, its
//!    previous bundle on disk and whole (`SHA256SUMS`), one host.
//! 2. `import_images`: the previous bundle's images, in case the kubelet's
//!    image garbage collection removed them since.
//! 3. `downgrade_host`: this host's kubelet and containerd first.
//! 4. `downgrade_coredns`, `downgrade_kube_proxy`, `apply_cluster_objects`,
//!    `downgrade_schedulers`, `downgrade_controller_managers`,
//!    `downgrade_apiservers`: each from the previous bundle, waited on.
//! 5. `downgrade_etcd`: across a minor, etcd's own downgrade moves its
//!    storage to the older format first, so no write is lost; then the
//!    member runs the previous image.
//! 6. `finish_rollback`: the record says so.
//!
//! Nothing is restored from the snapshot taken before the upgrade: every
//! write made since is kept. Kubernetes writes its objects in storage
//! versions the previous minor reads (its own rule for this), and etcd's
//! downgrade does the same for its data. The snapshot stays in
//! `var/lib/selfnode/upgrade/` for `selfnode recover --from-snapshot` if
//! the cluster cannot come back in place.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::apply::{self, ApplyContext, Seq, UpgradeRecord, Workload};
use super::UpgradeRefused;
use crate::paths::HostPaths;
use crate::sequences::plan::{steps, Plan};
use crate::sequences::runner::{self, StepReport};

steps! {
    /// `selfnode upgrade rollback`'s steps (module docs).
    pub enum RollbackStep {
        CheckRollback => "check_rollback",
        ImportImages => "import_images",
        DowngradeHost => "downgrade_host",
        DowngradeCoredns => "downgrade_coredns",
        DowngradeKubeProxy => "downgrade_kube_proxy",
        ApplyClusterObjects => "apply_cluster_objects",
        DowngradeSchedulers => "downgrade_schedulers",
        DowngradeControllerManagers => "downgrade_controller_managers",
        DowngradeApiservers => "downgrade_apiservers",
        DowngradeEtcd => "downgrade_etcd",
        FinishRollback => "finish_rollback",
    }
}

type Runner = runner::Runner<RollbackStep>;

/// What `upgrade rollback -o json` prints.
#[derive(Debug, Serialize)]
pub struct RollbackReport {
    /// The version rolled back from, and to.
    pub from: String,
    pub to: String,
    pub steps: Vec<StepReport>,
    pub seconds: f64,
}

/// Every step runs; each observes first.
pub fn plan() -> Plan<RollbackStep> {
    Plan::every_step("rollback")
}

/// The record of the upgrade to roll back, or why there is none to.
fn record(paths: &HostPaths) -> anyhow::Result<UpgradeRecord> {
    let refused = |reason: String| UpgradeRefused {
        reason,
        refusal: super::Refusal::State,
    };
    let r = UpgradeRecord::read(paths)?.ok_or_else(|| {
        refused("no upgrade has run on this host: there is nothing to roll back".into())
    })?;
    if r.rolled_back.is_some() {
        return Err(refused(format!(
            "the upgrade {} to {} was rolled back already",
            r.from, r.to
        ))
        .into());
    }
    Ok(r)
}

/// Runs the rollback (module docs).
pub async fn run(paths: &HostPaths, quiet: bool) -> anyhow::Result<RollbackReport> {
    let r = record(paths)?;
    let ctx = ApplyContext {
        paths: paths.clone(),
        bundle_dir: r.from_bundle.clone(),
        quiet,
    };
    let seq = Seq::load(&ctx).await?;
    crate::wait::api_ready(&seq.client, Duration::from_secs(3 * 60)).await?;
    let plan = plan();
    let run = Runner::new(&plan, quiet);
    if !quiet {
        eprintln!(
            "[rollback] {} back to {} in place, bundle {}: nothing is restored from the snapshot, every write since the upgrade is kept",
            r.to,
            r.from,
            r.from_bundle.display()
        );
    }
    let reports = runner::run_plan(&plan, &run, |step| execute(step, &run, &seq)).await?;
    Ok(RollbackReport {
        from: r.to,
        to: r.from,
        steps: reports,
        seconds: run.elapsed().as_secs_f64(),
    })
}

async fn execute(step: RollbackStep, run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    use RollbackStep as S;
    match step {
        S::CheckRollback => check_rollback(run, seq).await,
        S::ImportImages => super::import_images(run, &seq.ctx.paths, &seq.target, step).await,
        S::DowngradeHost => apply::host_to_target(run, seq, step).await,
        S::DowngradeCoredns => apply::roll(run, seq, step, Workload::Deployment("coredns")).await,
        S::DowngradeKubeProxy => {
            apply::roll(run, seq, step, Workload::DaemonSet("kube-proxy")).await
        }
        S::ApplyClusterObjects => apply::apply_cluster_objects(run, seq, step).await,
        S::DowngradeSchedulers => {
            apply::roll(run, seq, step, Workload::Deployment("kube-scheduler")).await
        }
        S::DowngradeControllerManagers => {
            apply::roll(
                run,
                seq,
                step,
                Workload::Deployment("kube-controller-manager"),
            )
            .await
        }
        S::DowngradeApiservers => {
            apply::roll(run, seq, step, Workload::DaemonSet("kube-apiserver")).await
        }
        S::DowngradeEtcd => apply::etcd_to_target(run, seq, step).await,
        S::FinishRollback => finish_rollback(run, seq).await,
    }
}

async fn check_rollback(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    run.converge(RollbackStep::CheckRollback, || async {
        let paths = &seq.ctx.paths;
        let mut r = record(paths)?;
        let b = seq.target.clone();
        tokio::task::spawn_blocking(move || b.verify_checksums())
            .await?
            .map_err(|e| UpgradeRefused {
                reason: format!("the previous bundle: {e:#}"),
                refusal: super::Refusal::Input,
            })?;
        seq.refuse_more_than_one_node().await?;
        if r.rollback_started.is_none() {
            r.rollback_started = Some(crate::status::now_unix());
            r.write(paths)?;
            return Ok(true);
        }
        Ok(false)
    })
    .await
}

async fn finish_rollback(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let paths = &seq.ctx.paths;
    run.step(
        RollbackStep::FinishRollback,
        Duration::from_secs(10),
        || async { Ok(UpgradeRecord::read(paths)?.is_some_and(|r| r.rolled_back.is_some())) },
        || async {
            let mut r = UpgradeRecord::read(paths)?.context("no upgrade record")?;
            r.rolled_back = Some(crate::status::now_unix());
            r.write(paths)
        },
    )
    .await
}
