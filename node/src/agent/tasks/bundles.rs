//! The bundle an upgrade offers, fetched onto this host (`crate::share`).
//!
//! Every [`PERIOD`] the task reads the offer (`kube-system` ConfigMap
//! `selfnode-bundle-offer`) with the kubelet's credentials. When a bundle
//! is offered that this host does not hold yet (its Node's
//! `selfnode.dev/bundle-ready` annotation names another), it fetches it
//! from the serving host into `var/lib/selfnode/bundles/<id>/` over mutual
//! TLS (the kubelet's client certificate, the cluster CA), every file
//! checked against the published `SHA256SUMS`; imports its images into
//! containerd; and annotates its Node. A fetch cut short resumes with the
//! files it has. Nothing that runs changes: the upgrade's own steps move
//! the host onto the bundle.
//!
//! The host that serves the bundle holds it already (`selfnode upgrade
//! stage` imports its images and annotates its own Node).

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

use super::{AgentTask, Outcome, Schedule, TaskCx};
use crate::control::{Component, NodeIdentity};
use crate::status::ComponentState;

const PERIOD: Duration = Duration::from_secs(10);
/// A whole fetch and import: a bundle is several hundred MB.
const FETCH_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// Fetches offered bundles (see the module docs). The fetch runs beside
/// the passes, so that a pass stays short and the agent stops at once.
#[derive(Default)]
pub struct Bundles {
    /// The fetch under way: the bundle's id, and what it says when done.
    job: Option<(String, tokio::task::JoinHandle<anyhow::Result<String>>)>,
}

impl AgentTask for Bundles {
    const COMPONENT: Component = Component::Bundles;

    fn initial(&self) -> (ComponentState, &'static str) {
        (ComponentState::Ready, "no bundle offered")
    }

    fn schedule(&self) -> Schedule {
        Schedule::every(PERIOD)
    }

    /// Until the host is settled in its cluster, or while the API does not
    /// answer, there is nothing to fetch.
    fn quiet_errors(&self) -> bool {
        true
    }

    async fn pass(&mut self, cx: &mut TaskCx) -> anyhow::Result<Outcome> {
        let Some(client) = cx.settled_kubelet_client().await? else {
            return Ok(Outcome::Unchanged);
        };
        let Some(offer) = crate::share::offered(&client).await? else {
            if let Some((_, job)) = self.job.take() {
                job.abort();
            }
            return Ok(Outcome::ready("no bundle offered"));
        };
        let node = NodeIdentity::read(&cx.paths.node_identity_file())?
            .context("node.json is gone")?
            .node_name;
        let id = offer.id();
        let me = Api::<Node>::all(client.clone())
            .get(&node)
            .await
            .with_context(|| format!("reading Node {node}"))?;
        if crate::share::held(&me) == Some(id.as_str()) {
            return Ok(Outcome::ready(format!(
                "holds the offered bundle {id}, its images imported"
            )));
        }
        match self.job.take() {
            Some((job_id, job)) if job_id == id && job.is_finished() => {
                let note = job.await.context("the bundle fetch")??;
                crate::share::mark_held(&client, &node, &id).await?;
                tracing::info!(%note, "bundle fetched");
                return Ok(Outcome::ready(note));
            }
            Some((job_id, job)) if job_id == id => {
                self.job = Some((job_id, job));
                return Ok(Outcome::Report(
                    ComponentState::Starting,
                    format!("fetching the offered bundle {id} from {}", offer.source),
                ));
            }
            Some((_, job)) => job.abort(),
            None => {}
        }
        let (paths, socket) = (cx.paths.clone(), cx.containerd_socket.clone());
        let job = tokio::spawn(async move {
            tokio::time::timeout(FETCH_DEADLINE, fetch_and_import(&paths, &socket, &offer))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "fetching bundle {} from {} took longer than {}s; it starts again",
                        offer.id(),
                        offer.source,
                        FETCH_DEADLINE.as_secs()
                    )
                })?
        });
        self.job = Some((id.clone(), job));
        Ok(Outcome::Report(
            ComponentState::Starting,
            format!("fetching the offered bundle {id}"),
        ))
    }
}

/// The offered bundle into `var/lib/selfnode/bundles/<id>`, its images into
/// containerd; what it did, for status.
async fn fetch_and_import(
    paths: &crate::paths::HostPaths,
    socket: &std::path::Path,
    offer: &dist::share::Offer,
) -> anyhow::Result<String> {
    let started = std::time::Instant::now();
    let id = offer.id();
    let dir = crate::share::fetched_dir(paths, offer);
    let tls = crate::share::client_tls(paths)?;
    let (bundle, report) = dist::share::fetch(offer, &dir, tls)
        .await
        .with_context(|| format!("fetching the offered bundle {id} into {}", dir.display()))?;
    let exe = std::env::current_exe().context("finding this selfnode binary")?;
    dist::import::import_bundle(socket, dist::containerd::K8S_NAMESPACE, &bundle, &exe)
        .await
        .with_context(|| format!("importing the images of bundle {id}"))?;
    Ok(format!(
        "fetched bundle {id} (Kubernetes {}) from {}: {} files, {} MB ({} here already), in {:.0}s; its images imported",
        bundle.versions().kubernetes,
        offer.source,
        report.fetched,
        report.bytes / 1_000_000,
        report.kept,
        started.elapsed().as_secs_f64()
    ))
}
