//! Command-line interface: what `selfnode --help` teaches.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

mod cluster;
pub use cluster::{CertsCommand, EtcdCommand, SnapshotCommand, TokenCommand, UpgradeCommand};

#[derive(Debug, Parser)]
#[command(
    name = "selfnode",
    version,
    about = "Turn plain machines into a self-hosted Kubernetes cluster",
    long_about = "selfnode turns plain machines into a self-hosted Kubernetes cluster: one static binary per \
host supervises containerd and the kubelet, and the control plane runs as Kubernetes objects managed \
by Kubernetes itself.\n\nStart with 'selfnode agent' on a host, then check it with 'selfnode status'.",
    after_help = "Exit codes: 0 success; 1 failure (a retry may help); 2 invalid input or configuration \
(fix it first); 3 conflict with existing state (e.g. an agent is already running)."
)]
pub struct Cli {
    /// Treat DIR as the host's filesystem root: every path selfnode uses is taken under it.
    /// For tests and image builds; on a real host leave it at '/'.
    #[arg(
        long,
        global = true,
        env = "SELFNODE_ROOT",
        default_value = "/",
        value_name = "DIR"
    )]
    pub root: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a cluster on this host: a temporary control plane, then the self-hosted one, then the pivot
    Init(InitArgs),
    /// Join this host to a cluster as a node, with the join string 'init' or 'token create' printed
    Join(JoinArgs),
    /// Run the host agent in the foreground: supervise containerd and the kubelet
    Agent(AgentArgs),
    /// Forget the cluster on this host (stop the agent first); keeps the bundle and images
    Reset(ResetArgs),
    /// Stop this node: the agent, the kubelet, every container and containerd
    Stop(StopArgs),
    /// Show the host agent and the state of each component it supervises
    Status(StatusArgs),
    /// Bring back lost control-plane components from this host's checkpoint, or the
    /// whole control plane from an etcd snapshot
    Recover(RecoverArgs),
    /// Make a joined node a control-plane node: hand it the cluster's keys
    /// (sealed to it) and set its control-plane label. Run on a
    /// control-plane host
    Promote(MembershipArgs),
    /// Take a node out of the control plane: its etcd member leaves
    /// (quorum-safely) and its keys are removed from it. Run on a
    /// control-plane host
    Demote(MembershipArgs),
    /// Look at and protect this cluster's etcd: members, snapshots
    #[command(subcommand)]
    Etcd(EtcdCommand),
    /// Make, list and delete the bootstrap tokens hosts join with
    #[command(subcommand)]
    Token(TokenCommand),
    /// See when the cluster's certificates expire, and renew them
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Plan an upgrade of the cluster to the versions of another bundle
    #[command(subcommand)]
    Upgrade(UpgradeCommand),
    /// Import a bundle's container images into containerd
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Build bootable appliance images (ISO, raw disk) in which selfnode is PID 1
    #[command(subcommand)]
    Image(ImageCommand),
    /// Print selfnode's version and, with --bundle, the bundle's component versions
    Version(VersionArgs),
    /// Run the pod-network agent (what the selfnode-network DaemonSet runs on every node)
    #[command(hide = true)]
    NetworkAgent(NetworkAgentArgs),
    /// Print a shell completion script (e.g. selfnode completion bash > /etc/bash_completion.d/selfnode)
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The agent's API load balancer port when `--api-lb-port` is not given.
pub const DEFAULT_API_LB_PORT: u16 = bootstrap::plane::DEFAULT_API_LB_PORT;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// A table for people
    #[default]
    Table,
    /// JSON for programs
    Json,
}

/// `--cgroup-root`: an absolute cgroup path of plain names (`/a/b`).
fn parse_cgroup_root(s: &str) -> Result<String, String> {
    let ok = s.starts_with('/')
        && s.len() > 1
        && s[1..].split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not an absolute cgroup path of plain names, such as /selfnode-node2"
        ))
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Runs until SIGTERM or SIGINT, then stops the kubelet and containerd and leaves the \
containers running: the next agent adopts them ('selfnode stop', or SIGUSR1, stops every container \
too). Logs of the children go to <root>/var/log/selfnode/<component>.log; \
'selfnode status' shows their state. Ship it as a systemd unit (contrib/selfnode-agent.service), or \
without systemd: nohup selfnode agent >/var/log/selfnode/agent.log 2>&1 &"
)]
pub struct AgentArgs {
    /// The bundle directory (binaries and images). Default: <root>/var/cache/selfnode/bundle
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Where containerd listens. Default: <root>/run/selfnode/containerd/containerd.sock
    #[arg(long, value_name = "PATH")]
    pub containerd_socket: Option<PathBuf>,
    /// The kubelet's health port on 127.0.0.1
    #[arg(long, default_value_t = 10248, value_name = "PORT")]
    pub kubelet_healthz_port: u16,
    /// Port of the node-local API load balancer on 127.0.0.1 (kubelet, kube-proxy and the
    /// control plane reach every healthy kube-apiserver through it)
    #[arg(long, default_value_t = DEFAULT_API_LB_PORT, value_name = "PORT")]
    pub api_lb_port: u16,
    /// The cgroup the kubelet puts pods under (its cgroupRoot), created if missing; for
    /// several nodes on one machine (tests), each with its own. Default: the root cgroup
    #[arg(long, value_name = "CGROUP", value_parser = parse_cgroup_root)]
    pub cgroup_root: Option<String>,
    /// How often to save an etcd snapshot on a host with an etcd member (e.g. 30m, 6h; 0 turns
    /// scheduled snapshots off)
    #[arg(long, default_value = "6h", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub etcd_snapshot_interval: std::time::Duration,
    /// How many scheduled snapshots to keep (the newest one is always kept)
    #[arg(long, default_value_t = 10, value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub etcd_snapshot_keep: u64,
    /// Remove scheduled snapshots older than this (the newest one is always kept)
    #[arg(long, default_value = "7d", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub etcd_snapshot_max_age: std::time::Duration,
    /// Where scheduled snapshots go (0700). Default: <root>/var/lib/selfnode/snapshots
    #[arg(long, value_name = "DIR")]
    pub etcd_snapshot_dir: Option<PathBuf>,
    /// How often the checkpoint is read back from disk and checked (damage shows in
    /// 'selfnode status' as the checkpoint component unhealthy; e.g. 1h, 10m)
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub checkpoint_verify_interval: std::time::Duration,
}

/// A duration of at least a second.
fn parse_nonzero_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

#[derive(Debug, Args)]
#[command(
    after_help = "Every step is idempotent: if init is interrupted (even by kill -9), run it again and \
it resumes. The agent must be running ('selfnode agent'). When it finishes, the admin kubeconfig is \
/etc/kubernetes/admin.conf. Config file example:\n\n  apiVersion: selfnode.dev/v1alpha1\n  \
kind: InitConfiguration\n  clusterName: lab\n  advertiseAddress: 192.0.2.10\n  podCidr: 10.244.0.0/16\n  \
serviceCidr: 10.96.0.0/12\n  extraSans: [api.lab.example]\n  etcdQuotaBackendBytes: 8GiB"
)]
pub struct InitArgs {
    /// Config file (YAML, apiVersion selfnode.dev/v1alpha1, kind InitConfiguration); flags override it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Cluster name [default: selfnode]
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// This node's name [default: the hostname]
    #[arg(long)]
    pub node_name: Option<String>,
    /// The address other nodes reach this one on [default: the first non-loopback IPv4 address]
    #[arg(long, value_name = "IP")]
    pub advertise_address: Option<String>,
    /// Pod network [default: 10.244.0.0/16]
    #[arg(long, value_name = "CIDR")]
    pub pod_cidr: Option<String>,
    /// Service network [default: 10.96.0.0/12]
    #[arg(long, value_name = "CIDR")]
    pub service_cidr: Option<String>,
    /// Extra names or IPs for the API server certificate (repeatable)
    #[arg(long = "apiserver-cert-extra-sans", value_name = "NAME")]
    pub extra_sans: Vec<String>,
    /// The bundle directory. Default: <root>/var/cache/selfnode/bundle
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Let ordinary pods run on this control-plane node (no NoSchedule taint); what a
    /// single-node cluster wants
    #[arg(long)]
    pub allow_workloads: bool,
    /// etcd's backend quota on every member, e.g. 8GiB, 512MiB or a number of bytes; at
    /// the quota etcd raises NOSPACE and the cluster takes no writes [default: 8GiB]
    #[arg(long, value_name = "SIZE")]
    pub etcd_quota_backend_bytes: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl InitArgs {
    /// The flags as `bootstrap::config` merges them over a config file.
    pub fn flags(&self) -> bootstrap::config::InitFlags {
        bootstrap::config::InitFlags {
            cluster_name: self.cluster_name.clone(),
            node_name: self.node_name.clone(),
            advertise_address: self.advertise_address.clone(),
            pod_cidr: self.pod_cidr.clone(),
            service_cidr: self.service_cidr.clone(),
            extra_sans: self.extra_sans.clone(),
            bundle: self.bundle.clone(),
            allow_workloads: self.allow_workloads,
            etcd_quota_backend_bytes: self.etcd_quota_backend_bytes.clone(),
        }
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Without --from-snapshot, recover looks at this control-plane host and its cluster and \
brings back what is lost, from what the host recorded (the checkpoint and the settings of the pivot): \
etcd's static pod manifest (when its data is there); the API server, from the checkpoint's last known \
good copy, when none runs; every self-hosted object that was deleted (created again, existing ones are \
never changed); a controller-manager or scheduler with no Ready pod (deleted or crash-looping): a copy \
runs on this node until its Deployment has a Ready pod again. It says what it found and what it did, \
and does nothing on a healthy cluster.\n\nWith --from-snapshot FILE (total loss: etcd's data gone), \
the cluster is made again from the snapshot with this host's recorded settings and PKI: a temporary \
control plane from the snapshot, then the pivot, as 'selfnode init' does; kubeconfigs made before \
still work. Refused while the control plane is healthy (use 'selfnode etcd snapshot restore FILE \
--force' to roll a healthy cluster back).\n\nExit codes: 0 recovered (or nothing to do); 1 something \
is still down (the message says what); 3 no pivoted cluster on this host, or a healthy one with \
--from-snapshot."
)]
pub struct RecoverArgs {
    /// Make the control plane again from this etcd snapshot (etcd's data on this host is lost)
    #[arg(long, value_name = "FILE")]
    pub from_snapshot: Option<PathBuf>,
    /// With --from-snapshot: the old cluster's PKI, when this host's is gone
    /// [default: this host's, else the copy kept with the scheduled snapshots]
    #[arg(long, value_name = "DIR", requires = "from_snapshot")]
    pub pki: Option<PathBuf>,
    /// With --from-snapshot: go ahead even while other hosts' etcd members or API servers
    /// still serve the cluster (refused otherwise, naming them); they must be reset and joined
    /// again
    #[arg(long, requires = "from_snapshot")]
    pub discard_other_members: bool,
    /// Quorum lost for good (most control-plane hosts gone): make a one-member etcd cluster
    /// from this host's own data (etcd's --force-new-cluster), keeping everything written
    /// before the loss; refused while a quorum answers. The other hosts then join again
    #[arg(long, conflicts_with = "from_snapshot")]
    pub force_new_cluster: bool,
    /// How long to wait for each component to come back
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m", value_name = "DURATION")]
    pub timeout: std::time::Duration,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
#[command(
    after_help = "The control-plane label (node-role.kubernetes.io/control-plane) decides where \
the API server runs and which nodes have an etcd member; it is set and removed only through these \
commands (and a control-plane join), which also move the cluster's keys. A Node deleted and \
registered again keeps its role."
)]
pub struct MembershipArgs {
    /// The node
    #[arg(value_name = "NODE")]
    pub node: String,
    /// How long to wait for the node (its agent publishes the key its
    /// cluster keys are sealed to)
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m", value_name = "DURATION")]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
#[command(
    after_help = "The join string (TOKEN@HOST:PORT[,HOST:PORT...]/sha256:HEX) carries a bootstrap token, \
the cluster's API endpoints and the pin of its CA. join reads the cluster's cluster-info, checks its \
signature for the token and the CA against the pin (a cluster with another CA is refused: nothing is \
written), records that this host belongs to the cluster, and lets the kubelet trade the token for its \
client certificate; it ends when the node is Ready. The agent must be running. Interrupted (even by \
kill -9), run it again with the same string: it resumes. A host that belongs to a cluster is refused \
(exit 3): 'selfnode stop' and 'selfnode reset' first.\n\nWith --control-plane (or a string ending \
in /control-plane, from 'selfnode token create --control-plane'), the node also gets the control-plane \
label: the kube-apiserver DaemonSet puts an API server on it, and this host's agent adds its etcd \
member as a learner and promotes it once in sync (quorum-safe); join ends when both serve. The same \
happens to any node labelled later with 'kubectl label node NODE node-role.kubernetes.io/control-plane='; \
removing the label takes the member out again.\n\nExit codes: 0 joined; 1 a failure a retry \
may fix (an unreachable endpoint); 2 bad input (a malformed string, an unknown, expired or deleted \
token, a wrong CA pin, --control-plane with a worker token); 3 the host belongs to a cluster."
)]
pub struct JoinArgs {
    /// The join string (also accepted as --token). On the command line it
    /// is visible to every local user (ps): prefer --token-file
    #[arg(
        value_name = "JOIN_STRING",
        required_unless_present_any = ["token", "token_file"],
        conflicts_with_all = ["token", "token_file"]
    )]
    pub join_string: Option<String>,
    /// The join string, as the design names it
    #[arg(long, value_name = "JOIN_STRING", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the join string from this file ('-': standard input), so it is
    /// never in a process's arguments
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Join as a control-plane node: an API server and an etcd member here (needs a
    /// token made with 'selfnode token create --control-plane')
    #[arg(long)]
    pub control_plane: bool,
    /// This node's name [default: the hostname]
    #[arg(long)]
    pub node_name: Option<String>,
    /// The address the cluster reaches this node on [default: this host's address on the route
    /// to the cluster]
    #[arg(long, value_name = "IP")]
    pub advertise_address: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Do not ask for confirmation (required when stdin is not a terminal)
    #[arg(short, long)]
    pub force: bool,
    /// The bundle whose kube-proxy removes its iptables rules (kube-proxy --cleanup).
    /// Default: <root>/var/cache/selfnode/bundle
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Stopping the agent alone (SIGTERM, systemctl stop or restart, an upgrade) is not a node \
stop: the containers keep running and the next agent adopts them, so the control plane stays up. \
'selfnode stop' is the full stop, before maintenance or a reset: it asks a running agent (SIGUSR1) \
to stop the kubelet, every container and containerd, and stops what an earlier agent stop left \
running. Afterwards no process of the node runs and its mounts are released."
)]
pub struct StopArgs {
    /// How long to wait for the agent to stop everything
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s", value_name = "DURATION")]
    pub timeout: std::time::Duration,
    /// The bundle whose containerd stops containers an earlier agent left running.
    /// Default: <root>/var/cache/selfnode/bundle
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Build OCI images from the bundle's binaries (and load the bundle's images/*.tar) into
    /// containerd's k8s.io namespace. Re-running is a no-op.
    Import(ImportArgs),
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a bootable image: Debian's kernel, an initramfs with selfnode as /init, containerd,
    /// runc, the kubelet, the CNI plugins and the bundle's images (the first boot needs no
    /// network), and a BIOS boot loader. The node's role and network come from --config and
    /// from selfnode.* kernel parameters, validated here and again at boot.
    ///
    /// Example: selfnode image build --format iso --config node1.yaml --out node1.iso
    Build(ImageBuildArgs),
}

/// `selfnode image build`.
#[derive(Debug, Args)]
pub struct ImageBuildArgs {
    /// iso: a hybrid ISO that boots from a CD or when written to a USB stick; raw: a GPT disk
    /// image for dd, with an empty data partition for the node's state
    #[arg(long, value_enum)]
    pub format: ImageFormat,
    /// The file to write (written beside it first, then renamed)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The node's configuration (YAML, kind ApplianceConfiguration: role init|join|control-plane-join,
    /// joinString, hostname, allowWorkloads, network, dataDevice). Without it the boot loader's
    /// kernel command line must carry selfnode.role=...
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The bundle to put in the image
    #[arg(long, value_name = "DIR", default_value = dist::bundle::DEFAULT_BUNDLE_DIR)]
    pub bundle: PathBuf,
    /// The kernel (a bzImage). Default: Debian's, fetched by scripts/install-deps.sh into
    /// /var/cache/selfnode/kernel/vmlinuz
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// The kernel's modules directory (lib/modules/<release>, indexed by depmod). Default: the
    /// one beside the default kernel; none with --kernel (everything built in)
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,
    /// Size of the raw image's data partition in MiB (0: none; the node then looks for a blank
    /// disk)
    #[arg(long, value_name = "MIB", default_value_t = 4096)]
    pub data_size_mib: u64,
    /// Every date in the image (seconds since 1970); the same inputs give the same bytes
    #[arg(
        long,
        env = "SOURCE_DATE_EPOCH",
        default_value_t = 1_700_000_000,
        value_name = "SECONDS"
    )]
    pub source_date_epoch: u64,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageFormat {
    /// Hybrid ISO 9660 (CD or USB stick, BIOS)
    Iso,
    /// GPT disk image (dd to a disk or USB stick, BIOS)
    Raw,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The bundle directory. Default: <root>/var/cache/selfnode/bundle
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// containerd's socket. Default: <root>/run/selfnode/containerd/containerd.sock (the agent's)
    #[arg(long, value_name = "PATH")]
    pub containerd_socket: Option<PathBuf>,
    /// containerd namespace to import into (the kubelet uses k8s.io)
    #[arg(long, default_value = "k8s.io")]
    pub namespace: String,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct NetworkAgentArgs {
    /// This node's name (the DaemonSet passes spec.nodeName)
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The whole pod network (the controller-manager's --cluster-cidr)
    #[arg(long, value_name = "CIDR")]
    pub cluster_cidr: ipnet::IpNet,
    /// Linux bridge the pods attach to
    #[arg(long, default_value = "selfnode0")]
    pub bridge: String,
    /// MTU of the pod interfaces [default: the bridge plugin's]
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Where to write the CNI configuration
    #[arg(long, default_value = "/etc/cni/net.d", value_name = "DIR")]
    pub cni_conf_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Also show the component versions of this bundle
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_a_one_line_summary() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(
                !about.is_empty() && !about.contains('\n'),
                "{}: {about:?}",
                sub.get_name()
            );
        }
    }

    #[test]
    fn a_cgroup_root_is_an_absolute_path_of_plain_names() {
        assert_eq!(
            parse_cgroup_root("/selfnode-node2").as_deref(),
            Ok("/selfnode-node2")
        );
        assert!(parse_cgroup_root("/a/b_c.d").is_ok());
        for bad in ["", "/", "relative", "/a//b", "/a/../b", "/a b", "/a/"] {
            assert!(parse_cgroup_root(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn join_takes_the_string_as_an_argument_or_as_token_not_both() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["selfnode", "join"], args].concat());
        assert!(parse(&["abc"]).is_ok());
        assert!(parse(&["--token", "abc"]).is_ok());
        assert!(parse(&[]).is_err());
        assert!(parse(&["abc", "--token", "abc"]).is_err());
    }
}
