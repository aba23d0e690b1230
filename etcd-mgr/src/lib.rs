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
    pub endpoints: Vec<String>,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Connect timeout and per-call timeout.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach etcd at {endpoints}: {source}; is etcd running ('selfnode status')?")]
    Connect {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error("etcd {op} failed: {source}")]
    Rpc {
        op: &'static str,
        source: etcd_client::Error,
    },
    #[error("etcd {op} at {endpoint} timed out after {timeout:?}")]
    Timeout {
        op: &'static str,
        endpoint: String,
        timeout: Duration,
    },
    #[error(
        "no etcd member has the id, name or peer URL {target}; 'selfnode etcd members' lists them"
    )]
    NoSuchMember { target: String },
    #[error("refusing to remove etcd member {name} ({id}): it is the last voting member, and removing it would destroy the cluster and all its data; add and promote another member first, or use 'selfnode reset' to tear the cluster down")]
    LastVotingMember { id: String, name: String },
    #[error("refusing to remove etcd member {name} ({id}): of the {remaining} voting members that would remain, only {healthy} answer (unreachable: {unreachable}), fewer than the {quorum} a quorum needs, so etcd would stop serving; bring the unreachable members back (or remove them first), then run again")]
    QuorumAtRisk {
        id: String,
        name: String,
        remaining: usize,
        healthy: usize,
        quorum: usize,
        unreachable: String,
    },
    #[error("etcd did not promote the learner {peer_url} within {timeout:?}; etcd last answered: {last}. Is the new member running (started with --initial-cluster-state existing), and can the leader reach it on its peer URL?")]
    PromoteTimeout {
        peer_url: String,
        timeout: Duration,
        last: String,
    },
    #[error("etcd did not remove member {target} within {timeout:?}; etcd last answered: {last}. etcd refuses to remove a voter until the members that stay have been connected to each other for about 5 s; check that they are all running and healthy ('selfnode etcd members'), then run again")]
    RemoveTimeout {
        target: String,
        timeout: Duration,
        last: String,
    },
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
