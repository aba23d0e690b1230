//! etcd-mgr's upkeep against the real etcd of the pinned bundle: a member
//! with a 16 MiB quota is filled until etcd raises NOSPACE, and is brought
//! back the way the agent's etcd-upkeep task does it (the data deleted and
//! compacted here stand for the API server's own deletes and compaction):
//! defragment, see the file shrink below the quota, disarm, write again.

mod support;

use std::time::Duration;

use etcd_client::{CompactionOptions, Compare, CompareOp, DeleteOptions, Txn, TxnOp};
use etcd_mgr::maintenance::{self, AlarmKind};
use support::{Etcd, MemberSpec, Pki};

const MIB: i64 = 1024 * 1024;
const QUOTA: i64 = 16 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_member_is_defragmented_disarmed_and_takes_writes_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(d);
    let spec = MemberSpec::new("a");
    let mut etcd = Etcd::start_with(
        d,
        &pki,
        &spec,
        &d.join("a"),
        &spec.initial(),
        "new",
        &[format!("--quota-backend-bytes={QUOTA}")],
    );
    etcd.wait_ready(&pki).await;
    let url = spec.client_url();
    let cfg = pki.config(std::slice::from_ref(&url));
    let mut kv = pki.client(&url).await;

    let fresh = maintenance::usage(&cfg).await.unwrap();
    assert_eq!(fresh.quota, Some(QUOTA), "the quota etcd runs with");
    assert!(fresh.member_id != 0 && fresh.leader == fresh.member_id);
    assert!(maintenance::alarms(&cfg).await.unwrap().is_empty());
    assert!(maintenance::disarm_nospace(&cfg).await.unwrap().is_empty());

    // Fill: 256 KiB values under new keys until etcd refuses.
    let value = vec![b'x'; 256 * 1024];
    let mut refused = None;
    for i in 0..400 {
        if let Err(e) = kv.put(format!("fill/{i:04}"), value.clone(), None).await {
            refused = Some((i, e));
            break;
        }
    }
    let (written, e) = refused.expect("etcd took 100 MiB with a 16 MiB quota");
    eprintln!("etcd refused write {written}: {e}");
    assert!(e.to_string().contains("database space exceeded"), "{e}");

    // The API server compacts with a transaction that first puts its
    // compaction key: refused too, so under NOSPACE nothing compacts.
    let compact_txn = Txn::new()
        .when([Compare::version("compact_rev_key", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("compact_rev_key", "1", None)])
        .or_else([TxnOp::get("compact_rev_key", None)]);
    let e = kv.txn(compact_txn).await.unwrap_err();
    assert!(e.to_string().contains("database space exceeded"), "{e}");

    let alarms = maintenance::alarms(&cfg).await.unwrap();
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(alarms[0].kind, AlarmKind::NoSpace);
    assert_eq!(alarms[0].member_id, fresh.member_id);
    let full = maintenance::usage(&cfg).await.unwrap();
    eprintln!(
        "full: db {} MiB, in use {} MiB",
        full.db_size / MIB,
        full.db_size_in_use / MIB
    );
    assert!(full.db_size >= QUOTA - 2 * MIB, "{full:?}");
    let members = etcd_mgr::members(&cfg).await.unwrap();
    assert_eq!(members[0].db_size, Some(full.db_size));
    assert_eq!(members[0].db_size_quota, Some(QUOTA));
    assert!(members[0].db_size_in_use.is_some());

    // What the API server does in a cluster: delete, then compact. Deletes
    // and compaction add no data, so etcd takes them under NOSPACE.
    let deleted = kv
        .delete("fill/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), written as i64);
    let rev = deleted.header().unwrap().revision();
    kv.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let compacted = maintenance::usage(&cfg).await.unwrap();
    assert!(
        compacted.db_size >= QUOTA - 2 * MIB,
        "compaction alone frees pages, not the file: {compacted:?}"
    );
    assert!(compacted.free() > QUOTA / 2, "{compacted:?}");

    maintenance::defragment(&cfg, &url, Duration::from_secs(60))
        .await
        .unwrap();
    let defragmented = maintenance::usage(&cfg).await.unwrap();
    eprintln!(
        "defragmented: db {} KiB, in use {} KiB",
        defragmented.db_size / 1024,
        defragmented.db_size_in_use / 1024
    );
    assert!(defragmented.db_size < 2 * MIB, "{defragmented:?}");

    // The alarm outlives the cause until it is disarmed.
    let e = kv.put("after", "defrag", None).await.unwrap_err();
    assert!(e.to_string().contains("database space exceeded"), "{e}");
    let disarmed = maintenance::disarm_nospace(&cfg).await.unwrap();
    assert_eq!(disarmed, alarms);
    assert!(maintenance::alarms(&cfg).await.unwrap().is_empty());
    kv.put("after", "disarm", None).await.unwrap();
    assert!(maintenance::disarm_nospace(&cfg).await.unwrap().is_empty());
}
