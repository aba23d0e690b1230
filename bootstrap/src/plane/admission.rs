//! The kube-apiserver's admission configuration (`--admission-control-config-file`):
//! Pod Security admission for the whole cluster (the audit's F15; CIS 5.2).
//!
//! Every namespace but `kube-system` enforces the `baseline` Pod Security
//! Standard (no host namespaces, no privileged containers, no hostPath, no
//! added capabilities beyond the default set), and `restricted` is what
//! warnings (to the client) and audit annotations (in the audit log)
//! measure against, all at the apiserver's own version (`latest`).
//! `kube-system` is exempt: the control plane, kube-proxy, the pod network
//! and CoreDNS run there and need the host. The exemption is in this file
//! on the control-plane hosts, not in a namespace label that anyone allowed
//! to update namespaces could change. A namespace may still choose a
//! stricter or looser level with the `pod-security.kubernetes.io/*` labels.
//!
//! The PodSecurity plugin is on by default (`--enable-admission-plugins`
//! adds NodeRestriction to the defaults, it replaces none); this file only
//! configures it. The apiserver reads it at start-up.

use std::path::{Path, PathBuf};

use crate::host::{Host, HostError};

/// The configuration's file name, in the kubeconfig directory beside the
/// audit policy (`/etc/kubernetes/admission-config.yaml`).
pub const ADMISSION_CONFIG_FILE: &str = "admission-config.yaml";

/// The `apiserver.config.k8s.io/v1` `AdmissionConfiguration`.
pub const ADMISSION_CONFIG: &str = r#"# selfnode's admission configuration: Pod Security for every namespace but kube-system.
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: PodSecurity
    configuration:
      apiVersion: pod-security.admission.config.k8s.io/v1
      kind: PodSecurityConfiguration
      defaults:
        enforce: "baseline"
        enforce-version: "latest"
        audit: "restricted"
        audit-version: "latest"
        warn: "restricted"
        warn-version: "latest"
      exemptions:
        usernames: []
        runtimeClasses: []
        namespaces: ["kube-system"]
"#;

/// The configuration file's path for a kubeconfig directory.
pub fn admission_config_path(kubeconfig_dir: &Path) -> PathBuf {
    kubeconfig_dir.join(ADMISSION_CONFIG_FILE)
}

/// Writes the configuration (0600), idempotent: what an apiserver needs on
/// its host.
///
/// Errors with [`HostError`] when it cannot be written.
pub fn ensure_admission_config(host: &dyn Host, kubeconfig_dir: &Path) -> Result<(), HostError> {
    host.write_file(
        &admission_config_path(kubeconfig_dir),
        ADMISSION_CONFIG.as_bytes(),
        0o600,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::MemHost;

    #[test]
    fn baseline_is_enforced_and_restricted_warned_everywhere_but_kube_system() {
        let v: serde_json::Value = serde_saphyr::from_str(ADMISSION_CONFIG).unwrap();
        assert_eq!(v["apiVersion"], "apiserver.config.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionConfiguration");
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 1);
        assert_eq!(plugins[0]["name"], "PodSecurity");
        let c = &plugins[0]["configuration"];
        assert_eq!(c["apiVersion"], "pod-security.admission.config.k8s.io/v1");
        assert_eq!(c["kind"], "PodSecurityConfiguration");
        assert_eq!(
            c["defaults"],
            serde_json::json!({
                "enforce": "baseline", "enforce-version": "latest",
                "audit": "restricted", "audit-version": "latest",
                "warn": "restricted", "warn-version": "latest",
            })
        );
        assert_eq!(
            c["exemptions"],
            serde_json::json!({"usernames": [], "runtimeClasses": [], "namespaces": ["kube-system"]})
        );
    }

    #[test]
    fn the_admission_config_is_private_and_written_once() {
        let h = MemHost::new();
        let kc = Path::new("/etc/kubernetes");
        h.ensure_dir(kc, 0o700).unwrap();
        ensure_admission_config(&h, kc).unwrap();
        let file = kc.join(ADMISSION_CONFIG_FILE);
        assert_eq!(h.file(&file).unwrap(), ADMISSION_CONFIG.as_bytes());
        assert_eq!(h.mode(&file), Some(0o600));
        h.take_changes();
        ensure_admission_config(&h, kc).unwrap();
        assert!(h
            .take_changes()
            .iter()
            .all(|(_, w)| *w == crate::host::Written::Unchanged));
    }
}
