//! The control plane comes back with nothing to ask: the agent's checkpointer.
//!
//! The self-hosted API server is a DaemonSet pod, so its spec lives only in
//! the API: after a power cut the kubelet restarts etcd (a static pod) but
//! never the API server. This task closes that loop, as bootkube's
//! pod-checkpointer did, with the copy kept in the node's sled checkpoint:
//!
//! - **Keep** (every [`PERIOD`]): with the kubelet's own credentials (the
//!   Node authorizer lets it read its pods and what they mount), list the
//!   [`CHECKPOINTED`] pods bound to this node. A pod that is Ready in the API
//!   *and* has its containers running in containerd is kept, with the Secrets
//!   and ConfigMaps it mounts ([`PodCheckpoint`]); a pod that is not Ready is
//!   never kept, so a bad flag applied through the API is not what comes back
//!   (last known good).
//! - **Recover** (at agent start, when containerd is ready, and at every
//!   pass that cannot reach the API): if no API server container runs on
//!   this host (learned from containerd, never from the kubelet), the kept
//!   copy is written as a static pod
//!   (`<component>-checkpoint`), its Secrets and ConfigMaps as 0600 files
//!   under `etc/kubernetes/checkpoint-volumes`. The kubelet starts it, the API
//!   answers, and the kubelet then starts the self-hosted pods bound to it.
//!   Not only at start: a kubelet that started while the API was down
//!   knows no pod from the API, so an API server container that stops then
//!   (a crash, or this host's restart onto renewed files, `crate::certs`)
//!   is started again by nobody else.
//!   The controller-manager's and scheduler's copies are not started here
//!   (their pods come back once the API does); `selfnode recover` starts them
//!   when their Deployments are gone or crash-looping (`crate::recover`).
//! - **Hand back**: once a self-hosted pod of a component with a running
//!   copy is Ready and running here, the static copy and its files go. Both
//!   bind the same port with `--permit-port-sharing`, so there is no gap.
//! - **Prune**: once the node has not carried the control-plane label for
//!   [`PRUNE_AFTER`] while the API answered (it left the control plane), at
//!   once when `selfnode demote` took it out, its copies are deleted and a
//!   running one stopped, so none serves (without an etcd member) or comes
//!   back on a node that is not meant to serve the API.
//!
//! A corrupt checkpoint is reported in `selfnode status` and never used.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec};
use kube::api::{Api, ListParams};

use super::{AgentTask, Outcome, Schedule, TaskCx};
use crate::agent::static_copy::{activate, copy_paths, deactivate};
use crate::checkpoint::{with_checkpoint, PodCheckpoint};
use crate::cluster::{node_role, NodeRole};
use crate::control::{Component, NodeIdentity};
use crate::readiness::{is_mirror, pod_ready, running_containers, status_is_current, NotYet};
use crate::status::{now_unix, ComponentState};

/// One control-plane component the checkpointer keeps.
pub struct Kept {
    /// The pods' `k8s-app` label and container name.
    pub component: &'static str,
    /// Started from the checkpoint at agent start when no container of it
    /// runs. Only the API server: once it answers, the kubelet restarts the
    /// controller-manager and scheduler pods bound to the node; their copies
    /// are for `selfnode recover` (deleted or crash-looping Deployments).
    pub at_agent_start: bool,
}

/// Control-plane components kept, by their pods' `k8s-app` label.
pub const CHECKPOINTED: &[Kept] = &[
    Kept {
        component: "kube-apiserver",
        at_agent_start: true,
    },
    Kept {
        component: "kube-controller-manager",
        at_agent_start: false,
    },
    Kept {
        component: "kube-scheduler",
        at_agent_start: false,
    },
];
/// How often the pods are looked at.
pub const PERIOD: Duration = Duration::from_secs(5);
/// How long the API must answer without the node's control-plane label
/// before its copies are pruned.
pub const PRUNE_AFTER: Duration = Duration::from_secs(600);
const NAMESPACE: &str = "kube-system";

/// The checkpointer's memory between passes.
pub struct Checkpointer {
    /// What sled holds, so an unchanged pod costs no open of the database.
    kept: BTreeMap<String, PodCheckpoint>,
    /// Since when the API has answered without the node's control-plane
    /// label.
    unlabelled_since: Option<Instant>,
    /// How often the checkpoint is read back from disk and checked.
    verify_every: Duration,
    last_verified: Option<Instant>,
    /// When the last check found something wrong, and what, until a check
    /// passes again.
    damage: Option<String>,
    /// When the checkpoint last read back whole after damage, and what
    /// status says of it (for [`HEALED_SHOWN`]).
    healed: Option<(Instant, String)>,
}

/// How long status says that the checkpoint healed from damage.
const HEALED_SHOWN: Duration = Duration::from_secs(3600);

impl Checkpointer {
    pub fn new(verify_every: Duration) -> Checkpointer {
        Checkpointer {
            kept: BTreeMap::new(),
            unlabelled_since: None,
            verify_every,
            last_verified: None,
            damage: None,
            healed: None,
        }
    }
}

impl AgentTask for Checkpointer {
    const COMPONENT: Component = Component::Checkpoint;

    fn initial(&self) -> (ComponentState, &'static str) {
        (
            ComponentState::Ready,
            "nothing kept: no control-plane pod of this node seen Ready",
        )
    }

    fn schedule(&self) -> Schedule {
        Schedule::every(PERIOD)
    }

    async fn start(&mut self, cx: &mut TaskCx) -> anyhow::Result<Outcome> {
        Ok(match recover(cx, Recovery::AtStart).await? {
            Some(note) => {
                tracing::warn!(%note, "control plane recovery");
                Outcome::Report(ComponentState::Starting, note)
            }
            None => Outcome::Unchanged,
        })
    }

    async fn pass(&mut self, cx: &mut TaskCx) -> anyhow::Result<Outcome> {
        let verified = self.verify(cx).await;
        let kept = self.keep_and_hand_back(cx).await;
        // Damage is reported whatever else the pass found (a checkpoint
        // that cannot be opened fails the keep step too).
        if let Some(damage) = &self.damage {
            let after = match &kept {
                Ok(Some(note)) => format!("; {note}"),
                Ok(None) => String::new(),
                Err(e) => format!("; this pass: {e:#}"),
            };
            return Ok(Outcome::Report(
                ComponentState::Unhealthy,
                format!(
                    "the checkpoint is damaged: {damage}; the copies of the pods Ready here are written again once it opens, and it is checked again at every pass until it reads back whole{after}"
                ),
            ));
        }
        let note = match kept {
            Ok(note) => note,
            Err(e) => {
                // No API: if no API server runs here either, nothing but
                // the kept copy brings one back.
                match recover(cx, Recovery::WithoutApi).await {
                    Ok(Some(note)) => {
                        tracing::warn!(%note, "control plane recovery");
                        return Ok(Outcome::Report(ComponentState::Starting, note));
                    }
                    Ok(None) => {}
                    // The pass's own error says more.
                    Err(r) => {
                        tracing::debug!(error = %format!("{r:#}"), "no recovery without the API")
                    }
                }
                return Err(e);
            }
        };
        if let Verified::Healed { entries, damage } = verified {
            self.healed = Some((
                Instant::now(),
                format!(
                    "the checkpoint reads back whole again ({entries} entries checked) after damage found at {damage}; the copies of the pods Ready here were written again"
                ),
            ));
        }
        // Said with every note for a while: the copy kept (the note of
        // every pass that keeps one) would hide it at the next pass.
        let healed = self
            .healed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < HEALED_SHOWN)
            .map(|(_, text)| text.clone());
        Ok(match (note, healed) {
            (Some(note), Some(healed)) => Outcome::ready(format!("{healed}; {note}")),
            (None, Some(healed)) => Outcome::ready(healed),
            (Some(note), None) => Outcome::ready(note),
            (None, None) => Outcome::Unchanged,
        })
    }

    /// Not a failure of its own while the API is coming back: kept as the
    /// reason for whatever state it is in.
    fn quiet_errors(&self) -> bool {
        true
    }
}

/// What a pass's check of the checkpoint found.
enum Verified {
    /// Not due.
    NotDue,
    Whole,
    /// Whole, after damage found before (when, and what).
    Healed {
        entries: usize,
        damage: String,
    },
    Damaged,
}

impl Checkpointer {
    /// Reads the checkpoint back from disk and checks it, every
    /// `verify_every`, and at every pass while it is damaged. On damage the
    /// copies held in memory are forgotten, so this pass writes the Ready
    /// pods' copies again (what can be healed from here).
    async fn verify(&mut self, cx: &TaskCx) -> Verified {
        let due = self.damage.is_some()
            || self
                .last_verified
                .is_none_or(|t| t.elapsed() >= self.verify_every);
        if !due {
            return Verified::NotDue;
        }
        self.last_verified = Some(Instant::now());
        let dir = cx.paths.checkpoint_dir();
        if !dir.exists() {
            return Verified::Whole;
        }
        match with_checkpoint(&dir, |cp| cp.verify()).await {
            Ok(n) => match self.damage.take() {
                Some(was) => {
                    tracing::info!(entries = n, damage = %was, "the checkpoint reads back whole again");
                    Verified::Healed {
                        entries: n,
                        damage: was,
                    }
                }
                None => {
                    tracing::debug!(entries = n, "checkpoint verified");
                    Verified::Whole
                }
            },
            // Held by a command for a while: not damage.
            Err(e)
                if matches!(
                    e.downcast_ref::<crate::checkpoint::CheckpointError>(),
                    Some(crate::checkpoint::CheckpointError::Locked { .. })
                ) =>
            {
                Verified::NotDue
            }
            Err(e) => {
                let e = format!("{e:#}");
                if self.damage.as_ref().is_none_or(|d| !d.ends_with(&e)) {
                    tracing::error!(error = %e, "the checkpoint does not read back as written");
                    let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                    self.damage = Some(format!("{at}: {e}"));
                }
                self.kept.clear();
                Verified::Damaged
            }
        }
    }
}

/// When [`recover`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// Once, at agent start.
    AtStart,
    /// A pass that could not reach the API.
    WithoutApi,
}

/// Writes the static copies when no API server runs here. Returns what it
/// did, or `None` when there was nothing to do.
async fn recover(ctx: &TaskCx, when: Recovery) -> anyhow::Result<Option<String>> {
    // While a sequence owns the control plane (init before its pivot, a
    // restore) an API server that does not run is its doing.
    if when == Recovery::WithoutApi
        && !crate::cluster::HostCluster::load_async(&ctx.paths)
            .await?
            .is_some_and(|c| c.settled())
    {
        return Ok(None);
    }
    let kept = match read_checkpoint(ctx).await? {
        Some(kept) if !kept.is_empty() => kept,
        _ => return Ok(None),
    };
    let running = running_containers(&ctx.containerd_socket).await?;
    let mut notes = Vec::new();
    for cp in &kept {
        let copy = copy_paths(&ctx.paths, &cp.component);
        if copy.manifest.exists() {
            if when == Recovery::AtStart {
                notes.push(format!(
                    "running the checkpoint copy of {} (left by the previous agent)",
                    cp.describe()
                ));
            }
            continue;
        }
        if running.iter().any(|c| c.container == cp.component) {
            continue; // an agent restart: the self-hosted pod kept running
        }
        if !CHECKPOINTED
            .iter()
            .any(|k| k.component == cp.component && k.at_agent_start)
        {
            continue;
        }
        activate(&ctx.paths, cp)?;
        notes.push(format!(
            "no {} container {}: started the checkpoint copy of {}, kept {}",
            cp.component,
            match when {
                Recovery::AtStart => "ran at agent start",
                Recovery::WithoutApi => "runs and the API does not answer",
            },
            cp.describe(),
            crate::status::human_age(cp.observed_at, now_unix())
        ));
    }
    Ok((!notes.is_empty()).then(|| notes.join("; ")))
}

/// Opens the sled checkpoint briefly (init and other commands open it too),
/// retrying while another selfnode command holds it.
async fn read_checkpoint(ctx: &TaskCx) -> anyhow::Result<Option<Vec<PodCheckpoint>>> {
    let dir = ctx.paths.checkpoint_dir();
    if !dir.exists() {
        return Ok(None);
    }
    with_checkpoint(&dir, |cp| cp.pods()).await.map(Some)
}

impl Checkpointer {
    /// One pass: keep what is Ready, hand back what the self-hosted pods
    /// serve, prune what this node no longer runs. Returns the status note:
    /// what changed, then every copy kept.
    async fn keep_and_hand_back(&mut self, ctx: &mut TaskCx) -> anyhow::Result<Option<String>> {
        let Some(node) = NodeIdentity::read(&ctx.paths.node_identity_file())? else {
            return Ok(None);
        };
        let Some(client) = ctx.kubelet_client().await? else {
            return Ok(None);
        };
        let dir = ctx.paths.checkpoint_dir();
        let kept = &mut self.kept;
        if kept.is_empty() {
            // First pass: what an earlier agent kept (a damaged entry reads
            // as none and is written again).
            if let Ok(all) = with_checkpoint(&dir, |c| c.pods()).await {
                kept.extend(all.into_iter().map(|p| (p.component.clone(), p)));
            }
        }
        let mut notes = Vec::new();
        let role = node_role(&client, &node.node_name).await?;
        if role == NodeRole::ControlPlane {
            self.unlabelled_since = None;
        } else {
            // The node left the control plane (its label is gone, so the
            // DaemonSet took its API server away): its copies must not come
            // back after the next power cut, and a copy running now (after
            // a power cut, not handed back yet) serves without an etcd
            // member. Demoted on purpose: at once. Otherwise only once the
            // API has answered without the label for PRUNE_AFTER: a label
            // removed by mistake on the only control-plane node takes the
            // API down within moments, and that node's copies are what
            // `selfnode recover` needs then.
            let since = *self.unlabelled_since.get_or_insert_with(Instant::now);
            if (role != NodeRole::Demoted && since.elapsed() < PRUNE_AFTER) || kept.is_empty() {
                return Ok(None);
            }
            for component in std::mem::take(kept).into_keys() {
                deactivate(&ctx.paths, &component)?;
                with_checkpoint(&dir, {
                    let c = component.clone();
                    move |cp| cp.remove_pod(&c)
                })
                .await?;
                tracing::info!(%component, "node is not a control-plane node: pruned its checkpoint copy");
                notes.push(format!(
                    "pruned {component}: this node left the control plane"
                ));
            }
            return Ok((!notes.is_empty()).then(|| notes.join("; ")));
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
        let running = running_containers(&ctx.containerd_socket).await?;
        for component in CHECKPOINTED.iter().map(|k| k.component) {
            let list = pods
                .list(
                    &ListParams::default()
                        .labels(&format!("k8s-app={component}"))
                        .fields(&format!("spec.nodeName={}", node.node_name)),
                )
                .await
                .with_context(|| format!("listing the {component} pods of this node"))?;
            // The self-hosted pod (not a mirror of a static copy, not going
            // away) that is Ready in the API, by a status that names the
            // containers running here now: after a power cut the pod's status
            // says Ready for containers that are gone until the kubelet
            // reports again, and its restarted container (same pod UID) may
            // not serve yet. The rule `init` and `recover` wait by.
            let serving = list.items.iter().find(|p| {
                !is_mirror(p)
                    && p.metadata.deletion_timestamp.is_none()
                    && pod_ready(p)
                    && status_is_current(p, &running).is_ok()
            });
            let Some(pod) = serving else { continue };
            let cp = match fetch(&client, component, pod).await? {
                Ok(cp) => cp,
                Err(refused) => {
                    notes.push(refused.0);
                    continue;
                }
            };
            if !kept.get(component).is_some_and(|s| s.same_content(&cp)) {
                let copy = cp.clone();
                with_checkpoint(&dir, move |c| c.put_pod(&copy)).await?;
                tracing::info!(pod = %cp.describe(), "checkpointed: the last known good copy");
                notes.push(format!("kept {}", cp.describe()));
                kept.insert(component.to_string(), cp.clone());
            }
            if copy_paths(&ctx.paths, component).manifest.exists() {
                deactivate(&ctx.paths, component)?;
                tracing::info!(pod = %cp.describe(), "self-hosted pod Ready: removed the checkpoint copy");
                notes.push(format!(
                    "self-hosted {} is Ready: the checkpoint copy is gone",
                    cp.describe()
                ));
            }
        }
        if !kept.is_empty() {
            let copies: Vec<String> = kept.values().map(PodCheckpoint::describe).collect();
            notes.push(format!("last known good: {}", copies.join(", ")));
        }
        Ok((!notes.is_empty()).then(|| notes.join("; ")))
    }
}

/// The pod with the ConfigMaps its volumes name. The inner `Err` says why
/// the pod is not kept: it mounts a Secret (a checkpoint never holds one;
/// the control plane's keys are the hosts' files).
async fn fetch(
    client: &kube::Client,
    component: &str,
    pod: &Pod,
) -> anyhow::Result<Result<PodCheckpoint, NotYet>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or(NAMESPACE);
    let (secret_names, cm_names) = mounted_names(pod.spec.as_ref());
    if !secret_names.is_empty() {
        let why = format!(
            "not kept: pod {} mounts Secret(s) {} (a checkpoint holds no Secret; the control plane's keys are files on the control-plane hosts)",
            pod.metadata.name.as_deref().unwrap_or("?"),
            secret_names.join(", ")
        );
        tracing::warn!(%component, "{why}");
        return Ok(Err(NotYet(why)));
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut out = PodCheckpoint {
        component: component.to_string(),
        pod: pod.clone(),
        config_maps: Vec::new(),
        observed_at: now_unix(),
    };
    for name in cm_names {
        out.config_maps.push(
            cms.get(&name)
                .await
                .with_context(|| format!("reading ConfigMap {ns}/{name}"))?,
        );
    }
    Ok(Ok(out))
}

/// Secret and ConfigMap names a pod's volumes mount (also inside projected
/// volumes), each once.
fn mounted_names(spec: Option<&PodSpec>) -> (Vec<String>, Vec<String>) {
    let mut secrets = std::collections::BTreeSet::new();
    let mut cms = std::collections::BTreeSet::new();
    for v in spec.and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(name);
        }
        if let Some(cm) = &v.config_map {
            cms.insert(cm.name.clone());
        }
        for src in v
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some(s) = &src.secret {
                secrets.insert(s.name.clone());
            }
            if let Some(c) = &src.config_map {
                cms.insert(c.name.clone());
            }
        }
    }
    (secrets.into_iter().collect(), cms.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounted_names_include_projected_sources() {
        use k8s_openapi::api::core::v1::{
            ProjectedVolumeSource, SecretProjection, Volume, VolumeProjection,
        };
        let mut spec = crate::agent::static_copy::tests::kept().pod.spec.unwrap();
        let (s, c) = mounted_names(Some(&spec));
        assert!(s.is_empty(), "hostPath keys and a token are no Secrets");
        assert_eq!(c, vec!["apiserver-config".to_string()]);
        spec.volumes.as_mut().unwrap().push(Volume {
            name: "projected".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    secret: Some(SecretProjection {
                        name: "kube-apiserver".into(),
                        ..SecretProjection::default()
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        });
        let (s, _) = mounted_names(Some(&spec));
        assert_eq!(s, vec!["kube-apiserver".to_string()], "so it is not kept");
    }
}
