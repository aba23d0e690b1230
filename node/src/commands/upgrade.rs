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
    }
}
