//! Test hosts for the cni crate: throwaway network namespaces (`ip netns`)
//! and a fake Kubernetes API serving Nodes.

#![allow(dead_code)] // each test binary uses its own part

pub mod fake_api;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace made with `ip netns add`, deleted on drop (also
/// when the test panics).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace with `lo` up and a veth pair `veth0`/`veth1`
    /// (both ends inside), `veth0` holding `addr` (e.g. `10.0.0.1/24`), so
    /// `via` routes to that subnet are valid.
    pub fn new(addr: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "selfnode-cni-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&[
            "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ]);
        ns.ip(&["addr", "add", addr, "dev", "veth0"]);
        ns.ip(&["link", "set", "veth0", "up"]);
        ns.ip(&["link", "set", "veth1", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`; panics on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip -n <ns> [-6] route show proto 83`, one route per line, without
    /// the `dev …` suffix: `10.244.2.0/24 via 10.0.0.2`.
    pub fn our_routes(&self, v6: bool) -> Vec<String> {
        let mut args = vec![];
        if v6 {
            args.push("-6");
        }
        args.extend(["route", "show", "proto", "83"]);
        self.routes(&args)
    }

    /// Every route of the main table (IPv4), normalised as above but with
    /// the protocol kept: `10.244.9.0/24 via 10.0.0.9 proto static`.
    pub fn all_routes(&self) -> Vec<String> {
        self.routes(&["route", "show", "table", "main"])
    }

    fn routes(&self, args: &[&str]) -> Vec<String> {
        self.ip(args)
            .lines()
            .map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let mut out = Vec::new();
                let mut i = 0;
                while i < words.len() {
                    match words[i] {
                        // Interface, metrics and flags vary; the tests
                        // compare destination, gateway and protocol.
                        "dev" | "metric" | "pref" | "scope" | "src" => i += 2,
                        "linkdown" | "onlink" => i += 1,
                        w => {
                            out.push(w);
                            i += 1;
                        }
                    }
                }
                out.join(" ")
            })
            .collect()
    }

    /// `cat <path>` inside the namespace (a fresh process there: what any
    /// program of the namespace sees, e.g. `/proc/sys/net/ipv4/ip_forward`).
    pub fn cat(&self, path: &str) -> String {
        run("ip", &["netns", "exec", &self.name, "cat", path])
            .trim()
            .to_string()
    }

    /// Runs `f` on a new thread that first joins this namespace
    /// (`setns(2)` changes only the calling thread), with its own
    /// current-thread tokio runtime. Netlink sockets and `/proc/sys/net`
    /// opened there belong to the namespace.
    pub fn block_on<F, T>(&self, f: F) -> T
    where
        F: std::future::Future<Output = T> + Send,
        T: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: `ns` is an open namespace file for the call's
                // duration; setns only changes this thread's namespace.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(f)
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            other => eprintln!("cannot delete netns {}: {other:?}", self.name),
        }
    }
}

/// Runs a command; panics with its stderr on failure; returns stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (these tests need root and iproute2)"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Logs of the code under test, shown for failing tests (`SELFNODE_LOG`
/// filters, default `info`).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SELFNODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Polls `check` every 50 ms until it returns true or `secs` pass.
pub async fn eventually(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
