//! The harness every etcd-mgr integration test goes through: an etcd CA
//! with server/peer and client certificates (rcgen), and real etcd members
//! from the bundle on free 127.0.0.1 ports with client and peer mTLS. A
//! member is stopped by its PID (SIGTERM, then SIGKILL) when dropped, pass
//! or fail.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use etcd_mgr::EtcdConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A binary of the pinned bundle; the test fails (never skips) without it.
pub fn bundle_bin(name: &str) -> PathBuf {
    testkit::bundle_bin(name)
}

// ---- PKI ---------------------------------------------------------------------

/// An etcd CA, one certificate for serving and peering (SAN 127.0.0.1) and
/// a client certificate, as PEM files in `dir`.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, pem: String| {
            let p = dir.join(name);
            fs::write(&p, pem).unwrap();
            p
        };

        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "etcd-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |cn: &str, sans: Vec<String>, eku: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = eku;
            (
                p.signed_by(&key, &issuer).unwrap().pem(),
                key.serialize_pem(),
            )
        };
        let (server, server_key) = leaf(
            "etcd-member",
            vec!["127.0.0.1".into(), "localhost".into()],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client, client_key) = leaf(
            "etcd-mgr-test-client",
            vec![],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        Pki {
            ca: write("ca.crt", ca_pem),
            server_cert: write("server.crt", server),
            server_key: write("server.key", server_key),
            client_cert: write("client.crt", client),
            client_key: write("client.key", client_key),
        }
    }

    pub fn config(&self, endpoints: &[String]) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.to_vec(),
            ca_file: self.ca.clone(),
            cert_file: self.client_cert.clone(),
            key_file: self.client_key.clone(),
            timeout: Duration::from_secs(5),
        }
    }

    pub async fn client(&self, url: &str) -> Client {
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(fs::read(&self.ca).unwrap()))
            .identity(Identity::from_pem(
                fs::read(&self.client_cert).unwrap(),
                fs::read(&self.client_key).unwrap(),
            ));
        let opts = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(5));
        Client::connect([url], Some(opts)).await.unwrap()
    }

    /// `etcdctl` with the mTLS flags for `url`.
    pub fn etcdctl(&self, url: &str) -> Command {
        let mut c = Command::new(bundle_bin("etcdctl"));
        c.arg("--endpoints")
            .arg(url)
            .arg("--cacert")
            .arg(&self.ca)
            .arg("--cert")
            .arg(&self.client_cert)
            .arg("--key")
            .arg(&self.client_key);
        c
    }
}

// ---- ports and members --------------------------------------------------------

/// Ports other test suites on this machine use.
const TAKEN: [u16; 7] = [2379, 2380, 12379, 12380, 6443, 6444, 7445];

/// A free loopback port, never handed out twice in this process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap();
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !TAKEN.contains(&port) && given.insert(port) {
            return port;
        }
    }
}

/// A member's name and ports, known before it runs (its peer URL is what
/// `add_learner` needs).
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
}

impl MemberSpec {
    pub fn new(name: &str) -> MemberSpec {
        MemberSpec {
            name: name.into(),
            client_port: free_port(),
            peer_port: free_port(),
        }
    }

    pub fn client_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer_port)
    }

    /// `name=peer URL`, for `--initial-cluster`.
    pub fn initial(&self) -> String {
        format!("{}={}", self.name, self.peer_url())
    }
}

pub const CLUSTER_TOKEN: &str = "etcd-mgr-test";

/// A running etcd member; stopped by PID when dropped.
pub struct Etcd {
    pub spec: MemberSpec,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Etcd {
    /// Starts `spec` on `data_dir` with `--initial-cluster initial_cluster`
    /// and `--initial-cluster-state state` (`new` or `existing`); logs go
    /// to `<log_dir>/<name>.log`.
    pub fn start(
        log_dir: &Path,
        pki: &Pki,
        spec: &MemberSpec,
        data_dir: &Path,
        initial_cluster: &str,
        state: &str,
    ) -> Etcd {
        Self::start_with(log_dir, pki, spec, data_dir, initial_cluster, state, &[])
    }

    /// [`Etcd::start`] with `extra` flags after the harness's own (e.g.
    /// `--quota-backend-bytes=16777216`).
    pub fn start_with(
        log_dir: &Path,
        pki: &Pki,
        spec: &MemberSpec,
        data_dir: &Path,
        initial_cluster: &str,
        state: &str,
        extra: &[String],
    ) -> Etcd {
        let log = log_dir.join(format!("{}.log", spec.name));
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(bundle_bin("etcd"))
            .arg(format!("--name={}", spec.name))
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={}", spec.client_url()))
            .arg(format!("--advertise-client-urls={}", spec.client_url()))
            .arg(format!("--listen-peer-urls={}", spec.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", spec.peer_url()))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--initial-cluster-token={CLUSTER_TOKEN}"))
            .arg(format!("--cert-file={}", pki.server_cert.display()))
            .arg(format!("--key-file={}", pki.server_key.display()))
            .arg(format!("--trusted-ca-file={}", pki.ca.display()))
            .arg("--client-cert-auth=true")
            .arg(format!("--peer-cert-file={}", pki.server_cert.display()))
            .arg(format!("--peer-key-file={}", pki.server_key.display()))
            .arg(format!("--peer-trusted-ca-file={}", pki.ca.display()))
            .arg("--peer-client-cert-auth=true")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("cannot start etcd");
        Etcd {
            spec: spec.clone(),
            data_dir: data_dir.to_path_buf(),
            log,
            child,
        }
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the member answers Status on its client URL (learners
    /// do too); panics with its log if it exits or takes over 30 s.
    pub async fn wait_ready(&mut self, pki: &Pki) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = self.spec.client_url();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "etcd {} exited ({st}) before serving:\n{}",
                    self.spec.name,
                    self.log_tail()
                );
            }
            let cfg = pki.config(std::slice::from_ref(&url));
            let ok = async {
                let tls = TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(fs::read(&cfg.ca_file).ok()?))
                    .identity(Identity::from_pem(
                        fs::read(&cfg.cert_file).ok()?,
                        fs::read(&cfg.key_file).ok()?,
                    ));
                let opts = ConnectOptions::new()
                    .with_tls(tls)
                    .with_connect_timeout(Duration::from_secs(1))
                    .with_timeout(Duration::from_secs(1));
                let mut c = Client::connect([url.as_str()], Some(opts)).await.ok()?;
                c.status().await.ok()
            }
            .await
            .is_some();
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd {} did not serve within 30 s:\n{}",
                self.spec.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL after 10 s; by PID, and only while the child
    /// has not been reaped (so the PID is still ours).
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- data ----------------------------------------------------------------------

pub fn key(i: usize) -> String {
    format!("k/{i:04}")
}

pub fn value(i: usize) -> String {
    format!("value {i} of the test data")
}

pub async fn put_keys(c: &mut Client, n: usize) {
    for i in 0..n {
        c.put(key(i), value(i), None).await.unwrap();
    }
}

/// Every key `put_keys` wrote, read back (linearizable) from `url` alone;
/// retried for up to 20 s while the member has no leader yet.
pub async fn assert_keys(pki: &Pki, url: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut c = pki.client(url).await;
    let resp = loop {
        match c.get("k/", Some(GetOptions::new().with_prefix())).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot read from {url}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let kvs = resp.kvs();
    assert_eq!(kvs.len(), n, "keys at {url}");
    for (i, kv) in kvs.iter().enumerate() {
        assert_eq!(kv.key_str().unwrap(), key(i));
        assert_eq!(kv.value_str().unwrap(), value(i));
    }
}

/// Every directory under `root` (itself included) is 0700 and every file 0600.
pub fn assert_private_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let md = fs::symlink_metadata(root).unwrap();
    let mode = md.permissions().mode() & 0o7777;
    if md.is_dir() {
        assert_eq!(mode, 0o700, "{} is {mode:o}", root.display());
        for e in fs::read_dir(root).unwrap() {
            assert_private_tree(&e.unwrap().path());
        }
    } else if md.is_file() {
        assert_eq!(mode, 0o600, "{} is {mode:o}", root.display());
    }
}
