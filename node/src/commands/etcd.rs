use std::process::ExitCode;
use std::time::Duration;

use bootstrap::pki::names;

use crate::cli::{EtcdCommand, Output, SnapshotCommand};
use crate::paths::HostPaths;

/// This host's self-hosted etcd member, reached with the health-check
/// client certificate.
pub fn config(paths: &HostPaths) -> etcd_mgr::EtcdConfig {
    config_at(paths, bootstrap::plane::PlanePorts::default().etcd_client)
}

/// The etcd member listening on loopback `port` (the self-hosted member,
/// or the temporary one while `init` runs).
pub fn config_at(paths: &HostPaths, port: u16) -> etcd_mgr::EtcdConfig {
    let pki = paths.pki_dir();
    etcd_mgr::EtcdConfig {
        endpoints: vec![format!("https://127.0.0.1:{port}")],
        ca_file: pki.join(format!("{}.crt", names::ETCD_CA)),
        cert_file: pki.join(format!("{}.crt", names::ETCD_HEALTHCHECK_CLIENT)),
        key_file: pki.join(format!("{}.key", names::ETCD_HEALTHCHECK_CLIENT)),
        timeout: Duration::from_secs(5),
    }
}

pub async fn run(paths: &HostPaths, cmd: EtcdCommand) -> anyhow::Result<ExitCode> {
    let cfg = config(paths);
    match cmd {
        EtcdCommand::Members { output } => {
            let members = etcd_mgr::members(&cfg).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&members)?),
                Output::Table => {
                    println!(
                        "{:<17} {:<12} {:<8} {:<7} {:>10}  PEER URLS",
                        "ID", "NAME", "HEALTHY", "LEADER", "DB SIZE"
                    );
                    for m in &members {
                        let size = m
                            .db_size
                            .map(|s| format!("{:.1} MB", s as f64 / 1e6))
                            .unwrap_or_else(|| "-".into());
                        let role = if m.is_learner { " (learner)" } else { "" };
                        println!(
                            "{:<17} {:<12} {:<8} {:<7} {:>10}  {}{role}",
                            m.id,
                            m.name,
                            m.healthy,
                            m.is_leader,
                            size,
                            m.peer_urls.join(",")
                        );
                    }
                }
            }
            let healthy = members.iter().all(|m| m.healthy);
            Ok(if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        EtcdCommand::RemoveMember { member } => {
            match etcd_mgr::members::remove(&cfg, &member, Duration::from_secs(30)).await? {
                etcd_mgr::RemoveOutcome::Removed { id } => println!("removed etcd member {id:x}"),
                etcd_mgr::RemoveOutcome::NotAMember => {
                    println!("{member} is not a member (already removed)")
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        EtcdCommand::Snapshot(SnapshotCommand::Restore {
            file,
            pki,
            force,
            init,
        }) => {
            super::init::run_with(
                paths,
                init,
                Some(crate::init::RestoreSource {
                    snapshot: file,
                    pki,
                    force,
                }),
            )
            .await
        }
        EtcdCommand::Snapshot(SnapshotCommand::Save { file, output }) => {
            let info = etcd_mgr::snapshot::save(&cfg, &file).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&info)?),
                Output::Table => {
                    println!(
                        "saved {} ({} bytes, sha256 {})",
                        info.path.display(),
                        info.bytes,
                        info.sha256
                    )
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
