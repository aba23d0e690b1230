//! The CIS Kubernetes Benchmark, run for real: kube-bench (built by
//! `fixtures/build-kube-bench.sh`) against a single-host selfnode cluster,
//! with selfnode's paths (`tests/kube-bench/config.yaml`). Every scored FAIL
//! is either fixed or in [`ALLOWED_FAILS`] with its reason, and listed in the
//! README's "CIS benchmark" section; the run's results are written to
//! `bench/results/cis-<date>.md`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{retry, text, TestHost};

const START: Duration = Duration::from_secs(180);
/// The newest generic CIS benchmark of the pinned kube-bench; its
/// `version_mapping` ends at Kubernetes 1.34, and a newer version falls back
/// to it. Named explicitly, so no version detection is involved.
const BENCHMARK: &str = "cis-1.12";
/// The sections issue 21 asks for. `controlplane` (3.x) has only manual
/// checks.
const TARGETS: [&str; 4] = ["master", "node", "etcd", "policies"];
/// cis-1.12 has 60 + 25 + 7 + 34 = 126 checks in these targets: fewer means
/// some did not run, and the test must not pass on an empty report.
const MIN_CHECKS: usize = 126;
/// Scored checks whose verdict came from a real audit, PASS or FAIL (65 on
/// 2026-12-07).
const MIN_SCORED: usize = 60;

/// A scored check that fails today, why, and where the fix is tracked.
struct Allowed {
    id: &'static str,
    why: &'static str,
}

/// Scored FAILs accepted today. Each one is also listed in README.md
/// ("CIS benchmark") with its reason; an entry that no longer fails must go
/// (the test says so), so this list only ever shrinks as fixes land.
const ALLOWED_FAILS: &[Allowed] = &[
    // Found root:root (0700, so 1.1.11 passes). Upstream's etcd image and
    // kubeadm run etcd as root too, and kubeadm fails this check the same
    // way; passing it needs an etcd user on every host and etcd running as
    // it. security-audit-2026-11-30 (etcd data dirs row); issue 21 item 6.
    Allowed {
        id: "1.1.12",
        why: "etcd runs as root, as under kubeadm (which fails this too): its data directory is root:root 0700; no etcd user on the hosts",
    },
    // No such file: the agent starts the kubelet with flags of its own; the
    // file standing for it in tests/kube-bench/config.yaml, the agent's
    // systemd unit, is installed neither by scripts/up.sh nor on a test host
    // (nor in the appliance, where selfnode is PID 1). A host that installs
    // contrib/selfnode-agent.service should give it 0600. Issue 21 item 6.
    Allowed {
        id: "4.1.1",
        why: "no kubelet service file: the agent starts the kubelet; the agent's own unit (contrib/selfnode-agent.service) is not installed by scripts/up.sh or on test hosts (install it with mode 0600)",
    },
];

/// kube-bench's process names (`ps -C`, 15 characters of the command name)
/// of the components the run must find, one each on this machine.
const PROCESSES: [&str; 6] = [
    "kube-apiserver",
    "kube-controller",
    "kube-scheduler",
    "etcd",
    "kubelet",
    "kube-proxy",
];
/// kube-bench's component names: each must be found running (its log says
/// "Component X uses running binary").
const COMPONENTS: [&str; 6] = [
    "apiserver",
    "controllermanager",
    "scheduler",
    "etcd",
    "kubelet",
    "proxy",
];
/// The kinds of variable kube-bench substitutes per component
/// (`$apiserverbin`, `$kubeletconf`, ...).
const VARIABLE_KINDS: [&str; 6] = ["bin", "conf", "svc", "kubeconfig", "cafile", "datadir"];
/// Config keys that hold host file paths (kube-bench's `TypeMap`, plus the
/// etcd client files).
const PATH_KEYS: [&str; 12] = [
    "confs",
    "defaultconf",
    "kubeconfig",
    "defaultkubeconfig",
    "svc",
    "defaultsvc",
    "cafile",
    "defaultcafile",
    "datadirs",
    "defaultdatadir",
    "client_cert_file",
    "client_key_file",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the node crate is in the workspace root")
        .to_path_buf()
}

/// The kube-bench build of `fixtures/build-kube-bench.sh` at the pinned version.
struct KubeBench {
    version: String,
    dir: PathBuf,
}

impl KubeBench {
    fn cached() -> KubeBench {
        let pin = repo_root().join("fixtures/kube-bench.env");
        let text = std::fs::read_to_string(&pin).unwrap();
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("KUBE_BENCH_VERSION="))
            .unwrap_or_else(|| panic!("no KUBE_BENCH_VERSION in {}", pin.display()))
            .trim()
            .to_string();
        let cache = std::env::var_os("SELFNODE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/selfnode"));
        let dir = cache.join(format!("tools/kube-bench-{version}"));
        assert!(
            dir.join("kube-bench").is_file() && dir.join("cfg/config.yaml").is_file(),
            "kube-bench {version} is not built in {}: run 'bash fixtures/build-kube-bench.sh' (scripts/install-deps.sh does)",
            dir.display()
        );
        KubeBench { version, dir }
    }
}

fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `over` laid over `base`: maps merge key by key, anything else replaces.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

/// Every file path (under a [`PATH_KEYS`] key) moved under `root`.
fn prefix_paths(v: &mut Value, root: &Path) {
    let under = |s: &mut Value| {
        if let Some(p) = s.as_str().filter(|p| p.starts_with('/')) {
            *s = Value::String(root.join(p.trim_start_matches('/')).display().to_string());
        }
    };
    if let Value::Object(map) = v {
        for (k, val) in map.iter_mut() {
            if PATH_KEYS.contains(&k.as_str()) {
                match val {
                    Value::Array(items) => items.iter_mut().for_each(under),
                    other => under(other),
                }
            } else {
                prefix_paths(val, root);
            }
        }
    }
}

/// The config kube-bench reads for a host at `root`: upstream's
/// `cfg/config.yaml` with ours over it, every path under `root`. Written as
/// JSON, which is YAML too (kube-bench picks the parser by the extension).
fn render_config(upstream_cfg: &Path, root: &Path) -> String {
    let mut config = yaml_file(&upstream_cfg.join("config.yaml"));
    let ours =
        yaml_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kube-bench/config.yaml"));
    merge(&mut config, ours);
    prefix_paths(&mut config, root);
    serde_json::to_string_pretty(&config).unwrap()
}

/// Waits until the control plane's pods and kube-proxy are Ready.
fn wait_control_plane_ready(host: &TestHost) {
    let apps = [
        "etcd-",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
    ];
    retry("the control plane Ready", Duration::from_secs(300), || {
        let out = host.kubectl(&["-n", "kube-system", "get", "pods", "-o", "wide"]);
        let pods = String::from_utf8_lossy(&out.stdout);
        match apps.iter().find(|app| {
            !pods
                .lines()
                .any(|l| l.starts_with(*app) && l.contains("1/1") && l.contains("Running"))
        }) {
            None => Ok(()),
            Some(app) => Err(format!("{app} not Ready:\n{pods}{}", text(&out))),
        }
    });
}

/// PIDs of the processes whose command name (`/proc/PID/comm`) is `name`.
fn pids_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == name)
                .unwrap_or(false)
        })
        .collect()
}

/// kube-bench looks at every process of the machine by name: the host's
/// components must be the only ones (another cluster's would be audited in
/// their place).
fn wait_only_this_cluster_runs() {
    retry(
        "exactly one of each control-plane process on this machine",
        Duration::from_secs(120),
        || {
            let wrong: Vec<String> = PROCESSES
                .iter()
                .map(|name| (name, pids_named(name)))
                .filter(|(_, pids)| pids.len() != 1)
                .map(|(name, pids)| format!("{name}: {pids:?}"))
                .collect();
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} (another cluster on this machine? the e2e tests take /tmp/selfnode-e2e.lock)",
                    wrong.join(", ")
                ))
            }
        },
    );
}

/// Runs kube-bench with `config` (rendered for `root`) on `targets`, with
/// `bin` (the bundle's, for kubectl) first in PATH; returns its JSON report
/// and its log, both also left in `work`.
///
/// A few audits read fixed paths (`/etc/kubernetes/admin.conf`,
/// `/etc/kubernetes/pki/`), so it runs in a mount namespace of its own in
/// which the host's `etc/kubernetes` is `/etc/kubernetes`; where this
/// machine has no `/etc/kubernetes` to mount over, `/etc` gets a throwaway
/// writable layer (in that namespace only) to make one.
fn run_kube_bench(
    kb: &KubeBench,
    root: &Path,
    config: &str,
    targets: &[&str],
    bin: Option<&Path>,
    work: &Path,
) -> (Value, String) {
    const SCRIPT: &str = r#"set -eu
root=$1 layer=$2
shift 2
if ! [ -d /etc/kubernetes ]; then
  mount -t tmpfs selfnode-cis "$layer"
  mkdir "$layer/upper" "$layer/work"
  mount -t overlay selfnode-cis -o "lowerdir=/etc,upperdir=$layer/upper,workdir=$layer/work" /etc
  mkdir /etc/kubernetes
fi
mount --bind "$root/etc/kubernetes" /etc/kubernetes
exec "$@"
"#;
    let config_file = work.join("config.yaml");
    std::fs::write(&config_file, config).unwrap();
    let layer = work.join("etc-layer");
    std::fs::create_dir_all(&layer).unwrap();
    let report = work.join("kube-bench.json");
    let path = std::env::var("PATH").unwrap_or_default();
    let path = match bin {
        Some(bin) => format!("{}:{path}", bin.display()),
        None => path,
    };
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(SCRIPT)
        .arg("sh")
        .arg(root)
        .arg(&layer)
        .arg(kb.dir.join("kube-bench"))
        .arg("run")
        .arg("--config-dir")
        .arg(kb.dir.join("cfg"))
        .arg("--config")
        .arg(&config_file)
        .args(["--benchmark", BENCHMARK, "--targets", &targets.join(",")])
        .arg("--json")
        .arg("--outputfile")
        .arg(&report)
        // glog: level 2 logs which process and files each component got.
        .arg("--v=2")
        .env("PATH", path)
        .env("KUBECONFIG", root.join("etc/kubernetes/admin.conf"))
        .current_dir(work)
        .output()
        .expect("run unshare + kube-bench");
    let log = text(&out);
    std::fs::write(work.join("kube-bench.log"), &log).unwrap();
    assert!(out.status.success(), "kube-bench failed:\n{log}");
    let json = std::fs::read(&report)
        .unwrap_or_else(|e| panic!("no report {}: {e}\n{log}", report.display()));
    let report: Value = serde_json::from_slice(&json)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", work.display()));
    (report, log)
}

/// One check of the report.
#[derive(Debug)]
struct Check {
    target: String,
    id: String,
    text: String,
    status: String,
    scored: bool,
    manual: bool,
    audit: String,
    audit_config: String,
    audit_env: String,
    actual: String,
    expected: String,
    reason: String,
}

fn checks(report: &Value) -> Vec<Check> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut out = Vec::new();
    for control in report["Controls"]
        .as_array()
        .expect("Controls in the report")
    {
        for group in control["tests"].as_array().into_iter().flatten() {
            for r in group["results"].as_array().into_iter().flatten() {
                out.push(Check {
                    target: s(&control["node_type"]),
                    id: s(&r["test_number"]),
                    text: s(&r["test_desc"]),
                    status: s(&r["status"]),
                    scored: r["scored"] == true,
                    manual: r["type"] == "manual",
                    audit: s(&r["audit"]),
                    audit_config: s(&r["AuditConfig"]),
                    audit_env: s(&r["AuditEnv"]),
                    actual: s(&r["actual_value"]),
                    expected: s(&r["expected_result"]),
                    reason: s(&r["reason"]),
                });
            }
        }
    }
    out
}

/// The trap of a component kube-bench does not find running: every check of
/// its target silently loses its variables (`$apiserverbin`, `$etcdconf`...)
/// and fails or warns on an empty value, a false result. kube-bench only
/// logs it (at `--v=1`); each of `components` must have been found.
fn assert_components_found(log: &str, components: &[&str]) {
    let lower = log.to_lowercase();
    for needle in [
        "unable to detect running programs",
        "failed to get a set of executables",
    ] {
        assert!(
            !lower.contains(needle),
            "kube-bench did not find a component running ('{needle}'): its target's checks lost their variables, the report would be false\n{log}"
        );
    }
    for c in components {
        assert!(
            log.contains(&format!("Component {c} uses running binary")),
            "kube-bench did not find {c} running:\n{log}"
        );
    }
}

/// The same trap seen in the report: an audit with a variable left in it,
/// or a check of a process's flags with nothing read.
fn assert_variables_substituted(all: &[Check]) {
    let components = [
        "apiserver",
        "scheduler",
        "controllermanager",
        "etcd",
        "flanneld",
        "kubernetes",
        "kubelet",
        "proxy",
    ];
    let mut lost = Vec::new();
    for check in all {
        for audit in [&check.audit, &check.audit_config, &check.audit_env] {
            for c in components {
                for kind in VARIABLE_KINDS {
                    let var = format!("${c}{kind}");
                    // `$etcdconf` is not `$etcdconfig`: the name must end there.
                    let whole = audit.match_indices(&var).any(|(i, _)| {
                        !audit[i + var.len()..]
                            .starts_with(|ch: char| ch.is_ascii_alphanumeric() || ch == '_')
                    });
                    if whole {
                        lost.push(format!(
                            "{} ({}): {var} in '{audit}'",
                            check.id, check.target
                        ));
                    }
                }
            }
        }
        let reads_processes = check.audit.contains("ps -ef") || check.audit.contains("ps -fC");
        if reads_processes && !check.manual && check.actual.trim().is_empty() {
            lost.push(format!(
                "{} ({}): empty actual value from '{}' ({})",
                check.id, check.target, check.audit, check.reason
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "checks ran without their variables or process lines (a false result):\n{}",
        lost.join("\n")
    );
}

fn today() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn git_describe() -> String {
    Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

fn allowed(id: &str) -> Option<&'static Allowed> {
    ALLOWED_FAILS.iter().find(|a| a.id == id)
}

/// One line of a table cell: no pipes, no newlines, at most `max` characters.
fn cell(s: &str, max: usize) -> String {
    let one: String = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|");
    if one.chars().count() > max {
        format!("{}…", one.chars().take(max).collect::<String>())
    } else {
        one
    }
}

/// The human results file: totals, every FAIL (with why it is allowed) and
/// every WARN.
fn results_markdown(all: &[Check], kb: &KubeBench, date: &str, kubernetes: &str) -> String {
    let mut md = format!(
        "# CIS Kubernetes Benchmark: kube-bench against selfnode ({date})\n\n\
         kube-bench {} (`fixtures/build-kube-bench.sh`), benchmark {BENCHMARK}, targets {};\n\
         Kubernetes {kubernetes} from the bundle; selfnode {} (`git describe`).\n\
         A single-host cluster made by `selfnode init --allow-workloads` on the 2-core\n\
         development VM, audited on the host with selfnode's paths\n\
         (`node/tests/kube-bench/config.yaml`: the pod specification checks of the API\n\
         server, scheduler and controller-manager read the checkpoint, their on-disk\n\
         spec; the kubelet service file is the agent's unit). Written by\n\
         `node/tests/cis_benchmark.rs`; only scored (Automated) checks can FAIL, manual\n\
         and unscored ones WARN.\n\n",
        kb.version,
        TARGETS.join(", "),
        git_describe()
    );
    md.push_str("## Totals\n\n| target | PASS | FAIL | WARN | INFO |\n|---|---|---|---|---|\n");
    let count = |t: Option<&str>, status: &str| {
        all.iter()
            .filter(|c| t.is_none_or(|t| c.target == t) && c.status == status)
            .count()
    };
    for t in TARGETS.iter().map(|t| Some(*t)).chain([None]) {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            t.unwrap_or("**all**"),
            count(t, "PASS"),
            count(t, "FAIL"),
            count(t, "WARN"),
            count(t, "INFO")
        ));
    }
    md.push_str("\n## FAIL\n\nEach with its reason, as in README.md (\"CIS benchmark\").\n\n");
    md.push_str("| id | check | expected | found | why |\n|---|---|---|---|---|\n");
    for c in all.iter().filter(|c| c.status == "FAIL") {
        let found = if c.actual.trim().is_empty() {
            "(nothing)".to_string()
        } else if c.actual.len() > 120 {
            "(the process's command line)".to_string()
        } else {
            c.actual.clone()
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            c.id,
            cell(&c.text, 200),
            cell(&c.expected, 120),
            cell(&found, 120),
            cell(allowed(&c.id).map_or("NOT ALLOWED: fix it", |a| a.why), 400)
        ));
    }
    md.push_str("\n## WARN\n\n| id | check | kind |\n|---|---|---|\n");
    for c in all.iter().filter(|c| c.status == "WARN") {
        let kind = if c.manual {
            "manual"
        } else if !c.scored {
            "unscored, failed"
        } else {
            "scored, no test"
        };
        md.push_str(&format!("| {} | {} | {kind} |\n", c.id, cell(&c.text, 200)));
    }
    md
}

/// README.md's "CIS benchmark" section.
fn readme_cis_section() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let start = readme
        .find("\n### CIS benchmark\n")
        .expect("README.md has a '### CIS benchmark' section");
    let rest = &readme[start + 1..];
    let end = rest[4..].find("\n#").map(|i| i + 5).unwrap_or(rest.len());
    rest[..end].to_string()
}

#[test]
fn rendered_config_keeps_upstreams_and_puts_every_path_under_the_root() {
    let kb = KubeBench::cached();
    let root = Path::new("/tmp/host-root");
    let config: Value = serde_json::from_str(&render_config(&kb.dir.join("cfg"), root)).unwrap();
    // Ours, under the root.
    assert_eq!(
        config["node"]["kubelet"]["confs"],
        serde_json::json!(["/tmp/host-root/var/lib/kubelet/config.yaml"])
    );
    assert_eq!(
        config["etcd"]["etcd"]["datadirs"],
        serde_json::json!(["/tmp/host-root/var/lib/selfnode/etcd"])
    );
    // Upstream's, kept: process names, components, the version mapping.
    assert!(config["master"]["controllermanager"]["bins"]
        .as_array()
        .unwrap()
        .contains(&Value::String("kube-controller".into())));
    assert_eq!(config["master"]["components"][0], "apiserver");
    assert!(config["version_mapping"].as_object().unwrap().len() > 10);
    // Upstream's paths too: nothing on this machine outside the host is read.
    assert_eq!(
        config["node"]["proxy"]["defaultkubeconfig"],
        "/tmp/host-root/etc/kubernetes/proxy.conf"
    );
    fn walk(v: &Value, key: &str, bad: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| walk(v, k, bad)),
            Value::Array(a) => a.iter().for_each(|v| walk(v, key, bad)),
            Value::String(s) if PATH_KEYS.contains(&key) && !s.starts_with("/tmp/host-root/") => {
                bad.push(format!("{key}: {s}"))
            }
            _ => {}
        }
    }
    let mut bad = Vec::new();
    walk(&config, "", &mut bad);
    assert!(bad.is_empty(), "paths outside the root: {bad:?}");
}

/// The trap is caught: with a component kube-bench cannot find running
/// (etcd under a process name nothing has), its target's checks run with
/// their variables unset, and the check of this test says so.
#[test]
fn a_component_not_found_running_is_refused_as_a_false_result() {
    let kb = KubeBench::cached();
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(host.path().join("etc/kubernetes")).unwrap();
    let mut config: Value =
        serde_json::from_str(&render_config(&kb.dir.join("cfg"), host.path())).unwrap();
    config["etcd"]["etcd"]["bins"] = serde_json::json!(["selfnode-no-such-process"]);
    let work = tempfile::tempdir().unwrap();
    let (report, log) = run_kube_bench(
        &kb,
        host.path(),
        &config.to_string(),
        &["etcd"],
        None,
        work.path(),
    );
    let all = checks(&report);
    assert!(!all.is_empty(), "no etcd checks ran:\n{log}");
    let refusal = |f: &dyn Fn()| {
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .expect_err("a run without etcd's process must be refused");
        err.downcast_ref::<String>().cloned().unwrap_or_default()
    };
    let msg = refusal(&|| assert_components_found(&log, &["etcd"]));
    assert!(
        msg.contains("did not find a component running"),
        "the log check refused for another reason: {msg}"
    );
    let msg = refusal(&|| assert_variables_substituted(&all));
    assert!(
        msg.contains("$etcdbin") && msg.contains("ran without their variables"),
        "the report check refused for another reason: {msg}"
    );
}

#[test]
fn cis_benchmark_of_a_single_host_cluster_has_no_unexplained_fail() {
    let kb = KubeBench::cached();
    let mut host = TestHost::for_cluster();
    host.start_agent();
    host.wait_healthy(START);
    let out = host.init(&["--allow-workloads"], None);
    assert!(out.status.success(), "init: {}", text(&out));
    wait_control_plane_ready(&host);
    wait_only_this_cluster_runs();

    let work = tempfile::tempdir().unwrap();
    let config = render_config(&kb.dir.join("cfg"), &host.root);
    let bin = host.bundle.join("bin"); // the policies' (5.x) audits call kubectl
    let (report, log) = run_kube_bench(&kb, &host.root, &config, &TARGETS, Some(&bin), work.path());
    // Kept for a look after the run (the work directory goes).
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for (from, to) in [
        ("kube-bench.json", "cis-kube-bench.json"),
        ("kube-bench.log", "cis-kube-bench.log"),
        ("config.yaml", "cis-config.yaml"),
    ] {
        std::fs::copy(work.path().join(from), keep.join(to)).unwrap();
    }
    println!(
        "kube-bench's report, log and config: {}/cis-*",
        keep.display()
    );
    let all = checks(&report);

    // It really ran: every target, enough checks, real verdicts.
    for t in TARGETS {
        assert!(
            all.iter().any(|c| c.target == t),
            "no {t} checks in the report"
        );
    }
    assert!(
        all.len() >= MIN_CHECKS,
        "only {} checks ran (at least {MIN_CHECKS} expected)",
        all.len()
    );
    let scored = all
        .iter()
        .filter(|c| c.scored && (c.status == "PASS" || c.status == "FAIL"))
        .count();
    assert!(
        scored >= MIN_SCORED,
        "only {scored} scored checks have a verdict (at least {MIN_SCORED} expected)"
    );
    assert_components_found(&log, &COMPONENTS);
    assert_variables_substituted(&all);

    // The results file, written before the verdict so a failing run leaves it too.
    let date = today();
    let kubernetes = support::bundle_version("KUBERNETES_VERSION");
    let md = results_markdown(&all, &kb, &date, &kubernetes);
    let file = repo_root().join(format!("bench/results/cis-{date}.md"));
    std::fs::write(&file, &md).unwrap();
    println!("{md}\nwritten to {}", file.display());

    let unexplained: Vec<String> = all
        .iter()
        .filter(|c| c.status == "FAIL" && allowed(&c.id).is_none())
        .map(|c| {
            format!(
                "{} {}\n    found: {}\n    expected: {}\n    audit: {}",
                c.id,
                c.text,
                cell(&c.actual, 300),
                c.expected,
                cell(&c.audit, 200)
            )
        })
        .collect();
    let by_id: BTreeMap<&str, &Check> = all.iter().map(|c| (c.id.as_str(), c)).collect();
    let stale: Vec<String> = ALLOWED_FAILS
        .iter()
        .filter(|a| by_id.get(a.id).is_none_or(|c| c.status != "FAIL"))
        .map(|a| {
            format!(
                "{} ({})",
                a.id,
                by_id.get(a.id).map_or("not run", |c| c.status.as_str())
            )
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "scored CIS checks FAIL that are not in ALLOWED_FAILS: fix them, or add each with its reason here and in README.md (\"CIS benchmark\"):\n{}",
        unexplained.join("\n")
    );
    assert!(
        stale.is_empty(),
        "ALLOWED_FAILS entries no longer FAIL: remove them here and from README.md (\"CIS benchmark\"): {}",
        stale.join(", ")
    );
    let readme = readme_cis_section();
    let missing: Vec<&str> = ALLOWED_FAILS
        .iter()
        .map(|a| a.id)
        .filter(|id| !readme.contains(&format!("**{id}**")))
        .collect();
    assert!(
        missing.is_empty(),
        "allowed FAILs not listed (as **ID**) in README.md's CIS benchmark section: {missing:?}"
    );
    drop(host);
}
