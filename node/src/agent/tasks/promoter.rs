//! Control-plane membership follows intent, not a label: the control-plane
//! hosts' promoter.
//!
//! On every control-plane host that holds the keys, each pass:
//! - **promotes** the nodes recorded for promotion (a control-plane join's
//!   request approved by `approver.rs`): once the node's agent has published
//!   its key, the cluster's keys are sealed to it and the control-plane
//!   label set (`crate::keys::promote`), and the record goes. A record older
//!   than [`INTENT_TTL`] is dropped.
//! - **keeps the role of every etcd member**: a Node that is an etcd member
//!   of the cluster but lacks the control-plane label (deleted and
//!   registered again: the kubelet may not set that label) gets it back,
//!   unless it was demoted on purpose ([`DEMOTED_ANNOTATION`], set by
//!   `selfnode demote`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use bootstrap::objects::{
    ClusterSettings, CLUSTER_SETTINGS, CONTROL_PLANE_LABEL, FIELD_MANAGER, NAMESPACE,
};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

use super::{AgentTask, Outcome, Schedule, TaskCx};
use crate::control::Component;
use crate::keys::{Promotion, DEMOTED_ANNOTATION};
use crate::status::ComponentState;

const PERIOD: Duration = Duration::from_secs(2);
/// The ConfigMap of nodes to promote: node name → `<token id> <unix time>`.
pub const INTENT_CONFIG_MAP: &str = "selfnode-control-plane-intent";
/// How long a recorded promotion waits for its node.
pub const INTENT_TTL: Duration = Duration::from_secs(2 * 3600);

/// Records that `node` (made with control-plane token `token`) is to be
/// promoted.
pub async fn record_intent(client: &kube::Client, node: &str, token: &str) -> anyhow::Result<()> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(INTENT_CONFIG_MAP.to_string()),
            namespace: Some(NAMESPACE.to_string()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            node.to_string(),
            format!("{token} {}", crate::status::now_unix()),
        )])),
        ..ConfigMap::default()
    };
    cms.patch(
        INTENT_CONFIG_MAP,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&cm),
    )
    .await
    .with_context(|| format!("recording {node} for promotion"))?;
    Ok(())
}

/// The promoter (see the module docs).
#[derive(Default)]
pub struct Promoter {
    last: String,
}

impl AgentTask for Promoter {
    const COMPONENT: Component = Component::Promoter;

    fn initial(&self) -> (ComponentState, &'static str) {
        (
            ComponentState::Ready,
            "not a control-plane host with the cluster's keys: nothing to promote here",
        )
    }

    fn schedule(&self) -> Schedule {
        Schedule::every(PERIOD)
    }

    async fn pass(&mut self, cx: &mut TaskCx) -> anyhow::Result<Outcome> {
        let Some(client) = cx.agent_client().await? else {
            return Ok(Outcome::Unchanged);
        };
        let mut notes = Vec::new();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
        let intents = cms
            .get_opt(INTENT_CONFIG_MAP)
            .await?
            .and_then(|c| c.data)
            .unwrap_or_default();
        let allow = cms
            .get_opt(CLUSTER_SETTINGS)
            .await?
            .map(|cm| ClusterSettings::from_config_map(&cm))
            .transpose()?
            .is_some_and(|s| s.allow_workloads);
        for (node, recorded) in intents {
            let at: u64 = recorded
                .split_whitespace()
                .nth(1)
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            if crate::status::now_unix().saturating_sub(at) > INTENT_TTL.as_secs() {
                forget(&cms, &node).await?;
                notes.push(format!(
                    "dropped the promotion of {node}: its node never came"
                ));
                continue;
            }
            match crate::keys::promote(&client, &node, &cx.paths.pki_dir(), allow).await? {
                Promotion::Done => {
                    forget(&cms, &node).await?;
                    notes.push(format!(
                        "promoted {node}: its keys sealed to it, the control-plane label set"
                    ));
                }
                Promotion::Waiting(why) => notes.push(format!("promoting {node}: {why}")),
            }
        }
        notes.extend(keep_members_labelled(cx, &client, !allow).await?);
        let note = notes.join("; ");
        if note == self.last {
            return Ok(Outcome::Unchanged);
        }
        self.last = note.clone();
        Ok(Outcome::ready(if note.is_empty() {
            "promotes the nodes a control-plane join or 'selfnode promote' names; every etcd member's node keeps its role".to_string()
        } else {
            note
        }))
    }

    /// The API does not answer while the cluster comes back.
    fn quiet_errors(&self) -> bool {
        true
    }
}

async fn forget(cms: &Api<ConfigMap>, node: &str) -> anyhow::Result<()> {
    let patch = serde_json::json!({"data": {node: null}});
    cms.patch(
        INTENT_CONFIG_MAP,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .with_context(|| format!("forgetting the promotion of {node}"))?;
    Ok(())
}

/// Gives the control-plane label back to every Node that is an etcd member
/// (by name) and lost it without a demotion.
async fn keep_members_labelled(
    cx: &TaskCx,
    client: &kube::Client,
    taint: bool,
) -> anyhow::Result<Vec<String>> {
    let mut cfg = crate::etcd::config(&cx.paths);
    cfg.timeout = Duration::from_secs(2);
    let Ok(members) = etcd_mgr::members(&cfg).await else {
        return Ok(Vec::new());
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let mut notes = Vec::new();
    for m in members
        .iter()
        .filter(|m| !m.is_learner && !m.name.is_empty())
    {
        let Some(node) = nodes.get_opt(&m.name).await? else {
            continue;
        };
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let annotations = node.metadata.annotations.clone().unwrap_or_default();
        if labels.contains_key(CONTROL_PLANE_LABEL) || annotations.contains_key(DEMOTED_ANNOTATION)
        {
            continue;
        }
        bootstrap::objects::mark_control_plane(client.clone(), &m.name, FIELD_MANAGER, taint)
            .await?;
        tracing::warn!(node = %m.name, "an etcd member's Node had lost its control-plane label (registered again?): gave it back");
        notes.push(format!(
            "gave {} its control-plane label back (an etcd member; not demoted)",
            m.name
        ));
    }
    Ok(notes)
}
