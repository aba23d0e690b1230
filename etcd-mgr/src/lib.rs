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
//! - [`maintenance`]: a member's database size (in use, quota), the
//!   cluster's alarms, disarming NOSPACE, defragmenting one member.
//!
//! etcd itself is run by others (the node agent's host process, the
//! kubelet's static pod); this crate never starts or stops it.

#![warn(missing_docs)]

pub mod maintenance;
pub mod members;
pub mod restore;
pub mod snapshot;

pub use members::{members, MemberStatus, RemoveOutcome};

use std::future::Future;
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
    /// The deadline of each call to etcd (connecting included): an answer
    /// that does not come in this time is [`EtcdError::Timeout`].
    pub timeout: Duration,
}

/// A call to etcd failed, or a membership change was refused.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A TLS file of [`EtcdConfig`] cannot be read.
    #[error("cannot read {path}, a TLS file of the etcd client")]
    Read {
        /// The CA, certificate or key file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The client cannot be set up for the endpoints (a malformed URL, a
    /// TLS identity etcd-client refuses). Connections are made by the
    /// first call, so an etcd that is down shows as [`EtcdError::Rpc`] or
    /// [`EtcdError::Timeout`], not here.
    #[error("cannot connect to etcd at {endpoints}")]
    Connect {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// etcd-client's error.
        source: etcd_client::Error,
    },
    /// etcd answered a call with an error, or the connection failed.
    #[error("etcd {op} failed")]
    Rpc {
        /// The call, e.g. `member list`.
        op: &'static str,
        /// etcd's answer.
        source: etcd_client::Error,
    },
    /// A call got no answer in time. An etcd member that is running but
    /// not part of a cluster with a quorum (restarted while a majority of
    /// its members are down) accepts connections and never answers.
    #[error("no answer from etcd at {endpoint} to {op} within {timeout:?}: its host is unreachable, or its etcd member cannot serve (a member serves only while a majority of its cluster's members are up)")]
    Timeout {
        /// The call, e.g. `member list`.
        op: &'static str,
        /// The endpoint(s) asked, comma-separated.
        endpoint: String,
        /// How long the call waited ([`EtcdConfig::timeout`]).
        timeout: Duration,
    },
    /// The member list answered, but none of the members that answered a
    /// Status call knows a leader: etcd cannot serve reads or writes.
    #[error("etcd has no leader: {}", no_leader(*.answered, *.voters, .unreachable, .timeout))]
    NoLeader {
        /// Voting members that answered a Status call.
        answered: usize,
        /// Voting members in the member list.
        voters: usize,
        /// The voters that did not answer, as `name (id)`, comma-separated.
        unreachable: String,
        /// How long each Status call waited ([`EtcdConfig::timeout`]).
        timeout: Duration,
        /// The members as observed (each with its own error).
        members: Vec<MemberStatus>,
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
    /// A defragmentation did not finish in the caller's time. etcd goes on
    /// with it regardless: the member may still be rewriting its file.
    #[error("etcd at {endpoint} did not finish defragmenting within {timeout:?}; etcd goes on with it although no one waits, and the member serves nothing until it is done. Check with 'selfnode etcd members' that it answers again")]
    DefragTimeout {
        /// The member's client URL.
        endpoint: String,
        /// The caller's deadline.
        timeout: Duration,
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
    /// Unreadable TLS files, connection, call and timeout failures and a
    /// cluster without a leader are not: a retry may help.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            EtcdError::NoSuchMember { .. }
            | EtcdError::LastVotingMember { .. }
            | EtcdError::QuorumAtRisk { .. } => true,
            EtcdError::Read { .. }
            | EtcdError::Connect { .. }
            | EtcdError::Rpc { .. }
            | EtcdError::Timeout { .. }
            | EtcdError::NoLeader { .. }
            | EtcdError::PromoteTimeout { .. }
            | EtcdError::RemoveTimeout { .. }
            | EtcdError::DefragTimeout { .. } => false,
        }
    }
}

/// The text of [`EtcdError::NoLeader`] after "etcd has no leader: ".
fn no_leader(answered: usize, voters: usize, unreachable: &str, timeout: &Duration) -> String {
    let quorum = voters / 2 + 1;
    let missing = if unreachable.is_empty() {
        String::new()
    } else {
        format!(" (no answer from {unreachable})")
    };
    if answered < quorum {
        format!(
            "{answered} of {voters} voting members answered within {timeout:?}{missing}, \
             fewer than the {quorum} a quorum needs; start the members that are down"
        )
    } else {
        format!(
            "{answered} of {voters} voting members answered within {timeout:?}{missing}, \
             but none knows a leader: an election is under way, or the members cannot \
             reach each other on their peer URLs"
        )
    }
}

/// A client for `endpoints`. etcd-client connects lazily: the first call
/// makes the connection, so every call goes through [`within`].
async fn connect(cfg: &EtcdConfig, endpoints: &[String]) -> Result<Client, EtcdError> {
    connect_with(cfg, endpoints, cfg.timeout).await
}

/// [`connect`] for calls that may take up to `request_timeout` (a
/// defragmentation): etcd-client would cut every request at its own
/// per-request timeout otherwise. Connecting is still bounded by
/// [`EtcdConfig::timeout`].
async fn connect_with(
    cfg: &EtcdConfig,
    endpoints: &[String],
    request_timeout: Duration,
) -> Result<Client, EtcdError> {
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
        .with_timeout(request_timeout);
    match tokio::time::timeout(cfg.timeout, Client::connect(endpoints, Some(opts))).await {
        Ok(connected) => connected.map_err(|source| EtcdError::Connect {
            endpoints: endpoints.join(","),
            source,
        }),
        Err(_) => Err(EtcdError::Timeout {
            op: "connect",
            endpoint: endpoints.join(","),
            timeout: cfg.timeout,
        }),
    }
}

/// One call to etcd at `endpoints`, bounded by [`EtcdConfig::timeout`].
///
/// etcd-client's own timeouts do not bound everything: its connect timeout
/// covers the TCP connect only, and its per-request timeout starts once a
/// connection is ready. A member that accepts TCP connections but never
/// completes the TLS handshake (an etcd restarted without a quorum does
/// that: it serves clients only once it has joined its cluster) would hold
/// the call forever.
async fn within<T>(
    cfg: &EtcdConfig,
    op: &'static str,
    endpoints: &[String],
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(cfg.timeout, call).await {
        Ok(answer) => answer.map_err(|source| EtcdError::Rpc { op, source }),
        Err(_) => Err(EtcdError::Timeout {
            op,
            endpoint: endpoints.join(","),
            timeout: cfg.timeout,
        }),
    }
}

/// `err` and its causes, `: `-separated, for messages kept as text (a
/// member's error in [`MemberStatus`], etcd's last answer in a retry).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_leader_says_how_many_answered_and_what_a_quorum_needs() {
        let e = EtcdError::NoLeader {
            answered: 1,
            voters: 3,
            unreachable: "cp-2 (b2), cp-3 (c3)".into(),
            timeout: Duration::from_secs(2),
            members: Vec::new(),
        };
        assert_eq!(
            e.to_string(),
            "etcd has no leader: 1 of 3 voting members answered within 2s (no answer from \
             cp-2 (b2), cp-3 (c3)), fewer than the 2 a quorum needs; start the members that \
             are down"
        );
        let e = EtcdError::NoLeader {
            answered: 3,
            voters: 3,
            unreachable: String::new(),
            timeout: Duration::from_secs(5),
            members: Vec::new(),
        };
        assert!(
            e.to_string()
                .starts_with("etcd has no leader: 3 of 3 voting members answered within 5s, but none knows a leader"),
            "{e}"
        );
        assert!(!e.is_invalid_input());
    }

    #[test]
    fn a_chain_shows_each_layer_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = EtcdError::Read {
            path: PathBuf::from("/etc/pki/etcd/ca.crt"),
            source: io,
        };
        assert_eq!(
            chain(&e),
            "cannot read /etc/pki/etcd/ca.crt, a TLS file of the etcd client: no such file"
        );
        let e = EtcdError::Rpc {
            op: "member list",
            source: etcd_client::Error::InvalidArgs("bad".into()),
        };
        let text = chain(&e);
        assert!(text.starts_with("etcd member list failed: "), "{text}");
        assert_eq!(text.matches("bad").count(), 1, "{text}");
    }
}
