//! What a user sees from the CLI on bad input: a clear message naming the
//! problem, a non-zero exit code, and nothing changed.

mod support;

use std::path::Path;
use std::process::Command;

fn selfnode(root: &Path) -> Command {
    let mut cmd = Command::new(support::selfnode_bin());
    cmd.arg("--root").arg(root);
    cmd
}

#[test]
fn images_import_names_the_missing_binary_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = support::bundle_without(dir.path(), "bin/kube-scheduler");
    let out = selfnode(dir.path())
        .args(["images", "import", "--bundle"])
        .arg(&bundle)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&bundle.join("bin/kube-scheduler").display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains("fixtures/build-bundle.sh"),
        "says how to fix it: {stderr}"
    );
}

#[test]
fn images_import_without_containerd_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = selfnode(dir.path())
        .args(["images", "import", "--bundle"])
        .arg(support::bundle_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("containerd.sock") && stderr.contains("selfnode status"),
        "{stderr}"
    );
}

#[test]
fn certs_on_a_host_of_no_cluster_say_so_exit_3_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["certs", "renew"][..],
        &["certs", "check-expiration", "-o", "json"],
    ] {
        let out = selfnode(dir.path()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(
            stderr.contains("belongs to no cluster"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("selfnode init"), "{args:?}: {stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn version_reports_the_bundle_versions_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = selfnode(dir.path())
        .args(["version", "-o", "json", "--bundle"])
        .arg(support::bundle_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pinned = std::fs::read_to_string(support::bundle_dir().join("VERSION")).unwrap();
    let k8s = v["kubernetes"].as_str().unwrap();
    assert!(
        pinned.contains(&format!("KUBERNETES_VERSION={k8s}")),
        "{v:#}"
    );
    assert_eq!(v["selfnode"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn help_lists_every_command_with_one_line() {
    let out = Command::new(support::selfnode_bin())
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["agent", "status", "images", "version", "completion"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing from --help:\n{text}"
        );
    }
}
