//! The appliance's boot, as a plan over the sequences' runner: one
//! `[boot] step (i/n)` line per step on the console, what each step found
//! in it, and the step that failed named. Everything before the node's
//! steady state (`super::supervise`: the agent and the role):
//!
//! 1. `switch_root`: the root moves from the initramfs (the kernel's
//!    rootfs, on which `pivot_root(2)` refuses to work, so no container
//!    could start) to a tmpfs, file by file, and selfnode executes itself
//!    there (as `switch_root` does); the new process runs the plan again
//!    and finds this step done.
//! 2. `mount_basics`: `/proc`, `/sys`, `/dev`, `/dev/pts`, `/dev/shm`,
//!    `/run` and the unified cgroup hierarchy (cgroup v2); `/` shared (the
//!    kubelet's mount propagation needs it).
//! 3. `load_modules` ([`dist::appliance::BOOT_MODULES`]).
//! 4. `read_configuration` ([`super::config`]): the image's file and the
//!    kernel command line. An invalid one names the field and the rule and
//!    the machine stays up (no reboot loop).
//! 5. `set_hostname`, 6. `configure_network` ([`super::net`]),
//!    7. `prepare_storage` ([`super::storage`]).
//!
//! Each step observes first (a mount that is there, a host name that is
//! set, a data disk already mounted), so the plan converges whatever ran
//! before.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;

use super::{config, net, storage, DATA_MOUNT, NEW_ROOT, SWITCHED};
use crate::sequences::plan::{run_unless, steps, Action, Plan};
use crate::sequences::runner::{self, StepReport};

steps! {
    /// One step of the appliance's boot.
    pub enum BootStep {
        SwitchRoot => "switch_root",
        MountBasics => "mount_basics",
        LoadModules => "load_modules",
        ReadConfiguration => "read_configuration",
        SetHostname => "set_hostname",
        ConfigureNetwork => "configure_network",
        PrepareStorage => "prepare_storage",
    }
}

type Runner = runner::Runner<BootStep>;

const SWITCHED_ALREADY: &str = "the root is a tmpfs already (this process was started there)";

/// The boot's plan: every step, the root switch skipped once done.
pub fn plan(switched: bool) -> Plan<BootStep> {
    let run = Some(Action::Run);
    Plan::one_lane(
        "boot",
        &[
            (
                BootStep::SwitchRoot,
                Some(run_unless(switched, SWITCHED_ALREADY)),
            ),
            (BootStep::MountBasics, run),
            (BootStep::LoadModules, run),
            (BootStep::ReadConfiguration, run),
            (BootStep::SetHostname, run),
            (BootStep::ConfigureNetwork, run),
            (BootStep::PrepareStorage, run),
        ],
    )
}

/// Why the boot stopped.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The configuration is wrong: fixing it is the only way on.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Anything else: the step that failed says why.
    #[error(transparent)]
    Step(#[from] anyhow::Error),
}

/// What the steps share.
#[derive(Default)]
struct Boot {
    config: OnceLock<config::ApplianceConfig>,
    /// The network card the node uses.
    card: OnceLock<String>,
}

impl Boot {
    fn config(&self) -> anyhow::Result<&config::ApplianceConfig> {
        self.config
            .get()
            .context("read_configuration has not run before this step")
    }
}

/// Runs the boot plan; returns the configuration the node runs with.
pub fn run() -> Result<config::ApplianceConfig, BootError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the boot's runtime")?;
    let boot = Boot::default();
    let plan = plan(std::env::var_os(SWITCHED).is_some());
    let run = Runner::new(&plan, false);
    let result = rt.block_on(runner::run_plan(&plan, &run, |step| {
        execute(step, &run, &boot)
    }));
    if let Err(e) = result {
        // A configuration error is the configuration's, whatever step
        // reports it.
        return Err(match e.downcast::<config::ConfigError>() {
            Ok(c) => BootError::Config(c),
            Err(e) => BootError::Step(e),
        });
    }
    boot.config
        .into_inner()
        .ok_or_else(|| BootError::Step(anyhow::anyhow!("the boot plan read no configuration")))
}

async fn execute(step: BootStep, run: &Runner, boot: &Boot) -> anyhow::Result<StepReport> {
    match step {
        BootStep::SwitchRoot => {
            run.converge(step, || async {
                switch_root()?;
                Ok(true)
            })
            .await
        }
        BootStep::MountBasics => run.converge(step, || async { mount_basics() }).await,
        BootStep::LoadModules => {
            run.converge(step, || async {
                let failed = load_modules();
                run.say(
                    step,
                    &if failed.is_empty() {
                        format!(
                            "kernel modules loaded ({})",
                            dist::appliance::BOOT_MODULES.len()
                        )
                    } else {
                        format!(
                            "some kernel modules did not load (built in, or no such hardware): {}",
                            failed.join("; ")
                        )
                    },
                );
                Ok(true)
            })
            .await
        }
        BootStep::ReadConfiguration => {
            run.converge(step, || async {
                let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
                let file = std::fs::read_to_string(dist::appliance::CONFIG_PATH).ok();
                let config = config::parse(
                    file.as_deref().map(|t| (dist::appliance::CONFIG_PATH, t)),
                    &cmdline,
                )?;
                run.say(step, &format!("role {}", super::role_name(&config.role)));
                if cmdline
                    .split_whitespace()
                    .any(|p| p.starts_with("selfnode.join="))
                {
                    run.say(
                        step,
                        "warning: the join string is on the kernel command line, which every process and container of this machine can read (/proc/cmdline); put it in the configuration file on the medium instead",
                    );
                }
                let _ = boot.config.set(config);
                Ok(false)
            })
            .await
        }
        BootStep::SetHostname => {
            run.converge(step, || async { off_runtime(|| set_hostname(run, boot)) })
                .await
        }
        BootStep::ConfigureNetwork => {
            run.converge(step, || async {
                off_runtime(|| configure_network(run, boot))
            })
            .await
        }
        BootStep::PrepareStorage => {
            run.converge(step, || async { prepare_storage(run, boot) })
                .await
        }
    }
}

/// Runs `f` on a thread of its own and waits for it: the network steps
/// drive rtnetlink on a runtime of their own (`net`), which cannot be
/// started on the boot plan's runtime thread. Nothing else runs meanwhile.
fn off_runtime<T: Send>(f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the boot step's thread panicked")))
    })
}

/// `set_hostname`: the configured name, else `selfnode-` and the last three
/// bytes of the network card's MAC.
fn set_hostname(run: &Runner, boot: &Boot) -> anyhow::Result<bool> {
    let config = boot.config()?;
    let sys = Path::new("/sys");
    let card = net::pick_interface(sys, config.interface.as_deref(), Duration::from_secs(20))?;
    let mac = std::fs::read_to_string(sys.join("class/net").join(&card).join("address"))
        .unwrap_or_default();
    let hostname = config.hostname.clone().unwrap_or_else(|| {
        let tail: String = mac.trim().split(':').skip(3).collect();
        format!("selfnode-{tail}")
    });
    let _ = boot.card.set(card);
    let current = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    if current == hostname {
        return Ok(false);
    }
    nix::unistd::sethostname(&hostname)?;
    run.say(BootStep::SetHostname, &format!("hostname {hostname}"));
    Ok(true)
}

/// `configure_network`: the card's address and routes (DHCP or static) and
/// the resolver.
fn configure_network(run: &Runner, boot: &Boot) -> anyhow::Result<bool> {
    let config = boot.config()?;
    let sys = Path::new("/sys");
    let card = boot
        .card
        .get()
        .context("set_hostname has not picked the network card")?;
    let step = BootStep::ConfigureNetwork;
    run.say(
        step,
        &format!(
            "network: {card}, {}",
            match config.addressing {
                config::Addressing::Dhcp => "DHCP".to_string(),
                config::Addressing::Static {
                    address, prefix, ..
                } => format!("static {address}/{prefix}"),
            }
        ),
    );
    let state = net::configure(
        sys,
        card,
        &config.addressing,
        &config.dns,
        Duration::from_secs(60),
    )?;
    let hostname = nix::unistd::gethostname()?.to_string_lossy().into_owned();
    net::write_resolver(Path::new("/etc"), &state, &hostname)?;
    run.say(
        step,
        &format!(
            "network up: {} {}/{} ({}), gateway {}, name servers {}",
            state.interface,
            state.address,
            state.prefix,
            state.how,
            state
                .gateway
                .map(|g| g.to_string())
                .unwrap_or_else(|| "none".into()),
            if state.dns.is_empty() {
                "none".to_string()
            } else {
                state
                    .dns
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
    );
    Ok(true)
}

/// `prepare_storage`: the data device, formatted only when blank, mounted
/// with `/var/lib`, `/etc/kubernetes` and `/var/log` bound from it.
fn prepare_storage(run: &Runner, boot: &Boot) -> anyhow::Result<bool> {
    let config = boot.config()?;
    let step = BootStep::PrepareStorage;
    if crate::agent::drain::is_mount_point(Path::new(DATA_MOUNT)) {
        run.say(step, &format!("{DATA_MOUNT} is mounted already"));
        return Ok(false);
    }
    let picked = storage::pick(
        Path::new("/sys"),
        Path::new("/dev"),
        config.data_device.as_deref(),
        Duration::from_secs(5),
    )?;
    match picked {
        Some(dev) => {
            let st = storage::prepare(&dev, Path::new(DATA_MOUNT), &|m: &str| run.say(step, m))?;
            run.say(
                step,
                &format!(
                    "persistent storage: {} on /var/lib, /etc/kubernetes and /var/log ({})",
                    st.device,
                    if st.formatted {
                        "formatted now, first boot"
                    } else {
                        "kept from an earlier boot"
                    }
                ),
            );
            Ok(true)
        }
        None => {
            run.say(step, "no persistent storage (no selfnode-data partition or label, no blank disk): this node forgets everything when it powers off");
            Ok(false)
        }
    }
}

/// Copies the initramfs into a tmpfs and executes `/init` there.
fn switch_root() -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    use std::process::Command;
    std::fs::create_dir_all(NEW_ROOT)?;
    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )?;
    move_tree(Path::new("/"), Path::new(NEW_ROOT))?;
    std::env::set_current_dir(NEW_ROOT)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    nix::unistd::chroot(".")?;
    std::env::set_current_dir("/")?;
    let err = std::os::unix::process::CommandExt::exec(Command::new("/init").env(SWITCHED, "1"));
    Err(err.into())
}

/// Moves every entry under `from` (but `NEW_ROOT`) into `to`, removing
/// each file once copied so memory use stays flat.
fn move_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    // The whole listing first: removing entries while a ramfs directory
    // is being read skips some of the others.
    let listing: Vec<std::fs::DirEntry> = std::fs::read_dir(from)?.flatten().collect();
    for e in listing {
        let src = e.path();
        if src == Path::new(NEW_ROOT) {
            continue;
        }
        let dst = to.join(e.file_name());
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            symlink(std::fs::read_link(&src)?, &dst)?;
            std::fs::remove_file(&src)?;
        } else if meta.is_dir() {
            std::fs::create_dir_all(&dst)?;
            std::fs::set_permissions(
                &dst,
                std::fs::Permissions::from_mode(meta.permissions().mode()),
            )?;
            move_tree(&src, &dst)?;
            let _ = std::fs::remove_dir(&src);
        } else if meta.is_file() {
            std::fs::copy(&src, &dst)?;
            std::fs::remove_file(&src)?;
        }
    }
    Ok(())
}

/// `mount_basics`: true when it mounted anything.
fn mount_basics() -> anyhow::Result<bool> {
    use nix::mount::{mount, MsFlags};
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 7] = [
        ("proc", "/proc", "proc", nosuid, None),
        ("sysfs", "/sys", "sysfs", nosuid, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=620,ptmxmode=666"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None),
    ];
    let mut mounted = false;
    for (src, at, fstype, flags, data) in mounts {
        std::fs::create_dir_all(at)?;
        match mount(Some(src), at, Some(fstype), flags, data) {
            Ok(()) => mounted = true,
            Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => anyhow::bail!("mounting {fstype} on {at}: {e}"),
        }
    }
    // Every controller for the kubelet's pods.
    if let Ok(list) = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
        let enable: String = list.split_whitespace().map(|c| format!("+{c} ")).collect();
        let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", enable.trim());
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SHARED,
        None::<&str>,
    )?;
    for dir in ["/var/log/selfnode", "/var/lib", "/etc/kubernetes", "/tmp"] {
        std::fs::create_dir_all(dir)?;
    }
    Ok(mounted)
}

/// `load_modules`: what failed to load, if anything (built in, or no such
/// hardware: not an error).
fn load_modules() -> Vec<String> {
    // The kernel runs this for the modules it needs on demand.
    let _ = std::fs::write("/proc/sys/kernel/modprobe", "/usr/sbin/modprobe");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = Path::new("/usr/lib/modules").join(release.trim());
    let mut failed = Vec::new();
    for m in dist::appliance::BOOT_MODULES {
        if let Err(e) = super::modprobe::load(&dir, m, 0) {
            failed.push(format!("{m} ({e})"));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_with_a_runtime_of_its_own_runs_from_the_plans_runtime() {
        // What configure_network does (rtnetlink on a runtime of its own),
        // called from the boot plan's runtime: a panic without off_runtime.
        let plan_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = plan_rt.block_on(async {
            off_runtime(|| {
                let own = tokio::runtime::Builder::new_current_thread().build()?;
                Ok(own.block_on(async { 42 }))
            })
        });
        assert_eq!(got.unwrap(), 42);
    }
    use crate::sequences::plan::Step as _;

    #[test]
    fn the_process_started_on_the_tmpfs_skips_the_root_switch_and_runs_the_rest() {
        let first = plan(false);
        assert_eq!(first.runs().count(), BootStep::ALL.len());
        let again = plan(true);
        let skipped: Vec<&str> = again
            .steps()
            .filter(|p| matches!(p.action, Action::Skip(_)))
            .map(|p| p.step.name())
            .collect();
        assert_eq!(skipped, ["switch_root"]);
        assert_eq!(again.len(), first.len(), "the same (i/n) in both processes");
    }
}
