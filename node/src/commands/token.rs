//! `selfnode token create|list|delete`: prints what `crate::tokens` does.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Output, TokenCommand};
use crate::paths::HostPaths;

pub async fn run(paths: &HostPaths, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    if let TokenCommand::Create {
        ttl, control_plane, ..
    } = &cmd
    {
        // Before anything is asked of the cluster: a token nobody can use
        // is a credential for nothing.
        crate::tokens::check_ttl(
            crate::tokens::ttl_or_default(*ttl, *control_plane),
            *control_plane,
        )?;
    }
    let admin = paths.kubeconfig_dir().join("admin.conf");
    if !admin.exists() {
        anyhow::bail!(
            "{} does not exist: run 'selfnode token' on a control-plane host of the cluster",
            admin.display()
        );
    }
    let client = crate::cluster::kube_client(&admin)
        .await
        .with_context(|| format!("using {}", admin.display()))?;
    match cmd {
        TokenCommand::Create {
            ttl,
            description,
            control_plane,
            usages,
            output,
        } => {
            let ttl = crate::tokens::ttl_or_default(ttl, control_plane);
            let kind = crate::tokens::TokenKind {
                control_plane,
                single_use: control_plane || usages == Some(1),
            };
            let made = crate::tokens::create(&client, ttl, &description, kind).await?;
            if !made.signed {
                eprintln!(
                    "warning: token {} expired (--ttl {}) before the controller-manager signed cluster-info for it: no host can join with it; ask for a longer --ttl",
                    made.info.id,
                    humantime::format_duration(ttl)
                );
            }
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&made)?),
                Output::Table => {
                    println!("{}", made.join_string);
                    eprintln!(
                        "\ntoken {} is valid until {}{}. On the new host, with its agent running:\n  selfnode join {}",
                        made.info.id,
                        made.info.expiration.as_deref().unwrap_or("-"),
                        if control_plane { " (control plane)" } else { "" },
                        if control_plane { "--control-plane <join string>" } else { "<join string>" },
                    );
                }
            }
        }
        TokenCommand::List { output } => {
            let tokens = crate::tokens::list(&client).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&tokens)?),
                Output::Table => {
                    println!(
                        "{:<8} {:<10} {:<21} {:<14} DESCRIPTION",
                        "ID", "TTL", "EXPIRES", "ROLE"
                    );
                    for t in &tokens {
                        println!(
                            "{:<8} {:<10} {:<21} {:<14} {}",
                            t.id,
                            crate::tokens::time_left(t),
                            t.expiration.as_deref().unwrap_or("never"),
                            if t.control_plane {
                                "control-plane"
                            } else {
                                "node"
                            },
                            t.description
                        );
                    }
                }
            }
        }
        TokenCommand::Delete { token } => {
            let id = token.split('.').next().unwrap_or_default().to_string();
            if crate::tokens::delete(&client, &token).await? {
                println!("deleted token {id}");
            } else {
                println!("no token {id} (already deleted or expired)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
