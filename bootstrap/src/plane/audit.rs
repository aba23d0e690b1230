//! The kube-apiserver's audit log: who read or changed what, and when (the
//! audit's F03; CIS 1.2.16-1.2.19).
//!
//! The policy is selfnode's own, fixed: it records at `Metadata` level
//! (user, groups, verb, object, response code; never a request or response
//! body) every change to any object and every read of Secrets, ConfigMaps
//! and service-account tokens, which is where the cluster's keys live (the
//! control-plane Secrets hold CA and signing keys). Reads of everything
//! else, watches, health probes, leases and events are not recorded: they
//! are most of the traffic and say little.
//!
//! The log is JSON lines in [`DEFAULT_AUDIT_LOG_DIR`] on each control-plane
//! host (a hostPath for the self-hosted apiservers), rotated by the
//! apiserver at [`AUDIT_LOG_MAXSIZE_MB`] and kept [`AUDIT_LOG_MAXAGE_DAYS`]
//! days, at most [`AUDIT_LOG_MAXBACKUP`] old files (Talos's and the CIS
//! benchmark's values). Files are 0600 in a 0700 directory.

use std::path::{Path, PathBuf};

use crate::host::{Host, HostError};

/// The policy's file name, in the kubeconfig directory
/// (`/etc/kubernetes/audit-policy.yaml`, where kubeadm's guides put it).
pub const AUDIT_POLICY_FILE: &str = "audit-policy.yaml";
/// Where the apiservers of a host write their audit logs.
pub const DEFAULT_AUDIT_LOG_DIR: &str = "/var/log/kubernetes/audit";
/// `--audit-log-maxage`: days an old file is kept.
pub const AUDIT_LOG_MAXAGE_DAYS: u32 = 30;
/// `--audit-log-maxbackup`: old files kept.
pub const AUDIT_LOG_MAXBACKUP: u32 = 10;
/// `--audit-log-maxsize`: megabytes at which the file is rotated.
pub const AUDIT_LOG_MAXSIZE_MB: u32 = 100;
/// Mode of the audit log directory (the apiserver makes its files 0600).
pub const AUDIT_LOG_DIR_MODE: u32 = 0o700;

/// The policy (`audit.k8s.io/v1` `Policy`). The first matching rule wins.
pub const AUDIT_POLICY: &str = r#"# selfnode's audit policy: who read or changed what, never the contents.
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  # Probes and the noise of watches, leader leases and events.
  - level: None
    nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", "/version", "/metrics"]
  - level: None
    verbs: ["watch"]
  - level: None
    resources:
      - group: "coordination.k8s.io"
        resources: ["leases"]
      - group: ""
        resources: ["events"]
      - group: "events.k8s.io"
        resources: ["events"]
  # Where the keys are: every access, without its contents.
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets", "configmaps", "serviceaccounts/token"]
      - group: "authentication.k8s.io"
        resources: ["tokenreviews"]
      - group: "certificates.k8s.io"
        resources: ["certificatesigningrequests", "certificatesigningrequests/approval"]
  # Every change, by whom.
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
"#;

/// The policy file's path for a kubeconfig directory.
pub fn audit_policy_path(kubeconfig_dir: &Path) -> PathBuf {
    kubeconfig_dir.join(AUDIT_POLICY_FILE)
}

/// Writes the policy (0600) and creates the log directory (0700), both
/// idempotent: what the temporary apiserver needs on its host.
///
/// Errors with [`HostError`] when either cannot be written.
pub fn ensure_audit_files(
    host: &dyn Host,
    kubeconfig_dir: &Path,
    log_dir: &Path,
) -> Result<(), HostError> {
    host.write_file(
        &audit_policy_path(kubeconfig_dir),
        AUDIT_POLICY.as_bytes(),
        0o600,
    )?;
    host.ensure_dir(log_dir, AUDIT_LOG_DIR_MODE)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::MemHost;

    #[test]
    fn the_policy_is_an_audit_policy_whose_last_rule_drops_the_rest() {
        let v: serde_json::Value = serde_saphyr::from_str(AUDIT_POLICY).unwrap();
        assert_eq!(v["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(v["kind"], "Policy");
        let rules = v["rules"].as_array().unwrap();
        // Secrets are recorded, at Metadata (never a body), and nothing
        // before that rule drops them.
        let secrets = rules
            .iter()
            .position(|r| {
                r["resources"].as_array().into_iter().flatten().any(|g| {
                    g["group"] == ""
                        && g["resources"]
                            .as_array()
                            .unwrap()
                            .contains(&"secrets".into())
                })
            })
            .unwrap();
        assert_eq!(rules[secrets]["level"], "Metadata");
        for r in &rules[..secrets] {
            assert!(
                r.get("verbs")
                    .is_none_or(|v| v == &serde_json::json!(["watch"])),
                "{r}"
            );
        }
        assert!(rules
            .iter()
            .all(|r| r["level"] == "None" || r["level"] == "Metadata"));
        assert_eq!(rules.last().unwrap(), &serde_json::json!({"level": "None"}));
    }

    #[test]
    fn audit_files_are_private_and_written_once() {
        let h = MemHost::new();
        let kc = Path::new("/etc/kubernetes");
        let logs = Path::new("/var/log/kubernetes/audit");
        h.ensure_dir(kc, 0o700).unwrap();
        ensure_audit_files(&h, kc, logs).unwrap();
        let policy = kc.join(AUDIT_POLICY_FILE);
        assert_eq!(h.file(&policy).unwrap(), AUDIT_POLICY.as_bytes());
        assert_eq!(h.mode(&policy), Some(0o600));
        assert_eq!(h.dir_mode(logs), Some(AUDIT_LOG_DIR_MODE));
        h.take_changes();
        ensure_audit_files(&h, kc, logs).unwrap();
        assert!(
            h.take_changes()
                .iter()
                .all(|(_, w)| *w == crate::host::Written::Unchanged),
            "a second call writes nothing"
        );
    }
}
