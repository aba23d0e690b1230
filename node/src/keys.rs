//! Ground floor: how the cluster's keys reach a new control-plane host.
//!
//! The keys live only on control-plane hosts' disks. Every host's agent
//! makes a key pair of its own (`var/lib/selfnode/node-key`, 0600) and
//! publishes its public half on its Node ([`KEY_ANNOTATION`]). When a host
//! is to join the control plane (its control-plane join was approved by a
//! control-plane host's agent, or `selfnode promote NODE` named it), a
//! control-plane host [`promote`]s it: it seals the key files
//! ([`crate::cluster::CLUSTER_KEY_FILES`]) to that public key
//! (`bootstrap::pki::transfer`), stores the sealed bundle in a kube-system
//! Secret only that node may read and delete, and sets the control-plane
//! label with its own identity. The promoted host's agent [`receive`]s it:
//! opens the bundle, writes the files (0600) and deletes the Secret, so the
//! bundle is used once. Nothing in the API ever holds a key in the clear,
//! and a bootstrap token alone can no longer become a node that holds one.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bootstrap::objects::{Object, FIELD_MANAGER, NAMESPACE};
use bootstrap::pki::transfer::{self, KeyBundle, NodeKey, SealedBundle};
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

use crate::cluster::CLUSTER_KEY_FILES;
use crate::fsutil::{ensure_dir, write_atomic};
use crate::paths::HostPaths;

/// Node annotation: the base64 public key a host's cluster keys are
/// sealed to.
pub const KEY_ANNOTATION: &str = "selfnode.dev/key-exchange";
pub use crate::cluster::{keys_here, DEMOTED_ANNOTATION};
/// How long a sealed bundle may be opened.
pub const BUNDLE_TTL: Duration = Duration::from_secs(2 * 3600);
/// The key of the sealed bundle in its Secret.
const BUNDLE_KEY: &str = "bundle.json";

/// The Secret that carries `node`'s sealed key bundle.
pub fn bundle_secret_name(node: &str) -> String {
    format!("selfnode-keys-{node}")
}

/// The Role that lets `node` read and delete its bundle.
fn bundle_role_name(node: &str) -> String {
    format!("selfnode:keys-{node}")
}

/// This host's key pair: made on first use, kept 0600.
pub fn node_key(paths: &HostPaths) -> anyhow::Result<NodeKey> {
    let path = paths.node_key();
    match std::fs::read(&path) {
        Ok(bytes) => Ok(NodeKey::from_private_bytes(&bytes).with_context(|| {
            format!(
                "{} is damaged; remove it, the agent makes a new one",
                path.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = NodeKey::generate();
            if let Some(dir) = path.parent() {
                ensure_dir(dir, 0o755)?;
            }
            write_atomic(&path, &key.private_bytes(), 0o600)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Publishes `key`'s public half on this host's Node (the kubelet's
/// credentials may annotate its own Node). Returns whether it changed.
pub async fn publish_node_key(
    kubelet: &kube::Client,
    node: &str,
    key: &NodeKey,
) -> anyhow::Result<bool> {
    let nodes: Api<Node> = Api::all(kubelet.clone());
    let current = nodes
        .get(node)
        .await
        .with_context(|| format!("reading Node {node}"))?;
    let want = key.public_b64();
    let has = current
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(KEY_ANNOTATION));
    if has == Some(&want) {
        return Ok(false);
    }
    let patch = serde_json::json!({"metadata": {"annotations": {KEY_ANNOTATION: want}}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("publishing this host's key on Node {node}"))?;
    Ok(true)
}

/// The cluster's pin (`sha256:<hex>` of its CA's public key), from this
/// host's `ca.crt`.
pub fn ca_pin(pki_dir: &Path) -> anyhow::Result<String> {
    let ca = pki_dir.join("ca.crt");
    let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
    Ok(bootstrap::pki::ca_cert_hash(&pem)?)
}

/// Where a promotion stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promotion {
    /// Not yet, and why (no Node yet, its key not published yet).
    Waiting(String),
    /// The bundle is stored for the node and the node carries the label.
    Done,
}

/// Promotes `node` (see the module docs), as the caller's identity (a
/// control-plane agent, or `selfnode promote` on a control-plane host): its
/// keys sealed to its published key, readable by that node alone, and the
/// control-plane label (and taint unless `allow_workloads`). Run again, it
/// seals and stores a fresh bundle.
pub async fn promote(
    client: &kube::Client,
    node: &str,
    pki_dir: &Path,
    allow_workloads: bool,
) -> anyhow::Result<Promotion> {
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(n) = nodes
        .get_opt(node)
        .await
        .with_context(|| format!("reading Node {node}"))?
    else {
        return Ok(Promotion::Waiting(format!("no Node {node} yet")));
    };
    let Some(public) = n
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(KEY_ANNOTATION))
        .cloned()
    else {
        return Ok(Promotion::Waiting(format!(
            "the agent of {node} has not published its key yet ({KEY_ANNOTATION})"
        )));
    };
    let mut files = Vec::new();
    for rel in CLUSTER_KEY_FILES {
        let path = pki_dir.join(rel);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "reading {} (only a control-plane host holds the cluster's keys)",
                path.display()
            )
        })?;
        files.push((rel.into(), bytes));
    }
    let bundle = KeyBundle {
        node: node.to_string(),
        expires: crate::status::now_unix() + BUNDLE_TTL.as_secs(),
        files,
    };
    let sealed = transfer::seal(&bundle, &public, &ca_pin(pki_dir)?)?;
    bootstrap::objects::apply_all(
        client.clone(),
        &bundle_objects(node, &sealed)?,
        FIELD_MANAGER,
    )
    .await
    .with_context(|| format!("storing the sealed key bundle of {node}"))?;
    if n.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(DEMOTED_ANNOTATION))
    {
        let patch = serde_json::json!({"metadata": {"annotations": {DEMOTED_ANNOTATION: null}}});
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("clearing the demotion of Node {node}"))?;
    }
    bootstrap::objects::mark_control_plane(client.clone(), node, FIELD_MANAGER, !allow_workloads)
        .await?;
    tracing::info!(%node, "promoted: the cluster's keys sealed to the node, the control-plane label set");
    Ok(Promotion::Done)
}

/// Takes `node` out of the control plane on purpose: marked demoted, its
/// control-plane label and taint removed. Its agent then removes its etcd
/// member (quorum-safely) and the cluster's keys from its disk.
pub async fn demote(client: &kube::Client, node: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes
        .get(node)
        .await
        .with_context(|| format!("reading Node {node}"))?;
    let label = bootstrap::objects::CONTROL_PLANE_LABEL;
    let taints: Vec<_> = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key != label)
        .collect();
    let patch = serde_json::json!({
        "metadata": {
            "annotations": {DEMOTED_ANNOTATION: crate::status::now_unix().to_string()},
            "labels": {label: null},
        },
        "spec": {"taints": taints},
    });
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("demoting Node {node}"))?;
    Ok(())
}

/// What a joined host that left the control plane must not keep: every file
/// under the PKI directory but the cluster CA's certificate (its kubelet
/// checks clients with it), and the control-plane kubeconfigs. Returns how
/// many files it removed.
pub fn remove_control_plane_files(paths: &HostPaths) -> anyhow::Result<usize> {
    use bootstrap::pki::names;
    let pki = paths.pki_dir();
    let mut files: Vec<std::path::PathBuf> = walk(&pki)
        .into_iter()
        .filter(|p| *p != pki.join("ca.crt"))
        .collect();
    for kc in [
        names::ADMIN_CONF,
        names::SUPER_ADMIN_CONF,
        names::CONTROLLER_MANAGER_CONF,
        names::SCHEDULER_CONF,
        names::CONTROL_PLANE_AGENT_CONF,
    ] {
        files.push(paths.kubeconfig_dir().join(kc));
    }
    let mut removed = 0;
    for f in files {
        match std::fs::remove_file(&f) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", f.display())),
        }
    }
    Ok(removed)
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The cluster's settings (`kube-system/selfnode-cluster`).
pub async fn cluster_settings(
    client: &kube::Client,
) -> anyhow::Result<bootstrap::objects::ClusterSettings> {
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), NAMESPACE);
    let cm = cms
        .get(bootstrap::objects::CLUSTER_SETTINGS)
        .await
        .with_context(|| {
            format!(
                "reading {NAMESPACE}/{}",
                bootstrap::objects::CLUSTER_SETTINGS
            )
        })?;
    Ok(bootstrap::objects::ClusterSettings::from_config_map(&cm)?)
}

/// The Secret with `node`'s sealed bundle, and the Role and RoleBinding
/// that let that node (and no one else but the control-plane agents) read
/// and delete it.
fn bundle_objects(node: &str, sealed: &SealedBundle) -> anyhow::Result<Vec<Object>> {
    let meta = |name: String| ObjectMeta {
        name: Some(name),
        namespace: Some(NAMESPACE.to_string()),
        labels: Some(BTreeMap::from([(
            bootstrap::objects::MANAGED_BY_LABEL.to_string(),
            bootstrap::objects::MANAGED_BY_VALUE.to_string(),
        )])),
        ..ObjectMeta::default()
    };
    let secret = bundle_secret_name(node);
    let role = bundle_role_name(node);
    Ok(vec![
        Object::Secret(Secret {
            metadata: meta(secret.clone()),
            type_: Some("Opaque".to_string()),
            data: Some(BTreeMap::from([(
                BUNDLE_KEY.to_string(),
                ByteString(serde_json::to_vec(sealed)?),
            )])),
            ..Secret::default()
        }),
        Object::Role(Role {
            metadata: meta(role.clone()),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["secrets".to_string()]),
                resource_names: Some(vec![secret]),
                verbs: vec!["get".to_string(), "delete".to_string()],
                ..PolicyRule::default()
            }]),
        }),
        Object::RoleBinding(RoleBinding {
            metadata: meta(role.clone()),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".to_string()),
                kind: "Role".to_string(),
                name: role,
            },
            subjects: Some(vec![Subject {
                api_group: Some("rbac.authorization.k8s.io".to_string()),
                kind: "User".to_string(),
                name: format!("{}{node}", bootstrap::pki::names::NODE_USER_PREFIX),
                ..Subject::default()
            }]),
        }),
    ])
}

/// What [`receive`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The keys were here already.
    AlreadyHere,
    /// No bundle for this node (not promoted yet, or used already).
    NoBundle,
    /// The bundle's files were written and the bundle deleted.
    Wrote(usize),
}

/// Takes this node's sealed bundle, if a control-plane host stored one:
/// opens it with this host's key, writes the files under `pki_dir` (0600,
/// in 0700 directories) and deletes the bundle (used once).
pub async fn receive(
    kubelet: &kube::Client,
    node: &str,
    key: &NodeKey,
    pki_dir: &Path,
) -> anyhow::Result<Received> {
    if keys_here(pki_dir) {
        return Ok(Received::AlreadyHere);
    }
    let secrets: Api<Secret> = Api::namespaced(kubelet.clone(), NAMESPACE);
    let name = bundle_secret_name(node);
    let secret = match secrets.get(&name).await {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => {
            return Ok(Received::NoBundle)
        }
        Err(e) => return Err(e).with_context(|| format!("reading Secret {NAMESPACE}/{name}")),
    };
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get(BUNDLE_KEY))
        .with_context(|| format!("Secret {NAMESPACE}/{name} has no {BUNDLE_KEY}"))?;
    let sealed: SealedBundle = serde_json::from_slice(&raw.0)
        .with_context(|| format!("Secret {NAMESPACE}/{name} holds no sealed key bundle"))?;
    let bundle = transfer::open(
        &sealed,
        key,
        node,
        &ca_pin(pki_dir)?,
        crate::status::now_unix(),
    )?;
    let mut wrote = 0;
    for (path, bytes) in bundle.targets(pki_dir) {
        if let Some(dir) = path.parent() {
            ensure_dir(dir, 0o700)?;
        }
        write_atomic(&path, bytes, 0o600).with_context(|| format!("writing {}", path.display()))?;
        wrote += 1;
    }
    match secrets.delete(&name, &Default::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            tracing::warn!(error = %e, secret = %name, "the keys are written, but the used bundle could not be deleted; a control-plane host's agent deletes it");
        }
    }
    tracing::info!(%node, files = wrote, "received the cluster's keys (sealed to this host) and deleted the bundle");
    Ok(Received::Wrote(wrote))
}
