//! Appliance images: `selfnode image build` makes an ISO and a raw disk
//! image from the real bundle and Debian's kernel, and each boots under
//! `qemu-system-x86_64` (software emulation, no KVM) with a serial console
//! that the tests read: selfnode's banner as PID 1, containerd ready, the
//! agent's status line; the power button powers the machine off through
//! `selfnode stop`. A bad kernel parameter on the medium boots to a message
//! naming the field. Bad input at build time is refused before anything is
//! written. Building twice gives the same bytes.
//!
//! QEMU is stopped by PID (in `Drop`, on failure too); each test's files
//! live in its own temporary directory.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{selfnode_bin, text};

/// One virtual machine at a time: each takes 4 GiB and both cores.
static VM: Mutex<()> = Mutex::new(());

/// Under software emulation a boot to containerd ready takes about 2
/// minutes on this machine; a loaded CI machine gets twice that and more.
const BOOT: Duration = Duration::from_secs(600);

const CONFIG: &str = "apiVersion: selfnode.dev/v1alpha1\nkind: ApplianceConfiguration\nrole: init\nallowWorkloads: true\nhostname: appliance-1\n";

fn build(dir: &Path, format: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let config = dir.join("node.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    Command::new(selfnode_bin())
        .args(["image", "build", "--format", format, "-o", "json", "--out"])
        .arg(out)
        .arg("--config")
        .arg(&config)
        .arg("--bundle")
        .arg(support::bundle_dir())
        .args(extra)
        .output()
        .unwrap()
}

fn built_sha(out: &std::process::Output) -> String {
    assert!(out.status.success(), "image build: {}", text(out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["sha256"].as_str().unwrap().to_string()
}

/// A running QEMU, stopped by PID when dropped.
struct Vm {
    child: Child,
    console: PathBuf,
    monitor: PathBuf,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Vm {
    /// Boots `boot` (an ISO as a CD, or a raw disk) with `disks` as
    /// further virtio disks; serial console to `<dir>/console.log`.
    fn boot(dir: &Path, name: &str, boot: &Path, iso: bool, disks: &[&Path]) -> Vm {
        let lock = VM.lock().unwrap_or_else(|e| e.into_inner());
        let console = dir.join(format!("{name}.console.log"));
        let monitor = dir.join(format!("{name}.monitor"));
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-m",
            "4096",
            "-smp",
            "2",
            "-cpu",
            "max",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-monitor")
        .arg(format!("unix:{},server,nowait", monitor.display()))
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .args(["-device", "virtio-rng-pci"]);
        if iso {
            cmd.arg("-cdrom").arg(boot).args(["-boot", "d"]);
        } else {
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=virtio", boot.display()));
        }
        for d in disks {
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=virtio", d.display()));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 (scripts/install-deps.sh installs qemu-system-x86)");
        Vm {
            child,
            console,
            monitor,
            _lock: lock,
        }
    }

    fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Waits until the console has a line containing `what`; the line.
    fn wait_line(&mut self, what: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = self.console_text();
            if let Some(line) = text.lines().find(|l| l.contains(what)) {
                return line.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "QEMU exited ({status}) before the console said {what:?}; console:\n{}",
                    tail(&text)
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "the console did not say {what:?} within {}s; console:\n{}",
                    timeout.as_secs(),
                    tail(&text)
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Presses the ACPI power button (QEMU's system_powerdown).
    fn power_button(&self) {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&self.monitor).unwrap();
        s.write_all(b"system_powerdown\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Waits for QEMU to exit by itself (the guest powered off).
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        false
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            support::signal(self.child.id(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

#[test]
fn an_iso_and_a_raw_image_boot_to_the_agent_and_the_power_button_powers_off() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("node.iso");
    let started = Instant::now();
    let first = built_sha(&build(dir.path(), "iso", &iso, &[]));
    eprintln!("iso built in {:.0}s", started.elapsed().as_secs_f64());
    // Reproducible: the same inputs, the same bytes.
    let again = dir.path().join("again.iso");
    assert_eq!(
        built_sha(&build(dir.path(), "iso", &again, &[])),
        first,
        "two builds of one ISO differ"
    );
    std::fs::remove_file(&again).unwrap();

    // The ISO with an empty disk beside it: the node formats it.
    let data = dir.path().join("data.img");
    std::fs::File::create(&data)
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    {
        let mut vm = Vm::boot(dir.path(), "iso", &iso, true, &[&data]);
        let banner = vm.wait_line("appliance, PID 1", BOOT);
        assert!(banner.contains("kernel 6."), "{banner}");
        vm.wait_line(
            "network up: eth0 10.0.2.15/24 (dhcp), gateway 10.0.2.2",
            BOOT,
        );
        vm.wait_line("persistent storage: /dev/vda on /var/lib, /etc/kubernetes and /var/log (formatted now, first boot)", BOOT);
        vm.wait_line("selfnode: containerd ready", BOOT);
        let status = vm.wait_line("selfnode: status: ", BOOT);
        assert!(
            status.contains("containerd=ready") && status.contains("kubelet=ready"),
            "{status}"
        );
    }

    // The raw image: its own data partition, formatted on the first boot
    // and kept on the second.
    let raw = dir.path().join("node.img");
    let raw_sha = built_sha(&build(
        dir.path(),
        "raw",
        &raw,
        &["--data-size-mib", "2048"],
    ));
    let raw_again = dir.path().join("again.img");
    assert_eq!(
        built_sha(&build(
            dir.path(),
            "raw",
            &raw_again,
            &["--data-size-mib", "2048"]
        )),
        raw_sha,
        "two builds of one raw image differ"
    );
    std::fs::remove_file(&raw_again).unwrap();
    for (boot, storage) in [
        (1, "formatted now, first boot"),
        (2, "kept from an earlier boot"),
    ] {
        let mut vm = Vm::boot(dir.path(), &format!("raw{boot}"), &raw, false, &[]);
        vm.wait_line("appliance, PID 1", BOOT);
        let line = vm.wait_line("persistent storage: ", BOOT);
        assert!(
            line.contains("/dev/vda2") && line.contains(storage),
            "boot {boot}: {line}"
        );
        vm.wait_line("selfnode: containerd ready", BOOT);
        vm.wait_line("selfnode: status: ", BOOT);
        vm.power_button();
        vm.wait_line(
            "powering off: stopping the node (selfnode stop)",
            Duration::from_secs(120),
        );
        assert!(
            vm.wait_exit(Duration::from_secs(300)),
            "boot {boot}: the machine did not power off; console:\n{}",
            tail(&vm.console_text())
        );
        assert!(vm.console_text().contains("selfnode: powering off now"));
    }
}

#[test]
fn a_bad_kernel_parameter_on_the_medium_boots_to_a_message_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("node.img");
    built_sha(&build(dir.path(), "raw", &raw, &["--data-size-mib", "0"]));
    // As a user edits the boot loader's file on the USB stick: the FAT
    // partition starts at 1 MiB.
    let fat = format!("{}@@1M", raw.display());
    let cfg = dir.path().join("syslinux.cfg");
    let out = Command::new("mcopy")
        .args(["-n", "-i", &fat, "::/syslinux.cfg"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "mcopy out: {}", text(&out));
    let edited = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("APPEND ", "APPEND selfnode.hostname=Bad_Name ");
    std::fs::write(&cfg, edited).unwrap();
    let out = Command::new("mcopy")
        .args(["-o", "-i", &fat])
        .arg(&cfg)
        .arg("::/syslinux.cfg")
        .output()
        .unwrap();
    assert!(out.status.success(), "mcopy in: {}", text(&out));

    let mut vm = Vm::boot(dir.path(), "bad", &raw, false, &[]);
    vm.wait_line("appliance, PID 1", BOOT);
    let line = vm.wait_line("appliance configuration: ", BOOT);
    assert!(
        line.contains("hostname")
            && line.contains("kernel command line")
            && line.contains("Bad_Name"),
        "{line}"
    );
    vm.wait_line("this machine stays up for inspection", BOOT);
    // It stays up, and starts nothing. A sleep, not a poll: this checks
    // that nothing happens (no power-off, nothing started), so there is no
    // state to wait for; 10 s is how long it must hold.
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "the machine went down"
    );
    // Neither selfnode's own lines nor the boot plan's say it went on.
    let console = vm.console_text();
    let lines: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("selfnode: ") || l.starts_with("[boot] "))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[boot] read_configuration (4/7): failed")),
        "the boot plan names the step that failed: {lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("agent started") || l.contains("network up")),
        "{lines:#?}"
    );
}

#[test]
fn bad_input_at_build_time_is_refused_with_exit_2_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out_iso = dir.path().join("out.iso");
    let listing = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };

    // A bundle without its kubelet.
    let bundle = support::bundle_dir();
    let partial = support::bundle_without(dir.path(), "bin/kubelet");
    // A bundle whose kubelet is not the one its SHA256SUMS lists.
    let damaged = support::damaged_bundle(
        &dir.path().join("damaged"),
        "bin/kubelet",
        "#!/bin/sh\necho not the kubelet\n",
    );
    let bad_config = dir.path().join("bad.yaml");
    std::fs::write(
        &bad_config,
        "apiVersion: selfnode.dev/v1alpha1\nkind: ApplianceConfiguration\nrole: master\n",
    )
    .unwrap();
    let not_a_kernel = dir.path().join("vmlinuz");
    std::fs::write(&not_a_kernel, vec![0u8; 8192]).unwrap();
    let before = listing(dir.path());

    let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
        (
            "missing kernel",
            vec!["--kernel".into(), "/nonexistent/vmlinuz".into()],
            vec!["/nonexistent/vmlinuz", "cannot be opened"],
        ),
        (
            "not a kernel",
            vec!["--kernel".into(), not_a_kernel.display().to_string()],
            vec!["not a Linux bzImage"],
        ),
        (
            "bundle missing a binary",
            vec!["--bundle".into(), partial.display().to_string()],
            vec!["kubelet"],
        ),
        (
            "bundle with a damaged binary",
            vec!["--bundle".into(), damaged.display().to_string()],
            vec!["checksum mismatch", "bin/kubelet", "the bundle is damaged"],
        ),
        (
            "output not writable",
            vec!["--out".into(), "/proc/selfnode-test.iso".into()],
            vec!["cannot write the image to /proc/selfnode-test.iso"],
        ),
        (
            "output directory missing",
            vec![
                "--out".into(),
                dir.path().join("no/such/dir/x.iso").display().to_string(),
            ],
            vec!["cannot write the image to"],
        ),
        (
            "invalid config file",
            vec!["--config".into(), bad_config.display().to_string()],
            vec!["role", "master", "init, join or control-plane-join"],
        ),
        (
            "missing config file",
            vec!["--config".into(), "/nonexistent/node.yaml".into()],
            vec!["--config", "/nonexistent/node.yaml"],
        ),
    ];
    for (what, args, want) in cases {
        let mut cmd = Command::new(selfnode_bin());
        cmd.args(["image", "build", "--format", "iso"]);
        if !args.iter().any(|a| a == "--out") {
            cmd.arg("--out").arg(&out_iso);
        }
        if !args.iter().any(|a| a == "--bundle") {
            cmd.arg("--bundle").arg(&bundle);
        }
        let out = cmd.args(&args).output().unwrap();
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {msg}");
        for w in want {
            assert!(msg.contains(w), "{what}: the message lacks {w:?}: {msg}");
        }
        assert_eq!(listing(dir.path()), before, "{what}: something was written");
    }
}
