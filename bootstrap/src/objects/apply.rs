//! Talking to the API server: server-side apply of the [`Object`]s, the
//! control-plane Node's label and taint, and the `kubernetes` Service's
//! target port after the pivot.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, Secret, Service, ServiceAccount, ServicePort, ServiceSpec, Taint,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{meta, Object, CONTROL_PLANE_LABEL, NAMESPACE};

/// What applying one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The object did not exist.
    Created,
    /// The object existed and the apply changed it.
    Updated,
    /// The object already was as applied (its resourceVersion did not move).
    Unchanged,
}

/// One applied object, for progress output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The object's `kind`.
    pub kind: &'static str,
    /// Its namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// What the apply did.
    pub outcome: ApplyOutcome,
}

/// A request to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// [`apply_all`]: the server-side apply of one object failed.
    #[error("failed to apply {object} (the API server must be up and the client allowed to apply it: the RBAC bindings must be applied with super-admin.conf, admin.conf only works once they exist)")]
    Apply {
        /// The object, as `<Kind> <namespace>/<name>` (`<Kind> <name>` when
        /// cluster-scoped).
        object: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// [`mark_control_plane`]: a request about the Node failed.
    #[error("failed to {action} node {node}")]
    Node {
        /// The Node's name.
        node: String,
        /// The request: `label`, `read` or `taint`.
        action: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// [`ensure_kubernetes_service_target_port`]: a request about the
    /// `kubernetes` Service failed.
    #[error("failed to {action} the kubernetes Service in the default namespace")]
    KubernetesService {
        /// The request: `read` or `patch`.
        action: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// Applies `objects` with server-side apply as `field_manager`, forcing
/// ownership of the fields they set (selfnode's desired state wins over
/// edits of the same fields; fields it does not set are left alone).
/// Objects are applied in dependency order (see [`Object`]), whatever the
/// order given. Idempotent: a second run reports every object
/// [`ApplyOutcome::Unchanged`].
///
/// Returns one [`Applied`] per object, in apply order; stops at the first
/// failure with [`ApplyError::Apply`].
pub async fn apply_all(
    client: Client,
    objects: &[Object],
    field_manager: &str,
) -> Result<Vec<Applied>, ApplyError> {
    apply_objects(client, objects, field_manager, false).await
}

/// Creates those of `objects` that do not exist (with server-side apply as
/// `field_manager`, in dependency order) and leaves every existing one as
/// it is, whatever it holds: what `selfnode recover` does for deleted
/// control-plane objects, without undoing an upgrade made with kubectl.
///
/// Returns one [`Applied`] per object: [`ApplyOutcome::Created`] or
/// [`ApplyOutcome::Unchanged`]; stops at the first failure with
/// [`ApplyError::Apply`].
pub async fn create_missing(
    client: Client,
    objects: &[Object],
    field_manager: &str,
) -> Result<Vec<Applied>, ApplyError> {
    apply_objects(client, objects, field_manager, true).await
}

async fn apply_objects(
    client: Client,
    objects: &[Object],
    field_manager: &str,
    only_missing: bool,
) -> Result<Vec<Applied>, ApplyError> {
    let mut ordered: Vec<&Object> = objects.iter().collect();
    ordered.sort_by_key(|o| o.apply_rank());
    let pp = PatchParams::apply(field_manager).force();
    let mut out = Vec::with_capacity(ordered.len());
    for obj in ordered {
        let c = client.clone();
        let ns = obj.namespace().unwrap_or(NAMESPACE);
        let result = match obj {
            Object::ServiceAccount(o) => {
                apply_one(namespaced::<ServiceAccount>(c, ns), o, &pp, only_missing).await
            }
            Object::ClusterRole(o) => {
                apply_one(Api::<ClusterRole>::all(c), o, &pp, only_missing).await
            }
            Object::ClusterRoleBinding(o) => {
                apply_one(Api::<ClusterRoleBinding>::all(c), o, &pp, only_missing).await
            }
            Object::Role(o) => apply_one(namespaced::<Role>(c, ns), o, &pp, only_missing).await,
            Object::RoleBinding(o) => {
                apply_one(namespaced::<RoleBinding>(c, ns), o, &pp, only_missing).await
            }
            Object::Secret(o) => apply_one(namespaced::<Secret>(c, ns), o, &pp, only_missing).await,
            Object::ConfigMap(o) => {
                apply_one(namespaced::<ConfigMap>(c, ns), o, &pp, only_missing).await
            }
            Object::Service(o) => {
                apply_one(namespaced::<Service>(c, ns), o, &pp, only_missing).await
            }
            Object::DaemonSet(o) => {
                apply_one(namespaced::<DaemonSet>(c, ns), o, &pp, only_missing).await
            }
            Object::Deployment(o) => {
                apply_one(namespaced::<Deployment>(c, ns), o, &pp, only_missing).await
            }
        };
        let outcome = result.map_err(|source| ApplyError::Apply {
            object: obj.to_string(),
            source,
        })?;
        tracing::info!(object = %obj, ?outcome, "applied");
        out.push(Applied {
            kind: obj.kind(),
            namespace: obj.namespace().map(str::to_string),
            name: obj.name().to_string(),
            outcome,
        });
    }
    Ok(out)
}

fn namespaced<K>(client: Client, ns: &str) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(client, ns)
}

async fn apply_one<K>(
    api: Api<K>,
    obj: &K,
    pp: &PatchParams,
    only_missing: bool,
) -> Result<ApplyOutcome, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let before = api.get_opt(&name).await?.and_then(|o| o.resource_version());
    if only_missing && before.is_some() {
        return Ok(ApplyOutcome::Unchanged);
    }
    let after = api.patch(&name, pp, &Patch::Apply(obj)).await?;
    Ok(match before {
        None => ApplyOutcome::Created,
        Some(rv) if Some(&rv) == after.meta().resource_version.as_ref() => ApplyOutcome::Unchanged,
        Some(_) => ApplyOutcome::Updated,
    })
}

/// The server-side-apply body for a control-plane Node: the label
/// `node-role.kubernetes.io/control-plane: ""` and nothing else.
///
/// The taint is not in it on purpose: `spec.taints` is an atomic list, so
/// applying it would make selfnode own the whole list and a forced apply
/// would drop every other taint (the node lifecycle controller's, the
/// user's). [`mark_control_plane`] adds the taint with an optimistic
/// read-modify-write instead.
pub fn control_plane_node_patch(node_name: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(node_name.to_string()),
            labels: Some(meta::labels(&[(CONTROL_PLANE_LABEL, "")])),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

/// `taints` plus `node-role.kubernetes.io/control-plane:NoSchedule`, or
/// `None` when it is already there.
pub fn with_control_plane_taint(taints: &[Taint]) -> Option<Vec<Taint>> {
    let present = taints
        .iter()
        .any(|t| t.key == CONTROL_PLANE_LABEL && t.effect == "NoSchedule");
    if present {
        return None;
    }
    let mut out = taints.to_vec();
    out.push(Taint {
        key: CONTROL_PLANE_LABEL.to_string(),
        effect: "NoSchedule".to_string(),
        ..Taint::default()
    });
    Some(out)
}

/// Labels and taints `node_name` as a control-plane node (what kubeadm's
/// mark-control-plane phase does). Idempotent; the taint is added with the
/// Node's resourceVersion as a precondition and retried on conflict.
/// With `taint` false, only the label is set.
///
/// Errors with [`ApplyError::Node`].
pub async fn mark_control_plane(
    client: Client,
    node_name: &str,
    field_manager: &str,
    taint: bool,
) -> Result<(), ApplyError> {
    let nodes: Api<Node> = Api::all(client);
    let err = |action: &'static str| {
        let node = node_name.to_string();
        move |source| ApplyError::Node {
            node,
            action,
            source,
        }
    };
    let pp = PatchParams::apply(field_manager).force();
    nodes
        .patch(
            node_name,
            &pp,
            &Patch::Apply(&control_plane_node_patch(node_name)),
        )
        .await
        .map_err(err("label"))?;
    if !taint {
        // A node that also runs workloads (single-node clusters): label only.
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let node = nodes.get(node_name).await.map_err(err("read"))?;
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let Some(taints) = with_control_plane_taint(&current) else {
            return Ok(());
        };
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": node.resource_version() },
            "spec": { "taints": taints },
        });
        match nodes
            .patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.is_conflict() && attempt < 5 => {
                tracing::debug!(
                    node = node_name,
                    attempt,
                    "node changed meanwhile, retrying taint"
                );
            }
            Err(e) => return Err(err("taint")(e)),
        }
    }
}

/// Makes the `kubernetes` Service (default namespace) target the
/// self-hosted apiserver's port. The first apiserver that runs creates that
/// Service with its own port as `targetPort` and none ever corrects it
/// later; the first one is the temporary apiserver (6444), so after the
/// pivot the Service would keep advertising a port nothing serves on.
/// (Clients are not affected today: the Service has no selector, so
/// kube-proxy uses the ports of the EndpointSlices the apiservers write;
/// but `kubectl get svc kubernetes` must not lie, and tools read it.)
/// Returns true if it changed the Service.
///
/// Errors with [`ApplyError::KubernetesService`].
pub async fn ensure_kubernetes_service_target_port(
    client: Client,
    port: u16,
) -> Result<bool, ApplyError> {
    let services: Api<Service> = Api::namespaced(client, "default");
    let err = |action| move |source| ApplyError::KubernetesService { action, source };
    let svc = services.get("kubernetes").await.map_err(err("read"))?;
    let want = IntOrString::Int(i32::from(port));
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let Some(https) = ports.iter().find(|p| p.name.as_deref() == Some("https")) else {
        return Ok(false);
    };
    if https.target_port.as_ref() == Some(&want) {
        return Ok(false);
    }
    // Strategic merge on the ports list (merge key: port), guarded by the
    // resourceVersion.
    let patch = Service {
        metadata: ObjectMeta {
            resource_version: svc.resource_version(),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                port: https.port,
                protocol: https.protocol.clone(),
                target_port: Some(want),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    services
        .patch(
            "kubernetes",
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
        .map_err(err("patch"))?;
    tracing::info!(
        port,
        "kubernetes Service now targets the self-hosted apiserver's port"
    );
    Ok(true)
}
