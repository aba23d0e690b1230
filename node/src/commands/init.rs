use std::process::ExitCode;

use anyhow::Context;
use bootstrap::config::{self, InitFlags};

use crate::cli::{InitArgs, Output};
use crate::paths::HostPaths;

pub async fn run(paths: &HostPaths, args: InitArgs) -> anyhow::Result<ExitCode> {
    run_with(paths, args, None).await
}

/// `init`, or with `restore` `selfnode etcd snapshot restore`: the same
/// sequence, started from a snapshot.
pub async fn run_with(
    paths: &HostPaths,
    args: InitArgs,
    restore: Option<crate::init::RestoreSource>,
) -> anyhow::Result<ExitCode> {
    // Everything is validated before anything is written.
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            Some(config::parse_file(path, &text)?)
        }
        None => None,
    };
    let flags = InitFlags {
        cluster_name: args.cluster_name,
        node_name: args.node_name,
        advertise_address: args.advertise_address,
        pod_cidr: args.pod_cidr,
        service_cidr: args.service_cidr,
        extra_sans: args.extra_sans,
        bundle: args.bundle,
        allow_workloads: args.allow_workloads,
    };
    let settings = config::resolve(file, &flags, &crate::init::host_identity()?)?;
    let bundle_dir = settings
        .bundle
        .clone()
        .unwrap_or_else(|| paths.default_bundle());
    let bundle = dist::bundle::Bundle::open(&bundle_dir)?;
    let quiet = args.output == Output::Json;
    let summary = crate::init::run(crate::init::InitContext {
        paths: paths.clone(),
        settings,
        bundle,
        quiet,
        restore,
    })
    .await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        Output::Table => {
            println!(
                "\nYour self-hosted cluster {:?} is up ({:.0}s).",
                summary.cluster_name, summary.seconds
            );
            println!(
                "\nUse it:\n  export KUBECONFIG={}\n  kubectl get pods -A",
                summary.admin_kubeconfig.display()
            );
            println!("\nCheck this host: selfnode status");
            println!(
                "API server: {} (CA pin {})",
                summary.api_endpoint, summary.ca_cert_hash
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
