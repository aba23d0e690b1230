//! An upgrade of several hosts, followed on this host when its turn comes.
//!
//! `selfnode upgrade apply` runs on one control-plane host and moves that
//! host itself. Every other host moves when the `kube-system` ConfigMap
//! `selfnode-upgrade` (`crate::share::UpgradeTurns`, read with the
//! kubelet's credentials) names its node, onto the bundle its `bundles`
//! task fetched (`var/lib/selfnode/bundles/<id>`):
//! - named for **etcd** (a control-plane host): its etcd static pod is
//!   written as the new bundle renders it (`crate::etcd::write_member_manifest`),
//!   and the kubelet restarts the member on the new image; the upgrade
//!   waits for the member to answer at the new version before it names
//!   the next one;
//! - named for the **host**: the bundle it runs is recorded
//!   (`control::HostBundle`) and the agent starts again in place on it (the
//!   kubelet and containerd from the new bundle; containers keep running);
//!   the upgrade waits for the Node to report the new kubelet.
//!
//! Both are idempotent: a pass after the move finds nothing to do, and an
//! agent that restarts (or loses power) mid-move does it again.

use std::time::Duration;

use anyhow::Context;

use super::{AgentTask, Outcome, Schedule, TaskCx};
use crate::control::{Component, HostBundle, NodeIdentity};
use crate::status::ComponentState;

const PERIOD: Duration = Duration::from_secs(5);

/// Follows an upgrade's turns (see the module docs).
#[derive(Default)]
pub struct FollowUpgrade;

impl AgentTask for FollowUpgrade {
    const COMPONENT: Component = Component::Upgrade;

    fn initial(&self) -> (ComponentState, &'static str) {
        (ComponentState::Ready, "no upgrade under way")
    }

    fn schedule(&self) -> Schedule {
        Schedule::every(PERIOD)
    }

    /// While the API does not answer (an etcd member or an API server
    /// restarting for the upgrade itself) there is nothing to follow.
    fn quiet_errors(&self) -> bool {
        true
    }

    async fn pass(&mut self, cx: &mut TaskCx) -> anyhow::Result<Outcome> {
        let Some(client) = cx.settled_kubelet_client().await? else {
            return Ok(Outcome::Unchanged);
        };
        let Some(turns) = crate::share::turns(&client).await? else {
            return Ok(Outcome::ready("no upgrade under way"));
        };
        let node = NodeIdentity::read(&cx.paths.node_identity_file())?
            .context("node.json is gone")?
            .node_name;
        let (etcd_turn, host_turn) = (turns.etcd.contains(&node), turns.hosts.contains(&node));
        if !etcd_turn && !host_turn {
            return Ok(Outcome::ready(format!(
                "an upgrade to bundle {} is under way; not this host's turn",
                turns.bundle
            )));
        }
        let dir = crate::share::fetched_dir_of(&cx.paths, &turns.bundle);
        let target = dist::bundle::Bundle::open(&dir).with_context(|| {
            format!(
                "the upgrade's bundle {} is not on this host at {} (its 'bundles' line in 'selfnode status' says why)",
                turns.bundle,
                dir.display()
            )
        })?;
        let mut did = Vec::new();
        if etcd_turn {
            let paths = cx.paths.clone();
            let host =
                tokio::task::spawn_blocking(move || crate::cluster::ControlPlaneHost::load(&paths))
                    .await??;
            let member = host
                .cluster
                .etcd_member
                .clone()
                .context("this host has no etcd member on record")?;
            let spec =
                crate::cluster::plane_spec(&cx.paths, &host.settings, &target, cx.api_lb_port);
            if crate::etcd::write_member_manifest(&cx.paths, &spec, &member)? {
                tracing::info!(image = %spec.images.etcd, "upgrade: this host's etcd member moves to the new bundle");
                did.push(format!("etcd's static pod moved to {}", spec.images.etcd));
            } else {
                did.push(format!("etcd's static pod is on {}", spec.images.etcd));
            }
        }
        if host_turn && HostBundle::read(&cx.paths).as_deref() != Some(dir.as_path()) {
            HostBundle::write(&cx.paths, &dir).with_context(|| {
                format!("recording the bundle this host runs ({})", dir.display())
            })?;
            tracing::info!(bundle = %dir.display(), "upgrade: this host starts again on the new bundle");
            // What `selfnode upgrade` asks of an agent: SIGUSR2, restart
            // in place (this process).
            nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGUSR2)
                .context("asking this agent to start again")?;
            return Ok(Outcome::Report(
                ComponentState::Starting,
                format!(
                    "starting again on bundle {} (Kubernetes {})",
                    turns.bundle,
                    target.versions().kubernetes
                ),
            ));
        }
        if host_turn {
            did.push(format!(
                "runs bundle {} (Kubernetes {})",
                turns.bundle,
                target.versions().kubernetes
            ));
        }
        Ok(Outcome::ready(format!("upgrade: {}", did.join("; "))))
    }
}
