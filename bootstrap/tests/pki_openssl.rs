//! The PKI written to a real directory and checked by OpenSSL, an
//! implementation that shares no code with ours.
//!
//! Needs the `openssl` command (Debian package `openssl`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use base64::Engine as _;
use bootstrap::host::{Host, HostError, Written};
use bootstrap::pki::kubeconfig::{decode_data, Kubeconfig};
use bootstrap::pki::{ca_cert_hash, ensure_pki, PkiAction, PkiSpec};

/// A minimal std::fs host with the same contract as node's: compare before
/// writing, temp file + fsync + rename, modes applied.
struct FsHost;

impl Host for FsHost {
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, HostError> {
        match fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
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
        if let Some(old) = &old {
            let cur = fs::metadata(path).map_err(err)?.permissions().mode() & 0o7777;
            if old == contents {
                if cur == mode {
                    return Ok(Written::Unchanged);
                }
                fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)?;
                return Ok(Written::Updated);
            }
        }
        let tmp = path.with_extension("selfnode-tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(contents).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(err)?;
        fs::rename(&tmp, path).map_err(err)?;
        Ok(if old.is_some() {
            Written::Updated
        } else {
            Written::Created
        })
    }

    fn ensure_dir(&self, path: &Path, mode: u32) -> Result<(), HostError> {
        let err = |source| HostError::CreateDir {
            path: path.into(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)
    }
}

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): install Debian's 'openssl' package"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?} failed:\n{text}");
    text
}

fn verify(pki: &Path, ca: &str, cert: &str, purpose: &str) {
    let out = openssl(
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            purpose,
            "-CAfile",
            ca,
            cert,
        ],
        pki,
    );
    assert!(out.contains(&format!("{cert}: OK")), "{out}");
}

struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn spec_in(dirs: &Dirs) -> PkiSpec {
    let mut spec = PkiSpec::new("cp-1", vec!["10.0.0.10".parse().unwrap()]);
    spec.pki_dir = dirs.root.join("kubernetes/pki");
    spec.kubeconfig_dir = dirs.root.join("kubernetes");
    spec.extra_sans = vec!["api.example.test".into()];
    spec
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    Dirs { _tmp: tmp, root }
}

#[test]
fn openssl_accepts_the_pki() {
    let d = dirs();
    let spec = spec_in(&d);
    let report = ensure_pki(&FsHost, &spec, SystemTime::now()).expect("ensure_pki");
    assert!(report
        .entries
        .iter()
        .all(|e| e.action == PkiAction::Created));
    let pki = spec.pki_dir.as_path();

    // Chains and purposes.
    verify(pki, "ca.crt", "apiserver.crt", "sslserver");
    verify(pki, "ca.crt", "apiserver-kubelet-client.crt", "sslclient");
    verify(
        pki,
        "front-proxy-ca.crt",
        "front-proxy-client.crt",
        "sslclient",
    );
    for leaf in ["etcd/server.crt", "etcd/peer.crt"] {
        verify(pki, "etcd/ca.crt", leaf, "sslserver");
        verify(pki, "etcd/ca.crt", leaf, "sslclient");
    }
    verify(
        pki,
        "etcd/ca.crt",
        "etcd/healthcheck-client.crt",
        "sslclient",
    );
    verify(pki, "etcd/ca.crt", "apiserver-etcd-client.crt", "sslclient");
    // A leaf does not verify against the wrong CA.
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", "etcd/ca.crt", "apiserver.crt"])
        .current_dir(pki)
        .output()
        .expect("openssl");
    assert!(!out.status.success());

    // SANs as OpenSSL reads them.
    let text = openssl(&["x509", "-noout", "-text", "-in", "apiserver.crt"], pki);
    for san in [
        "DNS:cp-1",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
        "DNS:api.example.test",
        "IP Address:10.96.0.1",
        "IP Address:127.0.0.1",
        "IP Address:10.0.0.10",
        "Subject: CN = kube-apiserver",
        "ASN1 OID: prime256v1",
        "TLS Web Server Authentication",
    ] {
        assert!(text.contains(san), "{san:?} missing from:\n{text}");
    }
    let text = openssl(&["x509", "-noout", "-text", "-in", "etcd/peer.crt"], pki);
    for san in [
        "DNS:localhost",
        "IP Address:0:0:0:0:0:0:0:1",
        "Subject: CN = cp-1",
    ] {
        assert!(text.contains(san), "{san:?} missing from:\n{text}");
    }

    // Keys match their certificates; sa.pub is sa.key's public half.
    for base in ["apiserver", "etcd/server", "front-proxy-client"] {
        let from_cert = openssl(
            &["x509", "-noout", "-pubkey", "-in", &format!("{base}.crt")],
            pki,
        );
        let from_key = openssl(&["pkey", "-pubout", "-in", &format!("{base}.key")], pki);
        assert_eq!(from_cert, from_key, "{base}");
    }
    let sa_pub = openssl(&["pkey", "-pubout", "-in", "sa.key"], pki);
    assert_eq!(sa_pub, fs::read_to_string(pki.join("sa.pub")).unwrap());

    // The join pin, computed the way kubeadm's docs do it.
    let der_pub = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -pubkey -noout -in ca.crt | openssl pkey -pubin -outform der | sha256sum",
        )
        .current_dir(pki)
        .output()
        .expect("sh");
    let hex = String::from_utf8_lossy(&der_pub.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(report.ca_cert_hash, format!("sha256:{hex}"));
    assert_eq!(
        ca_cert_hash(&fs::read(pki.join("ca.crt")).unwrap()).unwrap(),
        report.ca_cert_hash
    );

    // Kubeconfig client certificates verify against the embedded CA.
    for (conf, subject) in [
        (
            "admin.conf",
            "O = kubeadm:cluster-admins, CN = kubernetes-admin",
        ),
        (
            "super-admin.conf",
            "O = system:masters, CN = kubernetes-super-admin",
        ),
        ("kubelet.conf", "O = system:nodes, CN = system:node:cp-1"),
        ("scheduler.conf", "CN = system:kube-scheduler"),
        (
            "controller-manager.conf",
            "CN = system:kube-controller-manager",
        ),
    ] {
        let kc = Kubeconfig::from_yaml(&fs::read(spec.kubeconfig_dir.join(conf)).unwrap())
            .expect("kubeconfig");
        let (cluster, user) = kc.current().expect("context");
        let scratch = d.root.join("scratch");
        fs::create_dir_all(&scratch).unwrap();
        let ca = decode_data(cluster.cluster.certificate_authority_data.as_deref()).unwrap();
        let cert = decode_data(user.user.client_certificate_data.as_deref()).unwrap();
        fs::write(scratch.join("ca.crt"), ca).unwrap();
        fs::write(scratch.join("client.crt"), cert).unwrap();
        verify(&scratch, "ca.crt", "client.crt", "sslclient");
        let text = openssl(
            &["x509", "-noout", "-subject", "-in", "client.crt"],
            &scratch,
        );
        assert!(text.contains(subject), "{conf}: {text}");
        fs::remove_dir_all(&scratch).unwrap();
    }

    // Modes on disk.
    for entry in &report.entries {
        let mode = fs::metadata(&entry.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", entry.path.display());
    }
    for dir in [
        pki.to_path_buf(),
        pki.join("etcd"),
        spec.kubeconfig_dir.clone(),
    ] {
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
}

/// Certificates issued by a CA loaded back from disk (the second run's path)
/// chain as well as those issued right after the CA was made.
#[test]
fn openssl_accepts_leaves_signed_by_a_reloaded_ca() {
    let d = dirs();
    let mut spec = spec_in(&d);
    ensure_pki(&FsHost, &spec, SystemTime::now()).expect("first run");
    let old = fs::read(spec.pki_dir.join("apiserver.crt")).unwrap();

    spec.advertise_addresses.push("10.0.0.11".parse().unwrap());
    let report = ensure_pki(&FsHost, &spec, SystemTime::now()).expect("second run");
    let apiserver = spec.pki_dir.join("apiserver.crt");
    assert!(matches!(
        report.action(&apiserver),
        Some(PkiAction::Renewed(_))
    ));
    assert_ne!(fs::read(&apiserver).unwrap(), old);
    verify(&spec.pki_dir, "ca.crt", "apiserver.crt", "sslserver");
    verify(&spec.pki_dir, "etcd/ca.crt", "etcd/peer.crt", "sslserver");
    let text = openssl(
        &["x509", "-noout", "-text", "-in", "apiserver.crt"],
        &spec.pki_dir,
    );
    assert!(text.contains("IP Address:10.0.0.11"), "{text}");

    // A third run changes nothing on disk.
    let before = snapshot(&d.root);
    let report = ensure_pki(&FsHost, &spec, SystemTime::now()).expect("third run");
    assert!(report.entries.iter().all(|e| e.action == PkiAction::Reused));
    assert_eq!(snapshot(&d.root), before);
}

/// Every file's bytes, by path, base64'd for a readable diff.
fn snapshot(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = fs::read(&path).unwrap();
                out.push((
                    path,
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                ));
            }
        }
    }
    out.sort();
    out
}

/// A CA made elsewhere (here: an RSA one, as kubeadm makes by default) is
/// adopted as it is: leaves are issued under it and the pin is its own.
#[test]
fn an_existing_rsa_ca_from_openssl_is_adopted() {
    let d = dirs();
    let spec = spec_in(&d);
    let pki = spec.pki_dir.as_path();
    fs::create_dir_all(pki).unwrap();
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "ca.key",
        ],
        pki,
    );
    openssl(
        &[
            "req",
            "-x509",
            "-key",
            "ca.key",
            "-subj",
            "/CN=kubernetes",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,digitalSignature,keyCertSign",
            "-out",
            "ca.crt",
        ],
        pki,
    );
    let ca_before = fs::read(pki.join("ca.crt")).unwrap();

    let report = ensure_pki(&FsHost, &spec, SystemTime::now()).expect("ensure_pki");
    assert_eq!(report.action(&pki.join("ca.crt")), Some(&PkiAction::Reused));
    assert_eq!(report.action(&pki.join("ca.key")), Some(&PkiAction::Reused));
    assert_eq!(fs::read(pki.join("ca.crt")).unwrap(), ca_before);
    verify(pki, "ca.crt", "apiserver.crt", "sslserver");
    verify(pki, "ca.crt", "apiserver-kubelet-client.crt", "sslclient");
    assert_eq!(report.ca_cert_hash, ca_cert_hash(&ca_before).unwrap());
    let pin = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -pubkey -noout -in ca.crt | openssl pkey -pubin -outform der | sha256sum",
        )
        .current_dir(pki)
        .output()
        .expect("sh");
    let hex = String::from_utf8_lossy(&pin.stdout);
    assert_eq!(
        report.ca_cert_hash,
        format!("sha256:{}", hex.split_whitespace().next().unwrap())
    );
    // Adopted files get our mode (openssl wrote ca.crt 0644).
    let mode = fs::metadata(pki.join("ca.crt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}
