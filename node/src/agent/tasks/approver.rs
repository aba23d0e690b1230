//! A bootstrap token makes a new node, never an existing one: the
//! control-plane hosts' approver of kubelet client certificates.
//!
//! Upstream's auto-approval for bootstrap tokens (`nodeclient`) does not tie
//! the certificate's name to a new node, so a worker join token could ask
//! for `system:node:<a control-plane node>` and read what that node may
//! read. No token group is bound to it any more (the binding of clusters
//! made before is deleted here, [`LEGACY_AUTOAPPROVE_BINDING`]); on every
//! control-plane host that holds the keys (`selfnode-agent.conf` exists),
//! this task looks at every pending client-certificate request of the
//! kubelet signer made with a bootstrap token and
//!
//! - **approves** it when the request is a kubelet's (CN
//!   `system:node:<name>`, O `system:nodes`, no SANs, a valid signature),
//!   its token still exists, and no Node has that name; a single-use token
//!   (every control-plane token, and `token create --usages 1`) is deleted
//!   at once, and a control-plane token's node is recorded for promotion
//!   (`promoter.rs`);
//! - **denies** it, saying why, when a Node of that name exists or the
//!   request asks for anything else.
//!
//! It also approves a kubelet's **serving** certificate (the kubelets run
//! with `serverTLSBootstrap`, and the API server checks them against the
//! cluster CA) when the node asks for its own name and only for names and
//! addresses its Node reports, and denies it otherwise.
//!
//! Requests by nodes renewing their own client certificates are upstream's
//! (`selfnodeclient`); any other request is left to an administrator.

use std::time::Duration;

use anyhow::Context;
use bootstrap::join::{CONTROL_PLANE_TOKEN_GROUP, TOKEN_NAMESPACE, TOKEN_SECRET_PREFIX};
use bootstrap::objects::LEGACY_AUTOAPPROVE_BINDING;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::{AgentTask, Outcome, Schedule, TaskCx};
use crate::control::Component;
use crate::status::ComponentState;
use crate::tokens::SINGLE_USE_LABEL;

const PERIOD: Duration = Duration::from_secs(1);
/// The signer of kubelet client certificates.
const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of kubelet serving certificates.
const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The user prefix of a bootstrap token.
const BOOTSTRAP_USER_PREFIX: &str = "system:bootstrap:";

/// The approver (see the module docs).
#[derive(Default)]
pub struct Approver {
    approved: u64,
    denied: u64,
    /// The legacy binding is gone (looked once per agent).
    legacy_checked: bool,
}

impl AgentTask for Approver {
    const COMPONENT: Component = Component::Approver;

    fn initial(&self) -> (ComponentState, &'static str) {
        (
            ComponentState::Ready,
            "not a control-plane host with the cluster's keys: nothing to approve here",
        )
    }

    fn schedule(&self) -> Schedule {
        Schedule::every(PERIOD)
    }

    async fn pass(&mut self, cx: &mut TaskCx) -> anyhow::Result<Outcome> {
        let Some(client) = cx.agent_client().await? else {
            return Ok(Outcome::Unchanged);
        };
        if !self.legacy_checked {
            delete_legacy_binding(&client).await?;
            self.legacy_checked = true;
        }
        let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
        let mut changed = false;
        for csr in csrs.list(&ListParams::default()).await?.items {
            let Some(decision) = decide(&client, &csr).await? else {
                continue;
            };
            let name = csr.metadata.name.clone().unwrap_or_default();
            changed = true;
            match decision {
                Decision::Serving { node } => {
                    set_condition(
                        &csrs,
                        &csr,
                        "Approved",
                        "SelfnodeKubeletServing",
                        &format!(
                            "node {node}'s serving certificate for its own names and addresses"
                        ),
                    )
                    .await?;
                    self.approved += 1;
                    tracing::info!(csr = %name, %node, "approved a kubelet's serving certificate");
                }
                Decision::Approve { node, token } => {
                    set_condition(
                        &csrs,
                        &csr,
                        "Approved",
                        "SelfnodeNewNode",
                        &format!("a bootstrap token's request for the new node {node}"),
                    )
                    .await?;
                    self.approved += 1;
                    tracing::info!(csr = %name, %node, token = %token.id, "approved a new node's client certificate");
                    if token.single_use {
                        delete_token(&client, &token.id).await?;
                        tracing::info!(token = %token.id, "deleted the single-use token it was made with");
                    }
                    if token.control_plane {
                        super::promoter::record_intent(&client, &node, &token.id).await?;
                    }
                }
                Decision::Deny(why) => {
                    set_condition(&csrs, &csr, "Denied", "SelfnodeRefused", &why).await?;
                    self.denied += 1;
                    tracing::warn!(csr = %name, reason = %why, "denied a client certificate request");
                }
            }
        }
        if !changed {
            return Ok(Outcome::Unchanged);
        }
        Ok(Outcome::ready(format!(
            "approves new nodes' client certificates: {} approved, {} denied since the agent started",
            self.approved, self.denied
        )))
    }

    /// The API does not answer while the cluster comes back.
    fn quiet_errors(&self) -> bool {
        true
    }
}

/// The token a request came with.
struct Token {
    id: String,
    single_use: bool,
    control_plane: bool,
}

enum Decision {
    Approve { node: String, token: Token },
    Serving { node: String },
    Deny(String),
}

/// What to do about `csr`; `None`: not ours to decide (not pending, not the
/// kubelet client signer, not made with a bootstrap token).
async fn decide(
    client: &kube::Client,
    csr: &CertificateSigningRequest,
) -> anyhow::Result<Option<Decision>> {
    let decided = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Approved" || c.type_ == "Denied")
        });
    if decided {
        return Ok(None);
    }
    if csr.spec.signer_name == KUBELET_SERVING_SIGNER {
        return decide_serving(client, csr).await.map(Some);
    }
    if csr.spec.signer_name != KUBELET_CLIENT_SIGNER {
        return Ok(None);
    }
    let Some(token_id) = csr
        .spec
        .username
        .as_deref()
        .and_then(|u| u.strip_prefix(BOOTSTRAP_USER_PREFIX))
    else {
        return Ok(None);
    };
    let node = match bootstrap::pki::csr::node_client_request(&csr.spec.request.0) {
        Ok(node) => node,
        Err(e) => return Ok(Some(Decision::Deny(format!("{e}")))),
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), TOKEN_NAMESPACE);
    let Some(secret) = secrets
        .get_opt(&format!("{TOKEN_SECRET_PREFIX}{token_id}"))
        .await
        .context("reading the request's bootstrap token")?
    else {
        return Ok(Some(Decision::Deny(format!(
            "bootstrap token {token_id} no longer exists (expired, deleted, or single-use and used)"
        ))));
    };
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(&node).await?.is_some() {
        return Ok(Some(Decision::Deny(format!(
            "a Node named {node} exists: a bootstrap token makes new nodes only; join with another --node-name, or delete that Node first if it is gone for good"
        ))));
    }
    let groups = csr.spec.groups.clone().unwrap_or_default();
    let single_use = secret
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.get(SINGLE_USE_LABEL).is_some_and(|v| v == "true"));
    let control_plane = groups.iter().any(|g| g == CONTROL_PLANE_TOKEN_GROUP);
    Ok(Some(Decision::Approve {
        node,
        token: Token {
            id: token_id.to_string(),
            single_use: single_use || control_plane,
            control_plane,
        },
    }))
}

/// A kubelet's serving certificate: requested by the node itself, for its
/// own name, with only names and addresses its Node reports.
async fn decide_serving(
    client: &kube::Client,
    csr: &CertificateSigningRequest,
) -> anyhow::Result<Decision> {
    let req = match bootstrap::pki::csr::kubelet_serving_request(&csr.spec.request.0) {
        Ok(r) => r,
        Err(e) => return Ok(Decision::Deny(format!("{e}"))),
    };
    let requester = csr.spec.username.clone().unwrap_or_default();
    let want = format!("{}{}", bootstrap::pki::names::NODE_USER_PREFIX, req.node);
    if requester != want {
        return Ok(Decision::Deny(format!(
            "{requester} asked for {want}'s serving certificate: a node asks for its own only"
        )));
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(node) = nodes.get_opt(&req.node).await? else {
        return Ok(Decision::Deny(format!("no Node {} exists", req.node)));
    };
    let reported: Vec<String> = node
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.address)
        .collect();
    let unknown: Vec<String> = req
        .dns
        .iter()
        .cloned()
        .chain(req.ips.iter().map(|ip| ip.to_string()))
        .filter(|n| !reported.contains(n))
        .collect();
    if !unknown.is_empty() {
        return Ok(Decision::Deny(format!(
            "node {} asked for names or addresses its Node does not report: {}",
            req.node,
            unknown.join(", ")
        )));
    }
    // A node writes its own addresses: one that claims another node's is
    // refused (it would serve as that node).
    let others = nodes.list(&ListParams::default()).await?;
    for other in others
        .items
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(&req.node))
    {
        let theirs: Vec<String> = other
            .status
            .as_ref()
            .and_then(|s| s.addresses.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .map(|a| a.address)
            .collect();
        if let Some(ip) = req
            .ips
            .iter()
            .map(|ip| ip.to_string())
            .find(|ip| theirs.contains(ip))
        {
            return Ok(Decision::Deny(format!(
                "node {} asked for address {ip}, which Node {} reports",
                req.node,
                other.metadata.name.as_deref().unwrap_or("?")
            )));
        }
    }
    Ok(Decision::Serving { node: req.node })
}

async fn set_condition(
    csrs: &Api<CertificateSigningRequest>,
    csr: &CertificateSigningRequest,
    type_: &str,
    reason: &str,
    message: &str,
) -> anyhow::Result<()> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let mut status = csr.status.clone().unwrap_or_default();
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(CertificateSigningRequestCondition {
            type_: type_.to_string(),
            status: "True".to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            ..CertificateSigningRequestCondition::default()
        });
    let patch = serde_json::json!({"status": {"conditions": status.conditions}});
    csrs.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting {type_} on certificate request {name}"))?;
    Ok(())
}

async fn delete_token(client: &kube::Client, id: &str) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), TOKEN_NAMESPACE);
    match secrets
        .delete(&format!("{TOKEN_SECRET_PREFIX}{id}"), &Default::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e).context("deleting a used single-use token"),
    }
}

/// Deletes the binding that gave bootstrap tokens upstream's group-wide
/// approval, in clusters made by an older selfnode.
async fn delete_legacy_binding(client: &kube::Client) -> anyhow::Result<()> {
    let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
    match crbs
        .delete(LEGACY_AUTOAPPROVE_BINDING, &Default::default())
        .await
    {
        Ok(_) => {
            tracing::info!(
                binding = LEGACY_AUTOAPPROVE_BINDING,
                "deleted the group-wide approval of bootstrap tokens' client certificates"
            );
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e).context("deleting the legacy auto-approval binding"),
    }
}
