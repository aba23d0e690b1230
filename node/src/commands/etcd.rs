use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{EtcdCommand, Output, SnapshotCommand};
use crate::paths::HostPaths;

pub async fn run(paths: &HostPaths, cmd: EtcdCommand) -> anyhow::Result<ExitCode> {
    let cfg = crate::etcd::config(paths);
    match cmd {
        EtcdCommand::Members { output } => {
            let members = etcd_mgr::members(&cfg).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&members)?),
                Output::Table => {
                    println!(
                        "{:<17} {:<12} {:<8} {:<7} {:>10} {:>10}  PEER URLS",
                        "ID", "NAME", "HEALTHY", "LEADER", "DB SIZE", "IN USE"
                    );
                    for m in &members {
                        let mb = |s: Option<i64>| {
                            s.map(|s| format!("{:.1} MB", s as f64 / 1e6))
                                .unwrap_or_else(|| "-".into())
                        };
                        let role = if m.is_learner { " (learner)" } else { "" };
                        println!(
                            "{:<17} {:<12} {:<8} {:<7} {:>10} {:>10}  {}{role}",
                            m.id,
                            m.name,
                            m.healthy,
                            m.is_leader,
                            mb(m.db_size),
                            mb(m.db_size_in_use),
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
            discard_other_members,
            init,
        }) => {
            let pki = pki.or_else(|| kept_pki(paths, &file));
            let restore = crate::sequences::init::RestoreSource {
                snapshot: file,
                pki,
                force,
                recover: false,
                discard_other_members,
            };
            super::init_sequence(paths, init, Some(restore)).await
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

/// After a reset the host's PKI is gone; the agent keeps what a restore
/// needs beside its scheduled snapshots. Used when `--pki` is not given and
/// the host has no PKI: the copy beside the snapshot file, else the one in
/// the default snapshot directory.
pub(super) fn kept_pki(
    paths: &HostPaths,
    snapshot: &std::path::Path,
) -> Option<std::path::PathBuf> {
    if paths.pki_dir().join("ca.key").exists() {
        return None;
    }
    let beside = snapshot
        .parent()
        .map(|d| d.join(crate::agent::tasks::snapshots::PKI_COPY));
    let default = paths
        .snapshot_dir()
        .join(crate::agent::tasks::snapshots::PKI_COPY);
    let found = beside
        .into_iter()
        .chain([default])
        .find(|d| d.join("ca.key").is_file())?;
    eprintln!(
        "[restore] using the PKI kept with the scheduled snapshots: {}",
        found.display()
    );
    Some(found)
}
