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
//! - **removes stale learners**: an etcd learner left by a control-plane
//!   join that failed (its host gone, or reset) blocks every later one
//!   (etcd allows one learner at a time); one that has not answered for
//!   [`LEARNER_SILENT`], or stayed a learner for [`LEARNER_STUCK`], is
//!   removed (a learner does not vote: removing one is always safe). A host
//!   that still wants to join adds itself again.

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

/// How long a learner may not answer before it is removed.
pub const LEARNER_SILENT: Duration = Duration::from_secs(10 * 60);
/// How long a member may stay a learner before it is removed (a learner
/// catches up in seconds to minutes; its host's agent promotes it then).
pub const LEARNER_STUCK: Duration = Duration::from_secs(60 * 60);

/// The promoter (see the module docs).
#[derive(Default)]
pub struct Promoter {
    last: String,
    /// Learners seen, by member id: since when a learner, since when silent.
    learners: BTreeMap<String, (std::time::Instant, Option<std::time::Instant>)>,
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
        let mut cfg = crate::etcd::config(&cx.paths);
        cfg.timeout = Duration::from_secs(2);
        if let Ok(members) = etcd_mgr::members(&cfg).await {
            notes.extend(keep_members_labelled(&client, &members, !allow).await?);
            notes.extend(self.remove_stale_learners(&cfg, &members).await);
        }
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

impl Promoter {
    /// Removes the learners that are stale by [`stale_learner`]; returns
    /// what it did.
    async fn remove_stale_learners(
        &mut self,
        cfg: &etcd_mgr::EtcdConfig,
        members: &[etcd_mgr::MemberStatus],
    ) -> Vec<String> {
        let now = std::time::Instant::now();
        self.learners
            .retain(|id, _| members.iter().any(|m| m.is_learner && &m.id == id));
        let mut notes = Vec::new();
        for m in members.iter().filter(|m| m.is_learner) {
            let seen = self.learners.entry(m.id.clone()).or_insert((now, None));
            seen.1 = if m.healthy {
                None
            } else {
                Some(seen.1.unwrap_or(now))
            };
            let Some(why) = stale_learner(now, *seen) else {
                continue;
            };
            let name = if m.name.is_empty() {
                "(never started)"
            } else {
                &m.name
            };
            match etcd_mgr::members::remove(cfg, &m.id, Duration::from_secs(30)).await {
                Ok(_) => {
                    tracing::warn!(member = %m.id, %name, %why, "removed a stale etcd learner");
                    notes.push(format!(
                        "removed the stale etcd learner {name} ({}): {why}",
                        m.id
                    ));
                    self.learners.remove(&m.id);
                }
                Err(e) => notes.push(format!(
                    "could not remove the stale etcd learner {name} ({}): {e}",
                    m.id
                )),
            }
        }
        notes
    }
}

/// Why a learner seen since `since` (and silent since `silent`) is stale,
/// if it is.
fn stale_learner(
    now: std::time::Instant,
    (since, silent): (std::time::Instant, Option<std::time::Instant>),
) -> Option<String> {
    if let Some(s) = silent.filter(|s| now.duration_since(*s) >= LEARNER_SILENT) {
        return Some(format!(
            "it has not answered for {} min",
            now.duration_since(s).as_secs() / 60
        ));
    }
    (now.duration_since(since) >= LEARNER_STUCK).then(|| {
        format!(
            "it has been a learner for {} min without catching up",
            now.duration_since(since).as_secs() / 60
        )
    })
}

/// Gives the control-plane label back to every Node that is an etcd member
/// (by name) and lost it without a demotion.
async fn keep_members_labelled(
    client: &kube::Client,
    members: &[etcd_mgr::MemberStatus],
    taint: bool,
) -> anyhow::Result<Vec<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_learner_is_stale_when_silent_or_stuck_long_enough() {
        let t0 = Instant::now();
        let at = |d: Duration| t0 + d;
        // Answering and young: kept.
        assert_eq!(stale_learner(at(Duration::from_secs(60)), (t0, None)), None);
        // Silent, but not for long: kept.
        let silent = Some(at(Duration::from_secs(60)));
        assert_eq!(
            stale_learner(at(Duration::from_secs(300)), (t0, silent)),
            None
        );
        // Silent for LEARNER_SILENT: removed.
        let why =
            stale_learner(at(Duration::from_secs(60) + LEARNER_SILENT), (t0, silent)).unwrap();
        assert!(why.contains("not answered for 10 min"), "{why}");
        // Answering but a learner for LEARNER_STUCK: removed.
        let why = stale_learner(at(LEARNER_STUCK), (t0, None)).unwrap();
        assert!(why.contains("learner for 60 min"), "{why}");
    }
}
