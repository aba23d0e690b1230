//! Unit tests of the supervisor.

use super::*;

#[test]
fn backoff_grows_caps_and_resets_after_a_stable_run() {
    let mut b = Backoff::default();
    let short = Duration::from_secs(1);
    let d: Vec<f64> = (0..8).map(|_| b.after_run(short).as_secs_f64()).collect();
    assert!((0.8..=1.2).contains(&d[0]), "{d:?}");
    assert!((1.6..=2.4).contains(&d[1]), "{d:?}");
    assert!((3.2..=4.8).contains(&d[2]), "{d:?}");
    assert!(d[7] <= 36.0 && d[7] >= 24.0, "capped at 30s ±20%: {d:?}");
    let after_stable = b.after_run(Duration::from_secs(120)).as_secs_f64();
    assert!((0.8..=1.2).contains(&after_stable), "{after_stable}");
}

/// A service that was ready and then fails every health check (a
/// `sleep` standing in for a wedged containerd) is stopped and started
/// again after `UNHEALTHY_RESTART`, with the reason in its status; one
/// that fails only now and then is left alone.
#[tokio::test(start_paused = true)]
async fn a_service_wedged_for_too_long_is_restarted() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("svc.log");
    let starts = Arc::new(AtomicU32::new(0));
    let checks = Arc::new(AtomicU32::new(0));
    let spec: SpecFn = {
        let (starts, checks) = (starts.clone(), checks.clone());
        Arc::new(move || {
            starts.fetch_add(1, Ordering::SeqCst);
            let checks = checks.clone();
            Ok(ServiceSpec {
                config_digest: String::new(),
                program: "/bin/sleep".into(),
                args: vec!["600".into()],
                env: vec![],
                log: log.clone(),
                // Ready, then two failures and a success (flaky, kept),
                // then nothing but failures (wedged).
                probe: Arc::new(move || {
                    let n = checks.fetch_add(1, Ordering::SeqCst);
                    Box::pin(async move {
                        match n {
                            0 | 3 => Ok(()),
                            _ => Err(anyhow::anyhow!("connection timed out")),
                        }
                    })
                }),
                stop_grace: Duration::from_secs(5),
            })
        })
    };
    let mut st = AgentStatus {
        pid: 1,
        version: String::new(),
        started: 0,
        updated: 0,
        bundle: PathBuf::new(),
        api_lb_port: None,
        components: vec![],
        snapshots: None,
    };
    st.components
        .push(crate::status::ComponentStatus::new("svc", None));
    let status = StatusHandle::new(st);
    let cancel = CancellationToken::new();
    let (ready, _) = watch::channel(false);
    let (_reload_tx, reload) = watch::channel(0u64);
    let tracker = TaskTracker::new();
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(run(
        Service {
            name: "svc".into(),
            spec,
        },
        status.clone(),
        ManagedPids::default(),
        cancel.clone(),
        ready,
        reload,
        tracker.clone(),
    ));
    let restarted = loop {
        let c = status.snapshot().unwrap().components[0].clone();
        if c.restarts > 0 {
            break c;
        }
        assert!(
            started.elapsed() < UNHEALTHY_RESTART * 2,
            "not restarted: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        started.elapsed() >= UNHEALTHY_RESTART,
        "restarted after {:?}",
        started.elapsed()
    );
    assert_eq!(restarted.restarts, 1);
    let why = restarted.last_error.unwrap();
    assert!(
        why.contains("failed every health check for 5m") && why.contains("connection timed out"),
        "{why}"
    );
    while starts.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    task.await.unwrap();
    tracker.close();
    tracker.wait().await;
    assert_eq!(
        status.snapshot().unwrap().components[0].state,
        ComponentState::Stopped
    );
}

#[test]
fn exits_are_described_for_humans() {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        describe_exit(Ok(ExitStatus::from_raw(1 << 8))),
        "exited with code 1"
    );
    assert_eq!(
        describe_exit(Ok(ExitStatus::from_raw(9))),
        "killed by signal 9 (SIGKILL)"
    );
}
