//! Unit tests of the module above.

use super::*;

fn id() -> ClusterIdentity {
    ClusterIdentity {
        cluster_name: "lab".into(),
        cluster_uid: "u1".into(),
        node_name: "n1".into(),
        role: ClusterRole::Init,
        created: 1,
    }
}

fn settings() -> InitSettings {
    InitSettings {
        cluster_name: "lab".into(),
        node_name: "n1".into(),
        advertise_address: "10.0.0.2".parse().unwrap(),
        pod_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        cluster_domain: "cluster.local".into(),
        extra_sans: vec!["api.lab".into()],
        bundle: None,
        allow_workloads: true,
        etcd_quota_backend_bytes: 4 << 30,
    }
}

#[test]
fn identity_settings_and_pivot_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cp");
    {
        let cp = Checkpoint::open(&p).unwrap();
        assert_eq!(cp.cluster_identity().unwrap(), None);
        cp.record_cluster_identity(&id()).unwrap();
        assert!(!cp.pivot_committed().unwrap());
        assert_eq!(cp.settings().unwrap(), None);
        cp.commit_pivot(&settings()).unwrap();
    }
    let cp = Checkpoint::open(&p).unwrap();
    assert_eq!(cp.cluster_identity().unwrap(), Some(id()));
    assert!(cp.pivot_committed().unwrap());
    assert_eq!(cp.settings().unwrap(), Some(settings()));
}

#[test]
fn the_checkpoint_is_owner_only_and_every_open_tightens_what_it_finds() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cp");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    {
        let cp = Checkpoint::open(&p).unwrap();
        assert_eq!(mode(&p), 0o700);
        cp.put_pod(&pod()).unwrap();
    }
    // As sled leaves the snapshot files it writes, with the umask's mode.
    for e in std::fs::read_dir(&p).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let _cp = Checkpoint::open(&p).unwrap();
    assert_eq!(mode(&p), 0o700);
    for e in std::fs::read_dir(&p).unwrap().flatten() {
        if e.path().is_file() {
            assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
        }
    }
}

#[test]
fn a_removed_pod_entry_is_gone_and_not_reported_as_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Checkpoint::open(&dir.path().join("cp")).unwrap();
    cp.put_pod(&pod()).unwrap();
    let other = PodCheckpoint {
        component: "kube-scheduler".into(),
        ..pod()
    };
    cp.put_pod(&other).unwrap();
    cp.remove_pod("kube-apiserver").unwrap();
    let left: Vec<String> = cp
        .pods()
        .unwrap()
        .into_iter()
        .map(|p| p.component)
        .collect();
    assert_eq!(left, ["kube-scheduler"]);
    cp.remove_pod("kube-apiserver").unwrap(); // idempotent
}

#[test]
fn a_restore_replaces_the_identity_and_undoes_the_pivot_together() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Checkpoint::open(&dir.path().join("cp")).unwrap();
    cp.record_cluster_identity(&id()).unwrap();
    cp.commit_pivot(&settings()).unwrap();
    let restored = ClusterIdentity {
        role: ClusterRole::Restore,
        cluster_uid: "u2".into(),
        ..id()
    };
    cp.begin_restore(&restored).unwrap();
    assert_eq!(cp.cluster_identity().unwrap(), Some(restored));
    assert!(!cp.pivot_committed().unwrap());
}

fn pod() -> PodCheckpoint {
    PodCheckpoint {
        component: "kube-apiserver".into(),
        pod: k8s_openapi::api::core::v1::Pod::default(),
        config_maps: vec![],
        observed_at: 1,
    }
}

#[test]
fn a_pod_entry_the_database_lost_is_reported_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cp");
    {
        let cp = Checkpoint::open(&p).unwrap();
        cp.put_pod(&pod()).unwrap();
        assert_eq!(cp.pods().unwrap().len(), 1);
        // What sled does with a damaged log: the record is gone.
        cp.db.remove("pods/kube-apiserver").unwrap();
        cp.flush().unwrap();
    }
    let cp = Checkpoint::open(&p).unwrap();
    let err = cp.pods().err().expect("refused").to_string();
    assert!(
        err.contains("pods/kube-apiserver") && err.contains("lost"),
        "{err}"
    );
    // Keeping a new copy heals it.
    cp.put_pod(&pod()).unwrap();
    assert_eq!(cp.pods().unwrap().len(), 1);
}

#[test]
fn a_tampered_entry_is_reported_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cp");
    let cp = Checkpoint::open(&p).unwrap();
    cp.record_cluster_identity(&id()).unwrap();
    let raw = cp.db.get(IDENTITY_KEY).unwrap().unwrap();
    let tampered = String::from_utf8(raw.to_vec())
        .unwrap()
        .replace("\"lab\"", "\"evil\"");
    cp.db.insert(IDENTITY_KEY, tampered.as_bytes()).unwrap();
    let err = cp.cluster_identity().unwrap_err().to_string();
    assert!(
        err.contains("corrupt") && err.contains("checksum mismatch"),
        "{err}"
    );
}

#[test]
fn an_unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cp");
    {
        let db = sled::open(&p).unwrap();
        db.insert(FORMAT_KEY, b"99").unwrap();
        db.flush().unwrap();
    }
    let err = Checkpoint::open(&p).err().expect("refused").to_string();
    assert!(err.contains("format version 99"), "{err}");
}

#[test]
fn verify_reads_every_entry_back_and_finds_one_the_database_lost() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cp");
    {
        let cp = Checkpoint::open(&p).unwrap();
        cp.record_cluster_identity(&id()).unwrap();
        cp.commit_pivot(&settings()).unwrap();
        cp.put_pod(&pod()).unwrap();
        // identity, settings, the pivot and the pod.
        assert_eq!(cp.verify().unwrap(), 4);
        // What sled does with a damaged log: a record is gone, silently.
        cp.db.remove(SETTINGS_KEY).unwrap();
        cp.flush().unwrap();
    }
    let cp = Checkpoint::open(&p).unwrap();
    // Reading the settings alone cannot tell (none recorded reads the same).
    assert_eq!(cp.settings().unwrap(), None);
    let err = cp.verify().unwrap_err().to_string();
    assert!(err.contains(SETTINGS_KEY) && err.contains("lost"), "{err}");
}

#[test]
fn removed_entries_leave_the_index_so_verify_does_not_report_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cp");
    let cp = Checkpoint::open(&p).unwrap();
    cp.record_cluster_identity(&id()).unwrap();
    cp.commit_pivot(&settings()).unwrap();
    cp.record_etcd_member(&EtcdMemberIdentity {
        name: "n1".into(),
        id: "1".into(),
        cluster_id: "2".into(),
        peer_urls: vec![],
        client_urls: vec![],
        data_dir: "/d".into(),
        recorded_at: 1,
    })
    .unwrap();
    cp.forget_etcd_member().unwrap();
    cp.begin_restore(&id()).unwrap();
    assert!(!cp.pivot_committed().unwrap());
    assert_eq!(cp.verify().unwrap(), 2, "identity and settings");
}
