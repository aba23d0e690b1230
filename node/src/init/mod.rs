//! `selfnode init`: the first node of a cluster, from a plain host to a
//! pivoted, self-hosted control plane.
//!
//! Steps (names are stable; they live in checkpoints and failpoints):
//! record_cluster_identity, ensure_pki, ensure_encryption_config,
//! write_node_identity, start_temp_etcd, start_temp_apiserver,
//! write_lb_backends, start_temp_controller_manager, start_temp_scheduler,
//! register_control_plane_node, apply_self_hosted_objects,
//! wait_self_hosted_ready, commit_pivot, stop_temp_plane,
//! point_lb_at_self_hosted, wait_cluster_ready.
//!
//! Before `commit_pivot` the temporary plane is authoritative on resume;
//! after it the self-hosted one is, and the temporary steps are skipped.

mod restore;
pub mod steps;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bootstrap::config::{HostIdentity, InitSettings};
use bootstrap::host::Host;
use bootstrap::plane::{EtcdInitial, Placement, PlaneImages, PlaneSpec, ProcessSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

use crate::agent::services::NodeIdentity;
use crate::checkpoint::{Checkpoint, ClusterIdentity};
use crate::host::NodeHost;
use crate::paths::HostPaths;
use crate::status::{AgentStatus, ComponentState};
pub use restore::{RestoreConflict, RestoreInputError, RestoreSource};
use steps::{until, Runner, StepReport};

const SEQUENCE: &str = "init";
const STEPS: usize = 19;
/// The temporary plane's agent services; etcd last (the agent stops it last
/// too), after its member left the cluster.
const TEMP_SERVICES: [&str; 4] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "etcd",
];

#[derive(Debug, Clone, serde::Serialize)]
pub struct InitSummary {
    pub cluster_name: String,
    pub node_name: String,
    pub advertise_address: IpAddr,
    pub admin_kubeconfig: PathBuf,
    pub api_endpoint: String,
    pub ca_cert_hash: String,
    pub seconds: f64,
    pub steps: Vec<StepReport>,
}

/// Host facts for the defaults: hostname and interface addresses.
pub fn host_identity() -> anyhow::Result<HostIdentity> {
    let hostname = nix::unistd::gethostname()
        .context("cannot read the hostname")?
        .to_string_lossy()
        .into_owned();
    let mut addresses = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("cannot list network interfaces")? {
        if let Some(addr) = ifa.address {
            if let Some(v4) = addr.as_sockaddr_in() {
                addresses.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                addresses.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    Ok(HostIdentity {
        hostname,
        addresses,
    })
}

pub struct InitContext {
    pub paths: HostPaths,
    pub settings: InitSettings,
    pub bundle: dist::bundle::Bundle,
    pub quiet: bool,
    /// `selfnode etcd snapshot restore`: the cluster starts from a snapshot.
    pub restore: Option<RestoreSource>,
}

fn plane_spec(ctx: &InitContext) -> PlaneSpec {
    let v = ctx.bundle.versions();
    let images = PlaneImages {
        kube_apiserver: dist::images::kube_image("kube-apiserver", v),
        kube_controller_manager: dist::images::kube_image("kube-controller-manager", v),
        kube_scheduler: dist::images::kube_image("kube-scheduler", v),
        kube_proxy: dist::images::kube_image("kube-proxy", v),
        coredns: dist::images::coredns_image(v),
        etcd: dist::images::etcd_image(v),
        selfnode: dist::images::selfnode_image(),
    };
    let s = &ctx.settings;
    let mut spec = PlaneSpec::new(
        s.node_name.clone(),
        s.advertise_address,
        v.kubernetes.clone(),
        images,
    );
    spec.cluster_name = s.cluster_name.clone();
    spec.pod_cidr = s.pod_cidr;
    spec.service_cidr = s.service_cidr;
    spec.cluster_domain = s.cluster_domain.clone();
    spec.pki_dir = ctx.paths.pki_dir();
    spec.kubeconfig_dir = ctx.paths.kubeconfig_dir();
    spec.etcd_data_dir = ctx.paths.state_dir().join("etcd");
    spec.cni_conf_dir = ctx.paths.cni_conf_dir();
    spec.replicas.coredns = 1;
    spec
}

/// Refuses a host that already belongs to another cluster, before anything
/// is written. Exit code 3 (conflict) through `InitConflict`.
#[derive(Debug, thiserror::Error)]
#[error("this host already belongs to cluster {existing:?} (node {node:?}, uid {uid}); run 'selfnode reset' first to leave it, or init with --cluster-name {existing}")]
pub struct InitConflict {
    pub existing: String,
    pub node: String,
    pub uid: String,
}

pub async fn run(ctx: InitContext) -> anyhow::Result<InitSummary> {
    let paths = &ctx.paths;
    if let Some(src) = &ctx.restore {
        restore::check_restore_inputs(src, &ctx.bundle, &paths.pki_dir())?;
    }
    let agent_pid = crate::agent::lock::running_agent(&paths.agent_lock()).with_context(|| {
        "the selfnode agent is not running on this host; start it first ('selfnode agent', or 'bash scripts/up.sh')".to_string()
    })?;
    let checkpoint = Checkpoint::open(&paths.checkpoint_dir())?;
    let role = if ctx.restore.is_some() {
        "restore"
    } else {
        "init"
    };
    if let Some(id) = checkpoint.cluster_identity()? {
        // A restore resumes an unfinished restore; over a running cluster
        // (pivoted, or an init) it needs --force.
        let restoring = id.role == "restore" && !checkpoint.pivot_committed()?;
        if let (Some(src), false) = (&ctx.restore, restoring) {
            if !src.force {
                return Err(RestoreConflict {
                    existing: id.cluster_name,
                    node: id.node_name,
                    pki_dir: paths.pki_dir(),
                }
                .into());
            }
            if id.cluster_name == ctx.settings.cluster_name
                && id.node_name == ctx.settings.node_name
            {
                restore::clear_for_restore(paths, &plane_spec(&ctx), &checkpoint, &id, ctx.quiet)
                    .await?;
            }
        }
        if id.cluster_name != ctx.settings.cluster_name || id.node_name != ctx.settings.node_name {
            return Err(InitConflict {
                existing: id.cluster_name,
                node: id.node_name,
                uid: id.cluster_uid,
            }
            .into());
        }
    }
    let spec = plane_spec(&ctx);
    spec.validate()?;
    let host = NodeHost;
    // A restore adds restore_etcd_data, and restore_pki when given --pki.
    let (sequence, total) = match &ctx.restore {
        Some(src) => ("restore", STEPS + 1 + usize::from(src.pki.is_some())),
        None => (SEQUENCE, STEPS),
    };
    let mut run = Runner::new(sequence, total, ctx.quiet);
    let mut reports = Vec::new();
    let pivoted = checkpoint.pivot_committed()?;

    // 1. The host belongs to this cluster from now on (before etcd starts).
    reports.push(
        run.step(
            "record_cluster_identity",
            Duration::from_secs(10),
            || async { Ok(checkpoint.cluster_identity()?.is_some()) },
            || async {
                let id = ClusterIdentity {
                    cluster_name: ctx.settings.cluster_name.clone(),
                    cluster_uid: random_uid(),
                    node_name: ctx.settings.node_name.clone(),
                    role: role.into(),
                    created: crate::status::now_unix(),
                };
                Ok(checkpoint.record_cluster_identity(&id)?)
            },
        )
        .await?,
    );

    // Restore: the old cluster's keys first, so ensure_pki keeps them.
    if let Some(RestoreSource {
        pki: Some(from), ..
    }) = &ctx.restore
    {
        reports.push(
            run.converge("restore_pki", || async {
                restore::copy_pki(&host, from, &paths.pki_dir())
            })
            .await?,
        );
    }

    // 2-3. PKI and encryption at rest: idempotent by construction; "check"
    // is the same call (it reports whether anything changed).
    let mut ca_hash = String::new();
    reports.push(
        run.converge("ensure_pki", || async {
            let report =
                bootstrap::pki::ensure_pki(&host, &spec.pki_spec(), std::time::SystemTime::now())?;
            ca_hash = report.ca_cert_hash.clone();
            let changed = report.changed().next().is_some();
            Ok(changed)
        })
        .await?,
    );
    reports.push(
        run.converge("ensure_encryption_config", || async {
            let report =
                bootstrap::plane::ensure_encryption_config(&host, &spec.pki_dir, &mut rand::rng())?;
            Ok(report.created)
        })
        .await?,
    );

    // 4. The kubelet's node name and IP; the agent restarts the kubelet with
    // them and with its kubeconfig (written by ensure_pki).
    let node_id = NodeIdentity {
        node_name: ctx.settings.node_name.clone(),
        node_ip: ctx.settings.advertise_address,
        cluster_dns: Some(spec.dns_service_ip()?),
    };
    reports.push(
        run.step(
            "write_node_identity",
            Duration::from_secs(10),
            || async {
                Ok(NodeIdentity::read(&paths.node_identity_file())?.as_ref() == Some(&node_id))
            },
            || async {
                host.write_file(
                    &paths.node_identity_file(),
                    &serde_json::to_vec_pretty(&node_id)?,
                    0o644,
                )?;
                reload_agent(&agent_pid)
            },
        )
        .await?,
    );
    reload_agent(&agent_pid)?;

    // 5-9. The temporary control plane, unless the pivot already happened.
    let temp = bootstrap::plane::temp_plane(&spec)?;
    bootstrap::plane::prepare_temp_plane(&host, &spec)?;
    let lb_file = paths.apiservers_file();
    // Restore: the temporary member starts from the snapshot; the rest is
    // init's pivot, which carries its data to the self-hosted member.
    if let (Some(src), false) = (&ctx.restore, pivoted) {
        let target = etcd_mgr::restore::RestoreTarget {
            name: spec.etcd_member_name(Placement::Temporary),
            peer_url: spec.etcd_peer_url(Placement::Temporary),
            data_dir: spec.temp_etcd_data_dir(),
            cluster_token: format!("{}-restored", ctx.settings.cluster_name),
        };
        let etcdutl = ctx.bundle.bin("etcdutl");
        reports.push(
            run.step(
                "restore_etcd_data",
                Duration::from_secs(120),
                || async { Ok(target.data_dir.join("member").is_dir()) },
                || async {
                    let (etcdutl, snapshot, target) =
                        (etcdutl.clone(), src.snapshot.clone(), target.clone());
                    tokio::task::spawn_blocking(move || {
                        etcd_mgr::restore::restore_data_dir(&etcdutl, &snapshot, &target)
                    })
                    .await??;
                    Ok(())
                },
            )
            .await?,
        );
    }
    let temp_api = SocketAddr::new(spec.advertise_address, spec.ports.temp_apiserver);
    let self_api = SocketAddr::new(spec.advertise_address, spec.ports.apiserver);
    for (step, proc_name) in [
        ("start_temp_etcd", "etcd"),
        ("start_temp_apiserver", "kube-apiserver"),
    ] {
        let p = find(&temp, proc_name)?;
        if !pivoted {
            reports.push(start_service(&mut run, step, paths, &agent_pid, p).await?);
        }
    }
    // During a restore the self-hosted apiservers (running, or started by
    // the kubelet from the restored pods) have no etcd until the new member
    // is promoted; their connections would hang, so the LB gets them after.
    let backends = if pivoted {
        vec![self_api]
    } else if ctx.restore.is_some() {
        vec![temp_api]
    } else {
        vec![temp_api, self_api]
    };
    reports.push(
        run.step(
            "write_lb_backends",
            Duration::from_secs(10),
            || async {
                Ok(std::fs::read_to_string(&lb_file).ok() == Some(backends_text(&backends)))
            },
            || async {
                Ok(host
                    .write_file(&lb_file, backends_text(&backends).as_bytes(), 0o644)
                    .map(|_| ())?)
            },
        )
        .await?,
    );
    if !pivoted {
        for (step, proc_name) in [
            ("start_temp_controller_manager", "kube-controller-manager"),
            ("start_temp_scheduler", "kube-scheduler"),
        ] {
            reports.push(
                start_service(&mut run, step, paths, &agent_pid, find(&temp, proc_name)?).await?,
            );
        }
    }

    // 10-12. Through the API: the node, the self-hosted objects, their pods.
    let client = kube_client(&spec.kubeconfig_dir.join("super-admin.conf")).await?;
    let node_name = ctx.settings.node_name.clone();
    reports.push(
        run.wait(
            "register_control_plane_node",
            &format!("node {node_name} to register"),
            || async {
                let nodes: Api<Node> = Api::all(client.clone());
                until(
                    "the kubelet to register the node",
                    Duration::from_secs(180),
                    Duration::from_secs(1),
                    || async { Ok(nodes.get_opt(&node_name).await?.is_some()) },
                )
                .await?;
                // A node that also runs ordinary pods keeps only the label.
                let taint = !ctx.settings.allow_workloads;
                bootstrap::objects::mark_control_plane(
                    client.clone(),
                    &node_name,
                    bootstrap::objects::FIELD_MANAGER,
                    taint,
                )
                .await?;
                Ok(())
            },
        )
        .await?,
    );
    // 11-13. The self-hosted etcd member (a static pod) joins the temporary
    // one as a learner, catches up and is promoted. Every write the
    // temporary apiserver acknowledged is in the raft log both replay.
    let temp_etcd = crate::commands::etcd::config_at(paths, spec.ports.temp_etcd_client);
    let self_etcd = crate::commands::etcd::config_at(paths, spec.ports.etcd_client);
    let self_peer = spec.etcd_peer_url(Placement::SelfHosted);
    let temp_peer = spec.etcd_peer_url(Placement::Temporary);
    let etcd_manifest = paths.etcd_manifest();
    let find_member = |members: Vec<etcd_mgr::MemberStatus>| {
        members
            .into_iter()
            .find(|m| m.peer_urls.contains(&self_peer))
    };
    if !pivoted {
        reports.push(
            run.step(
                "add_etcd_learner",
                Duration::from_secs(60),
                || async {
                    Ok(
                        find_member(etcd_retrying(|| etcd_mgr::members(&temp_etcd)).await?)
                            .is_some(),
                    )
                },
                || async {
                    etcd_retrying(|| etcd_mgr::members::add_learner(&temp_etcd, &self_peer))
                        .await?;
                    Ok(())
                },
            )
            .await?,
        );
        let pod =
            bootstrap::objects::etcd_static_pod_yaml(&spec, &EtcdInitial::join_temporary(&spec))?;
        let serving = || async {
            let same = std::fs::read(&etcd_manifest).ok().as_deref() == Some(pod.as_bytes());
            Ok::<_, anyhow::Error>(
                same && find_member(etcd_retrying(|| etcd_mgr::members(&temp_etcd)).await?)
                    .is_some_and(|m| m.healthy),
            )
        };
        reports.push(
            run.step(
                "start_self_hosted_etcd",
                Duration::from_secs(180),
                serving,
                || async {
                    // etcd wants its data private; the kubelet would make
                    // the hostPath 0755.
                    host.ensure_dir(&spec.etcd_data_dir, bootstrap::plane::ETCD_DATA_DIR_MODE)?;
                    host.ensure_dir(&paths.static_pod_dir(), 0o755)?;
                    host.write_file(&etcd_manifest, pod.as_bytes(), 0o600)?;
                    until(
                        "the kubelet to start the etcd static pod",
                        Duration::from_secs(170),
                        Duration::from_millis(500),
                        || async {
                            match find_member(
                                etcd_retrying(|| etcd_mgr::members(&temp_etcd)).await?,
                            ) {
                                Some(m) if m.healthy => Ok(true),
                                Some(m) => anyhow::bail!(
                                    "member {self_peer} does not answer yet{}",
                                    m.error.map(|e| format!(": {e}")).unwrap_or_default()
                                ),
                                None => {
                                    anyhow::bail!("member {self_peer} is gone from the member list")
                                }
                            }
                        },
                    )
                    .await
                },
            )
            .await?,
        );
        reports.push(
            run.step(
                "promote_etcd_member",
                Duration::from_secs(150),
                || async {
                    Ok(
                        find_member(etcd_retrying(|| etcd_mgr::members(&temp_etcd)).await?)
                            .is_some_and(|m| !m.is_learner),
                    )
                },
                || async {
                    etcd_mgr::members::promote(&temp_etcd, &self_peer, Duration::from_secs(140))
                        .await?;
                    Ok(())
                },
            )
            .await?,
        );
    }
    if ctx.restore.is_some() && !pivoted {
        host.write_file(
            &lb_file,
            backends_text(&[temp_api, self_api]).as_bytes(),
            0o644,
        )?;
    }
    // After the pivot the objects belong to the cluster: an upgrade done the
    // Kubernetes way (kubectl set image) must not be undone by a re-run.
    let applied = std::sync::atomic::AtomicBool::new(false);
    reports.push(
        run.step(
            "apply_self_hosted_objects",
            Duration::from_secs(120),
            || async { Ok(pivoted || applied.load(std::sync::atomic::Ordering::Relaxed)) },
            || async {
                let files = bootstrap::objects::PlaneFiles::read(&host, &spec)?;
                let objects = bootstrap::objects::self_hosted_objects(&spec, &files)?;
                bootstrap::objects::apply_all(
                    client.clone(),
                    &objects,
                    bootstrap::objects::FIELD_MANAGER,
                )
                .await?;
                applied.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            },
        )
        .await?,
    );
    let api_ca = spec.pki_dir.join("ca.crt");
    reports.push(
        run.wait(
            "wait_self_hosted_ready",
            "the self-hosted control-plane pods to be Ready",
            || async {
                until(
                    "etcd, kube-apiserver, kube-controller-manager and kube-scheduler pods Ready",
                    Duration::from_secs(600),
                    Duration::from_secs(2),
                    || async { pods_ready(&client, "tier=control-plane", 4).await },
                )
                .await?;
                until(
                    "the self-hosted kube-apiserver /readyz",
                    Duration::from_secs(120),
                    Duration::from_secs(1),
                    || async {
                        crate::agent::probe::https_ok(self_api, "/readyz", Some(&api_ca), None)
                            .await
                            .map(|()| true)
                            .map_err(anyhow::Error::msg)
                    },
                )
                .await
            },
        )
        .await?,
    );

    // 13-15. The pivot: commit, then stop the temporary plane.
    reports.push(
        run.step(
            "commit_pivot",
            Duration::from_secs(10),
            || async { Ok(checkpoint.pivot_committed()?) },
            || async { Ok(checkpoint.commit_pivot()?) },
        )
        .await?,
    );
    reports.push(
        run.step(
            "stop_temp_plane",
            Duration::from_secs(120),
            || async {
                Ok(TEMP_SERVICES
                    .iter()
                    .all(|n| !paths.services_dir().join(format!("{n}.json")).exists())
                    && !spec.temp_etcd_data_dir().exists())
            },
            || async {
                // The temporary member leaves the cluster while it still
                // runs: stopping one of two voters first would lose quorum.
                if paths.services_dir().join("etcd.json").exists() {
                    etcd_retrying(|| {
                        etcd_mgr::members::remove(&self_etcd, &temp_peer, Duration::from_secs(60))
                    })
                    .await?;
                }
                for n in TEMP_SERVICES {
                    match std::fs::remove_file(paths.services_dir().join(format!("{n}.json"))) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(e).context(format!("cannot remove the {n} service file"))
                        }
                    }
                }
                reload_agent(&agent_pid)?;
                until(
                    "the agent to stop the temporary plane",
                    Duration::from_secs(90),
                    Duration::from_millis(500),
                    || async {
                        Ok(agent_status(paths)?
                            .components
                            .iter()
                            .all(|c| !TEMP_SERVICES.contains(&c.name.as_str())))
                    },
                )
                .await?;
                let temp_data = spec.temp_etcd_data_dir();
                match std::fs::remove_dir_all(&temp_data) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e).context(format!("cannot remove {}", temp_data.display())),
                }
            },
        )
        .await?,
    );
    let only_self = vec![self_api];
    reports.push(
        run.step(
            "point_lb_at_self_hosted",
            Duration::from_secs(30),
            || async {
                Ok(std::fs::read_to_string(&lb_file).ok() == Some(backends_text(&only_self)))
            },
            || async {
                host.write_file(&lb_file, backends_text(&only_self).as_bytes(), 0o644)?;
                bootstrap::objects::ensure_kubernetes_service_target_port(
                    client.clone(),
                    spec.ports.apiserver,
                )
                .await?;
                Ok(())
            },
        )
        .await?,
    );
    reports.push(
        run.wait(
            "wait_cluster_ready",
            "the node, kube-proxy and CoreDNS to be Ready",
            || async {
                let nodes: Api<Node> = Api::all(client.clone());
                until(
                    "the node to be Ready",
                    Duration::from_secs(300),
                    Duration::from_secs(2),
                    || async {
                        Ok(nodes
                            .get_opt(&node_name)
                            .await?
                            .as_ref()
                            .is_some_and(node_ready))
                    },
                )
                .await?;
                until(
                    "kube-proxy Ready",
                    Duration::from_secs(300),
                    Duration::from_secs(2),
                    || async { pods_ready(&client, "k8s-app=kube-proxy", 1).await },
                )
                .await?;
                until(
                    "CoreDNS Ready",
                    Duration::from_secs(300),
                    Duration::from_secs(2),
                    || async { pods_ready(&client, "k8s-app=kube-dns", 1).await },
                )
                .await
            },
        )
        .await?,
    );

    if ca_hash.is_empty() {
        let ca = std::fs::read(&api_ca)?;
        ca_hash = bootstrap::pki::ca_cert_hash(&ca)?;
    }
    Ok(InitSummary {
        cluster_name: ctx.settings.cluster_name.clone(),
        node_name: ctx.settings.node_name.clone(),
        advertise_address: ctx.settings.advertise_address,
        admin_kubeconfig: spec.kubeconfig_dir.join("admin.conf"),
        api_endpoint: format!("https://{self_api}"),
        ca_cert_hash: ca_hash,
        seconds: run.elapsed().as_secs_f64(),
        steps: reports,
    })
}

/// An etcd call retried for up to 30 s while it fails to connect or gets a
/// transport error: a member that has just started, or a connection reset
/// under it, is no reason to stop the sequence. Refusals etcd means (a bad
/// request, a quorum guard) come back at once.
async fn etcd_retrying<T, F, Fut>(call: F) -> anyhow::Result<T>
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
                | etcd_mgr::EtcdError::Timeout { .. }),
            ) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "etcd call failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn find<'a>(temp: &'a [ProcessSpec], name: &str) -> anyhow::Result<&'a ProcessSpec> {
    temp.iter()
        .find(|p| p.name == name)
        .with_context(|| format!("the temporary plane has no {name}"))
}

fn backends_text(addrs: &[SocketAddr]) -> String {
    let mut s = String::from(
        "# kube-apiservers for the node-local load balancer; written by selfnode init\n",
    );
    for a in addrs {
        s.push_str(&format!("{a}\n"));
    }
    s
}

fn random_uid() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

/// Asks the agent to re-read its services and configuration.
fn reload_agent(pid: &str) -> anyhow::Result<()> {
    let pid: i32 = pid
        .parse()
        .with_context(|| format!("agent pid {pid:?} is not a number"))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .with_context(|| format!("cannot signal the agent (pid {pid})"))
}

fn agent_status(paths: &HostPaths) -> anyhow::Result<AgentStatus> {
    let bytes = std::fs::read(paths.agent_status())?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Writes the service file and waits until the agent reports it ready.
async fn start_service(
    run: &mut Runner,
    step: &'static str,
    paths: &HostPaths,
    agent_pid: &str,
    p: &ProcessSpec,
) -> anyhow::Result<StepReport> {
    let file = paths.services_dir().join(format!("{}.json", p.name));
    let ready = || async {
        let on_disk = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<ProcessSpec>(&b).ok());
        let running = agent_status(paths)?
            .components
            .iter()
            .any(|c| c.name == p.name && c.state == ComponentState::Ready);
        Ok(on_disk.as_ref() == Some(p) && running)
    };
    run.step(step, Duration::from_secs(180), ready, || async {
        NodeHost.ensure_dir(&paths.services_dir(), 0o700)?;
        NodeHost.write_file(&file, &serde_json::to_vec_pretty(p)?, 0o600)?;
        reload_agent(agent_pid)?;
        let name = p.name.clone();
        until(
            &format!("{name} to be healthy ({})", p.health.url()),
            Duration::from_secs(170),
            Duration::from_millis(300),
            || async {
                let st = agent_status(paths)?;
                let c = st.components.iter().find(|c| c.name == name);
                match c {
                    Some(c) if c.state == ComponentState::Ready => Ok(true),
                    Some(c) => anyhow::bail!(
                        "{name} is {}{}",
                        c.state.as_str(),
                        c.last_error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ),
                    None => Ok(false),
                }
            },
        )
        .await
    })
    .await
}

async fn kube_client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// At least `min` pods in kube-system match `selector`, and all are Ready.
async fn pods_ready(client: &kube::Client, selector: &str, min: usize) -> anyhow::Result<bool> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let list = pods.list(&ListParams::default().labels(selector)).await?;
    if list.items.len() < min {
        anyhow::bail!("{} of {min} pods ({selector}) exist", list.items.len());
    }
    let mut not_ready = Vec::new();
    for p in list.items.iter().filter(|p| !pod_ready(p)) {
        let name = p.metadata.name.clone().unwrap_or_default();
        let mut why = pod_not_ready_reason(p);
        if why.is_empty() {
            why = last_warning(client, &name).await.unwrap_or_default();
        }
        not_ready.push(if why.is_empty() {
            name
        } else {
            format!("{name} ({why})")
        });
    }
    if !not_ready.is_empty() {
        anyhow::bail!("not Ready yet: {}", not_ready.join("; "));
    }
    Ok(true)
}

/// Why a pod is not Ready, from its own status: a container's waiting or
/// last termination reason and message, its restart count, or the Ready
/// condition's message. Empty when the status says nothing useful (a pod
/// whose sandbox cannot be made only shows `ContainerCreating`; the reason
/// is then in its events, see [`last_warning`]).
fn pod_not_ready_reason(p: &Pod) -> String {
    let Some(status) = p.status.as_ref() else {
        return String::new();
    };
    let mut parts = Vec::new();
    for c in status.container_statuses.iter().flatten() {
        let state = c.state.as_ref();
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("waiting");
            if reason != "ContainerCreating" || w.message.is_some() {
                parts.push(format!(
                    "{}: {reason}{}",
                    c.name,
                    w.message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ));
            }
        }
        if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            parts.push(format!(
                "{}: restarted {} times, last exit {}{}",
                c.name,
                c.restart_count,
                t.exit_code,
                t.message
                    .as_deref()
                    .map(|m| format!(": {}", m.trim()))
                    .unwrap_or_default()
            ));
        }
        if state.and_then(|s| s.running.as_ref()).is_some() && !c.ready {
            parts.push(format!("{}: running, readiness probe not passing", c.name));
        }
    }
    if parts.is_empty() && status.phase.as_deref() == Some("Pending") {
        if let Some(c) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status != "True")
        {
            parts.push(format!(
                "not scheduled: {}",
                c.message.as_deref().unwrap_or("no reason given")
            ));
        }
    }
    parts.join(", ")
}

/// The newest Warning event about pod `name` in kube-system, as
/// `Reason: message`.
async fn last_warning(client: &kube::Client, name: &str) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::Event;
    let events: Api<Event> = Api::namespaced(client.clone(), "kube-system");
    let list = events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Pod,involvedObject.name={name},type=Warning"
        )))
        .await?;
    Ok(list
        .items
        .iter()
        .max_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0))
        })
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.as_deref().unwrap_or("Warning"),
                e.message.as_deref().unwrap_or("").trim()
            )
        })
        .unwrap_or_default())
}
