//! Unit tests of `ensure_pki` against the in-memory host. Every test goes
//! through `run` (one convergence pass) and reads results back with
//! `inspect` (x509-parser), never through the code under test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::kubeconfig::{decode_data, Kubeconfig};
use super::*;
use crate::host::fake::MemHost;

const DAY: u64 = 24 * 3600;

/// 2030-03-17T17:46:40Z: far from the build machine's clock on purpose.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * DAY)
}

fn spec() -> PkiSpec {
    PkiSpec::new("cp-1", vec!["10.0.0.10".parse().unwrap()])
}

fn run(host: &MemHost, spec: &PkiSpec, now: SystemTime) -> PkiReport {
    ensure_pki(host, spec, now).unwrap_or_else(|e| panic!("ensure_pki failed: {e}"))
}

/// Every file of a complete PKI, relative to /etc/kubernetes.
const ALL_FILES: [&str; 28] = [
    "pki/ca.crt",
    "pki/ca.key",
    "pki/front-proxy-ca.crt",
    "pki/front-proxy-ca.key",
    "pki/etcd/ca.crt",
    "pki/etcd/ca.key",
    "pki/sa.key",
    "pki/sa.pub",
    "pki/apiserver.crt",
    "pki/apiserver.key",
    "pki/apiserver-kubelet-client.crt",
    "pki/apiserver-kubelet-client.key",
    "pki/front-proxy-client.crt",
    "pki/front-proxy-client.key",
    "pki/etcd/server.crt",
    "pki/etcd/server.key",
    "pki/etcd/peer.crt",
    "pki/etcd/peer.key",
    "pki/etcd/healthcheck-client.crt",
    "pki/etcd/healthcheck-client.key",
    "pki/apiserver-etcd-client.crt",
    "pki/apiserver-etcd-client.key",
    "admin.conf",
    "super-admin.conf",
    "controller-manager.conf",
    "scheduler.conf",
    "kubelet.conf",
    "selfnode-agent.conf",
];

/// The CAs and service-account keys: never renewed.
const CAS_AND_SA_KEYS: [&str; 8] = [
    "pki/ca.crt",
    "pki/ca.key",
    "pki/front-proxy-ca.crt",
    "pki/front-proxy-ca.key",
    "pki/etcd/ca.crt",
    "pki/etcd/ca.key",
    "pki/sa.key",
    "pki/sa.pub",
];

/// Every file but [`CAS_AND_SA_KEYS`]: leaves and kubeconfigs.
fn leaves() -> BTreeSet<String> {
    &set(&ALL_FILES) - &set(&CAS_AND_SA_KEYS)
}

fn p(rel: &str) -> PathBuf {
    Path::new("/etc/kubernetes").join(rel)
}

fn rel(path: &Path) -> String {
    path.strip_prefix("/etc/kubernetes")
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Relative path -> "created" | "reused" | "renewed".
fn actions(report: &PkiReport) -> BTreeMap<String, &'static str> {
    report
        .entries
        .iter()
        .map(|e| {
            let a = match e.action {
                PkiAction::Created => "created",
                PkiAction::Reused => "reused",
                PkiAction::Renewed(_) => "renewed",
            };
            (rel(&e.path), a)
        })
        .collect()
}

fn renewed(report: &PkiReport) -> BTreeSet<String> {
    report.changed().map(|e| rel(&e.path)).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn reason(report: &PkiReport, rel_path: &str) -> RenewReason {
    match report.action(&p(rel_path)) {
        Some(PkiAction::Renewed(r)) => r.clone(),
        other => panic!("{rel_path}: expected renewed, got {other:?}"),
    }
}

/// What a certificate says, read with x509-parser.
#[derive(Debug)]
struct CertInfo {
    der: Vec<u8>,
    subject: String,
    cn: String,
    orgs: Vec<String>,
    issuer_cn: String,
    dns: BTreeSet<String>,
    ips: BTreeSet<IpAddr>,
    is_ca: bool,
    server_auth: bool,
    client_auth: bool,
    not_before: i64,
    not_after: i64,
}

fn inspect(pem_bytes: &[u8]) -> CertInfo {
    let block = pem::parse(pem_bytes).expect("certificate PEM");
    assert_eq!(block.tag(), "CERTIFICATE");
    let der = block.into_contents();
    let (_, c) = X509Certificate::from_der(&der).expect("certificate DER");
    let strings = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.map(|a| a.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let cns = strings(&mut c.subject().iter_common_name());
    let orgs = strings(&mut c.subject().iter_organization());
    let issuer_cn = strings(&mut c.issuer().iter_common_name()).join(",");
    let (mut dns, mut ips) = (BTreeSet::new(), BTreeSet::new());
    if let Some(san) = c.subject_alternative_name().unwrap() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => {
                    dns.insert(d.to_string());
                }
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    ips.insert(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()));
                }
                GeneralName::IPAddress(b) => {
                    ips.insert(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()));
                }
                other => panic!("unexpected SAN {other:?}"),
            }
        }
    }
    let (server_auth, client_auth) = c.extended_key_usage().unwrap().map_or((false, false), |e| {
        (e.value.server_auth, e.value.client_auth)
    });
    CertInfo {
        subject: c.subject().to_string(),
        cn: cns.join(","),
        orgs,
        issuer_cn,
        dns,
        ips,
        is_ca: c.is_ca(),
        server_auth,
        client_auth,
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        der: der.clone(),
    }
}

/// True if `child` carries `ca`'s subject as issuer and `ca`'s key signed it.
fn signed_by(child: &CertInfo, ca: &CertInfo) -> bool {
    let (_, c) = X509Certificate::from_der(&child.der).unwrap();
    let (_, ca) = X509Certificate::from_der(&ca.der).unwrap();
    c.issuer().as_raw() == ca.subject().as_raw()
        && c.verify_signature(Some(ca.public_key())).is_ok()
}

fn file(host: &MemHost, rel_path: &str) -> Vec<u8> {
    host.file(p(rel_path))
        .unwrap_or_else(|| panic!("{rel_path} missing"))
}

fn cert(host: &MemHost, rel_path: &str) -> CertInfo {
    inspect(&file(host, rel_path))
}

/// The client certificate, key and CA embedded in a kubeconfig.
fn kubeconfig_parts(host: &MemHost, rel_path: &str) -> (Kubeconfig, CertInfo, Vec<u8>, Vec<u8>) {
    let kc = Kubeconfig::from_yaml(&file(host, rel_path)).expect("kubeconfig parses");
    let (cluster, user) = kc.current().expect("current context resolves");
    let ca = decode_data(cluster.cluster.certificate_authority_data.as_deref()).unwrap();
    let cert_pem = decode_data(user.user.client_certificate_data.as_deref()).unwrap();
    let key_pem = decode_data(user.user.client_key_data.as_deref()).unwrap();
    (kc.clone(), inspect(&cert_pem), key_pem, ca)
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// Base name, signing CA, CN, Os, server auth, client auth.
type LeafCase<'a> = (&'a str, &'a CertInfo, &'a str, &'a [&'a str], bool, bool);

/// A change that makes a spec invalid.
type Mutation = Box<dyn Fn(&mut PkiSpec)>;

#[test]
fn fresh_run_writes_every_file_0600_with_kubeadm_identities() {
    let host = MemHost::new();
    let report = run(&host, &spec(), t0());

    let expected: BTreeSet<PathBuf> = ALL_FILES.iter().map(|r| p(r)).collect();
    assert_eq!(host.files().into_iter().collect::<BTreeSet<_>>(), expected);
    assert_eq!(report.entries.len(), ALL_FILES.len());
    for rel_path in ALL_FILES {
        assert_eq!(
            report.action(&p(rel_path)),
            Some(&PkiAction::Created),
            "{rel_path}"
        );
        assert_eq!(host.mode(p(rel_path)), Some(0o600), "{rel_path}");
    }
    for dir in [
        "/etc/kubernetes",
        "/etc/kubernetes/pki",
        "/etc/kubernetes/pki/etcd",
    ] {
        assert_eq!(host.dir_mode(dir), Some(0o700), "{dir}");
    }
    assert!(report.warnings.is_empty());

    let now = cert::unix_secs(t0());
    // CAs: self-signed, 10 years, CN as kubeadm.
    for (rel_path, cn) in [
        ("pki/ca.crt", "kubernetes"),
        ("pki/front-proxy-ca.crt", "front-proxy-ca"),
        ("pki/etcd/ca.crt", "etcd-ca"),
    ] {
        let ca = cert(&host, rel_path);
        assert_eq!(
            (ca.cn.as_str(), ca.issuer_cn.as_str()),
            (cn, cn),
            "{rel_path}"
        );
        assert!(ca.is_ca, "{rel_path}");
        assert!(signed_by(&ca, &ca), "{rel_path} self-signed");
        assert!(ca.not_before <= now);
        assert_eq!(ca.not_after - now, CA_VALIDITY.as_secs() as i64);
    }
    let cluster_ca = cert(&host, "pki/ca.crt");
    let front_proxy_ca = cert(&host, "pki/front-proxy-ca.crt");
    let etcd_ca = cert(&host, "pki/etcd/ca.crt");

    // Leaves: subject, usages, issuer, one year.
    let leaves: [LeafCase; 7] = [
        (
            "pki/apiserver",
            &cluster_ca,
            "kube-apiserver",
            &[],
            true,
            false,
        ),
        (
            "pki/apiserver-kubelet-client",
            &cluster_ca,
            "kube-apiserver-kubelet-client",
            &[],
            false,
            true,
        ),
        (
            "pki/front-proxy-client",
            &front_proxy_ca,
            "front-proxy-client",
            &[],
            false,
            true,
        ),
        ("pki/etcd/server", &etcd_ca, "cp-1", &[], true, true),
        ("pki/etcd/peer", &etcd_ca, "cp-1", &[], true, true),
        (
            "pki/etcd/healthcheck-client",
            &etcd_ca,
            "kube-etcd-healthcheck-client",
            &[],
            false,
            true,
        ),
        (
            "pki/apiserver-etcd-client",
            &etcd_ca,
            "kube-apiserver-etcd-client",
            &[],
            false,
            true,
        ),
    ];
    for (base, ca, cn, orgs, server, client) in leaves {
        let c = cert(&host, &format!("{base}.crt"));
        assert_eq!(c.cn, cn, "{base}");
        assert_eq!(c.orgs, orgs, "{base}");
        assert_eq!((c.server_auth, c.client_auth), (server, client), "{base}");
        assert!(!c.is_ca, "{base}");
        assert!(signed_by(&c, ca), "{base} signed by {}", ca.cn);
        assert_eq!(c.not_after - now, LEAF_VALIDITY.as_secs() as i64, "{base}");
        assert!(c.not_before <= now);
        let key = cert::parse_key(&file(&host, &format!("{base}.key"))).unwrap();
        let (_, x) = X509Certificate::from_der(&c.der).unwrap();
        assert!(cert::key_matches(&key, &x), "{base} key matches");
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256, "{base}");
    }

    let api = cert(&host, "pki/apiserver.crt");
    assert_eq!(
        api.dns,
        set(&[
            "cp-1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ])
    );
    assert_eq!(api.ips, ips(&["10.96.0.1", "127.0.0.1", "10.0.0.10"]));
    for base in ["pki/etcd/server", "pki/etcd/peer"] {
        let c = cert(&host, &format!("{base}.crt"));
        assert_eq!(c.dns, set(&["cp-1", "localhost"]), "{base}");
        assert_eq!(c.ips, ips(&["127.0.0.1", "::1", "10.0.0.10"]), "{base}");
    }
    for base in [
        "apiserver-kubelet-client",
        "front-proxy-client",
        "apiserver-etcd-client",
    ] {
        let c = cert(&host, &format!("pki/{base}.crt"));
        assert!(c.dns.is_empty() && c.ips.is_empty(), "{base} has no SANs");
    }

    // Service-account key pair.
    let sa_key = cert::parse_key(&file(&host, "pki/sa.key")).unwrap();
    assert_eq!(
        pem::parse(file(&host, "pki/sa.pub")).unwrap().contents(),
        cert::spki_der(&sa_key).as_slice()
    );

    // Kubeconfigs: endpoint, embedded CA, client identity signed by the cluster CA.
    for (rel_path, cn, orgs) in [
        (
            "admin.conf",
            "kubernetes-admin",
            vec!["kubeadm:cluster-admins"],
        ),
        (
            "super-admin.conf",
            "kubernetes-super-admin",
            vec!["system:masters"],
        ),
        (
            "controller-manager.conf",
            "system:kube-controller-manager",
            vec![],
        ),
        ("scheduler.conf", "system:kube-scheduler", vec![]),
        ("kubelet.conf", "system:node:cp-1", vec!["system:nodes"]),
    ] {
        let (kc, c, key_pem, ca_pem) = kubeconfig_parts(&host, rel_path);
        let (cluster, user) = kc.current().unwrap();
        assert_eq!(
            cluster.cluster.server, "https://127.0.0.1:6443",
            "{rel_path}"
        );
        assert_eq!(cluster.name, "kubernetes");
        assert_eq!(user.name, cn);
        assert_eq!(kc.current_context, format!("{cn}@kubernetes"));
        assert_eq!(
            ca_pem,
            file(&host, "pki/ca.crt"),
            "{rel_path} embeds ca.crt"
        );
        assert_eq!(c.cn, cn, "{rel_path}");
        assert_eq!(c.orgs, orgs, "{rel_path}");
        let want_subject = match orgs.first() {
            Some(o) => format!("O={o}, CN={cn}"),
            None => format!("CN={cn}"),
        };
        assert_eq!(
            c.subject, want_subject,
            "{rel_path}: O before CN, as Go writes it"
        );
        assert_eq!((c.server_auth, c.client_auth), (false, true), "{rel_path}");
        assert!(signed_by(&c, &cluster_ca), "{rel_path}");
        let key = cert::parse_key(&key_pem).unwrap();
        let (_, x) = X509Certificate::from_der(&c.der).unwrap();
        assert!(cert::key_matches(&key, &x), "{rel_path} key matches");
    }

    assert_eq!(
        report.ca_cert_hash,
        ca_cert_hash(&file(&host, "pki/ca.crt")).unwrap()
    );
}

#[test]
fn second_run_reuses_everything_and_writes_nothing() {
    let host = MemHost::new();
    let spec = spec();
    let first = run(&host, &spec, t0());
    host.take_changes();
    let before: Vec<_> = ALL_FILES.iter().map(|r| file(&host, r)).collect();

    let second = run(&host, &spec, t0() + days(1));
    assert!(
        second.entries.iter().all(|e| e.action == PkiAction::Reused),
        "{:?}",
        second.changed().collect::<Vec<_>>()
    );
    assert_eq!(second.entries.len(), ALL_FILES.len());
    assert_eq!(host.take_changes(), vec![]);
    let after: Vec<_> = ALL_FILES.iter().map(|r| file(&host, r)).collect();
    assert_eq!(before, after);
    assert_eq!(first.ca_cert_hash, second.ca_cert_hash);
}

#[test]
fn reuse_corrects_a_loose_file_mode() {
    let host = MemHost::new();
    run(&host, &spec(), t0());
    host.set_mode(p("pki/apiserver.crt"), 0o644);
    host.take_changes();
    let report = run(&host, &spec(), t0());
    assert!(renewed(&report).is_empty());
    assert_eq!(host.mode(p("pki/apiserver.crt")), Some(0o600));
    assert_eq!(
        host.take_changes(),
        vec![(p("pki/apiserver.crt"), crate::host::Written::Updated)]
    );
}

#[test]
fn leaves_are_renewed_30_days_before_expiry_and_cas_are_kept() {
    let host = MemHost::new();
    let spec = spec();
    run(&host, &spec, t0());
    let old_api = cert(&host, "pki/apiserver.crt");

    // 31 days left: still fine.
    let report = run(&host, &spec, t0() + LEAF_VALIDITY - days(31));
    assert!(renewed(&report).is_empty(), "{:?}", renewed(&report));

    // 10 days left: every leaf and kubeconfig is re-issued, CAs and SA keys stay.
    let later = t0() + LEAF_VALIDITY - days(10);
    let report = run(&host, &spec, later);
    assert_eq!(renewed(&report), leaves());
    assert!(matches!(
        reason(&report, "pki/apiserver.crt"),
        RenewReason::ExpiresSoon { .. }
    ));
    assert!(matches!(
        reason(&report, "kubelet.conf"),
        RenewReason::ExpiresSoon { .. }
    ));
    let new_api = cert(&host, "pki/apiserver.crt");
    assert_ne!(new_api.der, old_api.der);
    assert_eq!(
        new_api.not_after - cert::unix_secs(later),
        LEAF_VALIDITY.as_secs() as i64
    );
    assert_eq!(new_api.dns, old_api.dns);
    assert!(signed_by(&new_api, &cert(&host, "pki/ca.crt")));
    assert!(reason(&report, "pki/apiserver.crt")
        .to_string()
        .starts_with("it expires at 2031-"));

    // And it settles.
    assert!(renewed(&run(&host, &spec, later)).is_empty());
}

#[test]
fn renew_pki_reissues_every_valid_leaf_and_kubeconfig_and_keeps_the_cas() {
    let host = MemHost::new();
    let spec = spec();
    let first = run(&host, &spec, t0());
    let old: BTreeMap<&str, Vec<u8>> = ALL_FILES.iter().map(|r| (*r, file(&host, r))).collect();

    let later = t0() + days(100);
    let report = renew_pki(&host, &spec, later).unwrap();
    assert_eq!(renewed(&report), leaves());
    assert_eq!(reason(&report, "pki/apiserver.crt"), RenewReason::Requested);
    assert_eq!(reason(&report, "admin.conf"), RenewReason::Requested);
    for r in ALL_FILES {
        assert_eq!(
            file(&host, r) == old[r],
            CAS_AND_SA_KEYS.contains(&r),
            "{r}"
        );
        assert_eq!(host.mode(p(r)), Some(0o600), "{r}");
    }
    // New validity from `later`, same names, same CA, same join pin.
    let api = cert(&host, "pki/apiserver.crt");
    assert_eq!(
        api.not_after - cert::unix_secs(later),
        LEAF_VALIDITY.as_secs() as i64
    );
    assert_eq!(api.dns, inspect(&old["pki/apiserver.crt"]).dns);
    assert!(signed_by(&api, &cert(&host, "pki/ca.crt")));
    assert_eq!(report.ca_cert_hash, first.ca_cert_hash);
    // The next ordinary pass keeps what the renewal wrote.
    assert!(renewed(&run(&host, &spec, later)).is_empty());
}

#[test]
fn expiration_lists_every_certificate_with_its_end_of_validity() {
    let host = MemHost::new();
    let spec = spec();
    run(&host, &spec, t0());
    let rows = expiration(&host, &spec).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ca",
            "front-proxy-ca",
            "etcd/ca",
            "apiserver",
            "apiserver-kubelet-client",
            "front-proxy-client",
            "etcd/server",
            "etcd/peer",
            "etcd/healthcheck-client",
            "apiserver-etcd-client",
            "admin.conf",
            "super-admin.conf",
            "controller-manager.conf",
            "scheduler.conf",
            "kubelet.conf",
            "selfnode-agent.conf",
        ]
    );
    for r in &rows {
        assert!(r.problem.is_none(), "{r:?}");
        // Each row's end of validity, checked against the file read here.
        let read = match r.kind {
            CertKind::Kubeconfig => kubeconfig_parts(&host, &rel(&r.path)).1,
            _ => cert(&host, &rel(&r.path)),
        };
        assert_eq!(
            r.not_after.map(cert::unix_secs),
            Some(read.not_after),
            "{r:?}"
        );
        let validity = if r.kind == CertKind::Ca {
            CA_VALIDITY
        } else {
            LEAF_VALIDITY
        };
        assert_eq!(
            cert::unix_secs(r.not_after.unwrap()) - cert::unix_secs(t0()),
            validity.as_secs() as i64,
            "{r:?}"
        );
    }
    let by = |n: &str| rows.iter().find(|r| r.name == n).unwrap().signed_by;
    assert_eq!(by("ca"), None);
    assert_eq!(by("front-proxy-client"), Some("front-proxy-ca"));
    assert_eq!(by("etcd/peer"), Some("etcd/ca"));
    assert_eq!(by("scheduler.conf"), Some("ca"));

    // A host that holds only part of the PKI (a joined one), and a file
    // that is not a certificate: rows with a problem, not an error.
    host.remove(p("admin.conf"));
    host.put(p("pki/apiserver.crt"), "garbage", 0o600);
    let rows = expiration(&host, &spec).unwrap();
    let problem = |n: &str| rows.iter().find(|r| r.name == n).unwrap().problem.clone();
    assert_eq!(problem("admin.conf").as_deref(), Some("not on this host"));
    assert_eq!(problem("apiserver").as_deref(), Some("it is not PEM"));
    assert_eq!(problem("ca"), None);
}

#[test]
fn expired_leaf_is_renewed() {
    let host = MemHost::new();
    run(&host, &spec(), t0());
    let late = t0() + LEAF_VALIDITY + days(1);
    let report = run(&host, &spec(), late);
    assert!(matches!(
        reason(&report, "pki/apiserver.crt"),
        RenewReason::Expired { .. }
    ));
}

#[test]
fn adding_an_extra_san_renews_the_apiserver_certificate_only() {
    let host = MemHost::new();
    let mut spec = spec();
    run(&host, &spec, t0());

    spec.extra_sans = vec!["api.example.com".into(), "192.0.2.7".into()];
    let report = run(&host, &spec, t0());
    assert_eq!(
        renewed(&report),
        set(&["pki/apiserver.crt", "pki/apiserver.key"])
    );
    assert_eq!(
        reason(&report, "pki/apiserver.crt"),
        RenewReason::SansChanged {
            added: vec!["api.example.com".into(), "192.0.2.7".into()],
            removed: vec![],
        }
    );
    let api = cert(&host, "pki/apiserver.crt");
    assert!(api.dns.contains("api.example.com"));
    assert!(api.ips.contains(&"192.0.2.7".parse::<IpAddr>().unwrap()));
    assert!(renewed(&run(&host, &spec, t0())).is_empty());

    // Removing it renews again.
    spec.extra_sans.clear();
    let report = run(&host, &spec, t0());
    assert_eq!(
        renewed(&report),
        set(&["pki/apiserver.crt", "pki/apiserver.key"])
    );
}

#[test]
fn adding_an_advertise_address_renews_the_serving_certificates() {
    let host = MemHost::new();
    let mut spec = spec();
    run(&host, &spec, t0());
    spec.advertise_addresses.push("fd00::10".parse().unwrap());
    let report = run(&host, &spec, t0());
    assert_eq!(
        renewed(&report),
        set(&[
            "pki/apiserver.crt",
            "pki/apiserver.key",
            "pki/etcd/server.crt",
            "pki/etcd/server.key",
            "pki/etcd/peer.crt",
            "pki/etcd/peer.key",
        ])
    );
    // An IPv6 address makes [::1] useful for the API server too.
    assert!(cert(&host, "pki/apiserver.crt").ips.is_superset(&ips(&[
        "fd00::10",
        "::1",
        "127.0.0.1"
    ])));
}

#[test]
fn changing_the_endpoint_renews_the_kubeconfigs() {
    let host = MemHost::new();
    let mut spec = spec();
    run(&host, &spec, t0());
    // The advertise address is already a SAN, so only the kubeconfigs change.
    spec.api_endpoint = "https://10.0.0.10:6443".into();
    let report = run(&host, &spec, t0());
    assert_eq!(
        renewed(&report),
        set(&[
            "admin.conf",
            "super-admin.conf",
            "controller-manager.conf",
            "scheduler.conf",
            "kubelet.conf",
            "selfnode-agent.conf",
        ])
    );
    assert_eq!(
        reason(&report, "admin.conf"),
        RenewReason::ServerChanged {
            want: "https://10.0.0.10:6443".into(),
            got: "https://127.0.0.1:6443".into(),
        }
    );
    let (kc, ..) = kubeconfig_parts(&host, "admin.conf");
    assert_eq!(
        kc.current().unwrap().0.cluster.server,
        "https://10.0.0.10:6443"
    );

    // A DNS endpoint becomes an API server SAN as well.
    spec.api_endpoint = "https://api.cluster.test:6443".into();
    let report = run(&host, &spec, t0());
    assert!(renewed(&report).contains("pki/apiserver.crt"));
    assert!(cert(&host, "pki/apiserver.crt")
        .dns
        .contains("api.cluster.test"));
}

#[test]
fn corrupt_leaf_key_is_replaced() {
    let host = MemHost::new();
    run(&host, &spec(), t0());
    host.put(p("pki/apiserver.key"), "garbage", 0o600);
    let report = run(&host, &spec(), t0());
    assert_eq!(
        renewed(&report),
        set(&["pki/apiserver.crt", "pki/apiserver.key"])
    );
    assert_eq!(
        reason(&report, "pki/apiserver.key"),
        RenewReason::KeyUnreadable
    );
    cert::parse_key(&file(&host, "pki/apiserver.key")).unwrap();
}

#[test]
fn swapped_leaf_key_and_missing_halves_are_replaced() {
    let host = MemHost::new();
    run(&host, &spec(), t0());
    host.put(
        p("pki/apiserver.key"),
        file(&host, "pki/front-proxy-client.key"),
        0o600,
    );
    host.remove(p("pki/etcd/peer.crt"));
    host.put(p("kubelet.conf"), "kind: [", 0o600);
    let report = run(&host, &spec(), t0());
    assert_eq!(
        reason(&report, "pki/apiserver.crt"),
        RenewReason::KeyMismatch
    );
    assert_eq!(
        report.action(&p("pki/etcd/peer.crt")),
        Some(&PkiAction::Created)
    );
    assert_eq!(
        reason(&report, "pki/etcd/peer.key"),
        RenewReason::PairIncomplete {
            missing: p("pki/etcd/peer.crt")
        }
    );
    assert_eq!(
        reason(&report, "kubelet.conf"),
        RenewReason::KubeconfigUnreadable
    );
    assert_eq!(renewed(&report).len(), 5);
}

#[test]
fn corrupt_ca_key_is_an_error_and_nothing_is_written() {
    let host = MemHost::new();
    run(&host, &spec(), t0());
    host.put(p("pki/ca.key"), "garbage", 0o600);
    host.remove(p("pki/apiserver.crt"));
    host.take_changes();

    let err = ensure_pki(&host, &spec(), t0()).unwrap_err();
    assert!(matches!(err, PkiError::CaKeyUnreadable { .. }), "{err:?}");
    let msg = err.to_string();
    for want in [
        "/etc/kubernetes/pki/ca.key",
        "it is not PEM",
        "restore it from a backup",
        "never replaces a CA",
    ] {
        assert!(msg.contains(want), "{want:?} not in {msg:?}");
    }
    assert_eq!(host.take_changes(), vec![], "refusal must write nothing");
    assert_eq!(host.file(p("pki/ca.key")), Some(b"garbage".to_vec()));
}

#[test]
fn broken_cas_are_errors() {
    let base = MemHost::new();
    run(&base, &spec(), t0());
    let fresh = || {
        let h = MemHost::new();
        for r in ALL_FILES {
            h.put(p(r), file(&base, r), 0o600);
        }
        h
    };

    // Key of another CA.
    let h = fresh();
    h.put(p("pki/ca.key"), file(&base, "pki/etcd/ca.key"), 0o600);
    let err = ensure_pki(&h, &spec(), t0()).unwrap_err();
    assert!(matches!(err, PkiError::CaKeyMismatch { .. }), "{err}");

    // Certificate without its key.
    let h = fresh();
    h.remove(p("pki/front-proxy-ca.key"));
    let err = ensure_pki(&h, &spec(), t0()).unwrap_err();
    assert!(matches!(err, PkiError::CaKeyMissing { .. }), "{err}");
    assert!(
        err.to_string().contains("front-proxy-ca.key is missing"),
        "{err}"
    );

    // Garbage certificate.
    let h = fresh();
    h.put(p("pki/etcd/ca.crt"), "junk", 0o600);
    let err = ensure_pki(&h, &spec(), t0()).unwrap_err();
    assert!(matches!(err, PkiError::CaCertUnreadable { .. }), "{err}");

    // A leaf where a CA should be.
    let h = fresh();
    h.put(p("pki/ca.crt"), file(&base, "pki/apiserver.crt"), 0o600);
    h.put(p("pki/ca.key"), file(&base, "pki/apiserver.key"), 0o600);
    let err = ensure_pki(&h, &spec(), t0()).unwrap_err();
    assert!(matches!(err, PkiError::NotACa { .. }), "{err}");

    // Expired.
    let h = fresh();
    let err = ensure_pki(&h, &spec(), t0() + CA_VALIDITY + days(1)).unwrap_err();
    assert!(matches!(err, PkiError::CaExpired { .. }), "{err}");
    assert!(err.to_string().contains("expired at 2040-"), "{err}");

    // Clock far behind.
    let h = fresh();
    let err = ensure_pki(&h, &spec(), t0() - days(1)).unwrap_err();
    assert!(matches!(err, PkiError::CaNotYetValid { .. }), "{err}");
    assert!(err.to_string().contains("check the system clock"), "{err}");

    // A PKCS#1 key from an older kubeadm: the message says how to convert it.
    let h = fresh();
    h.put(
        p("pki/ca.key"),
        "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        0o600,
    );
    let err = ensure_pki(&h, &spec(), t0()).unwrap_err().to_string();
    assert!(err.contains("openssl pkcs8 -topk8"), "{err}");
}

#[test]
fn ca_expiring_within_a_year_warns_and_caps_leaves() {
    let host = MemHost::new();
    run(&host, &spec(), t0());
    let ca = cert(&host, "pki/ca.crt");
    let late = t0() + CA_VALIDITY - days(100);
    let report = run(&host, &spec(), late);
    assert!(report.warnings.iter().any(|w| matches!(
        w,
        PkiWarning::CaExpiresSoon { path, .. } if *path == p("pki/ca.crt")
    )));
    let api = cert(&host, "pki/apiserver.crt");
    assert_eq!(
        api.not_after, ca.not_after,
        "leaf capped at the CA's expiry"
    );
    // Within the last 30 days renewal cannot help, so the leaf is kept.
    let report = run(&host, &spec(), t0() + CA_VALIDITY - days(10));
    assert_eq!(
        report.action(&p("pki/apiserver.crt")),
        Some(&PkiAction::Reused)
    );
}

#[test]
fn lost_ca_certificate_is_remade_from_its_key_keeping_the_pin() {
    let host = MemHost::new();
    let first = run(&host, &spec(), t0());
    host.remove(p("pki/ca.crt"));
    let report = run(&host, &spec(), t0() + days(1));
    assert_eq!(report.action(&p("pki/ca.crt")), Some(&PkiAction::Created));
    assert_eq!(report.action(&p("pki/ca.key")), Some(&PkiAction::Reused));
    assert_eq!(report.ca_cert_hash, first.ca_cert_hash);
    // Leaves signed under the old certificate still verify; only the
    // kubeconfigs, which embed the CA certificate itself, are rewritten.
    assert_eq!(
        renewed(&report),
        set(&[
            "pki/ca.crt",
            "admin.conf",
            "super-admin.conf",
            "controller-manager.conf",
            "scheduler.conf",
            "kubelet.conf",
            "selfnode-agent.conf",
        ])
    );
    assert_eq!(
        reason(&report, "admin.conf"),
        RenewReason::KubeconfigCaChanged
    );
}

#[test]
fn a_new_ca_reissues_everything_it_signs() {
    let host = MemHost::new();
    let first = run(&host, &spec(), t0());
    host.remove(p("pki/etcd/ca.crt"));
    host.remove(p("pki/etcd/ca.key"));
    let report = run(&host, &spec(), t0());
    assert_eq!(
        renewed(&report),
        set(&[
            "pki/etcd/ca.crt",
            "pki/etcd/ca.key",
            "pki/etcd/server.crt",
            "pki/etcd/server.key",
            "pki/etcd/peer.crt",
            "pki/etcd/peer.key",
            "pki/etcd/healthcheck-client.crt",
            "pki/etcd/healthcheck-client.key",
            "pki/apiserver-etcd-client.crt",
            "pki/apiserver-etcd-client.key",
        ])
    );
    assert_eq!(
        reason(&report, "pki/etcd/server.crt"),
        RenewReason::NotSignedByCa
    );
    assert_eq!(
        report.ca_cert_hash, first.ca_cert_hash,
        "cluster CA untouched"
    );
}

#[test]
fn service_account_keys() {
    let host = MemHost::new();
    run(&host, &spec(), t0());
    let key = file(&host, "pki/sa.key");

    // A wrong sa.pub is rewritten from sa.key.
    host.put(p("pki/sa.pub"), file(&host, "pki/ca.crt"), 0o600);
    let report = run(&host, &spec(), t0());
    assert_eq!(renewed(&report), set(&["pki/sa.pub"]));
    assert_eq!(
        reason(&report, "pki/sa.pub"),
        RenewReason::PublicKeyMismatch
    );
    assert_eq!(file(&host, "pki/sa.key"), key);

    // A corrupt sa.key is refused: replacing it would invalidate every token.
    host.put(p("pki/sa.key"), "junk", 0o600);
    let err = ensure_pki(&host, &spec(), t0()).unwrap_err();
    assert!(
        matches!(err, PkiError::ServiceAccountKeyUnreadable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("service-account token"), "{err}");

    // A missing one is made (with its public half).
    host.remove(p("pki/sa.key"));
    let report = run(&host, &spec(), t0());
    assert_eq!(renewed(&report), set(&["pki/sa.key", "pki/sa.pub"]));
}

/// Kill the run after every possible number of writes; the next run must
/// converge to a complete, valid PKI, and the one after must change nothing.
#[test]
fn a_run_killed_after_any_write_converges() {
    let total = {
        let h = MemHost::new();
        run(&h, &spec(), t0());
        h.take_changes().len()
    };
    assert_eq!(total, ALL_FILES.len());
    for n in 0..total {
        let host = MemHost::new();
        host.fail_after_writes(Some(n));
        let err = ensure_pki(&host, &spec(), t0()).unwrap_err();
        assert!(matches!(err, PkiError::Host(_)), "n={n}: {err}");
        host.fail_after_writes(None);

        run(&host, &spec(), t0() + Duration::from_secs(60));
        host.take_changes();
        let settled = run(&host, &spec(), t0() + Duration::from_secs(120));
        assert!(
            renewed(&settled).is_empty(),
            "n={n}: {:?}",
            actions(&settled)
        );
        assert_eq!(host.take_changes(), vec![], "n={n}");
        let ca = cert(&host, "pki/ca.crt");
        assert!(signed_by(&cert(&host, "pki/apiserver.crt"), &ca), "n={n}");
    }
}

#[test]
fn invalid_specs_are_refused_before_anything_is_written() {
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "invalid node name",
            Box::new(|s| s.node_name = "CP_1".into()),
        ),
        (
            "no advertise address",
            Box::new(|s| s.advertise_addresses.clear()),
        ),
        (
            "invalid advertise address 0.0.0.0",
            Box::new(|s| s.advertise_addresses = vec!["0.0.0.0".parse().unwrap()]),
        ),
        (
            "service CIDR 10.0.0.0/31 is too small",
            Box::new(|s| s.service_cidr = "10.0.0.0/31".parse().unwrap()),
        ),
        (
            "invalid DNS domain",
            Box::new(|s| s.dns_domain = "cluster..local".into()),
        ),
        (
            "invalid extra SAN \"bad name\"",
            Box::new(|s| s.extra_sans = vec!["bad name".into()]),
        ),
        (
            "pki_dir must be an absolute path",
            Box::new(|s| s.pki_dir = "pki".into()),
        ),
        (
            "must start with https://",
            Box::new(|s| s.api_endpoint = "http://127.0.0.1:6443".into()),
        ),
        (
            "the port must be a number",
            Box::new(|s| s.api_endpoint = "https://127.0.0.1:0".into()),
        ),
        (
            "IPv6 addresses must be written in brackets",
            Box::new(|s| s.api_endpoint = "https://fd00::1:6443".into()),
        ),
        (
            "invalid cluster name",
            Box::new(|s| s.cluster_name = "".into()),
        ),
    ];
    for (want, mutate) in cases {
        let mut s = spec();
        mutate(&mut s);
        let host = MemHost::new();
        let err = ensure_pki(&host, &s, t0()).unwrap_err();
        assert!(matches!(err, PkiError::InvalidSpec(_)), "{want}: {err:?}");
        assert!(err.to_string().contains(want), "{want:?} not in {err}");
        assert!(host.files().is_empty() && host.take_changes().is_empty());
    }

    // Valid variants.
    let mut s = spec();
    s.api_endpoint = "https://[fd00::1]:6443/".into();
    s.extra_sans = vec!["*.apps.example.com".into(), "2001:db8::1".into()];
    s.service_cidr = "fd00:10:96::/108".parse().unwrap();
    s.validate().unwrap();
    assert_eq!(
        s.kubernetes_service_ip().unwrap(),
        "fd00:10:96::1".parse::<IpAddr>().unwrap()
    );
    let host = MemHost::new();
    run(&host, &s, t0());
    let api = cert(&host, "pki/apiserver.crt");
    assert!(api.dns.contains("*.apps.example.com"));
    assert!(api
        .ips
        .is_superset(&ips(&["fd00::1", "2001:db8::1", "fd00:10:96::1", "::1"])));
}

#[test]
fn custom_directories_cluster_name_and_domain() {
    let mut s = spec();
    s.pki_dir = "/var/lib/selfnode/pki".into();
    s.kubeconfig_dir = "/var/lib/selfnode/kube".into();
    s.cluster_name = "edge-7".into();
    s.dns_domain = "edge.internal".into();
    s.service_cidr = "172.20.0.0/16".parse().unwrap();
    let host = MemHost::new();
    run(&host, &s, t0());
    let api = inspect(&host.file("/var/lib/selfnode/pki/apiserver.crt").unwrap());
    assert!(api.dns.contains("kubernetes.default.svc.edge.internal"));
    assert!(api.ips.contains(&"172.20.0.1".parse::<IpAddr>().unwrap()));
    let kc =
        Kubeconfig::from_yaml(&host.file("/var/lib/selfnode/kube/admin.conf").unwrap()).unwrap();
    assert_eq!(kc.current_context, "kubernetes-admin@edge-7");
    assert_eq!(host.dir_mode("/var/lib/selfnode/pki/etcd"), Some(0o700));
    assert!(host
        .files()
        .iter()
        .all(|f| f.starts_with("/var/lib/selfnode")));
    // Renaming the cluster rewrites the kubeconfigs only.
    s.cluster_name = "edge-8".into();
    let report = run(&host, &s, t0());
    assert_eq!(renewed(&report).len(), 6);
    assert_eq!(
        reason(&report, "/var/lib/selfnode/kube/kubelet.conf"),
        RenewReason::KubeconfigLayoutChanged
    );
}

/// Made with `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256`;
/// the pin with `openssl x509 -pubkey -noout -in ca.crt | openssl pkey -pubin
/// -outform der | sha256sum`.
const PIN_TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBjzCCATWgAwIBAgIUAUBtFWuY+Cg8LswcZQtEwpZ43KcwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRc2VsZm5vZGUtcGluLXRlc3QwIBcNMjYxMTI1MTMwNzUxWhgP
MjEyNjExMDExMzA3NTFaMBwxGjAYBgNVBAMMEXNlbGZub2RlLXBpbi10ZXN0MFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEmwYnUXh9w85C8oi9MEaFc44QpPYjpcT0
E0DbswPDRftIeE+geO7HH7CWxRuY+0UWMhJaucY9qI/Wea+mrHnnF6NTMFEwHQYD
VR0OBBYEFFjRqRQX558AUlHO9uMJzPLFpOnkMB8GA1UdIwQYMBaAFFjRqRQX558A
UlHO9uMJzPLFpOnkMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIg
AhOlsuwwRJToMyThEtfeFLKg4mnclAxlq0jyaj6xwukCIQC3N+RYSdiOhaTnxi+g
R2WLACg5aAlAEKF00Hww9frVSQ==
-----END CERTIFICATE-----
";

#[test]
fn ca_cert_hash_matches_a_known_vector() {
    assert_eq!(
        ca_cert_hash(PIN_TEST_CA.as_bytes()).unwrap(),
        "sha256:edfb55daf2f41a72a9e87df75716f8c7c6a4ebebe7e901e9aecb5b663da7886b"
    );
    assert!(matches!(
        ca_cert_hash(b"nope"),
        Err(PkiError::InvalidCaCert { .. })
    ));
}

#[test]
fn report_reasons_read_well() {
    let r = RenewReason::SansChanged {
        added: vec!["10.0.0.11".into()],
        removed: vec!["old.example".into()],
    };
    assert_eq!(
        PkiAction::Renewed(r).to_string(),
        "renewed: subject alternative names changed (added 10.0.0.11) (removed old.example)"
    );
    assert_eq!(
        cert::fmt_time(UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
        "2030-03-17T17:46:40Z"
    );
}

#[test]
fn an_etcd_member_of_another_node_gets_its_own_certificates_and_never_the_ca_key() {
    let first = MemHost::new();
    run(&first, &spec(), t0());
    let ca_crt = file(&first, "pki/etcd/ca.crt");
    let ca_key = file(&first, "pki/etcd/ca.key");

    let joining = MemHost::new();
    let node2 = PkiSpec::new("cp-2", vec!["10.0.0.11".parse().unwrap()]);
    let report = ensure_etcd_member(&joining, &node2, &ca_crt, &ca_key, t0()).unwrap();
    assert_eq!(
        actions(&report),
        [
            "pki/etcd/ca.crt",
            "pki/etcd/server.crt",
            "pki/etcd/server.key",
            "pki/etcd/peer.crt",
            "pki/etcd/peer.key",
            "pki/etcd/healthcheck-client.crt",
            "pki/etcd/healthcheck-client.key",
        ]
        .iter()
        .map(|f| (f.to_string(), "created"))
        .collect()
    );
    assert!(
        joining.file(p("pki/etcd/ca.key")).is_none(),
        "the CA key stays in memory"
    );
    let ca = cert(&joining, "pki/etcd/ca.crt");
    for leaf in ["pki/etcd/server.crt", "pki/etcd/peer.crt"] {
        let c = cert(&joining, leaf);
        assert!(signed_by(&c, &ca), "{leaf}");
        assert_eq!(c.cn, "cp-2");
        assert!(
            c.ips.contains(&"10.0.0.11".parse::<IpAddr>().unwrap()),
            "{leaf}: {:?}",
            c.ips
        );
        assert!(
            !c.ips.contains(&"10.0.0.10".parse::<IpAddr>().unwrap()),
            "{leaf}"
        );
        assert!(c.dns.contains("cp-2"), "{leaf}");
    }
    assert_eq!(joining.mode(p("pki/etcd/peer.key")), Some(0o600));

    // Idempotent: a second pass keeps everything.
    let again = ensure_etcd_member(&joining, &node2, &ca_crt, &ca_key, t0()).unwrap();
    assert!(renewed(&again).is_empty(), "{:?}", renewed(&again));

    // Another cluster's CA: the member's files are replaced, never mixed.
    let other = MemHost::new();
    run(&other, &spec(), t0());
    let report = ensure_etcd_member(
        &joining,
        &node2,
        &file(&other, "pki/etcd/ca.crt"),
        &file(&other, "pki/etcd/ca.key"),
        t0(),
    )
    .unwrap();
    assert!(renewed(&report).contains("pki/etcd/ca.crt"));
    assert!(renewed(&report).contains("pki/etcd/peer.crt"));

    // A key that is not the certificate's: refused, nothing written.
    joining.take_changes();
    let err = ensure_etcd_member(
        &joining,
        &node2,
        &ca_crt,
        &file(&other, "pki/etcd/ca.key"),
        t0(),
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::CaKeyMismatch { .. }), "{err}");
    assert!(joining.take_changes().is_empty());
}

#[test]
fn a_short_lived_serving_certificate_is_signed_by_the_ca_for_the_addresses_given() {
    let host = MemHost::new();
    run(&host, &spec(), t0());
    let ca = cert(&host, "pki/ca.crt");
    let (pem, key) = short_lived_serving_cert(
        (&p("pki/ca.crt"), &file(&host, "pki/ca.crt")),
        (&p("pki/ca.key"), &file(&host, "pki/ca.key")),
        "selfnode-bundle-share",
        &["10.0.0.5".parse().unwrap()],
        Duration::from_secs(3600),
        t0(),
    )
    .unwrap();
    let c = inspect(pem.as_bytes());
    assert!(signed_by(&c, &ca));
    assert_eq!(c.cn, "selfnode-bundle-share");
    assert_eq!(c.ips, ips(&["10.0.0.5"]));
    assert!(c.server_auth && !c.client_auth && !c.is_ca);
    let start = t0()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(c.not_after, start + 3600);
    assert!(!key.is_empty());
    assert_eq!(subject_orgs(&c.der), Vec::<String>::new());
    let (_, admin, _, _) = kubeconfig_parts(&host, "admin.conf");
    assert_eq!(subject_orgs(&admin.der), ["kubeadm:cluster-admins"]);

    // Not a CA's pair: refused, saying which files.
    let err = short_lived_serving_cert(
        (&p("pki/ca.crt"), &file(&host, "pki/ca.crt")),
        (&p("pki/apiserver.key"), &file(&host, "pki/apiserver.key")),
        "x",
        &[],
        Duration::from_secs(60),
        t0(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("apiserver.key"), "{err}");
}
