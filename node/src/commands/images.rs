use std::process::ExitCode;

use anyhow::Context;
use dist::import::{ImageOutcome, ImportEvent, ImportOptions};

use crate::cli::{ImportArgs, Output};
use crate::paths::HostPaths;

/// `selfnode images import`: one progress line per image on stderr, a summary
/// (table or JSON) on stdout.
pub async fn import(paths: &HostPaths, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let bundle_dir = args.bundle.unwrap_or_else(|| paths.default_bundle());
    let bundle = dist::bundle::Bundle::open(&bundle_dir)?;
    // The images are built from the bundle's binaries.
    bundle.verify_checksums()?;
    let socket = args
        .containerd_socket
        .unwrap_or_else(|| paths.containerd_socket());
    let exe = std::env::current_exe().context("cannot find the running selfnode binary")?;
    let options = ImportOptions {
        namespace: args.namespace.clone(),
        ..ImportOptions::default()
    };
    let progress = |ev: &ImportEvent| match ev {
        ImportEvent::ArchiveVerified {
            path,
            images,
            elapsed,
        } => {
            eprintln!(
                "[images] verified {} ({} images) in {:.1}s",
                path.display(),
                images.len(),
                elapsed.as_secs_f64()
            )
        }
        ImportEvent::ImageStarted { .. } => {}
        ImportEvent::ImageFinished(img) => eprintln!(
            "[images] {:<48} {:<15} {:.1}s",
            img.name,
            outcome(img.outcome),
            img.elapsed.as_secs_f64()
        ),
    };
    let report = dist::import::import_bundle_with(&socket, &options, &bundle, &exe, progress)
        .await
        .with_context(|| {
            format!(
                "image import into containerd at {} failed (is the agent running? 'selfnode status')",
                socket.display()
            )
        })?;
    match args.output {
        Output::Json => {
            let images: Vec<_> = report
                .images
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "name": i.name,
                        "digest": i.digest.as_str(),
                        "source": i.source.to_string(),
                        "outcome": outcome(i.outcome),
                        "bytes_written": i.bytes_written,
                        "seconds": i.elapsed.as_secs_f64(),
                    })
                })
                .collect();
            let doc = serde_json::json!({
                "namespace": args.namespace,
                "images": images,
                "nothing_written": report.nothing_written(),
                "seconds": report.elapsed.as_secs_f64(),
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Table => println!(
            "{} images in containerd namespace {} ({} imported, {} already present) in {:.1}s",
            report.images.len(),
            args.namespace,
            report
                .images
                .iter()
                .filter(|i| i.outcome == ImageOutcome::Imported)
                .count(),
            report
                .images
                .iter()
                .filter(|i| i.outcome == ImageOutcome::AlreadyPresent)
                .count(),
            report.elapsed.as_secs_f64()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn outcome(o: ImageOutcome) -> &'static str {
    match o {
        ImageOutcome::Imported => "imported",
        ImageOutcome::AlreadyPresent => "already present",
    }
}
