//! The kube-apiserver's audit log: who read or changed what, and when (the
//! audit's F03 and N04; CIS 1.2.16-1.2.19, 3.2.1).
//!
//! The policy is selfnode's own, fixed: it records at `Metadata` level
//! (user, groups, verb, object, response code; never a request or response
//! body)
//! - every request to Secrets, ConfigMaps, service-account tokens, token
//!   reviews and certificate requests, whatever the verb: this is where the
//!   cluster's keys live (the control-plane Secrets hold CA and signing
//!   keys), and a `watch` reads as much as a `list` (a watch from no
//!   resourceVersion starts with every object);
//! - every way into a container or onto a node: `pods/exec`, `pods/attach`,
//!   `pods/portforward`, `pods/log` and `nodes/proxy`, whatever the verb
//!   (exec and attach arrive as a WebSocket `GET`);
//! - every change to any other object, except leader leases and events.
//!
//! Left out: health probes, leases and events (most of the traffic, and
//! they say little), and reads and watches of everything else.
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
  # Probes.
  - level: None
    nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", "/version", "/metrics"]
  # Where the keys are: every access, watches included (a watch reads
  # every object), without its contents.
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets", "configmaps", "serviceaccounts/token"]
      - group: "authentication.k8s.io"
        resources: ["tokenreviews"]
      - group: "certificates.k8s.io"
        resources: ["certificatesigningrequests", "certificatesigningrequests/approval"]
  # Into a container or onto a node, whatever the verb (exec and attach
  # arrive as a WebSocket GET).
  - level: Metadata
    resources:
      - group: ""
        resources: ["pods/exec", "pods/attach", "pods/portforward", "pods/log", "nodes/proxy"]
  # Noise: leader leases and events, read and written all the time.
  - level: None
    resources:
      - group: "coordination.k8s.io"
        resources: ["leases"]
      - group: ""
        resources: ["events"]
      - group: "events.k8s.io"
        resources: ["events"]
  # Every change, by whom.
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  # Reads and watches of everything else.
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

    /// A request as the policy sees it: a verb on `group`'s `resource`
    /// (`pods/exec` for a subresource), or a `GET` of a URL that names no
    /// resource.
    enum Req<'a> {
        Resource(&'a str, &'a str, &'a str),
        Url(&'a str),
    }

    fn rules() -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_saphyr::from_str(AUDIT_POLICY).unwrap();
        assert_eq!(v["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(v["kind"], "Policy");
        v["rules"].as_array().unwrap().clone()
    }

    fn strings(v: &serde_json::Value) -> Vec<&str> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect()
    }

    /// The level the apiserver records `req` at: the first rule that
    /// matches wins (the fields this policy uses: verbs, resources,
    /// nonResourceURLs with a trailing `*`), `None` when none does.
    fn level(req: &Req<'_>) -> String {
        for r in rules() {
            let verb = match req {
                Req::Resource(verb, ..) => *verb,
                Req::Url(_) => "get",
            };
            if r.get("verbs").is_some_and(|v| !strings(v).contains(&verb)) {
                continue;
            }
            let matched = match req {
                Req::Resource(_, group, resource) => {
                    r.get("nonResourceURLs").is_none()
                        && r.get("resources").is_none_or(|gs| {
                            gs.as_array().unwrap().iter().any(|g| {
                                g["group"] == *group && strings(&g["resources"]).contains(resource)
                            })
                        })
                }
                Req::Url(url) => {
                    r.get("resources").is_none()
                        && r.get("nonResourceURLs").is_none_or(|urls| {
                            strings(urls).iter().any(|u| match u.strip_suffix('*') {
                                Some(prefix) => url.starts_with(prefix),
                                None => url == u,
                            })
                        })
                }
            };
            if matched {
                return r["level"].as_str().unwrap().to_string();
            }
        }
        "None".to_string()
    }

    #[test]
    fn the_policy_is_an_audit_policy_whose_last_rule_drops_the_rest() {
        let rules = rules();
        assert!(rules
            .iter()
            .all(|r| r["level"] == "None" || r["level"] == "Metadata"));
        assert_eq!(rules.last().unwrap(), &serde_json::json!({"level": "None"}));
        // No rule depends on who asks: what holds below holds for an admin.
        assert!(rules
            .iter()
            .all(|r| r.get("users").is_none() && r.get("userGroups").is_none()));
    }

    #[test]
    fn reads_and_watches_of_secrets_are_recorded_before_anything_is_dropped() {
        // Before the rule of the keys, only probes are left out.
        let keys = rules()
            .iter()
            .position(|r| r["resources"].to_string().contains("\"secrets\""))
            .unwrap();
        for r in &rules()[..keys] {
            assert!(r.get("nonResourceURLs").is_some(), "{r}");
        }
        for verb in ["watch", "list", "get", "create", "update", "delete"] {
            for (group, resource) in [
                ("", "secrets"),
                ("", "configmaps"),
                ("certificates.k8s.io", "certificatesigningrequests"),
            ] {
                assert_eq!(
                    level(&Req::Resource(verb, group, resource)),
                    "Metadata",
                    "{verb} {resource}"
                );
            }
        }
        assert_eq!(
            level(&Req::Resource("create", "", "serviceaccounts/token")),
            "Metadata"
        );
        assert_eq!(
            level(&Req::Resource(
                "create",
                "authentication.k8s.io",
                "tokenreviews"
            )),
            "Metadata"
        );
    }

    #[test]
    fn exec_attach_portforward_logs_and_node_proxy_are_recorded_whatever_the_verb() {
        for resource in [
            "pods/exec",
            "pods/attach",
            "pods/portforward",
            "pods/log",
            "nodes/proxy",
        ] {
            for verb in ["get", "create", "update", "delete"] {
                assert_eq!(
                    level(&Req::Resource(verb, "", resource)),
                    "Metadata",
                    "{verb} {resource}"
                );
            }
        }
    }

    #[test]
    fn changes_are_recorded_and_noise_is_left_out() {
        for (verb, group, resource) in [
            ("patch", "apps", "deployments"),
            ("delete", "", "pods"),
            ("update", "", "nodes"),
            ("patch", "discovery.k8s.io", "endpointslices"),
            ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
        ] {
            assert_eq!(
                level(&Req::Resource(verb, group, resource)),
                "Metadata",
                "{verb} {resource}"
            );
        }
        for (verb, group, resource) in [
            ("update", "coordination.k8s.io", "leases"),
            ("watch", "coordination.k8s.io", "leases"),
            ("create", "", "events"),
            ("create", "events.k8s.io", "events"),
            ("watch", "", "pods"),
            ("list", "", "nodes"),
            ("watch", "discovery.k8s.io", "endpointslices"),
            ("get", "", "endpoints"),
        ] {
            assert_eq!(
                level(&Req::Resource(verb, group, resource)),
                "None",
                "{verb} {resource}"
            );
        }
        for url in ["/healthz", "/readyz?verbose", "/livez/etcd", "/version"] {
            assert_eq!(level(&Req::Url(url)), "None", "{url}");
        }
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
