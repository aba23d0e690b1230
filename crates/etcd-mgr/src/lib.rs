//! etcd's whole life. Today: membership view and snapshots over mTLS, through
//! etcd-client. (The temporary member runs as a host process started by the
//! node agent; the self-hosted members and the learner-based pivot come next.)

pub mod snapshot;

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
}

/// One member as `selfnode etcd members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberStatus {
    /// Hex, as etcdctl prints it.
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
    /// Answered a Status call on one of its client URLs.
    pub healthy: bool,
    pub is_leader: bool,
    pub db_size: Option<i64>,
    /// Why it is not healthy.
    pub error: Option<String>,
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

/// The member list, with each member's own health, leadership and DB size.
pub async fn members(cfg: &EtcdConfig) -> Result<Vec<MemberStatus>, EtcdError> {
    let mut client = connect(cfg, &cfg.endpoints).await?;
    let list = client
        .member_list()
        .await
        .map_err(|source| EtcdError::Rpc {
            op: "member list",
            source,
        })?;
    let mut out = Vec::new();
    for m in list.members() {
        let mut st = MemberStatus {
            id: format!("{:x}", m.id()),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            is_learner: m.is_learner(),
            healthy: false,
            is_leader: false,
            db_size: None,
            error: None,
        };
        match member_status(cfg, m.client_urls()).await {
            Ok((leader, size)) => {
                st.healthy = true;
                st.is_leader = leader == m.id();
                st.db_size = Some(size);
            }
            Err(e) => st.error = Some(e.to_string()),
        }
        out.push(st);
    }
    Ok(out)
}

async fn member_status(cfg: &EtcdConfig, urls: &[String]) -> Result<(u64, i64), EtcdError> {
    if urls.is_empty() {
        return Err(EtcdError::Timeout {
            op: "status",
            endpoint: "(member not started yet)".into(),
            timeout: cfg.timeout,
        });
    }
    let call = async {
        let mut c = connect(cfg, urls).await?;
        let s = c.status().await.map_err(|source| EtcdError::Rpc {
            op: "status",
            source,
        })?;
        Ok::<_, EtcdError>((s.leader(), s.db_size()))
    };
    tokio::time::timeout(cfg.timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(EtcdError::Timeout {
                op: "status",
                endpoint: urls.join(","),
                timeout: cfg.timeout,
            })
        })
}
