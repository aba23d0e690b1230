//! Tests of dist::share over real TLS on loopback: a bundle fetched whole and
//! checked; clients and servers without the right certificate refused; a
//! served file that is not the published one never kept; a fetch cut short
//! resumed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use super::{fetch, serve, ClientCheck, Offer, ShareError};
use crate::bundle::testing::write_fake_bundle;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA to sign with.
struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let der = p.self_signed(&key).unwrap().der().clone();
    Ca {
        der,
        issuer: Issuer::new(p, key),
    }
}

/// A leaf signed by `ca`: (chain, key).
fn leaf(
    ca: &Ca,
    cn: &str,
    org: Option<&str>,
    ip: Option<std::net::IpAddr>,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    if let Some(o) = org {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    if let Some(ip) = ip {
        p.subject_alt_names.push(SanType::IpAddress(ip));
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    } else {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Ca) -> Arc<rustls::RootCertStore> {
    let mut r = rustls::RootCertStore::empty();
    r.add(ca.der.clone()).unwrap();
    Arc::new(r)
}

fn server_tls(ca: &Ca, ip: std::net::IpAddr) -> Arc<rustls::ServerConfig> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
    let (chain, key) = leaf(ca, "bundle-share", None, Some(ip));
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

fn client_tls(trusts: &Ca, signer: &Ca, cn: &str, org: Option<&str>) -> Arc<rustls::ClientConfig> {
    let (chain, key) = leaf(signer, cn, org, None);
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(trusts))
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

/// Nodes only: the certificate's subject must name the group.
fn nodes_only() -> ClientCheck {
    Arc::new(|cert: &CertificateDer<'_>| {
        // The DER of the subject carries the organisation as a plain
        // string; a test-sized check, the real one parses the certificate.
        let der = cert.as_ref();
        if der.windows(12).any(|w| w == b"system:nodes") {
            Ok(())
        } else {
            Err("not in system:nodes".into())
        }
    })
}

/// Serves the fake bundle in `dir` on loopback; returns its address.
async fn start_server(dir: &Path, ca: &Ca) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = server_tls(ca, addr.ip());
    tokio::spawn(serve(dir.to_path_buf(), listener, tls, nodes_only()));
    addr
}

/// A cluster CA, a fake bundle served on loopback, and its offer.
struct Served {
    ca: Ca,
    src: tempfile::TempDir,
    offer: Offer,
}

async fn served() -> Served {
    let ca = ca("cluster");
    let src = tempfile::tempdir().unwrap();
    write_fake_bundle(src.path()).unwrap();
    let addr = start_server(src.path(), &ca).await;
    let offer = Offer::of(&crate::bundle::Bundle::open(src.path()).unwrap(), addr).unwrap();
    Served { ca, src, offer }
}

/// A node's client configuration for the cluster of `s`.
fn node_tls(s: &Served) -> Arc<rustls::ClientConfig> {
    client_tls(&s.ca, &s.ca, "system:node:two", Some("system:nodes"))
}

fn error_text(e: &ShareError) -> String {
    crate::error_chain(e)
}

#[tokio::test]
async fn a_node_fetches_the_whole_bundle_and_every_file_is_checked() {
    let s = served().await;
    let (src, offer, addr) = (&s.src, &s.offer, s.offer.source);
    let dest = tempfile::tempdir().unwrap();
    let into = dest.path().join("b");
    let tls = node_tls(&s);

    let (bundle, report) = fetch(offer, &into, tls.clone()).await.unwrap();
    let files = offer.files().unwrap().len();
    assert_eq!(report.fetched, files);
    assert_eq!(report.kept, 0);
    assert!(report.bytes > 0);
    bundle.verify_checksums().unwrap();
    assert_eq!(
        bundle.versions(),
        crate::bundle::Bundle::open(src.path()).unwrap().versions()
    );
    assert_eq!(Offer::of(&bundle, addr).unwrap().id(), offer.id());

    // Again: everything is there, nothing is fetched.
    let (_, again) = fetch(offer, &into, tls).await.unwrap();
    assert_eq!((again.fetched, again.kept), (0, files));
}

#[tokio::test]
async fn a_fetch_cut_short_fetches_only_what_is_missing() {
    let s = served().await;
    let offer = &s.offer;
    let dest = tempfile::tempdir().unwrap();
    let tls = node_tls(&s);
    fetch(offer, dest.path(), tls.clone()).await.unwrap();
    // Cut short: two files and the markers gone, a third half-written.
    std::fs::remove_file(dest.path().join("bin/kubelet")).unwrap();
    std::fs::remove_file(dest.path().join("bin/etcd")).unwrap();
    std::fs::write(dest.path().join("bin/containerd"), b"half").unwrap();
    std::fs::remove_file(dest.path().join("SHA256SUMS")).unwrap();
    let (bundle, report) = fetch(offer, dest.path(), tls).await.unwrap();
    assert_eq!(report.fetched, 3, "{report:?}");
    bundle.verify_checksums().unwrap();
}

#[tokio::test]
async fn a_served_file_that_is_not_the_published_one_is_never_kept() {
    let s = served().await;
    let (src, offer) = (&s.src, &s.offer);
    // The serving host's kubelet changed after the offer was published.
    std::fs::write(src.path().join("bin/kubelet"), b"#!/bin/sh\necho evil\n").unwrap();
    let dest = tempfile::tempdir().unwrap();
    let tls = node_tls(&s);
    let err = fetch(offer, dest.path(), tls).await.unwrap_err();
    let text = error_text(&err);
    assert!(matches!(err, ShareError::Mismatch { .. }), "{text}");
    assert!(
        text.contains("bin/kubelet") && text.contains("was not kept"),
        "{text}"
    );
    assert!(!dest.path().join("bin/kubelet").exists());
    assert!(!dest.path().join("bin/kubelet.partial").exists());
    assert!(
        !dest.path().join("SHA256SUMS").exists(),
        "never marked whole"
    );
}

#[tokio::test]
async fn clients_without_a_node_certificate_of_the_cluster_are_refused() {
    let ca = ca("cluster");
    let other = ca_other();
    let src = tempfile::tempdir().unwrap();
    write_fake_bundle(src.path()).unwrap();
    let addr = start_server(src.path(), &ca).await;
    let offer = Offer::of(&crate::bundle::Bundle::open(src.path()).unwrap(), addr).unwrap();
    for (why, tls) in [
        (
            "a certificate of another CA",
            client_tls(&ca, &other, "system:node:two", Some("system:nodes")),
        ),
        (
            "a cluster certificate outside system:nodes",
            client_tls(&ca, &ca, "someone", Some("developers")),
        ),
    ] {
        let dest = tempfile::tempdir().unwrap();
        let err = fetch(&offer, dest.path(), tls).await.unwrap_err();
        assert!(
            matches!(err, ShareError::Tls { .. } | ShareError::Http { .. }),
            "{why}: {}",
            error_text(&err)
        );
        assert!(!dest.path().join("bin").exists(), "{why}: nothing written");
    }
    // And a client that does not trust the serving host's CA does not
    // talk to it at all.
    let dest = tempfile::tempdir().unwrap();
    let tls = client_tls(&other, &ca, "system:node:two", Some("system:nodes"));
    let err = fetch(&offer, dest.path(), tls).await.unwrap_err();
    assert!(
        matches!(err, ShareError::Tls { .. }),
        "{}",
        error_text(&err)
    );
}

fn ca_other() -> Ca {
    ca("someone else")
}

#[tokio::test]
async fn only_the_bundles_files_are_served() {
    let ca = ca("cluster");
    let src = tempfile::tempdir().unwrap();
    write_fake_bundle(src.path()).unwrap();
    std::fs::write(src.path().join("secret.key"), b"not for you").unwrap();
    let addr = start_server(src.path(), &ca).await;
    // An offer that lists a file the bundle does not: the server answers
    // 404, whatever lies in its directory.
    let mut offer = Offer::of(&crate::bundle::Bundle::open(src.path()).unwrap(), addr).unwrap();
    offer
        .sha256sums
        .push_str(&format!("{}  secret.key\n", "0".repeat(64)));
    let dest = tempfile::tempdir().unwrap();
    let tls = client_tls(&ca, &ca, "system:node:two", Some("system:nodes"));
    let err = fetch(&offer, dest.path(), tls).await.unwrap_err();
    assert!(
        matches!(err, ShareError::Status { status: 404, .. }),
        "{}",
        error_text(&err)
    );
    assert!(!dest.path().join("secret.key").exists());
}
