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

pub mod steps;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bootstrap::config::{HostIdentity, InitSettings};
use bootstrap::host::Host;
use bootstrap::plane::{PlaneImages, PlaneSpec, ProcessSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

use crate::agent::services::NodeIdentity;
use crate::checkpoint::{Checkpoint, ClusterIdentity};
use crate::host::NodeHost;
use crate::paths::HostPaths;
use crate::status::{AgentStatus, ComponentState};
use steps::{until, Runner, StepReport};

const SEQUENCE: &str = "init";
const STEPS: usize = 16;
const TEMP_SERVICES: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
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
}

fn plane_spec(ctx: &InitContext) -> PlaneSpec {
    let v = ctx.bundle.versions();
    let images = PlaneImages {
        kube_apiserver: dist::images::kube_image("kube-apiserver", v),
        kube_controller_manager: dist::images::kube_image("kube-controller-manager", v),
        kube_scheduler: dist::images::kube_image("kube-scheduler", v),
        kube_proxy: dist::images::kube_image("kube-proxy", v),
        coredns: dist::images::coredns_image(v),
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
    let agent_pid = crate::agent::lock::running_agent(&paths.agent_lock()).with_context(|| {
        "the selfnode agent is not running on this host; start it first ('selfnode agent', or 'bash scripts/up.sh')".to_string()
    })?;
    let checkpoint = Checkpoint::open(&paths.checkpoint_dir())?;
    if let Some(id) = checkpoint.cluster_identity()? {
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
    let mut run = Runner::new(SEQUENCE, STEPS, ctx.quiet);
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
                    role: "init".into(),
                    created: crate::status::now_unix(),
                };
                Ok(checkpoint.record_cluster_identity(&id)?)
            },
        )
        .await?,
    );

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
    let temp_api = SocketAddr::new(spec.advertise_address, spec.ports.temp_apiserver);
    let self_api = SocketAddr::new(spec.advertise_address, spec.ports.apiserver);
    for (step, proc_name) in [
        ("start_temp_etcd", "etcd"),
        ("start_temp_apiserver", "kube-apiserver"),
    ] {
        let p = find(&temp, proc_name)?;
        if proc_name == "etcd" || !pivoted {
            reports.push(start_service(&mut run, step, paths, &agent_pid, p).await?);
        }
    }
    let backends = if pivoted {
        vec![self_api]
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
                    "kube-apiserver, kube-controller-manager and kube-scheduler pods Ready",
                    Duration::from_secs(600),
                    Duration::from_secs(2),
                    || async { pods_ready(&client, "tier=control-plane", 3).await },
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
                    .all(|n| !paths.services_dir().join(format!("{n}.json")).exists()))
            },
            || async {
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
                .await
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
    let not_ready: Vec<String> = list
        .items
        .iter()
        .filter(|p| !pod_ready(p))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    if list.items.len() < min {
        anyhow::bail!("{} of {min} pods ({selector}) exist", list.items.len());
    }
    if !not_ready.is_empty() {
        anyhow::bail!("not Ready yet: {}", not_ready.join(", "));
    }
    Ok(true)
}
