//! The etcd member of a control-plane node, driven by the node's label: the
//! agent's member controller.
//!
//! The kube-apiserver is a DaemonSet on the nodes labelled
//! `node-role.kubernetes.io/control-plane`, and each API server talks to
//! the etcd member on its own node (loopback). So a node that gets the
//! label (`selfnode join --control-plane`, or `kubectl label node`) needs
//! an etcd member, and one that loses it must give its member up. Every
//! [`PERIOD`] this task compares the label with what the node runs:
//!
//! - **Join** (labelled, no member recorded, a host that joined): reads
//!   the etcd CA from the `selfnode-etcd-ca` Secret with the kubelet's
//!   credentials (the Node authorizer allows it once the DaemonSet's pod,
//!   which names that Secret, is bound here), issues this member's server,
//!   peer and healthcheck certificates (the CA key stays in memory), adds
//!   the member as a **learner** through the other control-plane nodes'
//!   members (found at the addresses of the `kubernetes` EndpointSlice: each
//!   API server runs beside its member; a learner does not count for
//!   quorum), writes its static pod
//!   (`--initial-cluster-state existing`), and **promotes** it once etcd
//!   says it is in sync. The promoted member's identity goes into the
//!   checkpoint, as at init. Each pass resumes where the last stopped: the
//!   learner is found by its peer URL, the manifest rewritten only when it
//!   differs.
//! - **Leave** (the label gone for [`LEAVE_AFTER`] while the API answers,
//!   a member recorded or its manifest present): removes the member through
//!   etcd-mgr's quorum-safe `remove` (refused while the remaining voters
//!   could not form a quorum, e.g. the last voter, so the only
//!   control-plane node never removes its own member), then its static pod,
//!   then moves its data directory aside (`etcd.removed-<unix time>`; a
//!   removed member can never rejoin with it) and forgets it.
//!
//! - **Renew** (a joined host's recorded member, at agent start and every
//!   [`CERT_CHECK`]): the member's certificates are issued again from the
//!   Secret's CA when less than 30 days are left; etcd reads its
//!   certificate files at each new connection, so nothing restarts.
//!
//! The first host's member is made by `selfnode init` (the pivot); this
//! task never adds one while a sequence owns etcd (the pivot marker is not
//! committed yet, or a restore runs).

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bootstrap::host::Host;
use bootstrap::objects::{ClusterSettings, CLUSTER_SETTINGS};
use bootstrap::plane::{EtcdInitial, InitialClusterState, Placement, PlaneSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;

use super::{AgentTask, Outcome, Schedule, TaskCx};
use crate::checkpoint::{with_checkpoint, EtcdMemberIdentity};
use crate::cluster::{apiserver_addresses, HostCluster};
use crate::control::{Component, NodeIdentity};
use crate::host::NodeHost;
use crate::paths::HostPaths;
use crate::readiness::NotYet;
use crate::status::ComponentState;

/// How often the label is compared with the member.
const PERIOD: Duration = Duration::from_secs(5);
/// How long the label must stay gone, with the API answering, before the
/// member leaves: a label removed and put back at once changes nothing.
pub const LEAVE_AFTER: Duration = Duration::from_secs(30);
/// How often a joined member's certificates are checked (the first pass
/// after the agent starts checks at once).
const CERT_CHECK: Duration = Duration::from_secs(3600);
/// How long one pass waits for a new learner to catch up before the next
/// pass tries again.
const PROMOTE_WAIT: Duration = Duration::from_secs(60);

/// The member controller's memory between passes.
#[derive(Default)]
pub struct MemberController {
    /// Since when the API has answered without the node's control-plane
    /// label (after a demotion).
    unlabelled_since: Option<Instant>,
    last_cert_check: Option<Instant>,
    /// This host's key is published on its Node.
    key_published: bool,
}

impl AgentTask for MemberController {
    const COMPONENT: Component = Component::EtcdMember;

    fn initial(&self) -> (ComponentState, &'static str) {
        (ComponentState::Ready, "no cluster settled on this host yet")
    }

    fn schedule(&self) -> Schedule {
        Schedule::every(PERIOD)
    }

    async fn pass(&mut self, cx: &mut TaskCx) -> anyhow::Result<Outcome> {
        Ok(match self.compare(cx).await? {
            Some(note) => Outcome::ready(note),
            None => Outcome::Unchanged,
        })
    }
}

impl MemberController {
    /// A promoted host that joined: its cluster keys, sealed to it by a
    /// control-plane host, then its own certificates and kubeconfigs and
    /// the control plane's configuration files. Returns the status note.
    async fn take_keys(
        &mut self,
        ctx: &mut TaskCx,
        client: &kube::Client,
        node: &NodeIdentity,
    ) -> anyhow::Result<String> {
        let key = crate::keys::node_key(&ctx.paths)?;
        let pki_dir = ctx.paths.pki_dir();
        match crate::keys::receive(client, &node.node_name, &key, &pki_dir).await? {
            crate::keys::Received::NoBundle => {
                return Ok("control-plane node: waiting for a control-plane host to seal the cluster's keys to this host".into());
            }
            crate::keys::Received::AlreadyHere | crate::keys::Received::Wrote(_) => {}
        }
        let spec = node_plane_spec(ctx, client, node).await?;
        let pki = spec.pki_spec();
        let report = tokio::task::spawn_blocking(move || {
            bootstrap::pki::ensure_joined_control_plane_pki(&NodeHost, &pki, SystemTime::now())
        })
        .await??;
        // The audit policy and admission configuration its API server reads.
        bootstrap::plane::ensure_apiserver_files(&NodeHost, &spec)?;
        Ok(format!(
            "received the cluster's keys; made this host's control-plane certificates ({} files)",
            report.changed().count()
        ))
    }

    /// One comparison of label and member; returns the status note.
    async fn compare(&mut self, ctx: &mut TaskCx) -> anyhow::Result<Option<String>> {
        let Some(node) = NodeIdentity::read(&ctx.paths.node_identity_file())? else {
            return Ok(None);
        };
        let Some(rec) = HostCluster::load_async(&ctx.paths).await? else {
            return Ok(None);
        };
        if !rec.settled() {
            return Ok(None);
        }
        let Some(client) = ctx.kubelet_client().await? else {
            return Ok(None);
        };
        let joined = rec.role().joined();
        // Every host publishes the key its cluster keys would be sealed to,
        // so any of them can be promoted later.
        if !self.key_published {
            let key = crate::keys::node_key(&ctx.paths)?;
            crate::keys::publish_node_key(&client, &node.node_name, &key).await?;
            self.key_published = true;
        }
        let n = Api::<Node>::all(client.clone())
            .get(&node.node_name)
            .await
            .with_context(|| format!("reading Node {}", node.node_name))?;
        let labelled = n
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(bootstrap::objects::CONTROL_PLANE_LABEL));
        let demoted = n
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(crate::keys::DEMOTED_ANNOTATION));
        let has_member = rec.etcd_member.is_some() || ctx.paths.etcd_manifest().exists();
        if labelled {
            self.unlabelled_since = None;
            if joined && !crate::cluster::keys_here(&ctx.paths.pki_dir()) {
                return self.take_keys(ctx, &client, &node).await.map(Some);
            }
            if let Some(m) = &rec.etcd_member {
                // A joined member's certificates come from its agent (the
                // first host's from init and its agent's certificate check):
                // renewed here once they have less than 30 days left. etcd
                // reads its certificate files at each new connection.
                if joined
                    && self
                        .last_cert_check
                        .is_none_or(|t| t.elapsed() >= CERT_CHECK)
                {
                    self.last_cert_check = Some(Instant::now());
                    if let Ok((_, report)) = issue_member_certs(ctx, &client, &node).await? {
                        let renewed = report.changed().count();
                        if renewed > 0 {
                            tracing::info!(
                                files = renewed,
                                "etcd member: re-issued its certificates"
                            );
                        }
                        // The host's other control-plane certificates and
                        // kubeconfigs are the certificates task's, as on
                        // every control-plane host (`crate::certs`).
                    }
                }
                return Ok(Some(format!("etcd member {} ({}) runs here", m.name, m.id)));
            }
            if !joined {
                // The first host's member belongs to init and `recover`.
                return Ok(None);
            }
            return join_member(ctx, &client, &node).await.map(Some);
        }
        if !has_member {
            return Ok(Some("not a control-plane node: no etcd member here".into()));
        }
        if !demoted {
            // Deleted and registered again, or the label removed by hand:
            // the member stays; a control-plane host's promoter gives the
            // label back. Only 'selfnode demote' takes a member out.
            self.unlabelled_since = None;
            return Ok(Some(format!(
                "the Node lost its control-plane label without 'selfnode demote': the etcd member stays and a control-plane host gives the label back (annotation {} absent)",
                crate::keys::DEMOTED_ANNOTATION
            )));
        }
        let since = *self.unlabelled_since.get_or_insert_with(Instant::now);
        if since.elapsed() < LEAVE_AFTER {
            return Ok(Some(format!(
                "the node lost its control-plane label: its etcd member leaves in {} s unless the label comes back",
                LEAVE_AFTER.saturating_sub(since.elapsed()).as_secs()
            )));
        }
        leave_member(ctx, &client, &node, rec.etcd_member.as_ref(), joined)
            .await
            .map(Some)
    }
}

/// The cluster's settings as this node's [`PlaneSpec`] (its etcd flags,
/// certificates and paths): name and address from the node's identity.
async fn node_plane_spec(
    ctx: &TaskCx,
    client: &kube::Client,
    node: &NodeIdentity,
) -> anyhow::Result<PlaneSpec> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), bootstrap::objects::NAMESPACE);
    let cm = cms
        .get(CLUSTER_SETTINGS)
        .await
        .with_context(|| format!("reading kube-system/{CLUSTER_SETTINGS}"))?;
    let cluster = ClusterSettings::from_config_map(&cm)?;
    let settings = crate::cluster::joined_settings(cluster, node)?;
    // Recorded in the checkpoint, so that renewal (`crate::certs`) and
    // `recover` run on this host with no API to ask and no init host to
    // depend on; with the bundle this agent runs (what they open).
    let recorded = bootstrap::config::InitSettings {
        bundle: Some(ctx.bundle.root().to_path_buf()),
        ..settings.clone()
    };
    with_checkpoint(&ctx.paths.checkpoint_dir(), move |c| {
        if c.settings()?.as_ref() != Some(&recorded) {
            c.record_settings(&recorded)?;
        }
        Ok(())
    })
    .await?;
    Ok(crate::cluster::plane_spec(
        &ctx.paths,
        &settings,
        &ctx.bundle,
        ctx.api_lb_port,
    ))
}

/// The client URLs of the etcd members on the other control-plane nodes:
/// each API server the `kubernetes` EndpointSlice lists runs beside its
/// etcd member (the DaemonSet's API server talks to the member on its own
/// node), so the slice's addresses at the etcd client port. (A kubelet's
/// credentials may read only its own Node, not list the others.)
async fn other_members(
    client: &kube::Client,
    node: &NodeIdentity,
    port: u16,
) -> anyhow::Result<Vec<String>> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice = slices
        .get("kubernetes")
        .await
        .context("reading the kubernetes EndpointSlice (the API servers' addresses)")?;
    let ips: std::collections::BTreeSet<std::net::IpAddr> = apiserver_addresses(&slice)
        .into_iter()
        .filter(|ip| *ip != node.node_ip)
        .collect();
    Ok(ips
        .into_iter()
        .map(|ip| format!("https://{}", std::net::SocketAddr::new(ip, port)))
        .collect())
}

fn etcd_config(paths: &HostPaths, endpoints: Vec<String>) -> etcd_mgr::EtcdConfig {
    etcd_mgr::EtcdConfig {
        endpoints,
        ..crate::etcd::config(paths)
    }
}

/// This member's server, peer and healthcheck certificates, issued (or
/// kept while valid, re-issued when less than 30 days are left) with the
/// etcd CA on this host's disk (`pki/etcd/ca.{crt,key}`, which reach a
/// control-plane host with its control-plane join). The inner `Err` is the
/// status note while the CA is not here yet.
async fn issue_member_certs(
    ctx: &TaskCx,
    client: &kube::Client,
    node: &NodeIdentity,
) -> anyhow::Result<Result<(PlaneSpec, bootstrap::pki::PkiReport), NotYet>> {
    let spec = node_plane_spec(ctx, client, node).await?;
    let ca_crt = spec.pki_dir.join("etcd/ca.crt");
    let ca_key = spec.pki_dir.join("etcd/ca.key");
    let (Ok(crt), Ok(key)) = (std::fs::read(&ca_crt), std::fs::read(&ca_key)) else {
        return Ok(Err(NotYet(format!(
            "control-plane node: waiting for the cluster's keys ({} and {} are not on this host yet; they come with its control-plane join or 'selfnode promote')",
            ca_crt.display(),
            ca_key.display()
        ))));
    };
    let pki = spec.pki_spec();
    let report = tokio::task::spawn_blocking(move || {
        bootstrap::pki::ensure_etcd_member(&NodeHost, &pki, &crt, &key, SystemTime::now())
    })
    .await??;
    Ok(Ok((spec, report)))
}

async fn join_member(
    ctx: &TaskCx,
    client: &kube::Client,
    node: &NodeIdentity,
) -> anyhow::Result<String> {
    let paths = &ctx.paths;
    let spec = match issue_member_certs(ctx, client, node).await? {
        Ok((spec, _)) => spec,
        Err(waiting) => return Ok(waiting.0),
    };

    let endpoints = other_members(client, node, spec.ports.etcd_client).await?;
    if endpoints.is_empty() {
        return Ok(
            "control-plane node: no other control-plane node lists an etcd member to join yet"
                .into(),
        );
    }
    let cfg = etcd_config(paths, endpoints);
    let peer = spec.etcd_peer_url(Placement::SelfHosted);
    let mut members = etcd_mgr::members(&cfg).await?;
    if !members.iter().any(|m| m.peer_urls.contains(&peer)) {
        // A member by this address is new: a static pod or data left by an
        // earlier member of this node (removed since) would start the
        // wrong identity.
        remove_manifest(paths)?;
        if let Some(p) = move_aside(&spec.etcd_data_dir)? {
            tracing::warn!(kept = %p.display(), "moved an earlier member's etcd data aside");
        }
        let id = etcd_mgr::members::add_learner(&cfg, &peer).await?;
        tracing::info!(member = %format!("{id:x}"), %peer, "added this node's etcd member as a learner");
        members = etcd_mgr::members(&cfg).await?;
    }
    let initial = EtcdInitial {
        members: members
            .iter()
            .filter_map(|m| {
                let url = m.peer_urls.first()?.clone();
                let name = if m.peer_urls.contains(&peer) {
                    spec.etcd_member_name(Placement::SelfHosted)
                } else if m.name.is_empty() {
                    // Another learner that has not started: etcd checks the
                    // URLs of --initial-cluster, not the names.
                    format!("unstarted-{}", m.id)
                } else {
                    m.name.clone()
                };
                Some((name, url))
            })
            .collect(),
        state: InitialClusterState::Existing,
    };
    let pod = bootstrap::objects::etcd_static_pod_yaml(&spec, &initial)?;
    let manifest = paths.etcd_manifest();
    let current = std::fs::read(&manifest).ok();
    if current.is_none() {
        NodeHost.ensure_dir(&spec.etcd_data_dir, bootstrap::plane::ETCD_DATA_DIR_MODE)?;
        NodeHost.ensure_dir(&paths.static_pod_dir(), 0o755)?;
        NodeHost.write_file(&manifest, pod.as_bytes(), 0o600)?;
        tracing::info!(manifest = %manifest.display(), "wrote this node's etcd static pod");
    }
    etcd_mgr::members::promote(&cfg, &peer, PROMOTE_WAIT).await?;
    let me = etcd_mgr::members(&cfg)
        .await?
        .into_iter()
        .find(|m| m.peer_urls.contains(&peer))
        .with_context(|| format!("the promoted member {peer} is gone from the member list"))?;
    let identity = EtcdMemberIdentity {
        name: spec.etcd_member_name(Placement::SelfHosted),
        id: me.id.clone(),
        cluster_id: me.cluster_id.clone(),
        peer_urls: me.peer_urls.clone(),
        client_urls: me.client_urls.clone(),
        data_dir: spec.etcd_data_dir.clone(),
        recorded_at: crate::status::now_unix(),
    };
    with_checkpoint(&paths.checkpoint_dir(), move |c| {
        c.record_etcd_member(&identity)
    })
    .await?;
    tracing::info!(member = %me.id, %peer, "this node's etcd member is a voting member");
    Ok(format!(
        "etcd member {} ({}) joined and was promoted",
        node.node_name, me.id
    ))
}

async fn leave_member(
    ctx: &TaskCx,
    client: &kube::Client,
    node: &NodeIdentity,
    member: Option<&EtcdMemberIdentity>,
    joined: bool,
) -> anyhow::Result<String> {
    let paths = &ctx.paths;
    let port = bootstrap::plane::PlanePorts::default().etcd_client;
    let peer = match member.and_then(|m| m.peer_urls.first()) {
        Some(p) => p.clone(),
        None => format!(
            "https://{}",
            std::net::SocketAddr::new(
                node.node_ip,
                bootstrap::plane::PlanePorts::default().etcd_peer
            )
        ),
    };
    let mut endpoints = crate::etcd::config(paths).endpoints;
    endpoints.extend(other_members(client, node, port).await?);
    let cfg = etcd_config(paths, endpoints);
    match etcd_mgr::members::remove(&cfg, &peer, Duration::from_secs(30)).await {
        Ok(outcome) => tracing::info!(?outcome, %peer, "this node's etcd member left the cluster"),
        Err(
            e @ (etcd_mgr::EtcdError::LastVotingMember { .. }
            | etcd_mgr::EtcdError::QuorumAtRisk { .. }),
        ) => {
            return Ok(format!(
                "the node lost its control-plane label, but its etcd member stays: {e}"
            ));
        }
        Err(e) => return Err(e.into()),
    }
    remove_manifest(paths)?;
    let data_dir = member
        .map(|m| m.data_dir.clone())
        .unwrap_or_else(|| paths.etcd_data_dir());
    let aside = move_aside(&data_dir)?;
    with_checkpoint(&paths.checkpoint_dir(), |c| c.forget_etcd_member()).await?;
    let removed = if joined {
        crate::keys::remove_control_plane_files(paths)?
    } else {
        0
    };
    Ok(format!(
        "left the control plane: etcd member {peer} removed quorum-safely, its static pod gone{}{}",
        aside
            .map(|p| format!(", its data kept at {}", p.display()))
            .unwrap_or_default(),
        if removed > 0 {
            format!("; removed the cluster's keys and this host's control-plane credentials ({removed} files)")
        } else {
            String::new()
        }
    ))
}

/// Removes the member's static pod (the kubelet stops it).
fn remove_manifest(paths: &HostPaths) -> anyhow::Result<()> {
    let manifest = paths.etcd_manifest();
    match std::fs::remove_file(&manifest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", manifest.display())),
    }
}

/// Moves a member's data directory aside (`<dir>.removed-<unix time>`),
/// if it holds data; returns where it went.
fn move_aside(data_dir: &std::path::Path) -> anyhow::Result<Option<std::path::PathBuf>> {
    if !data_dir.join("member").exists() {
        return Ok(None);
    }
    let to = data_dir.with_file_name(format!(
        "{}.removed-{}",
        data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "etcd".into()),
        crate::status::now_unix()
    ));
    std::fs::rename(data_dir, &to)
        .with_context(|| format!("moving {} to {}", data_dir.display(), to.display()))?;
    Ok(Some(to))
}
