//! The control plane comes back by itself: an agent restart on a pivoted
//! self-hosted cluster, end to end on real components.

mod support;

use node::sequences::plan::Step as _;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::{bundle_version, retry, text, TestHost};

const START: Duration = Duration::from_secs(180);

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

/// A user Deployment from a locally imported image (etcd), rolled out.
fn run_deployment(host: &TestHost, name: &str) {
    let version = bundle_version("ETCD_VERSION")
        .trim_start_matches('v')
        .to_string();
    host.kubectl_ok(&[
        "create",
        "deployment",
        name,
        &format!("--image=registry.k8s.io/etcd:{version}-0"),
        "--",
        "etcd",
        "--data-dir=/tmp/data",
    ]);
    let rollout = host.kubectl(&[
        "rollout",
        "status",
        &format!("deployment/{name}"),
        "--timeout=180s",
    ]);
    assert!(
        rollout.status.success(),
        "{name} rollout: {}\n{}",
        text(&rollout),
        text(&host.kubectl(&["get", "pods", "-A", "-o", "wide"]))
    );
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
    cluster(&mut host);
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

    run_deployment(&host, "web");
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

/// The self-hosted control-plane pods (not checkpoint copies) are all
/// Ready, and no checkpoint copy runs.
fn self_hosted_plane_ready(host: &TestHost) -> Result<(), String> {
    let out = host.kubectl(&["-n", "kube-system", "get", "pods", "-o", "json"]);
    if !out.status.success() {
        return Err(text(&out));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let pods = v["items"].as_array().cloned().unwrap_or_default();
    for app in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let ready = pods.iter().any(|p| {
            p["metadata"]["labels"]["k8s-app"] == app
                && p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if !ready {
            return Err(format!("no Ready {app} pod"));
        }
    }
    if let Some(copy) = pods
        .iter()
        .find(|p| p["metadata"]["labels"]["selfnode.dev/checkpoint-of"].is_string())
    {
        return Err(format!(
            "the checkpoint copy {} still runs",
            copy["metadata"]["name"]
        ));
    }
    for app in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let manifest = host
            .root
            .join(format!("etc/kubernetes/manifests/{app}-checkpoint.json"));
        if manifest.exists() {
            return Err(format!("{} is still there", manifest.display()));
        }
    }
    Ok(())
}

fn checkpoint_detail(host: &TestHost) -> String {
    let st = host.status();
    TestHost::component(&st, "checkpoint")["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn power_cuts_bring_the_control_plane_back_from_the_checkpoint() {
    let mut host = TestHost::for_cluster();
    cluster_with_a_kept_apiserver(&mut host);
    let store = host.root.join("var/lib/selfnode/checkpoint");
    assert_private(&store);

    for cut in 1..=5 {
        host.kubectl_ok(&[
            "create",
            "configmap",
            &format!("before-cut-{cut}"),
            "--from-literal=cut=x",
        ]);
        host.power_cut();
        let started = Instant::now();
        host.start_agent();
        retry(
            &format!("cut {cut}: /readyz through the balancer"),
            Duration::from_secs(180),
            || readyz(&host),
        );
        let api = started.elapsed().as_secs_f64();
        retry(
            &format!("cut {cut}: the self-hosted control plane Ready, the copy gone"),
            Duration::from_secs(300),
            || self_hosted_plane_ready(&host),
        );
        eprintln!(
            "cut {cut}: /readyz after {api:.1}s, self-hosted plane Ready after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        for earlier in 1..=cut {
            host.kubectl_ok(&["get", "configmap", &format!("before-cut-{earlier}")]);
        }
        run_deployment(&host, &format!("after-cut-{cut}"));
        let detail = checkpoint_detail(&host);
        assert!(
            detail.contains("kube-apiserver"),
            "cut {cut}: status says which copy serves: {detail}"
        );
    }
}

/// The checkpoint holds Secrets: its directory 0700, its files 0600.
fn assert_private(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_file() {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", e.path().display());
        }
    }
}

/// Starts the agent and a single-node cluster that runs workloads.
fn cluster(host: &mut TestHost) {
    host.start_agent();
    host.wait_healthy(START);
    let out = host.init(&["--allow-workloads"], None);
    assert!(out.status.success(), "init: {}", text(&out));
}

/// Starts a cluster and waits until the checkpointer keeps its API server;
/// returns the kept pod's name.
fn cluster_with_a_kept_apiserver(host: &mut TestHost) -> String {
    cluster(host);
    let mut kept = String::new();
    retry(
        "the checkpointer to keep the API server",
        Duration::from_secs(60),
        || {
            let d = checkpoint_detail(host);
            match d
                .split("kube-apiserver (pod ")
                .nth(1)
                .and_then(|r| r.split(',').next())
            {
                Some(pod) => {
                    kept = pod.to_string();
                    Ok(())
                }
                None => Err(d),
            }
        },
    );
    kept
}

#[test]
fn a_power_cut_after_a_bad_apiserver_rollout_brings_back_the_last_good_one() {
    let mut host = TestHost::for_cluster();
    let good = cluster_with_a_kept_apiserver(&mut host);

    // A flag the API server refuses: its new pod never becomes Ready; the
    // surge rollout keeps the old one serving.
    host.kubectl_ok(&[
        "-n",
        "kube-system",
        "patch",
        "daemonset",
        "kube-apiserver",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/template/spec/containers/0/command/-","value":"--no-such-flag=1"}]"#,
    ]);
    retry(
        "the bad API server pod to start and fail",
        Duration::from_secs(120),
        || {
            let pods = host.kubectl_ok(&[
                "-n",
                "kube-system",
                "get",
                "pods",
                "-l",
                "k8s-app=kube-apiserver",
                "-o",
                "custom-columns=NAME:.metadata.name,RESTARTS:.status.containerStatuses[0].restartCount",
                "--no-headers",
            ]);
            let bad = pods.lines().filter(|l| !l.starts_with(&good)).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|r| r != "0" && r != "<none>")
            });
            if bad {
                Ok(())
            } else {
                Err(pods)
            }
        },
    );
    // The checkpointer saw the bad pod for two more passes and kept the
    // good one.
    let passes = |st: &serde_json::Value| TestHost::component(st, "checkpoint")["passes"].as_u64();
    let seen = passes(&host.status()).expect("the checkpointer counts its passes");
    host.wait_for(
        "two more passes of the checkpointer",
        Duration::from_secs(60),
        |st| passes(st).is_some_and(|p| p >= seen + 2),
    );
    let detail = checkpoint_detail(&host);
    assert!(detail.contains(&good), "the good pod stays kept: {detail}");

    host.power_cut();
    host.start_agent();
    retry("/readyz after the cut", Duration::from_secs(180), || {
        readyz(&host)
    });
    let log = host.agent_log();
    assert!(
        log.contains(&format!(
            "started the checkpoint copy of kube-apiserver (pod {good},"
        )),
        "the copy that came back is the last good one:\n{log}"
    );
    retry(
        "the good self-hosted API server Ready again, the copy gone",
        Duration::from_secs(300),
        || self_hosted_plane_ready(&host),
    );
}

/// Flips bytes inside the stored copies (their JSON is stored as is).
fn flip_checkpoint_bytes(host: &TestHost) {
    let store = host.root.join("var/lib/selfnode/checkpoint");
    let mut flipped = 0;
    for entry in walk(&store) {
        let mut bytes = std::fs::read(&entry).unwrap();
        let needle = b"\"component\"";
        let mut at = 0;
        while let Some(i) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
            let i = at + i;
            bytes[i + 1] ^= 0x20;
            flipped += 1;
            at = i + needle.len();
        }
        std::fs::write(&entry, &bytes).unwrap();
    }
    assert!(flipped > 0, "found the stored copy in {}", store.display());
}

#[test]
fn a_corrupt_checkpoint_is_reported_and_never_started() {
    let mut host = TestHost::for_cluster();
    cluster_with_a_kept_apiserver(&mut host);

    // Damage while the agent runs: the next read-back reports it in status
    // (the check's period shortened from an hour). Flipped bytes in sled's
    // pages fail its checksums, so the database does not open at all: the
    // copies cannot be written again, and status says so until it does.
    assert!(host.stop_agent(Duration::from_secs(120)).success());
    host.start_agent_with(&["--checkpoint-verify-interval", "5s"]);
    let state = |host: &TestHost| {
        let st = host.status();
        let c = TestHost::component(&st, "checkpoint");
        (
            c["state"].as_str().unwrap_or_default().to_string(),
            c["detail"].as_str().unwrap_or_default().to_string(),
        )
    };
    retry("the checkpointer's first passes", START, || {
        let st = host.status();
        match TestHost::component(&st, "checkpoint")["passes"].as_u64() {
            Some(n) if n >= 2 && state(&host).0 == "ready" => Ok(()),
            other => Err(format!("{other:?} {:?}", state(&host))),
        }
    });
    flip_checkpoint_bytes(&host);
    retry(
        "status to report the damage",
        Duration::from_secs(60),
        || match state(&host) {
            (s, d) if s == "unhealthy" && d.contains("the checkpoint is damaged") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(host
        .agent_log()
        .contains("the checkpoint does not read back as written"));

    // The damage stays while the agent is down: nothing is started from it.
    assert!(host.stop_agent(Duration::from_secs(120)).success());

    // The agent comes back over a running control plane: nothing is
    // started from the damaged copy and the API keeps answering.
    host.start_agent();
    host.wait_for("the agent's containerd", START, |st| {
        TestHost::component(st, "containerd")["state"] == "ready"
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        readyz(&host).expect("the API keeps answering");
        assert!(
            !host
                .root
                .join("etc/kubernetes/manifests/kube-apiserver-checkpoint.json")
                .exists(),
            "no static copy from a damaged checkpoint"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let log = host.agent_log();
    assert!(
        log.contains("checkpoint not used"),
        "the damage is reported:\n{log}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `selfnode recover` on this host; returns its output.
fn recover(host: &TestHost, args: &[&str]) -> std::process::Output {
    host.selfnode()
        .arg("recover")
        .args(args)
        .output()
        .expect("run selfnode recover")
}

/// `selfnode recover` succeeds and says each of `says`; then the
/// self-hosted plane is Ready with no copy left.
fn recover_and_check(host: &TestHost, says: &[&str]) {
    let out = recover(host, &["--timeout", "4m"]);
    let said = stdout(&out);
    assert!(out.status.success(), "recover: {}", text(&out));
    check_recovered(host, &said, says);
}

/// `said` says each of `says`; then the self-hosted plane is Ready with no
/// copy left.
fn check_recovered(host: &TestHost, said: &str, says: &[&str]) {
    for line in says {
        assert!(said.contains(line), "recover says {line:?}:\n{said}");
    }
    retry("the self-hosted plane Ready", START, || {
        self_hosted_plane_ready(host)
    });
}

/// Waits until `/readyz` fails (the API went away `why`).
fn wait_api_gone(host: &TestHost, why: &str) {
    retry(
        &format!("the API to go away {why}"),
        START,
        || match readyz(host) {
            Ok(()) => Err("the API still answers".into()),
            Err(_) => Ok(()),
        },
    );
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn selfnode_recover_brings_back_deleted_components_and_a_lost_etcd() {
    let mut host = TestHost::for_cluster();
    cluster_with_a_kept_apiserver(&mut host);
    retry(
        "the checkpointer to keep the scheduler and the controller-manager",
        Duration::from_secs(60),
        || {
            let d = checkpoint_detail(&host);
            if d.contains("kube-scheduler (pod ") && d.contains("kube-controller-manager (pod ") {
                Ok(())
            } else {
                Err(d)
            }
        },
    );

    status_answers_while_etcd_is_silent(&host);

    // A healthy cluster: nothing to do, and nothing done.
    let out = recover(&host, &[]);
    assert!(
        out.status.success(),
        "recover on a healthy cluster: {}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("nothing to recover"),
        "says so: {}",
        text(&out)
    );

    // All schedulers and controller-managers deleted: their pods go, and
    // nothing would ever make new ones.
    host.kubectl_ok(&[
        "-n",
        "kube-system",
        "delete",
        "deployment",
        "kube-scheduler",
        "kube-controller-manager",
    ]);
    retry(
        "the scheduler and controller-manager pods to go",
        START,
        || {
            let pods = host.kubectl_ok(&[
                "-n",
                "kube-system",
                "get",
                "pods",
                "-l",
                "k8s-app in (kube-scheduler,kube-controller-manager)",
                "-o",
                "name",
            ]);
            if pods.trim().is_empty() {
                Ok(())
            } else {
                Err(pods)
            }
        },
    );
    // recover killed after every step of its plan and run again each
    // time: what each run found and did adds up, and it converges.
    let mut said = String::new();
    for planned in node::sequences::recover::plan().steps() {
        let step = planned.step.name();
        let out = host
            .selfnode()
            .env(node::sequences::runner::FAILPOINT_ENV, step)
            .args(["recover", "--timeout", "4m"])
            .output()
            .unwrap();
        support::assert_stopped_at_failpoint("recover", step, &out);
        said.push_str(&text(&out));
    }
    let out = recover(&host, &["--timeout", "4m"]);
    assert!(out.status.success(), "recover: {}", text(&out));
    said.push_str(&text(&out));
    check_recovered(
        &host,
        &said,
        &[
            "Deployment kube-system/kube-scheduler was gone",
            "Deployment kube-system/kube-controller-manager was gone",
            "started the checkpoint copy of kube-scheduler",
            "kube-scheduler has a Ready pod of its own: removed its copy",
            "kube-controller-manager has a Ready pod of its own: removed its copy",
        ],
    );
    run_deployment(&host, "after-deployments-recovered");

    // The API server DaemonSet deleted: its pod goes, and the API with it.
    let _ = host.kubectl(&[
        "-n",
        "kube-system",
        "delete",
        "daemonset",
        "kube-apiserver",
        "--wait=false",
    ]);
    wait_api_gone(&host, "with its DaemonSet");
    recover_and_check(
        &host,
        &[
            // Either recover or the agent's checkpointer (whichever looks
            // first) starts the copy; recover says which.
            "started the checkpoint copy of kube-apiserver",
            "DaemonSet kube-system/kube-apiserver was gone",
            "kube-apiserver has a Ready pod of its own: removed its copy",
        ],
    );
    run_deployment(&host, "after-daemonset-recovered");

    // etcd's manifest lost, its data kept: the kubelet stops etcd and the
    // API goes; recover writes the manifest again from the member identity
    // recorded at the pivot.
    std::fs::remove_file(host.root.join("etc/kubernetes/manifests/etcd.yaml")).unwrap();
    retry("the API to go away with etcd", START, || {
        match readyz(&host) {
            Ok(()) => Err("the API still answers".into()),
            Err(_) => Ok(()),
        }
    });
    let out = recover(&host, &["--timeout", "4m"]);
    assert!(out.status.success(), "recover: {}", text(&out));
    assert!(
        stdout(&out).contains("wrote the manifest of etcd member"),
        "{}",
        text(&out)
    );
    retry("the self-hosted plane Ready", START, || {
        self_hosted_plane_ready(&host)
    });
    host.kubectl_ok(&["get", "deployment", "after-daemonset-recovered"]);

    // Total loss: etcd's data and every manifest gone, a snapshot and the
    // PKI kept.
    host.kubectl_ok(&["create", "configmap", "in-snapshot", "--from-literal=k=v"]);
    let keep = tempfile::tempdir().unwrap();
    let snapshot = keep.path().join("etcd.db");
    let out = host
        .selfnode()
        .args(["etcd", "snapshot", "save"])
        .arg(&snapshot)
        .output()
        .unwrap();
    assert!(out.status.success(), "snapshot save: {}", text(&out));
    host.kubectl_ok(&[
        "create",
        "configmap",
        "after-snapshot",
        "--from-literal=k=v",
    ]);
    let old_admin = keep.path().join("admin.conf");
    std::fs::copy(host.root.join("etc/kubernetes/admin.conf"), &old_admin).unwrap();
    let out = host.stop_node(Duration::from_secs(180));
    assert!(out.status.success(), "selfnode stop: {}", text(&out));
    std::fs::remove_dir_all(host.root.join("var/lib/selfnode/etcd")).unwrap();
    std::fs::remove_dir_all(host.root.join("etc/kubernetes/manifests")).unwrap();
    host.start_agent();
    host.wait_for("the agent's containerd", START, |st| {
        TestHost::component(st, "containerd")["state"] == "ready"
    });
    let out = recover(&host, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("--from-snapshot"),
        "points to the snapshot: {}",
        text(&out)
    );
    let out = recover(&host, &["--from-snapshot", snapshot.to_str().unwrap()]);
    let said = text(&out);
    assert!(out.status.success(), "recover --from-snapshot: {said}");
    assert!(said.contains("[recover] restore_etcd_data"), "{said}");
    let kubectl_old = |args: &[&str]| {
        std::process::Command::new(host.bundle.join("bin/kubectl"))
            .arg("--kubeconfig")
            .arg(&old_admin)
            .args(args)
            .output()
            .unwrap()
    };
    let got = kubectl_old(&["get", "configmap", "in-snapshot"]);
    assert!(
        got.status.success(),
        "the snapshot's objects, through the old admin.conf: {}",
        text(&got)
    );
    let got = kubectl_old(&["get", "configmap", "after-snapshot"]);
    assert!(
        !got.status.success(),
        "nothing written after the snapshot: {}",
        text(&got)
    );
    retry(
        "the self-hosted plane Ready",
        Duration::from_secs(300),
        || self_hosted_plane_ready(&host),
    );
    run_deployment(&host, "after-total-loss");
    let out = host.selfnode().args(["etcd", "members"]).output().unwrap();
    assert!(out.status.success(), "etcd healthy: {}", text(&out));

    // Healthy again: --from-snapshot is refused (exit 3) and changes nothing.
    let out = recover(&host, &["--from-snapshot", snapshot.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    host.kubectl_ok(&["get", "configmap", "in-snapshot"]);
}

/// `selfnode status` while this host's etcd accepts connections and says
/// nothing (frozen with SIGSTOP: what a member without quorum looks like to
/// a client): it answers within its own deadline, exit 1, naming etcd, in
/// the table and in `-o json`. Then etcd goes on and status is healthy
/// again. (The hang this guards against: status waited over 10 minutes on
/// a member that had no leader.)
fn status_answers_while_etcd_is_silent(host: &TestHost) {
    let etcd: Vec<u32> = host
        .leftover_processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.starts_with("etcd "))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(etcd.len(), 1, "one etcd process on this host: {etcd:?}");
    let pid = etcd[0];
    support::signal(pid, libc::SIGSTOP);
    let answers = |args: &[&str]| {
        let mut child = host
            .selfnode()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                support::signal(pid, libc::SIGCONT);
                panic!("selfnode {args:?} did not answer within 10 s while etcd was silent");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().unwrap()
    };
    let table = answers(&["status"]);
    let json = answers(&["status", "-o", "json"]);
    support::signal(pid, libc::SIGCONT);
    assert_eq!(table.status.code(), Some(1), "{}", text(&table));
    assert!(
        stdout(&table).lines().any(|l| l.starts_with("etcd: ")
            && l.contains("no answer")
            && l.contains("127.0.0.1:2379")),
        "the table names etcd and what did not answer: {}",
        text(&table)
    );
    assert_eq!(json.status.code(), Some(1), "{}", text(&json));
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["healthy"], false, "{doc:#}");
    assert!(
        doc["etcd"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("127.0.0.1:2379")),
        "{doc:#}"
    );
    host.wait_healthy(Duration::from_secs(180));
    // The balancer marked the API server down while etcd was silent (its
    // /readyz failed): what comes next needs it back up there.
    retry(
        "the API server to answer through the balancer again",
        Duration::from_secs(60),
        || {
            let out = host.kubectl(&["get", "--raw", "/readyz"]);
            out.status.success().then_some(()).ok_or_else(|| text(&out))
        },
    );
}
