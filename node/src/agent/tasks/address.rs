//! A host whose address changed (DHCP, re-addressing): the agent's
//! address task.
//!
//! Every [`PERIOD`] (and at agent start, before the kubelet starts:
//! `agent::run` calls [`follow_at_start`]) the recorded address is looked
//! for on the host's interfaces (`crate::address`). When it is gone and one
//! address replaces it, the records move (`node.json`, the plane's
//! settings) and the kubelet restarts with its new `--node-ip` (a reload):
//! the Node's addresses, its serving certificate (the kubelet asks for one
//! with the new address; the approver checks it against the Node) and the
//! pod network's routes on every host follow from the Node.
//!
//! A moved host (the move leaves `var/lib/selfnode/address-moved` until
//! the task has converged: a host that never moved does nothing more) then
//! converges, each step observing first, so a pass cut anywhere is
//! finished by the next:
//! 1. its certificates: when its API server's or etcd peer certificate
//!    does not name the address, those that name it are issued again
//!    (`crate::certs::ensure_host_pki`, SANs changed; renewal stays the
//!    certificate task's);
//! 2. its etcd member's peer URL in etcd's membership, through the members
//!    that keep the quorum (`etcd_mgr::members::update_peer_urls`), then
//!    its static pod's listen and advertise URLs (the kubelet restarts it),
//!    then the member record in the checkpoint;
//! 3. once the Node shows the new address, its API server and kube-proxy
//!    containers started before the move are restarted: they read the
//!    node's address (`$(HOST_IP)`, the Node) when they start; the API
//!    server then advertises the new address in the `kubernetes`
//!    EndpointSlice and every balancer learns it.
//!
//! The node's name never changes: it is its identity.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bootstrap::plane::{EtcdInitial, InitialClusterState, Placement, PlaneSpec};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

use super::{AgentTask, Outcome, Schedule, TaskCx};
use crate::address::Found;
use crate::checkpoint::with_checkpoint;
use crate::control::{ApiBackends, Component, NodeIdentity};
use crate::paths::HostPaths;
use crate::status::ComponentState;

/// How often the host's interfaces are compared with the record.
const PERIOD: Duration = Duration::from_secs(15);
/// The containers that read the node's address when they start.
const READ_ADDRESS_AT_START: [&str; 2] = ["kube-apiserver", "kube-proxy"];

/// The address task's memory.
#[derive(Default)]
pub struct AddressTask {
    /// The last move, for status.
    moved: Option<(IpAddr, IpAddr)>,
    /// A pass found everything on the recorded address: later passes only
    /// look at the interfaces, until the next move. False at agent start,
    /// so a move cut short by a stop is finished by the next agent.
    settled: bool,
}

impl AgentTask for AddressTask {
    const COMPONENT: Component = Component::Address;

    fn initial(&self) -> (ComponentState, &'static str) {
        (ComponentState::Ready, "not checked yet")
    }

    fn schedule(&self) -> Schedule {
        Schedule::every(PERIOD)
    }

    async fn pass(&mut self, cx: &mut TaskCx) -> anyhow::Result<Outcome> {
        let toward = cluster_addresses(&cx.paths);
        let paths = cx.paths.clone();
        let Some(found) =
            tokio::task::spawn_blocking(move || crate::address::check(&paths, &toward)).await??
        else {
            return Ok(Outcome::ready("no cluster on this host yet"));
        };
        match found {
            // A move cut short between its two records is finished here.
            Found::Here { at } if !self.settled => {
                let paths = cx.paths.clone();
                tokio::task::spawn_blocking(move || crate::address::record(&paths, at)).await??;
            }
            Found::Here { .. } => {}
            Found::Gone { from, candidates } => {
                return Ok(Outcome::Report(
                    ComponentState::Unhealthy,
                    format!(
                        "this node's address {from} is on no interface of this host any more, and no single address replaces it (candidates: {}); give the host one address of that family with a route toward the cluster",
                        if candidates.is_empty() { "none".to_string() } else { candidates.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ") }
                    ),
                ));
            }
            Found::Moved { from, to } => {
                let paths = cx.paths.clone();
                tokio::task::spawn_blocking(move || crate::address::record(&paths, to)).await??;
                tracing::warn!(%from, %to, "this host's address changed: the node keeps its name and moves to the new address; the kubelet restarts with it");
                cx.reload();
                self.moved = Some((from, to));
                self.settled = false;
            }
        }
        if self.settled {
            return Ok(Outcome::Unchanged);
        }
        // Only a host whose address moved has more to converge.
        let marker = cx.paths.address_move_marker();
        if !marker.exists() {
            self.settled = true;
            let node =
                NodeIdentity::read(&cx.paths.node_identity_file())?.context("node.json is gone")?;
            return Ok(Outcome::ready(format!("{} is on this host", node.node_ip)));
        }
        let mut notes = converge_control_plane(cx).await?;
        let node =
            NodeIdentity::read(&cx.paths.node_identity_file())?.context("node.json is gone")?;
        if let Some(note) = restart_address_readers(cx, &node).await? {
            notes.push(note);
        }
        self.settled = notes.is_empty();
        if self.settled {
            std::fs::remove_file(&marker)
                .with_context(|| format!("removing {}", marker.display()))?;
        }
        if let Some((from, to)) = self.moved {
            notes.insert(0, format!("moved from {from} to {to}"));
        }
        Ok(Outcome::ready(if notes.is_empty() {
            format!("{} is on this host", node.node_ip)
        } else {
            format!("{}: {}", node.node_ip, notes.join("; "))
        }))
    }
}

/// At agent start, before the kubelet reads `node.json`: the records follow
/// the host's address, so the kubelet starts with it. Failures are left to
/// the task's first pass.
pub fn follow_at_start(paths: &HostPaths) {
    let found = match crate::address::check(paths, &cluster_addresses(paths)) {
        Ok(Some(found)) => found,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "cannot compare this host's address with its record; the address task tries again");
            return;
        }
    };
    match found {
        Found::Moved { from, to } => match crate::address::record(paths, to) {
            Ok(_) => {
                tracing::warn!(%from, %to, "this host's address changed while the agent was away: the node keeps its name and moves to the new address")
            }
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), %from, %to, "cannot record this host's new address; the address task tries again")
            }
        },
        // A move cut short between its two records is finished first.
        Found::Here { at } => {
            if let Err(err) = crate::address::record(paths, at) {
                tracing::warn!(error = %format!("{err:#}"), "cannot compare this host's records of its address; the address task tries again");
            }
        }
        Found::Gone { .. } => {}
    }
}

/// The cluster's API servers as this host's balancer knows them: where the
/// kernel's route toward the cluster starts.
fn cluster_addresses(paths: &HostPaths) -> Vec<IpAddr> {
    ApiBackends::read(paths)
        .map(|b| b.addrs.iter().map(|a| a.ip()).collect())
        .unwrap_or_default()
}

/// The control-plane steps of the module docs; the notes of what changed.
async fn converge_control_plane(cx: &mut TaskCx) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    let host = match crate::cluster::ControlPlaneHost::load(&cx.paths) {
        Ok(host) => host,
        Err(e)
            if e.downcast_ref::<crate::cluster::NotControlPlaneHost>()
                .is_some() =>
        {
            return Ok(notes)
        }
        Err(e) => return Err(e),
    };
    let spec = host.plane_spec(&cx.paths, cx.api_lb_port);
    // Only what names an address is issued again here; renewal is the
    // certificate task's.
    let names_address = |file: &str| {
        std::fs::read(spec.pki_dir.join(file))
            .ok()
            .and_then(|pem| bootstrap::pki::ip_sans(&pem))
            .is_some_and(|ips| ips.contains(&spec.advertise_address))
    };
    if !names_address("apiserver.crt") || !names_address("etcd/peer.crt") {
        if let Some((_, report)) = crate::certs::ensure_host_pki(&cx.paths, cx.api_lb_port).await? {
            let reissued = report.changed().count();
            if reissued > 0 {
                notes.push(format!("re-issued {reissued} certificates"));
            }
        }
    }
    let Some(member) = host.cluster.etcd_member.clone() else {
        return Ok(notes);
    };
    if !cx.paths.etcd_manifest().exists() {
        return Ok(notes);
    }
    let peer = spec.etcd_peer_url(Placement::SelfHosted);
    if member.peer_urls != [peer.clone()] || !manifest_listens_at(&cx.paths, &peer) {
        notes.extend(move_etcd_member(&cx.paths, &spec, &member, &peer).await?);
    }
    Ok(notes)
}

/// Whether etcd's static pod listens for peers at `peer`.
fn manifest_listens_at(paths: &HostPaths, peer: &str) -> bool {
    std::fs::read_to_string(paths.etcd_manifest())
        .is_ok_and(|m| m.contains(&format!("--listen-peer-urls={peer}")))
}

/// Step 2 of the module docs.
async fn move_etcd_member(
    paths: &HostPaths,
    spec: &PlaneSpec,
    member: &crate::checkpoint::EtcdMemberIdentity,
    peer: &str,
) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    let client_port = spec.ports.etcd_client_port(Placement::SelfHosted);
    // Its own member on loopback and the others beside the API servers
    // this host knows (`update_peer_urls` asks those that answer first).
    let cfg = crate::etcd::cluster_config(paths, crate::etcd::config(paths).timeout);
    let urls = [peer.to_string()];
    if etcd_mgr::members::update_peer_urls(&cfg, &member.id, &urls)
        .await
        .with_context(|| format!("updating etcd member {} to peer URL {peer}", member.name))?
    {
        notes.push(format!("etcd member {} now at {peer}", member.name));
    }
    if !manifest_listens_at(paths, peer) {
        // With its data directory etcd takes its membership from there; the
        // initial flags only have to name this member as it is now.
        let initial = EtcdInitial {
            members: vec![(member.name.clone(), peer.to_string())],
            state: InitialClusterState::Existing,
        };
        let pod = bootstrap::objects::etcd_static_pod_yaml(spec, &initial)?;
        let manifest = paths.etcd_manifest();
        crate::fsutil::write_atomic(&manifest, pod.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", manifest.display()))?;
        tracing::info!(%peer, "rewrote etcd's static pod for this host's new address; the kubelet restarts it");
        notes.push("etcd restarted on the new address".into());
    }
    if member.peer_urls != urls {
        let moved = crate::checkpoint::EtcdMemberIdentity {
            peer_urls: urls.to_vec(),
            client_urls: vec![format!(
                "https://{}",
                std::net::SocketAddr::new(spec.advertise_address, client_port)
            )],
            recorded_at: crate::status::now_unix(),
            ..member.clone()
        };
        with_checkpoint(&paths.checkpoint_dir(), move |c| {
            c.record_etcd_member(&moved)
        })
        .await?;
    }
    Ok(notes)
}

/// Step 3 of the module docs: once the Node shows the new address, the
/// containers that read it at their start and started before `node.json`
/// last changed are restarted. `None`: nothing to restart (yet).
async fn restart_address_readers(
    cx: &mut TaskCx,
    node: &NodeIdentity,
) -> anyhow::Result<Option<String>> {
    let recorded_at = std::fs::metadata(cx.paths.node_identity_file())
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let older: Vec<(&str, SystemTime)> = READ_ADDRESS_AT_START
        .iter()
        .map(|name| (*name, recorded_at))
        .collect();
    let stale: Vec<String> = crate::readiness::running_containers(&cx.containerd_socket)
        .await?
        .into_iter()
        .filter(|c| {
            older
                .iter()
                .any(|(n, t)| c.container == *n && c.created.is_some_and(|c| c < *t))
        })
        .map(|c| c.container)
        .collect();
    if stale.is_empty() {
        return Ok(None);
    }
    let Some(client) = cx.kubelet_client().await? else {
        return Ok(None);
    };
    let n = Api::<Node>::all(client)
        .get(&node.node_name)
        .await
        .with_context(|| format!("reading Node {}", node.node_name))?;
    let shows = n
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .iter()
        .any(|a| a.type_ == "InternalIP" && a.address.parse().ok() == Some(node.node_ip));
    if !shows {
        return Ok(Some(format!(
            "waiting for Node {} to show {} before restarting {}",
            node.node_name,
            node.node_ip,
            stale.join(", ")
        )));
    }
    let stopped = crate::cri::restart_containers_older_than(&cx.containerd_socket, &older).await?;
    let mut names: Vec<String> = stopped.iter().map(|c| c.container.clone()).collect();
    names.sort();
    names.dedup();
    tracing::info!(containers = ?names, "restarted what reads this node's address at its start");
    Ok(Some(format!(
        "restarted {} on the new address",
        names.join(", ")
    )))
}
