//! `selfnode image build`: checks every input, then builds the image
//! (`dist::appliance`).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{ImageBuildArgs, ImageFormat, Output};

/// Where scripts/install-deps.sh puts Debian's kernel.
pub const DEFAULT_KERNEL_DIR: &str = "/var/cache/selfnode/kernel";

pub fn build(args: ImageBuildArgs) -> anyhow::Result<ExitCode> {
    // Everything from the input alone, before anything is written.
    let config = match &args.config {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                crate::appliance::config::ConfigError {
                    field: "--config".into(),
                    source_name: "the command line".into(),
                    value: path.display().to_string(),
                    why: format!("cannot be read: {e}"),
                }
            })?;
            crate::appliance::config::parse(Some((&path.display().to_string(), &text)), "")?;
            Some(text.into_bytes())
        }
    };
    let bundle = dist::bundle::Bundle::open(&args.bundle)?;
    // Every boot would run what the image carries: a damaged binary is
    // refused here, not found on a machine.
    bundle.verify_checksums()?;
    let (kernel, modules) = match (&args.kernel, &args.modules) {
        (Some(k), m) => (k.clone(), m.clone()),
        (None, m) => {
            let dir = PathBuf::from(DEFAULT_KERNEL_DIR);
            let modules = m.clone().or_else(|| only_release(&dir.join("lib/modules")));
            (dir.join("vmlinuz"), modules)
        }
    };
    let selfnode = std::env::current_exe()?;
    let req = dist::appliance::ImageRequest {
        format: match args.format {
            ImageFormat::Iso => dist::appliance::Format::Iso,
            ImageFormat::Raw => dist::appliance::Format::Raw,
        },
        bundle,
        selfnode,
        kernel,
        modules,
        config,
        out: args.out.clone(),
        host_root: PathBuf::from("/"),
        data_size: args.data_size_mib << 20,
        epoch: args.source_date_epoch,
    };
    dist::appliance::check(&req)?;
    let started = std::time::Instant::now();
    let quiet = args.output == Output::Json;
    let mut progress = |line: &str| {
        if !quiet {
            eprintln!("[image] {line}");
        }
    };
    let built = dist::appliance::build(&req, &mut progress)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&built)?),
        Output::Table => println!(
            "{} ({} MiB, initramfs {} MiB) in {:.0}s\nsha256 {}",
            built.path.display(),
            built.bytes >> 20,
            built.initramfs_bytes >> 20,
            started.elapsed().as_secs_f64(),
            built.sha256
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The single `<release>` directory under `dir`, if there is exactly one.
fn only_release(dir: &std::path::Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    if found.len() == 1 {
        found.pop()
    } else {
        None
    }
}
