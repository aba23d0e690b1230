//! `selfnode init` end to end on real components: a pivoted, self-hosted
//! single-node cluster, used the way a user would.

mod support;

use std::process::Output;
use std::time::{Duration, Instant};
use support::{pid_alive, TestHost};

const START: Duration = Duration::from_secs(180);
const STEPS: [&str; 16] = [
    "record_cluster_identity",
    "ensure_pki",
    "ensure_encryption_config",
    "write_node_identity",
    "start_temp_etcd",
    "start_temp_apiserver",
    "write_lb_backends",
    "start_temp_controller_manager",
    "start_temp_scheduler",
    "register_control_plane_node",
    "apply_self_hosted_objects",
    "wait_self_hosted_ready",
    "commit_pivot",
    "stop_temp_plane",
    "point_lb_at_self_hosted",
    "wait_cluster_ready",
];

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn retry(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let end = Instant::now() + timeout;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > end => panic!("timed out waiting for {what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

/// The checks every successful init must pass.
fn assert_healthy_self_hosted_cluster(host: &TestHost, temp_pids: &[u32]) {
    let pods = host.kubectl_ok(&["-n", "kube-system", "get", "pods", "-o", "wide"]);
    for app in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "coredns",
        "selfnode-network",
    ] {
        assert!(
            pods.lines()
                .any(|l| l.starts_with(app) && l.contains("1/1") && l.contains("Running")),
            "{app} Ready:\n{pods}"
        );
    }
    let nodes = host.kubectl_ok(&["get", "nodes"]);
    assert!(
        nodes.contains(" Ready ") && nodes.contains("control-plane"),
        "{nodes}"
    );
    for pid in temp_pids {
        assert!(
            !pid_alive(*pid),
            "temporary control-plane process {pid} still runs"
        );
    }
    let st = host.status();
    for gone in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        assert!(
            st["status"]["components"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["name"] != gone),
            "the agent no longer runs a temporary {gone}: {st:#}"
        );
    }
    assert_eq!(
        st["etcd"]["members"][0]["healthy"], true,
        "status shows etcd: {st:#}"
    );
    assert_eq!(st["etcd"]["members"][0]["is_leader"], true, "{st:#}");
    assert_eq!(st["healthy"], true, "{st:#}");
    let backends = std::fs::read_to_string(host.root.join("var/lib/selfnode/apiservers")).unwrap();
    assert!(
        backends.contains(":6443") && !backends.contains(":6444"),
        "{backends}"
    );
}

fn temp_plane_pids(host: &TestHost) -> Vec<u32> {
    let st = host.status();
    st["status"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
            ]
            .contains(&c["name"].as_str().unwrap_or(""))
        })
        .filter_map(|c| c["pid"].as_u64().map(|p| p as u32))
        .collect()
}

#[test]
fn init_pivots_to_a_self_hosted_cluster_that_serves_a_user_workload() {
    let mut host = TestHost::for_cluster();
    host.start_agent();
    host.wait_healthy(START);

    // Stop just before the pivot to see the temporary plane's processes.
    let out = host.init(&["--allow-workloads"], Some("wait_self_hosted_ready"));
    assert_eq!(
        out.status.code(),
        Some(99),
        "failpoint exit: {}",
        text(&out)
    );
    let temp = temp_plane_pids(&host);
    assert_eq!(
        temp.len(),
        3,
        "temporary apiserver, controller-manager, scheduler run: {:#}",
        host.status()
    );

    let out = host.init(&["--allow-workloads", "-o", "json"], None);
    assert!(out.status.success(), "init: {}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("init -o json");
    assert!(
        summary["ca_cert_hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{summary:#}"
    );
    assert_healthy_self_hosted_cluster(&host, &temp);

    // etcd: one healthy leader, and a snapshot that upstream's etcdutl accepts.
    let out = host
        .selfnode()
        .args(["etcd", "members", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "etcd members: {}", text(&out));
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = members.as_array().unwrap();
    assert_eq!(members.len(), 1, "{members:#?}");
    assert_eq!(members[0]["healthy"], true, "{members:#?}");
    assert_eq!(members[0]["is_leader"], true, "{members:#?}");
    let snap = host.root.join("snapshot.db");
    let out = host
        .selfnode()
        .args(["etcd", "snapshot", "save"])
        .arg(&snap)
        .output()
        .unwrap();
    assert!(out.status.success(), "snapshot save: {}", text(&out));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&snap).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let status = std::process::Command::new(host.bundle.join("bin/etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(&snap)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "etcdutl snapshot status: {}",
        text(&status)
    );
    let bad = host
        .selfnode()
        .args(["etcd", "snapshot", "save", "/proc/no/such/dir/s.db"])
        .output()
        .unwrap();
    assert!(
        !bad.status.success() && text(&bad).contains("cannot write the snapshot"),
        "{}",
        text(&bad)
    );

    // A user workload from a locally imported image (etcd serving plain HTTP),
    // reached through its Service (kube-proxy) by name (CoreDNS).
    let version = bundle_version("ETCD_VERSION")
        .trim_start_matches('v')
        .to_string();
    let image = format!("registry.k8s.io/etcd:{version}-0");
    host.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        &format!("--image={image}"),
        "--port=2379",
        "--",
        "etcd",
        "--data-dir=/tmp/web",
        "--listen-client-urls=http://0.0.0.0:2379",
        "--advertise-client-urls=http://127.0.0.1:2379",
    ]);
    host.kubectl_ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=2379",
    ]);
    let rollout = host.kubectl(&["rollout", "status", "deployment/web", "--timeout=180s"]);
    assert!(
        rollout.status.success(),
        "web rollout: {}\n{}",
        text(&rollout),
        text(&host.kubectl(&["describe", "pods", "-l", "app=web"]))
    );
    retry(
        "the web Service through kube-proxy and CoreDNS",
        Duration::from_secs(120),
        || {
            let out = host.kubectl(&[
                "run",
                "probe",
                "--rm",
                "-i",
                "--restart=Never",
                &format!("--image={image}"),
                "--command",
                "--",
                "etcdctl",
                "--endpoints=http://web.default.svc.cluster.local:80",
                "endpoint",
                "status",
            ]);
            let t = text(&out);
            let _ = host.kubectl(&[
                "delete",
                "pod",
                "probe",
                "--ignore-not-found",
                "--wait=false",
            ]);
            // The status line names the endpoint and the server's version: the
            // name resolved (CoreDNS), the Service forwarded (kube-proxy), the
            // pod answered.
            if out.status.success()
                && t.contains("web.default.svc.cluster.local:80")
                && t.contains(&version)
            {
                Ok(())
            } else {
                Err(t)
            }
        },
    );

    // Upgrades the Kubernetes way: a new image tag on the DaemonSet or the
    // Deployment rolls the pod; the surge pod shares the port until Ready, so
    // the API comes back by itself on a single node.
    let k8s = bundle_version("KUBERNETES_VERSION");
    for (kind, name) in [
        ("daemonset", "kube-apiserver"),
        ("deployment", "kube-scheduler"),
    ] {
        let old = format!("registry.k8s.io/{name}:{k8s}");
        let new = format!("registry.k8s.io/{name}:{k8s}-retag");
        let tag = host.ctr(&["-n", "k8s.io", "images", "tag", "--force", &old, &new]);
        assert!(tag.status.success(), "ctr tag: {}", text(&tag));
        host.kubectl_ok(&[
            "-n",
            "kube-system",
            "set",
            "image",
            &format!("{kind}/{name}"),
            &format!("{name}={new}"),
        ]);
        retry(
            &format!("{name} rolled to {new}"),
            Duration::from_secs(300),
            || {
                let out = host.kubectl(&[
                    "-n",
                    "kube-system",
                    "rollout",
                    "status",
                    &format!("{kind}/{name}"),
                    "--timeout=20s",
                ]);
                if !out.status.success() {
                    return Err(text(&out));
                }
                let images = host.kubectl(&[
                "-n", "kube-system", "get", "pods", "-l", &format!("k8s-app={name}"),
                "-o", "jsonpath={range .items[*]}{.spec.containers[0].image} {.status.containerStatuses[0].ready}{\"\\n\"}{end}",
            ]);
                let t = text(&images);
                if images.status.success()
                    && t.lines().count() == 1
                    && t.contains(&format!("{new} true"))
                {
                    Ok(())
                } else {
                    Err(t)
                }
            },
        );
    }
    host.kubectl_ok(&["get", "nodes"]);

    // Running init again on an initialised host changes nothing and succeeds.
    let again = host.init(&["--allow-workloads"], None);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("already done"), "{}", text(&again));
}

#[test]
fn init_killed_after_every_step_resumes_to_the_same_cluster() {
    let mut host = TestHost::for_cluster();
    host.start_agent();
    host.wait_healthy(START);
    for step in STEPS {
        let out = host.init(&[], Some(step));
        let t = text(&out);
        // A step whose result an earlier one already produced (after the pivot,
        // write_lb_backends lists the self-hosted apiserver only) is not applied
        // again, so its failpoint cannot fire: the run must then say so and finish.
        let skipped = t.contains(&format!("{step} ("))
            && t.lines()
                .any(|l| l.contains(step) && l.contains("already done"));
        match out.status.code() {
            Some(99) => assert!(t.contains(&format!("exiting after step {step}")), "{t}"),
            Some(0) if skipped => {}
            other => panic!("init with the failpoint after {step} ended with {other:?}: {t}"),
        }
    }
    let out = host.init(&[], None);
    assert!(
        out.status.success(),
        "init after every kill: {}",
        text(&out)
    );
    assert_healthy_self_hosted_cluster(&host, &[]);
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let mut host = TestHost::for_cluster();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--pod-cidr", "10.244.0.0/33"], "is not a valid CIDR"),
        (vec!["--pod-cidr", "10.96.0.0/16"], "overlap"),
        (
            vec!["--advertise-address", "203.0.113.77"],
            "not assigned to any interface of this host",
        ),
        (
            vec!["--bundle", "/nonexistent/bundle"],
            "/nonexistent/bundle",
        ),
    ];
    for (args, want) in cases {
        let out = host.init(&args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(want), "{args:?}: {}", text(&out));
    }
    let written: Vec<_> = std::fs::read_dir(&host.root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        written.is_empty(),
        "nothing written under the host root: {written:?}"
    );

    // A host that belongs to another cluster refuses (exit 3) and keeps its state.
    host.start_agent();
    host.wait_healthy(START);
    let out = host.init(
        &["--cluster-name", "alpha"],
        Some("record_cluster_identity"),
    );
    assert_eq!(out.status.code(), Some(99), "{}", text(&out));
    let out = host.init(&["--cluster-name", "beta"], None);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("already belongs to cluster \"alpha\"")
            && text(&out).contains("selfnode reset"),
        "{}",
        text(&out)
    );
    assert!(
        !host.root.join("etc/kubernetes/pki/ca.crt").exists(),
        "the refused init wrote no PKI"
    );
}

fn bundle_version(key: &str) -> String {
    let text = std::fs::read_to_string(support::bundle_dir().join("VERSION")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap()
        .trim()
        .to_string()
}
