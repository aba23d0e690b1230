//! `selfnode certs`: when this host's certificates expire, and their
//! renewal on a running self-hosted cluster, on every control-plane host.
//!
//! `selfnode init` makes the cluster's PKI (kubeadm's layout) on its host;
//! a control-plane host that joins receives the CAs and keys and makes its
//! own leaves and kubeconfigs. The temporary plane and the self-hosted
//! kube-apiserver, kube-controller-manager and kube-scheduler read their
//! certificates, keys and kubeconfigs from the host's files (the pods mount
//! each file by hostPath; no key passes through the API). A running
//! process reads its kubeconfig (with its client certificate) once, so
//! after a renewal changes a host's own files that host restarts its own
//! components' containers (`crate::cri`: the kubelet starts them again in
//! the same pods, no API needed). The files every host shares (the CAs,
//! the service-account pair, the encryption and admission configuration)
//! are hashed into the pod templates (`selfnode.dev/config-hash`, the same
//! on every host), and [`publish`] sets that one annotation where it
//! differs, so a change of one of them rolls the pods everywhere; it
//! touches nothing else of the workloads (an image a user set with kubectl
//! stays) and deletes the Secrets that held the keys before they moved onto
//! the hosts (`bootstrap::objects::LEGACY_KEY_SECRETS`).
//!
//! - `selfnode certs check-expiration`: [`expiration`], from the files.
//! - `selfnode certs renew`: [`renew`] re-issues every leaf and kubeconfig
//!   of this host (kubeadm's `certs renew all`; CAs and `sa.key` are kept),
//!   publishes, restarts this host's components and waits for them.
//! - The agent of every control-plane host with the keys, [`agent_pass`]:
//!   every hour an ordinary pass (re-issues what has less than 30 days
//!   left, the rule `selfnode init` applies), a publish, and the restart of
//!   what it renewed. A cluster so renews itself for as long as its CAs (10
//!   years) last, with no command run and no host that must stay.
//!
//! Every writer of the PKI after the pivot holds [`PkiLock`], so two
//! renewals never interleave a key of one with a certificate of the other.
//!
//! Not renewed here: the etcd member certificates of a *joined*
//! control-plane host (its member controller, `agent/tasks/member.rs`,
//! issues them from the etcd CA on its disk and re-issues them when less
//! than 30 days are left; etcd reads them again at each new connection),
//! and the kubelets' client certificates, which the kubelets rotate
//! themselves (the agent turns `rotateCertificates` on).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bootstrap::objects::{ComponentWorkload, CONFIG_HASH_ANNOTATION, NAMESPACE};
use bootstrap::pki::{CertExpiry, CertKind, PkiReport};
use bootstrap::plane::PlaneSpec;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use crate::cluster::{ControlPlaneHost, NotControlPlaneHost};
use crate::control::NodeIdentity;
use crate::host::NodeHost;
use crate::paths::HostPaths;

/// Field manager of the config-hash patches.
const PATCH_MANAGER: &str = "selfnode-certs";

/// Exclusive right to write the PKI: an `flock` on `run/selfnode/pki.lock`
/// (released by the kernel if the holder dies).
pub struct PkiLock {
    _lock: Flock<std::fs::File>,
}

impl PkiLock {
    /// Waits up to `wait` for the lock.
    pub async fn acquire(paths: &HostPaths, wait: Duration) -> anyhow::Result<PkiLock> {
        let path = paths.run_dir().join("pki.lock");
        let deadline = Instant::now() + wait;
        loop {
            // 0600 in a 0700 directory: no other user can hold it.
            let file = crate::fsutil::open_lock_file(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(PkiLock { _lock: lock }),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => anyhow::bail!(
                    "another selfnode process has been renewing this host's certificates for {}s (lock {}); try again once it is done",
                    wait.as_secs(),
                    path.display()
                ),
                Err((_, e)) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
            }
        }
    }
}

/// One row of `selfnode certs check-expiration -o json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpiryRow {
    /// kubeadm's name (`apiserver`, `etcd/server`, `admin.conf`).
    pub name: String,
    pub path: PathBuf,
    pub kind: CertKind,
    /// The CA that signs it (`ca`, `front-proxy-ca`, `etcd/ca`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<&'static str>,
    /// RFC 3339, UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// Whole days from now to `notAfter` (negative once expired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_days: Option<i64>,
    /// Why `notAfter` is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl ExpiryRow {
    fn new(e: CertExpiry, now: SystemTime) -> Self {
        ExpiryRow {
            residual_days: e.not_after.map(|t| days_between(now, t)),
            not_after: e
                .not_after
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            name: e.name,
            path: e.path,
            kind: e.kind,
            signed_by: e.signed_by,
            problem: e.problem,
        }
    }
}

/// Whole days from `a` to `b`, negative when `b` is earlier.
fn days_between(a: SystemTime, b: SystemTime) -> i64 {
    match b.duration_since(a) {
        Ok(d) => (d.as_secs() / 86_400) as i64,
        Err(e) => -((e.duration().as_secs() / 86_400) as i64) - 1,
    }
}

/// The PKI paths and names of this host: the recorded settings on the
/// host that ran init, else the node's identity (a joined host holds only
/// part of the files; the rest are rows "not on this host").
fn host_pki_spec(paths: &HostPaths) -> anyhow::Result<bootstrap::pki::PkiSpec> {
    if let Ok(host) = ControlPlaneHost::load(paths) {
        return Ok(host
            .plane_spec(paths, crate::control::api_lb_port(paths))
            .pki_spec());
    }
    let id =
        NodeIdentity::read(&paths.node_identity_file())?.ok_or(NotControlPlaneHost::NoCluster)?;
    // Only the names and paths matter for reading expiries.
    Ok(bootstrap::pki::PkiSpec {
        cluster_name: bootstrap::pki::DEFAULT_CLUSTER_NAME.to_string(),
        node_name: id.node_name,
        advertise_addresses: vec![id.node_ip],
        service_cidr: bootstrap::pki::DEFAULT_SERVICE_CIDR.parse()?,
        dns_domain: id.cluster_domain,
        extra_sans: Vec::new(),
        pki_dir: paths.pki_dir(),
        kubeconfig_dir: paths.kubeconfig_dir(),
        api_endpoint: bootstrap::pki::DEFAULT_API_ENDPOINT.to_string(),
    })
}

/// Every certificate of this host's PKI with its end of validity.
pub fn expiration(paths: &HostPaths) -> anyhow::Result<Vec<ExpiryRow>> {
    let spec = host_pki_spec(paths)?;
    let now = SystemTime::now();
    Ok(bootstrap::pki::expiration(&NodeHost, &spec)?
        .into_iter()
        .map(|e| ExpiryRow::new(e, now))
        .collect())
}

/// The cluster's keys ([`crate::cluster::CLUSTER_KEY_FILES`]: the CAs'
/// certificates and keys, the service-account pair, the encryption
/// config) must be there before a renewal: `ensure_pki` would make new ones
/// for missing files, and a new CA or service-account key after the pivot
/// cuts off every node and every service-account token. Renewal never
/// does that by itself.
fn require_cluster_keys(pki_dir: &std::path::Path) -> anyhow::Result<()> {
    let missing: Vec<String> = crate::cluster::CLUSTER_KEY_FILES
        .iter()
        .map(|rel| pki_dir.join(rel))
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "not renewing: {} missing; new keys would cut off every node and service-account token of the running cluster. Restore them (the agent keeps a copy beside its etcd snapshots, by default in /var/lib/selfnode/snapshots/pki)",
        missing.join(", ")
    )
}

/// What [`publish`] did for one component.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// `kube-apiserver`, `kube-controller-manager`, `kube-scheduler`.
    pub component: String,
    /// `DaemonSet` or `Deployment`.
    pub workload: String,
    /// The pod template's config hash was set: the pods roll.
    pub rolled: bool,
    /// The workload does not exist ('selfnode recover' makes it again).
    pub missing: bool,
}

/// Sets each control-plane workload's pod-template config hash to the
/// hash of the host's files now where it differs (see the module docs),
/// and deletes the legacy key Secrets once no workload mounts them.
/// Idempotent: with nothing changed it writes nothing.
pub async fn publish(client: &kube::Client, spec: &PlaneSpec) -> anyhow::Result<Vec<Published>> {
    let files = bootstrap::objects::PlaneFiles::read(&NodeHost, spec)?;
    let workloads = bootstrap::objects::component_workloads(spec, &files)?;
    let moved = move_legacy_workloads(client, spec, &files, &workloads).await?;
    delete_legacy_key_secrets(client).await?;
    let mut out = Vec::new();
    for c in workloads {
        let (rolled, missing) = set_config_hash(client, &c).await?;
        out.push(Published {
            component: c.component.to_string(),
            workload: c.workload_kind.to_string(),
            rolled: rolled || moved.contains(&c.component),
            missing,
        });
    }
    Ok(out)
}

/// Whether a pod template mounts one of the legacy key Secrets
/// (`bootstrap::objects::LEGACY_KEY_SECRETS`).
fn mounts_legacy_key_secret(t: &k8s_openapi::api::core::v1::PodTemplateSpec) -> bool {
    t.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|vs| {
            vs.iter().any(|v| {
                v.secret
                    .as_ref()
                    .and_then(|s| s.secret_name.as_deref())
                    .is_some_and(|n| bootstrap::objects::LEGACY_KEY_SECRETS.contains(&n))
            })
        })
}

/// A cluster made by a selfnode from before the keys left the API: its
/// control-plane workloads' pod templates mount the legacy key Secrets
/// (`bootstrap::objects::LEGACY_KEY_SECRETS`). Each such workload gets the
/// template `init` makes today (server-side apply as selfnode's field
/// manager, which drops the Secret volumes it applied then), mounting the
/// host's files; the pods roll. Returns the workloads moved; none found,
/// nothing is written.
async fn move_legacy_workloads(
    client: &kube::Client,
    spec: &PlaneSpec,
    files: &bootstrap::objects::PlaneFiles,
    workloads: &[ComponentWorkload],
) -> anyhow::Result<Vec<&'static str>> {
    use bootstrap::objects::Object;
    let mut moved = Vec::new();
    for c in workloads {
        let mounts_legacy = if c.workload_kind == "DaemonSet" {
            Api::<DaemonSet>::namespaced(client.clone(), NAMESPACE)
                .get_opt(c.component)
                .await?
                .is_some_and(|d| mounts_legacy_key_secret(&d.spec.template))
        } else {
            Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
                .get_opt(c.component)
                .await?
                .is_some_and(|d| mounts_legacy_key_secret(&d.spec.template))
        };
        if mounts_legacy {
            moved.push(c.component);
        }
    }
    if moved.is_empty() {
        return Ok(moved);
    }
    // Today's templates name files and objects that cluster never had: the
    // API server's own files on this host (the other control-plane hosts
    // write theirs in their agent's pass), and the objects today's agents
    // and components need (RBAC, the admission policy); existing objects
    // stay as they are.
    bootstrap::plane::ensure_apiserver_files(&NodeHost, spec)
        .context("writing the API server's audit policy and admission configuration")?;
    let all = bootstrap::objects::self_hosted_objects(spec, files)?;
    let created = bootstrap::objects::create_missing(
        client.clone(),
        &all,
        bootstrap::objects::FIELD_MANAGER,
    )
    .await
    .context(
        "creating the control-plane objects a cluster made before the keys left the API lacks",
    )?;
    for a in created
        .iter()
        .filter(|a| a.outcome == bootstrap::objects::ApplyOutcome::Created)
    {
        tracing::info!(kind = a.kind, name = %a.name, "created a control-plane object the older cluster lacked");
    }
    let named = |m: &ObjectMeta| m.name.as_deref().is_some_and(|n| moved.contains(&n));
    let workloads: Vec<Object> = all
        .into_iter()
        .filter(|o| match o {
            Object::DaemonSet(d) => named(&d.metadata),
            Object::Deployment(d) => named(&d.metadata),
            _ => false,
        })
        .collect();
    bootstrap::objects::apply_all(client.clone(), &workloads, bootstrap::objects::FIELD_MANAGER)
        .await
        .context("moving the control-plane workloads of a cluster made before the keys left the API onto the host's files")?;
    tracing::info!(workloads = ?moved, "moved control-plane workloads that mounted the legacy key Secrets onto the host's files");
    Ok(moved)
}

/// Deletes the Secrets in which clusters made by an older selfnode kept the
/// control plane's keys (`bootstrap::objects::LEGACY_KEY_SECRETS`); the
/// pods mount the host's files instead. Returns how many it deleted.
pub async fn delete_legacy_key_secrets(client: &kube::Client) -> anyhow::Result<usize> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), NAMESPACE);
    let mut deleted = 0;
    for name in bootstrap::objects::LEGACY_KEY_SECRETS {
        match secrets.delete(name, &Default::default()).await {
            Ok(_) => {
                tracing::info!(secret = name, "deleted a Secret that held control-plane keys (they live on the hosts' disks now)");
                deleted += 1;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting Secret {NAMESPACE}/{name}")),
        }
    }
    Ok(deleted)
}

/// Sets the config hash of `c`'s workload if it differs: `(rolled, missing)`.
async fn set_config_hash(
    client: &kube::Client,
    c: &ComponentWorkload,
) -> anyhow::Result<(bool, bool)> {
    if c.workload_kind == "DaemonSet" {
        set_template_hash::<DaemonSet>(client, c, |d| d.spec.template.metadata.as_ref()).await
    } else {
        set_template_hash::<Deployment>(client, c, |d| d.spec.template.metadata.as_ref()).await
    }
}

async fn set_template_hash<K>(
    client: &kube::Client,
    c: &ComponentWorkload,
    template: fn(&K) -> Option<&ObjectMeta>,
) -> anyhow::Result<(bool, bool)>
where
    K: kube::Resource<Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), NAMESPACE);
    let Some(live) = api.get_opt(c.component).await? else {
        return Ok((false, true));
    };
    let current = template(&live)
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION));
    if current == Some(&c.config_hash) {
        return Ok((false, false));
    }
    let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
        CONFIG_HASH_ANNOTATION: c.config_hash,
    }}}}});
    let pp = PatchParams {
        field_manager: Some(PATCH_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch(c.component, &pp, &Patch::Merge(&patch)).await?;
    Ok((true, false))
}

/// Waits until `p`'s workload has rolled out.
async fn wait_rolled(
    client: &kube::Client,
    p: &Published,
    timeout: Duration,
) -> anyhow::Result<()> {
    if p.workload == "DaemonSet" {
        wait_until_rolled::<DaemonSet>(client, p, timeout, crate::readiness::daemonset_rolled).await
    } else {
        wait_until_rolled::<Deployment>(client, p, timeout, crate::readiness::deployment_rolled)
            .await
    }
}

async fn wait_until_rolled<K>(
    client: &kube::Client,
    p: &Published,
    timeout: Duration,
    rolled: fn(&K) -> Result<(), crate::readiness::NotYet>,
) -> anyhow::Result<()>
where
    K: kube::Resource<Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), NAMESPACE);
    let what = format!("{} {}/{} to roll out", p.workload, NAMESPACE, p.component);
    crate::wait::until(&what, timeout, Duration::from_secs(1), || async {
        rolled(&api.get(&p.component).await?)?;
        Ok(true)
    })
    .await
}

/// What `selfnode certs renew` did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewReport {
    /// The files re-issued (certificates, keys, kubeconfigs).
    pub renewed: Vec<PathBuf>,
    /// What reached the cluster.
    pub published: Vec<Published>,
    /// This host's components restarted onto the new files.
    pub restarted: Vec<String>,
    /// Every certificate after the renewal.
    pub certificates: Vec<ExpiryRow>,
    pub seconds: f64,
}

/// `selfnode certs renew` (see the module docs): on a control-plane host
/// with the keys. Prints progress lines unless `quiet`; waits up to
/// `timeout` for this host's components to start again (and for a
/// workload to roll, when a shared file changed). `socket`: this host's
/// containerd.
pub async fn renew(
    paths: &HostPaths,
    socket: &Path,
    timeout: Duration,
    quiet: bool,
) -> anyhow::Result<RenewReport> {
    let started = Instant::now();
    let line = |text: &str| {
        if !quiet {
            println!("[certs] {text} ({:.1}s)", started.elapsed().as_secs_f64());
        }
    };
    let host = ControlPlaneHost::load(paths)?;
    let spec = host.plane_spec(paths, crate::control::api_lb_port(paths));
    let _lock = PkiLock::acquire(paths, Duration::from_secs(120)).await?;
    let pki = spec.pki_spec();
    require_cluster_keys(&pki.pki_dir)?;
    let joined = host.joined;
    let report: PkiReport = tokio::task::spawn_blocking(move || {
        if joined {
            bootstrap::pki::renew_joined_control_plane_pki(&NodeHost, &pki, SystemTime::now())
        } else {
            bootstrap::pki::renew_pki(&NodeHost, &pki, SystemTime::now())
        }
    })
    .await??;
    let renewed: Vec<PathBuf> = report.changed().map(|e| e.path.clone()).collect();
    line(&format!(
        "re-issued {} certificates, keys and kubeconfigs under {} and {} (the CAs and sa.key are kept)",
        renewed.len(),
        spec.pki_dir.display(),
        spec.kubeconfig_dir.display()
    ));
    for w in &report.warnings {
        line(&format!("warning: {w}"));
    }
    let client = crate::cluster::kube_client(&spec.kubeconfig_dir.join("super-admin.conf")).await?;
    // This host's components onto the new files first: that needs no API
    // (on a single control-plane host the API server is one of them).
    let restarted = restart_own_components(&spec, socket, &client, timeout).await?;
    if !restarted.is_empty() {
        line(&format!(
            "restarted {} on this host onto the new files",
            restarted.join(", ")
        ));
    }
    let published = publish(&client, &spec)
        .await
        .context("the new certificates are on this host and its components run on them, but the API server cannot be reached to publish them; run 'selfnode certs renew' again once it answers (the agent also publishes within the hour)")?;
    for p in &published {
        if p.missing {
            line(&format!(
                "{} {}/{} does not exist: 'selfnode recover' makes it again",
                p.workload, NAMESPACE, p.component
            ));
        } else if p.rolled {
            line(&format!(
                "rolling {} {ns}/{c} (a file every host shares changed)",
                p.workload,
                ns = NAMESPACE,
                c = p.component
            ));
        }
    }
    for p in published.iter().filter(|p| p.rolled) {
        wait_rolled(&client, p, timeout).await.with_context(|| {
            format!(
                "the new certificates are published but {} {}/{} has not rolled out; see 'kubectl -n {} rollout status {} {}'",
                p.workload,
                NAMESPACE,
                p.component,
                NAMESPACE,
                p.workload.to_ascii_lowercase(),
                p.component
            )
        })?;
        line(&format!(
            "{} {}/{} rolled out",
            p.workload, NAMESPACE, p.component
        ));
    }
    Ok(RenewReport {
        renewed,
        published,
        restarted,
        certificates: expiration(paths)?,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Each component with the time its own files last changed on this host
/// (the newest modification of those it reads that are not shared).
fn own_files_changed_at(spec: &PlaneSpec) -> Vec<(&'static str, SystemTime)> {
    bootstrap::objects::component_files(spec)
        .into_iter()
        .filter_map(|(name, files)| {
            files
                .iter()
                .filter(|f| !bootstrap::objects::shared_file(spec, f))
                .filter_map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
                .max()
                .map(|t| (name, t))
        })
        .collect()
}

/// Restarts this host's containers of the components that run on older
/// files than the host has (`crate::cri`), waits up to `timeout` until the
/// kubelet has started them again and, after an API server's restart,
/// until the API answers `/readyz` through `client` (this host's balancer)
/// again. Returns the components restarted.
async fn restart_own_components(
    spec: &PlaneSpec,
    socket: &Path,
    client: &kube::Client,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let changed_at = own_files_changed_at(spec);
    let stopped = crate::cri::restart_containers_older_than(socket, &changed_at).await?;
    if stopped.is_empty() {
        return Ok(Vec::new());
    }
    crate::cri::wait_restarted(socket, &stopped, timeout)
        .await
        .context("the renewed files are on this host, but a component did not start again; see 'kubectl -n kube-system get pods -o wide' and the kubelet's log")?;
    let mut ran: Vec<String> = stopped.iter().map(|c| c.container.clone()).collect();
    ran.sort();
    ran.dedup();
    if ran.iter().any(|c| c == "kube-apiserver") {
        crate::wait::api_ready(client, timeout).await?;
    }
    Ok(ran)
}

/// `bootstrap::pki::RENEW_BEFORE` in days.
pub const RENEW_BEFORE_DAYS: i64 = (bootstrap::pki::RENEW_BEFORE.as_secs() / 86_400) as i64;

/// The leaf or kubeconfig that expires first, with its residual days.
pub fn next_to_expire(rows: &[ExpiryRow]) -> Option<(i64, &ExpiryRow)> {
    rows.iter()
        .filter(|r| r.kind != CertKind::Ca)
        .filter_map(|r| Some((r.residual_days?, r)))
        .min_by_key(|(d, _)| *d)
}

/// This control-plane host's PKI brought to what its plane wants (under
/// the PKI lock): what is due renewed, and what names an address or name
/// the host no longer has (`RenewReason::SansChanged`) re-issued; then the
/// API server's own files. `None` when this host is not a control-plane
/// host with the keys. The certificate task's pass and the address task
/// (a host whose address changed) both start here.
pub async fn ensure_host_pki(
    paths: &HostPaths,
    api_lb_port: u16,
) -> anyhow::Result<Option<(PlaneSpec, PkiReport)>> {
    let host = match ControlPlaneHost::load(paths) {
        Ok(host) => host,
        Err(e) if e.downcast_ref::<NotControlPlaneHost>().is_some() => return Ok(None),
        Err(e) => return Err(e),
    };
    let spec = host.plane_spec(paths, api_lb_port);
    let _lock = PkiLock::acquire(paths, Duration::from_secs(60)).await?;
    let pki = spec.pki_spec();
    require_cluster_keys(&pki.pki_dir)?;
    let joined = host.joined;
    let report = tokio::task::spawn_blocking(move || {
        if joined {
            bootstrap::pki::ensure_joined_control_plane_pki(&NodeHost, &pki, SystemTime::now())
        } else {
            bootstrap::pki::ensure_pki(&NodeHost, &pki, SystemTime::now())
        }
    })
    .await??;
    // The files the API server's flags name besides the PKI: a host set up
    // by an older selfnode (or one whose files were deleted) gets them
    // before a pod that mounts them is started here.
    bootstrap::plane::ensure_apiserver_files(&NodeHost, &spec)
        .context("writing the API server's audit policy and admission configuration")?;
    Ok(Some((spec, report)))
}

/// The agent's check (`agent::tasks::certs`): renews what is due,
/// publishes, and restarts this host's components onto what it renewed.
/// `None` when this host is not a control-plane host with the keys.
pub async fn agent_pass(
    paths: &HostPaths,
    api_lb_port: u16,
    socket: &Path,
) -> anyhow::Result<Option<String>> {
    let Some((spec, report)) = ensure_host_pki(paths, api_lb_port).await? else {
        return Ok(None);
    };
    let renewed: Vec<PathBuf> = report.changed().map(|e| e.path.clone()).collect();
    if !renewed.is_empty() {
        tracing::info!(
            files = renewed.len(),
            "certificates: re-issued what was due"
        );
    }
    for w in &report.warnings {
        tracing::warn!("certificates: {w}");
    }
    let client = crate::cluster::kube_client(&spec.kubeconfig_dir.join("super-admin.conf")).await?;
    // Before the publish, which needs the API: a component running on
    // older files than the host has (renewed now, or by a pass whose
    // restart failed) is restarted whether the API answers or not.
    let restarted =
        restart_own_components(&spec, socket, &client, Duration::from_secs(300)).await?;
    let mut changed = Vec::new();
    if !restarted.is_empty() {
        tracing::info!(components = ?restarted, "certificates: restarted this host's components onto their files");
        changed.push(format!("restarted {} on this host", restarted.join(", ")));
    }
    let published = publish(&client, &spec).await?;
    changed.extend(
        published
            .iter()
            .filter(|p| p.rolled)
            .map(|p| format!("rolled {}", p.component)),
    );
    Ok(Some(summary(&expiration(paths)?, renewed.len(), &changed)))
}

/// The status line: the next certificate to expire, and what this check did.
pub fn summary(rows: &[ExpiryRow], renewed: usize, changed: &[String]) -> String {
    let mut s = match next_to_expire(rows) {
        Some((days, r)) => format!(
            "next to expire: {} at {} ({days} days; renewed 30 days before)",
            r.name,
            r.not_after.as_deref().unwrap_or("?")
        ),
        None => "no certificate of the cluster on this host".to_string(),
    };
    if renewed > 0 {
        s.push_str(&format!("; re-issued {renewed} files"));
    }
    for c in changed {
        s.push_str(&format!("; {c}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn renewal_refuses_while_a_ca_or_the_service_account_key_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(pki.join("etcd")).unwrap();
        for f in crate::cluster::CLUSTER_KEY_FILES {
            std::fs::write(pki.join(f), "x").unwrap();
        }
        require_cluster_keys(&pki).unwrap();
        for f in ["etcd/ca.key", "sa.key"] {
            std::fs::remove_file(pki.join(f)).unwrap();
        }
        let err = require_cluster_keys(&pki).unwrap_err().to_string();
        assert!(err.starts_with("not renewing:"), "{err}");
        assert!(err.contains("pki/etcd/ca.key, "), "{err}");
        assert!(err.contains("pki/sa.key missing"), "{err}");
        assert!(!err.contains("front-proxy-ca"), "{err}");
    }

    #[tokio::test]
    async fn the_pki_lock_is_private_to_root_and_tightened_where_it_was_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::under(dir.path());
        let lock = paths.run_dir().join("pki.lock");
        std::fs::create_dir_all(paths.run_dir()).unwrap();
        std::fs::set_permissions(paths.run_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(&lock, "").unwrap();
        std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
        let held = PkiLock::acquire(&paths, Duration::from_secs(1))
            .await
            .unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.run_dir()), 0o700);
        assert_eq!(mode(&lock), 0o600);
        drop(held);
    }

    #[test]
    fn residual_days_round_towards_the_past() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let day = Duration::from_secs(86_400);
        assert_eq!(days_between(t, t + day * 30), 30);
        assert_eq!(days_between(t, t + day * 30 - Duration::from_secs(1)), 29);
        assert_eq!(days_between(t, t), 0);
        assert_eq!(days_between(t, t - Duration::from_secs(1)), -1);
        assert_eq!(days_between(t, t - day), -2);
    }

    #[test]
    fn the_status_line_names_the_next_leaf_to_expire_not_a_ca() {
        let row = |name: &str, kind, days| ExpiryRow {
            name: name.to_string(),
            path: PathBuf::from("/x"),
            kind,
            signed_by: None,
            not_after: Some(format!("T+{days}")),
            residual_days: Some(days),
            problem: None,
        };
        let rows = [
            row("ca", CertKind::Ca, 10),
            row("apiserver", CertKind::Leaf, 300),
            row("admin.conf", CertKind::Kubeconfig, 200),
        ];
        assert_eq!(
            summary(&rows, 0, &[]),
            "next to expire: admin.conf at T+200 (200 days; renewed 30 days before)"
        );
        assert_eq!(
            summary(
                &rows,
                2,
                &["restarted kube-apiserver on this host".to_string()]
            ),
            "next to expire: admin.conf at T+200 (200 days; renewed 30 days before); re-issued 2 files; restarted kube-apiserver on this host"
        );
    }

    fn spec_under(dir: &std::path::Path) -> PlaneSpec {
        let paths = HostPaths::under(dir);
        let settings = bootstrap::config::InitSettings {
            cluster_name: "lab".into(),
            node_name: "n1".into(),
            advertise_address: "10.0.0.2".parse().unwrap(),
            pod_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
            extra_sans: vec![],
            bundle: None,
            allow_workloads: true,
            etcd_quota_backend_bytes: 8 << 30,
        };
        let env = bootstrap::plane::PlaneEnv {
            kubernetes_version: "v1.37.2".into(),
            images: bootstrap::plane::PlaneImages {
                kube_apiserver: "a".into(),
                kube_controller_manager: "c".into(),
                kube_scheduler: "s".into(),
                kube_proxy: "p".into(),
                coredns: "d".into(),
                etcd: "e".into(),
                selfnode: "n".into(),
            },
            pki_dir: paths.pki_dir(),
            kubeconfig_dir: paths.kubeconfig_dir(),
            etcd_data_dir: paths.etcd_data_dir(),
            audit_log_dir: paths.audit_log_dir(),
            cni_conf_dir: paths.cni_conf_dir(),
            api_load_balancer_port: 7445,
        };
        PlaneSpec::from_settings(&settings, env)
    }

    #[test]
    fn a_component_is_as_new_as_its_own_files_and_no_shared_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec_under(dir.path());
        let at = |secs: u64| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        // Every file any component reads, at t=1000.
        for (_, files) in bootstrap::objects::component_files(&s) {
            for f in files {
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                let file = std::fs::File::create(&f).unwrap();
                file.set_modified(at(1000)).unwrap();
            }
        }
        let touch = |f: PathBuf, secs: u64| {
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(at(secs))
                .unwrap()
        };
        // A renewed controller-manager kubeconfig and API server pair; a
        // newer CA (shared: the rollout's, by the config hash, not a
        // restart's).
        touch(s.kubeconfig_dir.join("controller-manager.conf"), 2000);
        touch(s.pki_dir.join("apiserver.crt"), 3000);
        touch(s.pki_dir.join("ca.crt"), 9000);
        let times: std::collections::BTreeMap<_, _> =
            own_files_changed_at(&s).into_iter().collect();
        assert_eq!(times["kube-controller-manager"], at(2000));
        assert_eq!(times["kube-apiserver"], at(3000));
        assert_eq!(times["kube-scheduler"], at(1000));
    }

    #[test]
    fn a_template_that_mounts_a_legacy_key_secret_is_told_apart() {
        use k8s_openapi::api::core::v1::{
            HostPathVolumeSource, PodSpec, PodTemplateSpec, SecretVolumeSource, Volume,
        };
        let template = |v: Volume| PodTemplateSpec {
            spec: Some(PodSpec {
                volumes: Some(vec![v]),
                ..PodSpec::default()
            }),
            ..PodTemplateSpec::default()
        };
        let secret = |name: &str| Volume {
            name: "pki".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.into()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        };
        assert!(mounts_legacy_key_secret(&template(secret(
            "kube-apiserver"
        ))));
        assert!(mounts_legacy_key_secret(&template(secret(
            "selfnode-etcd-ca"
        ))));
        assert!(!mounts_legacy_key_secret(&template(secret(
            "a-users-secret"
        ))));
        assert!(!mounts_legacy_key_secret(&template(Volume {
            name: "pki".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/etc/kubernetes/pki/ca.crt".into(),
                type_: Some("File".into()),
            }),
            ..Volume::default()
        })));
        assert!(!mounts_legacy_key_secret(&PodTemplateSpec::default()));
    }
}
