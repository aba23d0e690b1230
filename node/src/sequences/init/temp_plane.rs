//! The temporary control plane: etcd, kube-apiserver, controller-manager
//! and scheduler as agent services (service files the agent runs), the
//! node-local balancer's list of apiservers, and the teardown after the
//! pivot.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bootstrap::host::Host;
use bootstrap::plane::{Placement, ProcessSpec};

use super::etcd_pivot::etcd_retrying;
use super::Runner;
use super::{InitStep, Seq};
use crate::control::{component_ready, read_status, ApiBackends, RunningAgent};
use crate::host::NodeHost;
use crate::paths::HostPaths;
use crate::sequences::runner::StepReport;
use crate::status::ComponentState;
use crate::wait::until;

/// The temporary plane's agent services; etcd last (the agent stops it last
/// too), after its member left the cluster.
const TEMP_SERVICES: [&str; 4] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "etcd",
];

/// The agent service each `start_temp_*` step starts.
fn service_of(step: InitStep) -> anyhow::Result<&'static str> {
    Ok(match step {
        InitStep::StartTempEtcd => "etcd",
        InitStep::StartTempApiserver => "kube-apiserver",
        InitStep::StartTempControllerManager => "kube-controller-manager",
        InitStep::StartTempScheduler => "kube-scheduler",
        other => anyhow::bail!("{other} does not start a temporary service"),
    })
}

/// `start_temp_*`: writes the service file and waits until the agent
/// reports the service ready (its health check passes).
pub(super) async fn start(
    step: InitStep,
    run: &Runner,
    seq: &Seq<'_>,
) -> anyhow::Result<StepReport> {
    let name = service_of(step)?;
    if step == InitStep::StartTempEtcd {
        bootstrap::plane::prepare_temp_plane(&NodeHost, &seq.spec)?;
    }
    let temp = bootstrap::plane::temp_plane(&seq.spec)?;
    let p = temp
        .iter()
        .find(|p| p.name == name)
        .with_context(|| format!("the temporary plane has no {name}"))?;
    start_service(run, step, seq.paths, &seq.agent, p).await
}

/// `write_lb_backends`: the apiservers the node-local balancer forwards to
/// while the temporary plane runs: both (the self-hosted one gets traffic
/// once it answers `/readyz`); during a restore only the temporary one,
/// since the self-hosted apiservers have no etcd until the new member is
/// promoted and connections given to them would hang.
pub(super) async fn write_lb_backends(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let (temp_api, self_api) = seq.apiservers();
    let backends = if seq.ctx.restore.is_some() {
        vec![temp_api]
    } else {
        vec![temp_api, self_api]
    };
    write_backends(run, seq, InitStep::WriteLbBackends, &backends, false).await
}

/// `add_self_hosted_to_lb` (restore): both apiservers, once the restored
/// data is in the self-hosted member.
pub(super) async fn add_self_hosted_to_lb(
    run: &Runner,
    seq: &Seq<'_>,
) -> anyhow::Result<StepReport> {
    let (temp_api, self_api) = seq.apiservers();
    write_backends(
        run,
        seq,
        InitStep::AddSelfHostedToLb,
        &[temp_api, self_api],
        false,
    )
    .await
}

/// `point_lb_at_self_hosted`: only the self-hosted apiserver from now on,
/// and the `kubernetes` Service's target port to match.
pub(super) async fn point_lb_at_self_hosted(
    run: &Runner,
    seq: &Seq<'_>,
) -> anyhow::Result<StepReport> {
    let (_, self_api) = seq.apiservers();
    write_backends(run, seq, InitStep::PointLbAtSelfHosted, &[self_api], true).await
}

async fn write_backends(
    run: &Runner,
    seq: &Seq<'_>,
    step: InitStep,
    backends: &[SocketAddr],
    service_port: bool,
) -> anyhow::Result<StepReport> {
    let list = ApiBackends::new(backends.iter().copied());
    run.step(
        step,
        Duration::from_secs(30),
        || async { Ok(ApiBackends::read(seq.paths).as_ref() == Some(&list)) },
        || async {
            list.write(seq.paths, "written by selfnode init")?;
            if service_port {
                bootstrap::objects::ensure_kubernetes_service_target_port(
                    seq.client().await?,
                    seq.spec.ports.apiserver,
                )
                .await?;
            }
            Ok(())
        },
    )
    .await
}

/// `stop_temp_plane`: the temporary etcd member leaves the cluster (while
/// it still runs: stopping one of two voters first would lose quorum),
/// then the agent stops the temporary services and its data goes.
pub(super) async fn stop_temp_plane(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    let paths = seq.paths;
    let service_file = |n: &str| paths.services_dir().join(format!("{n}.json"));
    let temp_data = seq.spec.temp_etcd_data_dir();
    run.step(
        InitStep::StopTempPlane,
        Duration::from_secs(120),
        || async {
            Ok(TEMP_SERVICES.iter().all(|n| !service_file(n).exists()) && !temp_data.exists())
        },
        || async {
            if service_file("etcd").exists() {
                let self_etcd = crate::etcd::config_at(paths, seq.spec.ports.etcd_client);
                let temp_peer = seq.spec.etcd_peer_url(Placement::Temporary);
                etcd_retrying(|| {
                    etcd_mgr::members::remove(&self_etcd, &temp_peer, Duration::from_secs(60))
                })
                .await?;
            }
            for n in TEMP_SERVICES {
                match std::fs::remove_file(service_file(n)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).context(format!("cannot remove the {n} service file")),
                }
            }
            seq.agent.reload()?;
            until(
                "the agent to stop the temporary plane",
                Duration::from_secs(90),
                Duration::from_millis(200),
                || async {
                    Ok(read_status(paths)?.is_some_and(|st| {
                        st.components
                            .iter()
                            .all(|c| !TEMP_SERVICES.contains(&c.name.as_str()))
                    }))
                },
            )
            .await?;
            match std::fs::remove_dir_all(&temp_data) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).context(format!("cannot remove {}", temp_data.display())),
            }
        },
    )
    .await
}

/// Writes the service file and waits until the agent reports it ready.
async fn start_service(
    run: &Runner,
    step: InitStep,
    paths: &HostPaths,
    agent: &RunningAgent,
    p: &ProcessSpec,
) -> anyhow::Result<StepReport> {
    let file = paths.services_dir().join(format!("{}.json", p.name));
    let ready = || async {
        let on_disk = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<ProcessSpec>(&b).ok());
        let running = read_status(paths)?.is_some_and(|st| {
            st.components
                .iter()
                .any(|c| c.name == p.name && c.state == ComponentState::Ready)
        });
        Ok(on_disk.as_ref() == Some(p) && running)
    };
    run.step(step, Duration::from_secs(180), ready, || async {
        NodeHost.ensure_dir(&paths.services_dir(), 0o700)?;
        NodeHost.write_file(&file, &serde_json::to_vec_pretty(p)?, 0o600)?;
        agent.reload()?;
        let name = p.name.clone();
        until(
            &format!("{name} to be healthy ({})", p.health.url()),
            Duration::from_secs(170),
            Duration::from_millis(200),
            || async { Ok(component_ready(paths, &name, &name)?) },
        )
        .await
    })
    .await
}
