//! etcd's whole life, over mTLS through etcd-client, and on disk through the
//! bundle's `etcdutl`:
//! - [`mod@members`]: the member list with each member's own health, leadership
//!   and DB size, and membership changes by the learner flow (add as
//!   learner → start the member with `--initial-cluster-state existing` →
//!   promote), plus a quorum-safe remove. All three are idempotent.
//! - [`snapshot`]: verified saves (etcd's trailing SHA-256 checked, 0600,
//!   fsync + rename; a failed save leaves nothing), offline checks of a
//!   snapshot file, and the naming and pruning of scheduled snapshots.
//! - [`restore`]: a new single-member data directory from a snapshot with
//!   the real `etcdutl`, built in a staging directory and renamed into place.
//!
//! etcd itself is run by others (the node agent's host process, the
//! kubelet's static pod); this crate never starts or stops it.

#![warn(missing_docs)]

pub mod members;
pub mod restore;
pub mod snapshot;

pub use members::{members, MemberStatus, RemoveOutcome};

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// How to reach etcd: client URLs and the client certificate (etcd CA).
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `https://127.0.0.1:2379`; calls go to any of them.
    pub endpoints: Vec<String>,
    /// PEM file of the etcd CA that signed the servers' certificates.
    pub ca_file: PathBuf,
    /// PEM file of the client certificate.
    pub cert_file: PathBuf,
    /// PEM file of the client certificate's private key.
    pub key_file: PathBuf,
    /// Connect timeout and per-call timeout.
    pub timeout: Duration,
}

/// A call to etcd failed, or a membership change was refused.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A TLS file of [`EtcdConfig`] cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The CA, certificate or key file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// No endpoint accepted a TLS connection.
    #[error("cannot reach etcd at {endpoints}: {source}; is etcd running ('selfnode status')?")]
    Connect {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// etcd-client's error (transport or TLS).
        source: etcd_client::Error,
    },
    /// etcd answered a call with an error.
    #[error("etcd {op} failed: {source}")]
    Rpc {
        /// The call, e.g. `member list`.
        op: &'static str,
        /// etcd's answer.
        source: etcd_client::Error,
    },
    /// A call got no answer in time.
    #[error("etcd {op} at {endpoint} timed out after {timeout:?}")]
    Timeout {
        /// The call, e.g. `status`.
        op: &'static str,
        /// The endpoint(s) asked, comma-separated.
        endpoint: String,
        /// How long the call waited ([`EtcdConfig::timeout`]).
        timeout: Duration,
    },
    /// No member matches the one named by the caller.
    #[error(
        "no etcd member has the id, name or peer URL {target}; 'selfnode etcd members' lists them"
    )]
    NoSuchMember {
        /// The id (hex), name or peer URL asked for.
        target: String,
    },
    /// Removing the member would leave no voting member.
    #[error("refusing to remove etcd member {name} ({id}): it is the last voting member, and removing it would destroy the cluster and all its data; add and promote another member first, or use 'selfnode reset' to tear the cluster down")]
    LastVotingMember {
        /// Member id, hex.
        id: String,
        /// Member name (`(not started)` before it published one).
        name: String,
    },
    /// Removing the member would leave fewer healthy voters than a quorum.
    #[error("refusing to remove etcd member {name} ({id}): of the {remaining} voting members that would remain, only {healthy} answer (unreachable: {unreachable}), fewer than the {quorum} a quorum needs, so etcd would stop serving; bring the unreachable members back (or remove them first), then run again")]
    QuorumAtRisk {
        /// Member id, hex.
        id: String,
        /// Member name (`(not started)` before it published one).
        name: String,
        /// Voting members left after the removal.
        remaining: usize,
        /// How many of those answered a Status call.
        healthy: usize,
        /// Voters a quorum of `remaining` needs (`remaining / 2 + 1`).
        quorum: usize,
        /// The voters that did not answer, as `name (id)`, comma-separated.
        unreachable: String,
    },
    /// The learner did not become a voter before the deadline.
    #[error("etcd did not promote the learner {peer_url} within {timeout:?}; etcd last answered: {last}. Is the new member running (started with --initial-cluster-state existing), and can the leader reach it on its peer URL?")]
    PromoteTimeout {
        /// The learner's peer URL.
        peer_url: String,
        /// The caller's deadline.
        timeout: Duration,
        /// etcd's last refusal.
        last: String,
    },
    /// etcd kept refusing the removal until the deadline.
    #[error("etcd did not remove member {target} within {timeout:?}; etcd last answered: {last}. etcd refuses to remove a voter until the members that stay have been connected to each other for about 5 s; check that they are all running and healthy ('selfnode etcd members'), then run again")]
    RemoveTimeout {
        /// The id, name or peer URL given.
        target: String,
        /// The caller's deadline.
        timeout: Duration,
        /// etcd's last refusal.
        last: String,
    },
}

impl EtcdError {
    /// True when the request itself is wrong and running it again unchanged
    /// cannot succeed (`selfnode` exits 2): [`EtcdError::NoSuchMember`],
    /// [`EtcdError::LastVotingMember`] and [`EtcdError::QuorumAtRisk`].
    /// Unreadable TLS files, connection, call and timeout failures are not:
    /// a retry may help.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            EtcdError::NoSuchMember { .. }
            | EtcdError::LastVotingMember { .. }
            | EtcdError::QuorumAtRisk { .. } => true,
            EtcdError::Read { .. }
            | EtcdError::Connect { .. }
            | EtcdError::Rpc { .. }
            | EtcdError::Timeout { .. }
            | EtcdError::PromoteTimeout { .. }
            | EtcdError::RemoveTimeout { .. } => false,
        }
    }
}

async fn connect(cfg: &EtcdConfig, endpoints: &[String]) -> Result<Client, EtcdError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| EtcdError::Read {
            path: p.clone(),
            source,
        })
    };
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&cfg.ca_file)?))
        .identity(Identity::from_pem(
            read(&cfg.cert_file)?,
            read(&cfg.key_file)?,
        ));
    let opts = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(cfg.timeout)
        .with_timeout(cfg.timeout);
    Client::connect(endpoints, Some(opts))
        .await
        .map_err(|source| EtcdError::Connect {
            endpoints: endpoints.join(","),
            source,
        })
}
