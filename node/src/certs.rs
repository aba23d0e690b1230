//! `selfnode certs`: when this host's certificates expire, and their
//! renewal on a running self-hosted cluster.
//!
//! `selfnode init` makes the cluster's PKI (kubeadm's layout) on its host,
//! which keeps the CAs' keys. Before the pivot the temporary plane reads
//! its certificates from the host's files; after it the self-hosted
//! kube-apiserver, kube-controller-manager and kube-scheduler read theirs
//! from one Secret each in `kube-system`
//! (`bootstrap::objects::component_secrets`). So a renewed file reaches a
//! component only when its Secret is applied again **and** its pods roll
//! (a kubeconfig mounted with `subPath` is never updated in a running
//! pod). The pod template carries a hash of the Secret
//! (`selfnode.dev/config-hash`): [`publish`] applies the three Secrets and
//! sets that one annotation where it differs, and touches nothing else of
//! the workloads (an image a user set with kubectl stays).
//!
//! - `selfnode certs check-expiration`: [`expiration`], from the files.
//! - `selfnode certs renew`: [`renew`] re-issues every leaf and kubeconfig
//!   (kubeadm's `certs renew all`; CAs and `sa.key` are kept), publishes,
//!   and waits until the three workloads have rolled.
//! - The agent of the host that ran init, [`run`]: every [`PERIOD`] an
//!   ordinary `ensure_pki` pass (re-issues what has less than 30 days left,
//!   the rule `selfnode init` applies) and a [`publish`], which also brings
//!   back a Secret that drifted from the files. A cluster so renews itself
//!   for as long as its CAs (10 years) last, with no command run.
//!
//! Every writer of the PKI after the pivot holds [`PkiLock`], so two
//! renewals never interleave a key of one with a certificate of the other.
//!
//! Not renewed here: the etcd member certificates of a *joined*
//! control-plane host (its member controller, `agent/member.rs`, issues
//! them from the `selfnode-etcd-ca` Secret and re-issues them when less
//! than 30 days are left, checked at agent start and every hour), and the
//! kubelets' client certificates, which the kubelets rotate themselves
//! (the agent turns `rotateCertificates` on).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bootstrap::objects::{ComponentSecret, Object, CONFIG_HASH_ANNOTATION, NAMESPACE};
use bootstrap::pki::{CertExpiry, CertKind, PkiReport};
use bootstrap::plane::PlaneSpec;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoint;
use crate::host::NodeHost;
use crate::paths::HostPaths;

/// The agent's component name in `selfnode status`.
pub const COMPONENT: &str = "certificates";
/// How often the agent checks and renews.
pub const PERIOD: Duration = Duration::from_secs(3600);
/// The agent's first check, after start: long enough for the kubelet to
/// bring the API back after a reboot.
const FIRST_CHECK: Duration = Duration::from_secs(60);
/// Field manager of the config-hash patches.
const PATCH_MANAGER: &str = "selfnode-certs";

/// Why `certs renew` cannot run on this host.
#[derive(Debug, thiserror::Error)]
pub enum CertsRefused {
    #[error("this host belongs to no cluster: there are no certificates to renew ('selfnode init' makes them)")]
    NoCluster,
    #[error("this host joined its cluster ({cluster:?}): the cluster's certificates are renewed on the host that ran 'selfnode init', which holds the CAs' keys (its agent does it by itself 30 days before they expire)")]
    Joined { cluster: String },
    #[error("the cluster on this host has not pivoted yet: run 'selfnode init' again, it resumes where it stopped and renews what is due")]
    NotPivoted,
    #[error("this host's checkpoint holds no settings of its cluster (it was made by an older selfnode): run 'selfnode init' with the flags it was made with instead")]
    NoSettings,
}

/// Exclusive right to write the PKI: an `flock` on `run/selfnode/pki.lock`
/// (released by the kernel if the holder dies).
pub struct PkiLock {
    _lock: Flock<std::fs::File>,
}

impl PkiLock {
    /// Waits up to `wait` for the lock.
    pub async fn acquire(paths: &HostPaths, wait: Duration) -> anyhow::Result<PkiLock> {
        let path = paths.run_dir().join("pki.lock");
        std::fs::create_dir_all(paths.run_dir())
            .with_context(|| format!("cannot create {}", paths.run_dir().display()))?;
        let deadline = Instant::now() + wait;
        loop {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
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
    if let Ok(spec) = init_host_spec(paths) {
        return Ok(spec.pki_spec());
    }
    let id = crate::agent::services::NodeIdentity::read(&paths.node_identity_file())?
        .ok_or(CertsRefused::NoCluster)?;
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

/// The plane spec of the cluster this host made, from its checkpoint:
/// only on the host that ran init, after the pivot.
fn init_host_spec(paths: &HostPaths) -> anyhow::Result<PlaneSpec> {
    if !paths.checkpoint_dir().exists() {
        return Err(CertsRefused::NoCluster.into());
    }
    let (settings, pivoted) = {
        let cp = Checkpoint::open(&paths.checkpoint_dir())?;
        match cp.cluster_identity()? {
            None => return Err(CertsRefused::NoCluster.into()),
            Some(id) if id.role == "join" => {
                return Err(CertsRefused::Joined {
                    cluster: id.cluster_name,
                }
                .into())
            }
            Some(_) => {}
        }
        (
            cp.settings()?.ok_or(CertsRefused::NoSettings)?,
            cp.pivot_committed()?,
        )
    };
    if !pivoted {
        return Err(CertsRefused::NotPivoted.into());
    }
    let dir = settings
        .bundle
        .clone()
        .unwrap_or_else(|| paths.default_bundle());
    let bundle = dist::bundle::Bundle::open(&dir)?;
    Ok(crate::init::plane_spec(paths, &settings, &bundle))
}

/// The cluster's keys (`init::restore::RESTORE_PKI_FILES`: the CAs'
/// certificates and keys, the service-account pair, the encryption
/// config) must be there before a renewal: `ensure_pki` would make new ones
/// for missing files, and a new CA or service-account key after the pivot
/// cuts off every node and every service-account token. Renewal never
/// does that by itself.
fn require_cluster_keys(pki_dir: &std::path::Path) -> anyhow::Result<()> {
    let missing: Vec<String> = crate::init::restore::RESTORE_PKI_FILES
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
    /// The Secret's data differed from the files and was replaced.
    pub secret_changed: bool,
    /// The pod template's config hash was set: the pods roll.
    pub rolled: bool,
    /// The workload does not exist ('selfnode recover' makes it again).
    pub missing: bool,
}

/// Applies each control-plane component's Secret as rendered from the
/// host's files now, and sets its workload's pod-template config hash
/// where it differs (see the module docs). Idempotent: with nothing
/// changed it writes nothing.
pub async fn publish(client: &kube::Client, spec: &PlaneSpec) -> anyhow::Result<Vec<Published>> {
    let files = bootstrap::objects::PlaneFiles::read(&NodeHost, spec)?;
    let mut out = Vec::new();
    for c in bootstrap::objects::component_secrets(spec, &files)? {
        let applied = bootstrap::objects::apply_all(
            client.clone(),
            &[Object::Secret(c.secret.clone())],
            bootstrap::objects::FIELD_MANAGER,
        )
        .await?;
        let secret_changed = applied
            .iter()
            .any(|a| a.outcome != bootstrap::objects::ApplyOutcome::Unchanged);
        let (rolled, missing) = set_config_hash(client, &c).await?;
        out.push(Published {
            component: c.component.to_string(),
            workload: c.workload_kind.to_string(),
            secret_changed,
            rolled,
            missing,
        });
    }
    Ok(out)
}

/// Sets the config hash of `c`'s workload if it differs: `(rolled, missing)`.
async fn set_config_hash(
    client: &kube::Client,
    c: &ComponentSecret,
) -> anyhow::Result<(bool, bool)> {
    if c.workload_kind == "DaemonSet" {
        set_template_hash::<DaemonSet>(client, c, |d| d.spec.template.metadata.as_ref()).await
    } else {
        set_template_hash::<Deployment>(client, c, |d| d.spec.template.metadata.as_ref()).await
    }
}

async fn set_template_hash<K>(
    client: &kube::Client,
    c: &ComponentSecret,
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

/// Whether a DaemonSet's rollout is complete, as `kubectl rollout status`
/// decides: `Err` says what it still waits for.
pub(crate) fn daemonset_rolled(d: &DaemonSet) -> Result<(), String> {
    let generation = d.metadata.generation.unwrap_or(0);
    let s = d.status.clone().unwrap_or_default();
    if s.observed_generation.unwrap_or(0) < generation {
        return Err("the controller has not seen the change yet".to_string());
    }
    let want = s.desired_number_scheduled;
    let updated = s.updated_number_scheduled.unwrap_or(0);
    if updated < want {
        return Err(format!("{updated} of {want} pods updated"));
    }
    let available = s.number_available.unwrap_or(0);
    if available < want {
        return Err(format!("{available} of {want} updated pods available"));
    }
    Ok(())
}

/// Whether a Deployment's rollout is complete, as `kubectl rollout status`
/// decides: `Err` says what it still waits for.
pub(crate) fn deployment_rolled(d: &Deployment) -> Result<(), String> {
    let generation = d.metadata.generation.unwrap_or(0);
    let s = d.status.clone().unwrap_or_default();
    if s.observed_generation.unwrap_or(0) < generation {
        return Err("the controller has not seen the change yet".to_string());
    }
    let want = d.spec.replicas.unwrap_or(1);
    let updated = s.updated_replicas.unwrap_or(0);
    if updated < want {
        return Err(format!("{updated} of {want} replicas updated"));
    }
    let total = s.replicas.unwrap_or(0);
    if total > updated {
        return Err(format!(
            "{} old replicas still terminating",
            total - updated
        ));
    }
    let available = s.available_replicas.unwrap_or(0);
    if available < updated {
        return Err(format!(
            "{available} of {updated} updated replicas available"
        ));
    }
    Ok(())
}

/// Waits until `p`'s workload has rolled out.
async fn wait_rolled(
    client: &kube::Client,
    p: &Published,
    timeout: Duration,
) -> anyhow::Result<()> {
    if p.workload == "DaemonSet" {
        wait_until_rolled::<DaemonSet>(client, p, timeout, daemonset_rolled).await
    } else {
        wait_until_rolled::<Deployment>(client, p, timeout, deployment_rolled).await
    }
}

async fn wait_until_rolled<K>(
    client: &kube::Client,
    p: &Published,
    timeout: Duration,
    rolled: fn(&K) -> Result<(), String>,
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
    crate::init::steps::until(&what, timeout, Duration::from_secs(1), || async {
        rolled(&api.get(&p.component).await?).map_err(anyhow::Error::msg)?;
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
    /// Every certificate after the renewal.
    pub certificates: Vec<ExpiryRow>,
    pub seconds: f64,
}

/// `selfnode certs renew` (see the module docs): on the host that ran
/// init, after the pivot. Prints progress lines unless `quiet`; waits up
/// to `timeout` for each workload to roll.
pub async fn renew(
    paths: &HostPaths,
    timeout: Duration,
    quiet: bool,
) -> anyhow::Result<RenewReport> {
    let started = Instant::now();
    let line = |text: &str| {
        if !quiet {
            println!("[certs] {text} ({:.1}s)", started.elapsed().as_secs_f64());
        }
    };
    let spec = init_host_spec(paths)?;
    let _lock = PkiLock::acquire(paths, Duration::from_secs(120)).await?;
    let pki = spec.pki_spec();
    require_cluster_keys(&pki.pki_dir)?;
    let report: PkiReport = tokio::task::spawn_blocking(move || {
        bootstrap::pki::renew_pki(&NodeHost, &pki, SystemTime::now())
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
    let client = crate::init::kube_client(&spec.kubeconfig_dir.join("super-admin.conf"))
        .await
        .context("the new certificates are on this host, but the API server cannot be reached to publish them; run 'selfnode certs renew' again once it answers (the agent also publishes them within the hour)")?;
    let published = publish(&client, &spec).await?;
    for p in &published {
        if p.missing {
            line(&format!(
                "{} {}/{} does not exist: 'selfnode recover' makes it again, with the new Secret",
                p.workload, NAMESPACE, p.component
            ));
        } else if p.rolled {
            line(&format!(
                "applied Secret {ns}/{c}; rolling {} {ns}/{c}",
                p.workload,
                ns = NAMESPACE,
                c = p.component
            ));
        }
    }
    for p in published.iter().filter(|p| !p.missing) {
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
        certificates: expiration(paths)?,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The agent's task (see the module docs): renews on the host that ran
/// init; on every host reports the next certificate to expire, and is
/// `unhealthy` in `selfnode status` once one has less than 30 days left
/// (renewal is not happening: `last_error` says why).
pub async fn run(
    paths: HostPaths,
    status: crate::agent::supervisor::StatusHandle,
    mut containerd_ready: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    if !crate::agent::checkpointer::containerd_up(&mut containerd_ready, &stop).await {
        return;
    }
    let mut wait = FIRST_CHECK;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = PERIOD;
        let outcome = agent_pass(&paths).await;
        // What the files say after the pass, renewed or not: a leaf with
        // less than RENEW_BEFORE left means renewal is not happening.
        let rows = expiration(&paths).unwrap_or_default();
        let state = if next_to_expire(&rows).is_some_and(|(days, _)| days < RENEW_BEFORE_DAYS) {
            crate::status::ComponentState::Unhealthy
        } else {
            crate::status::ComponentState::Ready
        };
        match outcome {
            Ok(note) => status.update(COMPONENT, |c| {
                c.state = state;
                c.detail = Some(note.unwrap_or_else(|| summary(&rows, 0, &[])));
                c.last_error = None;
            }),
            Err(err) => {
                let err = format!("{err:#}");
                tracing::warn!(error = %err, "certificates: this check failed; retrying in 5 minutes");
                status.update(COMPONENT, |c| {
                    c.state = state;
                    c.detail = Some(summary(&rows, 0, &[]));
                    c.last_error = Some(err);
                });
                wait = Duration::from_secs(300);
            }
        }
    }
}

/// `bootstrap::pki::RENEW_BEFORE` in days.
const RENEW_BEFORE_DAYS: i64 = (bootstrap::pki::RENEW_BEFORE.as_secs() / 86_400) as i64;

/// The leaf or kubeconfig that expires first, with its residual days.
fn next_to_expire(rows: &[ExpiryRow]) -> Option<(i64, &ExpiryRow)> {
    rows.iter()
        .filter(|r| r.kind != CertKind::Ca)
        .filter_map(|r| Some((r.residual_days?, r)))
        .min_by_key(|(d, _)| *d)
}

/// One check: `None` when this host does not own the cluster's PKI.
async fn agent_pass(paths: &HostPaths) -> anyhow::Result<Option<String>> {
    let spec = match init_host_spec(paths) {
        Ok(spec) => spec,
        Err(e) if e.downcast_ref::<CertsRefused>().is_some() => return Ok(None),
        Err(e) => return Err(e),
    };
    let _lock = PkiLock::acquire(paths, Duration::from_secs(60)).await?;
    let pki = spec.pki_spec();
    require_cluster_keys(&pki.pki_dir)?;
    let report = tokio::task::spawn_blocking(move || {
        bootstrap::pki::ensure_pki(&NodeHost, &pki, SystemTime::now())
    })
    .await??;
    let renewed = report.changed().count();
    if renewed > 0 {
        tracing::info!(files = renewed, "certificates: re-issued what was due");
    }
    for w in &report.warnings {
        tracing::warn!("certificates: {w}");
    }
    let client = crate::init::kube_client(&spec.kubeconfig_dir.join("super-admin.conf")).await?;
    let published = publish(&client, &spec).await?;
    let rolled: Vec<&str> = published
        .iter()
        .filter(|p| p.rolled)
        .map(|p| p.component.as_str())
        .collect();
    if !rolled.is_empty() {
        tracing::info!(components = ?rolled, "certificates: published renewed certificates; the pods roll");
    }
    Ok(Some(summary(&expiration(paths)?, renewed, &rolled)))
}

/// The status line: the next certificate to expire, and what this check did.
fn summary(rows: &[ExpiryRow], renewed: usize, rolled: &[&str]) -> String {
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
    if !rolled.is_empty() {
        s.push_str(&format!("; rolled {}", rolled.join(", ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DaemonSetStatus, DeploymentSpec, DeploymentStatus};

    fn ds(generation: i64, observed: i64, desired: i32, updated: i32, available: i32) -> DaemonSet {
        let mut d = DaemonSet::default();
        d.metadata.generation = Some(generation);
        d.status = Some(DaemonSetStatus {
            observed_generation: Some(observed),
            desired_number_scheduled: desired,
            updated_number_scheduled: Some(updated),
            number_available: Some(available),
            ..DaemonSetStatus::default()
        });
        d
    }

    fn deploy(
        generation: i64,
        observed: i64,
        total: i32,
        updated: i32,
        available: i32,
    ) -> Deployment {
        Deployment {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(1),
                ..DeploymentSpec::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(total),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                ..DeploymentStatus::default()
            }),
        }
    }

    #[test]
    fn a_daemonset_has_rolled_once_every_pod_is_updated_and_available() {
        assert!(daemonset_rolled(&ds(3, 3, 1, 1, 1)).is_ok());
        assert!(daemonset_rolled(&ds(4, 3, 1, 1, 1))
            .unwrap_err()
            .contains("not seen the change"));
        assert_eq!(
            daemonset_rolled(&ds(4, 4, 2, 1, 2)).unwrap_err(),
            "1 of 2 pods updated"
        );
        assert_eq!(
            daemonset_rolled(&ds(4, 4, 1, 1, 0)).unwrap_err(),
            "0 of 1 updated pods available"
        );
        assert!(
            daemonset_rolled(&DaemonSet::default()).is_ok(),
            "no pods wanted"
        );
    }

    #[test]
    fn a_deployment_has_rolled_once_no_old_replica_is_left() {
        assert!(deployment_rolled(&deploy(2, 2, 1, 1, 1)).is_ok());
        assert!(deployment_rolled(&deploy(3, 2, 1, 1, 1)).is_err());
        // A surge pod next to the old one: not yet.
        assert_eq!(
            deployment_rolled(&deploy(3, 3, 2, 1, 1)).unwrap_err(),
            "1 old replicas still terminating"
        );
        assert_eq!(
            deployment_rolled(&deploy(3, 3, 1, 0, 1)).unwrap_err(),
            "0 of 1 replicas updated"
        );
        assert_eq!(
            deployment_rolled(&deploy(3, 3, 1, 1, 0)).unwrap_err(),
            "0 of 1 updated replicas available"
        );
    }

    #[test]
    fn renewal_refuses_while_a_ca_or_the_service_account_key_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(pki.join("etcd")).unwrap();
        for f in crate::init::restore::RESTORE_PKI_FILES {
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
            summary(&rows, 19, &["kube-apiserver"]),
            "next to expire: admin.conf at T+200 (200 days; renewed 30 days before); re-issued 19 files; rolled kube-apiserver"
        );
    }
}
