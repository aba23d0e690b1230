//! The plane against the real binaries of the pinned bundle (etcd v3.7.3,
//! Kubernetes v1.37.2): every rendered flag exists, the temporary plane
//! comes up healthy by its own health checks, the self-hosted objects are
//! accepted by a real kube-apiserver through server-side apply (twice, the
//! second time changing nothing), Secrets are encrypted in etcd, and the
//! self-hosted command lines serve side by side with the temporary ones,
//! as they must during the pivot.
//!
//! Processes are started here directly (the node agent's supervisor is not
//! bootstrap's business) and killed by PID when a test ends, pass or fail.

use std::fs;
use std::io::Read as _;
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bootstrap::host::{Host, HostError, Written};
use bootstrap::objects::{
    apply_all, ensure_kubernetes_service_target_port, mark_control_plane, self_hosted_objects,
    ApplyOutcome, Object, PlaneFiles, CONTROL_PLANE_LABEL, FIELD_MANAGER,
};
use bootstrap::pki::{self, names};
use bootstrap::plane::{
    ensure_encryption_config, prepare_temp_plane, temp_plane, HealthCheck, PlaneImages, PlanePorts,
    PlaneSpec, ProcessSpec,
};
use k8s_openapi::api::core::v1::{Endpoints, Node, Secret, Service, Taint};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

// ---- harness ---------------------------------------------------------------

fn bundle_bin(name: &str) -> PathBuf {
    testkit::bundle_bin(name)
}

/// The real file system, for the test only (no atomic rename needed here).
struct FsHost;

impl Host for FsHost {
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, HostError> {
        match fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(HostError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<Written, HostError> {
        let err = |source| HostError::Write {
            path: path.into(),
            source,
        };
        let old = fs::read(path).ok();
        fs::write(path, contents).map_err(err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)?;
        Ok(match old {
            None => Written::Created,
            Some(o) if o == contents => Written::Unchanged,
            Some(_) => Written::Updated,
        })
    }

    fn ensure_dir(&self, path: &Path, mode: u32) -> Result<(), HostError> {
        let err = |source| HostError::CreateDir {
            path: path.into(),
            source,
        };
        fs::create_dir_all(path).map_err(err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)
    }
}

/// This machine's address on its default route: an advertise address
/// other hosts could reach (loopback is refused by validation).
fn host_ip() -> IpAddr {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.1:9")
        .or_else(|_| s.connect("8.8.8.8:53"))
        .expect("this test needs a non-loopback IPv4 address with a route");
    s.local_addr().unwrap().ip()
}

fn free_port() -> u16 {
    TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plane in `dir` on free ports, with its PKI and encryption config.
fn setup(dir: &Path) -> PlaneSpec {
    let images = PlaneImages {
        kube_apiserver: "registry.k8s.io/kube-apiserver:v1.37.2".into(),
        kube_controller_manager: "registry.k8s.io/kube-controller-manager:v1.37.2".into(),
        kube_scheduler: "registry.k8s.io/kube-scheduler:v1.37.2".into(),
        kube_proxy: "registry.k8s.io/kube-proxy:v1.37.2".into(),
        coredns: "registry.k8s.io/coredns/coredns:v1.14.6".into(),
        etcd: "registry.k8s.io/etcd:3.7.3-0".into(),
        selfnode: "localhost/selfnode:0.1.0".into(),
    };
    let mut spec = PlaneSpec::new("cp-1", host_ip(), "v1.37.2", images);
    spec.pki_dir = dir.join("etc/kubernetes/pki");
    spec.kubeconfig_dir = dir.join("etc/kubernetes");
    spec.etcd_data_dir = dir.join("var/lib/selfnode/etcd");
    spec.audit_log_dir = dir.join("var/log/kubernetes/audit");
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < 11 {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    spec.ports = PlanePorts {
        etcd_client: ports[0],
        etcd_peer: ports[1],
        apiserver: ports[2],
        temp_apiserver: ports[3],
        controller_manager: ports[4],
        temp_controller_manager: ports[5],
        scheduler: ports[6],
        temp_scheduler: ports[7],
        api_load_balancer: ports[8],
        temp_etcd_client: ports[9],
        temp_etcd_peer: ports[10],
    };
    spec.validate().unwrap();
    // No load balancer in this test: kubeconfigs go to the temporary
    // apiserver directly.
    let mut pki_spec = spec.pki_spec();
    pki_spec.api_endpoint = format!("https://127.0.0.1:{}", spec.ports.temp_apiserver);
    pki::ensure_pki(&FsHost, &pki_spec, SystemTime::now()).unwrap();
    ensure_encryption_config(&FsHost, &spec.pki_dir, &mut rand::rng()).unwrap();
    prepare_temp_plane(&FsHost, &spec).unwrap();
    spec
}

/// A running component; killed (by PID) and reaped when dropped.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(dir: &Path, name: &str, binary: &str, args: &[String]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(bundle_bin(binary))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    fn from_spec(dir: &Path, p: &ProcessSpec) -> Proc {
        Proc::start(dir, &p.name, &p.binary, &p.args)
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Polls `check` until it passes; panics with the log if the process
    /// exits or the deadline passes.
    fn wait_healthy(&mut self, check: &HealthCheck, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if probe(check) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}):\n{}", self.name, self.tail());
            }
            if Instant::now() > deadline {
                panic!(
                    "{} not healthy at {} within {timeout:?}:\n{}",
                    self.name,
                    check.url(),
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `done` holds for each process's log, or the process has
/// exited (its log is then final), at most `timeout`; panics naming those
/// that did neither, with their logs.
fn wait_logs(procs: &mut [Proc], what: &str, timeout: Duration, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut waiting = Vec::new();
        for p in procs.iter_mut() {
            // Exited first, then the log: an exited process's log is complete.
            if p.child.try_wait().unwrap().is_none() && !done(&p.log()) {
                waiting.push(format!("--- {}\n{}", p.name, p.tail()));
            }
        }
        if waiting.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}:\n{}",
                waiting.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One run of a [`HealthCheck`] with curl (as the node agent will run it
/// natively): 2xx within 3 s.
fn probe(check: &HealthCheck) -> bool {
    let HealthCheck::Https {
        ca_file,
        client_cert,
        ..
    } = check;
    let mut cmd = Command::new("curl");
    cmd.args(["-sf", "-o", "/dev/null", "--max-time", "3"]);
    match ca_file {
        Some(ca) => cmd.arg("--cacert").arg(ca),
        None => cmd.arg("-k"),
    };
    if let Some(c) = client_cert {
        cmd.arg("--cert")
            .arg(&c.cert_file)
            .arg("--key")
            .arg(&c.key_file);
    }
    cmd.arg(check.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn https(port: u16, path: &str, ca: Option<PathBuf>) -> HealthCheck {
    HealthCheck::Https {
        address: ([127, 0, 0, 1], port).into(),
        path: path.to_string(),
        ca_file: ca,
        client_cert: None,
    }
}

/// A self-hosted container's command line as the kubelet would run it:
/// `$(HOST_IP)` expanded to the node's address.
fn pod_command(objects: &[Object], name: &str, host_ip: IpAddr) -> (String, Vec<String>) {
    let pod = objects
        .iter()
        .find_map(|o| match o {
            Object::DaemonSet(d) if o.name() == name => d.spec.template.spec.clone(),
            Object::Deployment(d) if o.name() == name => d.spec.template.spec.clone(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no workload {name}"));
    let cmd = pod.containers[0].command.clone().unwrap();
    let args = cmd[1..]
        .iter()
        .map(|a| a.replace("$(HOST_IP)", &host_ip.to_string()))
        .collect();
    (cmd[0].clone(), args)
}

fn objects(spec: &PlaneSpec) -> Vec<Object> {
    let files = PlaneFiles::read(&FsHost, spec).unwrap();
    self_hosted_objects(spec, &files).unwrap()
}

async fn client(spec: &PlaneSpec, conf: &str) -> Client {
    let text = fs::read_to_string(spec.kubeconfig_dir.join(conf)).unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

/// What the binaries print when a flag does not parse (lowercased); the
/// Kubernetes components also print their usage text.
const BAD_FLAG_WORDS: [&str; 5] = [
    "unknown flag",
    "flag provided but not defined",
    "invalid value",
    "invalid argument",
    "usage:",
];

fn flag_complaint(log: &str) -> Option<&'static str> {
    let log = log.to_lowercase();
    BAD_FLAG_WORDS.into_iter().find(|w| log.contains(w))
}

// ---- tests -----------------------------------------------------------------

/// Every flag of every command line (temporary and self-hosted) exists in
/// the pinned binaries: each runs against a plane that is not there (etcd
/// is not started for the others) until it has logged, and its log must
/// not complain about a flag. The binaries parse their command line first
/// and end at once, with the complaint, on a flag that does not parse; so
/// once each has logged (or exited), its verdict is in its log.
#[test]
fn every_rendered_flag_exists_in_the_pinned_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = setup(tmp.path());
    let objs = objects(&spec);
    let mut runs: Vec<(String, String, Vec<String>)> = temp_plane(&spec)
        .unwrap()
        .into_iter()
        .map(|p| (format!("temp-{}", p.name), p.binary, p.args))
        .collect();
    for name in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let (binary, args) = pod_command(&objs, name, spec.advertise_address);
        runs.push((format!("self-hosted-{name}"), binary, args));
    }
    // The detector itself: a bad flag and a bad value must be caught.
    let mut bad = runs.clone();
    bad[2].2.push("--no-such-flag=1".into());
    bad[3].2.push("--leader-elect=maybe".into());
    bad[0].2.push("--snapshot-count=lots".into());
    let mut procs: Vec<Proc> = runs
        .iter()
        .map(|(name, binary, args)| Proc::start(tmp.path(), name, binary, args))
        .collect();
    let mut bad_procs: Vec<Proc> = [0, 2, 3]
        .into_iter()
        .map(|i| {
            let (name, binary, args) = &bad[i];
            Proc::start(tmp.path(), &format!("bad-{name}"), binary, args)
        })
        .collect();
    let deadline = Duration::from_secs(60);
    wait_logs(&mut procs, "every process to log", deadline, |log| {
        !log.is_empty()
    });
    wait_logs(
        &mut bad_procs,
        "every bad command line to be complained about",
        deadline,
        |log| flag_complaint(log).is_some(),
    );
    for mut p in procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
        assert!(!p.log().is_empty(), "{}: no output", p.name);
        if let Some(w) = flag_complaint(&p.log()) {
            panic!("{}: log mentions {w:?}:\n{}", p.name, p.tail());
        }
    }
    for mut p in bad_procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
        assert!(
            flag_complaint(&p.log()).is_some(),
            "{}: bad flag not detected:\n{}",
            p.name,
            p.tail()
        );
    }
}

#[test]
fn temp_plane_serves_objects_apply_and_self_hosted_lines_run_alongside() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = setup(tmp.path());
    let dir = tmp.path();
    let up = Duration::from_secs(120);

    // The temporary plane, in order, each healthy by its own check.
    let mut running = Vec::new();
    for p in temp_plane(&spec).unwrap() {
        let mut proc = Proc::from_spec(dir, &p);
        proc.wait_healthy(&p.health, up);
        running.push(proc);
    }

    let objs = objects(&spec);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = client(&spec, names::ADMIN_CONF).await;
        let nodes: Api<Node> = Api::all(admin.clone());
        let denied = nodes.list(&ListParams::default()).await;
        assert!(
            matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403),
            "admin.conf works only once kubeadm:cluster-admins is bound: {denied:?}"
        );

        // First apply creates everything (with super-admin: admin.conf's
        // binding is one of the objects).
        let superadmin = client(&spec, names::SUPER_ADMIN_CONF).await;
        let applied = apply_all(superadmin.clone(), &objs, FIELD_MANAGER)
            .await
            .unwrap();
        assert_eq!(applied.len(), objs.len());
        for a in &applied {
            assert_eq!(a.outcome, ApplyOutcome::Created, "{a:?}");
        }
        // Applying again changes nothing.
        let again = apply_all(superadmin.clone(), &objs, FIELD_MANAGER)
            .await
            .unwrap();
        for a in &again {
            assert_eq!(a.outcome, ApplyOutcome::Unchanged, "{a:?}");
        }
        // admin.conf now works through the binding.
        nodes.list(&ListParams::default()).await.unwrap();

        // The audit log names who read a Secret, without its contents;
        // the list of nodes (a read of anything else) is not in it. (No
        // Secret of that name exists any more: the keys are on the hosts'
        // disks; a read that finds nothing is recorded all the same.)
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), "kube-system");
        assert!(secrets.get_opt("kube-apiserver").await.unwrap().is_none());
        // A Secret whose storage is checked below (encrypted at rest).
        secrets
            .create(
                &kube::api::PostParams::default(),
                &Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some("selfnode-encryption-check".into()),
                        ..Default::default()
                    },
                    string_data: Some([("k".to_string(), "v".to_string())].into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let audit_log = spec.audit_log_dir.join("kube-apiserver-temporary.log");
        let deadline = Instant::now() + Duration::from_secs(20);
        let events: Vec<serde_json::Value> = loop {
            let events: Vec<serde_json::Value> = fs::read_to_string(&audit_log)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let seen = events.iter().any(|e| {
                e["verb"] == "get"
                    && e["objectRef"]["resource"] == "secrets"
                    && e["objectRef"]["name"] == "kube-apiserver"
                    && e["user"]["username"] == "kubernetes-admin"
            });
            if seen || Instant::now() > deadline {
                assert!(
                    seen,
                    "no audit event of the Secret read in {}",
                    audit_log.display()
                );
                break events;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for e in &events {
            assert_eq!(e["level"], "Metadata", "{e}");
            assert!(
                e.get("requestObject").is_none() && e.get("responseObject").is_none(),
                "{e}"
            );
            assert!(
                !(e["objectRef"]["resource"] == "nodes" && e["verb"] == "list"),
                "reads of other objects are not recorded: {e}"
            );
        }
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&audit_log), 0o600);
        assert_eq!(mode(&spec.audit_log_dir), 0o700);

        // Node label and taint, keeping a taint someone else set.
        let node = Node {
            metadata: kube::api::ObjectMeta {
                name: Some("cp-1".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                taints: Some(vec![Taint {
                    key: "example.com/other".into(),
                    effect: "NoExecute".into(),
                    ..Taint::default()
                }]),
                ..Default::default()
            }),
            ..Node::default()
        };
        let all_nodes: Api<Node> = Api::all(superadmin.clone());
        all_nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap();
        for _ in 0..2 {
            mark_control_plane(superadmin.clone(), "cp-1", FIELD_MANAGER, true)
                .await
                .unwrap();
        }
        let n = all_nodes.get("cp-1").await.unwrap();
        assert_eq!(
            n.metadata.labels.unwrap()["node-role.kubernetes.io/control-plane"],
            ""
        );
        let taints: Vec<String> = n
            .spec
            .unwrap()
            .taints
            .unwrap()
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        // Others' taints are kept (the apiserver's admission adds
        // node.kubernetes.io/not-ready too), ours is there once.
        assert!(
            taints.contains(&"example.com/other:NoExecute".to_string()),
            "{taints:?}"
        );
        let ours = "node-role.kubernetes.io/control-plane:NoSchedule".to_string();
        assert_eq!(
            taints.iter().filter(|t| **t == ours).count(),
            1,
            "{taints:?}"
        );

        // Only selfnode changes the control-plane label (the static
        // admission policy in the admission configuration's directory):
        // an admin's removal, or a Node created with it, is refused with the
        // way to do it; the control-plane agents' identity may.
        let unlabel = serde_json::json!({"metadata": {"labels": {CONTROL_PLANE_LABEL: null}}});
        let merge = kube::api::Patch::Merge(&unlabel);
        let pp = kube::api::PatchParams::default();
        let refused = nodes.patch("cp-1", &pp, &merge).await.unwrap_err();
        let kube::Error::Api(status) = &refused else {
            panic!("{refused:?}")
        };
        assert_eq!(status.code, 403, "{status:?}");
        assert!(
            status.message.contains("selfnode promote")
                && status.message.contains("kubernetes-admin"),
            "{status:?}"
        );
        let mut labelled = node.clone();
        labelled.metadata.name = Some("cp-2".into());
        labelled.metadata.labels = Some([(CONTROL_PLANE_LABEL.to_string(), String::new())].into());
        let refused = nodes
            .create(&PostParams::default(), &labelled)
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, kube::Error::Api(s) if s.code == 403),
            "{refused:?}"
        );
        let agent = client(&spec, names::CONTROL_PLANE_AGENT_CONF).await;
        let agent_nodes: Api<Node> = Api::all(agent);
        agent_nodes.patch("cp-1", &pp, &merge).await.unwrap();
        mark_control_plane(superadmin.clone(), "cp-1", FIELD_MANAGER, true)
            .await
            .unwrap();

        // The temporary apiserver created the kubernetes Service with its
        // own port; the helper points it at the self-hosted one.
        let svcs: Api<Service> = Api::namespaced(superadmin.clone(), "default");
        let target = |s: Service| s.spec.unwrap().ports.unwrap()[0].target_port.clone();
        let before = target(svcs.get("kubernetes").await.unwrap());
        assert_eq!(
            before,
            Some(
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(
                    spec.ports.temp_apiserver
                ))
            )
        );
        assert!(
            ensure_kubernetes_service_target_port(superadmin.clone(), spec.ports.apiserver)
                .await
                .unwrap()
        );
        assert!(
            !ensure_kubernetes_service_target_port(superadmin.clone(), spec.ports.apiserver)
                .await
                .unwrap()
        );
        assert_eq!(
            target(svcs.get("kubernetes").await.unwrap()),
            Some(
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(
                    spec.ports.apiserver
                ))
            )
        );
        // With --endpoint-reconciler-type=none the temporary apiserver
        // never publishes itself.
        let eps: Api<Endpoints> = Api::namespaced(superadmin.clone(), "default");
        let subsets = eps
            .get_opt("kubernetes")
            .await
            .unwrap()
            .and_then(|e| e.subsets);
        assert!(
            subsets.unwrap_or_default().is_empty(),
            "temporary apiserver must not be in the kubernetes Endpoints"
        );
    });

    // Secrets are encrypted at rest with the generated secretbox key.
    let cert = |base: &str, ext: &str| spec.pki_dir.join(format!("{base}.{ext}"));
    let out = Command::new(bundle_bin("etcdctl"))
        .arg(format!(
            "--endpoints=https://127.0.0.1:{}",
            spec.ports.temp_etcd_client
        ))
        .arg("--cacert")
        .arg(cert(names::ETCD_CA, "crt"))
        .arg("--cert")
        .arg(cert(names::APISERVER_ETCD_CLIENT, "crt"))
        .arg("--key")
        .arg(cert(names::APISERVER_ETCD_CLIENT, "key"))
        .args([
            "get",
            "/registry/secrets/kube-system/selfnode-encryption-check",
            "--print-value-only",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.starts_with(b"k8s:enc:secretbox:v1:key1:"),
        "Secret stored unencrypted: {:?}",
        String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(40)])
    );

    // The pivot overlap: the self-hosted command lines (as the kubelet
    // would run them) serve while the temporary plane still runs.
    let ca = Some(cert(names::CA, "crt"));
    for (name, check) in [
        (
            "kube-apiserver",
            https(spec.ports.apiserver, "/readyz", ca.clone()),
        ),
        (
            "kube-controller-manager",
            https(spec.ports.controller_manager, "/healthz", None),
        ),
        // Not the leader (the temporary scheduler is), and still ready.
        (
            "kube-scheduler",
            https(spec.ports.scheduler, "/readyz", None),
        ),
    ] {
        let (binary, mut args) = pod_command(&objs, name, spec.advertise_address);
        // The self-hosted etcd member (a static pod that joins as a learner)
        // is node's init test; here the self-hosted apiserver uses the
        // temporary member.
        for a in args.iter_mut().filter(|a| a.starts_with("--etcd-servers=")) {
            *a = format!(
                "--etcd-servers=https://127.0.0.1:{}",
                spec.ports.temp_etcd_client
            );
        }
        let mut p = Proc::start(dir, &format!("self-hosted-{name}"), &binary, &args);
        p.wait_healthy(&check, up);
        running.push(p);
    }
    // The self-hosted apiserver publishes itself (and only itself) in the
    // kubernetes EndpointSlice.
    rt.block_on(async {
        let superadmin = client(&spec, names::SUPER_ADMIN_CONF).await;
        let slices: Api<EndpointSlice> = Api::namespaced(superadmin, "default");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = slices.get_opt("kubernetes").await.unwrap();
            let got = s.map(|s| {
                let addrs: Vec<String> = s
                    .endpoints
                    .unwrap_or_default()
                    .iter()
                    .flat_map(|e| e.addresses.clone())
                    .collect();
                let ports: Vec<i32> = s
                    .ports
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|p| p.port)
                    .collect();
                (addrs, ports)
            });
            let want = (
                vec![spec.advertise_address.to_string()],
                vec![i32::from(spec.ports.apiserver)],
            );
            if got.as_ref() == Some(&want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kubernetes EndpointSlice is {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    drop(running);
}
