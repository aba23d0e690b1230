//! Services that `init` (and later `join`, `recover`) ask the agent to run:
//! the temporary control plane and the host etcd. Each is a
//! `bootstrap::plane::ProcessSpec` as JSON in `var/lib/selfnode/services/`;
//! the agent reconciles the directory every two seconds and on SIGHUP:
//! a new file starts a service, a changed file restarts it, a removed file
//! stops it. Because the agent runs them, they outlive an `init` that is
//! killed, and the next `init` finds them running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bootstrap::plane::ProcessSpec;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::reaper::ManagedPids;
use super::supervisor::{self, ProbeFn, Service, ServiceSpec, SpecFn, StatusHandle};
use crate::status::ComponentStatus;

/// Reads the services directory: name → spec. Unreadable or invalid files
/// are logged and skipped (a half-written file never exists: writers rename).
pub fn read_services(dir: &Path) -> BTreeMap<String, ProcessSpec> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<ProcessSpec>(&b).map_err(|e| e.to_string()))
        {
            Ok(spec) if path.file_stem().and_then(|s| s.to_str()) == Some(spec.name.as_str()) => {
                out.insert(spec.name.clone(), spec);
            }
            Ok(spec) => {
                tracing::warn!(file = %path.display(), name = %spec.name, "service file name does not match its service; ignored")
            }
            Err(err) => {
                tracing::warn!(file = %path.display(), %err, "invalid service file; ignored")
            }
        }
    }
    out
}

pub struct ExtraContext {
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub log_dir: PathBuf,
    pub path_env: String,
}

struct Running {
    spec: ProcessSpec,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Reconciles until `stop`, then stops every service it runs (etcd last).
pub async fn run(
    ctx: ExtraContext,
    status: StatusHandle,
    managed: ManagedPids,
    mut reload: watch::Receiver<u64>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    loop {
        let desired = read_services(&ctx.dir);
        let stale: Vec<String> = running
            .iter()
            .filter(|(name, r)| desired.get(*name) != Some(&r.spec))
            .map(|(name, _)| name.clone())
            .collect();
        // Stop every stale service at once: the temporary plane goes in one
        // grace period, not one per component.
        let stopping: Vec<(String, Running)> = stale
            .into_iter()
            .filter_map(|name| running.remove(&name).map(|r| (name, r)))
            .collect();
        for (name, r) in &stopping {
            tracing::info!(service = %name, "service removed or changed; stopping it");
            r.stop.cancel();
        }
        for (name, r) in stopping {
            let _ = r.task.await;
            status.remove_component(&name);
        }
        for (name, spec) in desired {
            if running.contains_key(&name) {
                continue;
            }
            tracing::info!(service = %name, "starting service from {}", ctx.dir.display());
            status.add_component(ComponentStatus::new(
                &name,
                Some(ctx.log_dir.join(format!("{name}.log"))),
            ));
            let token = CancellationToken::new();
            let (ready_tx, _) = watch::channel(false);
            let task = tracker.spawn(supervisor::run(
                Service {
                    name: name.clone(),
                    spec: spec_fn(&ctx, &spec),
                },
                status.clone(),
                managed.clone(),
                token.clone(),
                ready_tx,
                reload.clone(),
                tracker.clone(),
            ));
            running.insert(
                name,
                Running {
                    spec,
                    stop: token,
                    task,
                },
            );
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            Ok(()) = reload.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    // Clients first, the datastore last.
    let (etcd, others): (Vec<_>, Vec<_>) = std::mem::take(&mut running)
        .into_iter()
        .partition(|(n, _)| n == "etcd");
    for group in [others, etcd] {
        for (_, r) in &group {
            r.stop.cancel();
        }
        for (_, r) in group {
            let _ = r.task.await;
        }
    }
}

fn spec_fn(ctx: &ExtraContext, spec: &ProcessSpec) -> SpecFn {
    let program = ctx.bin_dir.join(&spec.binary);
    let log = ctx.log_dir.join(format!("{}.log", spec.name));
    let path_env = ctx.path_env.clone();
    let spec = spec.clone();
    Arc::new(move || {
        let health = spec.health.clone();
        let probe: ProbeFn = Arc::new(move || {
            let health = health.clone();
            Box::pin(async move { Ok(super::probe::check(&health).await?) })
        });
        Ok(ServiceSpec {
            config_digest: String::new(),
            program: program.clone(),
            args: spec.args.iter().map(Into::into).collect(),
            env: vec![("PATH".into(), path_env.clone())],
            log: log.clone(),
            probe,
            // The temporary apiserver drains watches for as long as it is
            // allowed to; it is throw-away, and etcd stops well within this.
            stop_grace: Duration::from_secs(5),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootstrap::plane::HealthCheck;

    fn spec(name: &str) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            binary: "etcd".into(),
            args: vec!["--name=x".into()],
            health: HealthCheck::Https {
                address: "127.0.0.1:2379".parse().unwrap(),
                path: "/readyz".into(),
                ca_file: None,
                client_cert: None,
            },
        }
    }

    #[test]
    fn service_files_are_read_by_name_and_bad_ones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("etcd.json"),
            serde_json::to_vec(&spec("etcd")).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("other.json"),
            serde_json::to_vec(&spec("etcd")).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("broken.json"), b"{").unwrap();
        std::fs::write(dir.path().join(".etcd.json.tmp-1"), b"{").unwrap();
        let got = read_services(dir.path());
        assert_eq!(got.keys().collect::<Vec<_>>(), vec!["etcd"]);
        assert_eq!(got["etcd"], spec("etcd"));
        assert!(read_services(&dir.path().join("missing")).is_empty());
    }
}
