//! `selfnode init` end to end on real components: a pivoted, self-hosted
//! single-node cluster, used the way a user would.

mod support;

use node::sequences::init::plan::{plan, InitStep as Step, Observed, Sequence};
use node::sequences::plan::Step as _;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{assert_stopped_at_failpoint, bundle_version, pid_alive, retry, text, TestHost};

const START: Duration = Duration::from_secs(180);
/// The steps of a first `selfnode init`, from the plan itself.
fn init_steps() -> Vec<Step> {
    plan(Sequence::Init, Observed::default())
        .steps()
        .map(|p| p.step)
        .collect()
}

/// Extra SANs given on the command line and in a config file: both must
/// reach the API server's certificate on disk and the one it serves.
const FLAG_SANS: [&str; 2] = ["api.example.test", "192.0.2.50"];
const FILE_SANS: [&str; 2] = ["api.from-file.test", "192.0.2.51"];

/// The subjectAltName text of a PEM certificate.
fn sans_of(pem: &[u8]) -> String {
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl x509");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(pem).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl x509 failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `openssl s_client` prints for the API server at `addr`: the
/// certificate it serves among the session details.
fn s_client(addr: &str) -> Vec<u8> {
    std::process::Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "kubernetes"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client")
        .stdout
}

/// The SANs in `apiserver.crt` and in the certificate `addr` serves.
fn apiserver_sans(host: &TestHost, addr: &str) -> (String, String) {
    let on_disk = std::fs::read(host.root.join("etc/kubernetes/pki/apiserver.crt")).unwrap();
    (sans_of(&on_disk), sans_of(&s_client(addr)))
}

fn assert_sans(host: &TestHost, addr: &str, sans: &[&str]) {
    let (on_disk, served) = apiserver_sans(host, addr);
    for san in sans {
        let want = if san.parse::<std::net::IpAddr>().is_ok() {
            format!("IP Address:{san}")
        } else {
            format!("DNS:{san}")
        };
        assert!(
            on_disk.contains(&want),
            "{want} not in apiserver.crt: {on_disk}"
        );
        assert!(
            served.contains(&want),
            "{want} not served on {addr}: {served}"
        );
    }
}

/// `selfnode etcd members -o json`, which must succeed.
fn etcd_members(host: &TestHost) -> Vec<serde_json::Value> {
    let out = host
        .selfnode()
        .args(["etcd", "members", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "etcd members: {}", text(&out));
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    members.as_array().unwrap().clone()
}

/// Threads that create ConfigMaps through the admin kubeconfig, one after
/// another, retrying each until the API acknowledges it. An `AlreadyExists`
/// answer to a retry means an earlier attempt was committed: acknowledged.
struct ConfigMapWriters {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ConfigMapWriters {
    fn start(host: &TestHost, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let kubectl = host.bundle.join("bin/kubectl");
        let kubeconfig = host.root.join("etc/kubernetes/admin.conf");
        let threads = (0..n)
            .map(|t| {
                let (stop, acked) = (stop.clone(), acked.clone());
                let (kubectl, kubeconfig) = (kubectl.clone(), kubeconfig.clone());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let name = format!("pivot-{t}-{i}");
                        let value = format!("written by writer {t} as number {i}");
                        let out = std::process::Command::new(&kubectl)
                            .arg("--kubeconfig")
                            .arg(&kubeconfig)
                            .args(["create", "configmap", &name, "--request-timeout=10s"])
                            .arg(format!("--from-literal=value={value}"))
                            .output()
                            .unwrap();
                        if out.status.success()
                            || String::from_utf8_lossy(&out.stderr).contains("AlreadyExists")
                        {
                            acked.lock().unwrap().insert(name, value);
                            i += 1;
                        } else {
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                })
            })
            .collect();
        ConfigMapWriters {
            stop,
            acked,
            threads,
        }
    }

    /// Lets the writers reach `at_least` writes in all, stops them, and
    /// returns every acknowledged write.
    fn finish(self, at_least: usize) -> BTreeMap<String, String> {
        let during = self.acked.lock().unwrap().len();
        retry(
            "the writers' acknowledged writes",
            Duration::from_secs(180),
            || {
                let n = self.acked.lock().unwrap().len();
                if n >= at_least {
                    Ok(())
                } else {
                    Err(format!("{n} of {at_least}"))
                }
            },
        );
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        assert!(
            during > 0,
            "no write was acknowledged while init ran: the writers did not overlap the pivot"
        );
        acked
    }
}

/// Every acknowledged ConfigMap is there with the value written.
fn assert_configmaps_present(host: &TestHost, acked: &BTreeMap<String, String>) {
    let out = host.kubectl_ok(&["get", "configmaps", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let found: BTreeMap<String, String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|cm| {
            let name = cm["metadata"]["name"].as_str()?;
            name.starts_with("pivot-").then(|| {
                (
                    name.to_string(),
                    cm["data"]["value"].as_str().unwrap_or("").to_string(),
                )
            })
        })
        .collect();
    let missing: Vec<&String> = acked.keys().filter(|k| !found.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged ConfigMaps lost: {missing:?}",
        missing.len(),
        acked.len()
    );
    for (name, value) in acked {
        assert_eq!(&found[name], value, "contents of {name}");
    }
}

/// Directories 0700 all the way down, so nothing below is reachable by
/// other users; files 0600, or with `etcd_files` at most 0644: etcd itself
/// writes its raft snapshot files 0666 minus the umask, and the container
/// runtime gives no way to set its umask.
fn assert_private_tree(dir: &std::path::Path, etcd_files: bool) {
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_private_tree(&p, etcd_files);
        } else if etcd_files {
            assert_eq!(mode & 0o133, 0, "{} is {mode:o}", p.display());
        } else {
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
}

/// The checks every successful init must pass.
fn assert_healthy_self_hosted_cluster(host: &TestHost, temp_pids: &[u32]) {
    let pods = host.kubectl_ok(&["-n", "kube-system", "get", "pods", "-o", "wide"]);
    for app in [
        "etcd-",
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
        "etcd",
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
    // The keys are the host's files: no object in the API and nothing in
    // the checkpoint holds one.
    support::no_private_key_in_the_api(host);
    support::no_private_key_in_the_checkpoint(host);
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
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
            ]
            .contains(&c["name"].as_str().unwrap_or(""))
        })
        .filter_map(|c| c["pid"].as_u64().map(|p| p as u32))
        .collect()
}

fn with_flag_sans() -> Vec<&'static str> {
    let mut args = vec!["--allow-workloads"];
    for san in FLAG_SANS {
        args.extend(["--apiserver-cert-extra-sans", san]);
    }
    args
}

#[test]
fn init_pivots_to_a_self_hosted_cluster_that_serves_a_user_workload() {
    let mut host = TestHost::for_cluster();
    // Snapshots every 3 s, the newest 2 kept: the schedule and the
    // retention both show within the test.
    host.start_agent_with(&[
        "--etcd-snapshot-interval",
        "3s",
        "--etcd-snapshot-keep",
        "2",
    ]);
    host.wait_healthy(START);

    // Up to the temporary API, then writers through it for the rest of init:
    // the etcd pivot (learner, promotion, the temporary member's removal)
    // and the switch of apiservers must not lose one acknowledged write.
    let out = host.init(&with_flag_sans(), Some("register_control_plane_node"));
    assert_eq!(
        out.status.code(),
        Some(99),
        "failpoint exit: {}",
        text(&out)
    );
    let writers = ConfigMapWriters::start(&host, 3);

    // Stop just before the pivot to see the temporary plane's processes.
    let out = host.init(&with_flag_sans(), Some("wait_self_hosted_ready"));
    assert_eq!(
        out.status.code(),
        Some(99),
        "failpoint exit: {}",
        text(&out)
    );
    let temp = temp_plane_pids(&host);
    assert_eq!(
        temp.len(),
        4,
        "temporary etcd, apiserver, controller-manager, scheduler run: {:#}",
        host.status()
    );

    let mut args = with_flag_sans();
    args.extend(["-o", "json"]);
    let out = host.init(&args, None);
    assert!(out.status.success(), "init: {}", text(&out));
    let acked = writers.finish(300);
    assert_configmaps_present(&host, &acked);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("init -o json");
    assert!(
        summary["ca_cert_hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{summary:#}"
    );
    assert_healthy_self_hosted_cluster(&host, &temp);
    let api = format!("{}:6443", summary["advertise_address"].as_str().unwrap());
    assert_sans(&host, &api, &FLAG_SANS);

    // The self-hosted apiserver's audit log, on this host: a Secret read
    // through admin.conf is in it, by name and user (a read of one that
    // does not exist, as the keys are the host's files, is recorded too).
    let out = host.kubectl(&["-n", "kube-system", "get", "secret", "kube-apiserver"]);
    assert!(text(&out).contains("NotFound"), "{}", text(&out));
    let audit = host
        .root
        .join("var/log/kubernetes/audit/kube-apiserver.log");
    retry(
        "the Secret read in the audit log",
        Duration::from_secs(30),
        || {
            let text =
                std::fs::read_to_string(&audit).map_err(|e| format!("{}: {e}", audit.display()))?;
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|e| {
                    e["verb"] == "get"
                        && e["objectRef"]["resource"] == "secrets"
                        && e["objectRef"]["name"] == "kube-apiserver"
                        && e["user"]["username"] == "kubernetes-admin"
                        && e["level"] == "Metadata"
                })
                .then_some(())
                .ok_or_else(|| format!("no such event in {}", audit.display()))
        },
    );
    assert_eq!(
        std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A watch reads every Secret, and a pod's log is a way into its
    // container: both are in the audit log too.
    let _ = host.kubectl(&[
        "-n",
        "kube-system",
        "get",
        "secrets",
        "--watch",
        "--request-timeout=2s",
    ]);
    host.kubectl_ok(&[
        "-n",
        "kube-system",
        "logs",
        "-l",
        "k8s-app=kube-apiserver",
        "--tail=1",
    ]);
    retry(
        "the watch of Secrets and the pod log read in the audit log",
        Duration::from_secs(30),
        || {
            let text =
                std::fs::read_to_string(&audit).map_err(|e| format!("{}: {e}", audit.display()))?;
            let events: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|e: &serde_json::Value| {
                    e["user"]["username"] == "kubernetes-admin" && e["level"] == "Metadata"
                })
                .collect();
            let watched = events
                .iter()
                .any(|e| e["verb"] == "watch" && e["objectRef"]["resource"] == "secrets");
            let logs = events.iter().any(|e| {
                e["objectRef"]["resource"] == "pods" && e["objectRef"]["subresource"] == "log"
            });
            (watched && logs)
                .then_some(())
                .ok_or_else(|| format!("watch: {watched}, log: {logs} in {}", audit.display()))
        },
    );

    // etcd: one healthy leader, and a snapshot that upstream's etcdutl accepts.
    let members = etcd_members(&host);
    assert_eq!(members.len(), 1, "{members:#?}");
    assert_eq!(members[0]["healthy"], true, "{members:#?}");
    assert_eq!(members[0]["is_leader"], true, "{members:#?}");
    let node = host.kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    assert_eq!(members[0]["name"], node.as_str(), "{members:#?}");
    assert!(
        members[0]["peer_urls"][0]
            .as_str()
            .unwrap()
            .ends_with(":2380"),
        "the self-hosted member, not the temporary one: {members:#?}"
    );
    assert_private_tree(&host.root.join("var/lib/selfnode/etcd"), true);
    assert!(
        !host.root.join("var/lib/selfnode/etcd-bootstrap").exists(),
        "the temporary member's data is removed"
    );
    for f in std::fs::read_dir(host.root.join("etc/kubernetes/pki/etcd")).unwrap() {
        let f = f.unwrap().path();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let snap = host.snapshot_save("snapshot.db");
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
    // Scheduled snapshots: taken, pruned to the newest 2, shown by status.
    let snapshots = host.root.join("var/lib/selfnode/snapshots");
    retry(
        "scheduled snapshots pruned to 2",
        Duration::from_secs(60),
        || {
            let st = host.status();
            let files: Vec<String> = std::fs::read_dir(&snapshots)
                .map_err(|e| e.to_string())?
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".db"))
                .collect();
            let count = st["etcd"]["snapshots"]["count"].as_u64();
            if files.len() == 2 && count == Some(2) && st["etcd"]["last_snapshot_time"].is_u64() {
                Ok(())
            } else {
                Err(format!("{files:?}, status {:#}", st["etcd"]))
            }
        },
    );
    assert_private_tree(&snapshots, false);
    assert!(
        ["ca.key", "etcd/ca.key", "sa.key"]
            .iter()
            .all(|f| snapshots.join("pki").join(f).is_file()),
        "what a restore needs is kept beside the snapshots"
    );
    for f in std::fs::read_dir(&snapshots).unwrap() {
        let f = f.unwrap().path();
        if f.is_dir() {
            continue;
        }
        let ok = std::process::Command::new(host.bundle.join("bin/etcdutl"))
            .args(["snapshot", "status"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(ok.status.success(), "{}: {}", f.display(), text(&ok));
    }
    let table = host.selfnode().arg("status").output().unwrap();
    assert!(
        text(&table).contains("etcd snapshots: last "),
        "{}",
        text(&table)
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
    support::web_workload(&host, &image, 1);
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

    // Pod Security admission: baseline is enforced outside kube-system.
    let refused = host.kubectl(&[
        "run",
        "host-network",
        &format!("--image={image}"),
        "--restart=Never",
        r#"--overrides={"spec":{"hostNetwork":true}}"#,
    ]);
    assert!(
        !refused.status.success()
            && text(&refused).contains(r#"violates PodSecurity "baseline:latest""#),
        "a hostNetwork pod in default: {}",
        text(&refused)
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

    // Certificates: `certs renew` re-issues every leaf on the host and
    // restarts this host's control-plane containers onto them (the pods
    // mount the files; no Secret holds them); the API then serves the new
    // certificate, and the upgrades made with kubectl above stay.
    let served_cert = || {
        let pem = String::from_utf8_lossy(&s_client(&api)).into_owned();
        let begin = pem
            .find("-----BEGIN CERTIFICATE-----")
            .expect("a certificate served");
        let end =
            pem.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
        format!("{}\n", &pem[begin..end])
    };
    let pki = host.root.join("etc/kubernetes/pki");
    let api_crt = || std::fs::read_to_string(pki.join("apiserver.crt")).unwrap();
    let before = api_crt();
    assert_eq!(served_cert(), before);
    let out = host
        .selfnode()
        .args(["certs", "renew", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "certs renew: {}", text(&out));
    let renew: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("certs renew -o json");
    let renewed: Vec<&str> = renew["renewed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    // Every leaf and kubeconfig of the PKI: 20 files (the 28 of the
    // kubeadm layout and selfnode-agent.conf, less the three CAs' pairs and
    // the service-account pair).
    assert_eq!(renewed.len(), 20, "{renew:#}");
    assert!(
        !renewed
            .iter()
            .any(|p| p.ends_with("ca.key") || p.ends_with("sa.key")),
        "{renew:#}"
    );
    // Only this host's files changed: no rollout across the cluster, this
    // host's three components restarted.
    for p in renew["published"].as_array().unwrap() {
        assert_eq!(p["rolled"], false, "{renew:#}");
    }
    assert_eq!(
        renew["restarted"],
        serde_json::json!([
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler"
        ]),
        "{renew:#}"
    );
    let after = api_crt();
    assert_ne!(after, before);
    retry(
        "the renewed certificate served",
        Duration::from_secs(60),
        || {
            let served = served_cert();
            (served == after).then_some(()).ok_or(served)
        },
    );
    // No Secret holds it (the keys are the host's files).
    let out = host.kubectl(&["-n", "kube-system", "get", "secret", "kube-apiserver"]);
    assert!(!out.status.success(), "{}", text(&out));
    for (kind, name) in [
        ("daemonset", "kube-apiserver"),
        ("deployment", "kube-scheduler"),
    ] {
        let image = host.kubectl_ok(&[
            "-n",
            "kube-system",
            "get",
            &format!("{kind}/{name}"),
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ]);
        assert!(image.ends_with("-retag"), "{name}: {image}");
    }
    // check-expiration reads the same files.
    let rows: serde_json::Value = serde_json::from_slice(
        &host
            .selfnode()
            .args(["certs", "check-expiration", "-o", "json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "apiserver")
        .unwrap();
    assert_eq!(row["residualDays"], 364, "{row:#}");
    host.kubectl_ok(&["get", "nodes"]);

    // And the agent renews by itself: a serving certificate with 10 days
    // left (issued here by openssl with the cluster CA) is re-issued, and
    // the API server restarted onto it, by the agent's first check after a
    // restart.
    let key = pki.join("apiserver.key");
    let csr = host.root.join("short.csr");
    let short = host.root.join("short.crt");
    run_ok(
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            "/CN=kube-apiserver",
            "-out",
            csr.to_str().unwrap(),
        ],
    );
    run_ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            pki.join("ca.crt").to_str().unwrap(),
            "-CAkey",
            pki.join("ca.key").to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "10",
            "-out",
            short.to_str().unwrap(),
        ],
    );
    std::fs::copy(&short, pki.join("apiserver.crt")).unwrap();
    host.stop_agent(Duration::from_secs(60));
    host.start_agent_with(&[
        "--etcd-snapshot-interval",
        "3s",
        "--etcd-snapshot-keep",
        "2",
    ]);
    let st = host.wait_for(
        "the agent's certificate check",
        Duration::from_secs(240),
        |st| {
            TestHost::component(st, "certificates")["detail"]
                .as_str()
                .is_some_and(|d| d.contains("restarted kube-apiserver on this host"))
        },
    );
    let detail = TestHost::component(&st, "certificates")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("re-issued 2 files"), "{detail}");
    assert_eq!(
        TestHost::component(&st, "certificates")["state"],
        "ready",
        "{detail}"
    );
    let renewed_by_agent = api_crt();
    assert_ne!(renewed_by_agent, std::fs::read_to_string(&short).unwrap());
    retry(
        "the agent's certificate served",
        Duration::from_secs(180),
        || {
            let served = served_cert();
            (served == renewed_by_agent).then_some(()).ok_or(served)
        },
    );
    // The old pod's /readyz fails while it stops, on the port it shares
    // with the new one: the balancer closes for a moment, then reopens.
    retry(
        "the API through the balancer",
        Duration::from_secs(120),
        || {
            let out = host.kubectl(&[
                "-n",
                "kube-system",
                "rollout",
                "status",
                "daemonset/kube-apiserver",
                "--timeout=20s",
            ]);
            out.status.success().then_some(()).ok_or_else(|| text(&out))
        },
    );

    // Running init again on an initialised host changes nothing and succeeds.
    let again = host.init(&["--allow-workloads"], None);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("already done"), "{}", text(&again));

    // The last member cannot be removed; nothing changes.
    let out = host
        .selfnode()
        .args(["etcd", "remove-member", &node])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("last voting member"), "{}", text(&out));
    let after = etcd_members(&host);
    assert_eq!(after.len(), 1, "{after:#?}");

    // A second snapshot, by upstream etcdctl, after one more object.
    host.kubectl_ok(&[
        "create",
        "configmap",
        "after-first-snapshot",
        "--from-literal=v=1",
    ]);
    let pki = host.root.join("etc/kubernetes/pki");
    let upstream = host.root.join("etcdctl.db");
    let out = std::process::Command::new(host.bundle.join("bin/etcdctl"))
        .args(["--endpoints", "https://127.0.0.1:2379"])
        .arg("--cacert")
        .arg(pki.join("etcd/ca.crt"))
        .arg("--cert")
        .arg(pki.join("etcd/healthcheck-client.crt"))
        .arg("--key")
        .arg(pki.join("etcd/healthcheck-client.key"))
        .args(["snapshot", "save"])
        .arg(&upstream)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl snapshot save: {}",
        text(&out)
    );

    // Restoring over the running cluster is refused and changes nothing.
    let out = host
        .selfnode()
        .args(["etcd", "snapshot", "restore"])
        .arg(&snap)
        .args([
            "--allow-workloads",
            "--bundle",
            host.bundle.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("Pass --force"), "{}", text(&out));
    host.kubectl_ok(&["get", "configmap", "after-first-snapshot"]);

    // Reset, then restore selfnode's snapshot: its objects are back, the
    // later one is not, and the cluster is as healthy as after init.
    // No hand-made copy of the PKI: the one kept with the scheduled
    // snapshots is used.
    reset_and_restore(&mut host, &snap);
    assert_healthy_self_hosted_cluster(&host, &[]);
    assert_configmaps_present(&host, &acked);
    let later = host.kubectl(&["get", "configmap", "after-first-snapshot"]);
    assert!(!later.status.success(), "{}", text(&later));

    // And upstream etcdctl's snapshot restores too, with --force over the
    // cluster that now runs: its etcd data is moved aside, not deleted.
    // Killed after each step that takes the running cluster's etcd out of
    // the way, and run again each time: it resumes, then finishes.
    let restore_force = |failpoint: Option<&str>| {
        let mut cmd = host.selfnode();
        if let Some(step) = failpoint {
            cmd.env(node::sequences::runner::FAILPOINT_ENV, step);
        }
        cmd.args(["etcd", "snapshot", "restore", "--force"])
            .arg(&upstream)
            .args([
                "--allow-workloads",
                "--bundle",
                host.bundle.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let mut said = String::new();
    for step in [
        "point_lb_at_temp_apiserver",
        "stop_etcd_member",
        "move_etcd_data_aside",
        "begin_restore",
    ] {
        let out = restore_force(Some(step));
        support::assert_stopped_at_failpoint("restore", step, &out);
        said.push_str(&text(&out));
    }
    let out = restore_force(None);
    assert!(out.status.success(), "restore --force: {}", text(&out));
    said.push_str(&text(&out));
    assert!(said.contains("the previous etcd data is kept in"), "{said}");
    let kept: Vec<_> = std::fs::read_dir(host.root.join("var/lib/selfnode"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("etcd.before-restore-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "the replaced member's data is kept");
    assert_healthy_self_hosted_cluster(&host, &[]);
    assert_configmaps_present(&host, &acked);
    host.kubectl_ok(&["get", "configmap", "after-first-snapshot"]);

    // `upgrade plan` checks before anything changes: the cluster's own
    // bundle is nothing to do; a damaged bundle, a skipped minor and a
    // downgrade are refused with exit 2, each check saying what it found.
    let plan = |bundle: &std::path::Path| {
        host.selfnode()
            .args(["upgrade", "plan", "-o", "json", "--bundle"])
            .arg(bundle)
            .output()
            .unwrap()
    };
    let failed = |out: &std::process::Output| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("upgrade plan -o json: {}", text(out)));
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["ok"] == false)
            .map(|c| format!("{}: {}", c["name"].as_str().unwrap(), c["detail"]))
            .collect()
    };
    let out = plan(&host.bundle);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(failed(&out).is_empty(), "{:?}", failed(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["change"], "same", "{v:#}");
    assert_eq!(v["steps"], serde_json::json!([]), "{v:#}");
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "bundle",
            "version",
            "skew",
            "nodes",
            "control-plane",
            "etcd",
            "removed-apis",
            "staged",
            "disk"
        ],
        "{v:#}"
    );
    let dir = tempfile::tempdir().unwrap();
    let damaged = support::damaged_bundle(dir.path(), "bin/kube-apiserver", "#!/bin/sh\n");
    let out = plan(&damaged);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        failed(&out)
            .iter()
            .any(|f| f.starts_with("bundle:") && f.contains("kube-apiserver")),
        "{:?}",
        failed(&out)
    );
    let current = support::bundle_version("KUBERNETES_VERSION");
    let minor: u32 = current.split('.').nth(1).unwrap().parse().unwrap();
    for (version, why) in [
        (format!("v1.{}.0", minor + 2), "skips a minor"),
        (format!("v1.{}.0", minor - 1), "never goes back"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let bundle = support::bundle_without(dir.path(), "");
        let text_v = std::fs::read_to_string(bundle.join("VERSION")).unwrap();
        std::fs::write(
            bundle.join("VERSION"),
            text_v.replace(
                &format!("KUBERNETES_VERSION={current}"),
                &format!("KUBERNETES_VERSION={version}"),
            ),
        )
        .unwrap();
        let out = plan(&bundle);
        assert_eq!(out.status.code(), Some(2), "{version}: {}", text(&out));
        assert!(
            failed(&out)
                .iter()
                .any(|f| f.starts_with("version:") && f.contains(why)),
            "{version}: {:?}",
            failed(&out)
        );
    }
    // The plain Kubernetes way is refused at admission when it breaks the
    // skew policy (two minors ahead), and admitted for the next minor (a
    // server-side dry run: nothing changes).
    let set_image = |minor: u32, extra: &[&str]| {
        let image = format!("kube-apiserver=registry.k8s.io/kube-apiserver:v1.{minor}.0");
        let mut args = vec![
            "-n",
            "kube-system",
            "set",
            "image",
            "daemonset/kube-apiserver",
        ];
        args.push(&image);
        args.extend_from_slice(extra);
        host.kubectl(&args)
    };
    let out = set_image(minor + 2, &[]);
    assert!(
        !out.status.success() && text(&out).contains("moves one minor at a time"),
        "{}",
        text(&out)
    );
    let out = set_image(minor + 1, &["--dry-run=server"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_healthy_self_hosted_cluster(&host, &[]);
}

#[test]
fn init_killed_after_every_step_resumes_to_the_same_cluster() {
    let mut host = TestHost::for_cluster();
    host.start_agent();
    host.wait_healthy(START);
    // The settings come from a config file here (extra SANs included).
    let config = host.root.join("init.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: selfnode.dev/v1alpha1\nkind: InitConfiguration\nextraSans: [{}]\n",
            FILE_SANS.join(", ")
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let steps = init_steps();
    // Killed after every step of the plan, as kill -9 would, and run again
    // each time: each run must stop at its failpoint.
    for step in &steps {
        let step = step.name();
        let out = host.init(&["--config", config], Some(step));
        assert_stopped_at_failpoint("init", step, &out);
    }
    let out = host.init(&["--config", config, "-o", "json"], None);
    assert!(
        out.status.success(),
        "init after every kill: {}",
        text(&out)
    );
    assert_healthy_self_hosted_cluster(&host, &[]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("init -o json");
    let api = format!("{}:6443", summary["advertise_address"].as_str().unwrap());
    assert_sans(&host, &api, &FILE_SANS);

    // A second init on the pivoted cluster: one line per planned step,
    // numbered 1..n of the plan's n, the skipped ones saying why.
    let out = host.init(&["--config", config], None);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let n = steps.len();
    let lines: Vec<&str> = t.lines().filter(|l| l.starts_with("[init] ")).collect();
    let finals: Vec<&&str> = lines
        .iter()
        .filter(|l| !l.contains("waiting for"))
        .collect();
    assert_eq!(finals.len(), n, "{t}");
    let pivoted = plan(
        Sequence::Init,
        Observed {
            pivoted: true,
            ..Observed::default()
        },
    );
    for (i, p) in pivoted.steps().enumerate() {
        let line = finals
            .iter()
            .find(|l| l.starts_with(&format!("[init] {} (", p.step.name())))
            .unwrap_or_else(|| panic!("no line for {}: {t}", p.step.name()));
        assert!(line.contains(&format!("({}/{n})", i + 1)), "{line}");
        let skipped = matches!(p.action, node::sequences::plan::Action::Skip(_));
        assert_eq!(
            line.contains("skipped: the pivot is committed"),
            skipped,
            "{line}"
        );
    }
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
        // Another address family than the host's: named, before any write
        // (the checkpoint included).
        (
            vec!["--pod-cidr", "fd00:10:244::/56"],
            "pod CIDR fd00:10:244::/56",
        ),
        (
            vec!["--service-cidr", "fd00:10:96::/112"],
            "service CIDR fd00:10:96::/112",
        ),
        // The advertise address as typed.
        (
            vec!["--advertise-address", "cp1.lab.example"],
            "the advertise address \"cp1.lab.example\" is not an IP address",
        ),
        (
            vec!["--advertise-address", "192.0.2.10:6443"],
            "the advertise address \"192.0.2.10:6443\" is not an IP address",
        ),
        (
            vec!["--advertise-address", "[2001:db8::10]"],
            "the advertise address \"[2001:db8::10]\" is not an IP address",
        ),
        // A node name the kubelet's hostname label cannot carry.
        (
            vec![
                "--node-name",
                "cp-01.rack-07.row-12.datacenter-west.example-company.internal.lab",
            ],
            "has 65 characters",
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

    // Snapshots that cannot be restored, and a restore without the PKI:
    // each refused before anything is written (no agent needed to say so).
    let files = tempfile::tempdir().unwrap();
    let empty = bare_etcd_snapshot(files.path(), "empty", false);
    let one_key = bare_etcd_snapshot(files.path(), "one-key", true);
    let data = std::fs::read(&empty).unwrap();
    let truncated = files.path().join("truncated.db");
    std::fs::write(&truncated, &data[..data.len() - 100]).unwrap();
    let flipped = files.path().join("flipped.db");
    let mut bad = data.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&flipped, &bad).unwrap();
    let restore = |file: &std::path::Path, extra: &[&str]| {
        host.selfnode()
            .args(["etcd", "snapshot", "restore"])
            .arg(file)
            .args(["--bundle", host.bundle.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    for (file, extra, want) in [
        (&truncated, &[][..], "is truncated or corrupt"),
        (&flipped, &[], "has the wrong checksum"),
        (&empty, &[], "a snapshot of an empty etcd"),
        (
            &files.path().join("missing.db"),
            &[],
            "cannot read the snapshot file",
        ),
        (&one_key, &[], "restoring needs the cluster's PKI"),
        (
            &one_key,
            &["--pki", "/nonexistent/pki"],
            "/nonexistent/pki/ca.crt is missing",
        ),
    ] {
        let out = restore(file, extra);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            file.display(),
            text(&out)
        );
        assert!(
            text(&out).contains(want),
            "{}: {}",
            file.display(),
            text(&out)
        );
    }
    let written: Vec<_> = std::fs::read_dir(&host.root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(written.is_empty(), "a refused restore wrote {written:?}");

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

/// A snapshot of a bare etcd (the bundle's, on loopback, no TLS, free
/// ports, stopped by PID) saved by upstream etcdctl: never written to, or
/// with one key that is no Kubernetes object.
fn bare_etcd_snapshot(dir: &std::path::Path, name: &str, one_key: bool) -> std::path::PathBuf {
    let port = support::free_port();
    let peer = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut etcd = std::process::Command::new(support::bundle_dir().join("bin/etcd"))
        .arg(format!("--data-dir={}", dir.join(name).display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let etcdctl = |args: &[&str]| {
        std::process::Command::new(support::bundle_dir().join("bin/etcdctl"))
            .args(["--endpoints", &url])
            .args(args)
            .output()
            .unwrap()
    };
    let file = dir.join(format!("{name}.db"));
    let mut saved = None;
    for _ in 0..100 {
        if etcdctl(&["endpoint", "health"]).status.success() {
            if one_key {
                assert!(etcdctl(&["put", "not-kubernetes", "x"]).status.success());
            }
            let out = etcdctl(&["snapshot", "save", file.to_str().unwrap()]);
            saved = Some(text(&out)).filter(|_| out.status.success());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    support::signal(etcd.id(), libc::SIGTERM);
    etcd.wait().unwrap();
    assert!(
        saved.is_some(),
        "etcdctl could not save a snapshot of a fresh etcd"
    );
    file
}

/// Stops the agent, resets the host (its PKI goes), starts the agent again
/// and restores `snapshot` with no `--pki`: the copy the agent keeps with
/// its scheduled snapshots is used.
fn reset_and_restore(host: &mut TestHost, snapshot: &std::path::Path) {
    host.stop_and_reset();
    host.start_agent();
    host.wait_healthy(START);
    let out = host
        .selfnode()
        .args(["etcd", "snapshot", "restore"])
        .arg(snapshot)
        .args([
            "--allow-workloads",
            "--bundle",
            host.bundle.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore {}: {}",
        snapshot.display(),
        text(&out)
    );
    assert!(
        text(&out).contains("[restore] restore_etcd_data"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("using the PKI kept with the scheduled snapshots"),
        "{}",
        text(&out)
    );
}

/// The A records `server` (ip:port) answers for `name`: a plain DNS query
/// over UDP, so the test needs no resolver tool in an image or on the host.
fn dns_a(server: &str, name: &str) -> Result<Vec<std::net::Ipv4Addr>, String> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    // Header: id, flags (recursion desired), one question.
    let mut q = vec![0x5e, 0x1f, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]); // root, type A, class IN
    sock.send_to(&q, server).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).map_err(|e| e.to_string())?;
    let msg = &buf[..n];
    if n < 12 || msg[0..2] != q[0..2] {
        return Err(format!("not an answer to our query ({n} bytes)"));
    }
    let rcode = msg[3] & 0x0f;
    if rcode != 0 {
        return Err(format!("rcode {rcode} for {name}"));
    }
    let answers = u16::from_be_bytes([msg[6], msg[7]]);
    // Skips a (possibly compressed) name at `at`; returns the next offset.
    let skip_name = |mut at: usize| -> Option<usize> {
        loop {
            let len = *msg.get(at)? as usize;
            if len == 0 {
                return Some(at + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Some(at + 2);
            }
            at += len + 1;
        }
    };
    let mut at = skip_name(12).ok_or("short question")? + 4;
    let mut out = Vec::new();
    for _ in 0..answers {
        at = skip_name(at).ok_or("short answer")?;
        let rr = msg.get(at..at + 10).ok_or("short record")?;
        let (rtype, rdlen) = (
            u16::from_be_bytes([rr[0], rr[1]]),
            u16::from_be_bytes([rr[8], rr[9]]) as usize,
        );
        let data = msg.get(at + 10..at + 10 + rdlen).ok_or("short data")?;
        if rtype == 1 && rdlen == 4 {
            out.push(std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + rdlen;
    }
    Ok(out)
}

fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn reset_leaves_nothing_that_breaks_a_cluster_with_other_network_settings() {
    let mut host = TestHost::for_cluster();
    host.start_agent();
    host.wait_healthy(START);
    let out = host.init(&["--allow-workloads"], None);
    assert!(out.status.success(), "first init: {}", text(&out));

    assert!(host.stop_agent(Duration::from_secs(120)).success());
    let reset = |failpoint: Option<&str>| {
        let mut cmd = host.selfnode();
        if let Some(step) = failpoint {
            cmd.env(node::sequences::runner::FAILPOINT_ENV, step);
        }
        cmd.args([
            "reset",
            "--force",
            "--bundle",
            host.bundle.to_str().unwrap(),
        ])
        .output()
        .unwrap()
    };
    // Killed after every step of its plan and run again each time: it
    // converges.
    for planned in node::sequences::reset::plan().steps() {
        let step = planned.step.name();
        support::assert_stopped_at_failpoint("reset", step, &reset(Some(step)));
    }
    let out = reset(None);
    assert!(out.status.success(), "reset: {}", text(&out));
    assert!(
        text(&out).contains("[reset] remove_cluster_state (3/5): already done"),
        "the kill loop did the work: {}",
        text(&out)
    );
    // The pods' logs go with the cluster (the kubelet would count the next
    // cluster's etcd restarts from them: its static pod keeps its UID).
    assert!(
        !host.root.join("var/log/pods").exists(),
        "pod logs are left: {}",
        text(&out)
    );
    // Nothing of the first cluster's network is left on the host.
    let link = std::process::Command::new("ip")
        .args(["link", "show", "selfnode0"])
        .output()
        .unwrap();
    assert!(
        !link.status.success(),
        "the pod bridge is left: {}",
        text(&link)
    );
    let routes = run_ok("ip", &["route", "show", "proto", "83"]);
    assert!(
        routes.trim().is_empty(),
        "selfnode's routes are left: {routes}"
    );
    let nat = run_ok("iptables", &["-w", "-t", "nat", "-S"]);
    assert!(
        !nat.contains("KUBE-") && !nat.contains("name: \\\"selfnode\\\""),
        "NAT rules of the first cluster are left:\n{nat}"
    );

    // A second cluster with every network setting changed, the cluster
    // domain from the config file, and the agent's API load balancer on
    // another port (which every kubeconfig must then name).
    host.api_lb_port = 7446;
    host.start_agent();
    host.wait_healthy(START);
    let config = host.root.join("second.yaml");
    std::fs::write(
        &config,
        "apiVersion: selfnode.dev/v1alpha1\nkind: InitConfiguration\nclusterDomain: lab.internal\n\
         podCidr: 10.32.0.0/16\nserviceCidr: 10.112.0.0/12\nallowWorkloads: true\n",
    )
    .unwrap();
    let out = host.init(&["--config", config.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "second init: {}\n{}",
        text(&out),
        host.diagnostics()
    );

    // The agent's balancer port reached every kubeconfig (kubectl below
    // goes through admin.conf) and kube-proxy.
    for conf in [
        "admin.conf",
        "kubelet.conf",
        "controller-manager.conf",
        "scheduler.conf",
    ] {
        let text = std::fs::read_to_string(host.root.join("etc/kubernetes").join(conf)).unwrap();
        assert!(
            text.contains("https://127.0.0.1:7446"),
            "{conf} names the agent's balancer port:\n{text}"
        );
    }
    let proxy = host.kubectl_ok(&[
        "-n",
        "kube-system",
        "get",
        "configmap",
        "kube-proxy",
        "-o",
        "yaml",
    ]);
    assert!(
        proxy.contains("https://127.0.0.1:7446"),
        "kube-proxy's kubeconfig: {proxy}"
    );
    let network = host.kubectl_ok(&[
        "-n",
        "kube-system",
        "get",
        "daemonset",
        "selfnode-network",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env}",
    ]);
    assert!(network.contains("7446"), "the network agent: {network}");

    // The domain reached the kubelet...
    let kubelet: serde_json::Value = serde_json::from_slice(
        &std::fs::read(host.root.join("var/lib/kubelet/config.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(kubelet["clusterDomain"], "lab.internal", "{kubelet:#}");
    assert_eq!(kubelet["clusterDNS"][0], "10.112.0.10", "{kubelet:#}");
    // ...pods get addresses in the new pod CIDR...
    let dns_ip = host.kubectl_ok(&[
        "-n",
        "kube-system",
        "get",
        "pods",
        "-l",
        "k8s-app=kube-dns",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]);
    assert!(dns_ip.starts_with("10.32."), "CoreDNS pod IP {dns_ip}");
    // ...CoreDNS serves the domain through its Service (kube-proxy)...
    retry(
        "kubernetes.default.svc.lab.internal from the cluster DNS",
        Duration::from_secs(60),
        || match dns_a("10.112.0.10:53", "kubernetes.default.svc.lab.internal") {
            Ok(ips) if ips == [std::net::Ipv4Addr::new(10, 112, 0, 1)] => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // ...and a pod's resolv.conf searches it.
    let version = bundle_version("ETCD_VERSION")
        .trim_start_matches('v')
        .to_string();
    host.kubectl_ok(&[
        "run",
        "dnscheck",
        &format!("--image=registry.k8s.io/etcd:{version}-0"),
        "--command",
        "--",
        "etcd",
        "--data-dir=/tmp/d",
    ]);
    host.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/dnscheck",
        "--timeout=120s",
    ]);
    let sandboxes = host
        .root
        .join("var/lib/selfnode/containerd/io.containerd.grpc.v1.cri/sandboxes");
    let searches: Vec<String> = std::fs::read_dir(&sandboxes)
        .unwrap()
        .flatten()
        .filter_map(|d| std::fs::read_to_string(d.path().join("resolv.conf")).ok())
        .filter_map(|r| {
            r.lines()
                .find(|l| l.starts_with("search ") && l.contains("lab.internal"))
                .map(str::to_string)
        })
        .collect();
    // The dnscheck pod (namespace default); kube-system's pods search
    // kube-system.svc.lab.internal first.
    assert!(
        searches
            .iter()
            .any(|l| l.starts_with("search default.svc.lab.internal svc.lab.internal lab.internal")),
        "{searches:?}"
    );
}
