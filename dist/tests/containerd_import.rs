//! dist against a real containerd (the bundle's) and runc: import the
//! bundle's images, run each of them, re-import as a no-op, refuse bad
//! archives without writing anything, and clean up after ourselves.

mod common;

use common::{runtime, BundleView, TestContainerd};
use containerd_client::services::v1::snapshots::{ListSnapshotsRequest, StatSnapshotRequest};
use containerd_client::services::v1::{
    GetImageRequest, InfoRequest, ListContentRequest, ListImagesRequest,
};
use dist::archive::write_archive;
use dist::bundle::Bundle;
use dist::images::{build, component_images, ImageSpec};
use dist::import::{
    import_archive, import_bundle, import_bundle_with, import_images, ImageOutcome, ImportEvent,
    ImportOptions, ImportReport,
};
use dist::oci::{chain_ids, Descriptor, Digest, Index, Manifest, Platform};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NS: &str = "k8s.io";

fn one_line(event: &ImportEvent) -> String {
    match event {
        ImportEvent::ArchiveVerified {
            path,
            images,
            elapsed,
        } => {
            format!(
                "[verify] {} ({} images) {:.1?}",
                path.display(),
                images.len(),
                elapsed
            )
        }
        ImportEvent::ImageStarted { name, .. } => format!("[start] {name}"),
        ImportEvent::ImageFinished(i) => format!(
            "[image] {} {:?} {} blobs, {} MB, {} snapshots, {:.2?}",
            i.name,
            i.outcome,
            i.blobs_written,
            i.bytes_written / 1_000_000,
            i.snapshots_created,
            i.elapsed
        ),
    }
}

fn import_with_log(ctd: &TestContainerd, bundle: &Bundle, what: &str) -> ImportReport {
    let exe = std::env::current_exe().unwrap();
    let mut lines = Vec::new();
    let options = ImportOptions::default();
    let report = runtime()
        .block_on(import_bundle_with(
            ctd.socket(),
            &options,
            bundle,
            &exe,
            |e| lines.push(one_line(e)),
        ))
        .unwrap_or_else(|e| {
            panic!(
                "{what} failed: {}\ncontainerd log:\n{}",
                dist::error_chain(&e),
                ctd.log_tail()
            )
        });
    eprintln!(
        "--- {what}: {:.2?}, {} MB written",
        report.elapsed,
        report.bytes_written() / 1_000_000
    );
    for line in lines.iter().filter(|l| !l.starts_with("[start]")) {
        eprintln!("{line}");
    }
    report
}

/// An image from the bundle's pause binary at /bin/hello, in an OCI archive
/// written by dist itself (uncompressed layers, manifest target).
fn write_plain_archive(bundle: &Bundle, path: &Path) {
    let mut spec = ImageSpec::new("hello", "registry.example/hello:1.0");
    spec.add_file(bundle.bin("pause"), "/bin/hello");
    spec.entrypoint = vec!["/bin/hello".into()];
    write_archive(path, &[build(&spec).unwrap()]).unwrap();
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn append(builder: &mut tar::Builder<std::fs::File>, path: &str, data: &[u8]) {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, path, data).unwrap();
}

/// Like a registry image exported with docker/skopeo: a gzip layer, and a
/// multi-platform index as the named target (with an arm64 manifest that is
/// not in the archive), named with a short docker-style reference.
fn write_gzip_index_archive(bundle: &Bundle, path: &Path) {
    let mut layer = dist::layer::LayerSpec::new();
    layer.add_file(bundle.bin("pause"), "/bin/hello-gz");
    let mut tar_bytes = Vec::new();
    dist::layer::write_layer(&layer, &mut tar_bytes).unwrap();
    let diff_id = Digest::of(&tar_bytes);
    let gz = gzip(&tar_bytes);
    let layer_desc = Descriptor::of(dist::oci::MEDIA_TYPE_LAYER_GZIP, &gz);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/hello-gz"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config_json = serde_json::to_vec(&config).unwrap();
    let config_desc = Descriptor::of(dist::oci::MEDIA_TYPE_CONFIG, &config_json);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(dist::oci::MEDIA_TYPE_MANIFEST.into()),
        config: config_desc,
        layers: vec![layer_desc],
        annotations: None,
    };
    let manifest_json = serde_json::to_vec(&manifest).unwrap();
    let mut manifest_desc = Descriptor::of(dist::oci::MEDIA_TYPE_MANIFEST, &manifest_json);
    manifest_desc.platform = Some(Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
    });
    let mut absent = Descriptor::new(dist::oci::MEDIA_TYPE_MANIFEST, Digest::of(b"not here"), 8);
    absent.platform = Some(Platform {
        architecture: "arm64".into(),
        os: "linux".into(),
        variant: Some("v8".into()),
    });
    let nested = Index {
        schema_version: 2,
        media_type: Some(dist::oci::MEDIA_TYPE_INDEX.into()),
        manifests: vec![absent, manifest_desc],
        annotations: None,
    };
    let nested_json = serde_json::to_vec(&nested).unwrap();
    let mut target = Descriptor::of(dist::oci::MEDIA_TYPE_INDEX, &nested_json);
    target.annotations = Some(BTreeMap::from([(
        dist::oci::ANNOTATION_REF_NAME.to_string(),
        "example/gz:1".to_string(),
    )]));
    let top = Index {
        schema_version: 2,
        media_type: Some(dist::oci::MEDIA_TYPE_INDEX.into()),
        manifests: vec![target],
        annotations: None,
    };
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    append(
        &mut builder,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    append(
        &mut builder,
        "index.json",
        &serde_json::to_vec(&top).unwrap(),
    );
    for blob in [&gz, &config_json, &manifest_json, &nested_json] {
        append(
            &mut builder,
            &format!("blobs/sha256/{}", Digest::of(blob).hex()),
            blob,
        );
    }
    builder.finish().unwrap();
}

/// Runs `args` in a new container of `image` with ctr and returns its output.
fn run_in(ctd: &TestContainerd, image: &str, id: &str, args: &[&str]) -> String {
    let mut full = vec!["run", "--rm", image, id];
    full.extend_from_slice(args);
    ctd.ctr_ok_all(NS, &full)
}

/// Forces a synchronous garbage collection (deleting a lease with --sync).
fn force_gc(ctd: &TestContainerd) {
    let id = ctd.ctr_ok(NS, &["leases", "create"]);
    let id = id.split_whitespace().next().unwrap().to_string();
    ctd.ctr_ok(NS, &["leases", "delete", "--sync", &id]);
}

#[test]
fn bundle_images_import_run_and_reimport_as_a_noop() {
    let view = BundleView::new();
    let bundle = view.open();
    write_plain_archive(&bundle, &view.images_dir().join("apps.tar"));
    write_gzip_index_archive(&bundle, &view.images_dir().join("gz.tar"));
    let ctd = TestContainerd::start_from_bundle(&bundle);
    let rt = runtime();

    // The readiness probe the node uses.
    let version = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                dist::containerd::version(ctd.socket()),
            )
            .await
        })
        .expect("version under timeout")
        .unwrap();
    if TestContainerd::is_bundle_containerd() {
        assert_eq!(
            version,
            bundle.versions().containerd,
            "the harness must run the bundle's containerd"
        );
    } else {
        eprintln!("--- running against containerd {version} from $SELFNODE_TEST_CONTAINERD_DIR");
    }

    // Cold import.
    let cold = import_with_log(&ctd, &bundle, "cold import");
    let v = bundle.versions().clone();
    let mut expected: Vec<String> = component_images(&bundle, Path::new("/x"))
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    expected.push("registry.example/hello:1.0".into());
    expected.push("docker.io/example/gz:1".into());
    let names: Vec<&str> = cold.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, expected);
    for image in &cold.images {
        assert_eq!(image.outcome, ImageOutcome::Imported, "{}", image.name);
    }
    // The base layer is shared: written and unpacked once.
    assert_eq!(cold.images[0].blobs_written, 4);
    assert_eq!(cold.images[0].snapshots_created, 2);
    assert_eq!(cold.images[1].blobs_written, 3);
    assert_eq!(cold.images[1].snapshots_created, 1);

    // What containerd holds, through its API: pinned records, config GC
    // labels naming the top snapshot, snapshots by chain ID.
    let specs = component_images(&bundle, &std::env::current_exe().unwrap()).unwrap();
    rt.block_on(async {
        let client = dist::containerd::connect(ctd.socket(), NS).await.unwrap();
        for spec in &specs {
            let built = build(spec).unwrap();
            let record = client
                .images()
                .get(client.request(GetImageRequest {
                    name: spec.name.clone(),
                }))
                .await
                .unwrap()
                .into_inner()
                .image
                .unwrap();
            assert_eq!(
                record.target.unwrap().digest,
                built.manifest.digest.as_str()
            );
            assert_eq!(
                record
                    .labels
                    .get("io.cri-containerd.pinned")
                    .map(String::as_str),
                Some("pinned")
            );
            let info = client
                .content()
                .info(client.request(InfoRequest {
                    digest: built.config.digest.to_string(),
                }))
                .await
                .unwrap()
                .into_inner()
                .info
                .unwrap();
            let top = chain_ids(&built.diff_ids()).pop().unwrap();
            assert_eq!(
                info.labels
                    .get("containerd.io/gc.ref.snapshot.overlayfs")
                    .map(String::as_str),
                Some(top.as_str())
            );
            client
                .snapshots()
                .stat(client.request(StatSnapshotRequest {
                    snapshotter: "overlayfs".into(),
                    key: top.to_string(),
                }))
                .await
                .unwrap();
        }
    });
    assert_eq!(
        ctd.ctr_ok(NS, &["leases", "ls", "-q"]).trim(),
        "",
        "the import lease is gone"
    );

    // Everything must survive a garbage collection now that the lease is gone.
    force_gc(&ctd);

    // Each image runs and reports the pinned version.
    let k8s = format!("Kubernetes {}", v.kubernetes);
    for component in dist::images::KUBE_COMPONENTS {
        let out = run_in(
            &ctd,
            &dist::images::kube_image(component, &v),
            &format!("t-{component}"),
            &[&format!("/usr/local/bin/{component}"), "--version"],
        );
        assert!(out.contains(&k8s), "{component}: {out}");
    }
    check_kube_proxy_netfilter(&ctd, &dist::images::kube_image("kube-proxy", &v));
    let etcd = dist::images::etcd_image(&v);
    let etcd_v = v.etcd.trim_start_matches('v');
    let out = run_in(&ctd, &etcd, "t-etcd", &["/usr/local/bin/etcd", "--version"]);
    assert!(out.contains(&format!("etcd Version: {etcd_v}")), "{out}");
    let out = run_in(
        &ctd,
        &etcd,
        "t-etcdctl",
        &["/usr/local/bin/etcdctl", "version"],
    );
    assert!(out.contains(&format!("etcdctl version: {etcd_v}")), "{out}");
    let out = run_in(
        &ctd,
        &etcd,
        "t-etcdutl",
        &["/usr/local/bin/etcdutl", "version"],
    );
    assert!(out.contains(&format!("etcdutl version: {etcd_v}")), "{out}");
    let out = run_in(
        &ctd,
        &dist::images::coredns_image(&v),
        "t-coredns",
        &["/coredns", "-version"],
    );
    assert!(
        out.contains(&format!("CoreDNS-{}", v.coredns.trim_start_matches('v'))),
        "{out}"
    );
    let out = run_in(
        &ctd,
        &dist::images::pause_image(&v),
        "t-pause",
        &["/pause", "-v"],
    );
    assert!(out.contains(&format!("pause.c v{}", v.pause)), "{out}");
    // selfnode's image carries the executable it was given (here: this
    // static test binary, which lists its tests).
    let out = run_in(
        &ctd,
        &dist::images::selfnode_image(),
        "t-selfnode",
        &["/usr/local/bin/selfnode", "--list"],
    );
    assert!(
        out.contains("bundle_images_import_run_and_reimport_as_a_noop: test"),
        "{out}"
    );
    // The base files, seen through containerd's own view of the unpacked
    // image (the images have no shell to look from inside).
    let target = ctd.dir().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let target_s = target.to_str().unwrap();
    ctd.ctr_ok(
        NS,
        &["images", "mount", &dist::images::pause_image(&v), target_s],
    );
    let passwd = std::fs::read_to_string(target.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("root:x:0:0:") && passwd.contains("nonroot:x:65532:65532:"),
        "{passwd}"
    );
    assert!(std::fs::read_to_string(target.join("etc/group"))
        .unwrap()
        .contains("nonroot:x:65532:"));
    assert!(std::fs::read_to_string(target.join("etc/nsswitch.conf"))
        .unwrap()
        .contains("hosts: files dns"));
    let tmp_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(target.join("tmp")).unwrap().permissions(),
    );
    assert_eq!(tmp_mode & 0o7777, 0o1777);
    let pause_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(target.join("pause"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(pause_mode & 0o7777, 0o755);
    ctd.ctr_ok(NS, &["images", "unmount", "--rm", target_s]);

    let out = run_in(
        &ctd,
        "registry.example/hello:1.0",
        "t-hello",
        &["/bin/hello", "-v"],
    );
    assert!(out.contains("pause.c"), "{out}");
    let out = run_in(
        &ctd,
        "docker.io/example/gz:1",
        "t-gz",
        &["/bin/hello-gz", "-v"],
    );
    assert!(out.contains("pause.c"), "{out}");

    // No-op re-import: nothing written, records untouched, no lease left.
    let before = store_state(&ctd);
    let again = import_with_log(&ctd, &bundle, "no-op re-import");
    for image in &again.images {
        assert_eq!(
            image.outcome,
            ImageOutcome::AlreadyPresent,
            "{}",
            image.name
        );
        assert_eq!(
            (
                image.blobs_written,
                image.bytes_written,
                image.snapshots_created,
                image.metadata_writes
            ),
            (0, 0, 0, 0),
            "{}",
            image.name
        );
    }
    assert!(again.nothing_written());
    assert_eq!(
        store_state(&ctd),
        before,
        "containerd's store changed during a no-op import"
    );
    assert_eq!(ctd.ctr_ok(NS, &["leases", "ls", "-q"]).trim(), "");
}

/// A ruleset in the shape of kube-proxy's (iptables mode): its chains, and
/// the extensions it uses (comment, mark, MARK, MASQUERADE, statistic,
/// DNAT, conntrack, addrtype, multiport, udp/tcp), each a module loaded
/// with dlopen.
const KUBE_PROXY_RULES: &str = r#"*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-TEST - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-TEST
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-TEST -m comment --comment "kube-system/kube-dns:dns -> 10.244.0.5:53" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A
-A KUBE-SVC-TEST -j KUBE-SEP-B
-A KUBE-SEP-A -s 10.244.0.5/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-A -p udp -m udp -j DNAT --to-destination 10.244.0.5:53
-A KUBE-SEP-B -p udp -m udp -j DNAT --to-destination 10.244.0.6:53
COMMIT
*filter
:KUBE-FIREWALL - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-FIREWALL
-A FORWARD -p tcp -m multiport --dports 80,443 -j ACCEPT
-A KUBE-FIREWALL -m conntrack --ctstate INVALID -j DROP
COMMIT
"#;

const KUBE_PROXY_RULES_V6: &str = r#"*nat
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d fd00::a/128 -p tcp -m tcp --dport 443 -j DNAT --to-destination [fd00:10::5]:6443
COMMIT
"#;

/// kube-proxy's image runs the host's iptables tools: both backends, the
/// unversioned commands on the host's backend, rules written and read back
/// (in network namespaces of the test's own, never the host's), conntrack.
fn check_kube_proxy_netfilter(ctd: &TestContainerd, image: &str) {
    use dist::netfilter::{IptablesBackend, NetfilterTools};
    let host = NetfilterTools::from_host(Path::new("/")).unwrap();
    let backend = host.iptables;
    let rules_dir = ctd.dir().join("rules");
    std::fs::create_dir(&rules_dir).unwrap();
    std::fs::write(rules_dir.join("v4"), KUBE_PROXY_RULES).unwrap();
    std::fs::write(rules_dir.join("v6"), KUBE_PROXY_RULES_V6).unwrap();
    // The rules reach the container as files: `ctr run` with a piped stdin
    // can hang (when stdin ends before ctr has set up closing it).
    let rules_mount = format!(
        "type=bind,src={},dst=/rules,options=rbind:ro",
        rules_dir.display()
    );
    let mut n = 0;
    let mut run = |netns: Option<&Path>, args: &[&str]| -> String {
        n += 1;
        let id = format!("t-proxy-{n}");
        let ns_flag = netns.map(|p| format!("network:{}", p.display()));
        let mut full = vec!["run", "--rm", "--privileged", "--mount", &rules_mount];
        if let Some(flag) = &ns_flag {
            full.extend(["--with-ns", flag]);
        }
        full.extend([image, &id]);
        full.extend_from_slice(args);
        ctd.ctr_ok_all(NS, &full)
    };
    let mode = |b: IptablesBackend| match b {
        IptablesBackend::Legacy => "(legacy)",
        IptablesBackend::Nft => "(nf_tables)",
    };

    // Versions: each backend by name, and what the unversioned names pick.
    let out = run(None, &["iptables-legacy", "--version"]);
    assert!(
        out.contains("iptables v1.8") && out.contains("(legacy)"),
        "{out}"
    );
    let out = run(None, &["iptables-nft", "--version"]);
    assert!(
        out.contains("iptables v1.8") && out.contains("(nf_tables)"),
        "{out}"
    );
    for command in ["iptables", "iptables-save", "iptables-restore"] {
        let out = run(None, &[command, "--version"]);
        assert!(out.contains(mode(backend)), "{command}: {out}");
    }
    let out = run(None, &["ip6tables", "--version"]);
    assert!(out.contains(mode(host.ip6tables)), "{out}");
    let out = run(None, &["conntrack", "--version"]);
    assert!(out.contains("conntrack v1."), "{out}");

    // iptables-save on its own (a fresh namespace: it may print nothing but
    // must not fail), listings that need the kernel (and, for legacy, the
    // lock in /run), and conntrack talking netlink.
    let out = run(None, &["iptables-save"]);
    assert!(!out.to_lowercase().contains("error"), "{out}");
    let out = run(None, &["ip6tables-save"]);
    assert!(!out.to_lowercase().contains("error"), "{out}");
    for command in ["iptables", "iptables-legacy", "iptables-nft"] {
        let out = run(None, &[command, "-w", "5", "-t", "nat", "-S"]);
        assert!(out.contains("-P PREROUTING ACCEPT"), "{command}: {out}");
    }
    let out = run(None, &["conntrack", "-L"]);
    assert!(out.contains("flow entries have been shown"), "{out}");

    // What kube-proxy does: iptables-restore, read back with iptables-save,
    // through the unversioned names; then the other backend by name.
    let other = match backend {
        IptablesBackend::Legacy => "nft",
        IptablesBackend::Nft => "legacy",
    };
    for (restore, save) in [
        ("iptables-restore".to_string(), "iptables-save".to_string()),
        (
            format!("iptables-{other}-restore"),
            format!("iptables-{other}-save"),
        ),
    ] {
        let netns = ctd.new_netns(&restore);
        run(
            Some(&netns),
            &[&restore, "-w", "5", "--noflush", "/rules/v4"],
        );
        let saved = run(Some(&netns), &[&save]);
        for rule in KUBE_PROXY_RULES
            .lines()
            .filter(|l| l.starts_with("-A ") || l.starts_with(':'))
        {
            // iptables-save prints MARK's --or-mark/--xor-mark canonically.
            let rule = rule
                .split(" [")
                .next()
                .unwrap()
                .replace("--or-mark 0x4000", "--set-xmark 0x4000/0x4000")
                .replace("--xor-mark 0x4000", "--set-xmark 0x4000/0x0");
            assert!(saved.contains(&rule), "{save} lacks {rule:?}:\n{saved}");
        }
    }
    let netns = ctd.new_netns("ip6tables");
    run(Some(&netns), &["ip6tables-restore", "-w", "5", "/rules/v6"]);
    let saved = run(Some(&netns), &["ip6tables-save"]);
    assert!(
        saved.contains("-j DNAT --to-destination [fd00:10::5]:6443"),
        "{saved}"
    );
    eprintln!(
        "--- kube-proxy image: iptables {backend}, ip6tables {}, {} paths from the host",
        host.ip6tables,
        host.entries().len()
    );
}

/// Every image record, content blob, snapshot and lease of the namespace
/// with its labels and created/updated times, as containerd reports them:
/// equal before and after means nothing was written.
fn store_state(ctd: &TestContainerd) -> Vec<String> {
    runtime().block_on(async {
        let client = dist::containerd::connect(ctd.socket(), NS).await.unwrap();
        let mut out = Vec::new();
        let images = client
            .images()
            .list(client.request(ListImagesRequest { filters: vec![] }))
            .await
            .unwrap()
            .into_inner()
            .images;
        for i in images {
            let labels: BTreeMap<_, _> = i.labels.into_iter().collect();
            out.push(format!(
                "image {} {:?} {labels:?} {:?} {:?}",
                i.name, i.target, i.created_at, i.updated_at
            ));
        }
        let mut stream = client
            .content()
            .list(client.request(ListContentRequest { filters: vec![] }))
            .await
            .unwrap()
            .into_inner();
        while let Some(batch) = stream.message().await.unwrap() {
            for i in batch.info {
                let labels: BTreeMap<_, _> = i.labels.into_iter().collect();
                out.push(format!(
                    "content {} {} {labels:?} {:?} {:?}",
                    i.digest, i.size, i.created_at, i.updated_at
                ));
            }
        }
        let mut stream = client
            .snapshots()
            .list(client.request(ListSnapshotsRequest {
                snapshotter: "overlayfs".into(),
                filters: vec![],
            }))
            .await
            .unwrap()
            .into_inner();
        while let Some(batch) = stream.message().await.unwrap() {
            for i in batch.info {
                let labels: BTreeMap<_, _> = i.labels.into_iter().collect();
                out.push(format!(
                    "snapshot {} {} {} {labels:?} {:?} {:?}",
                    i.name, i.parent, i.kind, i.created_at, i.updated_at
                ));
            }
        }
        out.sort();
        out
    })
}

fn flip_byte_in_blob(archive: &Path) {
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    let (offset, size) = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().unwrap().starts_with("blobs/sha256"))
        .map(|e| (e.raw_file_position(), e.size()))
        .max_by_key(|(_, size)| *size)
        .unwrap();
    let mut data = std::fs::read(archive).unwrap();
    data[(offset + size / 2) as usize] ^= 0x55;
    std::fs::write(archive, data).unwrap();
}

fn assert_nothing_in(ctd: &TestContainerd) {
    let client_names = runtime().block_on(async {
        let client = dist::containerd::connect(ctd.socket(), NS).await.unwrap();
        client
            .images()
            .list(client.request(ListImagesRequest { filters: vec![] }))
            .await
            .unwrap()
            .into_inner()
            .images
            .into_iter()
            .map(|i| i.name)
            .collect::<Vec<_>>()
    });
    assert!(
        client_names.is_empty(),
        "image records left: {client_names:?}"
    );
    assert_eq!(
        ctd.ctr_ok(NS, &["content", "ls", "-q"]).trim(),
        "",
        "content left"
    );
    assert_eq!(
        ctd.ctr_ok(NS, &["leases", "ls", "-q"]).trim(),
        "",
        "leases left"
    );
}

#[test]
fn bad_archives_are_named_and_nothing_is_imported() {
    let bundle = common::bundle();
    let ctd = TestContainerd::start_from_bundle(&bundle);
    let exe = std::env::current_exe().unwrap();
    type Damage = fn(&Bundle, &Path);
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "digest",
            |b, p| {
                write_plain_archive(b, p);
                flip_byte_in_blob(p);
            },
            "is corrupt: blob blobs/sha256/",
        ),
        (
            "truncated",
            |b, p| {
                write_plain_archive(b, p);
                let data = std::fs::read(p).unwrap();
                std::fs::write(p, &data[..data.len() * 2 / 3]).unwrap();
            },
            "is truncated: blobs/sha256/",
        ),
        (
            "no-index",
            |_, p| {
                let mut builder = tar::Builder::new(std::fs::File::create(p).unwrap());
                append(&mut builder, "manifest.json", b"[]");
                append(&mut builder, "repositories", b"{}");
                builder.finish().unwrap();
            },
            "is not an OCI image archive: it has no index.json",
        ),
        (
            "not-tar",
            |_, p| std::fs::write(p, vec![0x42; 10_000]).unwrap(),
            "is not a valid tar file",
        ),
    ];
    for (name, damage, want) in cases {
        let view = BundleView::new();
        // A good archive next to the bad one: it must not be imported either.
        write_plain_archive(&bundle, &view.images_dir().join("a-good.tar"));
        let bad: PathBuf = view.images_dir().join(format!("b-{name}.tar"));
        damage(&bundle, &bad);
        let err = runtime()
            .block_on(import_bundle(ctd.socket(), NS, &view.open(), &exe))
            .expect_err(name);
        let msg = dist::error_chain(&err);
        assert!(msg.starts_with(&bad.display().to_string()), "{name}: {msg}");
        assert!(msg.contains(want), "{name}: {msg}");
        assert_nothing_in(&ctd);
    }
}

#[test]
fn a_bundle_with_a_missing_or_broken_binary_is_named() {
    let view = BundleView::with_own_bin();
    let proxy = view.path().join("bin/kube-proxy");
    std::fs::remove_file(&proxy).unwrap();
    let err = Bundle::open(view.path()).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "bundle file {} is missing; rebuild it with fixtures/build-bundle.sh or download the bundle again",
            proxy.display()
        )
    );

    // Back, but not executable.
    std::fs::copy(common::bundle_dir().join("bin/kube-proxy"), &proxy).unwrap();
    std::fs::set_permissions(&proxy, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let err = Bundle::open(view.path()).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "bundle file {} is not executable",
            proxy.display()
        )),
        "{err}"
    );

    // Executable, but not what SHA256SUMS says.
    std::fs::write(&proxy, b"#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&proxy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bundle = Bundle::open(view.path()).unwrap();
    let err = bundle.verify_checksums().unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("checksum mismatch for {}", proxy.display())),
        "{err}"
    );

    // The real bundle verifies.
    common::bundle().verify_checksums().unwrap();
}

/// The harness leaves no containerd, shim, container process or mount
/// behind, also when the test panics with a container running; and a
/// collected image comes back on re-import.
#[test]
fn harness_cleans_up_even_on_panic_and_reimport_repairs() {
    let bundle = common::bundle();
    let pause = component_images(&bundle, Path::new("/x"))
        .unwrap()
        .into_iter()
        .find(|s| s.component == "pause")
        .unwrap();
    let image = pause.name.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let ctd = TestContainerd::start_from_bundle(&bundle);
        let report = runtime()
            .block_on(import_images(
                ctd.socket(),
                &ImportOptions::default(),
                vec![pause.clone()],
                &[],
                |_| {},
            ))
            .unwrap();
        assert_eq!(report.images[0].outcome, ImageOutcome::Imported);

        // Remove the record and collect: content and snapshots go; a
        // re-import puts everything back.
        ctd.ctr_ok(NS, &["images", "rm", "--sync", &image]);
        force_gc(&ctd);
        assert_eq!(ctd.ctr_ok(NS, &["content", "ls", "-q"]).trim(), "");
        let report = runtime()
            .block_on(import_images(
                ctd.socket(),
                &ImportOptions::default(),
                vec![pause],
                &[],
                |_| {},
            ))
            .unwrap();
        assert_eq!(report.images[0].outcome, ImageOutcome::Imported);
        assert_eq!(report.images[0].snapshots_created, 2);

        ctd.ctr_ok(NS, &["run", "-d", &image, "long-running", "/pause"]);
        let shims = ctd.shim_pids();
        let mounts = ctd.mounts();
        let containerd = ctd.pid();
        tx.send((
            ctd.dir().to_path_buf(),
            ctd.socket().to_path_buf(),
            containerd,
            shims,
            mounts,
        ))
        .unwrap();
        panic!("deliberate panic with a container running");
    });
    assert!(worker.join().is_err(), "the worker must have panicked");
    let (dir, socket, containerd, shims, mounts) = rx.recv().unwrap();
    assert!(
        shims.len() >= 2,
        "a shim and the pause process were running: {shims:?}"
    );
    assert!(!mounts.is_empty(), "the container's rootfs was mounted");
    for pid in shims.iter().chain(std::iter::once(&(containerd as i32))) {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "process {pid} survived the harness");
    }
    assert!(
        common::mounts_under(&dir).is_empty(),
        "mounts left under {}",
        dir.display()
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
    assert!(!socket.exists());
}

#[test]
fn an_existing_name_is_retargeted_and_names_must_be_unique() {
    let bundle = common::bundle();
    let ctd = TestContainerd::start_from_bundle(&bundle);
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.tar");
    write_plain_archive(&bundle, &first);
    // Same name, new content: what an upgrade of a site's image looks like.
    let mut spec = ImageSpec::new("hello", "registry.example/hello:1.0");
    spec.add_file(bundle.bin("pause"), "/bin/hello");
    spec.top_layer()
        .add_bytes("/etc/hello-version", "2\n", 0o644);
    let second = dir.path().join("second.tar");
    write_archive(&second, &[build(&spec).unwrap()]).unwrap();

    let options = ImportOptions::default();
    let one = rt
        .block_on(import_archive(ctd.socket(), &options, &first, |_| {}))
        .unwrap();
    let two = rt
        .block_on(import_archive(ctd.socket(), &options, &second, |_| {}))
        .unwrap();
    assert_eq!(two.images[0].outcome, ImageOutcome::Imported);
    assert_ne!(one.images[0].digest, two.images[0].digest);
    // Only the new top layer, its config and manifest: the base layer is shared.
    assert_eq!(
        (two.images[0].blobs_written, two.images[0].snapshots_created),
        (3, 1)
    );
    let record = rt.block_on(async {
        let client = dist::containerd::connect(ctd.socket(), NS).await.unwrap();
        client
            .images()
            .get(client.request(GetImageRequest {
                name: "registry.example/hello:1.0".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .image
            .unwrap()
    });
    assert_eq!(record.target.unwrap().digest, two.images[0].digest.as_str());
    assert_eq!(
        record
            .labels
            .get("io.cri-containerd.pinned")
            .map(String::as_str),
        Some("pinned")
    );
    let out = run_in(
        &ctd,
        "registry.example/hello:1.0",
        "t-hello2",
        &["/bin/hello", "-v"],
    );
    assert!(out.contains("pause.c"), "{out}");

    // An archive may not redefine a component image: refused up front.
    let view = BundleView::new();
    let mut fake = ImageSpec::new("pause", &dist::images::pause_image(bundle.versions()));
    fake.add_file(bundle.bin("pause"), "/pause");
    let fake_path = view.images_dir().join("fake-pause.tar");
    write_archive(&fake_path, &[build(&fake).unwrap()]).unwrap();
    let exe = std::env::current_exe().unwrap();
    let err = rt
        .block_on(import_bundle(ctd.socket(), NS, &view.open(), &exe))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "image {} is defined twice: by the bundle's component images and by {}; rename or remove one of them from the bundle's images/",
            dist::images::pause_image(bundle.versions()),
            fake_path.display()
        )
    );
    let names = ctd.ctr_ok(NS, &["images", "ls", "-q"]);
    assert_eq!(names.trim(), "registry.example/hello:1.0");
}
