//! `selfnode recover`: prints what `crate::recover` found and did.

use std::process::ExitCode;

use crate::cli::{Output, RecoverArgs};
use crate::paths::HostPaths;

pub async fn run(paths: &HostPaths, args: RecoverArgs) -> anyhow::Result<ExitCode> {
    let quiet = args.output == Output::Json;
    if args.force_new_cluster {
        let steps = crate::sequences::recover::force_new::run(paths, quiet).await?;
        match args.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&steps)?),
            Output::Table => println!(
                "etcd is a one-member cluster of this host's member, with its data; the API serves. Join the other control-plane hosts again: 'selfnode token create --control-plane' here, then 'selfnode reset' and 'selfnode join' on each"
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(snapshot) = args.from_snapshot {
        let pki = args.pki.or_else(|| super::etcd::kept_pki(paths, &snapshot));
        let summary = crate::sequences::recover::from_snapshot(
            paths,
            snapshot,
            pki,
            args.discard_other_members,
            quiet,
        )
        .await?;
        return super::print_summary(&summary, args.output);
    }
    let report = crate::sequences::recover::run(paths, args.timeout, quiet).await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            if report.found.is_empty() {
                println!("nothing to recover: etcd's manifest is there, the API answers, every self-hosted object exists and every control-plane component has a Ready pod");
            } else {
                println!("\nFound:");
                for f in &report.found {
                    println!("  - {f}");
                }
                println!("Did:");
                for d in &report.did {
                    println!("  - {d}");
                }
            }
            for l in &report.left_running {
                println!("Still down: {l}");
            }
        }
    }
    Ok(if report.left_running.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
