//! Ground floor: an upgrade's bundle, from the one host that has it to
//! every other, with the cluster's own identities (`dist::share` moves the
//! bytes and checks them).
//!
//! The host that runs `selfnode upgrade stage` serves its bundle on
//! [`SHARE_PORT`] of its address with a serving certificate it signs with
//! the cluster CA for that address, kept in memory for the command's
//! lifetime, and serves only clients whose certificate the cluster CA
//! signed for a node (`O=system:nodes`: the kubelets' client
//! certificates). It publishes the offer (the bundle's `VERSION` and
//! `SHA256SUMS`, and its address) in the `kube-system` ConfigMap
//! [`BUNDLE_OFFER`], which only admins write and nodes may read. Every
//! host's agent (`agent::tasks::bundles`) fetches an offered bundle into
//! `var/lib/selfnode/bundles/<id>/` with its kubelet's client certificate,
//! each file checked against the published `SHA256SUMS`, imports its
//! images, and says so on its Node ([`READY_ANNOTATION`]).
//!
//! What a node's credentials get here: the offer (versions and checksums,
//! nothing secret) and the bundle's public binaries. A bootstrap token
//! gets neither.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use dist::share::{ClientCheck, Offer};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use bootstrap::objects::BUNDLE_OFFER;
use bootstrap::objects::{FIELD_MANAGER, NAMESPACE};

use crate::paths::HostPaths;

/// The Node annotation that says which offered bundle (its
/// [`Offer::id`]) a host holds, checked, with its images imported.
pub const READY_ANNOTATION: &str = "selfnode.dev/bundle-ready";
/// Where the host that stages a bundle serves it (TCP, on its address).
pub const SHARE_PORT: u16 = 7446;
/// The offer's key in [`BUNDLE_OFFER`].
const OFFER_KEY: &str = "offer.json";
/// How long the serving certificate is valid: longer than any staging.
const SERVING_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// The group of the kubelets' client certificates.
const NODES_GROUP: &str = "system:nodes";

/// Where a host keeps a fetched bundle: `var/lib/selfnode/bundles/<id>`.
pub fn fetched_dir(paths: &HostPaths, offer: &Offer) -> PathBuf {
    fetched_dir_of(paths, &offer.id())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The cluster CA as the only root.
fn cluster_roots(paths: &HostPaths) -> anyhow::Result<Arc<rustls::RootCertStore>> {
    let ca = paths.ca_cert();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca)
        .with_context(|| format!("reading the cluster CA {}", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("reading {}", ca.display()))?)
            .with_context(|| format!("{} is not a usable CA certificate", ca.display()))?;
    }
    Ok(Arc::new(roots))
}

/// The serving side's TLS: a certificate for `ip` signed with the cluster
/// CA's key (this host must hold the cluster's keys), and client
/// certificates required, verified against the cluster CA.
pub fn server_tls(paths: &HostPaths, ip: IpAddr) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (ca_cert, ca_key) = (paths.ca_cert(), paths.pki_dir().join("ca.key"));
    let read = |p: &PathBuf| {
        std::fs::read(p).with_context(|| {
            format!(
                "reading {} (the bundle is shared from a control-plane host that holds the cluster's keys)",
                p.display()
            )
        })
    };
    let (cert_pem, key_pem) = (read(&ca_cert)?, read(&ca_key)?);
    let (pem, key) = bootstrap::pki::short_lived_serving_cert(
        (&ca_cert, &cert_pem),
        (&ca_key, &key_pem),
        "selfnode-bundle-share",
        &[ip],
        SERVING_VALIDITY,
        SystemTime::now(),
    )?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("reading the serving certificate just made")?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        cluster_roots(paths)?,
        provider(),
    )
    .build()
    .context("the client certificate verifier")?;
    Ok(Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
            .context("the bundle share's TLS configuration")?,
    ))
}

/// Nodes only: the client certificate's subject must be in `system:nodes`.
pub fn nodes_only() -> ClientCheck {
    Arc::new(|cert: &CertificateDer<'_>| {
        let orgs = bootstrap::pki::subject_orgs(cert.as_ref());
        if orgs.iter().any(|o| o == NODES_GROUP) {
            Ok(())
        } else {
            Err(format!(
                "its certificate is not a node's (O={})",
                orgs.join(",")
            ))
        }
    })
}

/// The fetching side's TLS: the cluster CA as the only root, and the
/// kubelet's client certificate (from its kubeconfig: the files it names,
/// `var/lib/kubelet/pki/kubelet-client-current.pem` once rotated, or the
/// certificate and key it embeds) as this host's identity.
pub fn client_tls(paths: &HostPaths) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let (cert_pem, key_pem) = kubelet_identity(paths)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .context("reading the kubelet's client certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).context("reading the kubelet's client key")?;
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(cluster_roots(paths)?)
            .with_client_auth_cert(chain, key)
            .context("the bundle fetch's TLS configuration")?,
    ))
}

/// The kubelet's client certificate and key (PEM), as its kubeconfig
/// gives them.
fn kubelet_identity(paths: &HostPaths) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    /// The part of a kubeconfig that names a user's certificate and key.
    #[derive(serde::Deserialize)]
    struct Kubeconfig {
        #[serde(default)]
        users: Vec<NamedUser>,
    }
    #[derive(serde::Deserialize)]
    struct NamedUser {
        user: User,
    }
    #[derive(serde::Deserialize)]
    struct User {
        #[serde(rename = "client-certificate")]
        cert_file: Option<String>,
        #[serde(rename = "client-certificate-data")]
        cert_data: Option<String>,
        #[serde(rename = "client-key")]
        key_file: Option<String>,
        #[serde(rename = "client-key-data")]
        key_data: Option<String>,
    }
    let file = paths.kubelet_kubeconfig();
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("reading the kubelet's kubeconfig {}", file.display()))?;
    let kc: Kubeconfig = serde_saphyr::from_str(&text)
        .with_context(|| format!("{} is not a kubeconfig", file.display()))?;
    let user = kc
        .users
        .into_iter()
        .next()
        .with_context(|| format!("{} names no user", file.display()))?
        .user;
    let read =
        |path: Option<String>, data: Option<String>, what: &str| -> anyhow::Result<Vec<u8>> {
            match (path, data) {
                (Some(p), _) => std::fs::read(&p)
                    .with_context(|| format!("reading the kubelet's client {what} {p}")),
                (None, Some(d)) => {
                    bootstrap::pki::kubeconfig::decode_data(Some(&d)).with_context(|| {
                        format!(
                            "the kubelet's client {what} in {} is not base64",
                            file.display()
                        )
                    })
                }
                (None, None) => anyhow::bail!("{} has no client {what}", file.display()),
            }
        };
    Ok((
        read(user.cert_file, user.cert_data, "certificate")?,
        read(user.key_file, user.key_data, "key")?,
    ))
}

/// The bundle on offer, if any.
pub async fn offered(client: &kube::Client) -> anyhow::Result<Option<Offer>> {
    read_json(client, BUNDLE_OFFER, OFFER_KEY).await
}

/// Offers `offer` to every host (admin credentials).
pub async fn publish(client: &kube::Client, offer: &Offer) -> anyhow::Result<()> {
    write_json(client, BUNDLE_OFFER, OFFER_KEY, offer).await
}

/// `key` of the kube-system ConfigMap `name`, as JSON; `None` when either
/// is absent.
async fn read_json<T: serde::de::DeserializeOwned>(
    client: &kube::Client,
    name: &str,
    key: &str,
) -> anyhow::Result<Option<T>> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
        .get_opt(name)
        .await
        .with_context(|| format!("reading ConfigMap {NAMESPACE}/{name}"))?;
    let Some(text) = cm.and_then(|c| c.data).and_then(|d| d.get(key).cloned()) else {
        return Ok(None);
    };
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{key} in ConfigMap {NAMESPACE}/{name} does not parse")
    })?))
}

/// The kube-system ConfigMap `name` with `value` as JSON under `key`
/// (server-side apply, ours).
async fn write_json<T: serde::Serialize>(
    client: &kube::Client,
    name: &str,
    key: &str,
    value: &T,
) -> anyhow::Result<()> {
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(NAMESPACE.to_string()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            key.to_string(),
            serde_json::to_string_pretty(value)?,
        )])),
        ..ConfigMap::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await
        .with_context(|| format!("writing ConfigMap {NAMESPACE}/{name}"))?;
    Ok(())
}

/// Takes the offer back: no host fetches it any more.
pub async fn withdraw(client: &kube::Client) -> anyhow::Result<()> {
    delete_config_map(client, BUNDLE_OFFER).await
}

/// Which offered bundle a Node says its host holds.
pub fn held(node: &Node) -> Option<&str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(READY_ANNOTATION)
        .map(String::as_str)
}

/// Says on Node `name` that its host holds the bundle `id` (a kubelet may
/// annotate its own Node).
pub async fn mark_held(client: &kube::Client, name: &str, id: &str) -> anyhow::Result<()> {
    let patch = serde_json::json!({"metadata": {"annotations": {READY_ANNOTATION: id}}});
    Api::<Node>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating Node {name} with {READY_ANNOTATION}"))?;
    Ok(())
}

/// Where this host serves a bundle: its address and [`SHARE_PORT`].
pub fn share_address(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, SHARE_PORT)
}

pub use bootstrap::objects::UPGRADE_TURNS;
/// The turns' key in [`UPGRADE_TURNS`].
const TURNS_KEY: &str = "turns.json";

/// Whose turn it is in an upgrade of several hosts ([`UPGRADE_TURNS`]):
/// the host that runs `selfnode upgrade apply` moves itself; every other
/// host's agent moves when its node is named here, onto the bundle it
/// fetched (`bundles/<bundle>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpgradeTurns {
    /// The bundle's id ([`Offer::id`]).
    pub bundle: String,
    /// Control-plane nodes whose etcd member moves to the bundle's etcd now.
    #[serde(default)]
    pub etcd: Vec<String>,
    /// Nodes whose host (kubelet, containerd, agent) moves to the bundle now.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// The turns, if an upgrade of several hosts is under way.
pub async fn turns(client: &kube::Client) -> anyhow::Result<Option<UpgradeTurns>> {
    read_json(client, UPGRADE_TURNS, TURNS_KEY).await
}

/// Sets the turns (admin credentials).
pub async fn set_turns(client: &kube::Client, turns: &UpgradeTurns) -> anyhow::Result<()> {
    write_json(client, UPGRADE_TURNS, TURNS_KEY, turns).await
}

/// Ends the turns: no agent moves any more.
pub async fn clear_turns(client: &kube::Client) -> anyhow::Result<()> {
    delete_config_map(client, UPGRADE_TURNS).await
}

/// Deletes a kube-system ConfigMap; gone already is fine.
async fn delete_config_map(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    match Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting ConfigMap {NAMESPACE}/{name}")),
    }
}

/// Where a host keeps the fetched bundle `id`: `var/lib/selfnode/bundles/<id>`.
pub fn fetched_dir_of(paths: &HostPaths, id: &str) -> PathBuf {
    paths.state_dir().join("bundles").join(id)
}
