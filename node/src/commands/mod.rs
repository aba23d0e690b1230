//! Thin command handlers: parse (done by clap), call the library, print.

mod certs;
pub(crate) mod etcd;
mod image;
mod images;
mod join;
mod membership;
mod recover;
mod reset;
mod status;
mod stop;
mod token;
mod upgrade;
mod version;

use std::process::ExitCode;

use crate::cli::{Cli, Command, InitArgs, Output};
use crate::paths::HostPaths;
use crate::sequences::init::{InitContext, RestoreSource};

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let paths = HostPaths::under(&cli.root);
    match cli.command {
        Command::Agent(args) => {
            let opts = crate::agent::AgentOptions {
                bundle: args.bundle.unwrap_or_else(|| paths.default_bundle()),
                containerd_socket: args.containerd_socket,
                kubelet_healthz_port: args.kubelet_healthz_port,
                api_lb_port: args.api_lb_port,
                cgroup_root: args.cgroup_root,
                selfnode_exe: std::env::current_exe()?,
                checkpoint_verify: args.checkpoint_verify_interval,
                snapshots: crate::agent::tasks::snapshots::SnapshotSchedule {
                    interval: args.etcd_snapshot_interval,
                    keep: args.etcd_snapshot_keep as usize,
                    max_age: args.etcd_snapshot_max_age,
                    dir: args
                        .etcd_snapshot_dir
                        .unwrap_or_else(|| paths.snapshot_dir()),
                    member_manifest: paths.etcd_manifest(),
                    member_data_dir: paths.etcd_data_dir(),
                    pki_dir: paths.pki_dir(),
                    etcd: crate::etcd::config(&paths),
                },
                paths,
            };
            crate::agent::run(opts).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init(args) => init_sequence(&paths, args, None).await,
        Command::Join(args) => join::run(&paths, args).await,
        Command::Reset(args) => reset::run(&paths, args).await,
        Command::Stop(args) => stop::run(&paths, args).await,
        Command::Status(args) => status::run(&paths, args.output).await,
        Command::Recover(args) => recover::run(&paths, args).await,
        Command::Promote(args) => membership::promote(&paths, args).await,
        Command::Demote(args) => membership::demote(&paths, args).await,
        Command::Etcd(cmd) => etcd::run(&paths, cmd).await,
        Command::Token(cmd) => token::run(&paths, cmd).await,
        Command::Upgrade(cmd) => upgrade::run(&paths, cmd).await,
        Command::Certs(cmd) => certs::run(&paths, cmd).await,
        Command::Images(crate::cli::ImagesCommand::Import(args)) => {
            images::import(&paths, args).await
        }
        Command::Image(crate::cli::ImageCommand::Build(args)) => image::build(args),
        Command::Version(args) => version::run(args),
        Command::NetworkAgent(args) => network_agent(args).await,
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "selfnode",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `init`, or with `restore` `selfnode etcd snapshot restore`: the same
/// sequence (its plan differs), started from a snapshot.
async fn init_sequence(
    paths: &HostPaths,
    args: InitArgs,
    restore: Option<RestoreSource>,
) -> anyhow::Result<ExitCode> {
    let flags = args.flags();
    let ctx = InitContext::from_input(
        paths,
        args.config.as_deref(),
        &flags,
        args.output == Output::Json,
        restore,
    )?;
    let summary = crate::sequences::init::run(ctx).await?;
    print_summary(&summary, args.output)
}

/// What `init` and every sequence from a snapshot print at the end.
fn print_summary(
    summary: &crate::sequences::init::InitSummary,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match output {
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
            println!(
                "\nAdd a host (with init's token, valid up to 24h: 'selfnode token list' shows when it expires, 'selfnode token create' makes more):\n  selfnode join {}",
                summary.join_string
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the pod-network agent until SIGTERM/SIGINT.
async fn network_agent(args: crate::cli::NetworkAgentArgs) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let config = kube::Config::infer().await?;
    let client = kube::Client::try_from(config)?;
    let mut cfg = cni::AgentConfig::new(args.cluster_cidr);
    cfg.bridge = args.bridge;
    cfg.mtu = args.mtu;
    cfg.conf_dir = args.cni_conf_dir;
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stopper = cancel.clone();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        stopper.cancel();
    });
    match cni::run(client, args.node_name, cfg, cancel).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err) => {
            eprintln!("error: {err:#}");
            Ok(ExitCode::from(2))
        }
    }
}
