//! The sequences: named steps that observe, then converge, each a plan
//! over one runner (`[name] step (i/n): done, 1.2s` lines, skip reasons,
//! failpoints, resume after a kill anywhere).
//!
//! - [`init`]: `selfnode init`, `etcd snapshot restore` and `recover
//!   --from-snapshot` (one step set, three plans).
//! - [`join`]: `selfnode join`, worker or control plane.
//! - [`recover`]: `selfnode recover`, lost control-plane parts.
//! - [`reset`]: `selfnode reset`.
//! - [`upgrade`]: `selfnode upgrade plan` (its checks and steps).
//!
//! Sequences stand above the agent (they ask it through
//! `control`), and the agent never imports a sequence. Each sequence
//! has its own closed step type ([`plan::steps!`]), so its dispatch is
//! exhaustive.

pub mod init;
pub mod join;
pub mod others;
pub mod plan;
pub mod recover;
pub mod reset;
pub mod runner;
pub mod upgrade;

use std::time::Duration;

/// How long a sequence waits for the agent to import the bundle's images:
/// seconds on a host, about ten minutes in an emulated appliance (QEMU
/// without KVM).
pub(crate) const IMAGES_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Waits until the agent reports the bundle's images imported (its
/// `images` component Ready), before `step` asks the kubelet for a pod: no
/// registry is reachable, so a pod whose image (or the pause image of its
/// sandbox) is not imported yet fails with a pull error and the kubelet's
/// back-off. Says so on the step's line when it has to wait.
pub(crate) async fn bundle_images_imported<S: plan::Step>(
    run: &runner::Runner<S>,
    step: S,
    paths: &crate::paths::HostPaths,
) -> anyhow::Result<()> {
    let imported = || {
        Ok(crate::control::component_ready(
            paths,
            crate::control::Component::Images.as_str(),
            "the image import",
        )?)
    };
    if imported().unwrap_or(false) {
        return Ok(());
    }
    run.say(step, "waiting for the agent to import the bundle's images");
    crate::wait::until(
        &format!(
            "the agent to import the bundle's images (see 'selfnode status' and {})",
            paths.log_dir().join("agent.log").display()
        ),
        IMAGES_DEADLINE,
        Duration::from_secs(1),
        || async { imported() },
    )
    .await
}
