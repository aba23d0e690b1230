//! Unit and golden tests of the plane: spec validation, the temporary
//! plane's command lines, the temporary/self-hosted flag differences, and
//! the encryption configuration.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::SeedableRng;

use super::flags::{self, Value};
use super::*;
use crate::host::fake::MemHost;
use crate::host::{Host, Written};

pub(crate) fn images() -> PlaneImages {
    PlaneImages {
        kube_apiserver: "registry.k8s.io/kube-apiserver:v1.37.2".into(),
        kube_controller_manager: "registry.k8s.io/kube-controller-manager:v1.37.2".into(),
        kube_scheduler: "registry.k8s.io/kube-scheduler:v1.37.2".into(),
        kube_proxy: "registry.k8s.io/kube-proxy:v1.37.2".into(),
        coredns: "registry.k8s.io/coredns/coredns:v1.14.6".into(),
        etcd: "registry.k8s.io/etcd:3.7.3-0".into(),
        selfnode: "localhost/selfnode:0.1.0".into(),
    }
}

/// The spec every golden file is rendered from.
pub(crate) fn spec() -> PlaneSpec {
    PlaneSpec::new("cp-1", "10.0.0.10".parse().unwrap(), "v1.37.2", images())
}

/// Compares `actual` with the golden file `tests/golden/<name>`;
/// `UPDATE_GOLDEN=1` rewrites it instead.
pub(crate) fn check_golden(name: &str, actual: &str) {
    testkit::golden(env!("CARGO_MANIFEST_DIR"), name, actual);
}

fn render_processes(procs: &[ProcessSpec]) -> String {
    let mut out = String::new();
    for p in procs {
        let HealthCheck::Https {
            address,
            path,
            ca_file,
            client_cert,
        } = &p.health;
        writeln!(out, "# {} (bin/{})", p.name, p.binary).unwrap();
        writeln!(out, "health: GET https://{address}{path}").unwrap();
        match ca_file {
            Some(ca) => writeln!(out, "  verify server against {}", ca.display()).unwrap(),
            None => writeln!(out, "  server certificate not verified (self-signed)").unwrap(),
        }
        match client_cert {
            Some(c) => writeln!(
                out,
                "  client certificate {} {}",
                c.cert_file.display(),
                c.key_file.display()
            )
            .unwrap(),
            None => writeln!(out, "  anonymous").unwrap(),
        }
        writeln!(out, "{}", p.binary).unwrap();
        for a in &p.args {
            writeln!(out, "  {a}").unwrap();
        }
        writeln!(out).unwrap();
    }
    out
}

#[test]
fn temp_plane_golden() {
    let procs = temp_plane(&spec()).unwrap();
    let names: Vec<&str> = procs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler"
        ],
        "start order"
    );
    check_golden("plane/temp-plane.txt", &render_processes(&procs));
}

#[test]
fn temp_plane_ipv6_golden() {
    let mut s = spec();
    s.advertise_address = "fd00::10".parse().unwrap();
    s.pod_cidr = "fd10::/56".parse().unwrap();
    s.service_cidr = "fd20::/108".parse().unwrap();
    let procs = temp_plane(&s).unwrap();
    check_golden("plane/temp-plane-ipv6.txt", &render_processes(&procs));
}

fn as_map(f: &flags::Flags) -> BTreeMap<String, String> {
    f.args()
        .into_iter()
        .map(|a| {
            let (k, v) = a.trim_start_matches("--").split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Flags present in only one of the two, or with different values.
fn diff(a: &flags::Flags, b: &flags::Flags) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let (a, b) = (as_map(a), as_map(b));
    let mut out = BTreeMap::new();
    for k in a.keys().chain(b.keys()) {
        let (x, y) = (a.get(k).cloned(), b.get(k).cloned());
        if x != y {
            out.insert(k.clone(), (x, y));
        }
    }
    out
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[test]
fn apiserver_temp_and_self_hosted_differ_only_where_they_must() {
    let s = spec();
    let d = diff(
        &flags::apiserver(&s, Placement::Temporary),
        &flags::apiserver(&s, Placement::SelfHosted),
    );
    let want: BTreeMap<String, (Option<String>, Option<String>)> = [
        ("secure-port".to_string(), (some("6444"), some("6443"))),
        ("endpoint-reconciler-type".to_string(), (some("none"), None)),
        (
            "advertise-address".to_string(),
            (some("10.0.0.10"), some("$(HOST_IP)")),
        ),
        (
            "etcd-servers".to_string(),
            (
                some("https://127.0.0.1:12379"),
                some("https://127.0.0.1:2379"),
            ),
        ),
        // Both write audit logs on the first host during the pivot.
        (
            "audit-log-path".to_string(),
            (
                some("/var/log/kubernetes/audit/kube-apiserver-temporary.log"),
                some("/var/log/kubernetes/audit/kube-apiserver.log"),
            ),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(d, want);
}

#[test]
fn controller_manager_and_scheduler_differ_only_in_port() {
    let s = spec();
    let d = diff(
        &flags::controller_manager(&s, Placement::Temporary),
        &flags::controller_manager(&s, Placement::SelfHosted),
    );
    assert_eq!(
        d,
        [("secure-port".to_string(), (some("10357"), some("10257")))]
            .into_iter()
            .collect()
    );
    let d = diff(
        &flags::scheduler(&s, Placement::Temporary),
        &flags::scheduler(&s, Placement::SelfHosted),
    );
    assert_eq!(
        d,
        [("secure-port".to_string(), (some("10359"), some("10259")))]
            .into_iter()
            .collect()
    );
}

#[test]
fn the_previous_minor_turns_on_the_static_admission_policies_gate() {
    // 1.37 has ManifestBasedAdmissionControlConfig on (beta); 1.36 has it
    // alpha and off, and refuses the admission config's staticManifestsDir.
    let mut s = spec();
    s.kubernetes_version = "v1.37.2".into();
    assert!(!as_map(&flags::apiserver(&s, Placement::SelfHosted)).contains_key("feature-gates"));
    s.kubernetes_version = "v1.36.3".into();
    for p in [Placement::Temporary, Placement::SelfHosted] {
        assert_eq!(
            as_map(&flags::apiserver(&s, p))["feature-gates"],
            "ManifestBasedAdmissionControlConfig=true"
        );
    }
}

#[test]
fn security_flags_are_on() {
    let s = spec();
    let api = as_map(&flags::apiserver(&s, Placement::SelfHosted));
    assert_eq!(api["authorization-mode"], "Node,RBAC");
    // Added to the defaults (PodSecurity among them), configured by a file.
    assert_eq!(api["enable-admission-plugins"], "NodeRestriction");
    assert!(!api.contains_key("disable-admission-plugins"));
    assert_eq!(
        api["admission-control-config-file"],
        "/etc/kubernetes/admission-config.yaml"
    );
    assert_eq!(api["service-account-extend-token-expiration"], "false");
    assert_eq!(api["profiling"], "false");
    assert_eq!(
        api["encryption-provider-config"],
        "/etc/kubernetes/pki/encryption-config.yaml"
    );
    assert_eq!(
        api["service-account-issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    // The kubelets' serving certificates come from the cluster CA.
    assert_eq!(
        api["kubelet-certificate-authority"],
        "/etc/kubernetes/pki/ca.crt"
    );
    assert!(!api.contains_key("anonymous-auth"), "kubeadm's default");
    let t = Placement::Temporary;
    let etcd = as_map(&flags::etcd(&s, t, &EtcdInitial::alone(&s, t)));
    assert_eq!(etcd["client-cert-auth"], "true");
    assert_eq!(etcd["peer-client-cert-auth"], "true");
    assert!(
        !etcd.contains_key("listen-metrics-urls"),
        "no unauthenticated listener"
    );
    for f in [
        flags::controller_manager(&s, Placement::SelfHosted),
        flags::scheduler(&s, Placement::SelfHosted),
    ] {
        let m = as_map(&f);
        assert_eq!(m["bind-address"], "127.0.0.1");
        assert_eq!(m["leader-elect"], "true");
        assert_eq!(m["profiling"], "false");
    }
}

#[test]
fn every_server_takes_tls_1_2_at_least_and_the_one_cipher_list() {
    let s = spec();
    let suites = TLS_CIPHER_SUITES.join(",");
    for p in [Placement::Temporary, Placement::SelfHosted] {
        for f in [
            flags::apiserver(&s, p),
            flags::controller_manager(&s, p),
            flags::scheduler(&s, p),
        ] {
            let m = as_map(&f);
            assert_eq!(m["tls-min-version"], "VersionTLS12");
            assert_eq!(m["tls-cipher-suites"], suites);
        }
        for initial in [EtcdInitial::alone(&s, p), EtcdInitial::join_temporary(&s)] {
            let m = as_map(&flags::etcd(&s, p, &initial));
            assert_eq!(m["tls-min-version"], "TLS1.2");
            assert_eq!(m["cipher-suites"], suites);
        }
    }
}

#[test]
fn file_flags_are_typed_as_files() {
    // Every flag whose value is an absolute path is a Value::File (so the
    // objects mount it), except etcd's data dir, which is a Dir, and the
    // audit log, an Output in the audit log directory.
    let s = spec();
    let sh = Placement::SelfHosted;
    let all = [
        flags::etcd(&s, sh, &EtcdInitial::join_temporary(&s)),
        flags::apiserver(&s, Placement::SelfHosted),
        flags::controller_manager(&s, Placement::SelfHosted),
        flags::scheduler(&s, Placement::SelfHosted),
    ];
    for f in &all {
        for (k, v) in as_map(f) {
            if v.starts_with('/') {
                match f.get(&k) {
                    Some(Value::File(p)) => assert_eq!(p, Path::new(&v)),
                    Some(Value::Dir(p)) => assert_eq!(
                        (k.as_str(), p.as_path()),
                        ("data-dir", s.etcd_data_dir.as_path())
                    ),
                    Some(Value::Output(p)) => assert_eq!(
                        (k.as_str(), p.parent()),
                        ("audit-log-path", Some(s.audit_log_dir.as_path()))
                    ),
                    other => panic!("--{k}={v} is {other:?}"),
                }
            }
        }
    }
}

#[test]
fn pki_spec_points_at_the_local_load_balancer() {
    let s = spec();
    let p = s.pki_spec();
    assert_eq!(p.api_endpoint, "https://127.0.0.1:7445");
    assert_eq!(p.advertise_addresses, vec![s.advertise_address]);
    p.validate().unwrap();
    assert_eq!(s.dns_service_ip().unwrap().to_string(), "10.96.0.10");
    assert_eq!(s.kubernetes_service_ip().unwrap().to_string(), "10.96.0.1");
}

#[test]
fn default_spec_is_valid() {
    spec().validate().unwrap();
}

/// Each case: a change to the valid spec, and words the error must contain.
#[test]
fn validation_errors_are_clear() {
    type Case = (&'static str, fn(&mut PlaneSpec), &'static [&'static str]);
    let cases: &[Case] = &[
        (
            "bad node name",
            |s| s.node_name = "CP_1".into(),
            &["invalid node name \"CP_1\"", "lowercase"],
        ),
        (
            "loopback",
            |s| s.advertise_address = "127.0.0.1".parse().unwrap(),
            &["127.0.0.1", "loopback", "other nodes"],
        ),
        (
            "unspecified",
            |s| s.advertise_address = "0.0.0.0".parse().unwrap(),
            &["invalid advertise address 0.0.0.0"],
        ),
        (
            "version",
            |s| s.kubernetes_version = "1.37.2".into(),
            &["invalid Kubernetes version \"1.37.2\"", "v1.37.2"],
        ),
        (
            "version parts",
            |s| s.kubernetes_version = "v1.37".into(),
            &["\"v1.37\""],
        ),
        (
            "image",
            |s| s.images.kube_proxy = "".into(),
            &["invalid image for kube_proxy"],
        ),
        (
            "image space",
            |s| s.images.coredns = "a b".into(),
            &["invalid image for coredns", "\"a b\""],
        ),
        (
            "relative data dir",
            |s| s.etcd_data_dir = "var/etcd".into(),
            &["etcd_data_dir must be an absolute path", "var/etcd"],
        ),
        (
            "relative audit log dir",
            |s| s.audit_log_dir = "audit".into(),
            &["audit_log_dir must be an absolute path", "audit"],
        ),
        (
            "relative pki",
            |s| s.pki_dir = "pki".into(),
            &["pki_dir must be an absolute path"],
        ),
        (
            "family",
            |s| s.pod_cidr = "fd00::/48".parse().unwrap(),
            &["pod CIDR fd00::/48", "IP family", "single-stack"],
        ),
        (
            "pod cidr too small",
            |s| s.pod_cidr = "10.244.0.0/25".parse().unwrap(),
            &["pod CIDR 10.244.0.0/25", "between /8 and /24"],
        ),
        (
            "pod cidr too big",
            |s| s.pod_cidr = "10.0.0.0/7".parse().unwrap(),
            &["between /8 and /24"],
        ),
        (
            "overlap",
            |s| s.pod_cidr = "10.96.0.0/16".parse().unwrap(),
            &["overlap", "10.96.0.0/16", "10.96.0.0/12"],
        ),
        (
            "service cidr for dns",
            |s| s.service_cidr = "10.96.0.0/29".parse().unwrap(),
            &["10.96.0.0/29", "too small", "tenth"],
        ),
        (
            "zero port",
            |s| s.ports.etcd_peer = 0,
            &["port etcd_peer is 0"],
        ),
        (
            "clash",
            |s| s.ports.temp_apiserver = 6443,
            &["apiserver and temp_apiserver are both 6443"],
        ),
        (
            "reserved",
            |s| s.ports.temp_scheduler = 10250,
            &["temp_scheduler is 10250", "kubelet"],
        ),
        (
            "replicas",
            |s| s.replicas.coredns = 0,
            &["coredns replicas is 0"],
        ),
        (
            "conntrack",
            |s| s.kube_proxy_conntrack_max_per_core = Some(-1),
            &["conntrack", "-1"],
        ),
        (
            "domain",
            |s| s.cluster_domain = "Cluster.Local".into(),
            &["invalid DNS domain \"Cluster.Local\""],
        ),
    ];
    for (what, change, words) in cases {
        let mut s = spec();
        change(&mut s);
        let err = s
            .validate()
            .expect_err(&format!("{what}: should be refused"))
            .to_string();
        for w in *words {
            assert!(err.contains(w), "{what}: {err:?} lacks {w:?}");
        }
        assert!(
            temp_plane(&s).is_err(),
            "{what}: temp_plane must validate too"
        );
    }
}

#[test]
fn small_valid_variants() {
    let mut s = spec();
    s.pod_cidr = "100.64.0.0/10".parse().unwrap();
    s.advertise_address = "192.168.1.5".parse().unwrap();
    s.validate().unwrap();
    s.pod_cidr = "192.168.100.0/24".parse().unwrap();
    s.service_cidr = "10.96.0.0/28".parse().unwrap();
    s.replicas.coredns = 1;
    s.validate().unwrap();
}

#[test]
fn prepare_creates_the_temporary_etcd_data_dir_0700() {
    let h = MemHost::new();
    let s = spec();
    // ensure_pki made the kubeconfig directory.
    h.ensure_dir(&s.kubeconfig_dir, 0o700).unwrap();
    prepare_temp_plane(&h, &s).unwrap();
    assert_eq!(h.dir_mode(s.temp_etcd_data_dir()), Some(0o700));
    assert_eq!(h.dir_mode(&s.audit_log_dir), Some(0o700));
    assert_eq!(
        h.file(s.kubeconfig_dir.join("audit-policy.yaml")).unwrap(),
        crate::plane::AUDIT_POLICY.as_bytes()
    );
    let admission = s.kubeconfig_dir.join("admission-config.yaml");
    assert_eq!(
        h.file(&admission).unwrap(),
        crate::plane::admission_config(&s.kubeconfig_dir).as_bytes()
    );
    assert_eq!(h.mode(&admission), Some(0o600));
    // What the components read of these files is exactly what was written.
    for (path, contents) in apiserver_own_files(&s) {
        assert_eq!(h.file(&path).unwrap(), contents.as_bytes());
    }
    prepare_temp_plane(&h, &s).unwrap();
    let mut bad = spec();
    bad.advertise_address = "127.0.0.1".parse().unwrap();
    assert!(prepare_temp_plane(&MemHost::new(), &bad).is_err());
}

// ---- encryption configuration ---------------------------------------------

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

const DIR: &str = "/etc/kubernetes/pki";

fn config_path() -> PathBuf {
    Path::new(DIR).join(ENCRYPTION_CONFIG_FILE)
}

#[test]
fn encryption_config_golden() {
    check_golden(
        "plane/encryption-config.yaml",
        &encryption::render_for_test(&[7u8; 32]),
    );
}

#[test]
fn encryption_config_is_created_once_and_kept() {
    let h = MemHost::new();
    let r = ensure_encryption_config(&h, Path::new(DIR), &mut rng(1)).unwrap();
    assert!(r.created);
    assert_eq!(r.provider, "secretbox");
    assert_eq!(r.path, config_path());
    assert_eq!(h.mode(config_path()), Some(0o600));
    assert_eq!(h.dir_mode(DIR), Some(0o700));
    let first = h.file(config_path()).unwrap();
    let text = String::from_utf8(first.clone()).unwrap();
    assert!(text.contains("kind: EncryptionConfiguration"), "{text}");
    assert!(text.contains("secretbox"), "{text}");
    h.take_changes();

    // Another run (another rng) keeps the key.
    let r = ensure_encryption_config(&h, Path::new(DIR), &mut rng(2)).unwrap();
    assert!(!r.created);
    assert_eq!(h.file(config_path()).unwrap(), first);
    assert!(h.take_changes().is_empty(), "nothing rewritten");

    // A wrong mode is corrected, the contents kept.
    h.set_mode(config_path(), 0o644);
    ensure_encryption_config(&h, Path::new(DIR), &mut rng(3)).unwrap();
    assert_eq!(h.mode(config_path()), Some(0o600));
    assert_eq!(h.file(config_path()).unwrap(), first);
}

#[test]
fn different_runs_make_different_keys() {
    let (a, b) = (MemHost::new(), MemHost::new());
    ensure_encryption_config(&a, Path::new(DIR), &mut rng(1)).unwrap();
    ensure_encryption_config(&b, Path::new(DIR), &mut rng(2)).unwrap();
    assert_ne!(a.file(config_path()), b.file(config_path()));
}

#[test]
fn a_user_rotated_config_is_kept() {
    let h = MemHost::new();
    let rotated = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets, configmaps]\n  providers:\n  - aesgcm:\n      keys:\n      - name: new\n        secret: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n  - secretbox:\n      keys:\n      - name: key1\n        secret: BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n  - identity: {}\n";
    h.put(config_path(), rotated, 0o600);
    let r = ensure_encryption_config(&h, Path::new(DIR), &mut rng(1)).unwrap();
    assert_eq!(r.provider, "aesgcm");
    assert_eq!(h.file(config_path()).unwrap(), rotated.as_bytes());
}

#[test]
fn an_unusable_config_is_refused_not_replaced() {
    let cases: &[(&str, &str)] = &[
        ("secret-key-material: {{{", "not a YAML EncryptionConfiguration"),
        ("apiVersion: v1\nkind: ConfigMap\n", "not a apiserver.config.k8s.io/v1 EncryptionConfiguration"),
        ("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [configmaps]\n  providers:\n  - identity: {}\n", "no entry for secrets"),
        ("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - identity: {}\n", "first provider for secrets is identity"),
        ("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - secretbox:\n      keys:\n      - name: k\n        secret: c2hvcnQ=\n", "5 bytes long"),
        ("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - secretbox:\n      keys: []\n", "has no keys"),
    ];
    for (contents, words) in cases {
        let h = MemHost::new();
        h.put(config_path(), *contents, 0o600);
        let err = ensure_encryption_config(&h, Path::new(DIR), &mut rng(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains(words), "{err:?} lacks {words:?}");
        assert!(err.contains("never replaces it"), "{err}");
        assert!(
            err.contains("/etc/kubernetes/pki/encryption-config.yaml"),
            "{err}"
        );
        assert!(
            !err.contains("c2hvcnQ") && !err.contains("{{{"),
            "quotes the file: {err}"
        );
        assert_eq!(
            h.file(config_path()).unwrap(),
            contents.as_bytes(),
            "untouched"
        );
    }
}

#[test]
fn encryption_config_write_failure_is_reported() {
    let h = MemHost::new();
    h.fail_after_writes(Some(0));
    let err = ensure_encryption_config(&h, Path::new(DIR), &mut rng(1)).unwrap_err();
    assert!(err.to_string().contains("encryption-config.yaml"), "{err}");
    h.fail_after_writes(None);
    // The next run converges.
    assert!(
        ensure_encryption_config(&h, Path::new(DIR), &mut rng(1))
            .unwrap()
            .created
    );
    assert_eq!(
        h.write_file(&config_path(), &h.file(config_path()).unwrap(), 0o600)
            .unwrap(),
        Written::Unchanged
    );
}

#[test]
fn etcd_members_differ_only_where_both_run_on_one_node() {
    let s = spec();
    let temp = as_map(&flags::etcd(
        &s,
        Placement::Temporary,
        &EtcdInitial::alone(&s, Placement::Temporary),
    ));
    let joining = as_map(&flags::etcd(
        &s,
        Placement::SelfHosted,
        &EtcdInitial::join_temporary(&s),
    ));
    let ip = s.advertise_address;
    assert_eq!(temp["name"], "cp-1-bootstrap");
    assert_eq!(temp["listen-peer-urls"], format!("https://{ip}:12380"));
    assert_eq!(temp["initial-cluster-state"], "new");
    assert_eq!(
        temp["initial-cluster"],
        format!("cp-1-bootstrap=https://{ip}:12380")
    );
    assert_eq!(temp["data-dir"], "/var/lib/selfnode/etcd-bootstrap");
    assert_eq!(joining["name"], "cp-1");
    assert_eq!(joining["data-dir"], "/var/lib/selfnode/etcd");
    assert_eq!(joining["initial-cluster-state"], "existing");
    assert_eq!(
        joining["initial-cluster"],
        format!("cp-1-bootstrap=https://{ip}:12380,cp-1=https://{ip}:2380")
    );
    assert_eq!(
        joining["listen-client-urls"],
        format!("https://127.0.0.1:2379,https://{ip}:2379")
    );
    // Each apiserver talks to the member on its own node, on loopback.
    let api = |p| as_map(&flags::apiserver(&s, p))["etcd-servers"].clone();
    assert_eq!(api(Placement::Temporary), "https://127.0.0.1:12379");
    assert_eq!(api(Placement::SelfHosted), "https://127.0.0.1:2379");
}

/// The quota the user gives reaches the temporary etcd's command line and
/// the self-hosted member's static pod alike.
#[test]
fn the_etcd_quota_setting_reaches_both_members() {
    let flags = crate::config::InitFlags {
        etcd_quota_backend_bytes: Some("4GiB".into()),
        ..Default::default()
    };
    let host = crate::config::HostIdentity {
        hostname: "cp-1".into(),
        addresses: vec!["10.0.0.10".parse().unwrap()],
    };
    let settings = crate::config::resolve(None, &flags, &host).unwrap();
    let s = PlaneSpec::from_settings(
        &settings,
        PlaneEnv {
            kubernetes_version: "v1.37.2".into(),
            images: images(),
            pki_dir: PathBuf::from("/etc/kubernetes/pki"),
            kubeconfig_dir: PathBuf::from("/etc/kubernetes"),
            etcd_data_dir: PathBuf::from("/var/lib/selfnode/etcd"),
            audit_log_dir: PathBuf::from("/var/log/kubernetes/audit"),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            api_load_balancer_port: 7445,
        },
    );
    let want = "--quota-backend-bytes=4294967296".to_string();
    let temp = temp_plane(&s).unwrap();
    let etcd = temp.iter().find(|p| p.name == "etcd").unwrap();
    assert_eq!(
        etcd.args
            .iter()
            .filter(|a| a.starts_with("--quota-backend-bytes="))
            .collect::<Vec<_>>(),
        [&want],
        "temporary etcd"
    );
    let pod = crate::objects::etcd_static_pod(&s, &EtcdInitial::join_temporary(&s));
    let command = pod.spec.unwrap().containers[0].command.clone().unwrap();
    assert_eq!(
        command
            .iter()
            .filter(|a| a.starts_with("--quota-backend-bytes="))
            .collect::<Vec<_>>(),
        [&want],
        "self-hosted etcd"
    );
    // The default, where nothing is set: 8 GiB.
    let temp = temp_plane(&spec()).unwrap();
    assert!(temp[0]
        .args
        .contains(&"--quota-backend-bytes=8589934592".to_string()));
}
