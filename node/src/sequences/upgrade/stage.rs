//! `selfnode upgrade stage --bundle DIR`: the bundle onto every host of
//! the cluster, from this one (`crate::share`), before an upgrade needs it.
//! Nothing that runs changes.
//!
//! 1. `check_bundle`: the bundle opens and every file matches its
//!    `SHA256SUMS` (exit 2 when not).
//! 2. `import_images`: its images into this host's containerd.
//! 3. `offer_bundle`: this host serves it on its address (port 7446, mutual
//!    TLS, nodes' certificates only) for as long as the command runs, and
//!    publishes the offer; its own Node says it holds it.
//! 4. `wait_for_hosts`: every Node says its host holds it (each agent
//!    fetched it, checked every file against the published `SHA256SUMS`,
//!    and imported its images), naming the hosts still fetching.
//! 5. `withdraw_offer`: the offer goes; no agent asks this host again.
//!
//! Cut short anywhere, run it again: what the hosts fetched stays, and the
//! offer is the same (its id is the bundle's).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::UpgradeRefused;
use crate::cluster::ControlPlaneHost;
use crate::paths::HostPaths;
use crate::sequences::plan::{steps, Plan};
use crate::sequences::runner::{self, StepReport};

steps! {
    /// `selfnode upgrade stage`'s steps (module docs).
    pub enum StageStep {
        CheckBundle => "check_bundle",
        ImportImages => "import_images",
        OfferBundle => "offer_bundle",
        WaitForHosts => "wait_for_hosts",
        WithdrawOffer => "withdraw_offer",
    }
}

type Runner = runner::Runner<StageStep>;

/// The Role (and RoleBinding) that lets nodes read the offer.
const OFFER_ACCESS: &str = bootstrap::objects::UPGRADE_ROLE;

/// Every step runs; each observes first.
pub fn plan() -> Plan<StageStep> {
    Plan::every_step("stage")
}

/// What `upgrade stage` runs with.
pub struct StageContext {
    pub paths: HostPaths,
    /// The bundle's directory, absolute.
    pub bundle_dir: PathBuf,
    /// How long the hosts have to fetch it.
    pub timeout: Duration,
    pub quiet: bool,
}

/// What `upgrade stage -o json` prints.
#[derive(Debug, Serialize)]
pub struct StageReport {
    /// The bundle's id (what each Node's `selfnode.dev/bundle-ready` says).
    pub id: String,
    pub kubernetes: String,
    /// The hosts (Nodes) that hold it.
    pub hosts: Vec<String>,
    pub steps: Vec<StepReport>,
    pub seconds: f64,
}

/// What the steps share.
struct Seq<'a> {
    ctx: &'a StageContext,
    client: kube::Client,
    node: String,
    ip: std::net::IpAddr,
    /// The Role and RoleBinding that let nodes read the offer (a cluster
    /// made by an older selfnode lacks them).
    access: Vec<bootstrap::objects::Object>,
    /// The server, once `offer_bundle` started it; it stops with the run.
    server: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Runs `upgrade stage` (module docs).
pub async fn run(ctx: &StageContext) -> anyhow::Result<StageReport> {
    let bundle = dist::bundle::Bundle::open(&ctx.bundle_dir).map_err(|e| UpgradeRefused {
        reason: format!("bundle: {e}"),
        refusal: super::Refusal::Input,
    })?;
    let host = ControlPlaneHost::load(&ctx.paths)?;
    let spec = host.plane_spec(&ctx.paths, crate::control::api_lb_port(&ctx.paths));
    let client = crate::cluster::kube_client(&spec.kubeconfig_dir.join("super-admin.conf")).await?;
    let files = bootstrap::objects::PlaneFiles::read(&crate::host::NodeHost, &spec)?;
    let access = bootstrap::objects::self_hosted_objects(&spec, &files)?
        .into_iter()
        .filter(|o| o.name() == OFFER_ACCESS)
        .collect();
    let seq = Seq {
        ctx,
        client,
        node: spec.node_name.clone(),
        ip: spec.advertise_address,
        access,
        server: std::sync::Mutex::new(None),
    };
    let offer = dist::share::Offer::of(&bundle, crate::share::share_address(seq.ip))?;
    let plan = plan();
    let run = Runner::new(&plan, ctx.quiet);
    let result = runner::run_plan(&plan, &run, |step| {
        execute(step, &run, &seq, &bundle, &offer)
    })
    .await;
    if let Some(server) = seq.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
        server.abort();
    }
    let steps = result?;
    let hosts = Api::<Node>::all(seq.client.clone())
        .list(&ListParams::default())
        .await
        .context("listing the Nodes")?
        .items
        .iter()
        .filter(|n| crate::share::held(n) == Some(offer.id().as_str()))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    Ok(StageReport {
        id: offer.id(),
        kubernetes: bundle.versions().kubernetes.clone(),
        hosts,
        steps,
        seconds: run.elapsed().as_secs_f64(),
    })
}

async fn execute(
    step: StageStep,
    run: &Runner,
    seq: &Seq<'_>,
    bundle: &dist::bundle::Bundle,
    offer: &dist::share::Offer,
) -> anyhow::Result<StepReport> {
    use StageStep as S;
    match step {
        S::CheckBundle => {
            run.converge(step, || async {
                let b = bundle.clone();
                tokio::task::spawn_blocking(move || b.verify_checksums())
                    .await?
                    .map_err(|e| UpgradeRefused {
                        reason: format!("bundle: {e}"),
                        refusal: super::Refusal::Input,
                    })?;
                Ok(false)
            })
            .await
        }
        S::ImportImages => super::import_images(run, &seq.ctx.paths, bundle, step).await,
        S::OfferBundle => {
            run.converge(step, || async {
                let address = offer.source;
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("listening on {address} to serve the bundle"))?;
                let tls = crate::share::server_tls(&seq.ctx.paths, seq.ip)?;
                let root = bundle.root().to_path_buf();
                let server = tokio::spawn(async move {
                    if let Err(e) =
                        dist::share::serve(root, listener, tls, crate::share::nodes_only()).await
                    {
                        tracing::error!(error = %dist::error_chain(&e), "serving the bundle stopped");
                    }
                });
                *seq.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
                bootstrap::objects::apply_all(
                    seq.client.clone(),
                    &seq.access,
                    bootstrap::objects::FIELD_MANAGER,
                )
                .await?;
                // This host holds it before the offer goes out: its own
                // agent never fetches it from itself.
                crate::share::mark_held(&seq.client, &seq.node, &offer.id()).await?;
                let before = crate::share::offered(&seq.client).await?;
                crate::share::publish(&seq.client, offer).await?;
                run.say(
                    step,
                    &format!(
                        "serving bundle {} (Kubernetes {}) on https://{address} to the cluster's nodes",
                        offer.id(),
                        bundle.versions().kubernetes
                    ),
                );
                Ok(before.as_ref() != Some(offer))
            })
            .await
        }
        S::WaitForHosts => {
            let id = offer.id();
            let said = std::sync::Mutex::new(String::new());
            run.wait(step, "every host to fetch the bundle and import its images", || {
                crate::wait::until(
                    "every host holding the bundle",
                    seq.ctx.timeout,
                    Duration::from_secs(3),
                    || async {
                        let nodes = Api::<Node>::all(seq.client.clone())
                            .list(&ListParams::default())
                            .await
                            .context("listing the Nodes")?
                            .items;
                        let missing: Vec<String> = nodes
                            .iter()
                            .filter(|n| crate::share::held(n) != Some(id.as_str()))
                            .filter_map(|n| n.metadata.name.clone())
                            .collect();
                        let line = if missing.is_empty() {
                            format!("all {} hosts hold it", nodes.len())
                        } else {
                            format!(
                                "{} of {} hosts hold it; fetching: {} ('selfnode status' there shows 'bundles')",
                                nodes.len() - missing.len(),
                                nodes.len(),
                                missing.join(", ")
                            )
                        };
                        let mut last = said.lock().unwrap_or_else(|e| e.into_inner());
                        if *last != line {
                            run.say(step, &line);
                            *last = line;
                        }
                        Ok(missing.is_empty())
                    },
                )
            })
            .await
        }
        S::WithdrawOffer => {
            run.converge(step, || async {
                let had = crate::share::offered(&seq.client).await?.is_some();
                crate::share::withdraw(&seq.client).await?;
                Ok(had)
            })
            .await
        }
    }
}
