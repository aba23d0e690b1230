use std::process::ExitCode;

use crate::cli::{Output, UpgradeCommand};
use crate::paths::HostPaths;

pub async fn run(paths: &HostPaths, cmd: UpgradeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UpgradeCommand::Plan { bundle, output } => {
            let plan = crate::sequences::upgrade::plan(paths, &bundle).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
                Output::Table => {
                    println!(
                        "upgrade {} to {} ({}), bundle {}",
                        plan.current, plan.target, plan.change, plan.bundle
                    );
                    println!("\nCHECK          RESULT  FOUND");
                    for c in &plan.checks {
                        let result = if c.ok { "ok" } else { "FAILED" };
                        println!("{:<14} {:<7} {}", c.name, result, c.detail);
                    }
                    if plan.steps.is_empty() {
                        println!("\nno step: every component is at the target's version");
                    } else {
                        println!("\nSTEP  COMPONENT                ON / FROM -> TO");
                        for (i, s) in plan.steps.iter().enumerate() {
                            println!(
                                "{:>4}  {:<24} {}: {} -> {}",
                                i + 1,
                                s.component,
                                s.on,
                                s.from,
                                s.to
                            );
                        }
                    }
                    match plan.exit_code() {
                        0 => println!("\nevery check holds"),
                        _ => println!(
                            "\nrefused: {} failed; nothing was changed",
                            plan.checks
                                .iter()
                                .filter(|c| !c.ok)
                                .map(|c| c.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }
                }
            }
            Ok(ExitCode::from(plan.exit_code()))
        }
        UpgradeCommand::Apply { bundle, output } => {
            let bundle_dir = std::path::absolute(&bundle)?;
            let ctx = crate::sequences::upgrade::apply::ApplyContext {
                paths: paths.clone(),
                bundle_dir,
                quiet: output == Output::Json,
            };
            let report = crate::sequences::upgrade::apply::run(&ctx).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table if report.up_to_date => println!(
                    "nothing to upgrade: every component runs the bundle's versions ({})",
                    report.to
                ),
                Output::Table => println!(
                    "upgraded {} to {} in {:.0}s; 'selfnode upgrade status' shows the record",
                    report.from, report.to, report.seconds
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        UpgradeCommand::Stage {
            bundle,
            timeout,
            output,
        } => {
            let ctx = crate::sequences::upgrade::stage::StageContext {
                paths: paths.clone(),
                bundle_dir: std::path::absolute(&bundle)?,
                timeout,
                quiet: output == Output::Json,
            };
            let report = crate::sequences::upgrade::stage::run(&ctx).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => println!(
                    "bundle {} (Kubernetes {}) is on every host ({}) with its images, in {:.0}s",
                    report.id,
                    report.kubernetes,
                    report.hosts.join(", "),
                    report.seconds
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        UpgradeCommand::Rollback { output } => {
            let report =
                crate::sequences::upgrade::rollback::run(paths, output == Output::Json).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => println!(
                    "rolled back from {} to {} in {:.0}s",
                    report.from, report.to, report.seconds
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        UpgradeCommand::Status { output } => {
            let record = crate::sequences::upgrade::apply::UpgradeRecord::read(paths)?;
            match (output, record) {
                (Output::Json, r) => println!("{}", serde_json::to_string_pretty(&r)?),
                (Output::Table, None) => println!("no upgrade has run on this host"),
                (Output::Table, Some(r)) => {
                    let state = match (r.finished, r.rollback_started, r.rolled_back) {
                        (_, _, Some(t)) => format!("rolled back at {t} (unix seconds)"),
                        (_, Some(_), None) => "being rolled back, or the rollback was interrupted: run 'selfnode upgrade rollback' again to finish it".into(),
                        (Some(t), None, None) => format!("finished at {t} (unix seconds); 'selfnode upgrade rollback' goes back"),
                        (None, None, None) => "under way or interrupted: run 'selfnode upgrade apply' with the same bundle to finish it, or 'selfnode upgrade rollback'".into(),
                    };
                    println!("upgrade {} to {}: {state}", r.from, r.to);
                    println!("from bundle {}", r.from_bundle.display());
                    println!("to bundle   {}", r.to_bundle.display());
                    println!("snapshot before it: {}", r.snapshot.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
