//! More than one host: tokens, and a host joining with the join string,
//! end to end on real components (the second host in its own network
//! namespace and cgroup root).

mod support;

use std::time::Duration;
use support::{assert_stopped_at_failpoint, text, Lan, TestHost};

const START: Duration = Duration::from_secs(180);

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

/// Nothing of a cluster on `host`: no identity, node identity, kubelet
/// kubeconfig, bootstrap kubeconfig or CA.
fn nothing_written(host: &TestHost) {
    for path in [
        "var/lib/selfnode/node.json",
        "etc/kubernetes/bootstrap-kubelet.conf",
        "etc/kubernetes/kubelet.conf",
        "etc/kubernetes/pki/ca.crt",
    ] {
        assert!(
            !host.root.join(path).exists(),
            "{path} written by a join that failed"
        );
    }
    // The checkpoint records no cluster: recover finds none.
    let out = host.selfnode().arg("recover").output().unwrap();
    assert!(
        code(&out) == Some(3) && text(&out).contains("belongs to no cluster"),
        "the host records no cluster: {}",
        text(&out)
    );
}

fn text_of(v: &serde_json::Value) -> String {
    v.to_string()
}

#[test]
fn a_host_joins_with_the_join_string_and_bad_ones_are_refused_before_anything_is_written() {
    let lan = Lan::create();
    let (first, summary) = TestHost::init_on_lan(&lan);
    let join = summary["join_string"].as_str().unwrap().to_string();
    let ca_pin = summary["ca_cert_hash"].as_str().unwrap();
    assert!(join.ends_with(&format!("/{ca_pin}")), "{join}");

    // Tokens: init's, listed without its secret.
    let out = first
        .selfnode()
        .args(["token", "list", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = join.split('@').next().unwrap().split('.').nth(1).unwrap();
    assert!(!text_of(&listed).contains(secret), "no secret in the list");
    assert_eq!(listed[0]["description"], "made by selfnode init");
    let out = first
        .selfnode()
        .args(["token", "create", "--ttl", "0s"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "a token must expire: {}", text(&out));

    let mut second = TestHost::in_netns(&first, &lan, 2);
    second.start_agent();
    second.wait_healthy(START);

    // Bad input: a clear error, the documented exit code, nothing written.
    let pinned_elsewhere = format!(
        "{}/sha256:{}",
        join.rsplit_once('/').unwrap().0,
        "0".repeat(64)
    );
    let deleted = first.token_create(&["--description", "deleted"]);
    let out = first
        .selfnode()
        .args(["token", "delete", deleted.split('@').next().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let expired = first.token_create(&["--ttl", "1s"]);
    // A sleep, not a poll: what this waits for is the clock passing the
    // token's expiry (a 1 s TTL), and nothing else changes to poll for; the
    // join below is what must then refuse it.
    std::thread::sleep(Duration::from_secs(2));
    let unknown = format!(
        "zzzzzz.zzzzzzzzzzzzzzzz@{}",
        join.split_once('@').unwrap().1
    );
    let unreachable = format!(
        "{}@198.18.0.99:6443/{ca_pin}",
        join.split('@').next().unwrap()
    );
    for (what, string, exit, says) in [
        (
            "malformed",
            "not-a-join-string".to_string(),
            2,
            "malformed join string",
        ),
        (
            "wrong CA pin",
            pinned_elsewhere,
            2,
            "is not the one the join string pins",
        ),
        ("unknown token", unknown, 2, "has no valid token zzzzzz"),
        ("deleted token", deleted, 2, "has no valid token"),
        ("expired token", expired, 2, "has no valid token"),
        (
            "unreachable endpoint",
            unreachable,
            1,
            "cannot read kube-public/cluster-info",
        ),
    ] {
        let out = second.join(&[&string, "--node-name", "node2"]);
        assert_eq!(code(&out), Some(exit), "{what}: {}", text(&out));
        assert!(text(&out).contains(says), "{what}: {}", text(&out));
        assert!(
            !text(&out).contains(join.split('@').next().unwrap()),
            "{what}: the token is never echoed: {}",
            text(&out)
        );
        nothing_written(&second);
    }

    // A name the cluster has is refused before anything is written: a
    // token makes new nodes only.
    let node1 = summary["node_name"].as_str().unwrap().to_string();
    let out = second.join(&[&join, "--node-name", &node1]);
    assert_eq!(code(&out), Some(3), "a taken name: {}", text(&out));
    assert!(
        text(&out).contains(&format!("has a Node named \"{node1}\"")),
        "{}",
        text(&out)
    );
    nothing_written(&second);
    // Nor can a token holder get a certificate for an existing node by
    // asking the API directly (upstream's group-wide approval would have
    // given it system:node:<control-plane node>, and with it that node's
    // view of the cluster): denied, never approved; a new name is approved.
    let token = join.split('@').next().unwrap().to_string();
    assert_eq!(
        csr_as_token(&first, &token, &node1, "impersonate"),
        "Denied",
        "a token holder never becomes an existing node"
    );
    assert_eq!(
        csr_as_token(&first, &token, "a-new-name", "newcomer"),
        "Approved",
        "a new name is approved"
    );

    // The join, killed after every step of its plan (as kill -9 would) and
    // run again each time: it resumes, never inits, and converges.
    use node::sequences::join::{plan, Observed};
    use node::sequences::plan::Step as _;
    for planned in plan(Observed::default()).steps() {
        let step = planned.step.name();
        let out = second
            .selfnode()
            .env(node::sequences::runner::FAILPOINT_ENV, step)
            .args(["join", &join, "--node-name", "node2"])
            .output()
            .unwrap();
        assert_stopped_at_failpoint("join", step, &out);
    }
    // The last run: one line per step, the node Ready in the cluster.
    let out = second.join(&["--token", &join, "--node-name", "node2"]);
    assert!(out.status.success(), "join: {}", text(&out));
    for step in [
        "discover_cluster",
        "record_cluster_identity",
        "write_bootstrap_kubeconfig",
        "wait_node_ready",
    ] {
        assert!(
            text(&out).contains(&format!("[join] {step} (")),
            "{}",
            text(&out)
        );
    }
    // The agent's --cgroup-root reached the kubelet: node2's pods live
    // under its own cgroup, apart from the first host's.
    let kubelet_config =
        std::fs::read_to_string(second.root.join("var/lib/kubelet/config.yaml")).unwrap();
    let ns = &second.netns.as_ref().unwrap().name;
    assert!(
        kubelet_config.contains(&format!("\"cgroupRoot\": \"/selfnode-{ns}\"")),
        "{kubelet_config}"
    );
    assert!(
        std::path::Path::new(&format!("/sys/fs/cgroup/memory/selfnode-{ns}/kubepods")).is_dir(),
        "node2's pods are under its cgroup root"
    );
    let nodes = first.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    assert!(
        nodes.contains("node2") && nodes.contains("198.18.0.2"),
        "{nodes}"
    );
    let ready = first.kubectl_ok(&[
        "get",
        "node",
        "node2",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(ready, "True");

    // Pods on the two hosts reach each other by pod IP (the pod network's
    // routes between hosts): a client on node2 writes to an etcd on vm.
    let image = format!(
        "registry.k8s.io/etcd:{}-0",
        support::bundle_version("ETCD_VERSION").trim_start_matches('v')
    );
    let pod = |name: &str, node: &str, restart: &str, command: &[&str]| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"run": name}},
            "spec": {
                "nodeName": node,
                "restartPolicy": restart,
                "containers": [{"name": name, "image": image, "imagePullPolicy": "Never", "command": command}],
            },
        })
        .to_string()
    };
    let apply = |manifest: String| {
        let file = first.root.join("pod.json");
        std::fs::write(&file, manifest).unwrap();
        first.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    };
    apply(pod(
        "server",
        "vm",
        "Always",
        &[
            "etcd",
            "--data-dir=/tmp/data",
            "--listen-client-urls=http://0.0.0.0:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
        ],
    ));
    first.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/server",
        "--timeout=120s",
    ]);
    let server_ip = first.kubectl_ok(&["get", "pod", "server", "-o", "jsonpath={.status.podIP}"]);
    apply(pod(
        "client",
        "node2",
        "Never",
        &[
            "etcdctl",
            &format!("--endpoints=http://{server_ip}:2379"),
            "--dial-timeout=5s",
            "put",
            "from",
            "node2",
        ],
    ));
    let finished = |name: &str| {
        support::retry(
            &format!("pod {name} on node2 to finish"),
            Duration::from_secs(120),
            || {
                let phase =
                    first.kubectl_ok(&["get", "pod", name, "-o", "jsonpath={.status.phase}"]);
                match phase.as_str() {
                    "Succeeded" => Ok(()),
                    "Failed" => panic!(
                        "pod {name} on node2 failed: {}",
                        text(&first.kubectl(&["logs", name]))
                    ),
                    other => Err(other.to_string()),
                }
            },
        );
    };
    finished("client");
    // ... with its own source address: the first host's connection
    // tracking saw the client pod's IP, not node2's (no masquerading inside
    // the cluster network).
    let client_ip = first.kubectl_ok(&["get", "pod", "client", "-o", "jsonpath={.status.podIP}"]);
    let tracked = std::process::Command::new("conntrack")
        .args(["-L", "-p", "tcp", "--dport", "2379", "-d", &server_ip])
        .output()
        .unwrap();
    let tracked = text(&tracked);
    assert!(
        tracked.contains(&format!("src={client_ip} ")),
        "the server saw {client_ip} as the source: {tracked}"
    );

    // A Service for the server: its name resolves through CoreDNS from a
    // pod on node2, and its ClusterIP answers from both hosts.
    first.kubectl_ok(&["expose", "pod", "server", "--port=2379", "--name=server"]);
    apply(pod(
        "by-name",
        "node2",
        "Never",
        &[
            "etcdctl",
            "--endpoints=http://server.default.svc.cluster.local:2379",
            "--dial-timeout=5s",
            "get",
            "from",
        ],
    ));
    finished("by-name");
    let got = first.kubectl_ok(&["logs", "by-name"]);
    assert!(
        got.contains("node2"),
        "read back through the Service: {got}"
    );
    let cluster_ip = first.kubectl_ok(&[
        "get",
        "service",
        "server",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    for host in [&first, &second] {
        let out = host
            .on_host("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://{cluster_ip}:2379/health"))
            .output()
            .unwrap();
        assert!(
            out.status.success() && text(&out).contains("true"),
            "the ClusterIP answers on {}: {}",
            host.root.display(),
            text(&out)
        );
    }

    // The token's secret left the disk once the kubelet had its own
    // credentials.
    assert!(!second
        .root
        .join("etc/kubernetes/bootstrap-kubelet.conf")
        .exists());
    // Run again with the same string after its token is gone (expired,
    // deleted): a joined host needs no token; it converges.
    let out = first
        .selfnode()
        .args(["token", "delete", join.split('@').next().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = second.join(&[&join, "--node-name", "node2"]);
    assert!(out.status.success(), "join again: {}", text(&out));
    assert!(
        text(&out).contains("skipped: the host has joined"),
        "{}",
        text(&out)
    );
    // A host that belongs to a cluster never joins another one (or this
    // one under another name): exit 3.
    let out = first.join(&[&join, "--node-name", "other"]);
    assert_eq!(code(&out), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("already belongs to cluster"),
        "{}",
        text(&out)
    );
}

/// Creates, with bootstrap token `token`, a kubelet client certificate
/// request for `system:node:<node>` (as a kubelet or anyone holding the
/// token could) and waits for its decision: `Approved` or `Denied`.
fn csr_as_token(first: &TestHost, token: &str, node: &str, name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let req = dir.path().join("r.csr");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&req)
        .args(["-subj", &format!("/O=system:nodes/CN=system:node:{node}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", text(&out));
    use base64::Engine as _;
    let pem = std::fs::read(&req).unwrap();
    let csr = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
        }
    });
    let file = dir.path().join("csr.json");
    std::fs::write(&file, csr.to_string()).unwrap();
    let server = first.kubectl_ok(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let out = std::process::Command::new(support::bundle_dir().join("bin/kubectl"))
        .args([
            "--kubeconfig",
            "/dev/null",
            "--server",
            server.trim(),
            "--token",
            token,
        ])
        .arg("--certificate-authority")
        .arg(first.root.join("etc/kubernetes/pki/ca.crt"))
        .args(["create", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the token may create a CSR: {}",
        text(&out)
    );
    let mut decision = String::new();
    support::retry(
        &format!("a decision on CSR {name}"),
        Duration::from_secs(60),
        || {
            decision = first.kubectl_ok(&[
                "get",
                "csr",
                name,
                "-o",
                "jsonpath={.status.conditions[*].type}",
            ]);
            if decision.is_empty() {
                Err("pending".into())
            } else {
                Ok(())
            }
        },
    );
    decision.trim().to_string()
}
