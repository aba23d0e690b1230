//! The test-host harness shared by every end-to-end test of `selfnode`.
//!
//! A [`TestHost`] is one host running its own selfnode agent, containerd and
//! kubelet with the real upstream binaries from the bundle. Today a host is a
//! directory used as `--root` on this machine; multi-host tests will add hosts
//! in network + mount namespaces behind the same interface.
//!
//! Cleanup happens in `Drop`, so it runs when a test fails too: the agent is
//! stopped by PID (SIGTERM, then SIGKILL), any process still referring to the
//! host's directory is killed by PID, mounts under it are unmounted, and the
//! directory is removed.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Hosts that run a kubelet share this machine's cgroups and /var/log/containers,
/// so the tests that start one run one at a time.
static MACHINE: Mutex<()> = Mutex::new(());

pub fn bundle_dir() -> PathBuf {
    testkit::bundle_dir()
}

/// A user workload from a locally imported image: `image` (an etcd image)
/// serving plain HTTP as Deployment `web` with `replicas`, behind Service
/// `web` on port 80.
pub fn web_workload(host: &TestHost, image: &str, replicas: u32) {
    host.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        &format!("--image={image}"),
        &format!("--replicas={replicas}"),
        "--port=2379",
        "--",
        "etcd",
        "--data-dir=/tmp/web",
        "--listen-client-urls=http://0.0.0.0:2379",
        "--advertise-client-urls=http://127.0.0.1:2379",
    ]);
    host.kubectl_ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=2379",
    ]);
}

pub fn previous_bundle_dir() -> PathBuf {
    testkit::previous_bundle_dir()
}

/// A copy of the real bundle in `dir/bundle` without the file `skip`
/// (relative to the bundle root, e.g. `bin/kubelet`): its binaries and
/// images are symlinks, `VERSION` and `SHA256SUMS` copies.
pub fn bundle_without(dir: &Path, skip: &str) -> PathBuf {
    let src = bundle_dir();
    let dst = dir.join("bundle");
    for sub in ["bin", "cni/bin", "images"] {
        std::fs::create_dir_all(dst.join(sub)).unwrap();
        for e in std::fs::read_dir(src.join(sub)).unwrap().flatten() {
            let rel = Path::new(sub).join(e.file_name());
            if rel != Path::new(skip) {
                std::os::unix::fs::symlink(e.path(), dst.join(&rel)).unwrap();
            }
        }
    }
    for f in ["VERSION", "SHA256SUMS"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    dst
}

/// [`bundle_without`] `file`, with a shell script of `text` (mode 0755)
/// in its place: a bundle that opens but fails its `SHA256SUMS` check.
pub fn damaged_bundle(dir: &Path, file: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bundle = bundle_without(dir, file);
    let path = bundle.join(file);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bundle
}

/// A pinned version from the bundle's VERSION file (`KEY=value`).
pub fn bundle_version(key: &str) -> String {
    version_in(&bundle_dir(), key)
}

/// A pinned version from the VERSION file of the bundle at `bundle`.
pub fn version_in(bundle: &Path, key: &str) -> String {
    std::fs::read_to_string(bundle.join("VERSION"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} not in {}/VERSION", bundle.display()))
        .trim()
        .to_string()
}

pub fn selfnode_bin() -> &'static str {
    env!("CARGO_BIN_EXE_selfnode")
}

/// A TCP port that was free a moment ago on every address, for a
/// listener a test starts later. It is taken below the kernel's ephemeral
/// range (`net.ipv4.ip_local_port_range`, 32768 up by default): a port the
/// kernel handed out with `bind(:0)` can be given again as the local port
/// of any outgoing connection (the kubelet's, the API server's) before the
/// listener binds it, which failed a CI run. Below that range only
/// listeners take ports, and each test binary walks its own stretch (by
/// PID) so parallel tests never get the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000; // 20000..32000: no component's fixed port
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() * 97 % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left in {LOW}..{}", LOW + SPAN);
        let port = (LOW + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

/// Another host's own network and filesystem view: a network namespace on
/// the test LAN (a veth pair into the LAN bridge, `198.18.0.<index>/24`,
/// default route via the bridge's `198.18.0.1`), and a mount namespace in
/// which the first host's root directory is this host's own directory. The
/// cluster's DaemonSets carry absolute host paths (under the first host's
/// `--root`); in its mount namespace every host finds its own files there,
/// as every real host has its own `/etc/cni` and `/var/lib/kubelet`.
pub struct Netns {
    pub name: String,
    veth: String,
    pub addr: std::net::IpAddr,
    /// The mount namespace, bound to this file.
    mnt: PathBuf,
}

/// The test LAN: a bridge on this machine with `198.18.0.1/24`. The first
/// host advertises that address; hosts in namespaces join the bridge.
pub struct Lan {
    bridge: String,
    pub gateway: std::net::IpAddr,
}

impl Lan {
    pub fn create() -> Lan {
        // A LAN left by a test run that was killed (its Drop never ran)
        // still holds the gateway address: replies to the hosts would go
        // out of that bridge, and every join would fail far from the cause.
        let out = Command::new("ip")
            .args(["-br", "addr", "show"])
            .output()
            .expect("run ip");
        let held: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(" 198.18.0.1/"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        assert!(
            held.is_empty(),
            "198.18.0.1 (the test LAN's gateway) is already on {held:?}, left by an earlier test run that was killed; delete it ('ip link del {}') and run again",
            held.join(" ")
        );
        let bridge = format!("snb{}", std::process::id() % 100_000);
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let lan = Lan {
            bridge,
            gateway: "198.18.0.1".parse().unwrap(),
        };
        ip(&["addr", "add", "198.18.0.1/24", "dev", &lan.bridge]);
        ip(&["link", "set", &lan.bridge, "up"]);
        lan
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// Names of the test hosts' network namespaces start with this.
const NETNS_PREFIX: &str = "snh";

/// Where the mount namespaces of test hosts are bound (a private mount, as
/// binding a namespace to a file requires).
const MNT_NS_DIR: &str = "/run/selfnode-test-mntns";

fn mnt_ns_dir() -> PathBuf {
    let dir = PathBuf::from(MNT_NS_DIR);
    let private = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(MNT_NS_DIR));
    if !private {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["--bind", MNT_NS_DIR, MNT_NS_DIR])
            .status()
            .unwrap()
            .success()
            && Command::new("mount")
                .args(["--make-private", MNT_NS_DIR])
                .status()
                .unwrap()
                .success();
        assert!(ok, "cannot make {MNT_NS_DIR} a private mount");
    }
    dir
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// Host `index` (2..=254) on `lan`, seeing `own_dir` at `root_path`.
    pub fn create(lan: &Lan, index: u8, own_dir: &Path, root_path: &Path) -> Netns {
        let tag = format!("{}x{index}", std::process::id() % 100_000);
        let name = format!("{NETNS_PREFIX}{tag}");
        let veth = format!("snv{tag}");
        let peer = format!("{veth}p");
        let inner = format!("198.18.0.{index}");
        ip(&["netns", "add", &name]);
        let mnt = mnt_ns_dir().join(&name);
        let ns = Netns {
            name,
            veth,
            addr: inner.parse().unwrap(),
            mnt,
        };
        ip(&[
            "link", "add", &ns.veth, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &ns.veth, "master", &lan.bridge]);
        ip(&["link", "set", &ns.veth, "up"]);
        ip(&["link", "set", &peer, "netns", &ns.name]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("{inner}/24"), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["route", "add", "default", "via", &lan.gateway.to_string()]);
        std::fs::write(&ns.mnt, b"").unwrap();
        let out = Command::new("unshare")
            .arg(format!("--mount={}", ns.mnt.display()))
            .args(["--propagation", "private", "--", "mount", "--bind"])
            .arg(own_dir)
            .arg(root_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount namespace of {}: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
        ns
    }

    /// Moves the host to `198.18.0.<index>` on its LAN, as a DHCP server or
    /// an operator re-addressing it would: the old address goes (and with
    /// it the default route), the new one and the route come.
    pub fn readdress(&mut self, lan: &Lan, index: u8) {
        let peer = format!("{}p", self.veth);
        let new = format!("198.18.0.{index}");
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &self.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "del", &format!("{}/24", self.addr), "dev", &peer]);
        inside(&["addr", "add", &format!("{new}/24"), "dev", &peer]);
        inside(&[
            "route",
            "replace",
            "default",
            "via",
            &lan.gateway.to_string(),
        ]);
        self.addr = new.parse().unwrap();
    }

    /// A command run in this host's network and mount namespaces.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg(format!("--mount={}", self.mnt.display()))
            .arg("--")
            .arg(program);
        c
    }

    /// The inode of the network namespace, as /proc/<pid>/ns/net names it.
    fn net_inode(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .ok()
            .map(|m| m.ino())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.mnt);
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub struct TestHost {
    /// Taken by the first host of a test; the hosts it adds share it.
    _machine: Option<MutexGuard<'static, ()>>,
    dir: Option<tempfile::TempDir>,
    /// The host's directory, as the test sees it.
    pub root: PathBuf,
    /// What the host's commands get as `--root`: `root`, except for a host
    /// in namespaces, where it is the first host's path (see [`Netns`]).
    root_arg: PathBuf,
    pub bundle: PathBuf,
    pub healthz_port: u16,
    pub api_lb_port: u16,
    agent: Option<Child>,
    /// Network namespaces of the machine when the host was made: the ones
    /// its pods add are removed by [`TestHost::power_cut`].
    netns_before: Vec<String>,
    /// A host of its own network (see [`TestHost::in_netns`]); dropped after
    /// the host is stopped and reset.
    pub netns: Option<Netns>,
}

fn netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every process on the machine, by PID, from /proc.
fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// Every descendant of `roots` (and the roots), from /proc's parent PIDs.
fn process_trees(roots: &[u32]) -> Vec<u32> {
    let mut parent = Vec::new();
    for pid in all_pids() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The command is in parentheses and may hold spaces: fields after ')'.
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        {
            parent.push((pid, ppid));
        }
    }
    let mut out: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

impl TestHost {
    /// A power cut: SIGKILL to the agent, containerd, the kubelet, every
    /// shim and every container of this host at once; then what a reboot
    /// empties goes (the host's `run` directory, the tmpfs mounts under it
    /// and the kubelet's, the pods' network namespaces). Disks keep the rest.
    pub fn power_cut(&mut self) {
        let mut roots: Vec<u32> = self.processes(None).into_iter().map(|(p, _)| p).collect();
        if let Some(child) = &self.agent {
            roots.push(child.id());
        }
        let all = process_trees(&roots);
        let left = kill_and_wait_gone(&all, Duration::from_secs(30));
        if let Some(mut child) = self.agent.take() {
            let _ = child.wait();
        }
        assert!(left.is_empty(), "processes survive SIGKILL: {left:?}");
        unmount_under(&self.root.join("run"));
        unmount_under(&self.root.join("var/lib/kubelet"));
        for name in netns_names() {
            // The pods' namespaces go; the other test hosts' (`snh…`,
            // made after this host) are the network they live on.
            if !self.netns_before.contains(&name) && !name.starts_with(NETNS_PREFIX) {
                let path = Path::new("/run/netns").join(&name);
                let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(&path);
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.root.join("run")) {
            for e in entries.flatten() {
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
    }

    /// A host for cluster tests: the API load balancer on its real port
    /// (7445), because the kubeconfigs `init` writes point there.
    pub fn for_cluster() -> Self {
        let mut host = TestHost::new();
        host.api_lb_port = 7445;
        host
    }

    /// `selfnode init` on this host with its bundle and extra arguments.
    pub fn init(&self, extra: &[&str], failpoint: Option<&str>) -> std::process::Output {
        let mut cmd = self.selfnode();
        cmd.arg("init");
        if !extra.contains(&"--bundle") {
            cmd.arg("--bundle").arg(&self.bundle);
        }
        cmd.args(extra);
        match failpoint {
            Some(step) => cmd.env("SELFNODE_FAILPOINT", step),
            None => cmd.env_remove("SELFNODE_FAILPOINT"),
        };
        cmd.output().expect("run selfnode init")
    }

    /// The real kubectl with this host's admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.bundle.join("bin/kubectl"))
            .arg("--kubeconfig")
            .arg(self.root.join("etc/kubernetes/admin.conf"))
            .args(args)
            .output()
            .unwrap()
    }

    /// kubectl that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn new() -> Self {
        let machine = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
        let mut host = TestHost::unstarted(Some(machine));
        host.api_lb_port = free_port();
        host
    }

    /// A host with a fresh directory as its root; nothing runs yet.
    fn unstarted(machine: Option<MutexGuard<'static, ()>>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("selfnode-host-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        TestHost {
            _machine: machine,
            netns: None,
            dir: Some(dir),
            root_arg: root.clone(),
            root,
            bundle: bundle_dir(),
            healthz_port: free_port(),
            api_lb_port: 7445,
            agent: None,
            netns_before: netns_names(),
        }
    }

    /// Another host of the same test, in its own network and mount
    /// namespaces ([`Netns`], 198.18.0.<index> on `lan`) and its own cgroup
    /// root: its agent,
    /// containerd, kubelet and pods have their own network, API balancer
    /// port and iptables. Made while the test's first host lives (it holds
    /// the machine) and dropped before it.
    pub fn in_netns(first: &TestHost, lan: &Lan, index: u8) -> Self {
        let mut host = TestHost::unstarted(None);
        host.netns = Some(Netns::create(lan, index, &host.root, &first.root_arg));
        host.root_arg = first.root_arg.clone();
        host
    }

    /// This host's processes: those referring to its root path (command
    /// line or working directory) in its network namespace (hosts in
    /// namespaces share the first host's root path).
    fn processes(&self, except: Option<u32>) -> Vec<(u32, String)> {
        use std::os::unix::fs::MetadataExt;
        let net = |pid: &str| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .ok()
                .map(|m| m.ino())
        };
        let mine = match &self.netns {
            Some(ns) => ns.net_inode(),
            None => net("self"),
        };
        processes_referring_to(&self.root_arg, except)
            .into_iter()
            .filter(|(pid, _)| net(&pid.to_string()) == mine)
            .collect()
    }

    /// The kubelet's cgroup root of a host in a namespace.
    fn cgroup_root(&self) -> Option<String> {
        self.netns.as_ref().map(|n| format!("/selfnode-{}", n.name))
    }

    /// What the host's commands get as `--root` (see [`TestHost::in_netns`]).
    pub fn root_arg(&self) -> &Path {
        &self.root_arg
    }

    /// `program` run on this host: in its network and mount namespaces, if
    /// it has them.
    pub fn on_host(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => ns.command(program),
            None => Command::new(program),
        }
    }

    /// The first host of a multi-host test: its agent healthy, then
    /// `selfnode init --allow-workloads` advertising the LAN's gateway
    /// address (the address the other hosts reach it on); returns the host
    /// and init's JSON summary.
    pub fn init_on_lan(lan: &Lan) -> (TestHost, Value) {
        TestHost::init_on_lan_from(lan, &bundle_dir())
    }

    /// [`TestHost::init_on_lan`] from the bundle at `bundle`.
    pub fn init_on_lan_from(lan: &Lan, bundle: &Path) -> (TestHost, Value) {
        let mut first = TestHost::for_cluster();
        first.bundle = bundle.to_path_buf();
        first.start_agent();
        first.wait_healthy(Duration::from_secs(180));
        let gateway = lan.gateway.to_string();
        let out = first.init(
            &[
                "--allow-workloads",
                "--advertise-address",
                &gateway,
                "-o",
                "json",
            ],
            None,
        );
        assert!(out.status.success(), "init: {}", text(&out));
        let summary = serde_json::from_slice(&out.stdout).unwrap();
        (first, summary)
    }

    /// `selfnode etcd snapshot save` into `name` under this host's root;
    /// returns the file.
    pub fn snapshot_save(&self, name: &str) -> PathBuf {
        let file = self.root.join(name);
        let out = self
            .selfnode()
            .args(["etcd", "snapshot", "save"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "snapshot save: {}", text(&out));
        file
    }

    /// `selfnode token create ARGS…` on this host; returns the join string.
    pub fn token_create(&self, args: &[&str]) -> String {
        let out = self
            .selfnode()
            .args(["token", "create"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "token create: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `selfnode join ARGS…` on this host.
    pub fn join(&self, args: &[&str]) -> std::process::Output {
        self.selfnode()
            .arg("join")
            .args(args)
            .output()
            .expect("run selfnode join")
    }

    /// `selfnode --root <host root> ARGS…` (in the host's network
    /// namespace, if it has one).
    pub fn selfnode(&self) -> Command {
        // nsenter, not `ip netns exec`: that one also remounts /sys, which
        // hides the cgroup hierarchies the kubelet needs.
        let mut cmd = match &self.netns {
            Some(ns) => ns.command(selfnode_bin()),
            None => Command::new(selfnode_bin()),
        };
        cmd.arg("--root")
            .arg(&self.root_arg)
            .env_remove("SELFNODE_ROOT");
        cmd
    }

    /// The agent's command line for this host, with extra flags.
    pub fn agent_command(&self, extra: &[&str]) -> Command {
        let mut cmd = self.selfnode();
        cmd.arg("agent")
            .arg("--bundle")
            .arg(&self.bundle)
            .arg("--kubelet-healthz-port")
            .arg(self.healthz_port.to_string())
            .arg("--api-lb-port")
            .arg(self.api_lb_port.to_string());
        if let Some(cg) = self.cgroup_root() {
            cmd.arg("--cgroup-root").arg(cg);
        }
        cmd.args(extra);
        cmd
    }

    pub fn start_agent(&mut self) -> u32 {
        self.start_agent_with(&[])
    }

    /// Starts the agent with extra flags.
    pub fn start_agent_with(&mut self, extra: &[&str]) -> u32 {
        assert!(self.agent.is_none(), "agent already started");
        let log = std::fs::File::create(self.root.join("agent.log")).unwrap();
        let child = self
            .agent_command(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start selfnode agent");
        let pid = child.id();
        self.agent = Some(child);
        pid
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.root.join("agent.log")).unwrap_or_default()
    }

    pub fn component_log(&self, name: &str) -> String {
        let path = self
            .root
            .join("var/log/selfnode")
            .join(format!("{name}.log"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// `selfnode status -o json`, parsed.
    pub fn status(&self) -> Value {
        let out = self
            .selfnode()
            .args(["status", "-o", "json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status -o json is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn component<'a>(status: &'a Value, name: &str) -> &'a Value {
        status["status"]["components"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no component {name} in {status:#}"))
    }

    /// Waits until `pred(status)` holds; panics with the agent's and the
    /// components' logs when `timeout` passes.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status();
            if pred(&st) {
                return st;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\nstatus: {st:#}\n--- agent log\n{}\n--- containerd log\n{}\n--- kubelet log\n{}",
                    self.agent_log(),
                    self.component_log("containerd"),
                    self.component_log("kubelet")
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn wait_healthy(&self, timeout: Duration) -> Value {
        self.wait_for("every component ready", timeout, |st| st["healthy"] == true)
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|c| c.id())
    }

    /// Whether the agent process has exited (reaps it if so).
    pub fn agent_exited(&mut self) -> Option<ExitStatus> {
        self.agent.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// SIGTERM to the agent; waits for it to exit.
    pub fn stop_agent(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.agent.take().expect("agent not started");
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
                panic!(
                    "agent did not stop within {timeout:?} of SIGTERM\n{}",
                    self.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the agent and runs `selfnode reset --force` with this host's
    /// bundle, which must succeed; returns reset's output.
    pub fn stop_and_reset(&mut self) -> String {
        assert!(self.stop_agent(Duration::from_secs(120)).success());
        let out = self
            .selfnode()
            .args(["reset", "--force", "--bundle"])
            .arg(&self.bundle)
            .output()
            .unwrap();
        assert!(out.status.success(), "reset: {}", text(&out));
        text(&out)
    }

    /// `selfnode stop`: a node stop (the agent, if one runs, and every
    /// container); reaps the agent child. Returns stop's output.
    pub fn stop_node(&mut self, timeout: Duration) -> std::process::Output {
        let out = self
            .selfnode()
            .arg("stop")
            .arg("--bundle")
            .arg(&self.bundle)
            .arg("--timeout")
            .arg(format!("{}s", timeout.as_secs()))
            .output()
            .expect("run selfnode stop");
        if let Some(mut child) = self.agent.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if child.try_wait().ok().flatten().is_none() {
                signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
                panic!(
                    "the agent is still running after 'selfnode stop': {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        out
    }

    /// Processes (other than the agent) whose command line or working
    /// directory refers to this host's directory: what the agent started.
    pub fn leftover_processes(&self) -> Vec<(u32, String)> {
        self.processes(self.agent_pid())
    }

    /// Runs the bundle's `ctr` against this host's containerd.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.bundle.join("bin/ctr"))
            .arg("--address")
            .arg(self.root.join("run/selfnode/containerd/containerd.sock"))
            .args(args)
            .output()
            .unwrap()
    }
}

impl TestHost {
    /// What a person debugging a failed cluster test would look at first:
    /// pods, warning events, CoreDNS's log, and the tails of the agent's,
    /// containerd's and the kubelet's logs. Printed when a test panics.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        if self.root.join("etc/kubernetes/admin.conf").is_file() {
            for args in [
                &["get", "nodes", "-o", "wide"][..],
                &["get", "pods", "-A", "-o", "wide"],
                &[
                    "get",
                    "events",
                    "-A",
                    "--field-selector",
                    "type=Warning",
                    "--sort-by",
                    ".lastTimestamp",
                ],
                &[
                    "-n",
                    "kube-system",
                    "logs",
                    "-l",
                    "k8s-app=kube-dns",
                    "--tail",
                    "30",
                ],
            ] {
                let o = self.kubectl(args);
                out.push_str(&format!(
                    "--- kubectl {}\n{}{}\n",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
        }
        let manifests = std::fs::read_dir(self.root.join("etc/kubernetes/manifests"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push_str(&format!("--- static pods\n{manifests}\n"));
        let agent = self.agent_log();
        let tail: Vec<&str> = agent.lines().rev().take(40).collect();
        out.push_str(&format!(
            "--- agent log (tail)\n{}\n",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
        for name in ["containerd", "kubelet"] {
            out.push_str(&format!(
                "--- {name} log (tail)\n{}\n",
                self.component_log(name)
            ));
        }
        out
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "=== diagnostics of test host {} ===\n{}",
                self.root.display(),
                self.diagnostics()
            );
        }
        // A node stop: the agent and every container, also those an agent
        // stop left running. What it cannot stop is killed by PID below.
        let _ = self
            .selfnode()
            .args(["stop", "--timeout", "60s", "--bundle"])
            .arg(&self.bundle)
            .output();
        if let Some(mut child) = self.agent.take() {
            signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(40);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
        // Gone, not merely signalled (a poll, not a pause): what follows
        // unmounts, resets and removes what they may still hold.
        let pids: Vec<u32> = self.processes(None).into_iter().map(|(p, _)| p).collect();
        let left = kill_and_wait_gone(&pids, Duration::from_secs(30));
        if !left.is_empty() {
            eprintln!("warning: test host processes survive SIGKILL: {left:?}");
        }
        unmount_under(&self.root);
        // A cluster changed the machine's network (the pod bridge and its
        // address, routes, kube-proxy's and the pods' NAT rules): the
        // product's own reset removes them, so the next test's cluster
        // (with other CIDRs, say) starts clean.
        if self.api_lb_port == 7445 || self.root.join("var/lib/selfnode/node.json").exists() {
            let _ = self
                .selfnode()
                .args(["reset", "--force", "--bundle"])
                .arg(&self.bundle)
                .output();
        }
        if let Some(cg) = self.cgroup_root() {
            remove_cgroup(&cg);
        }
        // Its namespaces go before its directory (their mounts with them).
        drop(self.netns.take());
        if let Some(dir) = self.dir.take() {
            if std::env::var_os("SELFNODE_KEEP_TEST_HOST").is_some() {
                eprintln!("keeping test host at {}", dir.keep().display());
            } else if let Err(err) = dir.close() {
                eprintln!("warning: cannot remove test host dir: {err}");
            }
        }
    }
}

/// Removes a cgroup and everything under it from every hierarchy (its
/// processes are gone by now), deepest first.
fn remove_cgroup(path: &str) {
    let rel = path.trim_start_matches('/');
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let top = h.path().join(rel);
        if !top.is_dir() {
            continue;
        }
        let mut dirs = vec![top.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(d) = std::fs::read_dir(&dirs[i]) {
                dirs.extend(d.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
            i += 1;
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A command's stdout and stderr, for messages.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Calls `f` every 2 s until it succeeds; panics with its last error after
/// `timeout`.
pub fn retry(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let end = Instant::now() + timeout;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > end => panic!("timed out waiting for {what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a PID we started; no memory is shared.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Checks one run of `sequence` (`init`, `join`) made with the failpoint
/// after `step` (`SELFNODE_FAILPOINT`), the kill-after-every-step loops'
/// one rule: the run stopped right after the step, with the failpoint's
/// exit code and message. The runner fires it after a step it applied and
/// after one it found already done (`init::steps`); only a step the plan
/// skipped does not fire, and then its line says "skipped" and the run
/// finishes. So exit 0 passes only with that line: a failpoint that
/// stopped firing fails here.
pub fn assert_stopped_at_failpoint(sequence: &str, step: &str, out: &std::process::Output) {
    let t = text(out);
    let skipped = t
        .lines()
        .any(|l| l.contains(&format!("[{sequence}] {step} (")) && l.contains("): skipped: "));
    match out.status.code() {
        Some(node::sequences::runner::FAILPOINT_EXIT) if !skipped => assert!(
            t.contains(&format!("failpoint: exiting after step {step}")),
            "{sequence} with the failpoint after {step} exited {} without the failpoint's message: {t}",
            node::sequences::runner::FAILPOINT_EXIT
        ),
        Some(0) if skipped => {}
        other => panic!(
            "{sequence} with the failpoint after {step} ended with {other:?} (skipped by the plan: {skipped}): {t}"
        ),
    }
}

/// Sends SIGKILL to `pids` and polls until each is gone (a zombie counts as
/// gone: it holds no memory, file or mount any more, only its exit status);
/// returns those still alive after `timeout`.
pub fn kill_and_wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    for pid in pids {
        signal(*pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has exited; only its parent's wait is missing.
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn processes_referring_to(dir: &Path, except: Option<u32>) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    for pid in all_pids() {
        if Some(pid) == except || pid == std::process::id() || !pid_alive(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        if cmdline.contains(&needle) || cwd.starts_with(dir) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Mount points under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect()
}

/// Unmounts everything mounted under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let mut points = mounts_under(dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).status();
    }
}

/// No Secret or ConfigMap of the cluster holds a private key: a scan of
/// every one, in every namespace, for a PEM private key and for the bytes
/// of the first host's CA key.
pub fn no_private_key_in_the_api(first: &TestHost) {
    let ca_key = std::fs::read_to_string(first.root.join("etc/kubernetes/pki/ca.key")).unwrap();
    let body: String = ca_key.lines().nth(1).unwrap_or_default().to_string();
    for kind in ["secrets", "configmaps"] {
        let all = first.kubectl_ok(&["get", kind, "-A", "-o", "json"]);
        let doc: serde_json::Value = serde_json::from_str(&all).unwrap();
        for item in doc["items"].as_array().unwrap() {
            let name = format!(
                "{}/{}",
                item["metadata"]["namespace"], item["metadata"]["name"]
            );
            for (k, v) in item["data"].as_object().into_iter().flatten() {
                let raw = v.as_str().unwrap_or_default();
                let decoded = if kind == "secrets" {
                    use base64::Engine as _;
                    String::from_utf8_lossy(
                        &base64::engine::general_purpose::STANDARD
                            .decode(raw)
                            .unwrap_or_default(),
                    )
                    .into_owned()
                } else {
                    raw.to_string()
                };
                assert!(
                    !decoded.contains("PRIVATE KEY") && !decoded.contains(&body),
                    "{kind} {name} key {k} holds a private key"
                );
            }
        }
    }
}

/// The host's checkpoint holds no private key (a scan of its database
/// files for a PEM private key).
pub fn no_private_key_in_the_checkpoint(host: &TestHost) {
    let state = host.root.join("var/lib/selfnode");
    let mut files = Vec::new();
    let mut stack = vec![state.join("checkpoint")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    assert!(!files.is_empty(), "the checkpoint has files");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(11).any(|w| w == b"PRIVATE KEY"),
            "{} holds a private key",
            f.display()
        );
    }
}

/// `selfnode etcd members -o json` on `host`, one value per member.
pub fn member_list(host: &TestHost) -> Result<Vec<Value>, String> {
    let out = host
        .selfnode()
        .args(["etcd", "members", "-o", "json"])
        .output()
        .unwrap();
    let list: Value =
        serde_json::from_slice(&out.stdout).map_err(|_| format!("etcd members: {}", text(&out)))?;
    list.as_array().cloned().ok_or_else(|| text(&out))
}

/// `host` (started here) joins `first`'s cluster as control-plane node
/// `name`, with a control-plane join string made on `first`.
pub fn join_control_plane(first: &TestHost, host: &mut TestHost, name: &str) {
    let cp = first.token_create(&["--control-plane", "--description", name]);
    host.start_agent();
    host.wait_healthy(Duration::from_secs(180));
    let out = host.join(&[&cp, "--node-name", name]);
    assert!(
        out.status.success(),
        "control-plane join of {name}: {}\n{}",
        text(&out),
        host.agent_log()
    );
}

/// A cluster of three control-plane hosts on `lan`: the first (init),
/// `node2` and `node3` (control-plane joins), all three healthy voters.
/// Returns the hosts and the first node's name.
pub fn three_control_plane_hosts(lan: &Lan) -> (TestHost, TestHost, TestHost, String) {
    let (first, summary) = TestHost::init_on_lan(lan);
    let node1 = summary["node_name"].as_str().unwrap().to_string();
    let mut second = TestHost::in_netns(&first, lan, 2);
    join_control_plane(&first, &mut second, "node2");
    let mut third = TestHost::in_netns(&first, lan, 3);
    join_control_plane(&first, &mut third, "node3");
    wait_voters(
        &first,
        &[&node1, "node2", "node3"],
        Duration::from_secs(180),
    );
    (first, second, third, node1)
}

/// `selfnode etcd members -o json` on `host`: (name, healthy, learner).
pub fn members(host: &TestHost) -> Result<Vec<(String, bool, bool)>, String> {
    Ok(member_list(host)?
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                m["healthy"].as_bool().unwrap_or(false),
                m["is_learner"].as_bool().unwrap_or(true),
            )
        })
        .collect())
}

/// Waits until `host` sees exactly `names` as healthy voting members.
pub fn wait_voters(host: &TestHost, names: &[&str], timeout: Duration) {
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    retry(
        &format!("etcd members {want:?}, all healthy voters"),
        timeout,
        || {
            let list = members(host)?;
            let mut got: Vec<String> = list
                .iter()
                .filter(|(_, healthy, learner)| *healthy && !learner)
                .map(|(n, _, _)| n.clone())
                .collect();
            got.sort();
            if got == want && list.len() == want.len() {
                Ok(())
            } else {
                Err(format!("{list:?}"))
            }
        },
    );
}
