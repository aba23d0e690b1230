//! `selfnode certs`: prints what `crate::certs` found and did.

use std::process::ExitCode;

use crate::certs::ExpiryRow;
use crate::cli::{CertsCommand, Output};
use crate::paths::HostPaths;

pub async fn run(paths: &HostPaths, cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::CheckExpiration { output } => {
            let rows = crate::certs::expiration(paths)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Table => print_table(&rows),
            }
        }
        CertsCommand::Renew { timeout, output } => {
            let socket = crate::agent::drain::containerd_socket(paths);
            let report =
                crate::certs::renew(paths, &socket, timeout, output == Output::Json).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => {
                    println!();
                    print_table(&report.certificates);
                    println!("\nCopies of admin.conf made before keep working until their own certificate expires; copy /etc/kubernetes/admin.conf again.");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[ExpiryRow]) {
    println!(
        "{:<26} {:<22} {:>9}  {:<15} KIND",
        "CERTIFICATE", "EXPIRES", "RESIDUAL", "SIGNED BY"
    );
    for r in rows {
        let expires = r
            .not_after
            .clone()
            .or_else(|| r.problem.clone())
            .unwrap_or_default();
        let residual = r.residual_days.map(|d| format!("{d}d")).unwrap_or_default();
        let kind = match r.kind {
            bootstrap::pki::CertKind::Ca => "ca",
            bootstrap::pki::CertKind::Leaf => "certificate",
            bootstrap::pki::CertKind::Kubeconfig => "kubeconfig",
        };
        println!(
            "{:<26} {:<22} {:>9}  {:<15} {kind}",
            r.name,
            expires,
            residual,
            r.signed_by.unwrap_or("-")
        );
    }
}
