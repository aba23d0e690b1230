//! The control plane comes back by itself: an agent restart on a pivoted
//! self-hosted cluster, end to end on real components.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::{retry, text, TestHost};

const START: Duration = Duration::from_secs(180);

fn bundle_version(key: &str) -> String {
    let text = std::fs::read_to_string(support::bundle_dir().join("VERSION")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} not in bundle VERSION"))
        .trim()
        .to_string()
}

/// Every container of every pod: `namespace/pod/container` to
/// (container ID, restart count), from the API.
fn containers(host: &TestHost) -> BTreeMap<String, (String, u64)> {
    let json = host.kubectl_ok(&["get", "pods", "-A", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut out = BTreeMap::new();
    for pod in v["items"].as_array().unwrap() {
        let ns = pod["metadata"]["namespace"].as_str().unwrap();
        let name = pod["metadata"]["name"].as_str().unwrap();
        for c in pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            out.insert(
                format!("{ns}/{name}/{}", c["name"].as_str().unwrap()),
                (
                    c["containerID"].as_str().unwrap_or_default().to_string(),
                    c["restartCount"].as_u64().unwrap_or_default(),
                ),
            );
        }
    }
    out
}

/// The API through the node-local balancer (what admin.conf points at).
fn readyz(host: &TestHost) -> Result<(), String> {
    let out = host.kubectl(&["get", "--raw", "/readyz"]);
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out))
    }
}

#[test]
fn agent_restarts_keep_the_control_plane_and_workloads_running() {
    let mut host = TestHost::for_cluster();
    host.start_agent();
    host.wait_healthy(START);
    let out = host.init(&["--allow-workloads"], None);
    assert!(out.status.success(), "init: {}", text(&out));
    let summary: serde_json::Value = {
        let out = host.init(&["--allow-workloads", "-o", "json"], None);
        assert!(out.status.success(), "second init: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // The API server itself, not the agent's balancer.
    let direct = format!(
        "https://{}:6443",
        summary["advertise_address"].as_str().unwrap()
    );

    let version = bundle_version("ETCD_VERSION")
        .trim_start_matches('v')
        .to_string();
    host.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        &format!("--image=registry.k8s.io/etcd:{version}-0"),
        "--",
        "etcd",
        "--data-dir=/tmp/web",
    ]);
    let rollout = host.kubectl(&["rollout", "status", "deployment/web", "--timeout=180s"]);
    assert!(rollout.status.success(), "web rollout: {}", text(&rollout));
    let before = containers(&host);
    assert!(
        before
            .keys()
            .any(|k| k.starts_with("kube-system/kube-apiserver"))
            && before.keys().any(|k| k.starts_with("default/web-")),
        "{before:#?}"
    );

    for round in 1..=5 {
        let exit = host.stop_agent(Duration::from_secs(120));
        assert!(exit.success(), "round {round}: agent stop {exit:?}");
        // With no agent (no kubelet, no containerd, no balancer) the API
        // server still serves: nothing of the control plane stopped.
        let out = host.kubectl(&["--server", &direct, "get", "--raw", "/readyz"]);
        assert!(
            out.status.success(),
            "round {round}: the API server answers while the agent is down: {}",
            text(&out)
        );
        host.kubectl_ok(&[
            "--server",
            &direct,
            "create",
            "configmap",
            &format!("while-agent-down-{round}"),
            "--from-literal=round=x",
        ]);

        let started = Instant::now();
        host.start_agent();
        retry(
            &format!("round {round}: /readyz through the balancer"),
            Duration::from_secs(120),
            || readyz(&host),
        );
        host.wait_healthy(START);
        eprintln!(
            "round {round}: API through the balancer and agent healthy {:.1}s after start",
            started.elapsed().as_secs_f64()
        );
        let after = containers(&host);
        assert_eq!(
            before, after,
            "round {round}: no container was restarted or replaced"
        );
    }
    for round in 1..=5 {
        host.kubectl_ok(&["get", "configmap", &format!("while-agent-down-{round}")]);
    }
    // The plane still does its job: a scale-up is scheduled and runs.
    host.kubectl_ok(&["scale", "deployment/web", "--replicas=2"]);
    let rollout = host.kubectl(&["rollout", "status", "deployment/web", "--timeout=180s"]);
    assert!(
        rollout.status.success(),
        "scale-up after the restarts: {}",
        text(&rollout)
    );
}
