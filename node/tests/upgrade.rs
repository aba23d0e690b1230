//! A real Kubernetes minor upgrade on one host, end to end: a cluster made
//! from the previous minor's bundle (`versions-previous.env`), a workload
//! Deployment behind a Service, then `selfnode upgrade apply --bundle
//! <current>`, killed after every step and run again, with a power cut of
//! the host after `upgrade_etcd`. Every component
//! reports the new version, the objects from
//! before are there, and the workload answered throughout but for a gap
//! the test measures and prints. Refusals come first, before anything
//! changes. Then `upgrade rollback` brings it back in place, with what was
//! written in between. And three hosts with the new bundle on one: `upgrade
//! stage` puts it on every host, `upgrade apply` moves them all.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::sequences::plan::Step;
use node::sequences::upgrade::apply::{self, UpgradeStep};
use support::{retry, text, version_in, TestHost};

const START: Duration = Duration::from_secs(180);

/// One HTTP request to etcd's `/version` at `addr`: the workload answered.
fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
    if s.write_all(b"GET /version HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("etcdserver")
}

/// Requests the workload every 200 ms until stopped: how many, how many
/// failed, and the longest run of failures.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u32, u32, Duration)>,
}

impl Prober {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut total, mut failed) = (0u32, 0u32);
            let mut longest = Duration::ZERO;
            let mut down_since: Option<Instant> = None;
            while !s.load(Ordering::Relaxed) {
                total += 1;
                if answers(addr) {
                    if let Some(t) = down_since.take() {
                        longest = longest.max(t.elapsed());
                    }
                } else {
                    failed += 1;
                    down_since.get_or_insert_with(Instant::now);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if let Some(t) = down_since {
                longest = longest.max(t.elapsed());
            }
            (total, failed, longest)
        });
        Prober { stop, thread }
    }

    fn finish(self) -> (u32, u32, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The workload: etcd from the `previous` bundle's image, `replicas` pods
/// serving plain HTTP behind a Service, answering from `host` through
/// kube-proxy; returns the Service's address.
fn web_service(host: &TestHost, previous: &std::path::Path, replicas: u32) -> SocketAddr {
    let etcd_version = version_in(previous, "ETCD_VERSION");
    let image = format!(
        "registry.k8s.io/etcd:{}-0",
        etcd_version.trim_start_matches('v')
    );
    support::web_workload(host, &image, replicas);
    let rollout = host.kubectl(&["rollout", "status", "deployment/web", "--timeout=300s"]);
    assert!(rollout.status.success(), "web rollout: {}", text(&rollout));
    let ip = host.kubectl_ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let addr: SocketAddr = format!("{}:80", ip.trim()).parse().unwrap();
    retry("the web Service from the host", START, || {
        answers(addr)
            .then_some(())
            .ok_or_else(|| "no answer".into())
    });
    addr
}

/// `selfnode upgrade apply --bundle BUNDLE EXTRA…` on `host`.
fn upgrade(host: &TestHost, bundle: &std::path::Path, extra: &[&str]) -> std::process::Output {
    host.selfnode()
        .args(["upgrade", "apply", "--bundle"])
        .arg(bundle)
        .args(extra)
        .output()
        .unwrap()
}

/// The API server's version, as `kubectl version` reports it.
fn server_version(host: &TestHost) -> String {
    let v = host.kubectl_ok(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    v["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Every component at `bundle`'s versions and none left at `other`: the
/// API server, the Node's kubelet, each control-plane pod's image, etcd's.
fn assert_every_component_at(host: &TestHost, bundle: &std::path::Path, other: &str) {
    let k = version_in(bundle, "KUBERNETES_VERSION");
    assert_eq!(server_version(host), k);
    let kubelet = host.kubectl_ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[*].status.nodeInfo.kubeletVersion}",
    ]);
    assert!(
        !kubelet.trim().is_empty() && kubelet.split_whitespace().all(|v| v == k),
        "every kubelet at {k}: {kubelet}"
    );
    // A pod of the old version may still be terminating: a minute for it.
    let etcd = version_in(bundle, "ETCD_VERSION");
    retry(
        &format!("every control-plane pod at {k}"),
        Duration::from_secs(60),
        || {
            let images = host.kubectl_ok(&[
                "-n",
                "kube-system",
                "get",
                "pods",
                "-o",
                "jsonpath={range .items[*]}{.spec.containers[0].image}{\"\\n\"}{end}",
            ]);
            let mut wrong = Vec::new();
            for c in [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kube-proxy",
            ] {
                if !images.contains(&format!("registry.k8s.io/{c}:{k}")) {
                    wrong.push(format!("no {c} at {k}"));
                }
                if images.contains(&format!("{c}:{other}")) {
                    wrong.push(format!("{c} left at {other}"));
                }
            }
            if !images.contains(&format!("etcd:{}-0", etcd.trim_start_matches('v'))) {
                wrong.push(format!("etcd not at {etcd}"));
            }
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(format!("{}: {images}", wrong.join(", ")))
            }
        },
    );
}

#[test]
fn one_host_upgrades_from_the_previous_minor_with_its_workload_answering() {
    let previous = support::previous_bundle_dir();
    let current = support::bundle_dir();
    let (from, to) = (
        version_in(&previous, "KUBERNETES_VERSION"),
        version_in(&current, "KUBERNETES_VERSION"),
    );
    let mut host = TestHost::for_cluster();
    host.bundle = previous.clone();
    host.start_agent();
    host.wait_healthy(START);
    let out = host.init(&["--allow-workloads"], None);
    assert!(out.status.success(), "init on {from}: {}", text(&out));
    assert_eq!(server_version(&host), from);

    host.kubectl_ok(&[
        "create",
        "configmap",
        "before-upgrade",
        "--from-literal=k=v",
    ]);
    let addr = web_service(&host, &previous, 2);

    // Refused before anything changes: a bundle that lacks a binary (exit
    // 2), and the cluster's own version (nothing to upgrade, exit 2).
    let scratch = tempfile::tempdir().unwrap();
    let broken = support::bundle_without(scratch.path(), "bin/kubelet");
    let out = upgrade(&host, &broken, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("upgrade refused, nothing was changed")
            && text(&out).contains("bin/kubelet"),
        "a bundle missing bin/kubelet: {}",
        text(&out)
    );
    // The bundle the cluster runs: nothing to do, and nothing written.
    let out = upgrade(&host, &previous, &[]);
    assert!(
        out.status.success() && text(&out).contains("nothing to upgrade"),
        "{}",
        text(&out)
    );
    assert!(!host.root.join("var/lib/selfnode/upgrade").exists());

    let mut prober = Prober::start(addr);
    let (mut total, mut failed, mut longest) = (0, 0, Duration::ZERO);
    let started = Instant::now();
    let mut cut_took = Duration::ZERO;
    // Killed after every step (the failpoint exits as kill -9 would), run
    // again each time: it resumes where it stopped.
    for step in apply::plan().steps().map(|p| p.step) {
        if step == UpgradeStep::FinishUpgrade {
            break;
        }
        let out = host
            .selfnode()
            .args(["upgrade", "apply", "--bundle"])
            .arg(&current)
            .env("SELFNODE_FAILPOINT", step.name())
            .output()
            .unwrap();
        support::assert_stopped_at_failpoint("upgrade", step.name(), &out);
        if step == UpgradeStep::UpgradeEtcd {
            // A power cut half-way: etcd at the new version, the rest of
            // the plane at the old one. The agent brings the plane back
            // from its checkpoint and the next run resumes. The workload
            // is down with the host: its requests are not counted until
            // it answers again.
            let (t, f, l) = prober.finish();
            (total, failed, longest) = (total + t, failed + f, longest.max(l));
            let cut = Instant::now();
            host.power_cut();
            host.start_agent();
            retry("/readyz after the power cut", START, || {
                let out = host.kubectl(&["get", "--raw", "/readyz"]);
                out.status.success().then_some(()).ok_or_else(|| text(&out))
            });
            retry("the workload after the power cut", START, || {
                answers(addr)
                    .then_some(())
                    .ok_or_else(|| "no answer".into())
            });
            cut_took = cut.elapsed();
            prober = Prober::start(addr);
        }
    }
    // The agent that `upgrade_host` starts again in place.
    let agent_pid = host.agent_pid();
    let out = upgrade(&host, &current, &["-o", "json"]);
    let took = started.elapsed() - cut_took;
    let (t, f, l) = prober.finish();
    let (total, failed, longest) = (total + t, failed + f, longest.max(l));
    assert!(
        out.status.success(),
        "upgrade apply: {}\n{}",
        text(&out),
        host.diagnostics()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert!(steps.contains(&"upgrade_hosts"), "{report:#}");
    println!(
        "upgrade {from} -> {to}: {:.0}s (and {:.0}s from a power cut after upgrade_etcd to the API and the workload back); workload: {failed} of {total} requests failed, longest gap {:.1}s (the power cut not counted)",
        took.as_secs_f64(),
        cut_took.as_secs_f64(),
        longest.as_secs_f64()
    );

    // Every component at the new version.
    assert_every_component_at(&host, &current, &from);
    let status = host.status();
    assert_eq!(
        status["status"]["bundle"].as_str(),
        Some(current.to_str().unwrap()),
        "the agent runs the new bundle"
    );
    // Started again in place: the same pid, its containers kept.
    assert_eq!(host.agent_pid(), agent_pid);

    // The objects from before, and the workload, are there.
    host.kubectl_ok(&["get", "configmap", "before-upgrade"]);
    assert!(answers(addr), "the workload after the upgrade");

    // Again: the cluster runs the target now, nothing to upgrade; and back
    // to the previous bundle is a downgrade, which apply refuses (rollback
    // is the way back).
    let again = upgrade(&host, &current, &["-o", "json"]);
    assert!(again.status.success(), "{}", text(&again));
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["up_to_date"], true, "{again:#}");
    let down = upgrade(&host, &previous, &[]);
    assert_eq!(down.status.code(), Some(2), "{}", text(&down));
    assert!(text(&down).contains("never goes back"), "{}", text(&down));
    let st = host
        .selfnode()
        .args(["upgrade", "status", "-o", "json"])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["to"], to.as_str());
    assert!(st["finished"].is_u64(), "{st:#}");

    // Rollback, in place: every component back at the previous version, a
    // write made after the upgrade kept, the workload answering.
    host.kubectl_ok(&["create", "configmap", "after-upgrade", "--from-literal=k=v"]);
    let prober = Prober::start(addr);
    let started = Instant::now();
    let out = host
        .selfnode()
        .args(["upgrade", "rollback", "-o", "json"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let (total, failed, longest) = prober.finish();
    assert!(
        out.status.success(),
        "upgrade rollback: {}\n{}",
        text(&out),
        host.diagnostics()
    );
    println!(
        "rollback {to} -> {from}: {:.0}s; workload: {failed} of {total} requests failed, longest gap {:.1}s",
        took.as_secs_f64(),
        longest.as_secs_f64()
    );
    assert_every_component_at(&host, &previous, &to);
    host.kubectl_ok(&["get", "configmap", "before-upgrade", "after-upgrade"]);
    assert!(answers(addr), "the workload after the rollback");
    let again = host
        .selfnode()
        .args(["upgrade", "rollback"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    assert!(
        text(&again).contains("rolled back already"),
        "{}",
        text(&again)
    );
}

/// Three hosts (two control plane, one worker), the new bundle on the
/// first only. `upgrade stage` first: the other hosts fetch it from the
/// first over mutual TLS, check every file against the published
/// SHA256SUMS and import its images (cut short after the offer and run
/// again; a damaged bundle refused before anything is offered). Then
/// `upgrade apply` on the first host: the second host's etcd member and
/// both other hosts move by their agents, one at a time; every component
/// on every host ends at the new version, and a 3-replica Deployment
/// behind a Service is requested throughout (its failed requests counted
/// and printed).
#[test]
fn three_hosts_upgrade_with_the_new_bundle_on_one_host() {
    let previous = support::previous_bundle_dir();
    let current = support::bundle_dir();
    let (from, to) = (
        version_in(&previous, "KUBERNETES_VERSION"),
        version_in(&current, "KUBERNETES_VERSION"),
    );
    let lan = support::Lan::create();
    let (first, summary) = TestHost::init_on_lan_from(&lan, &previous);
    let node1 = summary["node_name"].as_str().unwrap().to_string();
    let join = summary["join_string"].as_str().unwrap().to_string();
    let mut second = TestHost::in_netns(&first, &lan, 2);
    second.bundle = previous.clone();
    support::join_control_plane(&first, &mut second, "node2");
    let mut third = TestHost::in_netns(&first, &lan, 3);
    third.bundle = previous.clone();
    third.start_agent();
    third.wait_healthy(START);
    let out = third.join(&[&join, "--node-name", "node3"]);
    assert!(out.status.success(), "join: {}", text(&out));
    support::wait_voters(&first, &[&node1, "node2"], START);

    let addr = web_service(&first, &previous, 3);

    let stage = |bundle: &std::path::Path, failpoint: Option<&str>| {
        let mut cmd = first.selfnode();
        cmd.args([
            "upgrade",
            "stage",
            "--timeout",
            "10m",
            "-o",
            "json",
            "--bundle",
        ])
        .arg(bundle);
        if let Some(step) = failpoint {
            cmd.env(node::sequences::runner::FAILPOINT_ENV, step);
        }
        cmd.output().unwrap()
    };
    let offer_gone = || {
        let out = first.kubectl(&[
            "-n",
            "kube-system",
            "get",
            "configmap",
            "selfnode-bundle-offer",
        ]);
        text(&out).contains("NotFound")
    };

    // A damaged bundle: exit 2, nothing offered.
    // Before: `upgrade plan` says which hosts lack the bundle.
    let plan = |bundle: &std::path::Path| -> serde_json::Value {
        let out = first
            .selfnode()
            .args(["upgrade", "plan", "-o", "json", "--bundle"])
            .arg(bundle)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("plan: {}", text(&out)))
    };
    let staged = |v: &serde_json::Value| -> serde_json::Value {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "staged")
            .cloned()
            .unwrap_or_else(|| panic!("no staged check: {v:#}"))
    };
    let before = staged(&plan(&current));
    assert!(
        before["detail"].as_str().unwrap().contains("node2")
            && before["detail"].as_str().unwrap().contains("node3"),
        "{before:#}"
    );

    let scratch = tempfile::tempdir().unwrap();
    let broken = support::damaged_bundle(scratch.path(), "bin/kubelet", "#!/bin/sh\n");
    let out = stage(&broken, None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("bin/kubelet"), "{}", text(&out));
    assert!(offer_gone(), "a refused bundle is never offered");

    // Cut short once the offer is out (its server goes with it), then run
    // again: it converges.
    let out = stage(&current, Some("offer_bundle"));
    support::assert_stopped_at_failpoint("stage", "offer_bundle", &out);
    let started = Instant::now();
    let out = stage(&current, None);
    assert!(
        out.status.success(),
        "upgrade stage: {}\n{}",
        text(&out),
        second.agent_log()
    );
    println!(
        "upgrade stage: the bundle on every host in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = report["id"].as_str().unwrap().to_string();
    assert_eq!(report["kubernetes"], to.as_str());
    assert_eq!(report["hosts"].as_array().unwrap().len(), 3, "{report:#}");
    assert!(offer_gone(), "the offer is withdrawn at the end");

    // On the other hosts: the bundle, whole and checked, and its images.
    for (host, name) in [(&second, "node2"), (&third, "node3")] {
        let fetched = host.root.join(format!("var/lib/selfnode/bundles/{id}"));
        assert_eq!(
            std::fs::read_to_string(fetched.join("SHA256SUMS")).unwrap(),
            std::fs::read_to_string(current.join("SHA256SUMS")).unwrap()
        );
        dist::bundle::Bundle::open(&fetched)
            .unwrap()
            .verify_checksums()
            .unwrap();
        let images = text(&host.ctr(&["-n", "k8s.io", "images", "ls", "-q"]));
        for image in ["kube-proxy", "kube-apiserver"] {
            let want = format!("registry.k8s.io/{image}:{to}");
            assert!(
                images.lines().any(|l| l == want),
                "{want} on {name}:\n{images}"
            );
        }
        let held = first.kubectl_ok(&[
            "get",
            "node",
            name,
            "-o",
            "jsonpath={.metadata.annotations.selfnode\\.dev/bundle-ready}",
        ]);
        assert_eq!(held.trim(), id, "{name}");
    }
    let after = staged(&plan(&current));
    assert!(
        after["detail"]
            .as_str()
            .unwrap()
            .starts_with("every host holds"),
        "{after:#}"
    );
    // Nothing that runs changed: the cluster is still at its version.
    assert_eq!(
        server_version(&first),
        version_in(&previous, "KUBERNETES_VERSION")
    );

    // Again: every host holds it; nothing to fetch.
    let out = stage(&current, None);
    assert!(out.status.success(), "stage again: {}", text(&out));

    // The upgrade, from the first host: the other hosts follow it.
    first.kubectl_ok(&[
        "create",
        "configmap",
        "before-upgrade",
        "--from-literal=k=v",
    ]);
    let prober = Prober::start(addr);
    let started = Instant::now();
    let out = upgrade(&first, &current, &["-o", "json"]);
    let took = started.elapsed();
    let (total, failed, longest) = prober.finish();
    assert!(
        out.status.success(),
        "upgrade apply: {}\n{}\n--- node2's agent\n{}\n--- node3's agent\n{}",
        text(&out),
        first.diagnostics(),
        second.agent_log(),
        third.agent_log()
    );
    println!(
        "upgrade of 3 hosts {from} -> {to}: {:.0}s; workload: {failed} of {total} requests failed, longest gap {:.1}s",
        took.as_secs_f64(),
        longest.as_secs_f64()
    );
    assert_every_component_at(&first, &current, &from);
    // Both etcd members' static pods at the new version.
    let etcd_to = version_in(&current, "ETCD_VERSION");
    let images = first.kubectl_ok(&[
        "-n",
        "kube-system",
        "get",
        "pods",
        "-l",
        "component=etcd",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    let want = format!("registry.k8s.io/etcd:{}-0", etcd_to.trim_start_matches('v'));
    assert_eq!(
        images.split_whitespace().filter(|i| *i == want).count(),
        2,
        "both members' static pods at {want}: {images}"
    );
    support::wait_voters(&first, &[&node1, "node2"], START);
    // The other hosts run their fetched copy of the bundle.
    for (host, name) in [(&second, "node2"), (&third, "node3")] {
        let st = host.status();
        let want = host
            .root_arg()
            .join(format!("var/lib/selfnode/bundles/{id}"));
        assert_eq!(
            st["status"]["bundle"].as_str(),
            want.to_str(),
            "{name} runs the fetched bundle: {st:#}"
        );
    }
    first.kubectl_ok(&["get", "configmap", "before-upgrade"]);
    assert!(answers(addr), "the workload after the upgrade");
    let turns = first.kubectl(&["-n", "kube-system", "get", "configmap", "selfnode-upgrade"]);
    assert!(
        text(&turns).contains("NotFound"),
        "no turns left: {}",
        text(&turns)
    );
    // Again: nothing to upgrade.
    let again = upgrade(&first, &current, &["-o", "json"]);
    assert!(again.status.success(), "{}", text(&again));
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["up_to_date"], true, "{again:#}");
}
