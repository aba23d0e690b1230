use std::process::ExitCode;

use crate::cli::{Output, VersionArgs};

pub fn run(args: VersionArgs) -> anyhow::Result<ExitCode> {
    let bundle = args
        .bundle
        .as_deref()
        .map(dist::bundle::Bundle::open)
        .transpose()?;
    let mut rows = vec![(
        "selfnode".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    )];
    if let Some(b) = &bundle {
        let v = b.versions();
        rows.extend([
            ("kubernetes".to_string(), v.kubernetes.clone()),
            ("etcd".to_string(), v.etcd.clone()),
            ("coredns".to_string(), v.coredns.clone()),
            ("pause".to_string(), v.pause.clone()),
            ("containerd".to_string(), v.containerd.clone()),
        ]);
    }
    match args.output {
        Output::Json => {
            let map: serde_json::Map<String, serde_json::Value> = rows
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            println!("{}", serde_json::to_string_pretty(&map)?);
        }
        Output::Table => {
            for (k, v) in rows {
                println!("{k:<12} {v}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
