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
//!
//! It also names a directory of **static admission policies**
//! ([`POLICY_DIR`], beside it on every control-plane host; the apiserver
//! re-reads it every minute, and the API cannot change or delete what it
//! holds). Two policies are there: the control plane's workloads move one
//! minor at a time ([`CONTROL_PLANE_VERSIONS_POLICY`]), and only selfnode
//! may add, change or remove a Node's control-plane label
//! ([`CONTROL_PLANE_LABEL_POLICY`]). Control-plane
//! membership follows intent (`selfnode promote` and `demote`, a
//! control-plane join), carried out by the control-plane hosts' agents; a
//! label set by hand would give a node API server pods without the keys
//! they need, and a label removed by hand would take an API server away
//! from a host that is still an etcd member. NodeRestriction already stops
//! kubelets; this stops every other user, admins included, except the
//! agents' identity and `system:masters` (`super-admin.conf`, which `init`
//! and `recover` use: the break-glass identity).

use std::path::{Path, PathBuf};

use crate::host::{Host, HostError};

/// The configuration's file name, in the kubeconfig directory beside the
/// audit policy (`/etc/kubernetes/admission-config.yaml`).
pub const ADMISSION_CONFIG_FILE: &str = "admission-config.yaml";

/// The directory of static admission policies, in the kubeconfig
/// directory (`/etc/kubernetes/admission-policies`).
pub const POLICY_DIR: &str = "admission-policies";
/// The control-plane label policy's file in [`POLICY_DIR`].
pub const CONTROL_PLANE_LABEL_POLICY_FILE: &str = "control-plane-label.yaml";

/// The `apiserver.config.k8s.io/v1` `AdmissionConfiguration`; `{POLICY_DIR}`
/// stands for the absolute policy directory.
const ADMISSION_CONFIG_TEMPLATE: &str = r#"# selfnode's admission configuration: Pod Security for every namespace but kube-system,
# and the static admission policies of selfnode (the control-plane label).
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
  - name: ValidatingAdmissionPolicy
    configuration:
      apiVersion: apiserver.config.k8s.io/v1
      kind: ValidatingAdmissionPolicyConfiguration
      staticManifestsDir: "{POLICY_DIR}"
"#;

/// Only selfnode sets or removes `node-role.kubernetes.io/control-plane`
/// (see the module docs). `nodes/status` is matched too: an update of a
/// Node's status may change its labels. Static policies' names end in
/// `.static.k8s.io`, which objects made through the API may not use.
pub const CONTROL_PLANE_LABEL_POLICY: &str = r#"# selfnode: only selfnode sets or removes a Node's control-plane label.
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: selfnode-control-plane-label.static.k8s.io
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: ["v1"]
        operations: ["CREATE", "UPDATE"]
        resources: ["nodes", "nodes/status"]
  variables:
    - name: key
      expression: "'node-role.kubernetes.io/control-plane'"
    - name: newHas
      expression: "has(object.metadata.labels) && variables.key in object.metadata.labels"
    - name: oldHas
      expression: "oldObject != null && has(oldObject.metadata.labels) && variables.key in oldObject.metadata.labels"
    - name: changed
      expression: >-
        variables.newHas != variables.oldHas ||
        (variables.newHas && variables.oldHas &&
         object.metadata.labels[variables.key] != oldObject.metadata.labels[variables.key])
    - name: allowed
      expression: >-
        has(request.userInfo.groups) &&
        ('selfnode:control-plane-agents' in request.userInfo.groups ||
         'system:masters' in request.userInfo.groups)
  validations:
    - expression: "!variables.changed || variables.allowed"
      messageExpression: >-
        'only selfnode sets or removes the label ' + variables.key +
        ': run selfnode promote NODE or selfnode demote NODE on a control-plane host (user ' +
        request.userInfo.username + ' tried to change it)'
      reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: selfnode-control-plane-label.static.k8s.io
spec:
  policyName: selfnode-control-plane-label.static.k8s.io
  validationActions: [Deny]
"#;

/// The control-plane versions policy's file in [`POLICY_DIR`].
pub const CONTROL_PLANE_VERSIONS_POLICY_FILE: &str = "control-plane-versions.yaml";

/// The control plane moves one minor at a time, as the version skew policy
/// asks: an update of the `kube-apiserver`, `kube-controller-manager`,
/// `kube-scheduler` or `kube-proxy` workload in `kube-system` whose
/// component image (the container named like the workload) goes more than
/// one minor away from the image it replaces, or to another major, is
/// refused at admission, whoever asks (`kubectl set image`, `kubectl
/// apply`, an operator). Tags that are not `vMAJOR.MINOR.PATCH` (a digest,
/// no tag) are not judged.
pub const CONTROL_PLANE_VERSIONS_POLICY: &str = r#"# selfnode: the control plane moves one minor at a time (the version skew policy).
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: selfnode-control-plane-versions.static.k8s.io
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: ["apps"]
        apiVersions: ["v1"]
        operations: ["UPDATE"]
        resources: ["daemonsets", "deployments"]
  matchConditions:
    - name: control-plane-workload
      expression: >-
        object.metadata.namespace == 'kube-system' &&
        object.metadata.name in ['kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'kube-proxy']
  variables:
    - name: newImages
      expression: "object.spec.template.spec.containers.filter(c, c.name == object.metadata.name).map(c, c.image)"
    - name: oldImages
      expression: "oldObject.spec.template.spec.containers.filter(c, c.name == oldObject.metadata.name).map(c, c.image)"
    - name: newParts
      expression: "size(variables.newImages) == 1 ? variables.newImages[0].split(':') : ['']"
    - name: oldParts
      expression: "size(variables.oldImages) == 1 ? variables.oldImages[0].split(':') : ['']"
    - name: newTag
      expression: "variables.newParts[size(variables.newParts) - 1]"
    - name: oldTag
      expression: "variables.oldParts[size(variables.oldParts) - 1]"
    - name: versioned
      expression: >-
        size(variables.newParts) > 1 && size(variables.oldParts) > 1 &&
        variables.newTag.matches('^v[0-9]+[.][0-9]+[.][0-9]+') &&
        variables.oldTag.matches('^v[0-9]+[.][0-9]+[.][0-9]+')
    - name: sameMajor
      expression: "variables.newTag.split('.')[0] == variables.oldTag.split('.')[0]"
    - name: minorDelta
      expression: "int(variables.newTag.split('.')[1]) - int(variables.oldTag.split('.')[1])"
  validations:
    - expression: >-
        !variables.versioned ||
        (variables.sameMajor && variables.minorDelta <= 1 && variables.minorDelta >= -1)
      messageExpression: >-
        object.metadata.name + ' moves one minor at a time (the Kubernetes version skew policy): ' +
        variables.oldTag + ' to ' + variables.newTag + ' is refused; go through each minor in turn
        (selfnode upgrade plan --bundle DIR shows the steps)'
      reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: selfnode-control-plane-versions.static.k8s.io
spec:
  policyName: selfnode-control-plane-versions.static.k8s.io
  validationActions: [Deny]
"#;

/// The configuration file's path for a kubeconfig directory.
pub fn admission_config_path(kubeconfig_dir: &Path) -> PathBuf {
    kubeconfig_dir.join(ADMISSION_CONFIG_FILE)
}

/// The static policy directory for a kubeconfig directory.
pub fn admission_policy_dir(kubeconfig_dir: &Path) -> PathBuf {
    kubeconfig_dir.join(POLICY_DIR)
}

/// The admission configuration for a kubeconfig directory (the policy
/// directory is named by its absolute path).
pub fn admission_config(kubeconfig_dir: &Path) -> String {
    ADMISSION_CONFIG_TEMPLATE.replace(
        "{POLICY_DIR}",
        &admission_policy_dir(kubeconfig_dir).display().to_string(),
    )
}

/// Writes the configuration (0600), the policy directory (0700) and its
/// policy (0600), idempotent: what an apiserver needs on its host.
///
/// Errors with [`HostError`] when one cannot be written.
pub fn ensure_admission_config(host: &dyn Host, kubeconfig_dir: &Path) -> Result<(), HostError> {
    let dir = admission_policy_dir(kubeconfig_dir);
    host.ensure_dir(&dir, 0o700)?;
    host.write_file(
        &dir.join(CONTROL_PLANE_LABEL_POLICY_FILE),
        CONTROL_PLANE_LABEL_POLICY.as_bytes(),
        0o600,
    )?;
    host.write_file(
        &dir.join(CONTROL_PLANE_VERSIONS_POLICY_FILE),
        CONTROL_PLANE_VERSIONS_POLICY.as_bytes(),
        0o600,
    )?;
    host.write_file(
        &admission_config_path(kubeconfig_dir),
        admission_config(kubeconfig_dir).as_bytes(),
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
        let config = admission_config(Path::new("/etc/kubernetes"));
        let v: serde_json::Value = serde_saphyr::from_str(&config).unwrap();
        assert_eq!(v["apiVersion"], "apiserver.config.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionConfiguration");
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 2);
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
        assert_eq!(h.file(&file).unwrap(), admission_config(kc).as_bytes());
        assert_eq!(h.mode(&file), Some(0o600));
        let policies = kc.join(POLICY_DIR);
        assert_eq!(h.dir_mode(&policies), Some(0o700));
        let policy = policies.join(CONTROL_PLANE_LABEL_POLICY_FILE);
        assert_eq!(
            h.file(&policy).unwrap(),
            CONTROL_PLANE_LABEL_POLICY.as_bytes()
        );
        assert_eq!(h.mode(&policy), Some(0o600));
        h.take_changes();
        ensure_admission_config(&h, kc).unwrap();
        assert!(h
            .take_changes()
            .iter()
            .all(|(_, w)| *w == crate::host::Written::Unchanged));
    }

    /// A static policy file's policy, checked to bind itself by a static
    /// name with Deny.
    fn static_policy(text: &str) -> serde_json::Value {
        let docs: Vec<serde_json::Value> = text
            .split("\n---\n")
            .map(|d| serde_saphyr::from_str(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        let (policy, binding) = (&docs[0], &docs[1]);
        assert_eq!(policy["kind"], "ValidatingAdmissionPolicy");
        assert_eq!(binding["kind"], "ValidatingAdmissionPolicyBinding");
        let name = policy["metadata"]["name"].as_str().unwrap();
        assert!(name.ends_with(".static.k8s.io"), "{name}");
        assert_eq!(binding["spec"]["policyName"], name);
        assert_eq!(binding["spec"]["validationActions"][0], "Deny");
        policy.clone()
    }

    #[test]
    fn the_versions_policy_matches_the_control_plane_workloads_and_binds_itself() {
        let policy = static_policy(CONTROL_PLANE_VERSIONS_POLICY);
        let rules = &policy["spec"]["matchConstraints"]["resourceRules"][0];
        assert_eq!(
            rules["resources"],
            serde_json::json!(["daemonsets", "deployments"])
        );
        let cond = policy["spec"]["matchConditions"][0]["expression"]
            .as_str()
            .unwrap();
        for w in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kube-proxy",
        ] {
            assert!(cond.contains(&format!("'{w}'")), "{cond}");
        }
        let h = MemHost::new();
        let kc = Path::new("/etc/kubernetes");
        h.ensure_dir(kc, 0o700).unwrap();
        ensure_admission_config(&h, kc).unwrap();
        let file = kc.join(POLICY_DIR).join(CONTROL_PLANE_VERSIONS_POLICY_FILE);
        assert_eq!(
            h.file(&file).unwrap(),
            CONTROL_PLANE_VERSIONS_POLICY.as_bytes()
        );
        assert_eq!(h.mode(&file), Some(0o600));
    }

    #[test]
    fn static_policies_are_loaded_from_the_directory_beside_the_config() {
        let config = admission_config(Path::new("/tmp/h/etc/kubernetes"));
        let v: serde_json::Value = serde_saphyr::from_str(&config).unwrap();
        let vap = &v["plugins"][1];
        assert_eq!(vap["name"], "ValidatingAdmissionPolicy");
        assert_eq!(
            vap["configuration"]["kind"],
            "ValidatingAdmissionPolicyConfiguration"
        );
        assert_eq!(
            vap["configuration"]["staticManifestsDir"],
            "/tmp/h/etc/kubernetes/admission-policies"
        );
    }

    #[test]
    fn the_control_plane_label_policy_binds_itself_with_static_names() {
        let policy = static_policy(CONTROL_PLANE_LABEL_POLICY);
        let rules = &policy["spec"]["matchConstraints"]["resourceRules"][0];
        assert_eq!(
            rules["resources"],
            serde_json::json!(["nodes", "nodes/status"])
        );
        // Whom it lets through: the agents' group of the PKI, and system:masters.
        let allowed = policy["spec"]["variables"][4]["expression"]
            .as_str()
            .unwrap();
        assert!(allowed.contains(&format!(
            "'{}'",
            crate::pki::names::CONTROL_PLANE_AGENTS_GROUP
        )));
        assert!(allowed.contains(&format!("'{}'", crate::pki::names::SYSTEM_MASTERS_GROUP)));
        assert!(CONTROL_PLANE_LABEL_POLICY
            .contains(&format!("'{}'", crate::objects::CONTROL_PLANE_LABEL)));
    }
}
