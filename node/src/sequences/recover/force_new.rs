//! `selfnode recover --force-new-cluster`: the way back from quorum loss
//! that keeps the survivor's data.
//!
//! When most control-plane hosts are gone for good, etcd has no quorum and
//! the API cannot serve; a snapshot would throw away everything written
//! since it. On a surviving control-plane host this plan makes a
//! one-member etcd cluster from the host's own data, etcd's
//! `--force-new-cluster`:
//! 1. `check_quorum_lost`: refused (exit 3, naming them) while the members
//!    that answer form a quorum (through this host's endpoint and every
//!    other host's the balancer knows); a cluster already down to this one
//!    member (a run killed later) goes on to finish.
//! 2. `save_etcd_manifest`: the member's static pod manifest, kept aside
//!    (`var/lib/selfnode/etcd.yaml.before-force-new-cluster`).
//! 3. `start_force_new_cluster`: the manifest with `--force-new-cluster`
//!    added; the kubelet restarts the member, which drops every other
//!    member from its membership and serves alone.
//! 4. `restart_etcd_member`: the kept manifest back, so the flag is not
//!    used again (etcd's own advice), and the member serves.
//! 5. `record_etcd_member`: the member as it is now, in the checkpoint.
//! 6. `wait_api`: the API answers through this node's balancer.
//!
//! The other hosts then join again as control plane (`selfnode token create
//! --control-plane` here, `selfnode join` there, after a reset).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use etcd_mgr::{EtcdError, MemberStatus};
use k8s_openapi::api::core::v1::Pod;

use crate::checkpoint::{with_checkpoint, EtcdMemberIdentity};
use crate::paths::HostPaths;
use crate::sequences::plan::{steps, Action, Plan};
use crate::sequences::runner::{self, StepReport};
use crate::wait::until;

steps! {
    /// One step of `selfnode recover --force-new-cluster`.
    pub enum ForceNewStep {
        CheckQuorumLost => "check_quorum_lost",
        SaveEtcdManifest => "save_etcd_manifest",
        StartForceNewCluster => "start_force_new_cluster",
        RestartEtcdMember => "restart_etcd_member",
        RecordEtcdMember => "record_etcd_member",
        WaitApi => "wait_api",
    }
}

type Runner = runner::Runner<ForceNewStep>;

/// etcd's flag.
const FLAG: &str = "--force-new-cluster";
/// How long the member is given to serve alone after each restart.
const SERVE: Duration = Duration::from_secs(300);
/// How long each member is given to answer.
const ASK: Duration = Duration::from_secs(5);

/// Every step, in order; each observes before it acts.
pub fn plan() -> Plan<ForceNewStep> {
    let run = Some(Action::Run);
    Plan::one_lane(
        "recover",
        &[
            (ForceNewStep::CheckQuorumLost, run),
            (ForceNewStep::SaveEtcdManifest, run),
            (ForceNewStep::StartForceNewCluster, run),
            (ForceNewStep::RestartEtcdMember, run),
            (ForceNewStep::RecordEtcdMember, run),
            (ForceNewStep::WaitApi, run),
        ],
    )
}

/// `--force-new-cluster` while a quorum serves. Exit code 3.
#[derive(Debug, thiserror::Error)]
pub enum ForceNewRefused {
    #[error("etcd has a quorum: {answering} of its {voters} voting members answer ({names}); --force-new-cluster would throw the others out of a working cluster. Use 'selfnode recover' for lost components, or 'selfnode demote NODE' to take a host out on purpose")]
    QuorumServes {
        answering: usize,
        voters: usize,
        names: String,
    },
    #[error("this host runs no etcd member ({manifest} and the checkpoint's record are both missing): run --force-new-cluster on a control-plane host that survived")]
    NoMember { manifest: PathBuf },
    #[error("this host's etcd data directory {data} is gone: there is nothing to make a cluster from. Use 'selfnode recover --from-snapshot FILE'")]
    NoData { data: PathBuf },
}

/// What the steps share.
struct ForceNew<'a> {
    paths: &'a HostPaths,
    member: EtcdMemberIdentity,
    /// The saved manifest.
    saved: PathBuf,
}

/// Runs the plan (see the module docs).
pub async fn run(paths: &HostPaths, quiet: bool) -> anyhow::Result<Vec<StepReport>> {
    crate::control::RunningAgent::require(paths)?;
    let recorded = if paths.checkpoint_dir().exists() {
        with_checkpoint(&paths.checkpoint_dir(), |c| c.etcd_member()).await?
    } else {
        None
    };
    let Some(member) = recorded else {
        return Err(ForceNewRefused::NoMember {
            manifest: paths.etcd_manifest(),
        }
        .into());
    };
    if !member.data_dir.join("member").is_dir() {
        return Err(ForceNewRefused::NoData {
            data: member.data_dir.clone(),
        }
        .into());
    }
    let plan = plan();
    let run = Runner::new(&plan, quiet);
    let f = ForceNew {
        paths,
        member,
        saved: paths.state_dir().join("etcd.yaml.before-force-new-cluster"),
    };
    runner::run_plan(&plan, &run, |step| execute(step, &run, &f)).await
}

async fn execute(step: ForceNewStep, run: &Runner, f: &ForceNew<'_>) -> anyhow::Result<StepReport> {
    match step {
        ForceNewStep::CheckQuorumLost => run.converge(step, || check_quorum_lost(run, f)).await,
        ForceNewStep::SaveEtcdManifest => run.converge(step, || async { save_manifest(f) }).await,
        ForceNewStep::StartForceNewCluster => run.converge(step, || start_force_new(run, f)).await,
        ForceNewStep::RestartEtcdMember => run.converge(step, || restart_member(run, f)).await,
        ForceNewStep::RecordEtcdMember => run.converge(step, || record_member(f)).await,
        ForceNewStep::WaitApi => {
            run.wait(step, "the API server to answer", || wait_api(f.paths))
                .await
        }
    }
}

/// The members as seen through this host's endpoint and every other
/// host's; `None` when none answers.
async fn members(paths: &HostPaths, local_only: bool) -> Option<(Vec<MemberStatus>, bool)> {
    let cfg = if local_only {
        let mut cfg = crate::etcd::config(paths);
        cfg.timeout = ASK;
        cfg
    } else {
        crate::etcd::cluster_config(paths, ASK)
    };
    match etcd_mgr::members(&cfg).await {
        Ok(m) => Some((m, true)),
        Err(EtcdError::NoLeader { members, .. }) => Some((members, false)),
        Err(_) => None,
    }
}

/// Whether `members` is this member alone, serving.
fn alone(members: &[MemberStatus], own: &EtcdMemberIdentity) -> bool {
    members.len() == 1 && is_own(&members[0], own) && members[0].healthy
}

fn is_own(m: &MemberStatus, own: &EtcdMemberIdentity) -> bool {
    m.id.eq_ignore_ascii_case(&own.id) || (!m.name.is_empty() && m.name == own.name)
}

/// `check_quorum_lost`.
async fn check_quorum_lost(run: &Runner, f: &ForceNew<'_>) -> anyhow::Result<bool> {
    let step = ForceNewStep::CheckQuorumLost;
    match members(f.paths, false).await {
        Some((m, _)) if alone(&m, &f.member) => {
            run.say(step, "etcd is already this member alone: finishing");
            Ok(false)
        }
        Some((m, _)) if etcd_mgr::members::has_quorum(&m) => {
            let voters: Vec<&MemberStatus> = m.iter().filter(|m| !m.is_learner).collect();
            let answering: Vec<&&MemberStatus> = voters.iter().filter(|m| m.healthy).collect();
            Err(ForceNewRefused::QuorumServes {
                answering: answering.len(),
                voters: voters.len(),
                names: answering
                    .iter()
                    .map(|m| m.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into())
        }
        Some((m, _)) => {
            let answering: Vec<String> = m
                .iter()
                .filter(|m| m.healthy)
                .map(|m| m.name.clone())
                .collect();
            run.say(
                step,
                &format!(
                    "no quorum: {} of {} members answer ({})",
                    answering.len(),
                    m.len(),
                    answering.join(", ")
                ),
            );
            Ok(false)
        }
        None => {
            run.say(step, "no etcd member answers");
            Ok(false)
        }
    }
}

/// `save_etcd_manifest`: the manifest as it was, once.
fn save_manifest(f: &ForceNew<'_>) -> anyhow::Result<bool> {
    if f.saved.exists() {
        return Ok(false);
    }
    let manifest = f.paths.etcd_manifest();
    let text = std::fs::read(&manifest).with_context(|| {
        format!(
            "reading etcd's static pod manifest {} (run 'selfnode recover' first if it is gone)",
            manifest.display()
        )
    })?;
    crate::fsutil::write_atomic(&f.saved, &text, 0o600)
        .with_context(|| format!("keeping {}", f.saved.display()))?;
    Ok(true)
}

/// The saved manifest with etcd's command given `--force-new-cluster`.
fn with_flag(saved: &str) -> anyhow::Result<String> {
    let mut pod: Pod =
        serde_saphyr::from_str(saved).context("parsing etcd's static pod manifest")?;
    let container = pod
        .spec
        .as_mut()
        .and_then(|s| s.containers.first_mut())
        .context("etcd's static pod manifest has no container")?;
    let command = container.command.get_or_insert_with(Vec::new);
    if !command.iter().any(|a| a == FLAG) {
        command.push(FLAG.to_string());
    }
    serde_saphyr::to_string(&pod).context("rendering etcd's static pod manifest")
}

/// `start_force_new_cluster`.
async fn start_force_new(run: &Runner, f: &ForceNew<'_>) -> anyhow::Result<bool> {
    let step = ForceNewStep::StartForceNewCluster;
    if members(f.paths, true)
        .await
        .is_some_and(|(m, _)| alone(&m, &f.member))
    {
        return Ok(false);
    }
    let saved = std::fs::read_to_string(&f.saved)
        .with_context(|| format!("reading {}", f.saved.display()))?;
    crate::fsutil::write_atomic(
        &f.paths.etcd_manifest(),
        with_flag(&saved)?.as_bytes(),
        0o600,
    )?;
    run.say(
        step,
        &format!(
            "etcd member {} restarts with {FLAG}: waiting for it to serve alone",
            f.member.name
        ),
    );
    serve_alone(f).await?;
    Ok(true)
}

/// `restart_etcd_member`: the saved manifest back, without the flag.
async fn restart_member(run: &Runner, f: &ForceNew<'_>) -> anyhow::Result<bool> {
    let manifest = f.paths.etcd_manifest();
    let saved =
        std::fs::read(&f.saved).with_context(|| format!("reading {}", f.saved.display()))?;
    if std::fs::read(&manifest).ok().as_deref() == Some(saved.as_slice()) {
        serve_alone(f).await?;
        let _ = std::fs::remove_file(&f.saved);
        return Ok(false);
    }
    crate::fsutil::write_atomic(&manifest, &saved, 0o600)?;
    run.say(
        ForceNewStep::RestartEtcdMember,
        &format!("etcd member {} restarts without {FLAG}", f.member.name),
    );
    // The kubelet restarts the pod for the changed manifest; the member
    // that served before may answer until then.
    tokio::time::sleep(Duration::from_secs(5)).await;
    serve_alone(f).await?;
    let _ = std::fs::remove_file(&f.saved);
    Ok(true)
}

async fn serve_alone(f: &ForceNew<'_>) -> anyhow::Result<()> {
    until(
        &format!("etcd member {} to serve alone", f.member.name),
        SERVE,
        Duration::from_secs(2),
        || async {
            Ok(members(f.paths, true)
                .await
                .is_some_and(|(m, leader)| leader && alone(&m, &f.member)))
        },
    )
    .await
}

/// `record_etcd_member`: the member's id and cluster as etcd says now.
async fn record_member(f: &ForceNew<'_>) -> anyhow::Result<bool> {
    let (m, _) = members(f.paths, true)
        .await
        .context("etcd stopped answering")?;
    let Some(own) = m.iter().find(|m| is_own(m, &f.member)) else {
        anyhow::bail!("etcd's member list does not name this host's member any more");
    };
    let mut rec = f.member.clone();
    if rec.id.eq_ignore_ascii_case(&own.id) && rec.cluster_id.eq_ignore_ascii_case(&own.cluster_id)
    {
        return Ok(false);
    }
    rec.id = own.id.clone();
    rec.cluster_id = own.cluster_id.clone();
    rec.recorded_at = crate::status::now_unix();
    with_checkpoint(&f.paths.checkpoint_dir(), move |c| {
        c.record_etcd_member(&rec)
    })
    .await?;
    Ok(true)
}

/// `wait_api`: `/readyz` through this node's balancer.
async fn wait_api(paths: &HostPaths) -> anyhow::Result<()> {
    let lb = crate::control::balancer_addr(
        std::net::Ipv4Addr::LOCALHOST.into(),
        crate::control::api_lb_port(paths),
    );
    let ca = paths.pki_dir().join("ca.crt");
    until(
        "the API server to answer /readyz",
        SERVE,
        Duration::from_secs(2),
        || async {
            Ok(
                crate::agent::probe::https_ok(lb, "/readyz", Some(&ca), None)
                    .await
                    .is_ok(),
            )
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequences::plan::Step as _;

    #[test]
    fn the_flag_is_added_once_to_etcds_command() {
        let saved = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd\nspec:\n  containers:\n  - name: etcd\n    image: e\n    command:\n    - etcd\n    - --name=n1\n";
        let once = with_flag(saved).unwrap();
        let pod: Pod = serde_saphyr::from_str(&once).unwrap();
        let cmd = pod.spec.unwrap().containers[0].command.clone().unwrap();
        assert_eq!(cmd, ["etcd", "--name=n1", FLAG]);
        let twice = with_flag(&once).unwrap();
        assert_eq!(twice.matches(FLAG).count(), 1);
    }

    #[test]
    fn the_plan_checks_before_it_changes_the_member() {
        let names: Vec<&str> = plan().steps().map(|s| s.step.name()).collect();
        assert_eq!(
            names,
            [
                "check_quorum_lost",
                "save_etcd_manifest",
                "start_force_new_cluster",
                "restart_etcd_member",
                "record_etcd_member",
                "wait_api",
            ]
        );
    }
}
