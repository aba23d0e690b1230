//! etcd's upkeep end to end on real components. A single host made with a
//! small etcd quota (`init --etcd-quota-backend-bytes`) is filled until
//! etcd raises NOSPACE and the cluster refuses writes: `status` says so,
//! with what to do. The objects are deleted (deletes work under NOSPACE),
//! and the agent compacts (the API server cannot then), defragments the
//! member and disarms the alarm: writes work again and every component of
//! the host is healthy.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{text, TestHost};

const START: Duration = Duration::from_secs(180);
/// The smallest quota selfnode accepts is 32 MiB; a fresh cluster's
/// database is well below this one.
const QUOTA: &str = "48MiB";
/// Each filler ConfigMap's data: under etcd's 1.5 MiB request limit.
const FILL_BYTES: usize = 900 * 1024;
/// The upkeep task looks every 2 minutes.
const UPKEEP: Duration = Duration::from_secs(300);

fn upkeep(st: &Value) -> (String, String) {
    let c = TestHost::component(st, "etcd-upkeep");
    (
        c["state"].as_str().unwrap_or_default().to_string(),
        c["detail"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn etcd_filled_to_its_quota_is_reported_and_writable_again_once_data_is_deleted() {
    let mut host = TestHost::for_cluster();
    host.start_agent();
    host.wait_healthy(START);
    let out = host.init(&["--etcd-quota-backend-bytes", QUOTA], None);
    assert!(out.status.success(), "init: {}", text(&out));

    // The quota reached etcd: its Status reports it, and so does status.
    host.wait_for("the upkeep task to report the quota", UPKEEP, |st| {
        let (state, detail) = upkeep(st);
        state == "ready" && detail.contains("of quota 48.0 MiB; no alarms")
    });

    // Fill until etcd refuses, and `status` (which asks etcd for its alarms
    // each time) shows NOSPACE. The agent may compact, defragment and
    // disarm between the two (the history it compacts can be enough room
    // for a while): then fill again.
    let data = host.root.join("fill.txt");
    std::fs::write(&data, "x".repeat(FILL_BYTES)).unwrap();
    let from_file = format!("--from-file=data={}", data.display());
    let mut filled = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let st = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "NOSPACE never showed in status after {} ConfigMaps of 900 KiB",
            filled.len()
        );
        let name = format!("fill-{}", filled.len());
        let out = host.kubectl(&["create", "configmap", &name, &from_file]);
        if out.status.success() {
            filled.push(name);
            continue;
        }
        assert!(
            text(&out).contains("database space exceeded"),
            "after {} ConfigMaps: {}",
            filled.len(),
            text(&out)
        );
        let st = host.status();
        let raised = st["etcd"]["alarms"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["kind"] == "NoSpace"));
        if raised {
            break st;
        }
        std::thread::sleep(Duration::from_secs(5));
    };
    assert!(filled.len() >= 10, "only {} ConfigMaps fit", filled.len());
    assert_eq!(st["healthy"], false, "{st:#}");
    let out = host.selfnode().arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("etcd alarm: NOSPACE"), "{}", text(&out));

    // Deletes work under NOSPACE; the agent does the rest.
    let mut delete = vec!["delete", "configmap"];
    delete.extend(filled.iter().map(String::as_str));
    host.kubectl_ok(&delete);
    host.wait_for("the NOSPACE alarm disarmed", UPKEEP, |st| {
        let (state, detail) = upkeep(st);
        state == "ready"
            && detail.contains("no alarms")
            && st["etcd"]["alarms"]
                .as_array()
                .is_some_and(|a| a.is_empty())
    });
    let log = host.agent_log();
    for what in [
        "compacted etcd's key space",
        "defragmented etcd member",
        "disarmed etcd's NOSPACE alarm",
    ] {
        assert!(log.contains(what), "no {what:?} in the agent's log");
    }

    support::retry("a write after the alarm", Duration::from_secs(60), || {
        let out = host.kubectl(&["create", "configmap", "after-nospace"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(text(&out))
        }
    });
    host.wait_healthy(START);
}
