//! Shared harness for dist's integration tests: the real bundle, a real
//! containerd (the bundle's, with its shim and runc) in a temp dir, and
//! bundle "views" (a temp bundle whose bin/ and cni/ point at the real one,
//! with its own images/).
//!
//! [`TestContainerd`] stops everything it started on drop, also when the
//! test panics: tasks are killed and deleted through ctr, containerd gets
//! SIGTERM then SIGKILL (by PID), leftover shims of this instance are killed
//! by PID, and every mount under the temp dir is unmounted before the dir is
//! removed. containerd also gets PDEATHSIG, so it dies with the test thread
//! even if the test process is killed.

#![allow(dead_code)] // each test binary uses a different part of the harness

use dist::bundle::Bundle;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The bundle directory: `$SELFNODE_BUNDLE` or the default cache location.
/// Fails (never skips) when there is none.
pub fn bundle_dir() -> PathBuf {
    testkit::bundle_dir()
}

/// The real bundle, opened.
pub fn bundle() -> Bundle {
    let dir = bundle_dir();
    Bundle::open(&dir).unwrap_or_else(|e| {
        panic!(
            "the bundle at {} is not usable: {}; build it with fixtures/build-bundle.sh",
            dir.display(),
            dist::error_chain(&e)
        )
    })
}

/// A temp bundle that shares bin/ and cni/ with the real one (symlinks) and
/// has its own, empty images/.
pub struct BundleView {
    pub dir: tempfile::TempDir,
}

impl BundleView {
    pub fn new() -> BundleView {
        let real = bundle_dir();
        let dir = tempfile::Builder::new()
            .prefix("selfnode-bundle-")
            .tempdir()
            .unwrap();
        for file in ["VERSION", "SHA256SUMS"] {
            std::fs::copy(real.join(file), dir.path().join(file)).unwrap();
        }
        std::os::unix::fs::symlink(real.join("bin"), dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink(real.join("cni"), dir.path().join("cni")).unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        BundleView { dir }
    }

    /// Like [`BundleView::new`] but bin/ is a directory of per-file
    /// symlinks, so tests can remove or replace single binaries.
    pub fn with_own_bin() -> BundleView {
        let view = BundleView::new();
        let bin = view.dir.path().join("bin");
        let real_bin = std::fs::read_link(&bin).unwrap();
        std::fs::remove_file(&bin).unwrap();
        std::fs::create_dir(&bin).unwrap();
        for entry in std::fs::read_dir(&real_bin).unwrap() {
            let entry = entry.unwrap();
            std::os::unix::fs::symlink(entry.path(), bin.join(entry.file_name())).unwrap();
        }
        view
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn images_dir(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    pub fn open(&self) -> Bundle {
        Bundle::open(self.dir.path()).unwrap()
    }
}

/// A containerd started for one test.
pub struct TestContainerd {
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    socket: PathBuf,
    bin_dir: PathBuf,
    log: PathBuf,
    major: u32,
}

fn containerd_major(containerd: &Path) -> u32 {
    let out = Command::new(containerd).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "containerd github.com/containerd/containerd/v2 v2.4.2 ..." or "... 1.6.20~ds1 ..."
    let version = text.split_whitespace().nth(2).unwrap_or_default();
    version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("cannot read containerd's version from {text:?}"))
}

impl TestContainerd {
    /// Starts `bin_dir/containerd` (with `bin_dir` first on its PATH, for
    /// the shim and runc) on a socket in a fresh temp dir, and waits until
    /// it serves.
    pub fn start(bin_dir: &Path) -> TestContainerd {
        let containerd = bin_dir.join("containerd");
        let major = containerd_major(&containerd);
        // Short path: the socket path must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("sn-ctd-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let socket = d.join("c.sock");
        let (version, cri_plugins) = if major >= 2 {
            (
                3,
                r#""io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.nri.v1.nri""#,
            )
        } else {
            (2, r#""io.containerd.grpc.v1.cri""#)
        };
        // The CRI plugin (and NRI with its fixed socket) is off: these tests
        // use the plain containerd API and ctr, and several containerds may
        // run side by side.
        let config = format!(
            r#"version = {version}
root = "{root}"
state = "{state}"
disabled_plugins = [{cri_plugins}]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            socket = socket.display(),
            opt = d.join("opt").display(),
        );
        let config_path = d.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = d.join("containerd.log");
        let log_file = File::create(&log).unwrap();
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            bin_dir.display()
        );
        let mut command = Command::new(&containerd);
        command
            .arg("--config")
            .arg(&config_path)
            .env_clear()
            .env("PATH", path)
            .env("TMPDIR", d)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches
        // no memory of the parent; it only asks the kernel to SIGKILL the
        // child when the spawning thread dies.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        let mut this = TestContainerd {
            dir: Some(dir),
            child: Some(child),
            socket,
            bin_dir: bin_dir.to_path_buf(),
            log,
            major,
        };
        this.wait_ready();
        this
    }

    /// Starts the bundle's containerd, or the one in
    /// `$SELFNODE_TEST_CONTAINERD_DIR` (e.g. `/usr/bin` for Debian's 1.6, to
    /// check compatibility; it needs containerd, ctr and the shim there).
    pub fn start_from_bundle(bundle: &Bundle) -> TestContainerd {
        match std::env::var_os("SELFNODE_TEST_CONTAINERD_DIR") {
            Some(dir) => TestContainerd::start(Path::new(&dir)),
            None => TestContainerd::start(&bundle.root().join("bin")),
        }
    }

    /// True when running the bundle's containerd (not an override).
    pub fn is_bundle_containerd() -> bool {
        std::env::var_os("SELFNODE_TEST_CONTAINERD_DIR").is_none()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "containerd exited at start ({status}); log:\n{}",
                    self.log_tail()
                );
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not listen on {} within 30s; log:\n{}",
                self.socket.display(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir lives until drop").path()
    }

    pub fn major(&self) -> u32 {
        self.major
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child lives until drop").id()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs the ctr next to containerd against this instance.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new(self.bin_dir.join("ctr"))
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(namespace)
            .args(args)
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bin_dir.display()),
            )
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Like [`TestContainerd::ctr`], panicking with the output on failure;
    /// returns stdout (ctr 2.x warns about cgroup v1 on stderr).
    pub fn ctr_ok(&self, namespace: &str, args: &[&str]) -> String {
        self.ctr_checked(namespace, args).0
    }

    /// Like [`TestContainerd::ctr_ok`], returning stdout followed by stderr.
    pub fn ctr_ok_all(&self, namespace: &str, args: &[&str]) -> String {
        let (stdout, stderr) = self.ctr_checked(namespace, args);
        format!("{stdout}{stderr}")
    }

    /// A new, empty network namespace kept by a bind mount at
    /// `<temp dir>/netns-<name>` (unmounted with everything else on drop),
    /// for containers to share with `ctr run --with-ns network:<path>`.
    pub fn new_netns(&self, name: &str) -> PathBuf {
        let path = self.dir().join(format!("netns-{name}"));
        File::create(&path).unwrap();
        let out = Command::new("unshare")
            .arg(format!("--net={}", path.display()))
            .arg("true")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "unshare --net={} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    fn ctr_checked(&self, namespace: &str, args: &[&str]) -> (String, String) {
        let out = self.ctr(namespace, args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\n{stdout}{stderr}\ncontainerd log:\n{}",
            out.status,
            self.log_tail()
        );
        (stdout, stderr)
    }

    /// Processes whose command line mentions this instance's socket (its
    /// shims), with their descendants.
    pub fn shim_pids(&self) -> Vec<i32> {
        let needle = self.socket.to_string_lossy().into_owned();
        let mut roots = Vec::new();
        let mut parents: Vec<(i32, i32)> = Vec::new();
        let own = std::process::id() as i32;
        let containerd = self.child.as_ref().map(|c| c.id() as i32);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) {
                // "pid (comm) state ppid ...": comm may contain spaces.
                if let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) {
                    if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok())
                    {
                        parents.push((pid, ppid));
                    }
                }
            }
            if pid == own || Some(pid) == containerd {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("containerd-shim") && cmdline.contains(&needle) {
                roots.push(pid);
            }
        }
        let mut all = roots.clone();
        let mut i = 0;
        while i < all.len() {
            let parent = all[i];
            for (pid, ppid) in &parents {
                if *ppid == parent && !all.contains(pid) {
                    all.push(*pid);
                }
            }
            i += 1;
        }
        all
    }

    /// Mount points under this instance's temp dir, deepest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        match &self.dir {
            Some(dir) => mounts_under(dir.path()),
            None => Vec::new(),
        }
    }

    fn kill_tasks(&self) {
        let namespaces = self.ctr("default", &["namespaces", "ls", "-q"]);
        for ns in String::from_utf8_lossy(&namespaces.stdout).lines() {
            let tasks = self.ctr(ns, &["tasks", "ls", "-q"]);
            for task in String::from_utf8_lossy(&tasks.stdout).lines() {
                let _ = self.ctr(ns, &["tasks", "kill", "-s", "SIGKILL", "--all", task]);
                let deadline = Instant::now() + Duration::from_secs(5);
                while !self.ctr(ns, &["tasks", "delete", task]).status.success()
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let containers = self.ctr(ns, &["containers", "ls", "-q"]);
            for container in String::from_utf8_lossy(&containers.stdout).lines() {
                let _ = self.ctr(ns, &["containers", "delete", container]);
            }
        }
    }
}

/// Mount points at or under `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = u8::from_str_radix(&field[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn kill_pid(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        use nix::sys::signal::Signal;
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                self.kill_tasks();
            }
            kill_pid(child.id() as i32, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        kill_pid(child.id() as i32, Signal::SIGKILL);
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        for pid in self.shim_pids() {
            kill_pid(pid, Signal::SIGKILL);
        }
        // Give the kernel a moment to reap killed shims (they are not our
        // children; init reaps them).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.shim_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for mount in self.mounts() {
            let Ok(c_path) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: c_path is a valid NUL-terminated string that outlives
            // the call; umount2 does not retain it.
            let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
            if rc != 0 {
                eprintln!(
                    "harness: cannot unmount {}: {}",
                    mount.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
        if let Some(dir) = self.dir.take() {
            if let Err(err) = dir.close() {
                eprintln!("harness: cannot remove the containerd temp dir: {err}");
            }
        }
    }
}

/// A current-thread tokio runtime for the async dist API (kept on the test
/// thread, so containerd's PDEATHSIG parent stays alive).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
