//! `selfnode join`: checks the input, runs `crate::join`, prints.

use std::process::ExitCode;

use crate::cli::{JoinArgs, Output};
use crate::paths::HostPaths;

pub async fn run(paths: &HostPaths, args: JoinArgs) -> anyhow::Result<ExitCode> {
    // Everything from the input alone, before anything is asked or written.
    let text = match &args.token_file {
        Some(path) => read_join_string(path)?,
        None => {
            eprintln!("warning: the join string on the command line is visible to every user of this host (ps, /proc); pass it with --token-file FILE or on standard input (--token-file -)");
            args.join_string.or(args.token).unwrap_or_default()
        }
    };
    let join: bootstrap::join::JoinString = text.parse()?;
    let control_plane = args.control_plane || join.control_plane;
    let host = crate::cluster::host_identity()?;
    let node_name = bootstrap::config::node_name(args.node_name, &host)?;
    let advertise_address = args
        .advertise_address
        .as_deref()
        .map(|a| bootstrap::config::advertise_address(a, &host))
        .transpose()?;
    let ctx = crate::sequences::join::JoinContext {
        paths: paths.clone(),
        join,
        node_name,
        advertise_address,
        control_plane,
        quiet: args.output == Output::Json,
    };
    let summary = crate::sequences::join::run(ctx).await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        Output::Table if summary.control_plane => println!(
            "\nNode {} ({}) joined cluster {:?} as a control-plane node ({:.0}s): its etcd member is promoted and its kube-apiserver is Ready. Check with: selfnode etcd members",
            summary.node_name, summary.node_ip, summary.cluster_name, summary.seconds
        ),
        Output::Table => println!(
            "\nNode {} ({}) joined cluster {:?} and is Ready ({:.0}s). On a control-plane host: kubectl get nodes",
            summary.node_name, summary.node_ip, summary.cluster_name, summary.seconds
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The first line of `path` (`-`: standard input).
fn read_join_string(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let text = if path == std::path::Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the join string from standard input")?;
        s
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the join string from {}", path.display()))?
    };
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}
