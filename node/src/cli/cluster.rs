//! The command line of the cluster's day-to-day commands run on a
//! control-plane host: `token`, `certs`, `etcd`.

use clap::Subcommand;
use std::path::PathBuf;

use super::{InitArgs, Output};

/// `selfnode token`: run on a control-plane host (uses admin.conf).
#[derive(Debug, Subcommand)]
#[command(
    after_help = "A bootstrap token is a Secret of type bootstrap.kubernetes.io/token in kube-system: \
whoever holds it can add a node to the cluster until it expires (the controller-manager deletes it \
then). 'token create' prints the join string, TOKEN@HOST:PORT[,HOST:PORT...]/sha256:HEX, which carries \
the token, the API endpoints and the pin of the cluster CA; pass it to 'selfnode join' on the new host."
)]
pub enum TokenCommand {
    /// Make a token and print its join string
    Create {
        /// How long the token is valid (default 24h, at most 30 days; a
        /// control-plane token: default 1h, at most 2h)
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        ttl: Option<std::time::Duration>,
        /// What the token is for (shown by 'token list')
        #[arg(long, default_value = "", value_name = "TEXT")]
        description: String,
        /// The token joins a control-plane node: the host that uses it gets
        /// the cluster's keys (sealed to it by a control-plane host). Always
        /// single-use.
        #[arg(long)]
        control_plane: bool,
        /// How many nodes the token may make: 1 (it is deleted once a node
        /// joined with it); without it, any number until it expires
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1))]
        usages: Option<u32>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// List the tokens (never their secrets)
    List {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Delete a token (by ID, or the whole token): hosts can no longer join with it
    Delete {
        #[arg(value_name = "ID|TOKEN")]
        token: String,
    },
}

/// `selfnode certs`: the PKI made by init (kubeadm's layout, /etc/kubernetes/pki).
#[derive(Debug, Subcommand)]
#[command(
    after_help = "CAs are valid 10 years, every other certificate 1 year. The agent of the host that ran \
'selfnode init' re-issues each certificate when less than 30 days are left and publishes it to the \
control plane: it applies the component's Secret in kube-system and rolls its pods (check it with \
'selfnode status', component 'certificates'). 'certs renew' does the same at once for every \
certificate. The kubelets rotate their own client certificates."
)]
pub enum CertsCommand {
    /// List every certificate of this host's PKI and when it expires
    CheckExpiration {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Re-issue this host's certificates and kubeconfigs (not the CAs) and restart its control plane
    /// onto them
    #[command(
        after_help = "Runs on any control-plane host with the cluster's keys (the one that ran 'selfnode \
init' or one that joined as control plane). Keeps the CAs and the service-account key, so nothing \
signed by them and no join string changes. Then restarts this host's kube-apiserver, \
kube-controller-manager and kube-scheduler containers (the kubelet starts them again in the same \
pods, reading the new files) and waits until they run. Other control-plane hosts renew their own. \
Copies of admin.conf made elsewhere keep working until their own certificate expires; copy \
/etc/kubernetes/admin.conf again."
    )]
    Renew {
        /// How long to wait for the restarted components (and a rollout, if a shared file changed)
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m", value_name = "DURATION")]
        timeout: std::time::Duration,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum EtcdCommand {
    /// List the members with their health, leader and database size
    Members {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove a member (by id, name or peer URL); refused when it would cost quorum or
    /// remove the last voting member
    RemoveMember { member: String },
    /// Snapshots of the etcd database
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a consistent snapshot to FILE (0600), verified before it is kept
    Save {
        file: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Build a working single-node cluster from a snapshot, on a host that belongs to no cluster
    #[command(
        after_help = "The agent must be running. On a host that runs a cluster, --force is needed (its etcd data is moved aside, not deleted); or reset the host first. The snapshot may come from 'selfnode etcd snapshot save', the scheduled snapshots in <root>/var/lib/selfnode/snapshots, or upstream 'etcdctl snapshot save'; it is checked (bolt header, size, etcd's SHA-256, not an empty etcd) before anything is written. The cluster's Secrets are encrypted with a key from its PKI, so a restore needs the old PKI: the host's own if it has one, else the copy the agent keeps with its scheduled snapshots (<dir of FILE>/pki, or <root>/var/lib/selfnode/snapshots/pki, kept across a reset), or the copy --pki names. Then it runs init's steps with the temporary etcd started from the snapshot, and pivots as init does. Flags as for init; give the same ones the cluster was made with."
    )]
    Restore {
        /// The snapshot file
        file: PathBuf,
        /// A copy of the old control plane's PKI directory (/etc/kubernetes/pki)
        #[arg(long, value_name = "DIR")]
        pki: Option<PathBuf>,
        /// Restore over the cluster this host runs: its etcd member stops and its data is moved
        /// aside (kept), then the cluster is rebuilt from the snapshot
        #[arg(long)]
        force: bool,
        /// Restore even while other hosts' etcd members or API servers still serve the cluster
        /// (refused otherwise, naming them): they are left out of the restored cluster and
        /// must be reset and joined again
        #[arg(long)]
        discard_other_members: bool,
        #[command(flatten)]
        init: InitArgs,
    },
}

/// `selfnode upgrade`: run on a control-plane host.
#[derive(Debug, Subcommand)]
#[command(
    after_help = "An upgrade goes to the version of a bundle (build one with fixtures/build-bundle.sh, or \
copy one from another machine): a newer patch or the next minor, never a downgrade or a skipped minor. \
'upgrade plan' changes nothing: it shows each check and what it found, then the steps in the order the \
version skew policy asks (etcd members one at a time, the API servers node by node, controller-managers, \
schedulers, kube-proxy, CoreDNS, then each host's kubelet). Exit 0 when every check holds, 2 when the \
bundle or its version is refused, 3 when the cluster is not ready for it (a NotReady node, an etcd alarm)."
)]
pub enum UpgradeCommand {
    /// Show what an upgrade to a bundle would change, in what order, and every check with its result
    Plan {
        /// The bundle to upgrade to (a directory with VERSION, bin/ and SHA256SUMS)
        #[arg(long, value_name = "DIR")]
        bundle: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Put a bundle on every host of the cluster, from this one, before an upgrade needs it:
    /// each host's agent fetches it over mutual TLS, checks every file against the bundle's
    /// SHA256SUMS and imports its images. Nothing that runs changes
    #[command(
        after_help = "The bundle is needed on this host only (an air-gapped site copies one directory to one control-plane host). This host serves it on its address, TCP port 7446, for as long as the command runs, to clients with a node's certificate signed by the cluster CA (the kubelets'); it publishes the bundle's VERSION and SHA256SUMS in the kube-system ConfigMap selfnode-bundle-offer, and each host's agent fetches it into /var/lib/selfnode/bundles/<id>/, checks every file against those sums (never against what the serving host says), imports its images and says so on its Node (annotation selfnode.dev/bundle-ready). Interrupted, run it again: what the hosts fetched stays. Exit 2 for a damaged bundle."
    )]
    Stage {
        /// The bundle to put on every host (a directory with VERSION, bin/ and SHA256SUMS)
        #[arg(long, value_name = "DIR")]
        bundle: PathBuf,
        /// How long the hosts have to fetch it and import its images
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30m", value_name = "DURATION")]
        timeout: std::time::Duration,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Upgrade the cluster to a bundle's versions: the checks of 'plan', a snapshot, the
    /// bundle onto every host, then etcd members, the API servers, controller-managers,
    /// schedulers, kube-proxy, CoreDNS and last each host's kubelet and containerd, each
    /// waited on before the next
    #[command(
        after_help = "The new bundle is needed on this host only: the other hosts get it from here ('upgrade stage', run as a step) and move when their turn comes (their etcd members one at a time, then each host's kubelet and containerd), each waited on. Every step observes first: interrupted anywhere (kill -9, a power cut), run the same command again and it resumes. The record of the upgrade and the etcd snapshot taken before it are in /var/lib/selfnode/upgrade/ ('selfnode upgrade status')."
    )]
    Apply {
        /// The bundle to upgrade to (a directory with VERSION, bin/ and SHA256SUMS)
        #[arg(long, value_name = "DIR")]
        bundle: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Bring the cluster back to the bundle it ran before the last upgrade, in place: the
    /// kubelet first, then CoreDNS, kube-proxy, schedulers, controller-managers, the API
    /// servers, and etcd last (through etcd's own downgrade): no write is lost
    #[command(
        after_help = "Works on a finished upgrade and on one cut short, as long as the previous bundle is still where the upgrade found it ('selfnode upgrade status' names it). Every step observes first: interrupted, run it again. The snapshot taken before the upgrade is not used; it stays in /var/lib/selfnode/upgrade/ for 'selfnode recover --from-snapshot'."
    )]
    Rollback {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The last upgrade on this host: from, to, when, and whether it finished
    Status {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}
