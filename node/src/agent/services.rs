//! The two services the agent supervises, containerd and the kubelet: how each
//! is started and how its readiness is checked.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::config::{self, ContainerdConfig, HostFacts, KubeletInputs};
use super::supervisor::{ProbeFn, ServiceSpec, SpecFn};
use crate::control::NodeIdentity;
use crate::fsutil::{ensure_dir, write_atomic};
use crate::paths::HostPaths;

/// Everything the service builders need, fixed for the agent's lifetime.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    pub paths: HostPaths,
    pub bundle: dist::bundle::Bundle,
    pub facts: HostFacts,
    pub containerd_socket: PathBuf,
    pub kubelet_healthz_port: u16,
    /// The kubelet's cgroupRoot; `None`: the root cgroup.
    pub cgroup_root: Option<String>,
}

/// PATH for children: the bundle's binaries first (containerd finds its shim
/// and runc there), then the usual system directories.
pub fn child_path(bundle: &dist::bundle::Bundle) -> String {
    format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        bundle.root().join("bin").display()
    )
}

pub fn containerd(ctx: Arc<ServiceContext>) -> SpecFn {
    Arc::new(move || {
        let p = &ctx.paths;
        let cfg = ContainerdConfig {
            root: p.containerd_root(),
            state: p.containerd_state(),
            socket: ctx.containerd_socket.clone(),
            pause_image: dist::images::pause_image(ctx.bundle.versions()),
            runc: ctx.bundle.bin("runc"),
            cni_bin_dir: ctx.bundle.cni_bin_dir(),
            cni_conf_dir: p.cni_conf_dir(),
        };
        ensure_dir(&cfg.root, 0o700).with_context(|| format!("creating {}", cfg.root.display()))?;
        ensure_dir(&cfg.state, 0o711)
            .with_context(|| format!("creating {}", cfg.state.display()))?;
        ensure_dir(&cfg.cni_conf_dir, 0o755)
            .with_context(|| format!("creating {}", cfg.cni_conf_dir.display()))?;
        let text = config::render_containerd(&cfg, ctx.facts);
        let config_digest = digest(&text);
        let file = p.containerd_config();
        write_atomic(&file, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", file.display()))?;
        let socket = ctx.containerd_socket.clone();
        let probe: ProbeFn = Arc::new(move || {
            let socket = socket.clone();
            Box::pin(async move {
                dist::containerd::version(&socket).await?;
                Ok(())
            })
        });
        Ok(ServiceSpec {
            config_digest,
            program: ctx.bundle.bin("containerd"),
            args: vec!["--config".into(), file.into_os_string()],
            env: vec![("PATH".into(), child_path(&ctx.bundle))],
            log: p.log_dir().join("containerd.log"),
            probe,
            stop_grace: Duration::from_secs(10),
        })
    })
}

pub fn kubelet(ctx: Arc<ServiceContext>) -> SpecFn {
    Arc::new(move || {
        let p = &ctx.paths;
        let kubeconfig = p.kubelet_kubeconfig();
        // A joining node has only the bootstrap kubeconfig (a token); the
        // kubelet trades it for a client certificate and writes kubeconfig.
        let bootstrap_kubeconfig = p.bootstrap_kubelet_kubeconfig();
        let bootstrapping = !kubeconfig.exists() && bootstrap_kubeconfig.exists();
        let in_cluster = kubeconfig.exists() || bootstrapping;
        let client_ca = p.ca_cert();
        let node = NodeIdentity::read(&p.node_identity_file())?;
        let inputs = KubeletInputs {
            containerd_socket: ctx.containerd_socket.clone(),
            healthz_port: ctx.kubelet_healthz_port,
            static_pod_dir: p.static_pod_dir(),
            pod_logs_dir: p.pod_logs_dir(),
            volume_plugin_dir: p
                .root()
                .join("usr/libexec/kubernetes/kubelet-plugins/volume/exec"),
            in_cluster,
            client_ca: (in_cluster && client_ca.exists()).then_some(client_ca),
            cluster_dns: node
                .as_ref()
                .and_then(|n| n.cluster_dns)
                .into_iter()
                .collect(),
            cluster_domain: node
                .as_ref()
                .map(|n| n.cluster_domain.clone())
                .unwrap_or_else(|| bootstrap::config::DEFAULT_CLUSTER_DOMAIN.to_string()),
            cgroup_root: ctx.cgroup_root.clone(),
        };
        if let Some(cg) = &ctx.cgroup_root {
            super::cgroups::ensure(cg, ctx.facts.cgroup)
                .with_context(|| format!("creating the kubelet's cgroup root {cg}"))?;
        }
        for dir in [
            &inputs.static_pod_dir,
            &inputs.pod_logs_dir,
            &p.kubelet_root(),
        ] {
            ensure_dir(dir, 0o755).with_context(|| format!("creating {}", dir.display()))?;
        }
        let facts = HostFacts {
            kernel_defaults: kernel_defaults(),
            ..ctx.facts
        };
        let text = config::render_kubelet(&inputs, facts);
        let config_digest = digest(&text);
        let file = p.kubelet_config();
        write_atomic(&file, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", file.display()))?;
        let mut args: Vec<OsString> = vec![
            format!("--config={}", file.display()).into(),
            format!("--root-dir={}", p.kubelet_root().display()).into(),
            // Not relative to --root-dir upstream: without this a kubelet
            // would reuse a client certificate of another cluster or host.
            format!("--cert-dir={}", p.kubelet_root().join("pki").display()).into(),
            "--v=1".into(),
        ];
        if in_cluster {
            args.push(format!("--kubeconfig={}", kubeconfig.display()).into());
        }
        if bootstrapping {
            args.push(format!("--bootstrap-kubeconfig={}", bootstrap_kubeconfig.display()).into());
        }
        if let Some(node) = &node {
            args.push(format!("--node-ip={}", node.node_ip).into());
            if let Some(name) = hostname_override(&node.node_name, &hostname()) {
                args.push(format!("--hostname-override={name}").into());
            }
        }
        let port = ctx.kubelet_healthz_port;
        let probe: ProbeFn = Arc::new(move || {
            Box::pin(async move { Ok(super::probe::http_ok(port, "/healthz").await?) })
        });
        Ok(ServiceSpec {
            config_digest,
            program: ctx.bundle.bin("kubelet"),
            args,
            env: vec![("PATH".into(), child_path(&ctx.bundle))],
            log: p.log_dir().join("kubelet.log"),
            probe,
            stop_grace: Duration::from_secs(15),
        })
    })
}

/// Sets the kernel settings the kubelet checks (`agent::kernel`) and says
/// whether they hold, so the kubelet may protect them. Where they cannot be
/// set, says so in the log and leaves the kubelet as it was (it then tries
/// to set them itself).
fn kernel_defaults() -> bool {
    let proc_sys = Path::new(super::kernel::PROC_SYS);
    match super::kernel::ensure_kubelet_sysctls(proc_sys) {
        Ok(changed) => {
            if !changed.is_empty() {
                tracing::info!(?changed, "set the kernel settings the kubelet protects");
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "the kernel settings the kubelet wants cannot be set here: protectKernelDefaults stays off");
            false
        }
    }
}

/// This host's name as the kubelet reads it (`os.Hostname`), empty when
/// it cannot be read.
fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `--hostname-override`, when the node's name is not what the kubelet
/// would take by itself: the host's name, trimmed and lowercased (upstream
/// `nodeutil.GetHostname`). The KubeletConfiguration has no field for it
/// (v1.37), so where the names differ (a renamed host, a name given to
/// init or join, test hosts that share the machine's hostname) the flag
/// stays; it is checked again at every kubelet start.
fn hostname_override<'a>(node_name: &'a str, hostname: &str) -> Option<&'a str> {
    (node_name != hostname.trim().to_lowercase()).then_some(node_name)
}

fn digest(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Fails early, naming the directory, when the containerd socket cannot be
/// created there (a read-only mount, a file in the way).
pub fn check_socket_dir(socket: &Path) -> anyhow::Result<()> {
    let dir = socket.parent().with_context(|| {
        format!(
            "containerd socket path {} has no directory",
            socket.display()
        )
    })?;
    crate::fsutil::check_writable_dir(dir).with_context(|| {
        format!(
            "the containerd socket directory {} is not writable; choose another path with --containerd-socket or make it writable",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_name_is_passed_only_where_the_kubelet_would_not_take_it_from_the_hostname() {
        assert_eq!(hostname_override("node-1", "node-1"), None);
        assert_eq!(hostname_override("node-1", "Node-1\n"), None);
        assert_eq!(hostname_override("host1", "build-box"), Some("host1"));
        assert_eq!(hostname_override("node-1", ""), Some("node-1"));
    }
}
