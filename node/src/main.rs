//! `selfnode`: the only binary of the workspace. Parses the command line,
//! installs logging, builds the one tokio runtime and hands off to a thin
//! command handler; maps failures to exit codes an init system can act on.

use clap::Parser;
use node::{cli, commands};
use std::process::ExitCode;

fn main() -> ExitCode {
    // The kernel started us as /init of an appliance image.
    if node::appliance::is_init() {
        node::appliance::run();
    }
    // The appliance's /usr/sbin/modprobe is selfnode.
    if node::appliance::modprobe::invoked_as_modprobe() {
        return node::appliance::modprobe::main();
    }
    let cli = cli::Cli::parse();
    // One TLS crypto provider for the whole process (deps.md): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_logging(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(node::exit::exit_code(&err))
        }
    }
}

/// Logs go to stderr. The agent logs at info by default; the short-lived
/// commands stay quiet unless asked (SELFNODE_LOG=debug, RUST_LOG syntax).
fn init_logging(cmd: &cli::Command) {
    // kube-rs logs every failed connection at error level; the agent
    // reports those failures itself, with what they mean.
    let default = match cmd {
        cli::Command::Agent(_) => "info,kube_client=off",
        _ => "warn,kube_client=off",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SELFNODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
