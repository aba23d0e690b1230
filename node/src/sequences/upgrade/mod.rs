//! `selfnode upgrade plan`: what an upgrade to a bundle would change, in
//! what order, and every check that must hold before anything changes,
//! each with its result.
//!
//! Checks (each names what it found; a failed one refuses the upgrade):
//! - `bundle`: the target bundle opens and every file matches its
//!   `SHA256SUMS` (exit 2 when not);
//! - `version`: the target is the cluster's version, a newer patch or the
//!   next minor: never a downgrade, never a skipped minor (exit 2);
//! - `skew`: every kubelet, controller-manager and scheduler stays within
//!   the version skew policy against API servers at the target, as they
//!   are upgraded after the API servers (exit 3);
//! - `nodes`: every Node Ready (exit 3);
//! - `control-plane`: every control-plane workload has all its pods
//!   updated and ready (exit 3);
//! - `etcd`: a quorum of healthy voters, and no alarm (exit 3);
//! - `removed-apis`: no client asked the API server for an API version
//!   that the target removes, as the API server itself records it (its
//!   `apiserver_requested_deprecated_apis` metric, which names the release
//!   that removes each one; kept since the API server started) (exit 3);
//! - `staged`: which hosts hold the target bundle (`upgrade stage` put it
//!   there: each Node's `selfnode.dev/bundle-ready` names it); never a
//!   refusal: `upgrade apply` stages it first where it is missing;
//! - `disk`: room on this host for the snapshot taken before the upgrade
//!   and the new images (exit 3).
//!
//! The steps run in the order of the version skew policy: etcd members
//! one at a time, the API servers node by node, then the
//! controller-managers, the schedulers, kube-proxy, CoreDNS, and each
//! host's kubelet.

pub mod apply;
pub mod rollback;
pub mod stage;
pub mod version;

use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde::Serialize;

use self::version::{control_plane_skew, kubelet_skew, Change, Version};
use crate::cluster::ControlPlaneHost;
use crate::paths::HostPaths;
use crate::sequences::plan::Step;
use crate::sequences::runner::{self, StepReport};

/// Why a failed check refuses: the exit code it gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// The input (the bundle, the version it carries): exit 2.
    Input,
    /// The cluster's state: exit 3.
    State,
}

/// One check and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What a failure of this check is.
    pub refusal: Refusal,
}

/// One step of the upgrade, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanStep {
    pub component: String,
    /// Where it runs: a node, or every node of a DaemonSet.
    pub on: String,
    pub from: String,
    pub to: String,
}

/// What `upgrade plan` prints.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradePlan {
    pub bundle: String,
    pub current: String,
    pub target: String,
    pub change: &'static str,
    pub checks: Vec<Check>,
    pub steps: Vec<PlanStep>,
}

impl UpgradePlan {
    /// 0 when every check holds; 2 when the input is refused; else 3.
    pub fn exit_code(&self) -> u8 {
        let failed = |r| self.checks.iter().any(|c| !c.ok && c.refusal == r);
        if failed(Refusal::Input) {
            2
        } else if failed(Refusal::State) {
            3
        } else {
            0
        }
    }
}

/// The image tag of a workload's first container, as a version.
fn image_version(image: Option<&str>) -> Option<Version> {
    Version::parse(image?.rsplit_once(':')?.1)
}

/// The live control plane: each workload's version and whether all its
/// pods are updated and ready.
struct Workload {
    name: &'static str,
    version: Option<Version>,
    image: String,
    settled: Result<(), String>,
}

/// The image of a pod template's first container (empty without one).
fn first_image(t: &k8s_openapi::api::core::v1::PodTemplateSpec) -> String {
    t.spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

async fn daemonset(client: &kube::Client, name: &'static str) -> anyhow::Result<Workload> {
    let ds = Api::<DaemonSet>::namespaced(client.clone(), bootstrap::objects::NAMESPACE)
        .get(name)
        .await
        .with_context(|| format!("reading DaemonSet kube-system/{name}"))?;
    let image = first_image(&ds.spec.template);
    let st = ds.status.unwrap_or_default();
    let settled = if st.desired_number_scheduled == st.number_ready
        && st.updated_number_scheduled.unwrap_or(0) == st.desired_number_scheduled
    {
        Ok(())
    } else {
        Err(format!(
            "DaemonSet {name}: {} of {} pods ready, {} updated",
            st.number_ready,
            st.desired_number_scheduled,
            st.updated_number_scheduled.unwrap_or(0)
        ))
    };
    Ok(Workload {
        name,
        version: image_version(Some(&image)),
        image,
        settled,
    })
}

async fn deployment(client: &kube::Client, name: &'static str) -> anyhow::Result<Workload> {
    let d = Api::<Deployment>::namespaced(client.clone(), bootstrap::objects::NAMESPACE)
        .get(name)
        .await
        .with_context(|| format!("reading Deployment kube-system/{name}"))?;
    let image = first_image(&d.spec.template);
    let want = d.spec.replicas.unwrap_or(1);
    let st = d.status.unwrap_or_default();
    let settled =
        if st.ready_replicas.unwrap_or(0) >= want && st.updated_replicas.unwrap_or(0) >= want {
            Ok(())
        } else {
            Err(format!(
                "Deployment {name}: {} of {want} replicas ready, {} updated",
                st.ready_replicas.unwrap_or(0),
                st.updated_replicas.unwrap_or(0)
            ))
        };
    Ok(Workload {
        name,
        version: image_version(Some(&image)),
        image,
        settled,
    })
}

/// A Node's name, Ready, and kubelet version.
struct NodeFacts {
    name: String,
    ready: bool,
    kubelet: Option<Version>,
}

fn node_facts(n: &Node) -> NodeFacts {
    let st = n.status.as_ref();
    NodeFacts {
        name: n.metadata.name.clone().unwrap_or_default(),
        ready: st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        kubelet: st
            .and_then(|s| s.node_info.as_ref())
            .and_then(|i| Version::parse(&i.kubelet_version)),
    }
}

/// Plans an upgrade of this host's cluster to the bundle at `dir`.
pub async fn plan(paths: &HostPaths, dir: &Path) -> anyhow::Result<UpgradePlan> {
    let target_bundle = dist::bundle::Bundle::open(dir)?;
    let host = ControlPlaneHost::load(paths)?;
    let spec = host.plane_spec(paths, crate::control::api_lb_port(paths));
    let client = crate::cluster::kube_client(&spec.kubeconfig_dir.join("super-admin.conf")).await?;
    let tv = target_bundle.versions().clone();
    let target = Version::parse(&tv.kubernetes).with_context(|| {
        format!(
            "the bundle at {} says KUBERNETES_VERSION={}, which is not vMAJOR.MINOR.PATCH",
            dir.display(),
            tv.kubernetes
        )
    })?;
    let mut checks = Vec::new();

    let b = target_bundle.clone();
    let sums = tokio::task::spawn_blocking(move || b.verify_checksums()).await?;
    checks.push(Check {
        name: "bundle",
        ok: sums.is_ok(),
        detail: match &sums {
            Ok(()) => format!(
                "{}: Kubernetes {}, etcd {}, CoreDNS {}, every file matches SHA256SUMS",
                dir.display(),
                tv.kubernetes,
                tv.etcd,
                tv.coredns
            ),
            Err(e) => format!("{e:#}"),
        },
        refusal: Refusal::Input,
    });

    let workloads = [
        daemonset(&client, "kube-apiserver").await?,
        deployment(&client, "kube-controller-manager").await?,
        deployment(&client, "kube-scheduler").await?,
        daemonset(&client, "kube-proxy").await?,
    ];
    let oldest = workloads.iter().filter_map(|w| w.version).min();
    let Some(current) = oldest else {
        anyhow::bail!(
            "no version in the control plane's images ({}): cannot tell what to upgrade from",
            workloads
                .iter()
                .map(|w| w.image.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let change = Change::between(&current, &target);
    checks.push(Check {
        name: "version",
        ok: change.allowed(),
        detail: match change {
            Change::Same => format!("the cluster runs {current} already: nothing to upgrade"),
            Change::Patch => format!("{current} to {target}: a newer patch"),
            Change::NextMinor => format!("{current} to {target}: the next minor"),
            Change::Downgrade => format!(
                "{target} is older than the cluster's {current}: 'upgrade apply' never goes back"
            ),
            Change::Skip => format!(
                "{current} to {target} skips a minor: upgrade one minor at a time (v{}.{}.x first)",
                current.major,
                current.minor + 1
            ),
        },
        refusal: Refusal::Input,
    });

    let node_list = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing the Nodes")?
        .items;
    let nodes: Vec<NodeFacts> = node_list.iter().map(node_facts).collect();
    let mut skew = Vec::new();
    for n in &nodes {
        match &n.kubelet {
            Some(k) => {
                if let Err(why) = kubelet_skew(k, &target) {
                    skew.push(format!("node {}: {why}", n.name));
                }
            }
            None => skew.push(format!("node {}: no kubelet version in its status", n.name)),
        }
    }
    for w in &workloads[1..3] {
        if let Some(v) = &w.version {
            if let Err(why) = control_plane_skew(v, &target) {
                skew.push(format!("{}: {why}", w.name));
            }
        }
    }
    checks.push(Check {
        name: "skew",
        ok: skew.is_empty(),
        detail: if skew.is_empty() {
            format!(
                "every kubelet ({} nodes), controller-manager and scheduler is within the version skew policy of API servers at {target} at every step",
                nodes.len()
            )
        } else {
            skew.join("; ")
        },
        refusal: Refusal::State,
    });

    let not_ready: Vec<&str> = nodes
        .iter()
        .filter(|n| !n.ready)
        .map(|n| n.name.as_str())
        .collect();
    checks.push(Check {
        name: "nodes",
        ok: not_ready.is_empty(),
        detail: if not_ready.is_empty() {
            format!("{} nodes, all Ready", nodes.len())
        } else {
            format!(
                "not Ready: {}; bring them back or remove them first ('kubectl get nodes')",
                not_ready.join(", ")
            )
        },
        refusal: Refusal::State,
    });

    let unsettled: Vec<String> = workloads
        .iter()
        .filter_map(|w| w.settled.clone().err())
        .collect();
    checks.push(Check {
        name: "control-plane",
        ok: unsettled.is_empty(),
        detail: if unsettled.is_empty() {
            "kube-apiserver, kube-controller-manager, kube-scheduler and kube-proxy: every pod updated and ready".to_string()
        } else {
            unsettled.join("; ")
        },
        refusal: Refusal::State,
    });

    let cfg = crate::etcd::cluster_config(paths, std::time::Duration::from_secs(5));
    let members = etcd_mgr::members(&cfg).await;
    let alarms = etcd_mgr::maintenance::alarms(&cfg).await;
    let (etcd_ok, etcd_detail, voters) = match (&members, &alarms) {
        (Ok(m), Ok(a)) => {
            let voters: Vec<String> = m
                .iter()
                .filter(|m| !m.is_learner)
                .map(|m| m.name.clone())
                .collect();
            let healthy = m.iter().filter(|m| !m.is_learner && m.healthy).count();
            let quorum = etcd_mgr::members::has_quorum(m);
            let ok = quorum && a.is_empty() && healthy == voters.len();
            let detail = if !a.is_empty() {
                format!(
                    "alarms raised: {} ('selfnode status' says more)",
                    a.iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else if healthy < voters.len() {
                format!(
                    "{healthy} of {} voting members healthy: an upgrade restarts each member in turn and needs every one",
                    voters.len()
                )
            } else {
                format!("{} voting members, all healthy, no alarm", voters.len())
            };
            (ok, detail, voters)
        }
        (Err(e), _) | (_, Err(e)) => (false, format!("cannot ask etcd: {e}"), Vec::new()),
    };
    checks.push(Check {
        name: "etcd",
        ok: etcd_ok,
        detail: etcd_detail,
        refusal: Refusal::State,
    });

    let removed = match requested_deprecated_apis(&client).await {
        Ok(apis) => {
            let gone: Vec<String> = apis
                .iter()
                .filter(|a| a.removed_by(&target))
                .map(|a| a.to_string())
                .collect();
            if gone.is_empty() {
                Ok(format!(
                    "no API version that {target} removes was asked for ({} deprecated ones were, none removed by {target})",
                    apis.len()
                ))
            } else {
                Err(format!(
                    "clients asked for API versions that {target} removes: {}; move them to the versions that replace them first (https://kubernetes.io/docs/reference/using-api/deprecation-guide/)",
                    gone.join(", ")
                ))
            }
        }
        Err(e) => Err(format!("cannot read the API server's metrics: {e:#}")),
    };
    checks.push(Check {
        name: "removed-apis",
        ok: removed.is_ok(),
        detail: removed.unwrap_or_else(|e| e),
        refusal: Refusal::State,
    });

    let id = dist::share::bundle_id(&target_bundle)?;
    let without: Vec<&str> = node_list
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(host.settings.node_name.as_str()))
        .filter(|n| crate::share::held(n) != Some(id.as_str()))
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    checks.push(Check {
        name: "staged",
        // Never a refusal: apply's `stage_bundle` puts it there.
        ok: true,
        detail: if node_list.len() <= 1 {
            "this host alone: the upgrade imports the bundle's images here".to_string()
        } else if without.is_empty() {
            format!(
                "every host holds bundle {id} with its images ('selfnode upgrade stage' put it there)"
            )
        } else {
            format!(
                "hosts without bundle {id}: {}; 'upgrade apply' puts it there first ('selfnode upgrade stage --bundle {}' does it ahead of time)",
                without.join(", "),
                dir.display()
            )
        },
        refusal: Refusal::State,
    });

    let data = paths.etcd_data_dir();
    let db = members
        .as_ref()
        .ok()
        .and_then(|m| m.iter().filter_map(|m| m.db_size).max())
        .unwrap_or(0)
        .max(0) as u64;
    let need = 2 * db + (2 << 30);
    let free = nix::sys::statvfs::statvfs(data.parent().unwrap_or(&data))
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0);
    checks.push(Check {
        name: "disk",
        ok: free >= need,
        detail: format!(
            "{} free under {}, {} needed (a snapshot of etcd's {} database and the new images)",
            gib(free),
            data.parent().unwrap_or(&data).display(),
            gib(need),
            gib(db)
        ),
        refusal: Refusal::State,
    });

    let cv = host.bundle.versions().clone();
    let steps = steps(&cv, &tv, &current, &target, &voters, &nodes);
    Ok(UpgradePlan {
        bundle: dir.display().to_string(),
        current: current.to_string(),
        target: target.to_string(),
        change: match change {
            Change::Same => "same",
            Change::Patch => "patch",
            Change::NextMinor => "next-minor",
            Change::Downgrade => "downgrade",
            Change::Skip => "skip",
        },
        checks,
        steps,
    })
}

/// An upgrade refused before anything changed, and what refused it (the
/// exit code: 2 for the input, 3 for the cluster's state).
#[derive(Debug, thiserror::Error)]
#[error("upgrade refused, nothing was changed: {reason}")]
pub struct UpgradeRefused {
    pub reason: String,
    pub refusal: Refusal,
}

/// The bundle's images into this host's containerd (no registry: every
/// later step's pods need them).
pub(crate) async fn import_images<S: Step>(
    run: &runner::Runner<S>,
    paths: &HostPaths,
    bundle: &dist::bundle::Bundle,
    step: S,
) -> anyhow::Result<StepReport> {
    run.converge(step, || async {
        let exe = std::env::current_exe().context("finding this selfnode binary")?;
        let report = dist::import::import_bundle(
            &paths.containerd_socket(),
            dist::containerd::K8S_NAMESPACE,
            bundle,
            &exe,
        )
        .await?;
        Ok(!report.nothing_written())
    })
    .await
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// A deprecated API version a client asked for, as the API server's
/// `apiserver_requested_deprecated_apis` metric names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeprecatedApi {
    group: String,
    version: String,
    resource: String,
    /// `MAJOR.MINOR` of the release that removes it; `None` when the API
    /// server names none.
    removed_release: Option<(u32, u32)>,
}

impl DeprecatedApi {
    /// Whether a cluster at `target` no longer serves it.
    fn removed_by(&self, target: &Version) -> bool {
        self.removed_release
            .is_some_and(|r| r <= (target.major, target.minor))
    }
}

impl std::fmt::Display for DeprecatedApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gv = if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        };
        write!(f, "{} {gv}", self.resource)?;
        if let Some((major, minor)) = self.removed_release {
            write!(f, " (removed in {major}.{minor})")?;
        }
        Ok(())
    }
}

/// The API server's record of deprecated API versions asked for since it
/// started.
async fn requested_deprecated_apis(client: &kube::Client) -> anyhow::Result<Vec<DeprecatedApi>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await.context("GET /metrics")?;
    Ok(parse_deprecated_apis(&text))
}

/// The `apiserver_requested_deprecated_apis` samples of Prometheus' text
/// format whose value is not 0, one per group, version and resource.
fn parse_deprecated_apis(metrics: &str) -> Vec<DeprecatedApi> {
    let mut out: Vec<DeprecatedApi> = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_requested_deprecated_apis{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        if value.trim().parse::<f64>().map_or(true, |v| v == 0.0) {
            continue;
        }
        let label = |name: &str| -> String {
            let key = format!("{name}=\"");
            labels
                .split(',')
                .find_map(|kv| kv.trim().strip_prefix(key.as_str()))
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_default()
                .to_string()
        };
        let removed_release = {
            let r = label("removed_release");
            let mut parts = r.split('.');
            match (
                parts.next().and_then(|p| p.parse().ok()),
                parts.next().and_then(|p| p.parse().ok()),
            ) {
                (Some(major), Some(minor)) => Some((major, minor)),
                _ => None,
            }
        };
        let api = DeprecatedApi {
            group: label("group"),
            version: label("version"),
            resource: label("resource"),
            removed_release,
        };
        if !out.contains(&api) {
            out.push(api);
        }
    }
    out
}

/// The steps in order (module docs); those that change nothing are left
/// out.
fn steps(
    cv: &dist::bundle::Versions,
    tv: &dist::bundle::Versions,
    current: &Version,
    target: &Version,
    voters: &[String],
    nodes: &[NodeFacts],
) -> Vec<PlanStep> {
    let mut out = Vec::new();
    let mut step = |component: &str, on: &str, from: &str, to: &str| {
        if from != to {
            out.push(PlanStep {
                component: component.to_string(),
                on: on.to_string(),
                from: from.to_string(),
                to: to.to_string(),
            });
        }
    };
    for m in voters {
        step("etcd", m, &cv.etcd, &tv.etcd);
    }
    let (cur, tgt) = (current.to_string(), target.to_string());
    for c in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
    ] {
        step(c, "every node it runs on, one at a time", &cur, &tgt);
    }
    step(
        "coredns",
        "its Deployment, rolling",
        &cv.coredns,
        &tv.coredns,
    );
    for n in nodes {
        let from = n.kubelet.map(|k| k.to_string()).unwrap_or_default();
        step("kubelet", &n.name, &from, &tgt);
        step("containerd", &n.name, &cv.containerd, &tv.containerd);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(k: &str, etcd: &str, coredns: &str) -> dist::bundle::Versions {
        dist::bundle::Versions {
            kubernetes: k.into(),
            etcd: etcd.into(),
            coredns: coredns.into(),
            pause: "3.10.2".into(),
            containerd: "v2.4.2".into(),
            bundle_format: dist::bundle::BUNDLE_FORMAT,
        }
    }

    #[test]
    fn the_steps_follow_the_skew_policy_and_leave_out_what_does_not_change() {
        let cv = versions("v1.36.3", "v3.6.17", "v1.14.2");
        let tv = versions("v1.37.2", "v3.7.3", "v1.14.6");
        let nodes = vec![
            NodeFacts {
                name: "a".into(),
                ready: true,
                kubelet: Version::parse("v1.36.3"),
            },
            NodeFacts {
                name: "b".into(),
                ready: true,
                kubelet: Version::parse("v1.37.2"),
            },
        ];
        let s = steps(
            &cv,
            &tv,
            &Version::parse("v1.36.3").unwrap(),
            &Version::parse("v1.37.2").unwrap(),
            &["a".to_string()],
            &nodes,
        );
        let order: Vec<(&str, &str)> = s
            .iter()
            .map(|p| (p.component.as_str(), p.on.as_str()))
            .collect();
        assert_eq!(
            order,
            vec![
                ("etcd", "a"),
                ("kube-apiserver", "every node it runs on, one at a time"),
                (
                    "kube-controller-manager",
                    "every node it runs on, one at a time"
                ),
                ("kube-scheduler", "every node it runs on, one at a time"),
                ("kube-proxy", "every node it runs on, one at a time"),
                ("coredns", "its Deployment, rolling"),
                // Node b's kubelet is at the target already; containerd is
                // the same in both bundles.
                ("kubelet", "a"),
            ]
        );
    }

    #[test]
    fn the_exit_code_says_which_refusal() {
        let check = |ok, refusal| Check {
            name: "x",
            ok,
            detail: String::new(),
            refusal,
        };
        let mut p = UpgradePlan {
            bundle: String::new(),
            current: String::new(),
            target: String::new(),
            change: "next-minor",
            checks: vec![check(true, Refusal::Input), check(true, Refusal::State)],
            steps: vec![],
        };
        assert_eq!(p.exit_code(), 0);
        p.checks.push(check(false, Refusal::State));
        assert_eq!(p.exit_code(), 3);
        p.checks.push(check(false, Refusal::Input));
        assert_eq!(p.exit_code(), 2);
    }

    #[test]
    fn deprecated_apis_removed_by_the_target_are_found_in_the_metrics() {
        let metrics = r#"# HELP apiserver_requested_deprecated_apis [STABLE] Gauge of deprecated APIs that have been requested, broken out by API group, version, resource, subresource, and removed_release.
# TYPE apiserver_requested_deprecated_apis gauge
apiserver_requested_deprecated_apis{group="flowcontrol.apiserver.k8s.io",removed_release="1.37",resource="flowschemas",subresource="",version="v1beta3"} 1
apiserver_requested_deprecated_apis{group="flowcontrol.apiserver.k8s.io",removed_release="1.37",resource="flowschemas",subresource="status",version="v1beta3"} 1
apiserver_requested_deprecated_apis{group="",removed_release="",resource="componentstatuses",subresource="",version="v1"} 1
apiserver_requested_deprecated_apis{group="storage.k8s.io",removed_release="1.40",resource="csistoragecapacities",subresource="",version="v1beta1"} 1
apiserver_requested_deprecated_apis{group="batch",removed_release="1.36",resource="cronjobs",subresource="",version="v1beta1"} 0
apiserver_request_total{code="200"} 7
"#;
        let apis = parse_deprecated_apis(metrics);
        // The status subresource is the same API version: one entry.
        assert_eq!(apis.len(), 3, "{apis:?}");
        let target = Version::parse("v1.37.2").unwrap();
        let gone: Vec<String> = apis
            .iter()
            .filter(|a| a.removed_by(&target))
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            gone,
            vec!["flowschemas flowcontrol.apiserver.k8s.io/v1beta3 (removed in 1.37)"]
        );
        // A patch upgrade within 1.36 removes none of them.
        let patch = Version::parse("v1.36.9").unwrap();
        assert!(apis.iter().all(|a| !a.removed_by(&patch)));
        assert_eq!(apis[1].to_string(), "componentstatuses v1");
    }

    #[test]
    fn image_tags_give_versions() {
        assert_eq!(
            image_version(Some("registry.k8s.io/kube-apiserver:v1.37.2")),
            Version::parse("v1.37.2")
        );
        assert_eq!(image_version(Some("localhost:5000/kube-apiserver")), None);
        assert_eq!(image_version(None), None);
    }
}
