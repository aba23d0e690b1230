//! The node-local API load balancer (like Talos' KubePrism or k3s' agent LB).
//!
//! Listens on 127.0.0.1 and on ::1 (kubeconfigs of an IPv6 cluster name
//! `[::1]`; a host without IPv6 gets the IPv4 port only) and forwards each TCP
//! connection, TLS untouched, to a healthy kube-apiserver. The kubelet, kube-proxy, the control-plane pods and
//! the node's admin kubeconfig all use it, so losing one control-plane node, or
//! the temporary apiserver stopping at the pivot, is invisible to them.
//!
//! Backends come from a file (`var/lib/selfnode/apiservers`, one `ip:port` a
//! line) that `init`/`join` write and the agent re-reads; each is health
//! checked every two seconds: `GET /readyz` (anonymous, verified against the
//! cluster CA) once the node has the CA, a TCP connect before that. An
//! apiserver that accepts connections but cannot serve (its etcd is gone, it
//! is starting or draining) gets no new connections while another can.
//!
//! The port is open only while some apiserver is healthy. With none (a power
//! cut, before init), a client's connection is refused at once, as if it
//! dialled the dead apiserver itself. An open port that closes every
//! connection would be worse: client-go retries the EOF, and the kubelet's
//! calls then take ~10 s each before it starts its static pods
//! (kubernetes/kubernetes#103658), which is what brings the API back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::supervisor::StatusHandle;
use crate::control::ApiBackends;
use crate::status::ComponentState;

pub const COMPONENT: &str = crate::control::Component::ApiLb.as_str();
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// The check period while no backend is healthy: the port opens soon after
/// an apiserver becomes ready.
const CHECK_EVERY_WHILE_DOWN: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    pub healthy: bool,
}

/// The backends and their last observed health, shared by the checker and
/// the connection handlers. Every change of health, whoever observed it (a
/// check, or a connection that could not reach the backend), updates
/// `serving` (some backend is healthy), which every listener watches, so
/// the port closes when the last healthy backend goes, however that was
/// noticed.
#[derive(Debug)]
pub struct Backends {
    list: RwLock<Vec<Backend>>,
    next: AtomicUsize,
    serving: watch::Sender<bool>,
}

impl Default for Backends {
    fn default() -> Self {
        Backends {
            list: RwLock::default(),
            next: AtomicUsize::default(),
            serving: watch::Sender::new(false),
        }
    }
}

impl Backends {
    /// Replaces the list, keeping the known health of addresses still in it.
    pub fn set(&self, addrs: &[SocketAddr]) {
        if let Ok(mut list) = self.list.write() {
            let old = list.clone();
            *list = addrs
                .iter()
                .map(|a| Backend {
                    addr: *a,
                    healthy: old.iter().any(|b| b.addr == *a && b.healthy),
                })
                .collect();
        }
        self.publish();
    }

    /// Sends `serving` to the listeners when it changed.
    fn publish(&self) {
        let now = self.any_healthy();
        self.serving
            .send_if_modified(|v| std::mem::replace(v, now) != now);
    }

    /// Records `addr`'s health; returns whether it changed (and then wakes
    /// the listener).
    pub fn mark(&self, addr: SocketAddr, healthy: bool) -> bool {
        let mut changed = false;
        if let Ok(mut list) = self.list.write() {
            for b in list.iter_mut().filter(|b| b.addr == addr) {
                changed |= b.healthy != healthy;
                b.healthy = healthy;
            }
        }
        if changed {
            tracing::info!(backend = %addr, healthy, "api backend health changed");
            self.publish();
        }
        changed
    }

    /// Whether some backend passed its last health check.
    pub fn any_healthy(&self) -> bool {
        self.snapshot().iter().any(|b| b.healthy)
    }

    pub fn snapshot(&self) -> Vec<Backend> {
        self.list.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// Healthy backends in round-robin order, then the unhealthy ones (a
    /// health check can lag; trying them last costs nothing when all are down).
    pub fn candidates(&self) -> Vec<SocketAddr> {
        let list = self.snapshot();
        if list.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % list.len();
        let rotated = list.iter().cycle().skip(start).take(list.len());
        let (healthy, sick): (Vec<&Backend>, Vec<&Backend>) = rotated.partition(|b| b.healthy);
        healthy.into_iter().chain(sick).map(|b| b.addr).collect()
    }
}

pub struct ApiLb {
    /// Where to listen: the IPv4 loopback first (its failure to bind is
    /// reported), then others (the IPv6 loopback: skipped where the host has
    /// no IPv6).
    pub listen: Vec<SocketAddr>,
    pub backends_file: PathBuf,
    /// The cluster CA that signs the apiservers' serving certificates.
    pub ca_file: PathBuf,
}

/// Runs until `stop`: listens while some backend is healthy (see the module
/// docs). Binding failure is reported in the status and retried.
pub async fn run(lb: ApiLb, status: StatusHandle, stop: CancellationToken, tracker: TaskTracker) {
    let backends = Arc::new(Backends::default());
    tracker.spawn(check_loop(
        lb.backends_file.clone(),
        lb.ca_file.clone(),
        backends.clone(),
        status.clone(),
        stop.clone(),
    ));
    for (i, addr) in lb.listen.iter().enumerate() {
        tracker.spawn(listen(
            *addr,
            i == 0,
            backends.clone(),
            status.clone(),
            stop.clone(),
            tracker.clone(),
        ));
    }
    stop.cancelled().await;
    status.update(COMPONENT, |c| c.state = ComponentState::Stopped);
}

/// One listening address: bound while some backend is healthy. A failure
/// to bind is retried every 5 s; `required`: it is also reported in the
/// status (not for the IPv6 loopback, which a host without IPv6 never has).
async fn listen(
    addr: SocketAddr,
    required: bool,
    backends: Arc<Backends>,
    status: StatusHandle,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut serving = backends.serving.subscribe();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = serving.wait_for(|s| *s) => if r.is_err() { return },
        }
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(err) if !required => {
                // Retried (lo may not be up yet in a new namespace), quietly:
                // on a host without IPv6 this never succeeds.
                tracing::debug!(listen = %addr, %err, "api load balancer: cannot listen on this address yet");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
            Err(err) => {
                status.update(COMPONENT, |c| {
                    c.state = ComponentState::Failed;
                    c.last_error = Some(format!("cannot listen on {addr}: {err}"));
                });
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
        };
        tracing::info!(listen = %addr, "api load balancer listening");
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = serving.changed() => {
                    if r.is_err() {
                        return;
                    }
                    if !*serving.borrow_and_update() {
                        tracing::info!(listen = %addr, "no apiserver is healthy: api load balancer port closed until one is");
                        break;
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((client, _)) => {
                        let backends = backends.clone();
                        let stop = stop.clone();
                        tracker.spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = forward(client, &backends) => {}
                            }
                        });
                    }
                    Err(err) => {
                        tracing::warn!(%err, "api load balancer accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

async fn forward(mut client: TcpStream, backends: &Backends) {
    for addr in backends.candidates() {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(mut upstream)) => {
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            _ => {
                backends.mark(addr, false);
            }
        }
    }
    // No backend: closing the connection is the honest answer.
}

/// Whether `addr` can serve: `/readyz` when the CA is known, else a TCP
/// connect. The certificate is verified for the loopback address the
/// balancer's clients dial (and verify), not for `addr`: every API server
/// of the cluster serves the DaemonSet's one certificate, which names
/// loopback and the Service IP but not each node's address.
async fn backend_up(addr: SocketAddr, ca_file: &std::path::Path) -> bool {
    let check = async {
        if ca_file.is_file() {
            let name = if addr.is_ipv6() {
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            } else {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            };
            super::probe::https_ok_as(addr, name, "/readyz", Some(ca_file), None)
                .await
                .is_ok()
        } else {
            TcpStream::connect(addr).await.is_ok()
        }
    };
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or(false)
}

async fn check_loop(
    file: PathBuf,
    ca_file: PathBuf,
    backends: Arc<Backends>,
    status: StatusHandle,
    stop: CancellationToken,
) {
    let mut last_text = None;
    let mut last_addrs: Option<Vec<SocketAddr>> = None;
    loop {
        let text = std::fs::read_to_string(&file).ok();
        if text != last_text {
            match text
                .as_deref()
                .map(|t| ApiBackends::parse(t).map(|b| b.addrs))
                .unwrap_or(Ok(Vec::new()))
            {
                Ok(addrs) => {
                    // A rewrite that only refreshes times changes nothing here.
                    if last_addrs.as_ref() != Some(&addrs) {
                        tracing::info!(backends = ?addrs, "api load balancer backends");
                        backends.set(&addrs);
                        last_addrs = Some(addrs);
                    }
                }
                Err(err) => {
                    tracing::warn!(file = %file.display(), %err, "ignoring invalid backends file")
                }
            }
            last_text = text;
        }
        for b in backends.snapshot() {
            backends.mark(b.addr, backend_up(b.addr, &ca_file).await);
        }
        let list = backends.snapshot();
        let healthy = list.iter().filter(|b| b.healthy).count();
        status.update(COMPONENT, |c| {
            if list.is_empty() || healthy > 0 {
                c.state = ComponentState::Ready;
                c.last_error = None;
            } else {
                c.state = ComponentState::Unhealthy;
                c.last_error = Some(format!("none of {} apiservers answers", list.len()));
            }
        });
        let period = if healthy > 0 {
            CHECK_EVERY
        } else {
            CHECK_EVERY_WHILE_DOWN
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn healthy_backends_come_first_and_rotate() {
        let b = Backends::default();
        b.set(&[a("127.0.0.1:1"), a("127.0.0.1:2"), a("127.0.0.1:3")]);
        b.mark(a("127.0.0.1:2"), true);
        b.mark(a("127.0.0.1:3"), true);
        let first: Vec<_> = (0..4).map(|_| b.candidates()[0]).collect();
        assert!(
            first.iter().all(|x| *x != a("127.0.0.1:1")),
            "the unhealthy one is never first: {first:?}"
        );
        assert!(
            first.contains(&a("127.0.0.1:2")) && first.contains(&a("127.0.0.1:3")),
            "{first:?}"
        );
        assert_eq!(
            b.candidates().len(),
            3,
            "unhealthy ones are still tried last"
        );
    }

    #[test]
    fn replacing_the_list_keeps_known_health() {
        let b = Backends::default();
        b.set(&[a("127.0.0.1:1")]);
        b.mark(a("127.0.0.1:1"), true);
        b.set(&[a("127.0.0.1:1"), a("127.0.0.1:2")]);
        assert_eq!(
            b.snapshot(),
            vec![
                Backend {
                    addr: a("127.0.0.1:1"),
                    healthy: true
                },
                Backend {
                    addr: a("127.0.0.1:2"),
                    healthy: false
                }
            ]
        );
    }

    #[tokio::test]
    async fn forwards_bytes_to_a_live_backend_and_skips_a_dead_one() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let dead = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap(); // closed on drop
        let backends = Backends::default();
        backends.set(&[dead, live]);
        backends.mark(dead, true); // stale health: forward must fall through

        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(front_addr).await.unwrap();
            c.write_all(b"hello").await.unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).await.unwrap();
            buf
        });
        let (conn, _) = front.accept().await.unwrap();
        forward(conn, &backends).await;
        assert_eq!(&client.await.unwrap(), b"hello");
        assert!(
            !backends
                .snapshot()
                .iter()
                .find(|b| b.addr == dead)
                .unwrap()
                .healthy,
            "the dead one is marked down"
        );
    }

    /// A connection that finds the last healthy backend gone marks it down;
    /// the ports (IPv4 and IPv6 loopback) must close then, even though the
    /// next check sees no change.
    #[tokio::test]
    async fn the_ports_close_when_a_connection_finds_the_last_backend_gone() {
        use crate::status::{AgentStatus, ComponentStatus};
        let dir = tempfile::tempdir().unwrap();
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let file = dir.path().join("apiservers");
        std::fs::write(&file, format!("{}\n", backend.local_addr().unwrap())).unwrap();
        let free = |a: &'static str| async move {
            TcpListener::bind(a).await.unwrap().local_addr().unwrap()
        };
        let v4 = free("127.0.0.1:0").await;
        let v6 = free("[::1]:0").await;
        let status = super::super::supervisor::StatusHandle::new(AgentStatus {
            pid: 1,
            version: "test".into(),
            started: 0,
            updated: 0,
            bundle: dir.path().into(),
            api_lb_port: Some(v4.port()),
            components: vec![ComponentStatus::new(COMPONENT, None)],
            snapshots: None,
        });
        let stop = CancellationToken::new();
        let lb = ApiLb {
            listen: vec![v4, v6],
            backends_file: file,
            ca_file: dir.path().join("no-ca.crt"), // TCP checks
        };
        tokio::spawn(run(lb, status, stop.clone(), TaskTracker::new()));
        let until = |addr: SocketAddr, open: bool| async move {
            for _ in 0..100 {
                if TcpStream::connect(addr).await.is_ok() == open {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            false
        };
        for addr in [v4, v6] {
            assert!(
                until(addr, true).await,
                "{addr} opens while the backend answers"
            );
        }
        drop(backend);
        // Within the check period: this connection is what finds it down.
        drop(TcpStream::connect(v4).await);
        for addr in [v4, v6] {
            assert!(
                until(addr, false).await,
                "{addr} closes once the backend is gone"
            );
        }
        stop.cancel();
    }
}
