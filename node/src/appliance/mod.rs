//! selfnode as PID 1 of an appliance image (`selfnode image build`).
//!
//! [`run`] is what `/init` does when the kernel starts it:
//!
//! 1. prints the banner, then runs the boot plan ([`boot`]): the root
//!    moved to a tmpfs, the basic file systems, the kernel modules, the
//!    configuration ([`config`]), the host name, the network ([`net`]) and
//!    the persistent storage ([`storage`]), one `[boot] step (i/n)` line
//!    each. An invalid configuration prints the field and the rule, and
//!    any failure the step that failed; the machine then stays up (no
//!    reboot loop) until it is powered off;
//! 2. starts `selfnode agent` (restarted if it exits) and, once containerd
//!    and the kubelet are ready, the role's command (`selfnode init` or
//!    `selfnode join`; both converge when run again, so every boot runs
//!    it), and prints each state change of the agent's components and a
//!    status line every minute;
//! 3. reaps every orphan, and on SIGTERM or SIGINT (Ctrl-Alt-Del) reboots,
//!    on SIGUSR1 halts, on SIGUSR2, SIGPWR or the ACPI power button powers
//!    off (busybox init's conventions): `selfnode stop` first, then every
//!    process, then the file systems.

pub mod boot;
pub mod config;
pub mod modprobe;
pub mod net;
pub mod storage;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The environment variable that says the root was moved already.
pub(crate) const SWITCHED: &str = "SELFNODE_ROOT_SWITCHED";
pub(crate) const NEW_ROOT: &str = "/sysroot";
pub(crate) const DATA_MOUNT: &str = "/mnt/data";
const AGENT_LOG: &str = "/var/log/selfnode/agent.log";
/// How often the status line is printed.
const STATUS_EVERY: Duration = Duration::from_secs(60);

/// True if the kernel started this process as the appliance's init: PID 1
/// *and* run as `/init`. PID 1 alone is not enough: in a container (the
/// selfnode-network DaemonSet runs `selfnode network-agent`) selfnode is
/// PID 1 of its PID namespace too.
pub fn is_init() -> bool {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    started_as_init(std::process::id(), Path::new(&argv0))
}

/// [`is_init`]'s rule, for a PID and `argv[0]`.
pub fn started_as_init(pid: u32, argv0: &Path) -> bool {
    pid == 1 && argv0 == Path::new("/init")
}

/// One line on the console.
pub(crate) fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "selfnode: {msg}");
    let _ = out.flush();
}

/// The last signal that asks for a shutdown (0: none).
static SHUTDOWN: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SHUTDOWN.store(sig, Ordering::SeqCst);
}

/// PID 1. Never returns: the machine powers off, reboots or halts.
pub fn run() -> ! {
    // The kernel starts init with HOME and TERM only; the agent, mke2fs and
    // the kubelet look their programs up on PATH.
    if std::env::var_os("PATH").is_none() {
        std::env::set_var(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    install_signals();
    say(&format!(
        "selfnode {} appliance, PID 1, kernel {}",
        env!("CARGO_PKG_VERSION"),
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let booted = boot::run();
    spawn_power_button_watch();
    let config = match booted {
        Ok(config) => config,
        Err(boot::BootError::Config(e)) => {
            say(&format!("{e}"));
            say("the configuration is invalid: this machine stays up for inspection and starts nothing; fix it (the image's --config, or the selfnode.* kernel parameters in the boot loader's configuration) and reboot");
            idle_forever();
        }
        Err(boot::BootError::Step(e)) => {
            say(&format!("{e:#}"));
            say("the node cannot start: this machine stays up for inspection; power it off, fix the cause and boot again");
            idle_forever();
        }
    };
    if let Err(e) = supervise(&config) {
        say(&format!("{e:#}"));
        say("the node cannot start: this machine stays up for inspection; power it off, fix the cause and boot again");
        idle_forever();
    }
    unreachable!("boot runs until shutdown")
}

fn install_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPWR,
    ] {
        // SAFETY: the handler only stores into an atomic, which is
        // async-signal-safe; it replaces no handler anything relies on.
        let _ = unsafe { sigaction(sig, &action) };
    }
    // Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting at once.
    let _ = nix::sys::reboot::set_cad_enabled(false);
}

/// Watches the input devices named "Power Button" for KEY_POWER and asks
/// for a power-off (as SIGUSR2 would).
fn spawn_power_button_watch() {
    let Ok(rd) = std::fs::read_dir("/sys/class/input") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let label = std::fs::read_to_string(e.path().join("device/name")).unwrap_or_default();
        if !label.contains("Power Button") {
            continue;
        }
        let dev = format!("/dev/input/{name}");
        std::thread::spawn(move || {
            use std::io::Read;
            let Ok(mut f) = std::fs::File::open(&dev) else {
                return;
            };
            // struct input_event: timeval (16 bytes), type u16, code u16, value i32.
            let mut ev = [0u8; 24];
            while f.read_exact(&mut ev).is_ok() {
                let kind = u16::from_ne_bytes([ev[16], ev[17]]);
                let code = u16::from_ne_bytes([ev[18], ev[19]]);
                let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
                if kind == 1 && code == 116 && value == 1 {
                    SHUTDOWN.store(libc::SIGUSR2, Ordering::SeqCst);
                }
            }
        });
    }
}

/// Reaps every exited child; returns the (pid, status) pairs.
fn reap() -> Vec<(i32, i32)> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut out = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid.as_raw(), code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => out.push((pid.as_raw(), 128 + sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
    out
}

/// Waits for a shutdown request, reaping orphans; then shuts down.
fn idle_forever() -> ! {
    loop {
        reap();
        if SHUTDOWN.load(Ordering::SeqCst) != 0 {
            shutdown(None);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A child and what to do when it ends.
struct Running {
    child: Child,
    started: Instant,
}

/// Starts `selfnode agent` with its output piped into [`AGENT_LOG`],
/// capped as the agent caps its components' logs (on the data disk when
/// there is one, in memory otherwise).
fn start_agent() -> anyhow::Result<Running> {
    use crate::agent::logs::{RotatingLog, DEFAULT_CAP};
    let log = std::sync::Arc::new(std::sync::Mutex::new(RotatingLog::open(
        Path::new(AGENT_LOG),
        DEFAULT_CAP,
    )?));
    let mut child = Command::new("/init")
        .arg("agent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pipes: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("piped")),
        Box::new(child.stderr.take().expect("piped")),
    ];
    for pipe in pipes {
        let log = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut reader = std::io::BufReader::new(pipe);
            let mut line = Vec::new();
            while reader
                .read_until(b'\n', &mut line)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                if let Ok(mut l) = log.lock() {
                    let _ = l.write_line(&line);
                }
                line.clear();
            }
        });
    }
    say(&format!(
        "agent started (pid {}, log {AGENT_LOG})",
        child.id()
    ));
    Ok(Running {
        child,
        started: Instant::now(),
    })
}

/// Where the role's join string waits for it (0600, on the tmpfs).
const JOIN_STRING_FILE: &str = "/run/selfnode/join-string";
/// The role's standard output: its summary holds a join string (init's),
/// so it goes to a 0600 file, not the console; its progress lines
/// (standard error) stay on the console.
const ROLE_OUTPUT: &str = "/var/log/selfnode/role.log";

/// The role's command with its input and output in place: the join string
/// written to [`JOIN_STRING_FILE`], standard output to [`ROLE_OUTPUT`].
fn role_stdio(config: &config::ApplianceConfig) -> anyhow::Result<Command> {
    if let config::Role::Join(js) | config::Role::ControlPlaneJoin(js) = &config.role {
        crate::fsutil::ensure_dir(Path::new("/run/selfnode"), 0o700)?;
        crate::fsutil::write_atomic(Path::new(JOIN_STRING_FILE), js.as_bytes(), 0o600)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(ROLE_OUTPUT)?;
    let mut cmd = role_command(config);
    cmd.stdin(Stdio::null()).stdout(out);
    Ok(cmd)
}

fn role_command(config: &config::ApplianceConfig) -> Command {
    let mut cmd = Command::new("/init");
    match &config.role {
        config::Role::Init => {
            cmd.arg("init");
            if config.allow_workloads {
                cmd.arg("--allow-workloads");
            }
        }
        // The join string goes in a 0600 file, never in the arguments
        // (every process on the machine can read those).
        config::Role::Join(_) => {
            cmd.args(["join", "--token-file", JOIN_STRING_FILE]);
        }
        config::Role::ControlPlaneJoin(_) => {
            cmd.args(["join", "--control-plane", "--token-file", JOIN_STRING_FILE]);
        }
    }
    cmd
}

pub(crate) fn role_name(role: &config::Role) -> &'static str {
    match role {
        config::Role::Init => "init",
        config::Role::Join(_) => "join",
        config::Role::ControlPlaneJoin(_) => "control-plane join",
    }
}

/// Runs the agent and the role until a shutdown is asked for.
fn supervise(config: &config::ApplianceConfig) -> anyhow::Result<()> {
    let paths = crate::paths::HostPaths::under("/");
    let mut agent = Some(start_agent()?);
    let mut agent_backoff = Duration::from_secs(2);
    let mut agent_restart_at: Option<Instant> = None;
    let mut role: Option<Child> = None;
    let mut role_done = false;
    let mut role_retry_at: Option<Instant> = None;
    let mut states: std::collections::BTreeMap<String, String> = Default::default();
    let mut last_status = Instant::now() - STATUS_EVERY;
    let mut printed_first = false;
    loop {
        if SHUTDOWN.load(Ordering::SeqCst) != 0 {
            shutdown(agent.as_mut().map(|a| &mut a.child));
        }
        for (pid, code) in reap() {
            if agent.as_ref().is_some_and(|a| a.child.id() as i32 == pid) {
                let ran = agent
                    .take()
                    .map(|a| a.started.elapsed())
                    .unwrap_or_default();
                if ran > Duration::from_secs(60) {
                    agent_backoff = Duration::from_secs(2);
                }
                say(&format!(
                    "the agent exited (status {code}); starting it again in {}s (its log: {AGENT_LOG})",
                    agent_backoff.as_secs()
                ));
                agent_restart_at = Some(Instant::now() + agent_backoff);
                agent_backoff = (agent_backoff * 2).min(Duration::from_secs(60));
            }
            if role.as_ref().is_some_and(|r| r.id() as i32 == pid) {
                role = None;
                match code {
                    0 => {
                        role_done = true;
                        say(&format!(
                            "{} done: this node is part of its cluster",
                            role_name(&config.role)
                        ));
                    }
                    2 | 3 => {
                        role_done = true;
                        say(&format!(
                            "{} failed with exit {code} (wrong input or conflicting state; see the lines above): not retried",
                            role_name(&config.role)
                        ));
                    }
                    _ => {
                        say(&format!(
                            "{} failed (exit {code}); trying again in 30s",
                            role_name(&config.role)
                        ));
                        role_retry_at = Some(Instant::now() + Duration::from_secs(30));
                    }
                }
            }
        }
        if agent.is_none() && agent_restart_at.is_some_and(|t| Instant::now() >= t) {
            agent_restart_at = None;
            match start_agent() {
                Ok(a) => agent = Some(a),
                Err(e) => {
                    say(&format!("cannot start the agent: {e:#}"));
                    agent_restart_at = Some(Instant::now() + agent_backoff);
                }
            }
        }
        let status: Option<crate::status::AgentStatus> = std::fs::read(paths.agent_status())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(st) = &status {
            // A service the agent no longer runs (the temporary control
            // plane after the pivot) leaves the line, not frozen in it.
            states.retain(|name, _| {
                let kept = st.components.iter().any(|c| &c.name == name);
                if !kept {
                    say(&format!("{name} removed"));
                }
                kept
            });
            for c in &st.components {
                let now = c.state.as_str().to_string();
                if states.get(&c.name) != Some(&now) {
                    let why = c
                        .last_error
                        .as_deref()
                        .filter(|_| now != "ready")
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    say(&format!("{} {now}{why}", c.name));
                    states.insert(c.name.clone(), now);
                }
            }
        }
        let ready = |name: &str| states.get(name).map(String::as_str) == Some("ready");
        let base_ready = ready("containerd") && ready("kubelet");
        if base_ready && (!printed_first || last_status.elapsed() >= STATUS_EVERY) {
            printed_first = true;
            last_status = Instant::now();
            let line: Vec<String> = states.iter().map(|(k, v)| format!("{k}={v}")).collect();
            say(&format!("status: {}", line.join(" ")));
        }
        if base_ready
            && !role_done
            && role.is_none()
            && role_retry_at.is_none_or(|t| Instant::now() >= t)
        {
            role_retry_at = None;
            say(&format!("running {}", role_name(&config.role)));
            match role_stdio(config).and_then(|mut cmd| Ok(cmd.spawn()?)) {
                Ok(c) => role = Some(c),
                Err(e) => {
                    say(&format!("cannot run {}: {e}", role_name(&config.role)));
                    role_retry_at = Some(Instant::now() + Duration::from_secs(30));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Stops the node and the machine; never returns.
fn shutdown(agent: Option<&mut Child>) -> ! {
    use nix::sys::reboot::{reboot, RebootMode};
    use nix::sys::signal::{kill, Signal};
    let sig = SHUTDOWN.load(Ordering::SeqCst);
    let (mode, what) = match sig {
        libc::SIGUSR1 => (RebootMode::RB_HALT_SYSTEM, "halting"),
        libc::SIGUSR2 | libc::SIGPWR => (RebootMode::RB_POWER_OFF, "powering off"),
        _ => (RebootMode::RB_AUTOBOOT, "rebooting"),
    };
    say(&format!("{what}: stopping the node (selfnode stop)"));
    if let Ok(mut stop) = Command::new("/init")
        .arg("stop")
        .stdin(Stdio::null())
        .spawn()
    {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match stop.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                _ => {
                    let _ = stop.kill();
                    break;
                }
            }
        }
    }
    if let Some(a) = agent {
        let _ = kill(nix::unistd::Pid::from_raw(a.id() as i32), Signal::SIGTERM);
    }
    std::thread::sleep(Duration::from_secs(1));
    say(&format!("{what}: stopping every process"));
    let everyone = nix::unistd::Pid::from_raw(-1);
    let _ = kill(everyone, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        reap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = kill(everyone, Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    reap();
    nix::unistd::sync();
    for at in ["/etc/kubernetes", "/var/lib", DATA_MOUNT] {
        let _ = nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH);
    }
    nix::unistd::sync();
    say(&format!("{what} now"));
    let _ = reboot(mode);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pid_1_run_as_slash_init_is_the_appliance_init() {
        assert!(started_as_init(1, Path::new("/init")));
        // The network agent's container: PID 1 of its namespace.
        assert!(!started_as_init(1, Path::new("/usr/local/bin/selfnode")));
        assert!(!started_as_init(1, Path::new("selfnode")));
        // The agent the appliance's init starts runs /init too.
        assert!(!started_as_init(113, Path::new("/init")));
    }
}
