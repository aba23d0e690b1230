//! The host agent against the real containerd, runc and kubelet of the bundle.

mod support;

use std::time::Duration;
use support::{bundle_version, pid_alive, signal, TestHost};

const START: Duration = Duration::from_secs(180);

fn pid_of(st: &serde_json::Value, name: &str) -> u32 {
    TestHost::component(st, name)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} has no pid: {st:#}")) as u32
}

#[test]
fn agent_starts_containerd_and_kubelet_and_restarts_them_after_kill_9() {
    let mut host = TestHost::new();
    host.start_agent();
    let st = host.wait_healthy(START);

    for name in ["containerd", "kubelet"] {
        let old = pid_of(&st, name);
        let restarts = TestHost::component(&st, name)["restarts"].as_u64().unwrap();
        signal(old, libc::SIGKILL);
        let st = host.wait_for(&format!("{name} restarted and ready"), START, |st| {
            let c = TestHost::component(st, name);
            c["state"] == "ready" && c["pid"].as_u64().is_some_and(|p| p as u32 != old)
        });
        let c = TestHost::component(&st, name);
        assert_eq!(c["restarts"].as_u64().unwrap(), restarts + 1, "{st:#}");
        assert!(
            c["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("SIGKILL"),
            "the exit cause is reported: {c:#}"
        );
        assert!(!pid_alive(old), "{name} pid {old} is gone");
    }
    host.wait_healthy(START);
    assert!(
        host.agent_exited().is_none(),
        "the agent itself kept running"
    );
}

/// A running container means a shim (double-forked, not the agent's child)
/// and a container process: what an agent stop keeps and a node stop ends.
struct RunningContainer {
    id: String,
    pid: u32,
    shims: Vec<u32>,
}

fn run_container(host: &TestHost, name: &str) -> RunningContainer {
    let pause = format!("registry.k8s.io/pause:{}", bundle_version("PAUSE_VERSION"));
    let id = format!("{name}-{}", std::process::id());
    let out = host.ctr(&["-n", "k8s.io", "run", "-d", &pause, &id]);
    assert!(
        out.status.success(),
        "ctr run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shims: Vec<u32> = host
        .leftover_processes()
        .into_iter()
        .filter(|(_, c)| c.contains("containerd-shim"))
        .map(|(p, _)| p)
        .collect();
    assert!(
        !shims.is_empty(),
        "a shim runs for the container: {:?}",
        host.leftover_processes()
    );
    let pid = task_pid(host, &id).unwrap_or_else(|| panic!("container task {id} listed"));
    assert!(pid_alive(pid));
    RunningContainer { id, pid, shims }
}

/// The PID of a running task, from containerd's own list.
fn task_pid(host: &TestHost, id: &str) -> Option<u32> {
    let tasks = host.ctr(&["-n", "k8s.io", "task", "ls"]);
    String::from_utf8_lossy(&tasks.stdout)
        .lines()
        .find(|l| l.starts_with(id) && l.contains("RUNNING"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
}

fn assert_nothing_runs(host: &TestHost, gone: &[(u32, &str)]) {
    for (pid, what) in gone {
        assert!(!pid_alive(*pid), "{what} (pid {pid}) still running");
    }
    assert_eq!(
        host.leftover_processes(),
        vec![],
        "no process of this host outlives a node stop"
    );
    assert_eq!(
        support::mounts_under(&host.root),
        Vec::<String>::new(),
        "no mount of this host is left"
    );
}

#[test]
fn selfnode_stop_stops_kubelet_containerd_and_every_shim() {
    let mut host = TestHost::new();
    host.start_agent();
    let st = host.wait_healthy(START);
    let (containerd, kubelet) = (pid_of(&st, "containerd"), pid_of(&st, "kubelet"));
    let c = run_container(&host, "node-stop");

    let out = host.stop_node(Duration::from_secs(60));
    assert!(
        out.status.success(),
        "selfnode stop: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        host.agent_log()
    );
    let mut gone = vec![
        (containerd, "containerd"),
        (kubelet, "kubelet"),
        (c.pid, "the container"),
    ];
    gone.extend(c.shims.iter().map(|p| (*p, "a shim")));
    assert_nothing_runs(&host, &gone);
    let st = host.status();
    assert_eq!(st["agent"]["running"], false);
    for name in ["containerd", "images", "kubelet", "api-lb"] {
        assert_eq!(TestHost::component(&st, name)["state"], "stopped", "{st:#}");
    }
}

#[test]
fn sigterm_keeps_containers_running_and_the_next_agent_adopts_them() {
    let mut host = TestHost::new();
    host.start_agent();
    let st = host.wait_healthy(START);
    let (containerd, kubelet) = (pid_of(&st, "containerd"), pid_of(&st, "kubelet"));
    let c = run_container(&host, "agent-stop");
    // The first start read every file SHA256SUMS lists.
    let listed = std::fs::read_to_string(support::bundle_dir().join("SHA256SUMS"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let log = host.agent_log();
    assert!(
        log.lines().any(|l| l.contains("bundle checksums verified")
            && l.contains(&format!(" read={listed} listed={listed} "))),
        "{log}"
    );

    let exit = host.stop_agent(Duration::from_secs(60));
    assert!(
        exit.success(),
        "agent exits 0 on SIGTERM: {exit:?}\n{}",
        host.agent_log()
    );
    for (pid, what) in [(containerd, "containerd"), (kubelet, "kubelet")] {
        assert!(!pid_alive(pid), "{what} (pid {pid}) stops with the agent");
    }
    assert!(pid_alive(c.pid), "the container outlives an agent stop");
    for pid in &c.shims {
        assert!(
            pid_alive(*pid),
            "its shim (pid {pid}) outlives an agent stop"
        );
    }

    // The next agent's containerd reconnects to the shim: the same process
    // is the running task.
    host.start_agent();
    host.wait_healthy(START);
    // Its bundle check read no file: none changed since the first agent's.
    let log = host.agent_log();
    assert!(
        log.lines()
            .any(|l| l.contains("bundle checksums verified") && l.contains(" read=0 ")),
        "{log}"
    );
    assert_eq!(
        task_pid(&host, &c.id),
        Some(c.pid),
        "the new containerd adopts the running container\n{}",
        host.component_log("containerd")
    );

    // Stopped again, then 'selfnode stop' with no agent running stops what
    // the agent stop left.
    assert!(host.stop_agent(Duration::from_secs(60)).success());
    assert!(pid_alive(c.pid));
    let out = host.stop_node(Duration::from_secs(60));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "selfnode stop without an agent: {said}"
    );
    assert!(said.contains("stopped 1 container(s)"), "{said}");
    let mut gone = vec![(c.pid, "the container")];
    gone.extend(c.shims.iter().map(|p| (*p, "a shim")));
    assert_nothing_runs(&host, &gone);
}

#[test]
fn a_second_agent_refuses_and_the_first_keeps_running() {
    let mut host = TestHost::new();
    let first = host.start_agent();
    host.wait_healthy(START);

    let out = host.agent_command(&[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "conflict exit code; stderr: {stderr}"
    );
    assert!(
        stderr.contains("already running") && stderr.contains(&first.to_string()),
        "{stderr}"
    );

    assert!(host.agent_exited().is_none(), "first agent still running");
    let st = host.wait_healthy(Duration::from_secs(10));
    assert_eq!(st["agent"]["pid"], first);
}

#[test]
fn an_unwritable_containerd_socket_dir_is_refused_before_anything_starts() {
    let host = TestHost::new();
    let ro = host.root.join("readonly");
    std::fs::create_dir_all(&ro).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&ro)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a read-only tmpfs");
    let socket = ro.join("containerd.sock");

    let out = host
        .agent_command(&["--containerd-socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    support::unmount_under(&ro);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not writable") && stderr.contains(ro.to_str().unwrap()),
        "{stderr}"
    );
    assert!(
        stderr.contains("Read-only file system"),
        "says why: {stderr}"
    );
    assert_eq!(host.leftover_processes(), vec![], "nothing was started");
    assert!(
        !host.root.join("var/lib/selfnode/containerd.toml").exists(),
        "no config written"
    );
}

#[test]
fn a_missing_bundle_is_a_configuration_error() {
    let host = TestHost::new();
    let out = host
        .selfnode()
        .args(["agent", "--bundle"])
        .arg(host.root.join("nope"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nope"), "names the directory: {stderr}");
    assert_eq!(host.leftover_processes(), vec![]);
}

#[test]
fn a_damaged_bundle_binary_is_refused_before_anything_starts() {
    let host = TestHost::new();
    let bundle =
        support::damaged_bundle(&host.root, "bin/containerd", "#!/bin/sh\nexec sleep 1000\n");
    let fake = bundle.join("bin/containerd");
    let out = host
        .selfnode()
        .args(["agent", "--bundle"])
        .arg(&bundle)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("checksum mismatch") && stderr.contains(&fake.display().to_string()),
        "names the file: {stderr}"
    );
    assert_eq!(host.leftover_processes(), vec![], "nothing was started");
    assert!(
        !host
            .root
            .join("var/lib/selfnode/bundle-checksums.json")
            .exists(),
        "no record of a failed pass"
    );
}

#[test]
fn status_without_an_agent_says_so() {
    let host = TestHost::new();
    let out = host.selfnode().arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("agent: not running"));
    let st = host.status();
    assert_eq!(st["agent"]["running"], false);
    assert_eq!(st["healthy"], false);
}
