//! etcd-mgr against the real etcd, etcdctl and etcdutl of the pinned bundle
//! (etcd v3.7.3), over client and peer mTLS: the learner flow that moves a
//! cluster's data to a new member, the quorum guard on removal, and
//! snapshots from save to a restored member that serves the same keys.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::GetOptions;
use etcd_mgr::members::{add_learner, promote, remove, RemoveOutcome};
use etcd_mgr::restore::{restore_data_dir, RestoreError, RestoreTarget};
use etcd_mgr::snapshot::{self, verify_file, SnapshotError};
use etcd_mgr::EtcdError;
use support::{assert_keys, assert_private_tree, bundle_bin, put_keys, Etcd, MemberSpec, Pki};

const KEYS: usize = 200;

/// One member `name` on a new cluster, serving, with `KEYS` keys.
async fn one_member_cluster(dir: &Path, pki: &Pki, name: &str) -> Etcd {
    let spec = MemberSpec::new(name);
    let mut etcd = Etcd::start(dir, pki, &spec, &dir.join(name), &spec.initial(), "new");
    etcd.wait_ready(pki).await;
    put_keys(&mut pki.client(&spec.client_url()).await, KEYS).await;
    etcd
}

fn hex_id(id: u64) -> String {
    format!("{id:x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_flow_moves_the_data_to_a_new_member() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut a = one_member_cluster(dir.path(), &pki, "a").await;
    let cfg_a = pki.config(&[a.spec.client_url()]);
    let a_id = u64::from_str_radix(&etcd_mgr::members(&cfg_a).await.unwrap()[0].id, 16).unwrap();
    let b = MemberSpec::new("b");

    // Add b as a learner; again: the same member, nothing added.
    let b_id = add_learner(&cfg_a, &b.peer_url()).await.unwrap();
    assert_eq!(add_learner(&cfg_a, &b.peer_url()).await.unwrap(), b_id);
    let ms = etcd_mgr::members(&cfg_a).await.unwrap();
    assert_eq!(ms.len(), 2, "{ms:?}");
    let learner = ms.iter().find(|m| m.id == hex_id(b_id)).unwrap();
    assert!(learner.is_learner && learner.name.is_empty() && !learner.healthy);

    // Not started yet: etcd refuses the promotion, and the error says how.
    let e = promote(&cfg_a, &b.peer_url(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, EtcdError::PromoteTimeout { .. }), "{e}");
    eprintln!("promote before the learner started: {e}");

    let initial = format!("{},{}", a.spec.initial(), b.initial());
    let started = Instant::now();
    let mut eb = Etcd::start(
        dir.path(),
        &pki,
        &b,
        &dir.path().join("b"),
        &initial,
        "existing",
    );
    eb.wait_ready(&pki).await;
    eprintln!("learner serving after {:?}", started.elapsed());

    let t = Instant::now();
    promote(&cfg_a, &b.peer_url(), Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!(
        "promote after the learner answered Status: {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    promote(&cfg_a, &b.peer_url(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a re-run promote waited"
    );
    let ms = etcd_mgr::members(&cfg_a).await.unwrap();
    assert!(ms.iter().all(|m| !m.is_learner && m.healthy), "{ms:?}");
    // a founded the cluster and leads it.
    assert!(ms.iter().any(|m| m.name == "a" && m.is_leader), "{ms:?}");

    // Remove a, through a's own endpoint (the request goes to b). a hands
    // its leadership to b first, so b leads the moment a is gone (without
    // the hand-over b would have no leader until its election timeout).
    let t = Instant::now();
    let out = remove(&cfg_a, "a", Duration::from_secs(60)).await.unwrap();
    assert_eq!(out, RemoveOutcome::Removed { id: a_id });
    let b_status = pki.client(&b.client_url()).await.status().await.unwrap();
    assert_eq!(b_status.leader(), b_id, "b leads right after a's removal");
    eprintln!(
        "remove a right after promoting b: {:?} ({:?} after b started)",
        t.elapsed(),
        started.elapsed()
    );
    let exit = a.wait_exit(Duration::from_secs(20));
    eprintln!("a after its removal: {exit:?}");

    // Re-runs, by name, peer URL and id, through the member that stays.
    let cfg_b = pki.config(&[b.client_url()]);
    for target in ["a".to_string(), a.spec.peer_url(), hex_id(a_id)] {
        let out = remove(&cfg_b, &target, Duration::from_secs(10)).await;
        assert_eq!(out.unwrap(), RemoveOutcome::NotAMember, "{target}");
    }
    assert_eq!(add_learner(&cfg_b, &b.peer_url()).await.unwrap(), b_id);
    promote(&cfg_b, &b.peer_url(), Duration::from_secs(5))
        .await
        .unwrap();

    // b alone holds every key.
    drop(a);
    assert_keys(&pki, &b.client_url(), KEYS).await;
    let ms = etcd_mgr::members(&cfg_b).await.unwrap();
    assert_eq!(ms.len(), 1, "{ms:?}");
    assert!(ms[0].name == "b" && !ms[0].is_learner && ms[0].healthy && ms[0].is_leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_refuses_the_last_member_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = one_member_cluster(dir.path(), &pki, "a").await;
    let cfg = pki.config(&[a.spec.client_url()]);
    let before = etcd_mgr::members(&cfg).await.unwrap();
    let id = before[0].id.clone();

    for target in ["a".to_string(), a.spec.peer_url(), id.clone()] {
        let e = remove(&cfg, &target, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, EtcdError::LastVotingMember { .. }), "{e}");
        assert!(e.to_string().contains("last voting member"), "{e}");
    }
    eprintln!(
        "{}",
        remove(&cfg, "a", Duration::from_secs(1)).await.unwrap_err()
    );

    // A learner that never started is always removable.
    let x = MemberSpec::new("x");
    let x_id = add_learner(&cfg, &x.peer_url()).await.unwrap();
    let out = remove(&cfg, &x.peer_url(), Duration::from_secs(10)).await;
    assert_eq!(out.unwrap(), RemoveOutcome::Removed { id: x_id });
    let out = remove(&cfg, &x.peer_url(), Duration::from_secs(10)).await;
    assert_eq!(out.unwrap(), RemoveOutcome::NotAMember);
    let out = remove(&cfg, "nobody", Duration::from_secs(10)).await;
    assert_eq!(out.unwrap(), RemoveOutcome::NotAMember);

    let after = etcd_mgr::members(&cfg).await.unwrap();
    let ids = |ms: &[etcd_mgr::MemberStatus]| {
        ms.iter()
            .map(|m| (m.id.clone(), m.is_learner, m.healthy))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before));
    assert_keys(&pki, &a.spec.client_url(), KEYS).await;
}

/// Whether an error is the expected kind.
type Expect = fn(&SnapshotError) -> bool;

fn copy_with(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

fn staging_left(parent: &Path) -> Vec<String> {
    fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".restore-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_verified_and_restore_into_a_working_member() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(d);
    let a = one_member_cluster(d, &pki, "a").await;
    let cfg = pki.config(&[a.spec.client_url()]);
    let etcdutl = bundle_bin("etcdutl");

    // save → verify_file.
    let snaps = d.join("snapshots");
    fs::create_dir(&snaps).unwrap();
    let path = snaps.join(snapshot::scheduled_name(SystemTime::now()));
    let info = snapshot::save(&cfg, &path).await.unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let check = verify_file(&path).unwrap();
    assert!(check.has_hash);
    assert_eq!((check.bytes, &check.sha256), (info.bytes, &info.sha256));
    assert_eq!(snapshot::list_scheduled(&snaps).unwrap().len(), 1);
    assert_eq!(
        fs::read_dir(&snaps).unwrap().count(),
        1,
        "a partial file was left"
    );
    // save does not create directories.
    let e = snapshot::save(&cfg, &d.join("no-such-dir/s.db"))
        .await
        .unwrap_err();
    assert!(matches!(e, SnapshotError::Write { .. }), "{e}");

    // Damaged copies, each refused for its own reason, naming the file.
    let data = fs::read(&path).unwrap();
    let bad = d.join("bad");
    fs::create_dir(&bad).unwrap();
    let cut = data.len() / 2 + 100;
    assert!(!matches!(cut % 512, 0 | 32));
    let truncated = copy_with(&bad, "truncated.db", &data[..cut]);
    let mut flipped_bytes = data.clone();
    flipped_bytes[data.len() / 2] ^= 0xff;
    let flipped = copy_with(&bad, "flipped.db", &flipped_bytes);
    let empty = copy_with(&bad, "empty.db", b"");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..65_536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let random = copy_with(&bad, "random.db", &noise);
    let missing = bad.join("missing.db");
    let cases: [(&Path, Expect); 5] = [
        (&truncated, |e| matches!(e, SnapshotError::Truncated { .. })),
        (&flipped, |e| {
            matches!(e, SnapshotError::WrongChecksum { .. })
        }),
        (&empty, |e| matches!(e, SnapshotError::TooShort { .. })),
        (&random, |e| matches!(e, SnapshotError::NotBolt { .. })),
        (&missing, |e| matches!(e, SnapshotError::Unreadable { .. })),
    ];
    for (file, expected) in cases {
        let e = verify_file(file).unwrap_err();
        assert!(expected(&e), "{}: {e}", file.display());
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        eprintln!("{e}");
    }
    // Without etcd's trailing hash (a plain copy of the database): accepted.
    let plain = copy_with(&bad, "plain.db", &data[..data.len() - 32]);
    assert!(!verify_file(&plain).unwrap().has_hash);

    // etcdctl's own snapshot passes too.
    let by_etcdctl = d.join("etcdctl.db");
    let out = pki
        .etcdctl(&a.spec.client_url())
        .args(["snapshot", "save"])
        .arg(&by_etcdctl)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(verify_file(&by_etcdctl).unwrap().has_hash);

    // Restore each into a data dir, start a member on it, read the keys.
    let restored = d.join("restored");
    fs::create_dir(&restored).unwrap();
    let mut members = Vec::new();
    for (name, snap) in [("r1", &path), ("r2", &by_etcdctl), ("r3", &plain)] {
        let spec = MemberSpec::new(name);
        let target = RestoreTarget {
            name: name.into(),
            peer_url: spec.peer_url(),
            data_dir: restored.join(name),
            cluster_token: format!("restored-{name}"),
        };
        let t = Instant::now();
        restore_data_dir(&etcdutl, snap, &target).unwrap();
        eprintln!("restore {name}: {:?}", t.elapsed());
        assert_private_tree(&target.data_dir);
        assert!(target.data_dir.join("member/snap/db").is_file());
        members.push(Etcd::start(
            d,
            &pki,
            &spec,
            &target.data_dir,
            &spec.initial(),
            "new",
        ));
    }
    assert!(staging_left(&restored).is_empty());
    for m in &mut members {
        m.wait_ready(&pki).await;
        assert_keys(&pki, &m.spec.client_url(), KEYS).await;
        // The revision moved past any a client of the old member saw, and
        // the revisions below are compacted: a watch from one of them
        // fails and its client lists again.
        let mut c = pki.client(&m.spec.client_url()).await;
        let now = c.get("k/", None).await.unwrap();
        let rev = now.header().unwrap().revision();
        assert!(
            rev > etcd_mgr::restore::BUMP_REVISION as i64,
            "restored revision {rev}"
        );
        let old = c
            .get("k/", Some(GetOptions::new().with_revision(2)))
            .await
            .unwrap_err();
        assert!(old.to_string().contains("compacted"), "{old}");
    }
    drop(members);

    // A data dir that is not empty is refused and left as it was.
    let busy = restored.join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("precious"), b"do not touch").unwrap();
    let target = |name: &str, data_dir: PathBuf| RestoreTarget {
        name: name.into(),
        peer_url: MemberSpec::new(name).peer_url(),
        data_dir,
        cluster_token: "restored".into(),
    };
    let e = restore_data_dir(&etcdutl, &path, &target("busy", busy.clone())).unwrap_err();
    assert!(matches!(e, RestoreError::DataDirNotEmpty { .. }), "{e}");
    eprintln!("{e}");
    let listing: Vec<_> = fs::read_dir(&busy)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listing, ["precious"]);
    assert_eq!(fs::read(busy.join("precious")).unwrap(), b"do not touch");

    // A damaged snapshot is refused before etcdutl runs.
    let e = restore_data_dir(&etcdutl, &flipped, &target("f", restored.join("f"))).unwrap_err();
    assert!(
        matches!(
            e,
            RestoreError::Snapshot(SnapshotError::WrongChecksum { .. })
        ),
        "{e}"
    );
    assert!(!restored.join("f").exists());

    // An empty data dir is fine (it is replaced).
    let empty_dir = restored.join("e");
    fs::create_dir(&empty_dir).unwrap();
    restore_data_dir(&etcdutl, &path, &target("e", empty_dir.clone())).unwrap();
    assert_private_tree(&empty_dir);

    // etcdutl's own refusal comes back with its stderr; nothing is left.
    let mut odd = target("odd", restored.join("odd"));
    odd.peer_url = "https://127.0.0.1:notaport".into();
    let e = restore_data_dir(&etcdutl, &path, &odd).unwrap_err();
    assert!(matches!(e, RestoreError::Etcdutl { .. }), "{e}");
    eprintln!("{e}");
    assert!(!restored.join("odd").exists());
    assert!(staging_left(&restored).is_empty());
}
